//! The end-to-end suite: one test binary (each `tests/*.rs` file would link the whole tree
//! again), one module per area, sharing the harness in `common` (real SQLite files, a real
//! PostgreSQL server, a real S3-compatible server on loopback, the real peers).

mod common;

mod adopt;
mod architecture;
mod backup;
mod backup_s3;
mod blue_green;
mod contract;
mod crash;
mod databases;
mod drill;
mod empty_volume;
mod encryption;
mod harness;
mod health;
mod help;
mod hosts;
mod image;
mod importers;
mod migrate;
mod migrate_postgres;
mod migrate_sqlite;
mod mirrors;
mod no_transaction;
mod old_snapshots;
mod package;
mod pitr;
mod private_ca;
mod real_folders;
mod recipes;
mod repeatable;
mod report;
mod restore;
mod restore_states;
mod rewind;
mod round_trip;
mod schedule;
mod secrets;
mod setups;
mod store_contract;
mod stream;
mod toolchain;
mod trust;
mod trust_round3;
mod wal;
