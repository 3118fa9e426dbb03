//! A `StageWritesRequest` whose ops stay shared with the session that
//! holds them.
//!
//! A session keeps every op of its open epoch until the commit (reads of
//! its own writes, re-sends), and the client retries a call by sending a
//! clone of its request: with the generated request type each send copied
//! every op once for the request and once per attempt (three allocations
//! per op each time). [`SharedStageWrites`] writes the same bytes on the
//! wire from ops behind an `Arc`, so a send copies them only into the
//! HTTP/2 frame. It only encodes: nothing decodes one.

use std::ops::Range;
use std::sync::Arc;

use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};
use streamshield_proto::v1 as pb;

/// `StageWritesRequest` field numbers (`proto/.../task.proto`).
const JOB: u32 = 2;
const TASK: u32 = 3;
const GENERATION: u32 = 4;
const EPOCH: u32 = 5;
const SEQ_FROM: u32 = 6;
const OPS: u32 = 7;

#[derive(Debug, Clone, Default)]
pub(crate) struct SharedStageWrites {
    pub job: String,
    pub task: u32,
    pub generation: u64,
    pub epoch: u64,
    /// The seq of `ops[range.start]`.
    pub seq_from: u64,
    pub ops: Arc<Vec<pb::Op>>,
    pub range: Range<usize>,
}

impl SharedStageWrites {
    fn ops(&self) -> &[pb::Op] {
        &self.ops[self.range.clone()]
    }
}

impl Message for SharedStageWrites {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        // proto3: fields at their default value are not written (shard is
        // always 0 here).
        if !self.job.is_empty() {
            encoding::string::encode(JOB, &self.job, buf);
        }
        if self.task != 0 {
            encoding::uint32::encode(TASK, &self.task, buf);
        }
        if self.generation != 0 {
            encoding::uint64::encode(GENERATION, &self.generation, buf);
        }
        if self.epoch != 0 {
            encoding::uint64::encode(EPOCH, &self.epoch, buf);
        }
        if self.seq_from != 0 {
            encoding::uint64::encode(SEQ_FROM, &self.seq_from, buf);
        }
        for op in self.ops() {
            encoding::message::encode(OPS, op, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        // Never decoded; a field is skipped rather than misread.
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        let mut n = 0;
        if !self.job.is_empty() {
            n += encoding::string::encoded_len(JOB, &self.job);
        }
        if self.task != 0 {
            n += encoding::uint32::encoded_len(TASK, &self.task);
        }
        if self.generation != 0 {
            n += encoding::uint64::encoded_len(GENERATION, &self.generation);
        }
        if self.epoch != 0 {
            n += encoding::uint64::encoded_len(EPOCH, &self.epoch);
        }
        if self.seq_from != 0 {
            n += encoding::uint64::encoded_len(SEQ_FROM, &self.seq_from);
        }
        n + encoding::message::encoded_len_repeated(OPS, self.ops())
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamshield_proto::v1::op;

    fn put(state: &str, key: &[u8], value: &[u8]) -> pb::Op {
        pb::Op {
            state: state.into(),
            key: key.to_vec(),
            kind: Some(op::Kind::Put(pb::Put {
                value: value.to_vec(),
            })),
        }
    }

    #[test]
    fn encodes_what_the_generated_request_encodes() {
        let ops = Arc::new(vec![
            put("a", b"k1", b"v1"),
            pb::Op {
                state: "b".into(),
                key: b"k2".to_vec(),
                kind: Some(op::Kind::Delete(pb::Delete {})),
            },
            put("a", b"", b""),
            put("c", &[0xff; 300], &[7; 5000]),
        ]);
        for (range, seq_from) in [(0..4, 1), (1..3, u64::MAX - 1), (2..2, 0)] {
            let shared = SharedStageWrites {
                job: "job".into(),
                task: u32::MAX,
                generation: 7,
                epoch: 1 << 40,
                seq_from,
                ops: ops.clone(),
                range: range.clone(),
            };
            let generated = pb::StageWritesRequest {
                shard: 0,
                job: "job".into(),
                task: u32::MAX,
                generation: 7,
                epoch: 1 << 40,
                seq_from,
                ops: ops[range].to_vec(),
            };
            let bytes = shared.encode_to_vec();
            assert_eq!(bytes, generated.encode_to_vec());
            assert_eq!(bytes.len(), shared.encoded_len());
            assert_eq!(
                pb::StageWritesRequest::decode(bytes.as_slice()).unwrap(),
                generated
            );
        }
    }

    #[test]
    fn defaults_are_not_written() {
        let empty = SharedStageWrites::default();
        assert!(empty.encode_to_vec().is_empty());
        assert_eq!(empty.encoded_len(), 0);
    }
}
