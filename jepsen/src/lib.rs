//! The StreamShield lab: histories in Jepsen's JSON-lines shape and the
//! checkers that judge them.
//!
//! [`history`] reads, writes and pairs operations; [`checker`] holds the
//! linearizability checker (Wing–Gong–Lowe with memoization, per key), and
//! the set and bank checkers; [`proxy`] is the fault-injecting TCP proxy the
//! lab puts on every link. Clusters under faults, workloads, nemeses and
//! reports build on these.

pub mod checker;
pub mod history;
pub mod proxy;
