//! The exactly-once checker of the `stream` workload.
//!
//! Each task reads its input partition and, per record, adds one to its
//! count and emits `gen:offset:value` to its output partition, committing
//! state, input offset and outputs per epoch. The final read gives, per
//! task, the committed input offset `O`, the count, the input records and
//! the outputs. Exactly-once holds when the outputs are exactly one per
//! input record below `O`, in order, each carrying its input's value; the
//! count is `O` (state moved with the offsets); every acknowledged commit
//! is covered by `O` (nothing acknowledged lost); and each acknowledged
//! commit's outputs carry its generation, while generations never go back
//! along the log (no zombie's output visible).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::history::{Completed, OpType};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    pub valid: bool,
    /// Per task: what the final read found.
    pub tasks: BTreeMap<u64, TaskVerdict>,
    /// Acknowledged commits.
    pub committed: usize,
    /// No successful final read: nothing can be said.
    pub no_final_read: bool,
    pub anomalies: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskVerdict {
    pub offset: u64,
    pub count: u64,
    pub outputs: usize,
}

/// One output record: `gen:offset:value`.
fn parse_output(s: &str) -> Option<(u64, u64, &str)> {
    let mut it = s.splitn(3, ':');
    let gen = it.next()?.parse().ok()?;
    let offset = it.next()?.parse().ok()?;
    Some((gen, offset, it.next()?))
}

pub fn check(ops: &[Completed]) -> Verdict {
    let mut anomalies = Vec::new();
    // (task, gen, from, to) of acknowledged commits.
    let mut acked: Vec<(u64, u64, u64, u64)> = Vec::new();
    let mut final_read = None;
    for c in ops {
        match (c.invoke.f.as_str(), c.outcome()) {
            ("commit", OpType::Ok) => {
                let v = &c.invoke.value;
                let field = |k: &str| v[k].as_u64();
                if let (Some(t), Some(g), Some(f), Some(to)) =
                    (field("task"), field("gen"), field("from"), field("to"))
                {
                    acked.push((t, g, f, to));
                }
            }
            ("read", OpType::Ok) => {
                final_read = c.complete.as_ref().map(|d| d.value.clone());
            }
            _ => {}
        }
    }
    let Some(Value::Object(read)) = final_read else {
        return Verdict {
            valid: false,
            tasks: BTreeMap::new(),
            committed: acked.len(),
            no_final_read: true,
            anomalies,
        };
    };
    let mut tasks = BTreeMap::new();
    for (name, t) in &read {
        let Ok(task) = name.parse::<u64>() else {
            anomalies.push(format!("final read names task {name:?}"));
            continue;
        };
        let offset = t["offset"].as_u64().unwrap_or(0);
        let count = t["count"].as_u64().unwrap_or(0);
        let strings = |k: &str| -> Vec<String> {
            t[k].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let (inputs, outputs) = (strings("inputs"), strings("outputs"));
        if count != offset {
            anomalies.push(format!(
                "task {task}: count {count} but committed offset {offset}"
            ));
        }
        if outputs.len() as u64 != offset {
            anomalies.push(format!(
                "task {task}: {} outputs for {offset} committed inputs",
                outputs.len()
            ));
        }
        let mut last_gen = 0;
        let mut gen_at = Vec::with_capacity(outputs.len());
        for (i, o) in outputs.iter().enumerate() {
            let Some((gen, off, value)) = parse_output(o) else {
                anomalies.push(format!("task {task}: output {i} is {o:?}"));
                gen_at.push(0);
                continue;
            };
            if off != i as u64 {
                anomalies.push(format!("task {task}: output {i} is of input offset {off}"));
            } else if inputs.get(i).map(String::as_str) != Some(value) {
                anomalies.push(format!(
                    "task {task}: output {i} carries {value:?}, the input was {:?}",
                    inputs.get(i)
                ));
            }
            if gen < last_gen {
                anomalies.push(format!(
                    "task {task}: output {i} of generation {gen} after generation {last_gen}"
                ));
            }
            last_gen = last_gen.max(gen);
            gen_at.push(gen);
        }
        for &(t, gen, from, to) in acked.iter().filter(|a| a.0 == task) {
            if to > offset {
                anomalies.push(format!(
                    "task {t}: the commit of inputs {from}..{to} was acknowledged, the committed offset is {offset}"
                ));
            }
            let outs = gen_at.get(from as usize..(to as usize).min(gen_at.len()));
            if outs.is_some_and(|g| g.iter().any(|&x| x != gen)) {
                anomalies.push(format!(
                    "task {t}: outputs of inputs {from}..{to} are not all of the generation {gen} that committed them"
                ));
            }
        }
        tasks.insert(
            task,
            TaskVerdict {
                offset,
                count,
                outputs: outputs.len(),
            },
        );
    }
    Verdict {
        valid: anomalies.is_empty(),
        tasks,
        committed: acked.len(),
        no_final_read: false,
        anomalies,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::history::{pair, Op};

    fn history(outputs: Vec<&str>, offset: u64, count: u64) -> Vec<Op> {
        let commit = Op::invoke(
            1,
            "commit",
            None,
            json!({"task": 0, "gen": 1, "from": 0, "to": 2}),
            1,
        );
        let read = Op::invoke(2, "read", None, Value::Null, 3);
        vec![
            commit.clone(),
            commit.complete(OpType::Ok, commit.value.clone(), 2),
            read.clone(),
            read.complete(
                OpType::Ok,
                json!({"0": {"offset": offset, "count": count,
                    "inputs": ["0:0", "0:1", "0:2"], "outputs": outputs}}),
                4,
            ),
        ]
    }

    fn verdict(h: &[Op]) -> Verdict {
        check(&pair(h).unwrap())
    }

    #[test]
    fn exactly_one_output_per_committed_input_is_valid() {
        let v = verdict(&history(vec!["1:0:0:0", "1:1:0:1"], 2, 2));
        assert!(v.valid, "{v:?}");
    }

    #[test]
    fn a_duplicate_a_loss_a_zombie_or_state_out_of_step_is_flagged() {
        for (outputs, offset, count, what) in [
            (vec!["1:0:0:0", "1:0:0:0", "1:1:0:1"], 2, 2, "duplicate"),
            (vec!["1:0:0:0"], 2, 2, "lost"),
            (vec!["1:0:0:0", "1:1:0:1"], 2, 3, "count"),
            (vec!["1:0:0:0", "1:1:0:1"], 1, 1, "acknowledged commit lost"),
            (vec!["1:0:0:0", "0:1:0:1"], 2, 2, "zombie's generation"),
            (vec!["1:0:0:0", "1:1:0:9"], 2, 2, "wrong value"),
        ] {
            let v = verdict(&history(outputs, offset, count));
            assert!(!v.valid, "{what}: {v:?}");
        }
    }
}
