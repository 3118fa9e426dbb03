//! Running an operator without a cluster, for its unit tests (as Flink's
//! operator test harnesses do): state in a map, output collected, the
//! watermark moved by hand. The task loop drives operators through the
//! same [`Context`] calls, with the task's session behind them.

use std::collections::BTreeMap;

use crate::context::{advance_watermark, Backing, Context, Output};
use crate::envelope::{self, Envelope};
use crate::error::RuntimeError;
use crate::layout::Layout;
use crate::operator::{DynOperator, Input, Operator};

/// One emitted record: key, value, event time.
pub type Emitted = (Vec<u8>, Vec<u8>, i64);

pub struct Harness<O: Operator> {
    op: O,
    ctx: Context,
}

impl<O: Operator> Harness<O> {
    /// `cache_bytes` bounds the state cache as a task's does; 0 caches
    /// nothing, so every read goes to the (in-memory) store.
    pub fn new(op: O, cache_bytes: usize) -> Self {
        let output = Output {
            stream: "out".into(),
            layout: Layout::new(128, 12),
        };
        let backing = Backing::Memory {
            tables: BTreeMap::new(),
            emitted: Vec::new(),
            store_reads: 0,
        };
        Self {
            op,
            ctx: Context::new(backing, cache_bytes, Some(output), 0),
        }
    }

    pub async fn process(
        &mut self,
        key: &[u8],
        value: &[u8],
        event_time: i64,
    ) -> Result<(), RuntimeError> {
        self.ctx.key = key.to_vec();
        let input = Input {
            key: key.to_vec(),
            value: value.to_vec(),
            event_time,
        };
        self.op.process_dyn(&mut self.ctx, input).await
    }

    /// Moves the watermark; returns how many timers fired.
    pub async fn advance_watermark(&mut self, to: i64) -> Result<u64, RuntimeError> {
        advance_watermark(&mut self.op, &mut self.ctx, to).await
    }

    /// What the operator emitted since the last call.
    pub fn take_output(&mut self) -> Vec<Emitted> {
        let Backing::Memory { emitted, .. } = &mut self.ctx.backing else {
            unreachable!("a harness is backed by memory");
        };
        std::mem::take(emitted)
            .into_iter()
            .map(|(_, r)| match envelope::decode(r.key, r.value) {
                Ok(Envelope::Data {
                    key,
                    value,
                    event_time,
                }) => (key, value, event_time),
                other => panic!("an operator emitted {other:?}"),
            })
            .collect()
    }

    /// The context with `key` current, to read state as the operator sees
    /// it.
    pub fn context_for(&mut self, key: &[u8]) -> &mut Context {
        self.ctx.key = key.to_vec();
        &mut self.ctx
    }

    /// Stored values (not the cache), per table and key.
    pub fn stored(&self) -> usize {
        match &self.ctx.backing {
            Backing::Memory { tables, .. } => tables.len(),
            Backing::Session(_) => 0,
        }
    }

    /// The (in-memory) store's work for reads so far: one per request,
    /// plus one per key a scan returned.
    pub fn store_reads(&self) -> u64 {
        match &self.ctx.backing {
            Backing::Memory { store_reads, .. } => *store_reads,
            Backing::Session(_) => 0,
        }
    }

    pub fn pending_timers(&self) -> usize {
        self.ctx.timers.len()
    }
}
