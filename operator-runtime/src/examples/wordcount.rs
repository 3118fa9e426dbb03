//! Keyed word count over a generated text stream.
//!
//! `split` (stateless) cuts each line into words and re-partitions them by
//! word into `words`; `count` (keyed) adds one to the word's count and
//! emits the new count into `counts`. Exactly-once shows in the result:
//! the counts emitted for a word are exactly 1, 2, ..., n, in order, where
//! n is how often the generator wrote it.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use streamshield_client::{pb, Client};

use crate::config::JobConfig;
use crate::context::Context;
use crate::envelope;
use crate::error::RuntimeError;
use crate::job::JobDef;
use crate::operator::{FlatMap, Input, Operator};
use crate::source::{read_data, Verdict};
use crate::state::ValueState;

pub const NAME: &str = "wordcount";
const VOCABULARY: u64 = 300;
/// A watermark every this many lines (event time is the line number).
const WATERMARK_EVERY: u64 = 500;

pub struct WordCount {
    count: ValueState<u64>,
}

impl Default for WordCount {
    fn default() -> Self {
        Self {
            count: ValueState::new("count"),
        }
    }
}

impl Operator for WordCount {
    async fn process(&mut self, ctx: &mut Context, input: Input) -> Result<(), RuntimeError> {
        let n = self.count.get(ctx).await?.unwrap_or(0) + 1;
        self.count.set(ctx, &n).await?;
        ctx.emit(input.key, n.to_string().as_bytes(), input.event_time);
        Ok(())
    }
}

fn split(input: &Input) -> Vec<(Vec<u8>, Vec<u8>)> {
    String::from_utf8_lossy(&input.value)
        .split_whitespace()
        .map(|w| (w.as_bytes().to_vec(), Vec::new()))
        .collect()
}

pub fn job() -> JobDef {
    JobDef::new(NAME, "text")
        .stage("split", Some("words"), || FlatMap(split))
        .stage("count", Some("counts"), WordCount::default)
}

/// The generated text: `lines` lines of 1 to 8 words from a skewed
/// vocabulary (a few words are far more frequent, as in real text).
pub fn lines(lines: u64, seed: u64) -> impl Iterator<Item = String> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..lines).map(move |_| {
        let n = rng.random_range(1..=8);
        (0..n)
            .map(|_| {
                let r = rng.random_range(0..VOCABULARY);
                format!("w{}", r * r / VOCABULARY)
            })
            .collect::<Vec<_>>()
            .join(" ")
    })
}

/// The input stream's records per partition: line `i` in partition
/// `i % partitions`, with watermarks, and a final one that closes
/// everything.
pub fn input(cfg: &JobConfig, n: u64, seed: u64) -> Vec<Vec<pb::Record>> {
    let parts = cfg.partitions as usize;
    let mut out = vec![Vec::new(); parts];
    for (i, line) in lines(n, seed).enumerate() {
        let i = i as u64;
        out[i as usize % parts].push(envelope::data(
            i.to_be_bytes().to_vec(),
            line.as_bytes(),
            i as i64,
        ));
        if (i + 1).is_multiple_of(WATERMARK_EVERY) {
            for p in out.iter_mut() {
                p.push(envelope::watermark(0, i as i64));
            }
        }
    }
    for p in out.iter_mut() {
        p.push(envelope::watermark(0, i64::MAX));
    }
    out
}

/// How often each word occurs: the ground truth.
pub fn truth(n: u64, seed: u64) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for line in lines(n, seed) {
        for w in line.split_whitespace() {
            *counts.entry(w.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

/// Checks the `counts` stream against the truth.
pub async fn verify(
    client: &Client,
    job: &JobDef,
    cfg: &JobConfig,
    n: u64,
    seed: u64,
) -> Result<Verdict, RuntimeError> {
    let truth = truth(n, seed);
    let result = job.result(cfg).expect("wordcount has a result stream");
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let records = read_data(client, &result, cfg.partitions).await?;
    let mut v = Verdict {
        expected: truth.values().sum(),
        found: records.len() as u64,
        problems: Vec::new(),
    };
    for r in records {
        let word = String::from_utf8_lossy(&r.key).into_owned();
        match std::str::from_utf8(&r.value)
            .ok()
            .and_then(|s| s.parse().ok())
        {
            Some(c) => seen.entry(word).or_default().push(c),
            None => v.problem(format!("{word}: count {:?} is not a number", r.value)),
        }
    }
    for (word, counts) in &seen {
        let want = truth.get(word).copied().unwrap_or(0);
        let exact = counts.len() as u64 == want
            && counts.iter().enumerate().all(|(i, c)| *c == i as u64 + 1);
        if !exact {
            let head: Vec<u64> = counts.iter().take(8).copied().collect();
            v.problem(format!(
                "{word}: {} counts emitted (first {head:?}), the truth is 1..={want}",
                counts.len()
            ));
        }
    }
    for (word, want) in &truth {
        if !seen.contains_key(word) {
            v.problem(format!("{word}: no count emitted, the truth is {want}"));
        }
    }
    Ok(v)
}
