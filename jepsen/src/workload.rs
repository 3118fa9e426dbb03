//! Workloads: what the clients do during a test, and how the history is
//! judged afterwards.
//!
//! * `register`: many independent keys, get/put/cas; linearizability per key.
//! * `set`: unique adds, one final read; lost or unexpected elements.
//! * `bank`: transfers between accounts as conditional multi-key writes;
//!   every read sums to the same total.
//! * `stream`: a stream job's tasks commit epochs (state, input offsets,
//!   outputs) while zombie copies keep trying (`stream_job.rs`); every
//!   committed input yields exactly one output.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use streamshield_client::{Client, ClientError, Consistency, WriteBatch};

use crate::checker;
use crate::history::{pair, Op, OpType};
use crate::recorder::Recorder;

pub const JOB: &str = "lab";
const REGISTER_KEYS: u64 = 8;
const ACCOUNTS: u64 = 5;
const INITIAL_BALANCE: i64 = 100;

/// Which of `of` client processes a worker is, and when it stops.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    pub index: u64,
    pub of: u64,
    pub seed: u64,
    pub until: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Register,
    Set,
    Bank,
    Stream,
}

pub const ALL: &[Workload] = &[
    Workload::Register,
    Workload::Set,
    Workload::Bank,
    Workload::Stream,
];

impl FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "register" => Ok(Self::Register),
            "set" => Ok(Self::Set),
            "bank" => Ok(Self::Bank),
            "stream" => Ok(Self::Stream),
            other => Err(format!("unknown workload {other:?}")),
        }
    }
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Set => "set",
            Self::Bank => "bank",
            Self::Stream => "stream",
        }
    }

    /// Creates the job and initial state.
    pub async fn setup(self, client: &Client) -> Result<(), ClientError> {
        match client.create_job(JOB, 64).await {
            Ok(_) | Err(ClientError::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
        if self == Self::Bank {
            let mut b = WriteBatch::new(JOB);
            for a in 0..ACCOUNTS {
                b = b.put("bank", account(a), INITIAL_BALANCE.to_string());
            }
            client.write(b).await?;
        }
        if self == Self::Stream {
            crate::stream_job::setup(client).await?;
        }
        Ok(())
    }

    /// One client process: operations until `slot.until`. After an
    /// operation of unknown outcome the process is considered crashed and
    /// continues under a new process id, as in Jepsen.
    pub async fn worker(self, client: Client, rec: Recorder, slot: Slot, counter: Arc<AtomicU64>) {
        let mut rng =
            StdRng::seed_from_u64(slot.seed ^ slot.index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut process = slot.index;
        if self == Self::Stream {
            let task = slot.index % crate::stream_job::TASKS;
            return crate::stream_job::worker(
                client, rec, task, process, slot.of, slot.until, &mut rng,
            )
            .await;
        }
        while Instant::now() < slot.until {
            let outcome = match self {
                Self::Register => register_op(&client, &rec, process, &mut rng).await,
                Self::Set => {
                    set_add(
                        &client,
                        &rec,
                        process,
                        counter.fetch_add(1, Ordering::Relaxed),
                    )
                    .await
                }
                Self::Bank => bank_op(&client, &rec, process, &mut rng).await,
                Self::Stream => unreachable!("runs its own loop above"),
            };
            if outcome == OpType::Info {
                process += slot.of;
            }
            // Keep the history a checkable size on a fast cluster.
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..10))).await;
        }
    }

    /// Reads taken once the cluster is healed (set and bank).
    pub async fn finish(self, client: &Client, rec: &Recorder, process: u64) {
        match self {
            Self::Register => {}
            Self::Set => {
                let op = rec.invoke(process, "read", None, Value::Null);
                match client
                    .scan_all(JOB, "set", b"", Consistency::Linearizable)
                    .await
                {
                    Ok(kvs) => {
                        let items: Vec<Value> = kvs
                            .iter()
                            .filter_map(|kv| std::str::from_utf8(&kv.key).ok()?.parse::<u64>().ok())
                            .map(Value::from)
                            .collect();
                        rec.complete(&op, OpType::Ok, Value::Array(items));
                    }
                    Err(e) => rec.complete(&op, OpType::Fail, json!(e.to_string())),
                }
            }
            Self::Bank => {
                bank_read(client, rec, process).await;
            }
            Self::Stream => crate::stream_job::finish(client, rec, process).await,
        }
    }

    /// Successful operations of each kind a history needs before its
    /// verdict means anything: a run in which the cluster served (almost)
    /// nothing passes every checker and proves nothing.
    pub fn needed(self) -> &'static [(&'static str, usize)] {
        match self {
            // Reads and writes of the registers, any keys.
            Self::Register => &[("read", 10), ("write", 10)],
            // Acknowledged adds, and the final read that judges them.
            Self::Set => &[("add", 10), ("read", 1)],
            // Transfers that moved money, and reads of the total.
            Self::Bank => &[("transfer", 10), ("read", 10)],
            // Acknowledged epoch commits, and the final read.
            Self::Stream => &[("commit", 10), ("read", 1)],
        }
    }

    /// Checks a history; the judgement and the checker's verdict as JSON.
    /// An anomaly is `Invalid` however short the history; without one, a
    /// history with less than [`Self::needed`] is `Unknown`.
    pub fn check(self, history: &[Op]) -> (Judgement, Value) {
        let paired = match pair(history) {
            Ok(p) => p,
            Err(e) => return (Judgement::Invalid, json!({"error": e.to_string()})),
        };
        let (valid, verdict) = match self {
            Self::Register => match checker::linearizable::check(&paired) {
                Ok(v) => (v.valid, json!({"linearizable": v})),
                Err(e) => (false, json!({"error": e.to_string()})),
            },
            Self::Set => {
                let v = checker::set::check(&paired);
                // Without a final read nothing can be said: no anomaly,
                // and the progress rule below makes it unknown.
                (v.valid || v.no_final_read, json!({"set": v}))
            }
            Self::Bank => {
                let v = checker::bank::check(&paired, INITIAL_BALANCE * ACCOUNTS as i64);
                (v.valid, json!({"bank": v}))
            }
            Self::Stream => {
                let v = checker::stream::check(&paired);
                (v.valid || v.no_final_read, json!({"stream": v}))
            }
        };
        if !valid {
            return (Judgement::Invalid, verdict);
        }
        let short: Vec<String> = self
            .needed()
            .iter()
            .filter_map(|(f, need)| {
                let ok = history
                    .iter()
                    .filter(|o| o.kind == OpType::Ok && o.f == *f)
                    .count();
                (ok < *need).then(|| format!("{ok} successful {f} (needs {need})"))
            })
            .collect();
        if short.is_empty() {
            (Judgement::Valid, verdict)
        } else {
            let mut verdict = verdict;
            verdict["unknown"] = json!(format!(
                "too little progress to judge: {}",
                short.join(", ")
            ));
            (Judgement::Unknown, verdict)
        }
    }
}

/// What a history showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Judgement {
    Valid,
    Invalid,
    /// No anomaly, but too few operations succeeded to judge.
    Unknown,
}

impl Judgement {
    pub fn name(self) -> &'static str {
        match self {
            Judgement::Valid => "valid",
            Judgement::Invalid => "INVALID",
            Judgement::Unknown => "unknown",
        }
    }
}

fn account(a: u64) -> String {
    format!("a{a}")
}

/// `fail` when the error proves nothing happened, `info` when it may have.
fn failure(e: &ClientError) -> OpType {
    match e {
        ClientError::Unavailable { .. }
        | ClientError::DeadlineExceeded(_)
        | ClientError::Server { .. } => OpType::Info,
        _ => OpType::Fail,
    }
}

async fn register_op(client: &Client, rec: &Recorder, process: u64, rng: &mut StdRng) -> OpType {
    let key = format!("r{}", rng.random_range(0..REGISTER_KEYS));
    match rng.random_range(0..4) {
        0 | 1 => {
            let op = rec.invoke(process, "read", Some(&key), Value::Null);
            match client
                .get(
                    JOB,
                    "register",
                    key.as_bytes().to_vec(),
                    Consistency::Linearizable,
                )
                .await
            {
                Ok(kv) => {
                    let v = kv
                        .and_then(|kv| String::from_utf8(kv.value).ok()?.parse::<i64>().ok())
                        .map_or(Value::Null, Value::from);
                    rec.complete(&op, OpType::Ok, v);
                    OpType::Ok
                }
                // A read has no effect: whatever happened, it did not happen.
                Err(e) => {
                    rec.complete(&op, OpType::Fail, json!(e.to_string()));
                    OpType::Fail
                }
            }
        }
        2 => {
            let v: i64 = rng.random_range(0..5);
            let op = rec.invoke(process, "write", Some(&key), json!(v));
            let kind = match client
                .put(JOB, "register", key.as_bytes().to_vec(), v.to_string())
                .await
            {
                Ok(_) => OpType::Ok,
                Err(e) => failure(&e),
            };
            rec.complete(&op, kind, json!(v));
            kind
        }
        _ => {
            let (expected, new): (i64, i64) = (rng.random_range(0..5), rng.random_range(0..5));
            let op = rec.invoke(process, "cas", Some(&key), json!([expected, new]));
            let b = WriteBatch::new(JOB)
                .if_value("register", key.as_bytes(), expected.to_string())
                .put("register", key.as_bytes(), new.to_string());
            let kind = match client.write(b).await {
                Ok(_) => OpType::Ok,
                Err(ClientError::ConditionFailed { .. }) => OpType::Fail,
                Err(e) => failure(&e),
            };
            rec.complete(&op, kind, json!([expected, new]));
            kind
        }
    }
}

async fn set_add(client: &Client, rec: &Recorder, process: u64, element: u64) -> OpType {
    let op = rec.invoke(process, "add", None, json!(element));
    let kind = match client.put(JOB, "set", format!("{element:010}"), "1").await {
        Ok(_) => OpType::Ok,
        Err(e) => failure(&e),
    };
    rec.complete(&op, kind, json!(element));
    kind
}

async fn bank_read(client: &Client, rec: &Recorder, process: u64) -> OpType {
    let op = rec.invoke(process, "read", None, Value::Null);
    // One page: a scan reads one snapshot of the state machine.
    match client
        .scan(
            JOB,
            "bank",
            streamshield_client::ScanOptions {
                limit: 100,
                ..Default::default()
            },
        )
        .await
    {
        Ok(page) => {
            let mut m = serde_json::Map::new();
            for kv in page.kvs {
                let bal = String::from_utf8(kv.value)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok());
                m.insert(
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    bal.map_or(Value::Null, Value::from),
                );
            }
            rec.complete(&op, OpType::Ok, Value::Object(m));
            OpType::Ok
        }
        Err(e) => {
            rec.complete(&op, OpType::Fail, json!(e.to_string()));
            OpType::Fail
        }
    }
}

async fn bank_op(client: &Client, rec: &Recorder, process: u64, rng: &mut StdRng) -> OpType {
    if rng.random_bool(0.3) {
        return bank_read(client, rec, process).await;
    }
    let from = rng.random_range(0..ACCOUNTS);
    let to = (from + rng.random_range(1..ACCOUNTS)) % ACCOUNTS;
    let amount: i64 = rng.random_range(1..6);
    let value = json!({"from": account(from), "to": account(to), "amount": amount});
    let op = rec.invoke(process, "transfer", None, value.clone());
    let read = |a: u64| {
        let c = client.clone();
        async move {
            c.get(JOB, "bank", account(a), Consistency::Linearizable)
                .await
        }
    };
    let (Ok(Some(f)), Ok(Some(t))) = (read(from).await, read(to).await) else {
        rec.complete(&op, OpType::Fail, value);
        return OpType::Fail;
    };
    let parse = |v: &[u8]| {
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .unwrap_or(0)
    };
    let (fb, tb) = (parse(&f.value), parse(&t.value));
    if fb < amount {
        rec.complete(&op, OpType::Fail, value);
        return OpType::Fail;
    }
    let b = WriteBatch::new(JOB)
        .if_version("bank", account(from), f.version)
        .if_version("bank", account(to), t.version)
        .put("bank", account(from), (fb - amount).to_string())
        .put("bank", account(to), (tb + amount).to_string());
    let kind = match client.write(b).await {
        Ok(_) => OpType::Ok,
        Err(ClientError::ConditionFailed { .. }) => OpType::Fail,
        Err(e) => failure(&e),
    };
    rec.complete(&op, kind, value);
    kind
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A history in which every operation was invoked and failed.
    fn nothing_served(ops: &[&str]) -> Vec<Op> {
        let mut h = Vec::new();
        for (i, f) in ops.iter().cycle().take(60).enumerate() {
            let inv = Op::invoke(i as u64, f, Some("r0"), Value::Null, 2 * i as u64);
            h.push(inv.complete(OpType::Fail, json!("unavailable"), 2 * i as u64 + 1));
            h.insert(h.len() - 1, inv);
        }
        h
    }

    #[test]
    fn a_history_with_no_successful_operation_is_unknown_not_valid() {
        for (w, ops) in [
            (Workload::Register, &["read", "write", "cas"][..]),
            (Workload::Set, &["add", "read"][..]),
            (Workload::Bank, &["transfer", "read"][..]),
            (Workload::Stream, &["commit", "read"][..]),
        ] {
            let (j, v) = w.check(&nothing_served(ops));
            assert_eq!(j, Judgement::Unknown, "{}: {v}", w.name());
            assert!(v["unknown"].as_str().unwrap().contains("successful"), "{v}");
        }
    }
}
