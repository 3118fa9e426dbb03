//! Records operations as they happen, with times relative to the start.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::Value;

use crate::history::{Op, OpType};

#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    ops: Arc<Mutex<Vec<Op>>>,
}

impl Recorder {
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            ops: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn invoke(&self, process: u64, f: &str, key: Option<&str>, value: Value) -> Op {
        let op = Op::invoke(process, f, key, value, self.now());
        self.ops.lock().expect("history").push(op.clone());
        op
    }

    pub fn complete(&self, invoke: &Op, kind: OpType, value: Value) {
        let op = invoke.complete(kind, value, self.now());
        self.ops.lock().expect("history").push(op);
    }

    pub fn history(&self) -> Vec<Op> {
        self.ops.lock().expect("history").clone()
    }
}
