//! Issuer keys on disk, under `DATA_DIR/keys`:
//!
//! - `issuer-NNNN.pk8`: one Ed25519 key each, PKCS#8 DER, mode 0600;
//! - `keyring.toml`: which key signs new credentials (`active_key_id`) and
//!   which are retired (no longer trusted by the server).
//!
//! Rotation adds a key and makes it active; the old one stays trusted until
//! retired, so credentials issued yesterday still verify today.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ridecode::{IssuerPublicKeys, IssuerSigningKey, KeyError};

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

pub struct Keystore {
    dir: PathBuf,
    ring: KeyringFile,
}

impl Keystore {
    /// Opens the key store, making a first key when there is none.
    pub fn open_or_create(data_dir: &Path) -> Result<Keystore, KeystoreError> {
        let dir = data_dir.join("keys");
        let ring_path = dir.join("keyring.toml");
        if ring_path.exists() {
            let text = fs::read_to_string(&ring_path)
                .map_err(|source| KeystoreError::Io { path: ring_path.clone(), source })?;
            let ring: KeyringFile = toml::from_str(&text)
                .map_err(|e| KeystoreError::BadKeyring { path: ring_path.clone(), reason: e.to_string() })?;
            return Ok(Keystore { dir, ring });
        }
        fs::create_dir_all(&dir).map_err(|source| KeystoreError::Io { path: dir.clone(), source })?;
        let mut store = Keystore { dir, ring: KeyringFile { active_key_id: 0, keys: Vec::new() } };
        store.rotate()?;
        Ok(store)
    }

    /// Makes a new key and makes it the active one; returns its id.
    pub fn rotate(&mut self) -> Result<u32, KeystoreError> {
        let id = self.ring.keys.iter().map(|k| k.id).max().unwrap_or(0) + 1;
        let (_, document) = IssuerSigningKey::generate(id)?;
        let path = self.key_path(id);
        crate::files::write_private(&path, &document).map_err(|source| KeystoreError::Io { path, source })?;
        self.ring.keys.push(KeyInfo { id, created_at: chrono::Utc::now().to_rfc3339(), retired: false });
        self.ring.active_key_id = id;
        self.save()?;
        Ok(id)
    }

    /// Stops trusting a key: codes under it become `unknown_issuer_key`.
    pub fn retire(&mut self, id: u32) -> Result<(), KeystoreError> {
        if id == self.ring.active_key_id {
            return Err(KeystoreError::RetiringActiveKey(id));
        }
        let key = self.ring.keys.iter_mut().find(|k| k.id == id).ok_or(KeystoreError::NoSuchKey(id))?;
        key.retired = true;
        self.save()
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
        let document = fs::read(&path).map_err(|source| KeystoreError::Io { path, source })?;
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

    fn key_path(&self, id: u32) -> PathBuf {
        self.dir.join(format!("issuer-{id:04}.pk8"))
    }

    fn save(&self) -> Result<(), KeystoreError> {
        let path = self.dir.join("keyring.toml");
        let text = toml::to_string_pretty(&self.ring)
            .map_err(|e| KeystoreError::BadKeyring { path: path.clone(), reason: e.to_string() })?;
        let tmp = self.dir.join(".keyring.toml.tmp");
        fs::write(&tmp, text).map_err(|source| KeystoreError::Io { path: tmp.clone(), source })?;
        fs::rename(&tmp, &path).map_err(|source| KeystoreError::Io { path, source })
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_old_keys_trusted_until_retired() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Keystore::open_or_create(dir.path()).expect("create");
        assert_eq!(store.active_key_id(), 1);
        assert_eq!(store.rotate().expect("rotate"), 2);
        let reopened = Keystore::open_or_create(dir.path()).expect("reopen");
        assert_eq!(reopened.active_key_id(), 2);
        assert_eq!(reopened.trusted_public_keys().expect("keys").key_ids().collect::<Vec<_>>(), vec![1, 2]);
        assert!(matches!(store.retire(2), Err(KeystoreError::RetiringActiveKey(2))));
        store.retire(1).expect("retire");
        assert_eq!(store.trusted_public_keys().expect("keys").key_ids().collect::<Vec<_>>(), vec![2]);
    }
}
