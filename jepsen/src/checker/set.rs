//! The set checker: unique elements are added, and one final read lists
//! the set. Every acknowledged add must be in it (else: lost); an add that
//! failed must not be (else: unexpected); an add of unknown outcome may go
//! either way (recovered if present).

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::Value;

use crate::history::{Completed, OpType};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    pub valid: bool,
    pub acknowledged: usize,
    pub lost: Vec<Value>,
    pub unexpected: Vec<Value>,
    /// Adds of unknown outcome that made it.
    pub recovered: usize,
    /// No successful final read: nothing can be said.
    pub no_final_read: bool,
}

pub fn check(ops: &[Completed]) -> Verdict {
    let mut ok = BTreeSet::new();
    let mut failed = BTreeSet::new();
    let mut unknown = BTreeSet::new();
    let mut final_read: Option<BTreeSet<String>> = None;
    for c in ops {
        let key = c.invoke.value.to_string();
        match (c.invoke.f.as_str(), c.outcome()) {
            ("add", OpType::Ok) => {
                ok.insert(key);
            }
            ("add", OpType::Fail) => {
                failed.insert(key);
            }
            ("add", _) => {
                unknown.insert(key);
            }
            ("read", OpType::Ok) => {
                if let Some(Value::Array(items)) = c.complete.as_ref().map(|d| &d.value) {
                    final_read = Some(items.iter().map(|v| v.to_string()).collect());
                }
            }
            _ => {}
        }
    }
    let Some(seen) = final_read else {
        return Verdict {
            valid: false,
            acknowledged: ok.len(),
            lost: Vec::new(),
            unexpected: Vec::new(),
            recovered: 0,
            no_final_read: true,
        };
    };
    let parse = |s: &String| serde_json::from_str(s).unwrap_or(Value::String(s.clone()));
    let lost: Vec<Value> = ok.difference(&seen).map(parse).collect();
    let unexpected: Vec<Value> = seen
        .iter()
        .filter(|s| failed.contains(*s) || !(ok.contains(*s) || unknown.contains(*s)))
        .map(parse)
        .collect();
    let recovered = unknown.intersection(&seen).count();
    Verdict {
        valid: lost.is_empty() && unexpected.is_empty(),
        acknowledged: ok.len(),
        lost,
        unexpected,
        recovered,
        no_final_read: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{pair, Op};
    use serde_json::json;

    fn add(p: u64, v: u64, kind: OpType, t: u64) -> [Op; 2] {
        let i = Op::invoke(p, "add", None, json!(v), t);
        let c = i.complete(kind, json!(v), t + 1);
        [i, c]
    }

    fn read(items: Value, t: u64) -> [Op; 2] {
        let i = Op::invoke(99, "read", None, Value::Null, t);
        let c = i.complete(OpType::Ok, items, t + 1);
        [i, c]
    }

    fn run(parts: Vec<[Op; 2]>) -> Verdict {
        let ops: Vec<Op> = parts.into_iter().flatten().collect();
        check(&pair(&ops).unwrap())
    }

    #[test]
    fn all_acknowledged_present_is_valid() {
        let v = run(vec![
            add(1, 1, OpType::Ok, 0),
            add(2, 2, OpType::Info, 2),
            read(json!([1, 2]), 10),
        ]);
        assert!(v.valid);
        assert_eq!(v.recovered, 1);
    }

    #[test]
    fn lost_and_unexpected_are_reported() {
        let v = run(vec![
            add(1, 1, OpType::Ok, 0),
            add(2, 2, OpType::Fail, 2),
            read(json!([2, 3]), 10),
        ]);
        assert!(!v.valid);
        assert_eq!(v.lost, vec![json!(1)]);
        assert_eq!(v.unexpected, vec![json!(2), json!(3)]);
    }

    #[test]
    fn without_a_final_read_nothing_is_claimed() {
        let v = run(vec![add(1, 1, OpType::Ok, 0)]);
        assert!(!v.valid && v.no_final_read);
    }
}
