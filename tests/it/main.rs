//! Integration tests: one binary, as ripgrep does, so the release build
//! links once.

/// A money test on each engine: `async fn NAME(engine) { … }` becomes
/// module `NAME` with a test `sqlite` and a test `postgres`, each running
/// the body with `engine` set (the PostgreSQL one passes, and says so,
/// where PostgreSQL is not installed and not required:
/// `crate::money::Money::on`).
macro_rules! on_each_engine {
    ($(#[$doc:meta])* async fn $name:ident($engine:ident) $body:block) => {
        $(#[$doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($engine: farestream::money::db::Engine) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                run(farestream::money::db::Engine::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                run(farestream::money::db::Engine::Postgres).await
            }
        }
    };
}

mod account_api;
mod catalogue;
mod charge_outcomes;
mod cluster;
mod cluster_key_ends;
mod cluster_keys;
mod cluster_money;
mod cluster_s3;
mod crash;
mod cut_over;
mod dedup_snapshot;
mod dependencies;
mod durability;
mod end_to_end;
mod fair_limits;
mod fleet;
mod fuzz;
mod key_rotation;
mod loadgen;
mod money;
mod money_postgres;
mod operator;
mod outside_readers;
mod paygw;
mod s3_server;
mod sealed_vectors;
mod settle_s3_edges;
mod settlement;
mod shared_archive_edges;
mod support;
mod vectors;
mod wire_errors;
