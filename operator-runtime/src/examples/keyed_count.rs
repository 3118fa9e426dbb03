//! A count per key over an input already partitioned by key: the smallest
//! stateful job, used by the reattach benchmark (whose task state is this
//! job's counts plus whatever else the task's key groups hold).
//!
//! `count` adds one to the key's count and emits the new count, so the
//! result for a key is exactly 1, 2, ..., n when n records of it came in.

use std::collections::BTreeMap;

use streamshield_client::{pb, Client};

use crate::config::JobConfig;
use crate::envelope;
use crate::error::RuntimeError;
use crate::examples::wordcount::WordCount;
use crate::job::JobDef;
use crate::source::{read_data, Verdict};

pub const NAME: &str = "keyed-count";

pub fn job() -> JobDef {
    JobDef::new(NAME, "events").stage("count", Some("counts"), WordCount::default)
}

/// Record `i` of the input: key `k<i % keys>`, in its key's partition.
pub fn record(cfg: &JobConfig, i: u64, keys: u64) -> (u32, pb::Record) {
    let key = format!("k{}", i % keys.max(1));
    let p = cfg.layout().partition_of_key(key.as_bytes());
    (p, envelope::data(key.into_bytes(), b"", i as i64))
}

/// Checks the result against the input the stream holds (records
/// `0..n` written by [`record`]).
pub async fn verify(
    client: &Client,
    cfg: &JobConfig,
    n: u64,
    keys: u64,
) -> Result<Verdict, RuntimeError> {
    let mut truth: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    for i in 0..n {
        *truth
            .entry(format!("k{}", i % keys.max(1)).into_bytes())
            .or_insert(0) += 1;
    }
    let result = job().result(cfg).expect("keyed-count has a result stream");
    let records = read_data(client, &result, cfg.partitions).await?;
    let mut seen: BTreeMap<Vec<u8>, Vec<u64>> = BTreeMap::new();
    for r in &records {
        let c = std::str::from_utf8(&r.value)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        seen.entry(r.key.clone()).or_default().push(c);
    }
    let mut v = Verdict {
        expected: n,
        found: records.len() as u64,
        problems: Vec::new(),
    };
    for (k, want) in &truth {
        let got = seen.remove(k).unwrap_or_default();
        let exact =
            got.len() as u64 == *want && got.iter().enumerate().all(|(i, c)| *c == i as u64 + 1);
        if !exact {
            v.problem(format!(
                "{}: {} counts (first {:?}), the truth is 1..={want}",
                String::from_utf8_lossy(k),
                got.len(),
                &got[..got.len().min(6)]
            ));
        }
    }
    for k in seen.keys() {
        v.problem(format!(
            "{}: counted but never sent",
            String::from_utf8_lossy(k)
        ));
    }
    Ok(v)
}
