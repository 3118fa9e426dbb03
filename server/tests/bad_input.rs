//! Bad input gets a precise gRPC status, changes nothing and crashes
//! nothing — from clients and from anything speaking the Raft port.

mod common;

use common::*;
use streamshield_client::{ClientError, Consistency, Missing};
use streamshield_proto::v1::{
    self as pb, admin_client::AdminClient, raft_client::RaftClient, state_client::StateClient,
};
use streamshield_server::keys::MAX_TABLES;
use tonic::Code;

fn put(state: &str, key: &[u8], value: Vec<u8>) -> pb::Op {
    pb::Op {
        state: state.into(),
        key: key.to_vec(),
        kind: Some(pb::op::Kind::Put(pb::Put { value })),
    }
}

fn write(job: &str, ops: Vec<pb::Op>) -> pb::WriteRequest {
    pb::WriteRequest {
        job: job.into(),
        ops,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_bad_input_gets_its_status_and_changes_nothing() {
    let t = TestCluster::start(3, &[]).await;
    let client = t.client();
    client.create_job("good", 16).await.expect("create job");
    client.put("good", "s", "k1", "v1").await.expect("put");
    let leader = t.wait_for_leader(std::time::Duration::from_secs(10)).await;
    let ch = plain_channel(&t.addr(leader)).await;
    let mut state = StateClient::new(ch.clone()).max_encoding_message_size(64 << 20);
    let mut admin = AdminClient::new(ch.clone());
    let mut raft = RaftClient::new(ch.clone());
    let applied_before = t.status(leader).await.unwrap().last_applied;

    // Unknown names: NOT_FOUND with a detail saying what is missing, as a
    // client of any language decodes it from `errors.proto`.
    let job = |job: &str| Missing::Job { job: job.into() };
    expect_missing(
        "put to unknown job",
        state
            .write(write("nope", vec![put("s", b"k", vec![1])]))
            .await,
        job("nope"),
    );
    let get = |job: &str, st: &str, key: &[u8]| pb::GetRequest {
        job: job.into(),
        state: st.into(),
        key: key.to_vec(),
        ..Default::default()
    };
    expect_missing(
        "get unknown job",
        state.get(get("nope", "s", b"k")).await,
        job("nope"),
    );
    expect_missing(
        "get unknown state",
        state.get(get("good", "nope", b"k")).await,
        Missing::State {
            job: "good".into(),
            state: "nope".into(),
        },
    );
    expect_missing(
        "describe unknown job",
        admin
            .describe_job(pb::DescribeJobRequest { job: "nope".into() })
            .await,
        job("nope"),
    );
    let mut other_shard = get("good", "s", b"k1");
    other_shard.shard = 7;
    expect_missing(
        "unknown shard",
        state.get(other_shard).await,
        Missing::Shard { shard: 7 },
    );

    // Empty and malformed names and keys.
    expect_code(
        "empty job",
        state.write(write("", vec![put("s", b"k", vec![])])).await,
        Code::InvalidArgument,
    )
    .await;
    expect_code(
        "empty state",
        state
            .write(write("good", vec![put("", b"k", vec![])]))
            .await,
        Code::InvalidArgument,
    )
    .await;
    expect_code(
        "empty key",
        state
            .write(write("good", vec![put("s", b"", vec![])]))
            .await,
        Code::InvalidArgument,
    )
    .await;
    expect_code(
        "slash in name",
        state
            .write(write("good", vec![put("a/b", b"k", vec![])]))
            .await,
        Code::InvalidArgument,
    )
    .await;
    expect_code(
        "empty job on get",
        state.get(get("", "s", b"k")).await,
        Code::InvalidArgument,
    )
    .await;

    // Limits: key 4 KiB, value 1 MiB, batch 4 MiB.
    expect_code(
        "key over 4 KiB",
        state
            .write(write("good", vec![put("s", &[b'k'; 4097], vec![])]))
            .await,
        Code::InvalidArgument,
    )
    .await;
    expect_code(
        "value over 1 MiB",
        state
            .write(write("good", vec![put("s", b"k", vec![0; (1 << 20) + 1])]))
            .await,
        Code::InvalidArgument,
    )
    .await;
    let big: Vec<pb::Op> = (0..5u8)
        .map(|i| put("s", &[b'b', i], vec![0; 1 << 20]))
        .collect();
    expect_code(
        "batch over 4 MiB",
        state.write(write("good", big)).await,
        Code::InvalidArgument,
    )
    .await;
    expect_code(
        "key over 4 KiB on get",
        state.get(get("good", "s", &[b'k'; 4097])).await,
        Code::InvalidArgument,
    )
    .await;

    // Malformed requests.
    expect_code(
        "no ops",
        state.write(write("good", vec![])).await,
        Code::InvalidArgument,
    )
    .await;
    let no_kind = pb::Op {
        state: "s".into(),
        key: b"k".to_vec(),
        kind: None,
    };
    expect_code(
        "op without kind",
        state.write(write("good", vec![no_kind])).await,
        Code::InvalidArgument,
    )
    .await;
    let mut no_test = write("good", vec![put("s", b"k", vec![])]);
    no_test.conditions.push(pb::Condition {
        state: "s".into(),
        key: b"k".to_vec(),
        test: None,
    });
    expect_code(
        "condition without test",
        state.write(no_test).await,
        Code::InvalidArgument,
    )
    .await;
    let mut bad_mode = write("good", vec![put("s", b"k", vec![])]);
    bad_mode.mode = 42;
    expect_code(
        "unknown write mode",
        state.write(bad_mode).await,
        Code::InvalidArgument,
    )
    .await;
    let mut bad_consistency = get("good", "s", b"k1");
    bad_consistency.consistency = 9;
    expect_code(
        "unknown consistency",
        state.get(bad_consistency).await,
        Code::InvalidArgument,
    )
    .await;
    let mut bad_seq = write("good", vec![put("s", b"k", vec![])]);
    bad_seq.seq = 5;
    expect_code(
        "seq without client id",
        state.write(bad_seq).await,
        Code::InvalidArgument,
    )
    .await;

    // Jobs.
    expect_code(
        "duplicate job",
        admin
            .create_job(pb::CreateJobRequest {
                job: "good".into(),
                key_groups: 16,
                ..Default::default()
            })
            .await,
        Code::AlreadyExists,
    )
    .await;
    expect_code(
        "too many key groups",
        admin
            .create_job(pb::CreateJobRequest {
                job: "huge".into(),
                key_groups: 40_000,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    )
    .await;
    // Table modes: a mode no version knows, a table without a name, a job
    // that does not exist; none of them makes a job or a table.
    let table = |state: &str, mode: i32| pb::TableMode {
        state: state.into(),
        mode,
        placement: None,
    };
    for (what, tables) in [
        ("a table mode out of range", vec![table("t", 7)]),
        ("a table without a name", vec![table("", 0)]),
        (
            "a key placement out of range",
            vec![pb::TableMode {
                placement: Some(i32::MIN),
                ..table("t", 0)
            }],
        ),
        ("a negative table mode", vec![table("t", i32::MIN)]),
        ("a table declared twice", vec![table("t", 0), table("t", 1)]),
        (
            "more tables than a job may have",
            (0..=MAX_TABLES)
                .map(|i| table(&format!("t{i}"), 0))
                .collect(),
        ),
    ] {
        expect_code(
            what,
            admin
                .create_job(pb::CreateJobRequest {
                    job: "moded".into(),
                    key_groups: 4,
                    tables,
                })
                .await,
            Code::InvalidArgument,
        )
        .await;
    }
    expect_code(
        "describe the job no bad create made",
        admin
            .describe_job(pb::DescribeJobRequest {
                job: "moded".into(),
            })
            .await,
        Code::NotFound,
    )
    .await;
    expect_code(
        "a table mode out of range",
        admin
            .set_table_mode(pb::SetTableModeRequest {
                job: "good".into(),
                state: "t".into(),
                mode: 2,
                placement: None,
            })
            .await,
        Code::InvalidArgument,
    )
    .await;
    expect_code(
        "a key placement out of range",
        admin
            .set_table_mode(pb::SetTableModeRequest {
                job: "good".into(),
                state: "t".into(),
                mode: 1,
                placement: Some(2),
            })
            .await,
        Code::InvalidArgument,
    )
    .await;
    expect_code(
        "a table mode of a job that does not exist",
        admin
            .set_table_mode(pb::SetTableModeRequest {
                job: "nope".into(),
                state: "t".into(),
                mode: 1,
                placement: None,
            })
            .await,
        Code::NotFound,
    )
    .await;
    let good = admin
        .describe_job(pb::DescribeJobRequest { job: "good".into() })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert!(
        good.states.iter().all(|s| s.name != "t"),
        "a refused mode made no table: {good:?}"
    );
    expect_code(
        "no voters",
        admin
            .change_membership(pb::ChangeMembershipRequest {
                voters: vec![],
                retain: false,
            })
            .await,
        Code::InvalidArgument,
    )
    .await;
    expect_code(
        "learner id 0",
        admin
            .add_learner(pb::AddLearnerRequest {
                id: 0,
                addr: "127.0.0.1:1".into(),
                blocking: false,
            })
            .await,
        Code::InvalidArgument,
    )
    .await;

    // The Raft port: garbage entries, snapshot streams that try to escape.
    let garbage = pb::AppendEntriesRequest {
        vote: None,
        prev_log_id: None,
        entries: vec![pb::Entry::default()],
        leader_commit: None,
    };
    expect_code(
        "append without vote",
        raft.append_entries(garbage).await,
        Code::InvalidArgument,
    )
    .await;
    expect_code(
        "vote without vote",
        raft.vote(pb::VoteRequest::default()).await,
        Code::InvalidArgument,
    )
    .await;
    let status = t.status(leader).await.unwrap();
    let header = pb::SnapshotChunk {
        header: Some(pb::SnapshotHeader {
            vote: Some(pb::Vote {
                leader_id: Some(pb::LeaderId {
                    term: 0,
                    // Another member: one claiming to be the receiver
                    // itself is refused before its chunks are read.
                    node_id: if leader == 1 { 2 } else { 1 },
                }),
                committed: false,
            }),
            meta: Some(pb::SnapshotMeta::default()),
        }),
        ..Default::default()
    };
    let escape = pb::SnapshotChunk {
        file: "../../escape".into(),
        data: b"x".to_vec(),
        ..Default::default()
    };
    let stream = tokio_stream::iter(vec![header.clone(), escape]);
    expect_code(
        "snapshot path traversal",
        raft.install_snapshot(stream).await,
        Code::InvalidArgument,
    )
    .await;
    let stream = tokio_stream::iter(vec![header]);
    expect_code(
        "truncated snapshot stream",
        raft.install_snapshot(stream).await,
        Code::Aborted,
    )
    .await;
    assert!(!t.dir.path().join("escape").exists());

    // Nothing changed, and every node is still up.
    // Unknown jobs (of a write and of a table mode) and duplicate names are
    // decided by the state machine (the only place that knows for sure),
    // so those three requests took a log entry each; every other one was
    // refused before reaching the log.
    let after = t.status(leader).await.unwrap();
    assert_eq!(after.last_applied, applied_before + 3, "entries applied");
    assert_eq!(after.term, status.term);
    for missing in ["nope", "huge"] {
        let r = client.describe_job(missing).await;
        assert!(
            matches!(&r, Err(ClientError::NotFound(Missing::Job { job })) if job == missing),
            "{missing}: {r:?}"
        );
    }
    let job = client.describe_job("good").await.expect("job");
    let states: Vec<&str> = job.states.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(states, vec!["s"]);
    assert_eq!(job.key_groups, 16);
    let all = client
        .scan_all("good", "s", b"", Consistency::Linearizable)
        .await
        .expect("scan");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].value, b"v1");
    for id in [1, 2, 3] {
        assert!(t.status(id).await.is_some(), "node {id} still serves");
    }
}

/// A job's state tables are looked up per write in its record, so their
/// number is bounded in the apply path (`keys::MAX_TABLES`): a client
/// generated from `proto/` (`interop/`) once sent one write of 10,000 new
/// tables, and the replicas' apply held the leader long enough to lose its
/// term. Past the bound a write is refused whole, on every replica alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_stops_at_its_table_limit_and_a_write_past_it_changes_nothing() {
    let t = TestCluster::start(3, &[]).await;
    let client = t.client();
    client.create_job("wide", 16).await.expect("create job");
    let leader = t.wait_for_leader(std::time::Duration::from_secs(10)).await;
    let ch = plain_channel(&t.addr(leader)).await;
    let mut state = StateClient::new(ch.clone()).max_encoding_message_size(64 << 20);
    let fill: Vec<pb::Op> = (0..MAX_TABLES)
        .map(|i| put(&format!("t{i}"), b"k", b"v".to_vec()))
        .collect();
    state
        .write(write("wide", fill))
        .await
        .expect("fill the job's tables");
    let before = client.describe_job("wide").await.expect("job").states.len();
    assert_eq!(before, MAX_TABLES);

    // One op on a table that exists and one on a new table: neither applies.
    let past = vec![
        put("t0", b"k", b"changed".to_vec()),
        put("one-more", b"k", b"v".to_vec()),
    ];
    expect_code(
        "a write past the table limit",
        state.write(write("wide", past)).await,
        Code::ResourceExhausted,
    )
    .await;
    let many: Vec<pb::Op> = (0..10_000)
        .map(|i| put(&format!("new{i}"), b"k", b"v".to_vec()))
        .collect();
    expect_code(
        "one write of 10,000 new tables",
        state.write(write("wide", many)).await,
        Code::ResourceExhausted,
    )
    .await;
    let kv = client
        .get("wide", "t0", "k", Consistency::Linearizable)
        .await
        .expect("get")
        .expect("t0/k");
    assert_eq!(kv.value, b"v");
    let after = client.describe_job("wide").await.expect("job").states;
    assert_eq!(after.len(), MAX_TABLES);
    assert!(after
        .iter()
        .all(|s| !s.name.starts_with("new") && s.name != "one-more"));
    for id in [1, 2, 3] {
        assert!(t.status(id).await.is_some(), "node {id} still serves");
    }
}

/// A client owns its sequence numbers, so they may sit at the top of the
/// range. Before the apply path computed its dedupe mark as a difference,
/// these two writes panicked every replica on the same entry (and again on
/// each replay) in a debug build, and moved the mark backwards in a
/// release build.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seqs_at_the_top_of_the_range_apply_and_the_cluster_lives() {
    let t = TestCluster::start(3, &[]).await;
    let client = t.client();
    client.create_job("good", 4).await.expect("create job");
    let leader = t.wait_for_leader(std::time::Duration::from_secs(10)).await;
    let ch = plain_channel(&t.addr(leader)).await;
    let mut state = StateClient::new(ch);
    let id = register_client(&t.addr(leader)).await;
    let extreme = |seq: u64, value: &[u8]| {
        let mut w = write("good", vec![put("s", b"k", value.to_vec())]);
        w.client_id = id;
        w.seq = seq;
        w.acked_below = seq;
        w
    };
    let first = state
        .write(extreme(u64::MAX - 1, b"a"))
        .await
        .expect("seq MAX-1");
    let second = state.write(extreme(u64::MAX, b"b")).await.expect("seq MAX");
    assert!(first.get_ref().succeeded && second.get_ref().succeeded);
    let retried = state.write(extreme(u64::MAX, b"b")).await.expect("retry");
    assert_eq!(
        retried.get_ref(),
        second.get_ref(),
        "answered from its record"
    );
    let below = state.write(extreme(u64::MAX - 2, b"c")).await;
    assert_eq!(
        below.map(|_| ()).unwrap_err().code(),
        Code::FailedPrecondition,
        "a seq below the mark is refused"
    );

    // Every replica applied them and goes on.
    client
        .put("good", "s", "after", "1")
        .await
        .expect("put after");
    let index = t.status(leader).await.unwrap().last_applied;
    for id in [1, 2, 3] {
        t.wait_applied(id, index, std::time::Duration::from_secs(10))
            .await;
    }
    let kv = client
        .get("good", "s", "k", Consistency::Linearizable)
        .await
        .expect("get")
        .expect("k");
    assert_eq!((kv.value.as_slice(), kv.version), (&b"b"[..], 2));
}

/// A NOT_FOUND whose detail names exactly `want`.
fn expect_missing<T: std::fmt::Debug>(
    what: &str,
    r: Result<tonic::Response<T>, tonic::Status>,
    want: Missing,
) {
    match r {
        Ok(v) => panic!("{what}: expected NOT_FOUND, got OK {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), Code::NotFound, "{what}: {}", s.message());
            match ClientError::from_status(&s) {
                ClientError::NotFound(m) => assert_eq!(m, want, "{what}"),
                e => panic!("{what}: {e:?}"),
            }
        }
    }
}
