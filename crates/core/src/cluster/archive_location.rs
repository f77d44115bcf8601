//! Where a cluster's shared archive is (`cluster.archive_dir`): a local
//! path every node mounts, or `s3://BUCKET/PREFIX` on object storage,
//! with the `cluster.archive_*` settings for the store's client. Plain
//! data and its rules; `farestream_shared_archive` opens it.

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

/// A setting of the shared archive that cannot be used, and why (its
/// message names the config key).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct ArchiveSettingError(pub String);

/// The longest key prefix in the bucket, in bytes: S3 keys end at 1 024
/// bytes, and the longest name the archive puts under the prefix
/// (`scans/service_date=YYYY-MM-DD/late-pPPPP-…-….parquet`, a checkpoint)
/// is under 128.
pub const ARCHIVE_PREFIX_BYTES_MAX: usize = 896;
/// The longest S3 endpoint URL, in bytes.
pub const ENDPOINT_BYTES_MAX: usize = 256;
/// The longest region name, in bytes.
pub const REGION_BYTES_MAX: usize = 64;
/// The longest credentials file path, in bytes (Linux's `PATH_MAX`).
pub const CREDENTIALS_PATH_BYTES_MAX: usize = 4_096;

/// Where the shared archive is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveLocation {
    /// A directory every node mounts.
    Local(PathBuf),
    /// Keys under `prefix` (`""`: the bucket's root, otherwise no leading
    /// or trailing `/`) in an S3 bucket or an S3-compatible store.
    S3 {
        /// The bucket's name.
        bucket: String,
        /// The keys' common prefix.
        prefix: String,
    },
}

impl ArchiveLocation {
    /// `archive_dir` read: `s3://BUCKET[/PREFIX]`, or a local path. Any
    /// other `scheme://` is refused rather than taken for a folder name.
    /// A scheme mistyped (`s3:/b`, `s3:b`, `s3//b`) is refused too, never
    /// taken for a relative folder each node would archive into apart
    /// (a folder named `s3` is spelled `./s3`).
    pub fn parse(archive_dir: &str) -> Result<ArchiveLocation, ArchiveSettingError> {
        let Some((scheme, rest)) = archive_dir.split_once("://") else {
            let s3_ish = |s: &str| s.eq_ignore_ascii_case("s3:") || s.eq_ignore_ascii_case("s3/");
            if archive_dir.get(..3).is_some_and(s3_ish) {
                return Err(invalid(format!(
                    "cluster.archive_dir = {archive_dir:?} is neither s3://BUCKET/PREFIX nor a folder's path (a folder \
                     named s3 is ./s3)"
                )));
            }
            return Ok(ArchiveLocation::Local(archive_dir.into()));
        };
        if scheme != "s3" {
            return Err(invalid(format!(
                "cluster.archive_dir = {archive_dir:?}: object storage is s3://BUCKET/PREFIX (S3 or a store that \
                 speaks its API); {scheme}:// is not built"
            )));
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
        check_bucket(bucket)?;
        check_prefix(prefix)?;
        Ok(ArchiveLocation::S3 { bucket: bucket.to_string(), prefix: prefix.to_string() })
    }

    /// The URL DataFusion and outside readers name a table root by:
    /// `s3://BUCKET/PREFIX/NAME/`, or the local folder's path.
    pub fn table_url(&self, name: &str) -> String {
        match self {
            ArchiveLocation::Local(dir) => format!("{}/", dir.join(name).display()),
            ArchiveLocation::S3 { bucket, prefix } => format!("s3://{bucket}/{}/", key_under(prefix, name)),
        }
    }
}

/// The key of `rest` (a table, a file in it) under an archive's `prefix`:
/// `PREFIX/REST`, or `REST` at the bucket's root (`prefix` empty).
pub fn key_under(prefix: &str, rest: &str) -> String {
    match prefix.is_empty() {
        true => rest.to_string(),
        false => format!("{prefix}/{rest}"),
    }
}

/// The object store client's settings, from `cluster.archive_*`.
/// Credentials never come from the config file itself: from the file it
/// names, else from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
/// `AWS_SESSION_TOKEN` or the instance's role, as AWS's own tools do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectStoreSettings {
    /// The bucket's region.
    pub region: String,
    /// `""`: AWS's endpoint for the region (or `AWS_ENDPOINT`).
    pub endpoint: String,
    /// Whether a plain `http://` endpoint is taken (a store on loopback).
    pub allow_http: bool,
    /// `""`: the environment's credentials or the instance's role.
    pub credentials_file: String,
    /// How long one request may take.
    pub request_timeout: Duration,
    /// How many times a failed request is tried again.
    pub retries_max: usize,
    /// How long the tries of one request may go on.
    pub retry_timeout: Duration,
}

impl ObjectStoreSettings {
    /// The rules between the settings: a region's name, an endpoint's
    /// form, plain http only when allowed, a credentials path's length.
    pub fn check(&self) -> Result<(), ArchiveSettingError> {
        let region_ok = !self.region.is_empty()
            && self.region.len() <= REGION_BYTES_MAX
            && self.region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !region_ok {
            return Err(invalid(format!(
                "cluster.archive_s3_region = {:?} must be a region's name (lowercase letters, digits and '-'), 1 to \
                 {REGION_BYTES_MAX} bytes",
                self.region
            )));
        }
        if self.credentials_file.len() > CREDENTIALS_PATH_BYTES_MAX || self.credentials_file.contains('\0') {
            return Err(invalid(format!(
                "cluster.archive_s3_credentials_file is {} bytes or holds a NUL: a path of at most \
                 {CREDENTIALS_PATH_BYTES_MAX} bytes",
                self.credentials_file.len()
            )));
        }
        if self.endpoint.is_empty() {
            return Ok(());
        }
        let rest = self.endpoint.strip_prefix("https://").or_else(|| self.endpoint.strip_prefix("http://"));
        // No `user:password@`: the access key is never in the config.
        let endpoint_ok = self.endpoint.len() <= ENDPOINT_BYTES_MAX
            && rest.is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_graphic() && b != b'@'));
        if !endpoint_ok {
            return Err(invalid(format!(
                "cluster.archive_s3_endpoint ({} bytes) must be http(s)://host[:port] with no user or password \
                 (the access key goes in archive_s3_credentials_file), at most {ENDPOINT_BYTES_MAX} bytes",
                self.endpoint.len()
            )));
        }
        if self.endpoint.starts_with("http://") && !self.allow_http {
            return Err(invalid(format!(
                "cluster.archive_s3_endpoint = {:?} is plain http, which sends every scan unencrypted: use https, \
                 or set cluster.archive_s3_allow_http for a store on loopback",
                self.endpoint
            )));
        }
        Ok(())
    }
}

/// S3's bucket names: 3 to 63 bytes of lowercase letters, digits, `.`
/// and `-`, starting and ending with a letter or digit.
fn check_bucket(bucket: &str) -> Result<(), ArchiveSettingError> {
    let edge_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok = (3..=63).contains(&bucket.len())
        && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && edge_ok(bucket.as_bytes().first())
        && edge_ok(bucket.as_bytes().last());
    if ok {
        return Ok(());
    }
    Err(invalid(format!(
        "cluster.archive_dir: the bucket {bucket:?} must be 3 to 63 bytes of lowercase letters, digits, '.' and '-', \
         starting and ending with a letter or digit"
    )))
}

/// A prefix whose every part is a plain name: no empty part (`a//b`), no
/// `.` or `..`, no control byte, none of `%`, `#` and `?` (a reader's
/// URL would take them for an escape, a fragment or a query, and read
/// another folder), and room for the archive's names.
fn check_prefix(prefix: &str) -> Result<(), ArchiveSettingError> {
    if prefix.is_empty() {
        return Ok(());
    }
    let ok = prefix.len() <= ARCHIVE_PREFIX_BYTES_MAX
        && prefix.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
        && !prefix.chars().any(|c| c.is_control() || matches!(c, '%' | '#' | '?'));
    if ok {
        return Ok(());
    }
    Err(invalid(format!(
        "cluster.archive_dir: the prefix {prefix:?} must be '/'-separated names (no empty part, '.' or '..', no \
         control character, '%', '#' or '?'), at most {ARCHIVE_PREFIX_BYTES_MAX} bytes"
    )))
}

fn invalid(message: String) -> ArchiveSettingError {
    ArchiveSettingError(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_at_their_extremes() {
        let s3 = |bucket: &str, prefix: &str| ArchiveLocation::S3 { bucket: bucket.into(), prefix: prefix.into() };
        let longest_bucket = "b".repeat(63);
        let longest_prefix = "p".repeat(ARCHIVE_PREFIX_BYTES_MAX);
        for (text, location) in [
            ("/shared/archive".to_string(), ArchiveLocation::Local("/shared/archive".into())),
            ("relative".to_string(), ArchiveLocation::Local("relative".into())),
            ("s3://abc".to_string(), s3("abc", "")),
            ("s3://abc/".to_string(), s3("abc", "")),
            ("s3://fares.eu-1/archive/prod/".to_string(), s3("fares.eu-1", "archive/prod")),
            (format!("s3://{longest_bucket}/{longest_prefix}"), s3(&longest_bucket, &longest_prefix)),
            ("s3://abc/ünïcode key".to_string(), s3("abc", "ünïcode key")),
        ] {
            assert_eq!(ArchiveLocation::parse(&text).expect(&text), location, "{text}");
        }
        for bad in [
            "s3://".to_string(),
            "s3://ab".to_string(),
            format!("s3://{longest_bucket}b"),
            "s3://Upper".to_string(),
            "s3://-abc".to_string(),
            "s3://abc-".to_string(),
            "s3://a_c".to_string(),
            "s3://abc//x".to_string(),
            "s3://abc/a//b".to_string(),
            "s3://abc/a/../b".to_string(),
            "s3://abc/./b".to_string(),
            "s3://abc/a\nb".to_string(),
            format!("s3://abc/{longest_prefix}p"),
            "gs://abc/x".to_string(),
            // A reader's URL would read these as an escape, a fragment, a query.
            "s3://abc/pct%41x".to_string(),
            "s3://abc/hash#1".to_string(),
            "s3://abc/what?x=1".to_string(),
            // Scheme typos, never a relative folder each node fills apart.
            "s3:/abc/x".to_string(),
            "s3:abc/x".to_string(),
            "s3//abc/x".to_string(),
            "S3:/abc".to_string(),
            "S3://abc".to_string(),
            "file:///shared/archive".to_string(),
            "https://abc.s3.amazonaws.com/x".to_string(),
        ] {
            let error = ArchiveLocation::parse(&bad).expect_err(&bad).to_string();
            assert!(error.contains("cluster.archive_dir"), "{bad}: {error}");
        }
    }

    #[test]
    fn table_urls_name_each_tables_root() {
        let at = |text: &str| ArchiveLocation::parse(text).expect(text).table_url("scans");
        assert_eq!(at("/shared/archive"), "/shared/archive/scans/");
        assert_eq!(at("s3://abc"), "s3://abc/scans/");
        assert_eq!(at("s3://abc/x/y/"), "s3://abc/x/y/scans/");
    }

    #[test]
    fn client_settings_at_their_extremes() {
        let base = ObjectStoreSettings {
            region: "eu-west-1".into(),
            endpoint: String::new(),
            allow_http: false,
            credentials_file: String::new(),
            request_timeout: Duration::from_secs(30),
            retries_max: 10,
            retry_timeout: Duration::from_secs(180),
        };
        let with = |region: &str, endpoint: &str, allow_http| ObjectStoreSettings {
            region: region.into(),
            endpoint: endpoint.into(),
            allow_http,
            ..base.clone()
        };
        let longest_endpoint = format!("https://{}", "h".repeat(ENDPOINT_BYTES_MAX - 8));
        for ok in [
            base.clone(),
            with(&"r".repeat(REGION_BYTES_MAX), "", false),
            with("us-east-1", "https://minio.internal:9000", false),
            with("us-east-1", "http://127.0.0.1:9000", true),
            with("us-east-1", &longest_endpoint, false),
            ObjectStoreSettings { credentials_file: "/".repeat(CREDENTIALS_PATH_BYTES_MAX), ..base.clone() },
        ] {
            ok.check().unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        for (bad, named) in [
            (with("", "", false), "archive_s3_region"),
            (with(&"r".repeat(REGION_BYTES_MAX + 1), "", false), "archive_s3_region"),
            (with("EU west", "", false), "archive_s3_region"),
            (with("us-east-1", "http://127.0.0.1:9000", false), "archive_s3_allow_http"),
            (with("us-east-1", "ftp://h", true), "archive_s3_endpoint"),
            (with("us-east-1", "https://", false), "archive_s3_endpoint"),
            (with("us-east-1", "https://a b", false), "archive_s3_endpoint"),
            (with("us-east-1", "https://AKID:s3cr3t@minio:9000", false), "archive_s3_endpoint"),
            (with("us-east-1", &format!("{longest_endpoint}h"), false), "archive_s3_endpoint"),
            (
                ObjectStoreSettings { credentials_file: "/".repeat(CREDENTIALS_PATH_BYTES_MAX + 1), ..base.clone() },
                "archive_s3_credentials_file",
            ),
            (ObjectStoreSettings { credentials_file: "/a\0b".into(), ..base.clone() }, "archive_s3_credentials_file"),
        ] {
            let error = bad.check().expect_err(named).to_string();
            assert!(error.contains(named), "{bad:?}: {error}");
        }
    }
}
