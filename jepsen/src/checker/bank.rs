//! The bank checker: transfers move money between accounts atomically, so
//! every successful read of all accounts sums to the same total, and no
//! balance goes negative (transfers are conditional on funds).

use serde::Serialize;
use serde_json::Value;

use crate::history::{Completed, OpType};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Anomaly {
    /// Index of the read among the history's operations.
    pub op: usize,
    pub total: i64,
    pub balances: Value,
    pub kind: &'static str,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    pub valid: bool,
    pub reads: usize,
    pub expected_total: i64,
    pub anomalies: Vec<Anomaly>,
}

/// `read` completions carry `{"account": balance, ...}`.
pub fn check(ops: &[Completed], expected_total: i64) -> Verdict {
    let mut reads = 0;
    let mut anomalies = Vec::new();
    for (i, c) in ops.iter().enumerate() {
        if c.invoke.f != "read" || c.outcome() != OpType::Ok {
            continue;
        }
        reads += 1;
        let balances = c
            .complete
            .as_ref()
            .map(|d| d.value.clone())
            .unwrap_or(Value::Null);
        let Some(map) = balances.as_object() else {
            anomalies.push(Anomaly {
                op: i,
                total: 0,
                balances,
                kind: "malformed-read",
            });
            continue;
        };
        let values: Vec<i64> = map
            .values()
            .map(|v| v.as_i64().unwrap_or(i64::MIN))
            .collect();
        let total: i64 = values.iter().map(|v| (*v).max(i64::MIN / 1024)).sum();
        if values.iter().any(|v| *v < 0) {
            anomalies.push(Anomaly {
                op: i,
                total,
                balances: balances.clone(),
                kind: "negative-balance",
            });
        }
        if total != expected_total {
            anomalies.push(Anomaly {
                op: i,
                total,
                balances,
                kind: "wrong-total",
            });
        }
    }
    Verdict {
        valid: anomalies.is_empty(),
        reads,
        expected_total,
        anomalies,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{pair, Op};
    use serde_json::json;

    fn read(balances: Value) -> Vec<Op> {
        let i = Op::invoke(1, "read", None, Value::Null, 0);
        let c = i.complete(OpType::Ok, balances, 1);
        vec![i, c]
    }

    #[test]
    fn constant_total_is_valid() {
        let ops = [
            read(json!({"a": 60, "b": 40})),
            read(json!({"a": 10, "b": 90})),
        ]
        .concat();
        let ops: Vec<Op> = ops
            .into_iter()
            .enumerate()
            .map(|(i, mut o)| {
                o.time = i as u64;
                o
            })
            .collect();
        assert!(check(&pair(&ops).unwrap(), 100).valid);
    }

    #[test]
    fn torn_transfer_and_overdraft_are_caught() {
        let v = check(&pair(&read(json!({"a": 70, "b": 40}))).unwrap(), 100);
        assert!(!v.valid);
        assert_eq!(v.anomalies[0].kind, "wrong-total");
        let v = check(&pair(&read(json!({"a": -10, "b": 110}))).unwrap(), 100);
        assert_eq!(v.anomalies[0].kind, "negative-balance");
    }
}
