//! Issuer keys on disk, under `DATA_DIR/keys`:
//!
//! - `issuer-NNNN.pk8`: one Ed25519 key each, PKCS#8 DER, mode 0600;
//! - `keyring.toml`: each key's id, when it was made, from when it signs
//!   new credentials (`signs_from`), and whether an operator retired it;
//! - `.lock`: held by every command that changes the store, so two `keys`
//!   commands at once both land, one after the other (a command that cannot
//!   get it within `keys.lock_wait_ms_max` is refused).
//!
//! Which key signs and which are trusted at a moment follows from those
//! times alone ([`IssuerKeySchedule`]): rotation adds a key that signs from
//! a moment `keys.signing_lead_secs` ahead, and the key before it stays
//! trusted until its last credential and the scans made under it have run
//! out (`Config::issuer_key_trust_tail_secs`). A running server rereads the
//! store every `keys.reload_interval_ms`, so a rotation needs no restart.
//!
//! Crash safety, step by step (each step is a failpoint):
//!
//! 1. rotate only: the new key file is written (create-new, fsync) and its
//!    directory fsynced, so a keyring never names a key that is not on disk;
//! 2. the keyring is written to a temporary file and fsynced;
//! 3. the temporary file is renamed over the keyring and the directory
//!    fsynced: this is the commit.
//!
//! A crash after step 1 leaves an orphan key file that no keyring names:
//! nothing trusts it, and the next rotation takes an id above every key
//! file on disk, so orphans never block it. A crash after step 2 leaves a
//! temporary file that the next save replaces. A change either committed
//! whole or not at all; every change re-reads the keyring under the lock,
//! so none is lost to a concurrent one.

mod terminal;

pub use terminal::TerminalKeyInfo;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::Config;
use crate::faults::Faults;
use farestream_core::ridecode::schedule::ISSUER_KEYS_PUBLISHED_MAX;
use farestream_core::ridecode::{IssuerKeySchedule, IssuerSigningKey, KeyError, PublishedKey, ScheduledKey};

/// Failpoint: a rotation's new key file is on disk, the keyring unchanged.
pub const STEP_KEY_WRITTEN: &str = "keys: new key file written";
/// Failpoint: the new keyring is in its temporary file.
pub const STEP_KEYRING_TEMP_WRITTEN: &str = "keys: keyring temp file written";
/// Failpoint: the new keyring is renamed into place, its directory not yet fsynced.
pub const STEP_KEYRING_RENAMED: &str = "keys: keyring renamed";

const KEYRING: &str = "keyring.toml";
const KEYRING_TMP: &str = ".keyring.toml.tmp";
const LOCK_FILE: &str = ".lock";
/// How often a command waiting for the lock tries again.
const LOCK_RETRY_MS: u64 = 20;

#[derive(Debug, Error)]
pub enum KeystoreError {
    #[error("key store I/O on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid keyring: {reason}")]
    BadKeyring { path: PathBuf, reason: String },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("issuer key {0} does not exist")]
    NoSuchKey(u32),
    #[error("issuer key {0} signs credentials now; rotate with `--signs-in-secs 0` before retiring it")]
    RetiringActiveKey(u32),
    #[error("no issuer key signs credentials at {0} (Unix seconds): the first key signs later or every key is retired")]
    NoSigner(i64),
    #[error("the key store {dir} is locked by another command; waited {waited_ms} ms (keys.lock_wait_ms_max)")]
    Busy { dir: PathBuf, waited_ms: u64 },
    #[error("{0} (Unix seconds) is not a time a key can sign from")]
    BadSigningTime(i64),
    #[error(
        "a new key cannot sign from {signs_from_secs} (Unix seconds): not before now and every key already scheduled ({earliest}); to sign sooner, retire the keys scheduled later first (`keys retire ID`: a key not yet signing may be)"
    )]
    SignsTooEarly { signs_from_secs: i64, earliest: i64 },
    #[error(
        "{0} issuer keys are published already, the most a gateway holds: wait for the oldest to run out, or retire one"
    )]
    TooManyPublished(usize),
    #[error("issuer key ids are exhausted")]
    IdsExhausted,
    #[error("no issuer keys under {0} yet: `farestream serve` or `farestream keys rotate` makes the first")]
    Empty(PathBuf),
    #[error("the system random source failed")]
    Rng,
    #[error("issuer key {id}: cannot encode its public key: {reason}")]
    Export { id: u32, reason: String },
    #[error("terminal key ids are exhausted")]
    TerminalIdsExhausted,
    #[error("terminal key {id}: {reason}")]
    BadTerminalKey { id: u16, reason: String },
    #[error("{0} terminal keys are held already, the most a gateway holds: wait for the oldest to run out")]
    TooManyTerminalKeys(usize),
    #[error(
        "a terminal key rotated now must be handed out from {from} (Unix seconds) on: not before now ({now}), and before the end of the next service day ({until})"
    )]
    TerminalRotationOutOfReach { from: i64, now: i64, until: i64 },
    #[error("{0} ms (Unix) is outside the service days this build can name")]
    NoServiceDay(i64),
}

/// An issuer public key as validators load it: the key and its times,
/// and the key in PEM as standard tools read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedKey {
    pub key: PublishedKey,
    /// It signs new credentials now.
    pub active: bool,
    /// SubjectPublicKeyInfo in PEM, as `openssl pkey -pubin` and Python's
    /// `cryptography` read it.
    pub pem: String,
}

/// 32 bytes from the OS random source: new keys, and the seed of batch
/// verification's coefficients. The core draws no randomness itself.
pub fn random_seed() -> Result<[u8; 32], KeystoreError> {
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed).map_err(|_| KeystoreError::Rng)?;
    Ok(seed)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: u32,
    /// RFC 3339, for people reading the file.
    pub created_at: String,
    /// RFC 3339: from when it signs new credentials. Keyrings written
    /// before rotations were scheduled lack it: such a key signed from
    /// when it was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signs_from: Option<String>,
    pub retired: bool,
    /// RFC 3339: when it was retired. Keyrings from before lack it: such a
    /// key is taken to have signed before it was retired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<String>,
}

impl KeyInfo {
    /// From when it signs, in Unix seconds.
    pub fn signs_from_secs(&self) -> Result<i64, String> {
        self.time(self.signs_from.as_deref().unwrap_or(&self.created_at))
    }

    /// When it was retired, in Unix seconds; `None` while it is not.
    fn retired_at_secs(&self) -> Result<Option<i64>, String> {
        match (self.retired, &self.retired_at) {
            (false, _) => Ok(None),
            (true, Some(text)) => self.time(text).map(Some),
            (true, None) => self.signs_from_secs().map(Some),
        }
    }

    fn time(&self, text: &str) -> Result<i64, String> {
        chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| t.timestamp())
            .map_err(|e| format!("issuer key {}: `{text}` is not an RFC 3339 time: {e}", self.id))
    }
}

/// The keyring. Unknown fields (`active_key_id`, from before rotations
/// were scheduled) are ignored: the times say which key signs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyringFile {
    keys: Vec<KeyInfo>,
    /// Terminal keys (`terminal`): absent from keyrings written before them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    terminal_keys: Vec<TerminalKeyInfo>,
}

/// How a key store is opened: the lock wait, and failpoints for tests.
#[derive(Debug, Clone)]
pub struct KeystoreOptions {
    pub lock_wait: Duration,
    /// How long a superseded key stays trusted after it stopped signing.
    pub trust_tail_secs: i64,
    /// How long after it is made a terminal key made late (its day has
    /// begun while another key is handed out) waits before it is handed
    /// out, so gateways hold it first: `keys.terminal_rotation_lead_secs`.
    pub terminal_lead_secs: i64,
    /// The store's directory when it is not `DATA_DIR/keys`: the one
    /// every node of a cluster shares (`cluster.keys_dir`).
    pub shared_dir: Option<PathBuf>,
    pub faults: Arc<Faults>,
}

impl KeystoreOptions {
    pub fn from_config(config: &Config) -> KeystoreOptions {
        KeystoreOptions {
            lock_wait: Duration::from_millis(config.keys.lock_wait_ms_max),
            trust_tail_secs: config.issuer_key_trust_tail_secs(),
            terminal_lead_secs: i64::try_from(config.keys.terminal_rotation_lead_secs).unwrap_or(i64::MAX),
            shared_dir: config.cluster.shared_keys_dir(),
            faults: Arc::new(Faults::default()),
        }
    }

    /// Where the store of `data_dir` lives.
    fn dir_of(&self, data_dir: &Path) -> PathBuf {
        self.shared_dir.clone().unwrap_or_else(|| data_dir.join("keys"))
    }
}

pub struct Keystore {
    dir: PathBuf,
    ring: KeyringFile,
    options: KeystoreOptions,
}

impl Keystore {
    /// Opens the key store, making a first key when there is none. The
    /// first key signs from the Unix epoch: no key before it hands over to
    /// it, so any clock a server runs on finds it signing.
    pub fn open_or_create(data_dir: &Path, options: KeystoreOptions) -> Result<Keystore, KeystoreError> {
        let dir = options.dir_of(data_dir);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let empty = KeyringFile { keys: Vec::new(), terminal_keys: Vec::new() };
        let mut store = Keystore { dir, ring: empty, options };
        if let Some(ring) = store.read_ring()? {
            store.ring = ring;
            return Ok(store);
        }
        // Two first starts at once must not both make key 1.
        store.change(|store| {
            if store.ring.keys.is_empty() {
                store.add_key(0)?;
            }
            Ok(())
        })?;
        Ok(store)
    }

    /// Opens a key store that has keys; never makes one (`keys list` and
    /// `keys retire` on a fresh data dir, a load generator that needs the
    /// server's keys).
    pub fn open(data_dir: &Path, options: KeystoreOptions) -> Result<Keystore, KeystoreError> {
        let dir = options.dir_of(data_dir);
        let empty = KeyringFile { keys: Vec::new(), terminal_keys: Vec::new() };
        let mut store = Keystore { dir, ring: empty, options };
        store.ring = store.read_ring()?.ok_or_else(|| KeystoreError::Empty(store.dir.clone()))?;
        Ok(store)
    }

    /// Makes a new key that signs from `signs_from_secs` (published, so
    /// trusted and pushed, from `now_secs`); returns its id. It must sign
    /// after now and after every key scheduled before it, and at most
    /// [`ISSUER_KEYS_PUBLISHED_MAX`] keys are published at once (what a
    /// gateway holds). Two rotations for the same second: the later key
    /// signs and the earlier never does (it is trusted for the tail, as
    /// if it had).
    pub fn rotate(&mut self, now_secs: i64, signs_from_secs: i64) -> Result<u32, KeystoreError> {
        self.change(|store| {
            let schedule = store.schedule_at(now_secs)?;
            let published = schedule.published_at(now_secs);
            let latest = published.iter().map(|k| k.signs_from_secs).max().unwrap_or(i64::MIN);
            if signs_from_secs < now_secs.max(latest) {
                return Err(KeystoreError::SignsTooEarly { signs_from_secs, earliest: now_secs.max(latest) });
            }
            if published.len() >= ISSUER_KEYS_PUBLISHED_MAX {
                return Err(KeystoreError::TooManyPublished(published.len()));
            }
            store.add_key(signs_from_secs)
        })
    }

    /// Stops trusting a key at once (a leaked key): codes under it become
    /// `unknown_issuer_key`. The key that signs at `now_secs` cannot be
    /// retired: rotate first.
    pub fn retire(&mut self, id: u32, now_secs: i64) -> Result<(), KeystoreError> {
        self.change(|store| {
            if store.schedule_at(now_secs)?.signer_at(now_secs) == Some(id) {
                return Err(KeystoreError::RetiringActiveKey(id));
            }
            let key = store.ring.keys.iter_mut().find(|k| k.id == id).ok_or(KeystoreError::NoSuchKey(id))?;
            key.retired = true;
            key.retired_at = chrono::DateTime::from_timestamp(now_secs, 0).map(|t| t.to_rfc3339());
            store.save()
        })
    }

    pub fn list(&self) -> &[KeyInfo] {
        &self.ring.keys
    }

    /// Which key signs and which are trusted, from `now_secs` on (not
    /// before: ask for the schedule at that moment). Only the files of
    /// keys trusted at `now_secs` or later are read: a key whose trust
    /// ended for good is kept as the takeover that ended its
    /// predecessor's signing, trusted by no one, and its file may be gone
    /// (an operator deleted an old key; a review found that stopped every
    /// start and `keys retire`).
    pub fn schedule_at(&self, now_secs: i64) -> Result<IssuerKeySchedule, KeystoreError> {
        let outline = self.scheduled_keys()?;
        let tail = self.options.trust_tail_secs;
        let live: Vec<u32> = IssuerKeySchedule::new(outline.iter().copied(), tail)
            .published_at(now_secs)
            .iter()
            .map(|k| k.key_id)
            .collect();
        let mut keys = Vec::with_capacity(outline.len());
        for mut key in outline {
            if live.contains(&key.key_id) {
                key.public_key = self.signer(key.key_id)?.public_key();
            } else if key.retired_at_secs.is_none() {
                // Expired: it signed, and no moment from now on trusts it.
                key.retired_at_secs = Some(i64::MAX);
            }
            keys.push(key);
        }
        Ok(IssuerKeySchedule::new(keys, tail))
    }

    /// Every key's times, from the keyring alone: no key file is read, so
    /// each public key is a placeholder of zeros.
    fn scheduled_keys(&self) -> Result<Vec<ScheduledKey>, KeystoreError> {
        let bad = |reason| KeystoreError::BadKeyring { path: self.dir.join(KEYRING), reason };
        let mut keys = Vec::with_capacity(self.ring.keys.len());
        for info in &self.ring.keys {
            let signs_from_secs = info.signs_from_secs().map_err(bad)?;
            let retired_at_secs = info.retired_at_secs().map_err(bad)?;
            keys.push(ScheduledKey { key_id: info.id, public_key: [0; 32], signs_from_secs, retired_at_secs });
        }
        Ok(keys)
    }

    /// The key that signs new credentials at `now_secs`.
    pub fn signer_at(&self, now_secs: i64) -> Result<IssuerSigningKey, KeystoreError> {
        let id = self.schedule_at(now_secs)?.signer_at(now_secs).ok_or(KeystoreError::NoSigner(now_secs))?;
        self.signer(id)
    }

    pub fn signer(&self, id: u32) -> Result<IssuerSigningKey, KeystoreError> {
        let path = self.key_path(id);
        let document = fs::read(&path).map_err(io(&path))?;
        Ok(IssuerSigningKey::from_pkcs8(id, &document)?)
    }

    /// Every issuer public key trusted at `now_secs`, for validators, in
    /// encodings standard tools read: raw hex, and PEM
    /// SubjectPublicKeyInfo (made by rcgen from the stored PKCS#8 document).
    pub fn export_public_keys(&self, now_secs: i64) -> Result<Vec<ExportedKey>, KeystoreError> {
        self.export_from(&self.schedule_at(now_secs)?, now_secs)
    }

    /// [`Keystore::export_public_keys`] from a schedule already read.
    pub fn export_from(&self, schedule: &IssuerKeySchedule, now_secs: i64) -> Result<Vec<ExportedKey>, KeystoreError> {
        let signer = schedule.signer_at(now_secs);
        schedule.published_at(now_secs).into_iter().map(|key| self.export(key, signer == Some(key.key_id))).collect()
    }

    fn export(&self, key: PublishedKey, active: bool) -> Result<ExportedKey, KeystoreError> {
        let path = self.key_path(key.key_id);
        let document = fs::read(&path).map_err(io(&path))?;
        let pair = rcgen::KeyPair::try_from(document.as_slice())
            .map_err(|e| KeystoreError::Export { id: key.key_id, reason: e.to_string() })?;
        Ok(ExportedKey { key, active, pem: pair.public_key_pem() })
    }

    /// Runs `apply` under the lock on the keyring as it is on disk now.
    fn change<T>(&mut self, apply: impl FnOnce(&mut Keystore) -> Result<T, KeystoreError>) -> Result<T, KeystoreError> {
        let _lock = self.lock()?;
        if let Some(ring) = self.read_ring()? {
            self.ring = ring;
        }
        let before = self.ring.clone();
        let applied = apply(self);
        if applied.is_err() {
            // What a failed change left in memory was never committed: a
            // key held from it would be pushed and handed out, then made
            // again under its id with another secret. The keyring on disk
            // is what is.
            self.ring = self.read_ring().ok().flatten().unwrap_or(before);
        }
        applied
    }

    /// Step 1, then the keyring with the new key in it.
    fn add_key(&mut self, signs_from_secs: i64) -> Result<u32, KeystoreError> {
        let signs_from = keyring_time(signs_from_secs)?;
        let id = self.highest_id_on_disk()?.checked_add(1).ok_or(KeystoreError::IdsExhausted)?;
        let document = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .map_err(|_| KeystoreError::Rng)?;
        // Parsed before it is stored: a key file on disk always loads.
        IssuerSigningKey::from_pkcs8(id, document.as_ref())?;
        self.write_key_file(&self.key_path(id), document.as_ref())?;
        let created_at = chrono::Utc::now().to_rfc3339();
        self.ring.keys.push(KeyInfo { id, created_at, signs_from: Some(signs_from), retired: false, retired_at: None });
        self.save()?;
        Ok(id)
    }

    /// Step 1 of every change that makes a key: its file, private, made
    /// durable with its directory before any keyring names it.
    fn write_key_file(&self, path: &Path, bytes: &[u8]) -> Result<(), KeystoreError> {
        crate::files::write_private(path, bytes).map_err(io(path))?;
        crate::files::fsync_dir(&self.dir, &self.options.faults).map_err(io(&self.dir))?;
        self.options.faults.crash_point(STEP_KEY_WRITTEN).map_err(io(path))
    }

    /// The highest id in the keyring or among key files, orphans included.
    fn highest_id_on_disk(&self) -> Result<u32, KeystoreError> {
        let mut highest = self.ring.keys.iter().map(|k| k.id).max().unwrap_or(0);
        for entry in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let name = entry.map_err(io(&self.dir))?.file_name();
            let id = name.to_str().and_then(|n| n.strip_prefix("issuer-")?.strip_suffix(".pk8")?.parse::<u32>().ok());
            highest = highest.max(id.unwrap_or(0));
        }
        Ok(highest)
    }

    fn key_path(&self, id: u32) -> PathBuf {
        self.dir.join(format!("issuer-{id:04}.pk8"))
    }

    fn read_ring(&self) -> Result<Option<KeyringFile>, KeystoreError> {
        let path = self.dir.join(KEYRING);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(KeystoreError::Io { path, source }),
        };
        let ring: KeyringFile = toml::from_str(&text)
            .map_err(|e| KeystoreError::BadKeyring { path: path.clone(), reason: e.to_string() })?;
        let mut ids: Vec<u32> = ring.keys.iter().map(|k| k.id).collect();
        ids.sort_unstable();
        if let Some(twice) = ids.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(KeystoreError::BadKeyring { path, reason: format!("issuer key {} is listed twice", twice[0]) });
        }
        Ok(Some(ring))
    }

    /// Steps 2 and 3.
    fn save(&self) -> Result<(), KeystoreError> {
        let faults = &self.options.faults;
        let path = self.dir.join(KEYRING);
        let text = toml::to_string_pretty(&self.ring)
            .map_err(|e| KeystoreError::BadKeyring { path: path.clone(), reason: e.to_string() })?;
        let tmp = self.dir.join(KEYRING_TMP);
        let mut file = File::create(&tmp).map_err(io(&tmp))?;
        file.write_all(text.as_bytes()).map_err(io(&tmp))?;
        crate::files::fsync(&file, faults).map_err(io(&tmp))?;
        faults.crash_point(STEP_KEYRING_TEMP_WRITTEN).map_err(io(&tmp))?;
        faults.before_rename().map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        faults.crash_point(STEP_KEYRING_RENAMED).map_err(io(&path))?;
        crate::files::fsync_dir(&self.dir, faults).map_err(io(&self.dir))
    }

    /// The store's lock, waiting up to `lock_wait` for another command.
    fn lock(&self) -> Result<File, KeystoreError> {
        let path = self.dir.join(LOCK_FILE);
        let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(io(&path))?;
        let started = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(fs::TryLockError::WouldBlock) if started.elapsed() < self.options.lock_wait => {
                    std::thread::sleep(Duration::from_millis(LOCK_RETRY_MS));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    let waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    return Err(KeystoreError::Busy { dir: self.dir.clone(), waited_ms });
                }
                Err(fs::TryLockError::Error(source)) => return Err(KeystoreError::Io { path, source }),
            }
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeystoreError + use<> {
    let path = path.to_path_buf();
    move |source| KeystoreError::Io { path, source }
}

/// A keyring time (RFC 3339) from Unix seconds.
fn keyring_time(secs: i64) -> Result<String, KeystoreError> {
    Ok(chrono::DateTime::from_timestamp(secs, 0).ok_or(KeystoreError::BadSigningTime(secs))?.to_rfc3339())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A moment the tests' keys are made at.
    const NOW: i64 = 1_800_000_000;
    const TAIL: i64 = 400_000;

    pub(super) fn options() -> KeystoreOptions {
        KeystoreOptions {
            lock_wait: Duration::from_secs(10),
            trust_tail_secs: TAIL,
            terminal_lead_secs: 600,
            shared_dir: None,
            faults: Arc::new(Faults::default()),
        }
    }

    fn trusted(store: &Keystore) -> Vec<u32> {
        store.schedule_at(NOW).expect("keys").trusted_at(NOW).key_ids().collect()
    }

    fn active(store: &Keystore) -> u32 {
        store.signer_at(NOW).expect("a signer").key_id()
    }

    #[test]
    fn rotation_keeps_old_keys_trusted_until_their_tail_or_retirement() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Keystore::open_or_create(dir.path(), options()).expect("create");
        assert_eq!(active(&store), 1);
        assert_eq!(store.rotate(NOW, NOW).expect("rotate"), 2);
        let reopened = Keystore::open_or_create(dir.path(), options()).expect("reopen");
        assert_eq!(active(&reopened), 2);
        assert_eq!(trusted(&reopened), vec![1, 2]);
        let schedule = reopened.schedule_at(NOW).expect("schedule");
        assert_eq!(schedule.trusted_at(NOW + TAIL - 1).key_ids().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(schedule.trusted_at(NOW + TAIL).key_ids().collect::<Vec<_>>(), vec![2], "key 1 ran out");
        assert!(matches!(store.retire(2, NOW), Err(KeystoreError::RetiringActiveKey(2))));
        store.retire(1, NOW).expect("retire");
        assert_eq!(trusted(&store), vec![2]);
    }

    #[test]
    fn a_rotation_with_a_lead_publishes_before_it_signs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Keystore::open_or_create(dir.path(), options()).expect("create");
        store.rotate(NOW, NOW + 3_600).expect("rotate");
        assert_eq!((active(&store), trusted(&store)), (1, vec![1, 2]), "published, not signing");
        let exported = store.export_public_keys(NOW).expect("export");
        let view: Vec<_> = exported.iter().map(|k| (k.key.key_id, k.active, k.key.trusted_until_secs)).collect();
        assert_eq!(view, vec![(1, true, Some(NOW + 3_600 + TAIL)), (2, false, None)]);
        assert_eq!(store.signer_at(NOW + 3_600).expect("signer").key_id(), 2);
        assert!(matches!(store.rotate(NOW, i64::MAX), Err(KeystoreError::BadSigningTime(i64::MAX))));
        assert!(matches!(store.signer_at(i64::MIN), Err(KeystoreError::NoSigner(i64::MIN))));
    }

    /// Review: a keyring listing a key twice, a rotation scheduled before
    /// the keys already scheduled, and more keys than a gateway holds were
    /// all taken.
    #[test]
    fn a_bad_keyring_and_bad_rotations_are_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Keystore::open_or_create(dir.path(), options()).expect("create");
        store.rotate(NOW, NOW + 100).expect("rotate");
        let early = store.rotate(NOW, NOW + 50);
        assert!(
            matches!(early, Err(KeystoreError::SignsTooEarly { earliest, .. }) if earliest == NOW + 100),
            "{early:?}"
        );
        assert!(matches!(store.rotate(NOW, NOW - 1), Err(KeystoreError::SignsTooEarly { .. })));
        while store.schedule_at(NOW).expect("schedule").published_at(NOW).len() < ISSUER_KEYS_PUBLISHED_MAX {
            store.rotate(NOW, NOW + 100).expect("rotate");
        }
        assert!(matches!(store.rotate(NOW, NOW + 100), Err(KeystoreError::TooManyPublished(64))));
        let ring = dir.path().join("keys").join(KEYRING);
        let text = fs::read_to_string(&ring).expect("ring");
        fs::write(&ring, text.replace("id = 3\n", "id = 2\n")).expect("ring with a key twice");
        let reopened = Keystore::open(dir.path(), options());
        assert!(
            matches!(&reopened, Err(KeystoreError::BadKeyring { reason, .. }) if reason.contains("twice")),
            "{:?}",
            reopened.err()
        );
        let bad_time = text.replace("signs_from = \"", "signs_from = \"not a time ");
        fs::write(&ring, bad_time).expect("ring with a bad time");
        let read = Keystore::open(dir.path(), options()).expect("the keyring parses").schedule_at(NOW);
        assert!(
            matches!(&read, Err(KeystoreError::BadKeyring { reason, .. }) if reason.contains("RFC 3339")),
            "{:?}",
            read.err()
        );
    }

    /// Review: a key file deleted once its key had expired stopped every
    /// start and `keys retire`. Only the files of keys still trusted are
    /// read; one of those missing is still an error, naming it.
    #[test]
    fn an_expired_keys_file_may_be_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Keystore::open_or_create(dir.path(), options()).expect("create");
        store.rotate(NOW, NOW).expect("rotate");
        store.rotate(NOW + TAIL, NOW + TAIL).expect("rotate");
        fs::remove_file(store.key_path(1)).expect("delete key 1");
        let missing = store.schedule_at(NOW + TAIL - 1);
        assert!(matches!(&missing, Err(KeystoreError::Io { path, .. }) if path.ends_with("issuer-0001.pk8")));
        let later = NOW + TAIL;
        let schedule = store.schedule_at(later).expect("key 1 expired");
        assert_eq!(schedule.trusted_at(later).key_ids().collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(schedule.trusted_at(later + TAIL).key_ids().collect::<Vec<_>>(), vec![3], "key 2 ends as before");
        assert_eq!(store.signer_at(later).expect("signer").key_id(), 3);
        assert_eq!(store.export_public_keys(later).expect("export").len(), 2);
        store.retire(1, later).expect("an expired key is retired without its file");
        assert!(Keystore::open_or_create(dir.path(), options()).is_ok());
    }

    /// Keyrings written before rotations were scheduled name an
    /// `active_key_id` and no `signs_from`: each key signed from when it
    /// was made, so the newest still signs and none is dropped early.
    #[test]
    fn a_keyring_from_before_scheduled_rotation_still_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Keystore::open_or_create(dir.path(), options()).expect("create");
        store.rotate(NOW, NOW).expect("rotate");
        let old = "active_key_id = 2\n\n[[keys]]\nid = 1\ncreated_at = \"2027-01-15T06:00:00+00:00\"\nretired = false\n\n\
                   [[keys]]\nid = 2\ncreated_at = \"2027-01-15T07:00:00.5+00:00\"\nretired = false\n";
        fs::write(dir.path().join("keys").join(KEYRING), old).expect("old keyring");
        let store = Keystore::open(dir.path(), options()).expect("open");
        assert_eq!(active(&store), 2);
        assert_eq!(trusted(&store), vec![1, 2]);
    }

    /// Review: a crash inside `keys rotate` left an orphan key file that
    /// made every later rotation fail. A crash at each step of rotate:
    /// then every command works and the keyring holds what was committed.
    #[test]
    fn a_crash_at_each_step_of_rotate_leaves_a_working_store() {
        for (step, committed) in
            [(STEP_KEY_WRITTEN, false), (STEP_KEYRING_TEMP_WRITTEN, false), (STEP_KEYRING_RENAMED, true)]
        {
            let dir = tempfile::tempdir().expect("tempdir");
            let options = options();
            let mut store = Keystore::open_or_create(dir.path(), options.clone()).expect("create");
            options.faults.crash_after(step);
            assert!(store.rotate(NOW - 5, NOW - 5).is_err(), "{step}");
            let mut after = Keystore::open_or_create(dir.path(), options.clone()).expect(step);
            let expected = if committed { (2, vec![1, 2]) } else { (1, vec![1]) };
            assert_eq!((active(&after), trusted(&after)), expected, "{step}");
            let next = after.rotate(NOW, NOW).expect("a later rotation works");
            assert!(next >= 2 && next != 1, "{step}: {next}");
            after.retire(1, NOW).expect("a later retirement works");
            let reopened = Keystore::open_or_create(dir.path(), options).expect("reopen");
            assert_eq!(active(&reopened), next, "{step}");
            assert!(!trusted(&reopened).contains(&1), "{step}");
        }
    }

    #[test]
    fn a_crash_at_each_step_of_retire_leaves_a_working_store() {
        for (step, committed) in [(STEP_KEYRING_TEMP_WRITTEN, false), (STEP_KEYRING_RENAMED, true)] {
            let dir = tempfile::tempdir().expect("tempdir");
            let options = options();
            let mut store = Keystore::open_or_create(dir.path(), options.clone()).expect("create");
            store.rotate(NOW - 5, NOW - 5).expect("rotate");
            options.faults.crash_after(step);
            assert!(store.retire(1, NOW).is_err(), "{step}");
            let mut after = Keystore::open_or_create(dir.path(), options).expect(step);
            assert_eq!(trusted(&after), if committed { vec![2] } else { vec![1, 2] }, "{step}");
            after.retire(1, NOW).expect("retiring again works");
            assert_eq!(after.rotate(NOW, NOW).expect("rotate"), 3);
        }
    }

    /// Review: two `keys` commands at once had no lock, so one update could
    /// be lost. Two stores rotating at once: every rotation lands.
    #[test]
    fn concurrent_rotations_all_land() {
        let dir = tempfile::tempdir().expect("tempdir");
        Keystore::open_or_create(dir.path(), options()).expect("create");
        let rotators: Vec<_> = (0..2)
            .map(|_| {
                let path = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    let mut store = Keystore::open_or_create(&path, options()).expect("open");
                    (0..5).map(|_| store.rotate(NOW, NOW).expect("rotate")).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut ids: Vec<u32> = rotators.into_iter().flat_map(|t| t.join().expect("thread")).collect();
        ids.sort();
        assert_eq!(ids, (2..=11).collect::<Vec<_>>(), "every rotation got its own id");
        let store = Keystore::open_or_create(dir.path(), options()).expect("reopen");
        assert_eq!(store.list().iter().map(|k| k.id).collect::<Vec<_>>(), (1..=11).collect::<Vec<_>>(), "none lost");
    }

    /// Issue 10: the public keys were only in the server's PKCS#8 v2 files,
    /// which `openssl pkey` refuses. The exported PEM is read by openssl,
    /// and the key it prints is the hex exported beside it.
    #[test]
    fn exported_public_keys_are_read_by_openssl() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Keystore::open_or_create(dir.path(), options()).expect("create");
        store.rotate(NOW, NOW).expect("rotate");
        store.retire(1, NOW).expect("retire");
        let exported = store.export_public_keys(NOW).expect("export");
        assert_eq!(
            exported.iter().map(|k| (k.key.key_id, k.active)).collect::<Vec<_>>(),
            vec![(2, true)],
            "trusted keys only"
        );
        let key = &exported[0];
        assert_eq!(&key.key.public_key, store.schedule_at(NOW).expect("keys").trusted_at(NOW).get(2).expect("key 2"));
        let pem_path = dir.path().join("issuer.pem");
        fs::write(&pem_path, &key.pem).expect("pem");
        let output = std::process::Command::new("openssl")
            .args(["pkey", "-pubin", "-noout", "-text", "-in"])
            .arg(&pem_path)
            .output()
            .expect("openssl is on the machine");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "openssl refused the PEM: {}", String::from_utf8_lossy(&output.stderr));
        assert!(text.contains("ED25519 Public-Key"), "{text}");
        let printed: String = text
            .lines()
            .skip_while(|l| !l.starts_with("pub:"))
            .skip(1)
            .flat_map(|l| l.trim().split(':').filter(|b| !b.is_empty()).map(str::to_string).collect::<Vec<_>>())
            .collect();
        assert_eq!(printed, hex::encode(key.key.public_key), "openssl reads the same key");
    }

    #[test]
    fn a_held_lock_refuses_a_change_after_the_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let quick = KeystoreOptions { lock_wait: Duration::from_millis(50), ..options() };
        let mut store = Keystore::open_or_create(dir.path(), quick).expect("create");
        let held = store.lock().expect("lock");
        assert!(matches!(store.rotate(NOW, NOW), Err(KeystoreError::Busy { .. })));
        drop(held);
        assert_eq!(store.rotate(NOW, NOW).expect("free again"), 2);
    }
}
