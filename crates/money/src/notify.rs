//! How farestream tells a rider something: a one-time code, a refund kept
//! back until the arrears are paid. Pluggable: the default writes to the
//! log (an operator's SMS or push gateway goes behind the same trait); the
//! demo and the tests keep what was sent to read it back.

use std::collections::HashMap;
use std::sync::Mutex;

use farestream_core::sync::lock;

pub trait Notifier: Send + Sync + std::fmt::Debug {
    fn notify(&self, phone: &str, message: &str);
}

/// Writes every message to the log at `info`.
#[derive(Debug, Default)]
pub struct LogNotifier;

impl Notifier for LogNotifier {
    fn notify(&self, phone: &str, message: &str) {
        tracing::info!(phone, message, "rider notified");
    }
}

/// Appends every message to a file as a JSON line (`{"phone", "message"}`)
/// as well as the log: a test rig's simulated phones read their codes there.
#[derive(Debug)]
pub struct FileNotifier {
    path: std::path::PathBuf,
    file: Mutex<std::fs::File>,
}

impl FileNotifier {
    pub fn open(path: &std::path::Path) -> std::io::Result<FileNotifier> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(FileNotifier { path: path.to_path_buf(), file: Mutex::new(file) })
    }
}

impl Notifier for FileNotifier {
    fn notify(&self, phone: &str, message: &str) {
        LogNotifier.notify(phone, message);
        let mut line = serde_json::json!({ "phone": phone, "message": message }).to_string();
        line.push('\n');
        if let Err(error) = std::io::Write::write_all(&mut *lock(&self.file), line.as_bytes()) {
            tracing::warn!(%error, path = %self.path.display(), "cannot write a notification to its file");
        }
    }
}

/// Keeps every message to each phone, for a simulated app to read and a
/// test to count (a demo's city sends a few to each of its riders).
#[derive(Debug, Default)]
pub struct InboxNotifier {
    sent: Mutex<HashMap<String, Vec<String>>>,
}

impl InboxNotifier {
    pub fn last_to(&self, phone: &str) -> Option<String> {
        lock(&self.sent).get(phone).and_then(|all| all.last().cloned())
    }

    /// Every message to `phone`, oldest first.
    pub fn all_to(&self, phone: &str) -> Vec<String> {
        lock(&self.sent).get(phone).cloned().unwrap_or_default()
    }
}

impl Notifier for InboxNotifier {
    fn notify(&self, phone: &str, message: &str) {
        lock(&self.sent).entry(phone.to_string()).or_default().push(message.to_string());
    }
}
