//! Checkers over histories: linearizability of registers, lost and
//! unexpected elements of a set, the bank invariant, and exactly-once
//! processing of a stream job.

pub mod bank;
pub mod linearizable;
pub mod set;
pub mod stream;
