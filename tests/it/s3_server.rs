//! An S3-compatible server on loopback, for the shared archive on object
//! storage: moto's (`python3 -m moto.server`), which speaks S3's HTTP API
//! (signed requests, listing, ranged reads) over its own in-memory
//! buckets. Amazon's S3 cannot run here, and no other S3 server installs
//! from the registries CI can reach. A test that needs it is skipped and
//! says so, unless `FARESTREAM_S3=required` (CI sets it;
//! `scripts/lib.sh`'s `ensure_s3` installs it).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Set to `required` and a test that needs the S3 server fails without it.
pub(crate) const S3_REQUIRED_VAR: &str = "FARESTREAM_S3";
/// How long the server may take to answer after it starts.
const START_WAIT_MAX: Duration = Duration::from_secs(60);

/// A running server with one bucket, and an access key in a credentials
/// file as `cluster.archive_s3_credentials_file` names one. Killed when
/// dropped.
pub(crate) struct S3Server {
    child: Child,
    pub(crate) endpoint: String,
    dir: tempfile::TempDir,
}

impl S3Server {
    /// A server holding `bucket`; `None` (the test says so and passes)
    /// when moto is not installed and not required.
    pub(crate) async fn start(bucket: &str) -> Option<S3Server> {
        match S3Server::try_start(bucket).await {
            Ok(server) => Some(server),
            Err(why) if required() => panic!("the S3 server is required ({S3_REQUIRED_VAR}=required): {why}"),
            Err(why) => {
                eprintln!("skipped: no S3 server ({why}); pip install 'moto[server]'");
                None
            }
        }
    }

    async fn try_start(bucket: &str) -> Result<S3Server, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        let log = std::fs::File::create(dir.path().join("moto.log")).map_err(|e| e.to_string())?;
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("python3: {e}"))?;
        let mut server = S3Server { child, endpoint: format!("http://127.0.0.1:{port}"), dir };
        server.wait_for_bucket(bucket).await?;
        let credentials = "access_key_id = \"farestream-test\"\nsecret_access_key = \"farestream-test-secret\"\n";
        std::fs::write(server.credentials_path(), credentials).map_err(|e| e.to_string())?;
        Ok(server)
    }

    /// Makes `bucket` once the server answers.
    async fn wait_for_bucket(&mut self, bucket: &str) -> Result<(), String> {
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("python3 -m moto.server stopped ({status}): {}", self.log_tail()));
            }
            if let Ok(answer) = http.put(format!("{}/{bucket}", self.endpoint)).send().await {
                return match answer.status().is_success() {
                    true => Ok(()),
                    false => Err(format!("making the bucket {bucket}: {}", answer.status())),
                };
            }
            if started.elapsed() > START_WAIT_MAX {
                return Err(format!("no answer in {START_WAIT_MAX:?}: {}", self.log_tail()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The file holding the server's access key.
    pub(crate) fn credentials_path(&self) -> PathBuf {
        self.dir.path().join("credentials.toml")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default();
        log.chars().rev().take(2_000).collect::<Vec<_>>().into_iter().rev().collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn required() -> bool {
    std::env::var(S3_REQUIRED_VAR).is_ok_and(|v| v == "required")
}
