//! Conversions between openraft's types and their protobuf form.
//!
//! The protobuf form is both the wire format of the Raft RPCs and the
//! on-disk format of the log and vote, so decoding never trusts its input:
//! a missing field or an impossible membership is an error, not a panic.

use std::collections::{BTreeMap, BTreeSet};

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, StreamAppendError, StreamAppendResult,
    VoteRequest, VoteResponse,
};
use openraft::{EntryPayload, LogId as RaftLogId};
use streamshield_proto::v1 as pb;

use crate::command::SharedCommand;
use crate::types::{
    Entry, LeaderId, LogId, Membership, Node, SnapshotMeta, StoredMembership, TypeConfig, Vote,
};

/// A protobuf message that does not describe a valid openraft value.
#[derive(Debug, thiserror::Error)]
#[error("malformed {what}: {why}")]
pub struct DecodeError {
    pub what: &'static str,
    pub why: String,
}

fn malformed(what: &'static str, why: impl Into<String>) -> DecodeError {
    DecodeError {
        what,
        why: why.into(),
    }
}

/// No honest node reaches a term or log index above this: at one election
/// or one entry per microsecond it takes 8,900 years. Anything above it is
/// forged or corrupt, and refusing it keeps openraft's own `term + 1` and
/// `index + 1` (unchecked: a panic in debug builds, a wrap to 0 in release,
/// after which no election can be won) out of reach of the network.
pub const MAX_TERM: u64 = 1 << 58;
/// See [`MAX_TERM`].
pub const MAX_LOG_INDEX: u64 = 1 << 58;

pub fn leader_id_to_pb(l: &LeaderId) -> pb::LeaderId {
    pb::LeaderId {
        term: l.term,
        node_id: l.node_id,
    }
}

fn leader_id_from_pb(
    l: Option<&pb::LeaderId>,
    what: &'static str,
) -> Result<LeaderId, DecodeError> {
    let l = l.ok_or_else(|| malformed(what, "missing leader_id"))?;
    if l.term > MAX_TERM {
        return Err(malformed(
            what,
            format!("term {} is above the largest possible {MAX_TERM}", l.term),
        ));
    }
    Ok(LeaderId {
        term: l.term,
        node_id: l.node_id,
    })
}

pub fn log_id_to_pb(l: &LogId) -> pb::LogId {
    pb::LogId {
        leader_id: Some(leader_id_to_pb(&l.leader_id)),
        index: l.index,
    }
}

pub fn log_id_from_pb(l: &pb::LogId) -> Result<LogId, DecodeError> {
    if l.index > MAX_LOG_INDEX {
        return Err(malformed(
            "log id",
            format!(
                "index {} is above the largest possible {MAX_LOG_INDEX}",
                l.index
            ),
        ));
    }
    Ok(RaftLogId::new(
        leader_id_from_pb(l.leader_id.as_ref(), "log id")?,
        l.index,
    ))
}

pub fn opt_log_id_to_pb(l: &Option<LogId>) -> Option<pb::LogId> {
    l.as_ref().map(log_id_to_pb)
}

pub fn opt_log_id_from_pb(l: &Option<pb::LogId>) -> Result<Option<LogId>, DecodeError> {
    l.as_ref().map(log_id_from_pb).transpose()
}

pub fn vote_to_pb(v: &Vote) -> pb::Vote {
    pb::Vote {
        leader_id: Some(leader_id_to_pb(&v.leader_id)),
        committed: v.committed,
    }
}

pub fn vote_from_pb(v: Option<&pb::Vote>) -> Result<Vote, DecodeError> {
    let v = v.ok_or_else(|| malformed("vote", "missing"))?;
    let l = leader_id_from_pb(v.leader_id.as_ref(), "vote")?;
    Ok(if v.committed {
        Vote::new_committed(l.term, l.node_id)
    } else {
        Vote::new(l.term, l.node_id)
    })
}

pub fn membership_to_pb(m: &Membership) -> pb::MembershipConfig {
    pb::MembershipConfig {
        configs: m
            .get_joint_config()
            .iter()
            .map(|c| pb::NodeIds {
                ids: c.iter().copied().collect(),
            })
            .collect(),
        nodes: m.nodes().map(|(id, n)| (*id, n.addr.clone())).collect(),
    }
}

pub fn membership_from_pb(m: &pb::MembershipConfig) -> Result<Membership, DecodeError> {
    let configs: Vec<BTreeSet<u64>> = m
        .configs
        .iter()
        .map(|c| c.ids.iter().copied().collect())
        .collect();
    let nodes: BTreeMap<u64, Node> = m
        .nodes
        .iter()
        .map(|(id, addr)| (*id, Node::new(addr)))
        .collect();
    Membership::new(configs, nodes).map_err(|e| malformed("membership", e.to_string()))
}

pub fn stored_membership_to_pb(m: &StoredMembership) -> pb::StoredMembership {
    pb::StoredMembership {
        log_id: opt_log_id_to_pb(m.log_id()),
        membership: Some(membership_to_pb(m.membership())),
    }
}

pub fn stored_membership_from_pb(
    m: &pb::StoredMembership,
) -> Result<StoredMembership, DecodeError> {
    let membership = match &m.membership {
        Some(mc) => membership_from_pb(mc)?,
        None => Membership::default(),
    };
    Ok(StoredMembership::new(
        opt_log_id_from_pb(&m.log_id)?,
        membership,
    ))
}

pub fn entry_to_pb(e: &Entry) -> pb::Entry {
    let payload = match &e.payload {
        EntryPayload::Blank => pb::entry::Payload::Blank(true),
        EntryPayload::Normal(c) => pb::entry::Payload::Normal(c.encoded().clone()),
        EntryPayload::Membership(m) => pb::entry::Payload::Membership(membership_to_pb(m)),
    };
    pb::Entry {
        log_id: Some(log_id_to_pb(&e.log_id)),
        payload: Some(payload),
    }
}

pub fn entry_from_pb(e: pb::Entry) -> Result<Entry, DecodeError> {
    let log_id = log_id_from_pb(
        e.log_id
            .as_ref()
            .ok_or_else(|| malformed("entry", "missing log_id"))?,
    )?;
    let payload = match e.payload {
        Some(pb::entry::Payload::Blank(_)) => EntryPayload::Blank,
        Some(pb::entry::Payload::Normal(raw)) => EntryPayload::Normal(
            SharedCommand::decode(raw).map_err(|e| malformed("entry", format!("command: {e}")))?,
        ),
        Some(pb::entry::Payload::Membership(m)) => {
            EntryPayload::Membership(membership_from_pb(&m)?)
        }
        None => return Err(malformed("entry", "missing payload")),
    };
    Ok(Entry { log_id, payload })
}

pub fn snapshot_meta_to_pb(m: &SnapshotMeta) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        last_log_id: opt_log_id_to_pb(&m.last_log_id),
        last_membership: Some(stored_membership_to_pb(&m.last_membership)),
        snapshot_id: snapshot_id(m),
    }
}

pub fn snapshot_meta_from_pb(m: &pb::SnapshotMeta) -> Result<SnapshotMeta, DecodeError> {
    let last_membership = match &m.last_membership {
        Some(sm) => stored_membership_from_pb(sm)?,
        None => StoredMembership::default(),
    };
    Ok(SnapshotMeta {
        last_log_id: opt_log_id_from_pb(&m.last_log_id)?,
        last_membership,
    })
}

/// A name for a snapshot that is unique per covered log id.
pub fn snapshot_id(m: &SnapshotMeta) -> String {
    match &m.last_log_id {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
        None => "empty".to_string(),
    }
}

pub fn vote_request_to_pb(r: &VoteRequest<TypeConfig>, pre_vote: bool) -> pb::VoteRequest {
    pb::VoteRequest {
        vote: Some(vote_to_pb(&r.vote)),
        last_log_id: opt_log_id_to_pb(&r.last_log_id),
        leadership_transfer: r.leadership_transfer,
        pre_vote,
    }
}

pub fn vote_request_from_pb(r: &pb::VoteRequest) -> Result<VoteRequest<TypeConfig>, DecodeError> {
    let mut req = VoteRequest::new(
        vote_from_pb(r.vote.as_ref())?,
        opt_log_id_from_pb(&r.last_log_id)?,
    );
    req.leadership_transfer = r.leadership_transfer;
    Ok(req)
}

pub fn vote_response_to_pb(r: &VoteResponse<TypeConfig>) -> pb::VoteResponse {
    pb::VoteResponse {
        vote: Some(vote_to_pb(&r.vote)),
        vote_granted: r.vote_granted,
        last_log_id: opt_log_id_to_pb(&r.last_log_id),
    }
}

pub fn vote_response_from_pb(
    r: &pb::VoteResponse,
) -> Result<VoteResponse<TypeConfig>, DecodeError> {
    Ok(VoteResponse::new(
        vote_from_pb(r.vote.as_ref())?,
        opt_log_id_from_pb(&r.last_log_id)?,
        r.vote_granted,
    ))
}

pub fn append_request_to_pb(r: &AppendEntriesRequest<TypeConfig>) -> pb::AppendEntriesRequest {
    pb::AppendEntriesRequest {
        vote: Some(vote_to_pb(&r.vote)),
        prev_log_id: opt_log_id_to_pb(&r.prev_log_id),
        entries: r.entries.iter().map(entry_to_pb).collect(),
        leader_commit: opt_log_id_to_pb(&r.leader_commit),
    }
}

pub fn append_request_from_pb(
    r: pb::AppendEntriesRequest,
) -> Result<AppendEntriesRequest<TypeConfig>, DecodeError> {
    Ok(AppendEntriesRequest {
        vote: vote_from_pb(r.vote.as_ref())?,
        prev_log_id: opt_log_id_from_pb(&r.prev_log_id)?,
        leader_commit: opt_log_id_from_pb(&r.leader_commit)?,
        entries: r
            .entries
            .into_iter()
            .map(entry_from_pb)
            .collect::<Result<_, _>>()?,
    })
}

pub fn append_response_to_pb(r: &AppendEntriesResponse<TypeConfig>) -> pb::AppendEntriesResponse {
    use pb::append_entries_response::Result as R;
    let result = match r {
        AppendEntriesResponse::Success => R::Success(true),
        AppendEntriesResponse::PartialSuccess(m) => R::PartialSuccess(pb::PartialSuccess {
            matching: opt_log_id_to_pb(m),
        }),
        AppendEntriesResponse::Conflict => R::Conflict(true),
        AppendEntriesResponse::HigherVote(v) => R::HigherVote(vote_to_pb(v)),
    };
    pb::AppendEntriesResponse {
        result: Some(result),
    }
}

pub fn append_response_from_pb(
    r: &pb::AppendEntriesResponse,
) -> Result<AppendEntriesResponse<TypeConfig>, DecodeError> {
    use pb::append_entries_response::Result as R;
    Ok(match &r.result {
        Some(R::Success(_)) => AppendEntriesResponse::Success,
        Some(R::PartialSuccess(p)) => {
            AppendEntriesResponse::PartialSuccess(opt_log_id_from_pb(&p.matching)?)
        }
        Some(R::Conflict(_)) => AppendEntriesResponse::Conflict,
        Some(R::HigherVote(v)) => AppendEntriesResponse::HigherVote(vote_from_pb(Some(v))?),
        None => return Err(malformed("append entries response", "missing result")),
    })
}

pub fn stream_reply_to_pb(r: &StreamAppendResult<TypeConfig>) -> pb::AppendStreamReply {
    use pb::append_stream_reply::Result as R;
    let result = match r {
        Ok(matched) => R::Matched(pb::Matched {
            log_id: matched.as_ref().map(log_id_to_pb),
        }),
        Err(StreamAppendError::Conflict(l)) => R::Conflict(log_id_to_pb(l)),
        Err(StreamAppendError::HigherVote(v)) => R::HigherVote(vote_to_pb(v)),
    };
    pb::AppendStreamReply {
        result: Some(result),
    }
}

pub fn stream_reply_from_pb(
    r: &pb::AppendStreamReply,
) -> Result<StreamAppendResult<TypeConfig>, DecodeError> {
    use pb::append_stream_reply::Result as R;
    Ok(match &r.result {
        Some(R::Matched(m)) => Ok(opt_log_id_from_pb(&m.log_id)?),
        Some(R::Conflict(l)) => Err(StreamAppendError::Conflict(log_id_from_pb(l)?)),
        Some(R::HigherVote(v)) => Err(StreamAppendError::HigherVote(vote_from_pb(Some(v))?)),
        None => return Err(malformed("AppendStreamReply", "no result")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamshield_proto::v1::command;

    fn lid(term: u64, node: u64, index: u64) -> LogId {
        RaftLogId::new(
            LeaderId {
                term,
                node_id: node,
            },
            index,
        )
    }

    #[test]
    fn entries_round_trip() {
        let members = Membership::new(
            vec![BTreeSet::from([1, 2, 3])],
            BTreeMap::from([
                (1, Node::new("a:1")),
                (2, Node::new("b:2")),
                (3, Node::new("c:3")),
                (4, Node::new("d:4")),
            ]),
        )
        .unwrap();
        let entries = vec![
            Entry {
                log_id: lid(1, 1, 1),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: lid(2, 3, 7),
                payload: EntryPayload::Membership(members),
            },
            Entry {
                log_id: lid(2, 3, 8),
                payload: EntryPayload::Normal(SharedCommand::fixed(pb::Command {
                    kind: Some(command::Kind::CreateJob(pb::CreateJob {
                        job: "j".into(),
                        key_groups: 16,
                        tables: Vec::new(),
                    })),
                })),
            },
        ];
        for e in entries {
            let back = entry_from_pb(entry_to_pb(&e)).unwrap();
            assert_eq!(back, e);
        }
    }

    #[test]
    fn malformed_entries_are_errors_not_panics() {
        assert!(entry_from_pb(pb::Entry::default()).is_err());
        let no_payload = pb::Entry {
            log_id: Some(log_id_to_pb(&lid(1, 1, 1))),
            payload: None,
        };
        assert!(entry_from_pb(no_payload).is_err());
        let bad_command = pb::Entry {
            log_id: Some(log_id_to_pb(&lid(1, 1, 1))),
            payload: Some(pb::entry::Payload::Normal(vec![0xff, 0xff].into())),
        };
        assert!(entry_from_pb(bad_command).is_err());
        // A learner-only node map with a voter that has no address.
        let bad = pb::MembershipConfig {
            configs: vec![pb::NodeIds { ids: vec![9] }],
            nodes: Default::default(),
        };
        assert!(membership_from_pb(&bad).is_err());
        assert!(vote_from_pb(None).is_err());
    }

    #[test]
    fn terms_and_indexes_no_honest_node_reaches_are_refused() {
        let vote = |term| pb::Vote {
            leader_id: Some(pb::LeaderId { term, node_id: 2 }),
            committed: false,
        };
        assert!(vote_from_pb(Some(&vote(MAX_TERM))).is_ok());
        for term in [MAX_TERM + 1, u64::MAX] {
            let err = vote_from_pb(Some(&vote(term))).unwrap_err();
            assert!(err.to_string().contains("term"), "{err}");
        }
        let log_id = |index| pb::LogId {
            leader_id: Some(pb::LeaderId {
                term: 1,
                node_id: 1,
            }),
            index,
        };
        assert!(log_id_from_pb(&log_id(MAX_LOG_INDEX)).is_ok());
        assert!(log_id_from_pb(&log_id(u64::MAX)).is_err());
    }

    #[test]
    fn stream_replies_round_trip() {
        let cases: Vec<StreamAppendResult<TypeConfig>> = vec![
            Ok(None),
            Ok(Some(lid(2, 1, 7))),
            Err(StreamAppendError::Conflict(lid(1, 3, 4))),
            Err(StreamAppendError::HigherVote(Vote::new(5, 2))),
        ];
        for c in cases {
            let back = stream_reply_from_pb(&stream_reply_to_pb(&c)).unwrap();
            assert_eq!(format!("{back:?}"), format!("{c:?}"));
        }
        assert!(stream_reply_from_pb(&pb::AppendStreamReply { result: None }).is_err());
    }
}
