//! A staged run (`pb::StagedRun`) encoded as its entries come, straight
//! from the batch's ops.
//!
//! A `pb::StagedEntry` per op (its value copied into a buffer of its
//! own) encoded afterwards as a run cost an allocation, a copy and a
//! second pass over every staged byte on every replica: 8 % more CPU per
//! committed update in a saturated task-session run (PERFORMANCE.md,
//! "Staged runs encoded as they are staged"). The bytes are the same as
//! prost's (a test compares them), so what reads runs back decodes them
//! with the generated type.

use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use streamshield_proto::v1 as pb;

/// `StagedRun.entries`, `StagedEntry.data_key`, `StagedEntry.value`.
const ENTRIES: u32 = 1;
const DATA_KEY: u32 = 1;
const VALUE: u32 = 2;

/// Consecutive seqs from `first`, encoded.
pub struct RunEncoder {
    pub first: u64,
    pub len: u64,
    buf: Vec<u8>,
}

fn bytes_field_len(tag: u32, b: &[u8]) -> usize {
    key_len(tag) + encoded_len_varint(b.len() as u64) + b.len()
}

fn put_bytes_field(buf: &mut Vec<u8>, tag: u32, b: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(b.len() as u64, buf);
    buf.extend_from_slice(b);
}

impl RunEncoder {
    pub fn new(first: u64) -> Self {
        Self {
            first,
            len: 0,
            buf: Vec::new(),
        }
    }

    /// The seq the next entry must have to join this run.
    pub fn next_seq(&self) -> u64 {
        self.first + self.len
    }

    /// A write of `data_key` (empty: a delete in a table that never
    /// existed), with `value` or, for a delete, none.
    pub fn push_write(&mut self, data_key: &[u8], value: Option<&[u8]>) {
        // proto3 leaves an empty `bytes` out; an `optional` one is written
        // whenever it is set.
        let inner = if data_key.is_empty() {
            0
        } else {
            bytes_field_len(DATA_KEY, data_key)
        } + value.map_or(0, |v| bytes_field_len(VALUE, v));
        self.buf
            .reserve(key_len(ENTRIES) + encoded_len_varint(inner as u64) + inner);
        encode_key(ENTRIES, WireType::LengthDelimited, &mut self.buf);
        encode_varint(inner as u64, &mut self.buf);
        if !data_key.is_empty() {
            put_bytes_field(&mut self.buf, DATA_KEY, data_key);
        }
        if let Some(v) = value {
            put_bytes_field(&mut self.buf, VALUE, v);
        }
        self.len += 1;
    }

    /// Any entry (an output record), through prost.
    pub fn push_entry(&mut self, entry: &pb::StagedEntry) {
        prost::encoding::message::encode(ENTRIES, entry, &mut self.buf);
        self.len += 1;
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use prost::Message;

    use super::*;

    #[test]
    fn encodes_exactly_as_prost_does() {
        let long = vec![7u8; 300];
        let writes: Vec<(&[u8], Option<&[u8]>)> = vec![
            (b"dk", Some(b"v")),
            (b"dk2", None),
            (b"", None),
            (b"dk3", Some(b"")),
            (&long, Some(&long)),
        ];
        let output = pb::StagedEntry {
            data_key: Bytes::new(),
            value: None,
            output: Some(pb::StagedOutput {
                stream_id: 3,
                partition: 1,
                key: Bytes::from_static(b"rk"),
                value: Bytes::from_static(b"record"),
            }),
        };
        let mut run = RunEncoder::new(5);
        let mut want = Vec::new();
        for (dk, v) in &writes {
            run.push_write(dk, *v);
            want.push(pb::StagedEntry {
                data_key: Bytes::copy_from_slice(dk),
                value: v.map(Bytes::copy_from_slice),
                output: None,
            });
        }
        run.push_entry(&output);
        want.push(output);
        assert_eq!(run.next_seq(), 5 + want.len() as u64);
        let got = run.into_bytes();
        let reference = pb::StagedRun {
            entries: want.clone(),
        }
        .encode_to_vec();
        assert_eq!(got, reference);
        assert_eq!(pb::StagedRun::decode(got.as_slice()).unwrap().entries, want);
    }
}
