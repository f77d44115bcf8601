//! What a gateway vendor embeds stays small: no archive, database, SQL
//! engine or server code in this crate's dependency tree.

use std::collections::BTreeSet;
use std::process::Command;

const FORBIDDEN_CRATES: &[&str] =
    &["parquet", "arrow-array", "rusqlite", "datafusion", "axum", "farestream-server", "metrics-exporter-prometheus"];

#[test]
fn the_gateway_crate_pulls_in_no_archive_database_or_server() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let output = Command::new(cargo)
        .args(["tree", "--offline", "--edges", "normal", "--prefix", "none", "--manifest-path", manifest])
        .args(["--package", "farestream-gateway"])
        .output()
        .expect("running cargo tree");
    let tree = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&output.stderr));
    let crates: BTreeSet<&str> = tree.lines().filter_map(|line| line.split_whitespace().next()).collect();
    assert!(crates.contains("quinn"), "the tree was read: {tree}");
    let found: Vec<&&str> = FORBIDDEN_CRATES.iter().filter(|name| crates.contains(**name)).collect();
    assert!(found.is_empty(), "the gateway crate now depends on {found:?}");
}
