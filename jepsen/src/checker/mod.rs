//! Checkers over histories: linearizability of registers, lost and
//! unexpected elements of a set, and the bank invariant.

pub mod bank;
pub mod linearizable;
pub mod set;
