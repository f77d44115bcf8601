//! A data directory's name for itself: 128 random bits, made on its first
//! start and kept in `DATA_DIR/NODE_ID`. Servers that share one money store
//! (PostgreSQL) each read their own log, so what is kept there per log (the
//! pricer's cursor, the charges archive's unfinished batch) is keyed by it.

use std::fmt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::faults::Faults;
use crate::files::{fsync_dir, write_public};

/// The file's name in the data directory.
pub const NODE_ID_FILE: &str = "NODE_ID";
/// Hex digits of an id (128 bits).
const NODE_ID_HEX_LEN: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeId(String);

#[derive(Debug, Error)]
pub enum NodeIdError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} holds {found:?}, not a node id ({NODE_ID_HEX_LEN} hex digits): mend or remove it")]
    Damaged { path: PathBuf, found: String },
    #[error("no randomness for a node id")]
    Rng,
}

impl NodeId {
    /// The data directory's id, made now if it has none. Call under the
    /// data directory's lock: two first starts would make two.
    pub fn load_or_create(data_dir: &Path, faults: &Faults) -> Result<NodeId, NodeIdError> {
        if let Some(id) = NodeId::read(data_dir)? {
            return Ok(id);
        }
        let mut bits = [0u8; NODE_ID_HEX_LEN / 2];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bits).map_err(|_| NodeIdError::Rng)?;
        let id = NodeId(bits.iter().map(|b| format!("{b:02x}")).collect());
        // Written whole beside it, then renamed in: a crash leaves the id or none.
        let path = data_dir.join(NODE_ID_FILE);
        let tmp = data_dir.join(format!("{NODE_ID_FILE}.tmp"));
        let io = |source| NodeIdError::Io { path: path.clone(), source };
        let _ = std::fs::remove_file(&tmp);
        write_public(&tmp, format!("{}\n", id.0).as_bytes()).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        fsync_dir(data_dir, faults).map_err(io)?;
        Ok(id)
    }

    /// The data directory's id, if it has one.
    pub fn read(data_dir: &Path) -> Result<Option<NodeId>, NodeIdError> {
        let path = data_dir.join(NODE_ID_FILE);
        // Read no more than an id and its line end: a huge file is damage.
        let bytes = match std::fs::File::open(&path) {
            Ok(file) => {
                let mut text = Vec::new();
                std::io::Read::read_to_end(&mut std::io::Read::take(file, NODE_ID_HEX_LEN as u64 + 2), &mut text)
                    .map_err(|source| NodeIdError::Io { path: path.clone(), source })?;
                text
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(NodeIdError::Io { path, source }),
        };
        let text = String::from_utf8_lossy(&bytes);
        let id = text.strip_suffix('\n').unwrap_or(&text);
        if id.len() != NODE_ID_HEX_LEN || !id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(NodeIdError::Damaged { path, found: text.into_owned() });
        }
        Ok(Some(NodeId(id.to_string())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An id given by a test or a tool, checked as one read from a file is.
    pub fn parse(text: &str) -> Option<NodeId> {
        (text.len() == NODE_ID_HEX_LEN && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
            .then(|| NodeId(text.to_string()))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_keeps_the_id_it_was_given_and_two_dirs_differ() {
        let (a, b) = (tempfile::tempdir().expect("a"), tempfile::tempdir().expect("b"));
        assert_eq!(NodeId::read(a.path()).expect("read"), None);
        let first = NodeId::load_or_create(a.path(), &Faults::default()).expect("made");
        assert_eq!(NodeId::load_or_create(a.path(), &Faults::default()).expect("kept"), first);
        assert_eq!(NodeId::read(a.path()).expect("read"), Some(first.clone()));
        assert_ne!(NodeId::load_or_create(b.path(), &Faults::default()).expect("other"), first);
        assert_eq!(NodeId::parse(first.as_str()), Some(first));
    }

    #[test]
    fn a_damaged_id_at_its_extremes_is_refused_not_replaced() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join(NODE_ID_FILE);
        for text in ["", "\n", "0123", &"a".repeat(33), &"A".repeat(32), &"g".repeat(32), &"0".repeat(100_000)] {
            std::fs::write(&path, text).expect("write");
            assert!(
                matches!(NodeId::load_or_create(dir.path(), &Faults::default()), Err(NodeIdError::Damaged { .. })),
                "{text:.40}"
            );
            assert_eq!(std::fs::read_to_string(&path).expect("kept").len(), text.len(), "never overwritten");
        }
        std::fs::write(&path, format!("{}\n", "0f".repeat(16))).expect("write");
        assert_eq!(NodeId::read(dir.path()).expect("read").map(|id| id.to_string()), Some("0f".repeat(16)));
    }
}
