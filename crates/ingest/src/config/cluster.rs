//! The `[cluster]` section (docs/scale-out.md): whether batches are made
//! durable in the node's own write-ahead log (off, the embedded default)
//! or in a NATS JetStream stream a quorum of servers holds, and how that
//! stream and the partition leases are named, sized and timed. Plain data
//! and its rules; the cluster crate talks to NATS with it.

use serde::Deserialize;

use super::ConfigError;
use farestream_core::cluster::archive_location::{ArchiveLocation, ObjectStoreSettings};
use farestream_core::cluster::{LeaseTiming, is_name_token};

/// The most NATS server addresses one node is given.
pub const NATS_URLS_MAX: usize = 32;
/// The longest NATS server address, in bytes.
pub const NATS_URL_BYTES_MAX: usize = 256;
/// The longest node name, in bytes: it is a key in the lease buckets and
/// the value of every lease the node holds.
pub const NODE_NAME_BYTES_MAX: usize = 64;
/// The largest `cluster.segment_rows_max`: the bound an archiver holds
/// any owner's segments to, whatever its own setting.
pub const SEGMENT_ROWS_MAX_LIMIT: u64 = 10_000_000;
/// The longest shared path (the archive's, the key store's), in bytes
/// (Linux's `PATH_MAX`).
pub const ARCHIVE_DIR_BYTES_MAX: usize = 4_096;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub enabled: bool,
    pub nats_urls: Vec<String>,
    pub node_name: String,
    pub nats_user: String,
    pub nats_password_file: String,
    pub connect_timeout_ms: u64,
    pub start_wait_ms: u64,
    pub stream: String,
    pub subject_prefix: String,
    pub claimed_stream: String,
    pub claimed_subject_prefix: String,
    pub claim_read_wait_ms: u64,
    pub segment_rows_max: u64,
    pub segment_age_max_ms: u64,
    pub claim_checkpoint_interval_ms: u64,
    pub archive_dir: String,
    pub archive_s3_region: String,
    pub archive_s3_endpoint: String,
    pub archive_s3_allow_http: bool,
    pub archive_s3_credentials_file: String,
    pub archive_request_timeout_ms: u64,
    pub archive_retries_max: usize,
    pub archive_retry_timeout_ms: u64,
    pub keys_dir: String,
    pub progress_bucket: String,
    pub partitions: u16,
    pub replicas: usize,
    pub duplicate_window_ms: u64,
    pub append_ack_timeout_ms: u64,
    pub record_bytes_max: usize,
    pub acks_in_flight_max: usize,
    pub lease_bucket: String,
    pub members_bucket: String,
    pub identity_bucket: String,
    pub lease_ttl_ms: u64,
    pub lease_renew_interval_ms: u64,
    pub lease_safety_margin_ms: u64,
}

impl ClusterConfig {
    /// The lease timing, checked: a term that one lost renewal would end
    /// is refused.
    pub fn lease_timing(&self) -> Result<LeaseTiming, ConfigError> {
        LeaseTiming {
            ttl_ms: self.lease_ttl_ms,
            renew_every_ms: self.lease_renew_interval_ms,
            safety_margin_ms: self.lease_safety_margin_ms,
        }
        .checked()
        .map_err(|e| invalid(format!("cluster.lease_ttl_ms, lease_renew_interval_ms and lease_safety_margin_ms: {e}")))
    }

    /// The node's name in the cluster: `node_name`, or the data dir's
    /// `NODE_ID` when it is empty.
    pub fn node_name_or<'a>(&'a self, node_id: &'a str) -> &'a str {
        if self.node_name.is_empty() { node_id } else { &self.node_name }
    }

    /// The shared key store: named when the cluster is on (each node's
    /// own would seal a day's codes under different secrets), and never
    /// inside the archive, which every analyst reads, however either is
    /// spelled (`..`, `.`, relative to the working directory). Symbolic
    /// links are not followed: the paths may not exist yet.
    fn check_keys_dir(&self, archive: &ArchiveLocation) -> Result<(), ConfigError> {
        if self.enabled && self.keys_dir.is_empty() {
            return Err(invalid(
                "cluster.keys_dir is empty: a cluster's nodes sign and seal ride codes with one shared key store; name it"
                    .into(),
            ));
        }
        if matches!(archive, ArchiveLocation::Local(_))
            && !self.keys_dir.is_empty()
            && !self.archive_dir.is_empty()
            && resolved(&self.keys_dir).starts_with(resolved(&self.archive_dir))
        {
            return Err(invalid(format!(
                "cluster.keys_dir = {:?} is inside cluster.archive_dir, which every reader of the archive sees",
                self.keys_dir
            )));
        }
        Ok(())
    }

    /// Where the shared archive is (`archive_dir` was checked).
    pub fn archive_location(&self) -> Result<ArchiveLocation, ConfigError> {
        ArchiveLocation::parse(&self.archive_dir).map_err(|e| invalid(e.0))
    }

    /// The object store client's settings, for an `s3://` archive.
    pub fn object_store_settings(&self) -> ObjectStoreSettings {
        ObjectStoreSettings {
            region: self.archive_s3_region.clone(),
            endpoint: self.archive_s3_endpoint.clone(),
            allow_http: self.archive_s3_allow_http,
            credentials_file: self.archive_s3_credentials_file.clone(),
            request_timeout: std::time::Duration::from_millis(self.archive_request_timeout_ms),
            retries_max: self.archive_retries_max,
            retry_timeout: std::time::Duration::from_millis(self.archive_retry_timeout_ms),
        }
    }

    /// The key store's directory when the cluster shares one.
    pub fn shared_keys_dir(&self) -> Option<std::path::PathBuf> {
        (self.enabled && !self.keys_dir.is_empty()).then(|| self.keys_dir.clone().into())
    }

    /// The rules between this section's keys; each range was checked
    /// before. Checked whether or not the cluster is enabled, so a file
    /// that turns it on later holds no surprise.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.lease_timing()?;
        if self.replicas.is_multiple_of(2) {
            return Err(invalid(format!(
                "cluster.replicas = {} must be odd (1, 3 or 5): a majority of the servers is the quorum",
                self.replicas
            )));
        }
        if self.nats_urls.is_empty() || self.nats_urls.len() > NATS_URLS_MAX {
            return Err(invalid(format!(
                "cluster.nats_urls lists {} servers: 1 to {NATS_URLS_MAX}",
                self.nats_urls.len()
            )));
        }
        for url in &self.nats_urls {
            check_nats_url(url)?;
        }
        if !self.node_name.is_empty() {
            check_name("cluster.node_name", &self.node_name, NODE_NAME_BYTES_MAX)?;
        }
        if !self.nats_user.is_empty() {
            check_name("cluster.nats_user", &self.nats_user, NODE_NAME_BYTES_MAX)?;
        }
        if self.nats_urls.iter().any(|url| url.contains('@')) {
            return Err(invalid(
                "cluster.nats_urls: a URL holds a user or password; set cluster.nats_user and the password's file or FARESTREAM_NATS_PASSWORD".into(),
            ));
        }
        for (key, name) in [
            ("cluster.stream", &self.stream),
            ("cluster.claimed_stream", &self.claimed_stream),
            ("cluster.lease_bucket", &self.lease_bucket),
            ("cluster.members_bucket", &self.members_bucket),
            ("cluster.identity_bucket", &self.identity_bucket),
            ("cluster.progress_bucket", &self.progress_bucket),
        ] {
            check_name(key, name, NODE_NAME_BYTES_MAX)?;
        }
        if self.enabled && self.archive_dir.is_empty() {
            return Err(invalid(
                "cluster.archive_dir is empty: a cluster's nodes archive into one shared directory; name it".into(),
            ));
        }
        for (key, path) in [("cluster.archive_dir", &self.archive_dir), ("cluster.keys_dir", &self.keys_dir)] {
            if path.len() > ARCHIVE_DIR_BYTES_MAX || path.contains('\0') {
                return Err(invalid(format!(
                    "{key} is {} bytes or holds a NUL: a path of at most {ARCHIVE_DIR_BYTES_MAX} bytes",
                    path.len()
                )));
            }
        }
        let archive = self.archive_location()?;
        self.object_store_settings().check().map_err(|e| invalid(e.0))?;
        self.check_keys_dir(&archive)?;
        if self.stream == self.claimed_stream {
            return Err(invalid(format!("cluster.claimed_stream = {:?} is cluster.stream's name", self.stream)));
        }
        for (key, prefix) in [
            ("cluster.subject_prefix", &self.subject_prefix),
            ("cluster.claimed_subject_prefix", &self.claimed_subject_prefix),
        ] {
            if prefix.len() > NODE_NAME_BYTES_MAX || !prefix.split('.').all(is_name_token) {
                return Err(invalid(format!(
                    "{key} = {prefix:?} must be dot-separated tokens of letters, digits, '-' and '_', at most {NODE_NAME_BYTES_MAX} bytes"
                )));
            }
        }
        // Each stream takes PREFIX.* as its subjects: neither may hold the other's.
        let (scans, claimed) = (&self.subject_prefix, &self.claimed_subject_prefix);
        if scans == claimed || scans.starts_with(&format!("{claimed}.")) || claimed.starts_with(&format!("{scans}.")) {
            return Err(invalid(format!(
                "cluster.subject_prefix = {scans:?} and cluster.claimed_subject_prefix = {claimed:?} must not overlap"
            )));
        }
        Ok(())
    }
}

fn invalid(message: String) -> ConfigError {
    ConfigError::Invalid(message)
}

fn check_name(key: &str, name: &str, bytes_max: usize) -> Result<(), ConfigError> {
    if name.len() <= bytes_max && is_name_token(name) {
        return Ok(());
    }
    Err(invalid(format!("{key} = {name:?} must be letters, digits, '-' and '_', 1 to {bytes_max} bytes")))
}

/// `path` made absolute against the working directory, its `.` and `..`
/// resolved by name (no file is looked at).
fn resolved(path: &str) -> std::path::PathBuf {
    use std::path::Component;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.into());
    let mut resolved = std::path::PathBuf::new();
    for part in absolute.components() {
        match part {
            Component::ParentDir => {
                resolved.pop();
            }
            Component::CurDir => {}
            other => resolved.push(other),
        }
    }
    resolved
}

/// `nats://host:port` or `tls://host:port` (the forms the client takes),
/// within [`NATS_URL_BYTES_MAX`].
fn check_nats_url(url: &str) -> Result<(), ConfigError> {
    let rest = url.strip_prefix("nats://").or_else(|| url.strip_prefix("tls://"));
    let ok = url.len() <= NATS_URL_BYTES_MAX
        && rest.is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_graphic()));
    if ok {
        return Ok(());
    }
    Err(invalid(format!(
        "cluster.nats_urls: {url:?} must be nats://host:port or tls://host:port, at most {NATS_URL_BYTES_MAX} bytes"
    )))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn with(text: &str) -> Result<Config, String> {
        Config::from_toml_over_defaults(&format!("[cluster]\n{text}\n"), "test.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn the_shipped_cluster_is_off_and_its_settings_hold() {
        let config = Config::defaults();
        assert!(!config.cluster.enabled, "the embedded default is the single node");
        let timing = config.cluster.lease_timing().expect("the shipped timing");
        assert!(timing.renew_every_ms * 2 <= timing.ttl_ms - timing.safety_margin_ms);
        assert_eq!(config.cluster.node_name_or("node-7"), "node-7");
        assert_eq!(with("node_name = \"edge-1\"").expect("a name").cluster.node_name_or("node-7"), "edge-1");
    }

    #[test]
    fn names_and_urls_at_their_extremes() {
        let longest = "n".repeat(super::NODE_NAME_BYTES_MAX);
        let longest_url = format!("nats://{}", "h".repeat(super::NATS_URL_BYTES_MAX - 7));
        let twenty = format!("nats_urls = [{}]", vec!["\"nats://a:4222\""; super::NATS_URLS_MAX].join(", "));
        for ok in [
            format!("node_name = \"{longest}\""),
            "node_name = \"\"".to_string(),
            format!("nats_urls = [\"{longest_url}\"]"),
            "nats_urls = [\"tls://nats.example:4222\", \"nats://10.0.0.2:4222\"]".to_string(),
            twenty,
            "subject_prefix = \"a.b-c.d_e\"".to_string(),
            format!(
                "enabled = true\nkeys_dir = \"/k\"\narchive_dir = \"/{}\"",
                "d".repeat(super::ARCHIVE_DIR_BYTES_MAX - 1)
            ),
            "enabled = true\narchive_dir = \"relative/archive\"\nkeys_dir = \"relative/keys\"".to_string(),
            format!(
                "enabled = true\narchive_dir = \"/a\"\nkeys_dir = \"/{}\"",
                "k".repeat(super::ARCHIVE_DIR_BYTES_MAX - 1)
            ),
            // Beside the archive, a name that only starts alike.
            "enabled = true\narchive_dir = \"/shared/archive\"\nkeys_dir = \"/shared/archive-keys\"".to_string(),
            "keys_dir = \"\"".to_string(),
        ] {
            with(&ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let too_many = format!("nats_urls = [{}]", vec!["\"nats://a:4222\""; super::NATS_URLS_MAX + 1].join(", "));
        for (bad, named) in [
            (format!("node_name = \"{longest}n\""), "cluster.node_name"),
            ("node_name = \"a.b\"".to_string(), "cluster.node_name"),
            ("node_name = \"é\"".to_string(), "cluster.node_name"),
            ("node_name = \"a b\"".to_string(), "cluster.node_name"),
            ("nats_urls = []".to_string(), "cluster.nats_urls"),
            (too_many, "cluster.nats_urls"),
            (format!("nats_urls = [\"{longest_url}h\"]"), "cluster.nats_urls"),
            ("nats_urls = [\"http://a:4222\"]".to_string(), "cluster.nats_urls"),
            ("nats_urls = [\"nats://\"]".to_string(), "cluster.nats_urls"),
            ("nats_urls = [\"nats://a b\"]".to_string(), "cluster.nats_urls"),
            ("nats_urls = [\"nats://u:secret@a:4222\"]".to_string(), "holds a user or password"),
            ("nats_user = \"a b\"".to_string(), "cluster.nats_user"),
            (format!("nats_user = \"{longest}n\""), "cluster.nats_user"),
            ("stream = \"\"".to_string(), "cluster.stream"),
            ("stream = \"A.B\"".to_string(), "cluster.stream"),
            ("lease_bucket = \"x*\"".to_string(), "cluster.lease_bucket"),
            ("members_bucket = \"\"".to_string(), "cluster.members_bucket"),
            ("identity_bucket = \"a.b\"".to_string(), "cluster.identity_bucket"),
            ("subject_prefix = \"a..b\"".to_string(), "cluster.subject_prefix"),
            ("subject_prefix = \"a.>\"".to_string(), "cluster.subject_prefix"),
            ("claimed_subject_prefix = \"a b\"".to_string(), "cluster.claimed_subject_prefix"),
            ("claimed_subject_prefix = \"farestream.scans\"".to_string(), "must not overlap"),
            ("claimed_subject_prefix = \"farestream.scans.x\"".to_string(), "must not overlap"),
            ("claimed_stream = \"FARESTREAM_SCANS\"".to_string(), "cluster.claimed_stream"),
            ("claimed_stream = \"\"".to_string(), "cluster.claimed_stream"),
            ("replicas = 2".to_string(), "cluster.replicas"),
            ("replicas = 4".to_string(), "cluster.replicas"),
            ("progress_bucket = \"\"".to_string(), "cluster.progress_bucket"),
            ("progress_bucket = \"a.b\"".to_string(), "cluster.progress_bucket"),
            ("enabled = true\nkeys_dir = \"/k\"".to_string(), "cluster.archive_dir is empty"),
            ("enabled = true\narchive_dir = \"/a\"".to_string(), "cluster.keys_dir is empty"),
            (format!("keys_dir = \"/{}\"", "k".repeat(super::ARCHIVE_DIR_BYTES_MAX)), "cluster.keys_dir"),
            ("keys_dir = \"/a\\u0000b\"".to_string(), "cluster.keys_dir"),
            (
                "archive_dir = \"/shared/archive\"\nkeys_dir = \"/shared/archive/keys\"".to_string(),
                "inside cluster.archive_dir",
            ),
            (
                "archive_dir = \"/shared/archive\"\nkeys_dir = \"/shared/archive\"".to_string(),
                "inside cluster.archive_dir",
            ),
            // However it is spelled (an outside review's cases first).
            (
                "archive_dir = \"/shared/archive\"\nkeys_dir = \"/shared/elsewhere/../archive/keys\"".to_string(),
                "inside cluster.archive_dir",
            ),
            ("archive_dir = \"archive\"\nkeys_dir = \"./archive/keys\"".to_string(), "inside cluster.archive_dir"),
            (
                "archive_dir = \"/shared/./archive/\"\nkeys_dir = \"/shared/archive//keys\"".to_string(),
                "inside cluster.archive_dir",
            ),
            (
                "archive_dir = \"/shared/archive/x/..\"\nkeys_dir = \"/shared/archive/keys\"".to_string(),
                "inside cluster.archive_dir",
            ),
            (format!("archive_dir = \"/{}\"", "d".repeat(super::ARCHIVE_DIR_BYTES_MAX)), "cluster.archive_dir"),
            ("archive_dir = \"/a\\u0000b\"".to_string(), "cluster.archive_dir"),
        ] {
            let error = with(&bad).err().unwrap_or_else(|| panic!("{bad} was accepted"));
            assert!(error.contains(named), "{bad}: {error}");
        }
    }

    #[test]
    fn a_lease_timing_one_lost_renewal_would_break_is_refused() {
        for bad in [
            "lease_ttl_ms = 4000\nlease_safety_margin_ms = 4000",
            "lease_ttl_ms = 10000\nlease_renew_interval_ms = 5000\nlease_safety_margin_ms = 1000",
        ] {
            let error = with(bad).err().unwrap_or_else(|| panic!("{bad} was accepted"));
            assert!(error.contains("cluster.lease_ttl_ms"), "{bad}: {error}");
        }
        let tightest = with("lease_ttl_ms = 1000\nlease_renew_interval_ms = 500\nlease_safety_margin_ms = 0");
        tightest.expect("renewing at half the term holds through one lost renewal");
    }
}
