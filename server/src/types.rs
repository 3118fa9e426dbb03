//! The openraft type configuration and short names for its types.

use streamshield_proto::v1 as pb;

openraft::declare_raft_types!(
    /// StreamShield's Raft: protobuf commands in (shared, encoded once),
    /// protobuf responses out, nodes addressed by `host:port`.
    pub TypeConfig:
        D = crate::command::SharedCommand,
        R = pb::CommandResponse,
        Node = openraft::BasicNode,
);

pub type NodeId = u64;
pub type Node = openraft::BasicNode;
pub type LeaderId = openraft::impls::leader_id_adv::LeaderId<u64, u64>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, Node>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Raft = openraft::Raft<TypeConfig, crate::state_machine::StateMachineStore>;
