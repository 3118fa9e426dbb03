//! Histories in Jepsen's shape, one operation per JSON line:
//! `{"process":3,"type":"invoke","f":"cas","key":"k1","value":[1,2],"time":1234}`.
//!
//! `invoke` starts an operation; `ok`, `fail` or `info` completes the last
//! invocation of the same process. `info` means the outcome is unknown
//! (a timeout): the operation may have taken effect, at any time after its
//! invocation.

use std::io::{self, BufRead, Write};

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// One line of a history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    pub process: u64,
    #[serde(rename = "type")]
    pub kind: OpType,
    pub f: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default)]
    pub value: Value,
    /// Nanoseconds since the test started.
    pub time: u64,
}

impl Op {
    pub fn invoke(process: u64, f: &str, key: Option<&str>, value: Value, time: u64) -> Self {
        Self {
            process,
            kind: OpType::Invoke,
            f: f.to_string(),
            key: key.map(str::to_string),
            value,
            time,
        }
    }

    /// The completion of `self` (an invocation) with `kind` and `value`.
    pub fn complete(&self, kind: OpType, value: Value, time: u64) -> Self {
        Self {
            kind,
            value,
            time,
            ..self.clone()
        }
    }
}

/// An invocation paired with its completion (none if the history ended
/// first, which counts as `info`).
#[derive(Debug, Clone, PartialEq)]
pub struct Completed {
    pub invoke: Op,
    pub complete: Option<Op>,
}

impl Completed {
    /// The outcome: `ok`, `fail`, or `info` for unknown.
    pub fn outcome(&self) -> OpType {
        self.complete.as_ref().map_or(OpType::Info, |c| c.kind)
    }
}

/// A history whose completions do not match its invocations.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HistoryError {
    #[error("line {line}: process {process} completes an operation it never invoked")]
    CompletionWithoutInvoke { line: usize, process: u64 },
    #[error("line {line}: process {process} invokes while its previous operation is open")]
    InvokeWhileOpen { line: usize, process: u64 },
    #[error("line {line}: completion of {process} names f={got}, invocation was f={want}")]
    MismatchedF {
        line: usize,
        process: u64,
        got: String,
        want: String,
    },
}

/// Pairs invocations with completions, in invocation order.
pub fn pair(history: &[Op]) -> Result<Vec<Completed>, HistoryError> {
    let mut open: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    let mut out: Vec<Completed> = Vec::new();
    for (line, op) in history.iter().enumerate() {
        match op.kind {
            OpType::Invoke => {
                if open.contains_key(&op.process) {
                    return Err(HistoryError::InvokeWhileOpen {
                        line,
                        process: op.process,
                    });
                }
                open.insert(op.process, out.len());
                out.push(Completed {
                    invoke: op.clone(),
                    complete: None,
                });
            }
            _ => {
                let i = open
                    .remove(&op.process)
                    .ok_or(HistoryError::CompletionWithoutInvoke {
                        line,
                        process: op.process,
                    })?;
                if out[i].invoke.f != op.f {
                    return Err(HistoryError::MismatchedF {
                        line,
                        process: op.process,
                        got: op.f.clone(),
                        want: out[i].invoke.f.clone(),
                    });
                }
                out[i].complete = Some(op.clone());
            }
        }
    }
    Ok(out)
}

pub fn write_jsonl(history: &[Op], mut w: impl Write) -> io::Result<()> {
    for op in history {
        serde_json::to_writer(&mut w, op)?;
        w.write_all(b"\n")?;
    }
    Ok(())
}

pub fn read_jsonl(r: impl BufRead) -> io::Result<Vec<Op>> {
    let mut out = Vec::new();
    for (i, line) in r.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let op: Op = serde_json::from_str(&line).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("line {}: {e}", i + 1))
        })?;
        out.push(op);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lines_have_jepsen_shape() {
        let op = Op::invoke(3, "cas", Some("k1"), json!([1, 2]), 1234);
        let line = serde_json::to_value(&op).unwrap();
        assert_eq!(
            line,
            json!({"process":3,"type":"invoke","f":"cas","key":"k1","value":[1,2],"time":1234})
        );
        let mut buf = Vec::new();
        write_jsonl(
            &[op.clone(), op.complete(OpType::Ok, json!([1, 2]), 2000)],
            &mut buf,
        )
        .unwrap();
        let back = read_jsonl(buf.as_slice()).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].kind, OpType::Ok);
    }

    #[test]
    fn pairing_checks_processes() {
        let a = Op::invoke(1, "read", Some("k"), Value::Null, 1);
        let done = a.complete(OpType::Ok, json!(3), 2);
        let paired = pair(&[a.clone(), done]).unwrap();
        assert_eq!(paired[0].outcome(), OpType::Ok);
        assert_eq!(
            pair(std::slice::from_ref(&a)).unwrap()[0].outcome(),
            OpType::Info
        );
        assert!(matches!(
            pair(&[a.clone(), a.clone()]),
            Err(HistoryError::InvokeWhileOpen { .. })
        ));
        let stray = a.complete(OpType::Ok, json!(1), 3);
        assert!(matches!(
            pair(&[stray]),
            Err(HistoryError::CompletionWithoutInvoke { .. })
        ));
    }
}
