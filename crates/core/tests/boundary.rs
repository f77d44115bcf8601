//! The core's sans-IO boundary, enforced: its dependency tree holds no
//! async runtime, socket, TLS, Parquet or SQL crate, and its source reads
//! no clock, draws no OS randomness and opens no file or socket. Time,
//! randomness, events and inputs come in as arguments; the `farestream`
//! shell does the I/O.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// Crates that do I/O or pull a runtime in; none may be in the core's tree.
const FORBIDDEN_CRATES: &[&str] =
    &["tokio", "mio", "quinn", "rustls", "parquet", "rusqlite", "axum", "reqwest", "hyper", "datafusion"];

/// Source that reads a clock, draws OS randomness, or touches files or
/// sockets.
const FORBIDDEN_SOURCE: &[&str] = &[
    "std::fs",
    "std::net",
    "std::time::SystemTime",
    "SystemTime::now",
    "Instant::now",
    "std::thread::sleep",
    "tokio",
    "OsRng",
    "SystemRandom",
    "getrandom",
    "thread_rng",
];

#[test]
fn the_core_depends_on_no_io_crate() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let output = Command::new(cargo)
        .args(["tree", "--offline", "--edges", "normal", "--prefix", "none", "--manifest-path", manifest])
        .args(["--package", "farestream-core"])
        .output()
        .expect("running cargo tree");
    let tree = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&output.stderr));
    let crates: BTreeSet<&str> = tree.lines().filter_map(|line| line.split_whitespace().next()).collect();
    assert!(crates.contains("rayon") && crates.contains("dashmap"), "the tree was read: {tree}");
    let found: Vec<&&str> = FORBIDDEN_CRATES.iter().filter(|name| crates.contains(**name)).collect();
    assert!(found.is_empty(), "the core now depends on {found:?}: move that code to the shell");
}

#[test]
fn the_core_source_reads_no_clock_or_os_randomness_and_opens_no_file_or_socket() {
    let mut offences = Vec::new();
    scan(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")), &mut offences);
    assert!(offences.is_empty(), "I/O, a clock or OS randomness in the core: {offences:#?}");
}

fn scan(dir: &Path, offences: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("source dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            scan(&path, offences);
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("source file");
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for pattern in FORBIDDEN_SOURCE.iter().filter(|p| code.contains(**p)) {
                offences.push(format!("{}:{}: {pattern}", path.display(), number + 1));
            }
        }
    }
}
