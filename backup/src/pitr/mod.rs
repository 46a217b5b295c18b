//! Point-in-time recovery of a PostgreSQL cluster: the WAL archive ([`wal`]), base backups
//! ([`base`]), restore points ([`point`]), the physical restore that builds a data directory
//! from a base and the archive ([`physical`]), the private server that replays it
//! ([`server`]), the reading of the WAL a restore replayed ([`waldump`]), a restore's choices
//! ([`cluster`]), and the guard's rewind of the cluster on this host to a restore point
//! ([`rewind`]).
//!
//! Below it in this crate: the stores, the pipeline, the logical engines and restores; above
//! it: [`crate::snapshot`] (a snapshot may be a base) and [`crate::prune`].

pub mod base;
pub mod cluster;
pub mod physical;
pub mod point;
pub mod rewind;
pub mod server;
pub mod wal;
pub mod waldump;
