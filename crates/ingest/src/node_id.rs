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
/// Beside `NODE_ID` from when the id is made until a pricer has held its
/// cursor under it ([`NodeId::in_use`]): a data dir that served under
/// another name (a copy renamed) has rides in its log that no cursor of
/// this name has priced, so its pricer starts at the log's first record,
/// not where the archive stands, however many starts that takes.
pub const NODE_ID_NEW_FILE: &str = "NODE_ID.new";
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
        // The mark first: an id is never on disk without it until used.
        let new = data_dir.join(NODE_ID_NEW_FILE);
        write_public(&new, b"").map_err(|source| NodeIdError::Io { path: new.clone(), source })?;
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

    /// Whether the data dir's id is new: no pricer has held a cursor
    /// under it yet ([`NODE_ID_NEW_FILE`]).
    pub fn is_new(data_dir: &Path) -> Result<bool, NodeIdError> {
        let new = data_dir.join(NODE_ID_NEW_FILE);
        new.try_exists().map_err(|source| NodeIdError::Io { path: new, source })
    }

    /// The pricer holds a cursor under the id: it is new no more.
    pub fn in_use(data_dir: &Path, faults: &Faults) -> Result<(), NodeIdError> {
        let new = data_dir.join(NODE_ID_NEW_FILE);
        let io = |source| NodeIdError::Io { path: new.clone(), source };
        match std::fs::remove_file(&new) {
            Ok(()) => fsync_dir(data_dir, faults).map_err(io),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(io(source)),
        }
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

    /// A new id stays new until it is put in use, across loads; an id
    /// made again (its file deleted) is new again.
    #[test]
    fn an_id_is_new_until_used_and_new_again_when_made_again() {
        let dir = tempfile::tempdir().expect("dir");
        let faults = Faults::default();
        let first = NodeId::load_or_create(dir.path(), &faults).expect("made");
        assert!(NodeId::is_new(dir.path()).expect("read"));
        assert_eq!(NodeId::load_or_create(dir.path(), &faults).expect("kept"), first);
        assert!(NodeId::is_new(dir.path()).expect("read"), "a start that failed before using it leaves it new");
        NodeId::in_use(dir.path(), &faults).expect("used");
        NodeId::in_use(dir.path(), &faults).expect("twice is once");
        assert!(!NodeId::is_new(dir.path()).expect("read"));
        std::fs::remove_file(dir.path().join(NODE_ID_FILE)).expect("renamed by an operator");
        assert_ne!(NodeId::load_or_create(dir.path(), &faults).expect("made again"), first);
        assert!(NodeId::is_new(dir.path()).expect("read"));
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
