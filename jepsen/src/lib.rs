//! The StreamShield lab: real clusters under real faults, checked
//! histories, reproducible reports.
//!
//! [`lab`] starts a cluster of real server processes with a
//! fault-injecting [`proxy`] on every link; [`nemesis`] schedules faults on
//! it from a seed; [`workload`] drives clients and records every operation
//! through [`recorder`] as a [`history`] in Jepsen's JSON-lines shape;
//! [`checker`] judges the history (linearizability per key, set, bank);
//! [`run`] ties one test together and [`report`] writes its directory
//! (history, results, plots, index.html); [`recovery`] measures how soon
//! clients got answers again after each fault healed. The `streamshield-jepsen` binary
//! is the CLI (`test`, `sweep`, `bench`, `matrix`, `soak`); [`soak`] is the
//! hour under load and faults that watches every node's memory.
//!
//! [`bench`] is the benchmark driver: closed-loop clients against
//! StreamShield and etcd, side by side, and the machine's own floor.

pub mod bench;
pub mod checker;
pub mod history;
pub mod lab;
pub mod nemesis;
pub mod progress;
pub mod proxy;
pub mod recorder;
pub mod recovery;
pub mod report;
pub mod run;
pub mod soak;
pub mod stream_job;
pub mod workload;
