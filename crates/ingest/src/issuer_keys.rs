//! The ride-code keys a running server holds now: which issuer keys it
//! trusts, which it publishes to gateways and the account API, and which
//! signs new credentials; and which terminal keys it holds (opens sealed
//! codes with, pushes to gateways) and hands out. The server rereads the key store every
//! `keys.reload_interval_ms` and moves this along with
//! [`LiveIssuerKeys::advance`], which keeps one promise: a key is
//! published (trusted, and handed to every gateway's push stream) before
//! the first credential is signed with it.

use std::sync::Arc;

use tokio::sync::watch;

use crate::keystore::{ExportedKey, Keystore, KeystoreError};
use farestream_core::ridecode::terminal_schedule::handed_out_among;
use farestream_core::ridecode::{HeldTerminalKey, IssuerPublicKeys, IssuerSigningKey, TerminalKeys};

/// The issuer keys at one moment.
#[derive(Clone)]
pub struct IssuerKeysNow {
    /// What ride codes are checked against.
    pub trusted: IssuerPublicKeys,
    /// What validators are told: the trusted keys, with their times.
    pub published: Vec<ExportedKey>,
    /// What signs new credentials; `None` when no key signs now.
    pub signer: Option<Arc<IssuerSigningKey>>,
    /// The terminal keys held: what sealed codes open with and gateways
    /// are pushed, the next service day's among them.
    pub terminal: Vec<HeldTerminalKey>,
    /// Terminal keys whose trust ended lately, kept to open codes read
    /// before the end and to read the card of those read after
    /// ([`TerminalKeys::with_ran_out`]); never pushed to a gateway, never
    /// handed out.
    pub terminal_ran_out: Vec<HeldTerminalKey>,
}

impl IssuerKeysNow {
    /// The key store's keys at `now_secs`. Terminal keys that cannot be
    /// read (a key file deleted or unreadable) leave `terminal_before` in
    /// force as time passes, logged and counted, and never stop the issuer
    /// keys' changes: a review found one bad terminal key file kept a
    /// retired issuer key trusted. A terminal key is kept for
    /// `ran_out_kept_secs` after it runs out.
    pub fn at(
        store: &Keystore,
        now_secs: i64,
        terminal_before: &IssuerKeysNow,
        ran_out_kept_secs: i64,
    ) -> Result<IssuerKeysNow, KeystoreError> {
        let schedule = store.schedule_at(now_secs)?;
        let signer = match schedule.signer_at(now_secs) {
            Some(id) => Some(Arc::new(store.signer(id)?)),
            None => None,
        };
        let terminal_now = store.terminal_schedule_at(now_secs).and_then(|schedule| {
            let known: Vec<HeldTerminalKey> = terminal_before.terminal_held_or_kept().cloned().collect();
            Ok((schedule.held_at(now_secs), store.terminal_ran_out_at(now_secs, ran_out_kept_secs, &known)?))
        });
        let (terminal, terminal_ran_out) = match terminal_now {
            Ok(held) => held,
            Err(error) => {
                tracing::warn!(%error, "cannot read the terminal keys; those held stay in force until they run out");
                crate::telemetry::issuer_keys_reload_failed();
                terminal_before.terminal_as_time_passes(now_secs, ran_out_kept_secs)
            }
        };
        Ok(IssuerKeysNow {
            trusted: schedule.trusted_at(now_secs),
            published: store.export_from(&schedule, now_secs)?,
            signer,
            terminal,
            terminal_ran_out,
        })
    }

    /// No keys at all: what a server starts from before its first read.
    pub fn none() -> IssuerKeysNow {
        IssuerKeysNow::fixed(IssuerPublicKeys::new())
    }

    /// Keys trusted and published as given, for the server's life, and
    /// nothing that signs or seals: a test's fixed keys.
    pub fn fixed(trusted: IssuerPublicKeys) -> IssuerKeysNow {
        IssuerKeysNow {
            trusted,
            published: Vec::new(),
            signer: None,
            terminal: Vec::new(),
            terminal_ran_out: Vec::new(),
        }
    }

    /// The terminal keys sealed codes open with: those held and those
    /// kept since their trust ended, each with its end, so a code is
    /// judged by when it was read.
    pub fn terminal_trusted(&self) -> TerminalKeys {
        let mut held = TerminalKeys::new();
        for key in &self.terminal {
            held.insert_ending(key.key(), key.trusted_until_secs);
        }
        held.with_ran_out(self.terminal_ran_out.iter().filter_map(|k| Some((k.key(), k.trusted_until_secs?))))
    }

    /// Every terminal key this holds, trusted or kept since its end.
    fn terminal_held_or_kept(&self) -> impl Iterator<Item = &HeldTerminalKey> {
        self.terminal.iter().chain(&self.terminal_ran_out)
    }

    /// The terminal keys as they stand at `now_secs` without a read of the
    /// store: those trusted still, and those that ran out less than
    /// `ran_out_kept_secs` ago.
    fn terminal_as_time_passes(
        &self,
        now_secs: i64,
        ran_out_kept_secs: i64,
    ) -> (Vec<HeldTerminalKey>, Vec<HeldTerminalKey>) {
        let (trusted, ran_out): (Vec<HeldTerminalKey>, Vec<HeldTerminalKey>) =
            self.terminal_held_or_kept().cloned().partition(|k| k.trusted_at(now_secs));
        let kept_until =
            |k: &HeldTerminalKey| k.trusted_until_secs.map(|until| until.saturating_add(ran_out_kept_secs.max(0)));
        let ran_out = ran_out.into_iter().filter(|k| kept_until(k).is_some_and(|end| now_secs < end)).collect();
        (trusted, ran_out)
    }

    /// The terminal key the account API hands out at `now_secs`: of those
    /// held (so every gateway was pushed it), the last whose
    /// `handed_out_from` has come.
    pub fn terminal_handed_out(&self, now_secs: i64) -> Option<HeldTerminalKey> {
        handed_out_among(&self.terminal, now_secs).cloned()
    }

    /// These keys as they stand at `now_secs` when the key store cannot be
    /// read: a key whose `trusted_until` has come is dropped, and the
    /// signer stops signing (the account API answers 503) once a newer
    /// key's `signs_from` has come, since that key's private half is not
    /// at hand. Trust only ever shrinks here.
    pub fn as_time_passes(&self, now_secs: i64, ran_out_kept_secs: i64) -> IssuerKeysNow {
        let published_as = |id: u32| self.published.iter().map(|p| &p.key).find(|k| k.key_id == id);
        let mut trusted = IssuerPublicKeys::new();
        for (id, public_key) in self.trusted.key_ids().filter_map(|id| Some((id, *self.trusted.get(id)?))) {
            // A key trusted but not published (a test's fixed keys) has no end.
            if published_as(id).is_none_or(|k| k.trusted_at(now_secs)) {
                trusted.insert(id, public_key);
            }
        }
        let published: Vec<ExportedKey> =
            self.published.iter().filter(|p| trusted.get(p.key.key_id).is_some()).cloned().collect();
        let signer = self.signer.clone().filter(|s| {
            let from = published_as(s.key_id()).map_or(i64::MIN, |k| k.signs_from_secs);
            let superseded =
                published.iter().any(|p| p.key.signs_from_secs > from && p.key.signs_from_secs <= now_secs);
            trusted.get(s.key_id()).is_some() && !superseded
        });
        let (terminal, terminal_ran_out) = self.terminal_as_time_passes(now_secs, ran_out_kept_secs);
        IssuerKeysNow { trusted, published, signer, terminal, terminal_ran_out }
    }

    fn signer_id(&self) -> Option<u32> {
        self.signer.as_ref().map(|s| s.key_id())
    }
}

/// The issuer keys now, shared by the pipeline's reload, every gateway's
/// push stream and the account API. Cheap to clone.
#[derive(Clone)]
pub struct LiveIssuerKeys {
    now: Arc<watch::Sender<Arc<IssuerKeysNow>>>,
}

impl LiveIssuerKeys {
    pub fn new(first: IssuerKeysNow) -> LiveIssuerKeys {
        assert_signer_is_trusted(&first);
        LiveIssuerKeys { now: Arc::new(watch::Sender::new(Arc::new(first))) }
    }

    /// The keys now.
    pub fn now(&self) -> Arc<IssuerKeysNow> {
        Arc::clone(&self.now.borrow())
    }

    /// Wakes on every change: what each gateway's push stream waits on.
    pub fn subscribe(&self) -> watch::Receiver<Arc<IssuerKeysNow>> {
        self.now.subscribe()
    }

    /// Moves to `next` in two steps. First the keys: `trust` gets the new
    /// trusted set (the pipeline checks codes with it), then subscribers
    /// see it while the old signer still signs (if it is still trusted).
    /// Only then the new signer, so no credential is ever signed with a
    /// key a subscriber has not been handed. Keys kept since they ran out
    /// are the pipeline's alone: a change to them alone wakes no
    /// subscriber (no gateway is pushed the same keys again). Returns
    /// whether anything changed.
    pub fn advance(&self, next: IssuerKeysNow, trust: impl FnOnce(&IssuerKeysNow)) -> bool {
        let current = self.now();
        let pushed_changed =
            next.trusted != current.trusted || next.published != current.published || next.terminal != current.terminal;
        let keys_changed = pushed_changed || next.terminal_ran_out != current.terminal_ran_out;
        if keys_changed {
            trust(&next);
            let kept = current.signer.clone().filter(|s| next.trusted.get(s.key_id()).is_some());
            let keys = IssuerKeysNow { signer: kept, ..next.clone() };
            match pushed_changed {
                true => self.publish(keys),
                false => {
                    self.now.send_if_modified(|now| {
                        *now = Arc::new(keys);
                        false
                    });
                }
            }
        }
        let signer_changed = next.signer_id() != self.now().signer_id();
        if signer_changed {
            if let Some(id) = next.signer_id() {
                assert!(self.now().trusted.get(id).is_some(), "issuer key {id} signs only once it is published");
            }
            self.publish(next);
        }
        keys_changed || signer_changed
    }

    fn publish(&self, keys: IssuerKeysNow) {
        assert_signer_is_trusted(&keys);
        self.now.send_replace(Arc::new(keys));
    }
}

fn assert_signer_is_trusted(keys: &IssuerKeysNow) {
    if let Some(id) = keys.signer_id() {
        assert!(keys.trusted.get(id).is_some(), "the signing issuer key {id} is trusted");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use farestream_core::ridecode::PublishedKey;
    use std::sync::Mutex;

    fn key(id: u32) -> Arc<IssuerSigningKey> {
        Arc::new(IssuerSigningKey::from_seed(id, &[id as u8; 32]).expect("key"))
    }

    fn keys(trusted: &[u32], signer: Option<u32>) -> IssuerKeysNow {
        let mut set = IssuerPublicKeys::new();
        for id in trusted {
            set.insert(*id, key(*id).public_key());
        }
        IssuerKeysNow { signer: signer.map(key), ..IssuerKeysNow::fixed(set) }
    }

    /// The order a subscriber sees a rotation in: the new key published
    /// while the old one signs, then the new one signing.
    #[test]
    fn a_rotation_is_published_before_the_new_key_signs() {
        let live = LiveIssuerKeys::new(keys(&[1], Some(1)));
        let mut seen = live.subscribe();
        let trusted_by_pipeline = Mutex::new(Vec::new());
        let history = Arc::new(Mutex::new(Vec::new()));
        let watcher = {
            let history = Arc::clone(&history);
            let mut receiver = live.subscribe();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
                runtime.block_on(async {
                    while receiver.changed().await.is_ok() {
                        let now = receiver.borrow_and_update().clone();
                        history
                            .lock()
                            .expect("history")
                            .push((now.trusted.key_ids().collect::<Vec<_>>(), now.signer_id()));
                    }
                });
            })
        };
        assert!(
            live.advance(keys(&[1, 2], Some(2)), |t| trusted_by_pipeline.lock().expect("lock").push(t.trusted.clone()))
        );
        assert!(
            !live.advance(keys(&[1, 2], Some(2)), |_| panic!("nothing changed")),
            "a reread with no change is quiet"
        );
        assert_eq!(trusted_by_pipeline.into_inner().expect("lock").len(), 1);
        assert_eq!(seen.borrow_and_update().signer_id(), Some(2));
        drop(live);
        watcher.join().expect("watcher");
        let history = history.lock().expect("history").clone();
        // A watch keeps only the latest value, so the watcher may see only
        // the end; whatever it saw never had key 2 signing unpublished.
        assert!(history.iter().all(|(trusted, signer)| signer.is_none_or(|s| trusted.contains(&s))), "{history:?}");
        assert_eq!(history.last(), Some(&(vec![1, 2], Some(2))));
    }

    /// A key kept since it ran out, and then let go: the pipeline is
    /// handed each change, no subscriber (a gateway's push) wakes.
    #[test]
    fn a_change_to_the_keys_kept_since_they_ran_out_alone_reaches_the_pipeline_and_wakes_no_gateway() {
        use farestream_core::ridecode::HeldTerminalKey;
        let held = |id: u16| HeldTerminalKey {
            key_id: id,
            secret: [id as u8; 32].into(),
            service_date: chrono::NaiveDate::default(),
            handed_out_from_secs: 0,
            trusted_until_secs: Some(100),
        };
        let live = LiveIssuerKeys::new(keys(&[1], Some(1)));
        let mut gateway = live.subscribe();
        gateway.borrow_and_update();
        let mut handed = Vec::new();
        let kept = IssuerKeysNow { terminal_ran_out: vec![held(3)], ..keys(&[1], Some(1)) };
        assert!(live.advance(kept, |t| handed.push(t.terminal_trusted().ran_out(3).is_some())));
        assert!(live.advance(keys(&[1], Some(1)), |t| handed.push(t.terminal_trusted().ran_out(3).is_some())));
        assert_eq!(handed, vec![true, false], "the pipeline kept key 3, then let it go");
        assert!(!gateway.has_changed().expect("open"), "no gateway was pushed the same keys again");
        assert!(live.now().terminal_ran_out.is_empty());
        assert!(!live.advance(keys(&[1], Some(1)), |_| panic!("nothing changed")));
    }

    #[test]
    fn a_key_that_runs_out_stops_being_trusted_and_the_signer_stays() {
        let live = LiveIssuerKeys::new(keys(&[1, 2], Some(2)));
        let mut pipeline = None;
        assert!(live.advance(keys(&[2], Some(2)), |t| pipeline = Some(t.trusted.key_ids().collect::<Vec<_>>())));
        assert_eq!(pipeline, Some(vec![2]));
        assert_eq!(live.now().signer_id(), Some(2));
    }

    fn exported(key_id: u32, signs_from_secs: i64, trusted_until_secs: Option<i64>) -> ExportedKey {
        let public_key = key(key_id).public_key();
        let key = PublishedKey { key_id, public_key, signs_from_secs, trusted_until_secs };
        ExportedKey { key, active: false, pem: String::new() }
    }

    /// Review: a key store that could not be read kept every key trusted
    /// for ever. The keys held still run out, and a signer whose time has
    /// passed stops signing.
    #[test]
    fn keys_held_while_the_store_cannot_be_read_still_run_out() {
        let mut held = keys(&[1, 2], Some(1));
        held.published = vec![exported(1, 0, Some(500)), exported(2, 100, None)];
        let at_50 = held.as_time_passes(50, 0);
        assert_eq!((at_50.trusted.key_ids().collect::<Vec<_>>(), at_50.signer_id()), (vec![1, 2], Some(1)));
        let at_100 = held.as_time_passes(100, 0);
        assert_eq!((at_100.trusted.key_ids().collect::<Vec<_>>(), at_100.signer_id()), (vec![1, 2], None));
        let at_500 = held.as_time_passes(500, 0);
        assert_eq!(at_500.trusted.key_ids().collect::<Vec<_>>(), vec![2]);
        assert_eq!(at_500.published.iter().map(|k| k.key.key_id).collect::<Vec<_>>(), vec![2]);
    }

    /// Review: one unreadable terminal key file failed the whole reread,
    /// so a retired (leaked) issuer key stayed trusted. The issuer keys move
    /// on; the terminal keys held before stay until they run out, and are
    /// then kept to read for `KEPT` seconds, as from a store read whole.
    #[test]
    fn an_unreadable_terminal_key_file_stops_no_issuer_change() {
        use crate::keystore::{Keystore, KeystoreOptions};
        let dir = tempfile::tempdir().expect("tempdir");
        let options = KeystoreOptions {
            lock_wait: std::time::Duration::from_secs(5),
            trust_tail_secs: 1_000,
            terminal_lead_secs: 600,
            shared_dir: None,
            faults: Arc::new(crate::faults::Faults::default()),
        };
        let mut store = Keystore::open_or_create(dir.path(), options).expect("store");
        let policy = farestream_core::service_day::ServiceDayPolicy { time_zone: chrono_tz::UTC, start_hour: 4 };
        let now = 1_796_263_200;
        store.make_day_terminal_keys(&policy, now * 1000).expect("day keys");
        store.rotate(now, now).expect("issuer key 2");
        const KEPT: i64 = 100;
        let before = IssuerKeysNow::at(&store, now, &IssuerKeysNow::none(), KEPT).expect("keys");
        assert_eq!(before.terminal.len(), 2);
        let later = before.terminal[0].trusted_until_secs.expect("tomorrow's key follows today's");
        let ids = |keys: &[HeldTerminalKey]| keys.iter().map(|k| k.key_id).collect::<Vec<_>>();
        let read_later = IssuerKeysNow::at(&store, later, &IssuerKeysNow::none(), KEPT).expect("keys");
        assert_eq!((ids(&read_later.terminal), ids(&read_later.terminal_ran_out)), (vec![2], vec![1]), "read whole");
        assert_eq!(read_later.terminal_ran_out[0].secret, before.terminal[0].secret, "with its secret");
        std::fs::write(dir.path().join("keys").join("terminal-00001.key"), [1; 5]).expect("damage");
        store.retire(1, now).expect("retire the leaked issuer key");
        let after = IssuerKeysNow::at(&store, now, &before, KEPT).expect("the reread still succeeds");
        assert_eq!(after.trusted.key_ids().collect::<Vec<_>>(), vec![2], "the retirement took effect");
        assert_eq!(after.terminal, before.terminal, "the terminal keys held stay in force");
        let held_later = IssuerKeysNow::at(&store, later, &before, KEPT).expect("keys");
        assert_eq!(ids(&held_later.terminal), vec![2], "today's still runs out on time");
        assert_eq!(ids(&held_later.terminal_ran_out), vec![1], "and is kept to read");
        let opened = held_later.terminal_trusted();
        assert!(opened.get(1).is_none() && opened.ran_out(1).is_some() && opened.is_past(1));
        assert_eq!(held_later.terminal_ran_out[0].secret, before.terminal[0].secret, "the copy held before");
        let unheard = IssuerKeysNow::at(&store, later, &IssuerKeysNow::none(), KEPT).expect("keys");
        assert_eq!(
            ids(&unheard.terminal_ran_out),
            Vec::<u16>::new(),
            "a damaged file and no copy: nothing to read with"
        );
        let gone = IssuerKeysNow::at(&store, later + KEPT, &held_later, KEPT).expect("keys");
        assert_eq!((ids(&gone.terminal), ids(&gone.terminal_ran_out)), (vec![2], vec![]), "no longer than KEPT");
    }

    #[test]
    #[should_panic(expected = "is trusted")]
    fn a_signer_that_is_not_trusted_is_refused() {
        LiveIssuerKeys::new(keys(&[1], Some(2)));
    }
}
