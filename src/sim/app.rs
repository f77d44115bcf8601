//! The rider's app, simulated: it talks to the account API over HTTP as a
//! phone would (a one-time code, a token, activation, the day's keys for a
//! key it made itself, arrears, refunds). The code arrives by whatever
//! the server's notifier delivers to: in-process, the demo reads an
//! [`InboxNotifier`]; beside a `serve` process, the notifications file.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value, json};
use thiserror::Error;

use crate::money::notify::InboxNotifier;
use crate::ridecode::Credential;

/// Where a simulated phone reads the codes the server sent it.
pub trait CodeInbox: Send + Sync {
    fn last_message(&self, phone: &str) -> Option<String>;
}

impl CodeInbox for InboxNotifier {
    fn last_message(&self, phone: &str) -> Option<String> {
        self.last_to(phone)
    }
}

/// The notifications file a `serve` writes (`api.notifications_file`),
/// read forward from where the last look stopped: each look reads only
/// what was appended since, so thousands of sign-ups do not read the file
/// thousands of times.
pub struct FileInbox {
    path: PathBuf,
    seen: std::sync::Mutex<(u64, HashMap<String, String>)>,
}

impl FileInbox {
    pub fn new(path: PathBuf) -> FileInbox {
        FileInbox { path, seen: std::sync::Mutex::new((0, HashMap::new())) }
    }

    /// Reads the lines appended since the last look into `last`; a line
    /// still being written is left for the next look.
    fn catch_up(&self, read_to: &mut u64, last: &mut HashMap<String, String>) -> std::io::Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = std::fs::File::open(&self.path)?;
        file.seek(SeekFrom::Start(*read_to))?;
        let mut fresh = Vec::new();
        file.read_to_end(&mut fresh)?;
        let complete = fresh.iter().rposition(|&b| b == b'\n').map_or(0, |end| end + 1);
        for line in fresh[..complete].split(|&b| b == b'\n') {
            let Ok(entry) = serde_json::from_slice::<Value>(line) else { continue };
            if let (Some(phone), Some(message)) = (entry["phone"].as_str(), entry["message"].as_str()) {
                last.insert(phone.to_string(), message.to_string());
            }
        }
        *read_to += complete as u64;
        Ok(())
    }
}

impl CodeInbox for FileInbox {
    fn last_message(&self, phone: &str) -> Option<String> {
        let mut seen = crate::sync::lock(&self.seen);
        let (read_to, last) = &mut *seen;
        self.catch_up(read_to, last).ok()?;
        last.get(phone).cloned()
    }
}

#[derive(Debug, Error)]
pub enum AppError {
    #[error("account API unreachable: {0}")]
    Http(String),
    #[error("account API refused {call} with {status} {error}: {message}")]
    Refused { call: &'static str, status: u16, error: String, message: String },
    #[error("no code reached {0}")]
    NoCode(String),
    #[error("the API's answer to {0} is not what docs/account-api.md says")]
    Unexpected(&'static str),
}

/// A signed-in card.
#[derive(Debug, Clone)]
pub struct Session {
    pub card_id: u64,
    pub token: String,
}

#[derive(Clone)]
pub struct RiderApp {
    http: reqwest::Client,
    api_url: String,
    inbox: Arc<dyn CodeInbox>,
}

impl RiderApp {
    pub fn new(api_url: &str, inbox: Arc<dyn CodeInbox>) -> RiderApp {
        RiderApp { http: reqwest::Client::new(), api_url: api_url.trim_end_matches('/').to_string(), inbox }
    }

    async fn call(&self, call: &'static str, path: &str, token: Option<&str>, body: Value) -> Result<Value, AppError> {
        let mut request = self.http.post(format!("{}{path}", self.api_url)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| AppError::Http(e.to_string()))?;
        let status = response.status();
        let body: Value = response.json().await.map_err(|e| AppError::Http(e.to_string()))?;
        if !status.is_success() {
            let text = |key: &str| body[key].as_str().unwrap_or_default().to_string();
            return Err(AppError::Refused {
                call,
                status: status.as_u16(),
                error: text("error"),
                message: text("message"),
            });
        }
        Ok(body)
    }

    /// Asks for a code, reads it off the phone, and registers.
    pub async fn sign_up(&self, phone: &str) -> Result<Session, AppError> {
        self.call("otp", "/v1/otp", None, json!({ "phone": phone })).await?;
        let message = self.inbox.last_message(phone).ok_or_else(|| AppError::NoCode(phone.to_string()))?;
        let code = message.rsplit(' ').next().unwrap_or_default();
        let body = self.call("register", "/v1/register", None, json!({ "phone": phone, "code": code })).await?;
        let card_id =
            body["card_id"].as_str().and_then(|id| id.parse().ok()).ok_or(AppError::Unexpected("register"))?;
        let token = body["token"].as_str().ok_or(AppError::Unexpected("register"))?.to_string();
        Ok(Session { card_id, token })
    }

    pub async fn activate(&self, who: &Session, payment_user_id: &str) -> Result<(), AppError> {
        let path = format!("/v1/cards/{}/activate", who.card_id);
        self.call("activate", &path, Some(&who.token), json!({ "payment_user_id": payment_user_id })).await?;
        Ok(())
    }

    /// Today's credential for a key the app made: the private key stays here.
    pub async fn daily_keys(&self, who: &Session, public_key: [u8; 32]) -> Result<Credential, AppError> {
        let path = format!("/v1/cards/{}/keys", who.card_id);
        let body = json!({ "public_key_hex": hex::encode(public_key) });
        let keys = self.call("keys", &path, Some(&who.token), body).await?;
        let bytes =
            keys["credential_hex"].as_str().and_then(|h| hex::decode(h).ok()).ok_or(AppError::Unexpected("keys"))?;
        Credential::decode(&bytes).map_err(|_| AppError::Unexpected("keys"))
    }

    pub async fn pay_arrears(&self, who: &Session) -> Result<(), AppError> {
        let path = format!("/v1/cards/{}/arrears/pay", who.card_id);
        self.call("pay arrears", &path, Some(&who.token), json!({})).await.map(|_| ())
    }

    pub async fn request_refund(&self, who: &Session) -> Result<(), AppError> {
        let path = format!("/v1/cards/{}/refund", who.card_id);
        self.call("refund", &path, Some(&who.token), json!({})).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn the_file_inbox_reads_only_what_was_appended_and_waits_for_a_whole_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notifications.jsonl");
        let inbox = FileInbox::new(path.clone());
        assert_eq!(inbox.last_message("+1"), None, "no file yet");
        let mut file = std::fs::File::create(&path).expect("file");
        file.write_all(b"{\"phone\":\"+1\",\"message\":\"code 111111\"}\n{\"phone\":\"+2\",\"message\":\"co")
            .expect("write");
        assert_eq!(inbox.last_message("+1").as_deref(), Some("code 111111"));
        assert_eq!(inbox.last_message("+2"), None, "half a line is not read");
        file.write_all(b"de 222222\"}\n{\"phone\":\"+1\",\"message\":\"code 333333\"}\n").expect("write");
        assert_eq!(inbox.last_message("+2").as_deref(), Some("code 222222"));
        assert_eq!(inbox.last_message("+1").as_deref(), Some("code 333333"), "the latest wins");
    }
}
