//! Linearizability of registers, checked per key (linearizability is
//! compositional, Herlihy & Wing 1990) with the Wing–Gong–Lowe search and
//! Lowe's memoization of (linearized set, state), as Porcupine does.
//!
//! Operations on one key: `read` (value = what was read, null for absent),
//! `write` (value = what was written), `cas` (value = `[expected, new]`,
//! null expected = absent). A `fail`ed operation did not happen. An `info`
//! (or never completed) operation may have happened at any point after its
//! invocation, or not at all; an `info` read tells nothing and is dropped.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;
use serde_json::Value;

use crate::history::{Completed, OpType};

/// One operation as the search sees it.
#[derive(Debug, Clone)]
struct Call {
    f: Func,
    /// Index into the key's completed operations, for reports.
    source: usize,
    /// May stay unlinearized (outcome unknown).
    optional: bool,
}

#[derive(Debug, Clone)]
enum Func {
    Read(Value),
    Write(Value),
    Cas(Value, Value),
}

/// The register model: absent is `Value::Null`.
fn step(state: &Value, f: &Func) -> Option<Value> {
    match f {
        Func::Read(v) => (v == state).then(|| state.clone()),
        Func::Write(v) => Some(v.clone()),
        Func::Cas(expected, new) => (expected == state).then(|| new.clone()),
    }
}

/// Why a history could not be checked.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ModelError {
    #[error("operation {index}: unknown f {f:?} for a register")]
    UnknownF { index: usize, f: String },
    #[error("operation {index}: cas value must be [expected, new], got {value}")]
    BadCas { index: usize, value: Value },
}

/// The verdict for one key.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KeyVerdict {
    pub key: String,
    pub valid: bool,
    pub operations: usize,
    /// When invalid: the operations (as completed) that were pending when
    /// the deepest search got stuck: one of them cannot be placed.
    pub stuck_at: Vec<Value>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    pub valid: bool,
    pub keys: usize,
    pub invalid_keys: Vec<KeyVerdict>,
}

fn to_call(c: &Completed, index: usize) -> Result<Option<Call>, ModelError> {
    let outcome = c.outcome();
    if outcome == OpType::Fail {
        return Ok(None);
    }
    let optional = outcome == OpType::Info;
    let f = match c.invoke.f.as_str() {
        "read" if optional => return Ok(None),
        "read" => Func::Read(
            c.complete
                .as_ref()
                .map(|o| o.value.clone())
                .unwrap_or(Value::Null),
        ),
        "write" => Func::Write(c.invoke.value.clone()),
        "cas" => match &c.invoke.value {
            Value::Array(v) if v.len() == 2 => Func::Cas(v[0].clone(), v[1].clone()),
            other => {
                return Err(ModelError::BadCas {
                    index,
                    value: other.clone(),
                })
            }
        },
        f => {
            return Err(ModelError::UnknownF {
                index,
                f: f.to_string(),
            })
        }
    };
    Ok(Some(Call {
        f,
        source: index,
        optional,
    }))
}

/// A call or return event in the doubly linked list the search walks.
#[derive(Debug, Clone, Copy)]
struct Event {
    call: usize,
    is_call: bool,
    prev: Option<usize>,
    next: Option<usize>,
}

struct Search {
    calls: Vec<Call>,
    events: Vec<Event>,
    head: Option<usize>,
    /// Event index of each call's invocation and return.
    call_event: Vec<usize>,
    return_event: Vec<usize>,
}

impl Search {
    fn new(ops: &[Completed]) -> Result<Self, ModelError> {
        // Events ordered by time; unknown outcomes return after everything.
        let mut calls = Vec::new();
        let mut timed: Vec<(u64, u8, usize, bool)> = Vec::new();
        for (i, c) in ops.iter().enumerate() {
            let Some(call) = to_call(c, i)? else { continue };
            let id = calls.len();
            let ret = match (&c.complete, call.optional) {
                (Some(done), false) => done.time,
                _ => u64::MAX,
            };
            // At equal times a return sorts before a call: the earlier
            // operation really was over first.
            timed.push((c.invoke.time, 1, id, true));
            timed.push((ret, 0, id, false));
            calls.push(call);
        }
        timed.sort();
        let n = timed.len();
        let mut events = Vec::with_capacity(n);
        let mut call_event = vec![0; calls.len()];
        let mut return_event = vec![0; calls.len()];
        for (i, (_, _, id, is_call)) in timed.into_iter().enumerate() {
            if is_call {
                call_event[id] = i;
            } else {
                return_event[id] = i;
            }
            events.push(Event {
                call: id,
                is_call,
                prev: i.checked_sub(1),
                next: (i + 1 < n).then_some(i + 1),
            });
        }
        Ok(Self {
            calls,
            events,
            head: (n > 0).then_some(0),
            call_event,
            return_event,
        })
    }

    fn unlink(&mut self, e: usize) {
        let Event { prev, next, .. } = self.events[e];
        match prev {
            Some(p) => self.events[p].next = next,
            None => self.head = next,
        }
        if let Some(nx) = next {
            self.events[nx].prev = prev;
        }
    }

    fn relink(&mut self, e: usize) {
        let Event { prev, next, .. } = self.events[e];
        match prev {
            Some(p) => self.events[p].next = Some(e),
            None => self.head = Some(e),
        }
        if let Some(nx) = next {
            self.events[nx].prev = Some(e);
        }
    }

    /// Takes call `id` out of the list (its invocation and its return).
    fn lift(&mut self, id: usize) {
        self.unlink(self.call_event[id]);
        self.unlink(self.return_event[id]);
    }

    fn unlift(&mut self, id: usize) {
        self.relink(self.return_event[id]);
        self.relink(self.call_event[id]);
    }

    /// Ok(()) when linearizable, else the calls pending where the deepest
    /// attempt got stuck.
    fn run(&mut self) -> Result<(), Vec<usize>> {
        let required = self.calls.iter().filter(|c| !c.optional).count();
        let words = self.calls.len().div_ceil(64);
        let mut linearized = vec![0u64; words];
        let mut done_required = 0usize;
        let mut state = Value::Null;
        let mut cache: HashSet<(Vec<u64>, String)> = HashSet::new();
        let mut stack: Vec<(usize, Value)> = Vec::new();
        let mut entry = self.head;
        let mut deepest: (usize, Vec<usize>) = (0, Vec::new());
        loop {
            if done_required == required {
                return Ok(());
            }
            let backtrack = match entry {
                Some(e) if self.events[e].is_call => {
                    let id = self.events[e].call;
                    let mut advanced = false;
                    if let Some(next_state) = step(&state, &self.calls[id].f) {
                        linearized[id / 64] |= 1 << (id % 64);
                        let key = (linearized.clone(), next_state.to_string());
                        if cache.insert(key) {
                            stack.push((id, std::mem::replace(&mut state, next_state)));
                            if !self.calls[id].optional {
                                done_required += 1;
                            }
                            self.lift(id);
                            entry = self.head;
                            advanced = true;
                        } else {
                            linearized[id / 64] &= !(1 << (id % 64));
                        }
                    }
                    if !advanced {
                        entry = self.events[e].next;
                    }
                    false
                }
                // An unknown outcome may never take effect: pass its return.
                Some(e) if self.calls[self.events[e].call].optional => {
                    entry = self.events[e].next;
                    false
                }
                // A return of an operation not yet placed, or the end.
                _ => true,
            };
            if backtrack {
                if stack.len() >= deepest.0 {
                    deepest = (stack.len(), self.pending());
                }
                let Some((id, previous)) = stack.pop() else {
                    return Err(deepest.1);
                };
                state = previous;
                linearized[id / 64] &= !(1 << (id % 64));
                if !self.calls[id].optional {
                    done_required -= 1;
                }
                self.unlift(id);
                entry = self.events[self.call_event[id]].next;
            }
        }
    }

    /// Calls whose invocation is still in the list, up to the first
    /// required return: the operations that were candidates.
    fn pending(&self) -> Vec<usize> {
        let mut out = Vec::new();
        let mut e = self.head;
        while let Some(i) = e {
            let ev = self.events[i];
            if ev.is_call {
                out.push(ev.call);
            } else if !self.calls[ev.call].optional {
                out.push(ev.call);
                break;
            }
            e = ev.next;
        }
        out.sort();
        out.dedup();
        out
    }
}

/// Checks one key's operations.
pub fn check_key(key: &str, ops: &[Completed]) -> Result<KeyVerdict, ModelError> {
    let mut search = Search::new(ops)?;
    let result = search.run();
    let stuck_at = match &result {
        Ok(()) => Vec::new(),
        Err(ids) => ids
            .iter()
            .map(|id| {
                let c = &ops[search.calls[*id].source];
                serde_json::json!({
                    "invoke": c.invoke,
                    "complete": c.complete,
                })
            })
            .collect(),
    };
    Ok(KeyVerdict {
        key: key.to_string(),
        valid: result.is_ok(),
        operations: ops.len(),
        stuck_at,
    })
}

/// Checks every key of a register history independently.
pub fn check(ops: &[Completed]) -> Result<Verdict, ModelError> {
    let mut by_key: BTreeMap<String, Vec<Completed>> = BTreeMap::new();
    for c in ops {
        by_key
            .entry(c.invoke.key.clone().unwrap_or_default())
            .or_default()
            .push(c.clone());
    }
    let mut invalid_keys = Vec::new();
    for (key, ops) in &by_key {
        let v = check_key(key, ops)?;
        if !v.valid {
            invalid_keys.push(v);
        }
    }
    Ok(Verdict {
        valid: invalid_keys.is_empty(),
        keys: by_key.len(),
        invalid_keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{pair, Op};
    use serde_json::json;

    /// Builds a one-key history from `(process, f, value, kind)` events in
    /// time order; for invocations `kind` is ignored.
    fn history(events: &[(u64, &str, Value, Option<OpType>)]) -> Vec<Completed> {
        let mut ops = Vec::new();
        for (t, (p, f, v, kind)) in events.iter().enumerate() {
            let t = t as u64 * 10;
            ops.push(match kind {
                None => Op::invoke(*p, f, Some("k"), v.clone(), t),
                Some(k) => Op {
                    process: *p,
                    kind: *k,
                    f: f.to_string(),
                    key: Some("k".into()),
                    value: v.clone(),
                    time: t,
                },
            });
        }
        pair(&ops).unwrap()
    }

    const OK: Option<OpType> = Some(OpType::Ok);
    const FAIL: Option<OpType> = Some(OpType::Fail);
    const INFO: Option<OpType> = Some(OpType::Info);

    #[test]
    fn sequential_history_is_linearizable() {
        let h = history(&[
            (1, "write", json!(1), None),
            (1, "write", json!(1), OK),
            (1, "read", Value::Null, None),
            (1, "read", json!(1), OK),
            (1, "cas", json!([1, 2]), None),
            (1, "cas", json!([1, 2]), OK),
            (1, "read", Value::Null, None),
            (1, "read", json!(2), OK),
        ]);
        assert!(check_key("k", &h).unwrap().valid);
    }

    #[test]
    fn stale_read_is_caught() {
        // The write of 2 completed before the read began, yet it saw 1.
        let h = history(&[
            (1, "write", json!(1), None),
            (1, "write", json!(1), OK),
            (1, "write", json!(2), None),
            (1, "write", json!(2), OK),
            (2, "read", Value::Null, None),
            (2, "read", json!(1), OK),
        ]);
        let v = check_key("k", &h).unwrap();
        assert!(!v.valid);
        assert!(!v.stuck_at.is_empty());
    }

    #[test]
    fn concurrent_ops_may_take_effect_in_either_order() {
        // The read overlaps the write, so seeing the old or new value is fine.
        for seen in [Value::Null, json!(5)] {
            let h = history(&[
                (1, "write", json!(5), None),
                (2, "read", Value::Null, None),
                (2, "read", seen.clone(), OK),
                (1, "write", json!(5), OK),
            ]);
            assert!(check_key("k", &h).unwrap().valid, "read {seen}");
        }
    }

    #[test]
    fn timed_out_write_may_take_effect_later() {
        // The write's outcome is unknown; a much later read sees it.
        let h = history(&[
            (1, "write", json!(7), None),
            (1, "write", json!(7), INFO),
            (2, "read", Value::Null, None),
            (2, "read", Value::Null, OK),
            (2, "read", Value::Null, None),
            (2, "read", json!(7), OK),
        ]);
        assert!(check_key("k", &h).unwrap().valid);
        // ... or never.
        let h = history(&[
            (1, "write", json!(7), None),
            (1, "write", json!(7), INFO),
            (2, "read", Value::Null, None),
            (2, "read", Value::Null, OK),
        ]);
        assert!(check_key("k", &h).unwrap().valid);
    }

    #[test]
    fn value_from_nowhere_is_caught() {
        let h = history(&[
            (1, "write", json!(1), None),
            (1, "write", json!(1), OK),
            (2, "read", Value::Null, None),
            (2, "read", json!(9), OK),
        ]);
        assert!(!check_key("k", &h).unwrap().valid);
    }

    #[test]
    fn failed_cas_did_not_happen_and_lost_write_is_caught() {
        // A failed cas changes nothing.
        let h = history(&[
            (1, "write", json!(1), None),
            (1, "write", json!(1), OK),
            (2, "cas", json!([3, 4]), None),
            (2, "cas", json!([3, 4]), FAIL),
            (1, "read", Value::Null, None),
            (1, "read", json!(1), OK),
        ]);
        assert!(check_key("k", &h).unwrap().valid);
        // An acknowledged cas that a later read does not reflect: lost.
        let h = history(&[
            (1, "write", json!(1), None),
            (1, "write", json!(1), OK),
            (2, "cas", json!([1, 4]), None),
            (2, "cas", json!([1, 4]), OK),
            (1, "read", Value::Null, None),
            (1, "read", json!(1), OK),
        ]);
        assert!(!check_key("k", &h).unwrap().valid);
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut ops = Vec::new();
        for (k, read) in [("a", json!(1)), ("b", json!(2))] {
            ops.push(Op::invoke(1, "write", Some(k), json!(1), 0));
            ops.push(Op {
                kind: OpType::Ok,
                ..Op::invoke(1, "write", Some(k), json!(1), 1)
            });
            ops.push(Op::invoke(1, "read", Some(k), Value::Null, 2));
            ops.push(Op {
                kind: OpType::Ok,
                ..Op::invoke(1, "read", Some(k), read, 3)
            });
        }
        let v = check(&pair(&ops).unwrap()).unwrap();
        assert!(!v.valid);
        assert_eq!(v.keys, 2);
        assert_eq!(v.invalid_keys.len(), 1);
        assert_eq!(v.invalid_keys[0].key, "b");
    }

    #[test]
    fn many_concurrent_writers_stay_tractable() {
        // 8 processes, 200 rounds of overlapping writes and reads.
        let mut ops = Vec::new();
        let mut t = 0;
        for round in 0..200u64 {
            for p in 0..8u64 {
                ops.push(Op::invoke(p, "write", Some("k"), json!(round * 8 + p), t));
                t += 1;
            }
            for p in 0..8u64 {
                ops.push(Op {
                    kind: OpType::Ok,
                    ..Op::invoke(p, "write", Some("k"), json!(round * 8 + p), t)
                });
                t += 1;
            }
            ops.push(Op::invoke(100, "read", Some("k"), Value::Null, t));
            ops.push(Op {
                kind: OpType::Ok,
                ..Op::invoke(100, "read", Some("k"), json!(round * 8 + 7), t + 1)
            });
            t += 2;
        }
        assert!(check(&pair(&ops).unwrap()).unwrap().valid);
    }
}
