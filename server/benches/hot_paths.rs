//! Micro-benchmarks of the pure hot paths of a write: key encoding, log
//! entry encode/decode, the state machine applying 1,000 ops, and one
//! task's epoch (staged batches, then the commit) as every replica applies
//! it.
//! `cargo bench -p streamshield-server --bench hot_paths`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use openraft::EntryPayload;
use prost::Message;
use streamshield_proto::v1::{self as pb, command, sync_op};
use streamshield_server::codec;
use streamshield_server::command::SharedCommand;
use streamshield_server::keys;
use streamshield_server::state_machine::{apply_chunk, StateMachineStore};
use streamshield_server::types::{Entry, LeaderId};

fn put(i: u64, value: &[u8]) -> pb::SyncOp {
    pb::SyncOp {
        state: "counts".into(),
        key: format!("user-{i:08}").into_bytes(),
        kind: Some(sync_op::Kind::Put(pb::SyncPut {
            value: value.to_vec(),
        })),
    }
}

fn write(ops: Vec<pb::SyncOp>, client_id: u64, seq: u64) -> pb::Command {
    pb::Command {
        kind: Some(command::Kind::Write(pb::SyncWrite {
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
            tables: Vec::new(),
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

/// One task's epoch as every replica applies it: 10,000 puts of 64 B to
/// 8,000 distinct keys, staged in batches of 100 (what a session's 2 ms
/// linger sends at ~50,000 puts/s), then the commit that promotes them.
fn epoch_apply(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let sm = StateMachineStore::open(dir.path()).unwrap();
    let shared = sm.shared();
    let setup = [
        pb::Command {
            kind: Some(command::Kind::CreateJob(pb::CreateJob {
                job: "bench".into(),
                key_groups: 128,
                tables: Vec::new(),
            })),
        },
        pb::Command {
            kind: Some(command::Kind::AcquireLease(pb::LeaseAcquire {
                principal: String::new(),
                job: "bench".into(),
                task: 0,
                key_group_start: 0,
                key_group_end: 128,
                input_partitions: Vec::new(),
            })),
        },
    ];
    apply_chunk(&shared, 1, &setup).unwrap();
    let lease = pb::LeaseRef {
        principal: String::new(),
        job: "bench".into(),
        task: 0,
        generation: 1,
    };
    let value = vec![0x5au8; 64];
    let (mut index, mut epoch) = (2u64, 0u64);
    let mut g = c.benchmark_group("epoch apply, 10,000 puts of 64 B");
    g.throughput(Throughput::Elements(10_000));
    g.sample_size(20);
    g.bench_function("staged in 100 batches, then committed", |b| {
        b.iter_batched(
            || {
                epoch += 1;
                let mut cmds: Vec<pb::Command> = (0..100u64)
                    .map(|batch| pb::Command {
                        kind: Some(command::Kind::StageWrites(pb::StageOps {
                            lease: Some(lease.clone()),
                            epoch,
                            seq_from: batch * 100 + 1,
                            ops: (0..100u64)
                                .map(|i| pb::StagedOp {
                                    state: "counts".into(),
                                    key: format!("user-{:08}", (batch * 100 + i) * 7919 % 8_000)
                                        .into_bytes(),
                                    kind: Some(pb::staged_op::Kind::Put(value.clone())),
                                })
                                .collect(),
                        })),
                    })
                    .collect();
                cmds.push(pb::Command {
                    kind: Some(command::Kind::CommitEpoch(pb::EpochCommit {
                        lease: Some(lease.clone()),
                        epoch,
                        last_seq: 10_000,
                        ..Default::default()
                    })),
                });
                cmds
            },
            |cmds| {
                let first = index + 1;
                index += cmds.len() as u64;
                let out = apply_chunk(&shared, first, &cmds).unwrap();
                assert!(
                    matches!(
                        out.last().and_then(|r| r.kind.as_ref()),
                        Some(pb::command_response::Kind::EpochCommitted(_))
                    ),
                    "{:?}",
                    out.last()
                );
                black_box(out)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(
    benches,
    key_encoding,
    entry_codec,
    state_machine_apply,
    epoch_apply
);
criterion_main!(benches);
