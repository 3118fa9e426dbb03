//! The example jobs the runtime ships, each with a seeded generator of its
//! input and a ground truth computed from the generator alone (never
//! through the runtime), so a run's result can be checked exactly.

pub mod keyed_count;
pub mod window_sum;
pub mod wordcount;

use crate::job::JobDef;

/// Every shipped job, by name.
pub fn all() -> Vec<JobDef> {
    vec![wordcount::job(), window_sum::job(), keyed_count::job()]
}
