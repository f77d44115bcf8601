//! The secret shared with the payment gateway: it signs every request and
//! every answer, so whoever holds it can debit riders or fake a decline.
//! It comes from the environment or from a file, never from the config
//! itself (a config file is read by many and kept in repositories); with
//! neither, it is the demo's, which `serve` refuses for a real gateway.

use std::io::Read;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The environment variable holding the secret (it wins over nothing: set
/// it or `payments.hmac_secret_file`, not both).
pub const PAYMENTS_SECRET_ENV: &str = "FARESTREAM_PAYMENTS_SECRET";
/// The secret when none is set: the demo's and the tests', known to all.
pub const DEMO_PAYMENTS_SECRET: &str = "farestream-demo-secret-change-me";
/// HMAC-SHA256 is as strong as its key up to the hash's 32 bytes.
pub const PAYMENTS_SECRET_BYTES_MIN: usize = 32;
/// A key longer than a hash block is hashed first; this bounds the read.
pub const PAYMENTS_SECRET_BYTES_MAX: usize = 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("set the payments secret once: {PAYMENTS_SECRET_ENV} and payments.hmac_secret_file are both set")]
    SetTwice,
    #[error("the payments secret from {from} is empty")]
    Empty { from: String },
    #[error(
        "the payments secret from {from} is {bytes} bytes: {PAYMENTS_SECRET_BYTES_MIN} to {PAYMENTS_SECRET_BYTES_MAX} are required"
    )]
    Length { from: String, bytes: usize },
    #[error("cannot read the payments secret file {path}: {reason}")]
    Read { path: String, reason: String },
}

/// Where the secret came from: said at start-up, never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Environment,
    File(PathBuf),
    /// Nothing was set: [`DEMO_PAYMENTS_SECRET`].
    Demo,
}

/// The resolved secret. Its `Debug` names only the source.
#[derive(Clone, PartialEq, Eq)]
pub struct PaymentsSecret {
    bytes: Vec<u8>,
    source: SecretSource,
}

impl std::fmt::Debug for PaymentsSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentsSecret").field("source", &self.source).finish_non_exhaustive()
    }
}

impl PaymentsSecret {
    /// The secret from the environment variable's value or the file, one
    /// of them at most; the demo secret when neither is set. One trailing
    /// line end of a file is not part of it (editors add one).
    pub fn resolve(from_env: Option<Vec<u8>>, file: &str) -> Result<PaymentsSecret, SecretError> {
        let (bytes, source) = match (from_env, file.is_empty()) {
            (Some(_), false) => return Err(SecretError::SetTwice),
            (Some(value), true) => (value, SecretSource::Environment),
            (None, false) => {
                let path = Path::new(file);
                let read = read_secret_file(path, PAYMENTS_SECRET_BYTES_MAX)
                    .map_err(|e| SecretError::Read { path: path.display().to_string(), reason: e.to_string() })?;
                (read, SecretSource::File(PathBuf::from(file)))
            }
            (None, true) => (DEMO_PAYMENTS_SECRET.as_bytes().to_vec(), SecretSource::Demo),
        };
        let from = source.describe();
        match bytes.len() {
            0 => Err(SecretError::Empty { from }),
            n if !(PAYMENTS_SECRET_BYTES_MIN..=PAYMENTS_SECRET_BYTES_MAX).contains(&n) => {
                Err(SecretError::Length { from, bytes: n })
            }
            _ => Ok(PaymentsSecret { bytes, source }),
        }
    }

    /// The demo's secret, however it was given: anyone can sign with it.
    pub fn is_demo(&self) -> bool {
        self.bytes == DEMO_PAYMENTS_SECRET.as_bytes()
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn source(&self) -> &SecretSource {
        &self.source
    }
}

impl SecretSource {
    /// Where it came from, for messages.
    pub fn describe(&self) -> String {
        match self {
            SecretSource::Environment => PAYMENTS_SECRET_ENV.to_string(),
            SecretSource::File(path) => path.display().to_string(),
            SecretSource::Demo => "the demo default".to_string(),
        }
    }
}

/// A secret kept in a file (the payments secret, the money store's
/// password): one trailing line end is not part of it (editors add one).
/// At most `bytes_max` bytes, a line end and one byte more are read:
/// enough for the caller to refuse a longer file by the length returned.
pub fn read_secret_file(path: &Path, bytes_max: usize) -> Result<Vec<u8>, std::io::Error> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(bytes_max as u64 + 3).read_to_end(&mut bytes)?;
    strip_one_line_end(&mut bytes);
    Ok(bytes)
}

/// Drops one trailing `\n` or `\r\n`.
pub fn strip_one_line_end(bytes: &mut Vec<u8>) {
    for end in [b"\r\n".as_slice(), b"\n"] {
        if let Some(stripped) = bytes.strip_suffix(end) {
            bytes.truncate(stripped.len());
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "0123456789abcdef0123456789abcdef";

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        std::fs::write(&path, bytes).expect("write");
        (dir, path.display().to_string())
    }

    #[test]
    fn nothing_set_is_the_demo_secret_and_it_says_so() {
        let secret = PaymentsSecret::resolve(None, "").expect("demo");
        assert!(secret.is_demo());
        assert_eq!(secret.source(), &SecretSource::Demo);
        assert!(!format!("{secret:?}").contains(DEMO_PAYMENTS_SECRET), "Debug never shows the secret");
    }

    #[test]
    fn the_environment_or_a_file_gives_it_never_both() {
        let secret = PaymentsSecret::resolve(Some(GOOD.into()), "").expect("env");
        let bytes = PaymentsSecret::resolve(Some(vec![0xff; 32]), "").expect("any bytes, UTF-8 or not");
        assert_eq!(bytes.bytes(), [0xff; 32]);
        assert_eq!(
            (secret.bytes(), secret.source(), secret.is_demo()),
            (GOOD.as_bytes(), &SecretSource::Environment, false)
        );
        let (_dir, path) = file_with(format!("{GOOD}\r\n").as_bytes());
        let secret = PaymentsSecret::resolve(None, &path).expect("file");
        assert_eq!(secret.bytes(), GOOD.as_bytes(), "one line end is not part of it");
        assert_eq!(PaymentsSecret::resolve(Some(GOOD.into()), &path), Err(SecretError::SetTwice));
        let demo = PaymentsSecret::resolve(Some(DEMO_PAYMENTS_SECRET.into()), "").expect("given");
        assert!(demo.is_demo(), "the demo secret set by hand is still the demo's");
    }

    #[test]
    fn a_secret_at_its_extremes() {
        let env = |s: String| PaymentsSecret::resolve(Some(s.into_bytes()), "");
        assert!(matches!(env(String::new()), Err(SecretError::Empty { .. })));
        assert!(matches!(env("x".repeat(31)), Err(SecretError::Length { bytes: 31, .. })));
        assert!(env("x".repeat(32)).is_ok());
        assert!(env("x".repeat(1024)).is_ok());
        assert!(matches!(env("x".repeat(1025)), Err(SecretError::Length { bytes: 1025, .. })));
        let (_dir, path) = file_with(b"\n");
        assert!(matches!(PaymentsSecret::resolve(None, &path), Err(SecretError::Empty { .. })));
        let (_dir, path) = file_with(&[b'x'; 100_000]);
        assert!(matches!(PaymentsSecret::resolve(None, &path), Err(SecretError::Length { bytes: 1027, .. })));
        let missing = PaymentsSecret::resolve(None, "/nonexistent/secret");
        assert!(matches!(missing, Err(SecretError::Read { .. })), "{missing:?}");
    }
}
