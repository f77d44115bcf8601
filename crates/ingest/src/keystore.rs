//! Issuer keys on disk, under `DATA_DIR/keys`:
//!
//! - `issuer-NNNN.pk8`: one Ed25519 key each, PKCS#8 DER, mode 0600;
//! - `keyring.toml`: which key signs new credentials (`active_key_id`) and
//!   which are retired (no longer trusted by the server);
//! - `.lock`: held by every command that changes the store, so two `keys`
//!   commands at once both land, one after the other (a command that cannot
//!   get it within `keys.lock_wait_ms_max` is refused).
//!
//! Rotation adds a key and makes it active; the old one stays trusted until
//! retired, so credentials issued yesterday still verify today.
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

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::Config;
use crate::faults::Faults;
use farestream_core::ridecode::{IssuerPublicKeys, IssuerSigningKey, KeyError};

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
    #[error("issuer key {0} is the active key; rotate before retiring it")]
    RetiringActiveKey(u32),
    #[error("the key store {dir} is locked by another command; waited {waited_ms} ms (keys.lock_wait_ms_max)")]
    Busy { dir: PathBuf, waited_ms: u64 },
    #[error("issuer key ids are exhausted")]
    IdsExhausted,
    #[error("no issuer keys under {0} yet: `farestream serve` or `farestream keys rotate` makes the first")]
    Empty(PathBuf),
    #[error("the system random source failed")]
    Rng,
    #[error("issuer key {id}: cannot encode its public key: {reason}")]
    Export { id: u32, reason: String },
}

/// An issuer public key as validators load it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedKey {
    pub id: u32,
    pub active: bool,
    /// The raw 32-byte Ed25519 public key, hex.
    pub hex: String,
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
    pub retired: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyringFile {
    active_key_id: u32,
    keys: Vec<KeyInfo>,
}

/// How a key store is opened: the lock wait, and failpoints for tests.
#[derive(Debug, Clone)]
pub struct KeystoreOptions {
    pub lock_wait: Duration,
    pub faults: Arc<Faults>,
}

impl KeystoreOptions {
    pub fn from_config(config: &Config) -> KeystoreOptions {
        KeystoreOptions {
            lock_wait: Duration::from_millis(config.keys.lock_wait_ms_max),
            faults: Arc::new(Faults::default()),
        }
    }
}

pub struct Keystore {
    dir: PathBuf,
    ring: KeyringFile,
    options: KeystoreOptions,
}

impl Keystore {
    /// Opens the key store, making a first key when there is none.
    pub fn open_or_create(data_dir: &Path, options: KeystoreOptions) -> Result<Keystore, KeystoreError> {
        let dir = data_dir.join("keys");
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let empty = KeyringFile { active_key_id: 0, keys: Vec::new() };
        let mut store = Keystore { dir, ring: empty, options };
        if let Some(ring) = store.read_ring()? {
            store.ring = ring;
            return Ok(store);
        }
        // Two first starts at once must not both make key 1.
        store.change(|store| {
            if store.ring.keys.is_empty() {
                store.add_key()?;
            }
            Ok(())
        })?;
        Ok(store)
    }

    /// Opens a key store that has keys; never makes one (`keys list` and
    /// `keys retire` on a fresh data dir, a load generator that needs the
    /// server's keys).
    pub fn open(data_dir: &Path, options: KeystoreOptions) -> Result<Keystore, KeystoreError> {
        let dir = data_dir.join("keys");
        let empty = KeyringFile { active_key_id: 0, keys: Vec::new() };
        let mut store = Keystore { dir, ring: empty, options };
        store.ring = store.read_ring()?.ok_or_else(|| KeystoreError::Empty(store.dir.clone()))?;
        Ok(store)
    }

    /// Makes a new key and makes it the active one; returns its id.
    pub fn rotate(&mut self) -> Result<u32, KeystoreError> {
        self.change(Keystore::add_key)
    }

    /// Stops trusting a key: codes under it become `unknown_issuer_key`.
    pub fn retire(&mut self, id: u32) -> Result<(), KeystoreError> {
        self.change(|store| {
            if id == store.ring.active_key_id {
                return Err(KeystoreError::RetiringActiveKey(id));
            }
            let key = store.ring.keys.iter_mut().find(|k| k.id == id).ok_or(KeystoreError::NoSuchKey(id))?;
            key.retired = true;
            store.save()
        })
    }

    pub fn active_key_id(&self) -> u32 {
        self.ring.active_key_id
    }

    pub fn list(&self) -> &[KeyInfo] {
        &self.ring.keys
    }

    /// The key that signs new credentials.
    pub fn active_signer(&self) -> Result<IssuerSigningKey, KeystoreError> {
        self.signer(self.ring.active_key_id)
    }

    pub fn signer(&self, id: u32) -> Result<IssuerSigningKey, KeystoreError> {
        let path = self.key_path(id);
        let document = fs::read(&path).map_err(io(&path))?;
        Ok(IssuerSigningKey::from_pkcs8(id, &document)?)
    }

    /// Public keys of every key not retired: what the server trusts.
    pub fn trusted_public_keys(&self) -> Result<IssuerPublicKeys, KeystoreError> {
        let mut keys = IssuerPublicKeys::new();
        for info in self.ring.keys.iter().filter(|k| !k.retired) {
            keys.insert(info.id, self.signer(info.id)?.public_key());
        }
        Ok(keys)
    }

    /// Every trusted issuer public key, for validators, in encodings
    /// standard tools read: raw hex, and PEM SubjectPublicKeyInfo (made by
    /// rcgen from the stored PKCS#8 document).
    pub fn export_public_keys(&self) -> Result<Vec<ExportedKey>, KeystoreError> {
        let mut exported = Vec::new();
        for info in self.ring.keys.iter().filter(|k| !k.retired) {
            let path = self.key_path(info.id);
            let document = fs::read(&path).map_err(io(&path))?;
            let pair = rcgen::KeyPair::try_from(document.as_slice())
                .map_err(|e| KeystoreError::Export { id: info.id, reason: e.to_string() })?;
            exported.push(ExportedKey {
                id: info.id,
                active: info.id == self.ring.active_key_id,
                hex: hex::encode(self.signer(info.id)?.public_key()),
                pem: pair.public_key_pem(),
            });
        }
        Ok(exported)
    }

    /// Runs `apply` under the lock on the keyring as it is on disk now.
    fn change<T>(&mut self, apply: impl FnOnce(&mut Keystore) -> Result<T, KeystoreError>) -> Result<T, KeystoreError> {
        let _lock = self.lock()?;
        if let Some(ring) = self.read_ring()? {
            self.ring = ring;
        }
        apply(self)
    }

    /// Step 1, then the keyring with the new key active.
    fn add_key(&mut self) -> Result<u32, KeystoreError> {
        let id = self.highest_id_on_disk()?.checked_add(1).ok_or(KeystoreError::IdsExhausted)?;
        let document = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .map_err(|_| KeystoreError::Rng)?;
        // Parsed before it is stored: a key file on disk always loads.
        IssuerSigningKey::from_pkcs8(id, document.as_ref())?;
        let path = self.key_path(id);
        crate::files::write_private(&path, document.as_ref()).map_err(io(&path))?;
        crate::files::fsync_dir(&self.dir, &self.options.faults).map_err(io(&self.dir))?;
        self.options.faults.crash_point(STEP_KEY_WRITTEN).map_err(io(&path))?;
        self.ring.keys.push(KeyInfo { id, created_at: chrono::Utc::now().to_rfc3339(), retired: false });
        self.ring.active_key_id = id;
        self.save()?;
        Ok(id)
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
        let ring = toml::from_str(&text).map_err(|e| KeystoreError::BadKeyring { path, reason: e.to_string() })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> KeystoreOptions {
        KeystoreOptions { lock_wait: Duration::from_secs(10), faults: Arc::new(Faults::default()) }
    }

    fn trusted(store: &Keystore) -> Vec<u32> {
        store.trusted_public_keys().expect("keys").key_ids().collect()
    }

    #[test]
    fn rotation_keeps_old_keys_trusted_until_retired() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Keystore::open_or_create(dir.path(), options()).expect("create");
        assert_eq!(store.active_key_id(), 1);
        assert_eq!(store.rotate().expect("rotate"), 2);
        let reopened = Keystore::open_or_create(dir.path(), options()).expect("reopen");
        assert_eq!(reopened.active_key_id(), 2);
        assert_eq!(trusted(&reopened), vec![1, 2]);
        assert!(matches!(store.retire(2), Err(KeystoreError::RetiringActiveKey(2))));
        store.retire(1).expect("retire");
        assert_eq!(trusted(&store), vec![2]);
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
            assert!(store.rotate().is_err(), "{step}");
            let mut after = Keystore::open_or_create(dir.path(), options.clone()).expect(step);
            let expected = if committed { (2, vec![1, 2]) } else { (1, vec![1]) };
            assert_eq!((after.active_key_id(), trusted(&after)), expected, "{step}");
            let next = after.rotate().expect("a later rotation works");
            assert!(next >= 2 && next != 1, "{step}: {next}");
            after.retire(1).expect("a later retirement works");
            let reopened = Keystore::open_or_create(dir.path(), options).expect("reopen");
            assert_eq!(reopened.active_key_id(), next, "{step}");
            assert!(!trusted(&reopened).contains(&1), "{step}");
            assert!(reopened.active_signer().is_ok(), "{step}");
        }
    }

    #[test]
    fn a_crash_at_each_step_of_retire_leaves_a_working_store() {
        for (step, committed) in [(STEP_KEYRING_TEMP_WRITTEN, false), (STEP_KEYRING_RENAMED, true)] {
            let dir = tempfile::tempdir().expect("tempdir");
            let options = options();
            let mut store = Keystore::open_or_create(dir.path(), options.clone()).expect("create");
            store.rotate().expect("rotate");
            options.faults.crash_after(step);
            assert!(store.retire(1).is_err(), "{step}");
            let mut after = Keystore::open_or_create(dir.path(), options).expect(step);
            assert_eq!(trusted(&after), if committed { vec![2] } else { vec![1, 2] }, "{step}");
            after.retire(1).expect("retiring again works");
            assert_eq!(after.rotate().expect("rotate"), 3);
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
                    (0..5).map(|_| store.rotate().expect("rotate")).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut ids: Vec<u32> = rotators.into_iter().flat_map(|t| t.join().expect("thread")).collect();
        ids.sort();
        assert_eq!(ids, (2..=11).collect::<Vec<_>>(), "every rotation got its own id");
        let store = Keystore::open_or_create(dir.path(), options()).expect("reopen");
        assert_eq!(trusted(&store), (1..=11).collect::<Vec<_>>(), "no update was lost");
    }

    /// Issue 10: the public keys were only in the server's PKCS#8 v2 files,
    /// which `openssl pkey` refuses. The exported PEM is read by openssl,
    /// and the key it prints is the hex exported beside it.
    #[test]
    fn exported_public_keys_are_read_by_openssl() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Keystore::open_or_create(dir.path(), options()).expect("create");
        store.rotate().expect("rotate");
        store.retire(1).expect("retire");
        let exported = store.export_public_keys().expect("export");
        assert_eq!(exported.iter().map(|k| (k.id, k.active)).collect::<Vec<_>>(), vec![(2, true)], "trusted keys only");
        let key = &exported[0];
        assert_eq!(key.hex, hex::encode(store.trusted_public_keys().expect("keys").get(2).expect("key 2")));
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
        assert_eq!(printed, key.hex, "openssl reads the same key");
    }

    #[test]
    fn a_held_lock_refuses_a_change_after_the_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let quick = KeystoreOptions { lock_wait: Duration::from_millis(50), ..options() };
        let mut store = Keystore::open_or_create(dir.path(), quick).expect("create");
        let held = store.lock().expect("lock");
        assert!(matches!(store.rotate(), Err(KeystoreError::Busy { .. })));
        drop(held);
        assert_eq!(store.rotate().expect("free again"), 2);
    }
}
