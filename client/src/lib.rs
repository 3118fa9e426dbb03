//! StreamShield client.
//!
//! [`Client`] is the typed async client of a state cluster: it finds the
//! leader from `NotLeader` hints, caches it, and retries with backoff under
//! a caller deadline; writes carry a client id and sequence number so a
//! retry after an unknown outcome applies at most once. Concurrent writes
//! and gets to one node travel together in one `WriteMany`/`GetMany` call
//! (`coalesce.rs`), each still answered and retried on its own; those
//! calls go on one long-lived stream per node (`session.rs`), not one
//! HTTP/2 stream each.
//! [`TaskSession`] is a stream task's write path: a lease that fences
//! the task's earlier holders, writes staged in the background, and epoch
//! commits that make them visible with the task's input offsets; with a
//! commit target its batches are sized by the rate the cluster answers
//! them (`batch_sizer.rs`).
//! [`WriteBatch`] builds atomic conditional writes, [`ClientError`] says
//! what went wrong by what the caller can do. [`local`] starts and stops
//! clusters of real server processes on loopback for the CLI, the demo and
//! tests, over TLS with a throwaway CA from [`certs`] when asked; those of
//! tests and benches die with the process that started them
//! ([`tied_child`]). The
//! `streamshield` binary (`src/main.rs`, `src/cli/`) is the CLI
//! over all of it.

mod auth;
mod batch;
mod batch_sizer;
pub mod certs;
mod client;
mod coalesce;
mod epoch_ops;
mod error;
pub mod local;
mod session;
mod shared_stage;
mod task_session;
pub mod tied_child;
mod transport;

pub use auth::{role_name, Role};
pub use batch::WriteBatch;
pub use client::{
    Client, ClientConfig, ClientTls, Consistency, Producer, Retention, SaveSnapshotError,
    SavedSnapshot, ScanOptions, ScanPage, WriteResult,
};
pub use error::{ClientError, Missing};
pub use streamshield_proto::v1 as pb;
pub use streamshield_proto::{key_group, placed_key_group, placement_key, prefixed_key};
pub use task_session::{Committed, TaskSession, TaskSessionConfig, TaskSpec};

/// Logging for the command-line programs (`streamshield`,
/// `streamshield-jepsen`): to stderr, `warn` unless `RUST_LOG` says more.
pub fn init_cli_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}
