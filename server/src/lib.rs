//! StreamShield state node.
//!
//! A node is openraft over a Raft log of its own ([`log_store`]: entries in
//! pre-written [`segment_log`] files fsynced with group commit, vote and
//! purge point in RocksDB; bounded in bytes by [`log_bound`] as well as
//! in entries) and a RocksDB state machine ([`state_machine`]:
//! keyed state, jobs, snapshots as checkpoints). Every normal entry is a
//! versioned envelope around one command ([`command`]); a client's write
//! is replicated as the log's own [`sync_write`]. Peers talk over
//! [`network`] (sending) and [`service::raft`] (receiving, behind
//! [`service::peer_guard`]); clients use [`service::state`], operators
//! [`service::admin`] and [`service::auth`] (grants and tokens, checked
//! for every call in [`service::authz`]), all tonic services on one port
//! over mutual TLS ([`tls`]), started by [`node::run`]; client calls in
//! flight are bounded node-wide ([`service::node_limit`]). Requests are checked by
//! [`validate`] before anything is proposed, and every failure becomes a
//! gRPC status in [`error`]. [`liveness`] keeps the health service
//! truthful and ends a node whose disk failed ([`storage_fault`]).
//! [`restore`] starts an empty node from a saved snapshot. The
//! binary only parses [`config::ServerConfig`] from TOML, flags and
//! environment.

pub mod codec;
pub mod command;
pub mod config;
pub mod error;
pub mod keys;
pub mod liveness;
pub mod log_bound;
pub mod log_cache;
pub mod log_store;
pub mod network;
pub mod node;
pub mod restore;
mod rocks;
pub mod segment_log;
pub mod service;
pub mod state_machine;
pub mod storage_fault;
pub mod sync_write;
pub mod telemetry;
pub mod tls;
pub mod types;
pub mod validate;

pub use config::ServerConfig;
pub use node::{run, NodeError};
