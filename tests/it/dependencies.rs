//! What the build pulls in, checked as `cargo deny` would (its advisory
//! database needs the network, which CI does not have): no crate in two
//! versions unless the list below says which dependencies force it, and
//! only licenses from the allowed list. A new duplicate or licence fails
//! here and is either avoided or added with its reason.
//!
//! And the crate boundaries: the core's tree holds no I/O crate, the
//! gateway's no archive, database or server, the ingest shell's nothing of
//! money, the money shell's nothing of the server that runs it. (The core's source is held to
//! no files, sockets, clocks or OS randomness by clippy: crates/core/clippy.toml.)

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Crates the tree holds in several versions, and the dependencies that
/// force it. Keep it short: a duplicate costs build time on two cores.
const ALLOWED_DUPLICATES: &[(&str, &str)] = &[
    ("base64", "metrics-exporter-prometheus is on 0.22, parquet and pem on 0.23"),
    ("block-buffer", "sha2: ed25519-zebra's 0.10 takes 0.10, postgres-protocol's 0.11 takes 0.12"),
    ("cpufeatures", "curve25519-dalek and sha2 are on 0.2, chacha20 (quinn-proto's rand 0.10) on 0.3"),
    ("crypto-common", "sha2: ed25519-zebra's 0.10 takes 0.1, postgres-protocol's 0.11 takes 0.2"),
    ("digest", "ed25519-zebra's sha2 is on 0.10, postgres-protocol's (SCRAM logins to PostgreSQL) on 0.11"),
    ("fallible-iterator", "rusqlite is on 0.3, postgres (the money store on PostgreSQL) on 0.2"),
    ("foldhash", "datafusion is on 0.2, petgraph's hashbrown 0.15 (datafusion-physical-expr) on 0.1"),
    ("getrandom", "ring is on 0.2, rand_core 0.9 on 0.3, rand 0.10 on 0.4"),
    (
        "hashbrown",
        "dashmap is on 0.14, petgraph (datafusion) on 0.15, ed25519-zebra and metrics-util on 0.16, arrow and indexmap on 0.17",
    ),
    ("itertools", "datafusion is on 0.15, object_store (datafusion's) on 0.14"),
    ("md-5", "object_store's S3 client is on 0.10, postgres-protocol (MD5 logins to PostgreSQL) on 0.11"),
    ("num-bigint", "arrow is on 0.5, bigdecimal (datafusion-sql) on 0.4"),
    ("phf", "chrono-tz is on 0.12, tokio-postgres on 0.13"),
    ("phf_shared", "chrono-tz's phf is on 0.12, tokio-postgres's on 0.13"),
    ("rand", "metrics-util (and the simulator with it) is on 0.9, quinn-proto on 0.10"),
    ("rand_chacha", "ed25519-zebra 4 takes rand_core 0.6 generators (0.3), rand 0.9 brings 0.9"),
    ("rand_core", "ed25519-zebra 4 is on 0.6, rand 0.9 on 0.9, rand 0.10 on 0.10"),
    ("sha2", "ed25519-zebra is on 0.10, postgres-protocol (SCRAM logins to PostgreSQL) on 0.11"),
    ("syn", "prost-derive and curve25519-dalek-derive are on 2, clap_derive and futures-macro on 3"),
    (
        "synstructure",
        "asn1-rs-derive (x509-parser, which reads gateway certificates) is on 0.13, yoke-derive and zerofrom-derive (url's ICU) on 0.14",
    ),
];

/// SPDX identifiers a dependency's licence may be made of.
const ALLOWED_LICENSES: &[&str] = &[
    "Apache-2.0",
    "MIT",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "ISC",
    "Zlib",
    "Unlicense",
    "CC0-1.0",
    "Unicode-3.0",
    "LLVM-exception",
    // Boost's: permissive, like MIT (ryu, under serde_json, offers it beside Apache-2.0).
    "BSL-1.0",
    // The Community Data License Agreement, permissive: the Mozilla CA
    // list as data (webpki-roots, under async-nats for its default TLS
    // roots).
    "CDLA-Permissive-2.0",
];

fn cargo(args: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(args)
        .arg("--manifest-path")
        .arg(crate::support::repo_file("Cargo.toml"))
        .arg("--offline")
        .output()
        .expect("running cargo");
    assert!(output.status.success(), "cargo {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Crates that do I/O or pull a runtime in; none may be in the core's tree.
const NOT_IN_THE_CORE: &[&str] =
    &["tokio", "mio", "quinn", "rustls", "parquet", "rusqlite", "axum", "reqwest", "hyper", "datafusion"];

/// What a gateway vendor embeds stays small.
const NOT_IN_THE_GATEWAY: &[&str] = &[
    "parquet",
    "arrow-array",
    "rusqlite",
    "datafusion",
    "axum",
    "farestream-ingest",
    "farestream-money",
    "farestream-server",
    "metrics-exporter-prometheus",
    "async-nats",
];

/// The ingest shell has no money in its tree: no store, no payment-gateway
/// client, no crate above it,
/// nor the cluster's NATS client (the server crate links that).
const NOT_IN_INGEST: &[&str] =
    &["rusqlite", "reqwest", "farestream-money", "farestream-server", "datafusion", "async-nats"];

/// The money shell stands on the ingest shell, never on the server crate
/// (the QUIC endpoint and the assembly), nor on the SQL engine.
const NOT_IN_MONEY: &[&str] = &["farestream-server", "farestream-analytics", "datafusion", "async-nats"];

/// The cluster shell is the log's other engine, under the shells that
/// use it: no archive, no store, no QUIC endpoint in its tree.
const NOT_IN_THE_CLUSTER: &[&str] =
    &["farestream-ingest", "farestream-money", "farestream-server", "parquet", "rusqlite", "quinn", "datafusion"];

/// The shared archive's store is a store and nothing more: no archive
/// encoding, no log, no money, no NATS, no QUIC.
const NOT_IN_THE_SHARED_ARCHIVE: &[&str] = &[
    "farestream-ingest",
    "farestream-money",
    "farestream-cluster",
    "farestream-server",
    "parquet",
    "rusqlite",
    "async-nats",
    "quinn",
    "datafusion",
];

/// The names of the crates in `package`'s normal dependency tree.
fn tree_of(package: &str) -> BTreeSet<String> {
    let tree = cargo(&["tree", "--edges", "normal", "--prefix", "none", "--package", package]);
    tree.lines().filter_map(|line| line.split_whitespace().next()).map(str::to_string).collect()
}

#[test]
fn each_crate_keeps_out_what_belongs_to_another() {
    for (package, forbidden, sure_to_hold) in [
        ("farestream-core", NOT_IN_THE_CORE, "rayon"),
        ("farestream-gateway", NOT_IN_THE_GATEWAY, "quinn"),
        ("farestream-ingest", NOT_IN_INGEST, "parquet"),
        ("farestream-money", NOT_IN_MONEY, "rusqlite"),
        ("farestream-cluster", NOT_IN_THE_CLUSTER, "async-nats"),
        ("farestream-shared-archive", NOT_IN_THE_SHARED_ARCHIVE, "object_store"),
    ] {
        let crates = tree_of(package);
        assert!(crates.contains(sure_to_hold), "the tree of {package} was read: {crates:?}");
        let found: Vec<&&str> = forbidden.iter().filter(|name| crates.contains(**name)).collect();
        assert!(found.is_empty(), "{package} now depends on {found:?}: that code belongs in another crate");
    }
}

#[test]
fn no_crate_is_built_twice_unless_listed_with_its_reason() {
    let tree = cargo(&["tree", "--workspace", "--duplicates", "--edges", "normal", "--depth", "0", "--prefix", "none"]);
    let mut versions: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for line in tree.lines() {
        if let Some((name, version)) = line.split_once(' ') {
            versions.entry(name).or_default().insert(version.split_whitespace().next().unwrap_or(version));
        }
    }
    let duplicated: BTreeSet<&str> = versions.iter().filter(|(_, v)| v.len() > 1).map(|(n, _)| *n).collect();
    let allowed: BTreeSet<&str> = ALLOWED_DUPLICATES.iter().map(|(name, _)| *name).collect();
    let new: Vec<_> = duplicated.difference(&allowed).collect();
    assert!(new.is_empty(), "crates now built in several versions: {new:?} ({versions:?})");
    let gone: Vec<_> = allowed.difference(&duplicated).collect();
    assert!(gone.is_empty(), "no longer duplicated, take them off the list: {gone:?}");
}

#[test]
fn every_dependency_has_an_allowed_license() {
    let host = Command::new("rustc").arg("-vV").output().expect("rustc -vV");
    let host = String::from_utf8_lossy(&host.stdout);
    let triple = host.lines().find_map(|l| l.strip_prefix("host: ")).expect("host triple").to_string();
    let metadata = cargo(&["metadata", "--format-version", "1", "--filter-platform", &triple]);
    let metadata: serde_json::Value = serde_json::from_str(&metadata).expect("cargo metadata is JSON");
    let resolved: BTreeSet<&str> =
        metadata["resolve"]["nodes"].as_array().expect("nodes").iter().filter_map(|node| node["id"].as_str()).collect();
    let mut refused = Vec::new();
    for package in metadata["packages"].as_array().expect("packages") {
        if !package["id"].as_str().is_some_and(|id| resolved.contains(id)) {
            continue;
        }
        let name = package["name"].as_str().unwrap_or("?");
        let Some(license) = package["license"].as_str() else {
            refused.push(format!("{name}: no SPDX licence"));
            continue;
        };
        let terms = license.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '.'));
        let unknown: Vec<&str> = terms
            .filter(|t| !t.is_empty() && !["OR", "AND", "WITH"].contains(t))
            .filter(|t| !ALLOWED_LICENSES.contains(t))
            .collect();
        if !unknown.is_empty() {
            refused.push(format!("{name}: {license}"));
        }
    }
    assert!(refused.is_empty(), "licences outside the allowed list: {refused:#?}");
}
