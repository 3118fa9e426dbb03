//! A replica that meets an entry in a newer state-machine format, or with
//! a command it does not know, stops with a clear error instead of
//! applying around it (which would make it diverge from the replicas that
//! know it); the others serve on.
//!
//! The entry comes as a newer leader would send it: an AppendEntries of the
//! current leader's term that extends the follower's log and commits it.
//! A store holding entries of a newer format (a downgraded binary, or a
//! snapshot from a newer node) is refused the same way.

mod common;

use std::time::{Duration, Instant};

use common::*;
use streamshield_proto::v1::{self as pb, raft_client::RaftClient};
use streamshield_server::command::{SharedCommand, FORMAT};

fn newer_format_entry() -> bytes::Bytes {
    let cmd = pb::Command {
        kind: Some(pb::command::Kind::CreateJob(pb::CreateJob {
            job: "from-the-future".into(),
            key_groups: 4,
            tables: Vec::new(),
        })),
    };
    SharedCommand::with_header(
        cmd,
        pb::LogHeader {
            format: FORMAT + 1,
            leader_time_ms: 1,
        },
    )
    .encoded()
    .clone()
}

fn unknown_command_entry() -> bytes::Bytes {
    // Field 99 of `Command`: a variant a newer version could add.
    let mut command = Vec::new();
    prost::encoding::bytes::encode(99, &vec![1u8, 2, 3], &mut command);
    let mut envelope = Vec::new();
    let header = pb::LogHeader {
        format: FORMAT,
        leader_time_ms: 1,
    };
    prost::encoding::message::encode(15, &header, &mut envelope);
    prost::encoding::bytes::encode(16, &command, &mut envelope);
    envelope.into()
}

/// Waits up to 30 s for node `victim` to exit after `after`: it must exit
/// with an error, and its log must say every one of `why`.
async fn stops_saying(t: &mut TestCluster, victim: u64, after: &str, why: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = t.cluster.exit_status(victim).expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "node {victim} still runs 30 s after {after}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(!status.success(), "node {victim} exited with {status}");
    let log = std::fs::read_to_string(t.cluster.log_path(victim)).unwrap();
    assert!(
        why.iter().all(|w| log.contains(w)),
        "node {victim}'s log does not say why:\n{}",
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
}

async fn a_follower_stops_at(payload: bytes::Bytes, expect_in_log: &str) {
    let (mut t, _) = TestCluster::with_keys(3, "j", 4, 0..20, 2).await;
    let (victim, rest) = t.pick_follower().await;
    let leader = t.wait_for_leader(Duration::from_secs(10)).await;
    let s = t
        .wait_status(victim, Duration::from_secs(10), "catch up", |s| {
            s.last_applied == s.last_log_index && s.leader_id == leader
        })
        .await;
    let lid = |index| pb::LogId {
        leader_id: Some(pb::LeaderId {
            term: s.term,
            node_id: leader,
        }),
        index,
    };
    let next = s.last_log_index + 1;
    let append = pb::AppendEntriesRequest {
        vote: Some(pb::Vote {
            leader_id: Some(pb::LeaderId {
                term: s.term,
                node_id: leader,
            }),
            committed: true,
        }),
        prev_log_id: Some(lid(s.last_log_index)),
        entries: vec![pb::Entry {
            log_id: Some(lid(next)),
            payload: Some(pb::entry::Payload::Normal(payload)),
        }],
        leader_commit: Some(lid(next)),
    };
    let _ = RaftClient::new(plain_channel(&t.addr(victim)).await)
        .append_entries(append)
        .await;

    stops_saying(
        &mut t,
        victim,
        "an entry it cannot apply",
        &[&format!("entry {next}"), expect_in_log],
    )
    .await;
    // The others serve on, and never saw the entry.
    let survivors = t.client_of(&rest);
    survivors.put("j", "s", "after", "1").await.expect("put");
    assert!(survivors.describe_job("from-the-future").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_newer_format_stops_the_replica() {
    a_follower_stops_at(newer_format_entry(), "newer than this node's").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_command_stops_the_replica() {
    a_follower_stops_at(unknown_command_entry(), "does not know").await;
}

/// The format record of the store a stopped node left in `data`.
fn store_format(data: &std::path::Path, set: Option<u32>) -> u32 {
    let sm = data.join("sm");
    let gen = std::fs::read_to_string(sm.join("CURRENT")).unwrap_or_else(|_| "0".into());
    let dir = sm.join(format!("gen-{}", gen.trim()));
    let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), &dir).expect("list cfs");
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &dir, &cfs).expect("open store");
    let meta = db.cf_handle("meta").expect("meta cf");
    if let Some(f) = set {
        db.put_cf(meta, b"m/format", f.to_be_bytes())
            .expect("stamp");
        db.flush_cf(meta).expect("flush");
    }
    let raw = db
        .get_cf(meta, b"m/format")
        .expect("read")
        .expect("a format record");
    u32::from_be_bytes(raw.try_into().expect("4 bytes"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_of_a_newer_format_is_refused_at_start() {
    let (mut t, _) = TestCluster::with_keys(3, "j", 4, 0..20, 2).await;
    let (victim, rest) = t.pick_follower().await;
    let leader = t.wait_for_leader(Duration::from_secs(10)).await;
    // The leader's log, not the follower's own: a follower that has not
    // yet heard of the writes has applied all of its own log too, and its
    // store would hold no entry's format.
    let written = t
        .status(leader)
        .await
        .expect("leader status")
        .last_log_index;
    t.wait_applied(victim, written, Duration::from_secs(10))
        .await;
    t.cluster
        .terminate(victim, Duration::from_secs(30))
        .expect("stop");
    let data = t.cluster.data_dir(victim);
    assert_eq!(
        store_format(&data, None),
        FORMAT,
        "the store records the format of the entries it applied"
    );

    // As if a newer binary had run on it before this one.
    store_format(&data, Some(FORMAT + 1));
    t.cluster.start_node(victim).expect("start");
    stops_saying(
        &mut t,
        victim,
        "start on a newer store",
        &[
            &format!("state-machine format {}", FORMAT + 1),
            "upgrade this node",
        ],
    )
    .await;
    let survivors = t.client_of(&rest);
    survivors.put("j", "s", "after", "1").await.expect("put");
}
