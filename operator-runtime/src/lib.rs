//! The StreamShield operator runtime: keyed stream operators whose state
//! lives in the state cluster, so that a dead task is back in milliseconds
//! with nothing lost and nothing counted twice.
//!
//! A job ([`JobDef`]) is a chain of stages joined by streams in the store;
//! each stage has tasks, and task `t` owns a range of input partitions and
//! the key groups they hold ([`layout`]). User logic is an [`Operator`]
//! with keyed state ([`ValueState`], [`MapState`], [`ListState`],
//! [`ReducingState`], [`AggregatingState`]), event-time timers and
//! windows ([`window`]). A task ([`task`]) writes its state through its
//! `TaskSession` (async, batched, read-your-writes through a byte-bounded
//! cache) and commits every checkpoint interval one epoch: its state, its
//! input offsets, its outputs and its event-time position
//! ([`checkpoint`]), atomically. Outputs are visible downstream only once
//! committed, so a replay after a failure repeats nothing anyone saw.
//!
//! Tasks run in worker processes ([`worker`]) that a [`Supervisor`]
//! starts, watches (process exit, heartbeats) and replaces, keeping warm
//! standbys that take a dead worker's task over by taking its lease, which
//! fences the old one. A job program gets the `run`, `worker` and
//! `status` commands from [`cli`]; the shipped [`examples`] run through
//! the `streamshield-runtime` binary the same way.

pub mod cache;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod context;
pub mod envelope;
pub mod error;
pub mod examples;
pub mod job;
pub mod layout;
pub mod operator;
pub mod protocol;
pub mod source;
pub mod state;
pub mod supervisor;
pub mod task;
pub mod testing;
pub mod time;
pub mod window;
pub mod worker;

pub use config::JobConfig;
pub use context::Context;
pub use error::RuntimeError;
pub use job::{JobDef, StreamRef};
pub use operator::{FlatMap, Input, Operator};
pub use state::{
    Aggregate, AggregatingState, ListState, MapState, ReducingState, ValueState, LIST_TABLE,
    MAP_TABLE,
};
pub use supervisor::{JobStatus, Recovery, Supervisor, SupervisorConfig, SupervisorEvent};
