//! How farestream tells a rider something: a one-time code, a refund kept
//! back until the arrears are paid. Pluggable: the default writes to the
//! log (an operator's SMS or push gateway goes behind the same trait); the
//! demo and the tests keep what was sent to read it back.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::sync::lock;

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

/// Keeps the last message to each phone, for a simulated app to read.
#[derive(Debug, Default)]
pub struct InboxNotifier {
    last: Mutex<HashMap<String, String>>,
}

impl InboxNotifier {
    pub fn last_to(&self, phone: &str) -> Option<String> {
        lock(&self.last).get(phone).cloned()
    }
}

impl Notifier for InboxNotifier {
    fn notify(&self, phone: &str, message: &str) {
        lock(&self.last).insert(phone.to_string(), message.to_string());
    }
}
