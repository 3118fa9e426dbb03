//! A per-user sum over 10-second tumbling event-time windows.
//!
//! The generated events (user, amount) arrive up to half a second out of
//! event-time order, with watermarks in-band; the input is partitioned by
//! user, so the one stage, `window`, reads keys it owns. Exactly-once
//! shows in the result: one record per (user, window), holding exactly the
//! sum of that user's amounts in that window.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use streamshield_client::{pb, Client};

use crate::config::JobConfig;
use crate::envelope;
use crate::error::RuntimeError;
use crate::job::JobDef;
use crate::operator::Input;
use crate::source::{read_data, Verdict};
use crate::window::{Sum, TumblingWindows, WindowResult, WindowedAggregate};

pub const NAME: &str = "windowed-sum";
pub const WINDOW_MS: i64 = 10_000;
/// Event time advances this much per event...
const STEP_MS: i64 = 10;
/// ...and each event is up to this late.
const JITTER_MS: i64 = 500;
const WATERMARK_EVERY: u64 = 200;

fn amount(i: &Input) -> Option<i64> {
    std::str::from_utf8(&i.value).ok()?.parse().ok()
}

pub fn job() -> JobDef {
    JobDef::new(NAME, "events").stage("window", Some("sums"), || {
        WindowedAggregate::new(TumblingWindows { size_ms: WINDOW_MS }, Sum, amount)
    })
}

/// Event `i`: (user, amount, event time).
pub fn events(n: u64, users: u32, seed: u64) -> impl Iterator<Item = (String, i64, i64)> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(move |i| {
        let user = format!("user-{}", rng.random_range(0..users.max(1)));
        let amount = rng.random_range(1..=100);
        let t = i as i64 * STEP_MS + rng.random_range(0..JITTER_MS);
        (user, amount, t)
    })
}

/// The input per partition, by user; after every `WATERMARK_EVERY`
/// events a watermark no later event can be behind.
pub fn input(cfg: &JobConfig, n: u64, users: u32, seed: u64) -> Vec<Vec<pb::Record>> {
    let layout = cfg.layout();
    let mut out = vec![Vec::new(); cfg.partitions as usize];
    for (i, (user, amount, t)) in events(n, users, seed).enumerate() {
        let p = layout.partition_of_key(user.as_bytes()) as usize;
        out[p].push(envelope::data(
            user.into_bytes(),
            amount.to_string().as_bytes(),
            t,
        ));
        if (i as u64 + 1).is_multiple_of(WATERMARK_EVERY) {
            // Event j > i has time >= j * STEP_MS > i * STEP_MS.
            for part in out.iter_mut() {
                part.push(envelope::watermark(0, i as i64 * STEP_MS));
            }
        }
    }
    for part in out.iter_mut() {
        part.push(envelope::watermark(0, i64::MAX));
    }
    out
}

/// Sum per (user, window start): the ground truth.
pub fn truth(n: u64, users: u32, seed: u64) -> BTreeMap<(String, i64), i64> {
    let mut sums = BTreeMap::new();
    for (user, amount, t) in events(n, users, seed) {
        let start = t - t.rem_euclid(WINDOW_MS);
        *sums.entry((user, start)).or_insert(0) += amount;
    }
    sums
}

pub async fn verify(
    client: &Client,
    job: &JobDef,
    cfg: &JobConfig,
    n: u64,
    users: u32,
    seed: u64,
) -> Result<Verdict, RuntimeError> {
    let truth = truth(n, users, seed);
    let result = job.result(cfg).expect("windowed-sum has a result stream");
    let records = read_data(client, &result, cfg.partitions).await?;
    let mut v = Verdict {
        expected: truth.len() as u64,
        found: records.len() as u64,
        problems: Vec::new(),
    };
    let mut seen: BTreeMap<(String, i64), Vec<i64>> = BTreeMap::new();
    for r in records {
        let user = String::from_utf8_lossy(&r.key).into_owned();
        match serde_json::from_slice::<WindowResult<i64>>(&r.value) {
            Ok(w) => seen.entry((user, w.start)).or_default().push(w.result),
            Err(e) => v.problem(format!("{user}: result does not decode: {e}")),
        }
    }
    for (k, sums) in &seen {
        match truth.get(k) {
            Some(want) if sums == &[*want] => {}
            want => v.problem(format!("{k:?}: emitted {sums:?}, the truth is {want:?}")),
        }
    }
    for (k, want) in &truth {
        if !seen.contains_key(k) {
            v.problem(format!("{k:?}: nothing emitted, the truth is {want}"));
        }
    }
    Ok(v)
}
