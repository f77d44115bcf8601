//! Integration tests: one binary, as ripgrep does, so the release build
//! links once.

mod account_api;
mod catalogue;
mod charge_outcomes;
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
mod sealed_vectors;
mod settlement;
mod support;
mod vectors;
mod wire_errors;
