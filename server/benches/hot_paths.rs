//! Micro-benchmarks of the pure hot paths of a write: key encoding, log
//! entry encode/decode, and the state machine applying 1,000 ops.
//! `cargo bench -p streamshield-server --bench hot_paths`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use openraft::EntryPayload;
use prost::Message;
use streamshield_proto::v1::{self as pb, command, op};
use streamshield_server::codec;
use streamshield_server::command::SharedCommand;
use streamshield_server::keys;
use streamshield_server::state_machine::{apply_chunk, StateMachineStore};
use streamshield_server::types::{Entry, LeaderId};

fn put(i: u64, value: &[u8]) -> pb::Op {
    pb::Op {
        state: "counts".into(),
        key: format!("user-{i:08}").into_bytes(),
        kind: Some(op::Kind::Put(pb::Put {
            value: value.to_vec(),
        })),
    }
}

fn write(ops: Vec<pb::Op>, client_id: u64, seq: u64) -> pb::Command {
    pb::Command {
        kind: Some(command::Kind::Write(pb::WriteRequest {
            job: "bench".into(),
            ops,
            client_id,
            seq,
            acked_below: seq,
            ..Default::default()
        })),
    }
}

fn key_encoding(c: &mut Criterion) {
    let keys: Vec<Vec<u8>> = (0..1000u64)
        .map(|i| format!("user-{i:08}").into_bytes())
        .collect();
    let mut g = c.benchmark_group("keys");
    g.throughput(Throughput::Elements(keys.len() as u64));
    g.bench_function("key_group+data_key x1000", |b| {
        b.iter(|| {
            for k in &keys {
                let group = keys::key_group(k, 128);
                black_box(keys::data_key(0, 7, group, 3, k));
            }
        })
    });
    g.finish();
}

fn entry_codec(c: &mut Criterion) {
    let value = vec![0xabu8; 256];
    let entry: Entry = Entry {
        log_id: openraft::LogId::new(
            LeaderId {
                term: 3,
                node_id: 1,
            },
            42,
        ),
        payload: EntryPayload::Normal(SharedCommand::fixed(write(
            (0..1000).map(|i| put(i, &value)).collect(),
            9,
            1,
        ))),
    };
    let raw = codec::entry_to_pb(&entry).encode_to_vec();
    let mut g = c.benchmark_group("log entry, 1,000 puts of 256 B");
    g.throughput(Throughput::Bytes(raw.len() as u64));
    g.bench_function("encode", |b| {
        b.iter(|| black_box(codec::entry_to_pb(black_box(&entry)).encode_to_vec()))
    });
    g.bench_function("decode", |b| {
        b.iter(|| {
            let e = pb::Entry::decode(black_box(raw.as_slice())).unwrap();
            black_box(codec::entry_from_pb(e).unwrap())
        })
    });
    g.finish();
}

fn state_machine_apply(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let sm = StateMachineStore::open(dir.path()).unwrap();
    let shared = sm.shared();
    let create = pb::Command {
        kind: Some(command::Kind::CreateJob(pb::CreateJob {
            job: "bench".into(),
            key_groups: 128,
        })),
    };
    apply_chunk(&shared, 1, &[create]).unwrap();
    let value = vec![0x5au8; 256];
    let mut index = 2;
    let mut seq = 1;
    let mut g = c.benchmark_group("state machine apply, 1,000 puts of 256 B");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("one write of 1,000 ops", |b| {
        b.iter_batched(
            || {
                seq += 1;
                write((0..1000).map(|i| put(i, &value)).collect(), 9, seq)
            },
            |cmd| {
                index += 1;
                black_box(apply_chunk(&shared, index, &[cmd]).unwrap())
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("1,000 one-op writes in one chunk", |b| {
        b.iter_batched(
            || {
                (0..1000u64)
                    .map(|i| {
                        seq += 1;
                        write(vec![put(i, &value)], 11, seq)
                    })
                    .collect::<Vec<_>>()
            },
            |cmds| {
                let first = index + 1;
                index += cmds.len() as u64;
                black_box(apply_chunk(&shared, first, &cmds).unwrap())
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, key_encoding, entry_codec, state_machine_apply);
criterion_main!(benches);
