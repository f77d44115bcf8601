//! The core's sans-IO boundary in its source: it reads no clock, draws no
//! OS randomness and opens no file or socket. Time, randomness, events and
//! inputs come in as arguments; the shell does the I/O. (Its dependency
//! tree is checked with the others' in the root's tests/it/dependencies.rs.)

use std::path::Path;

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
fn the_core_source_reads_no_clock_or_os_randomness_and_opens_no_file_or_socket() {
    let mut offences = Vec::new();
    // Where cargo runs the test from, not where it was compiled: CI reuses
    // one target directory for every clone.
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    scan(&Path::new(&crate_dir).join("src"), &mut offences);
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
