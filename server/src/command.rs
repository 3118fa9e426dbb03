//! The payload of a normal Raft entry: a [`pb::Command`] in its versioned
//! envelope ([`pb::LogEnvelope`]), decoded once and encoded once, shared by
//! everything that holds the entry.
//!
//! openraft clones an entry for each reader (the replication stream of
//! every follower, the apply), and the log store and each AppendEntries
//! need its encoding. With the command behind an `Arc` and its bytes
//! (`bytes::Bytes`) kept beside it, a clone is a reference count, and the
//! leader's log and both followers' messages carry the bytes encoded at
//! proposal time; a follower keeps the bytes it received for its own log.
//!
//! The envelope's header says which state-machine format the entry is in
//! and when its leader proposed it; [`SharedCommand::check_known`] is what
//! makes a replica stop at an entry it cannot apply as the others do.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message;
use streamshield_proto::v1 as pb;

/// The state-machine format this version writes and the newest it applies.
/// Raise it with any change to what a command means; a replica of an older
/// version then stops at the first such entry instead of applying it
/// differently (upgrade followers first, the leader last).
///
/// 1: the envelope; 2: writes carry their principal (`OwnedWrites`);
/// 3: task leases, staged writes and epoch commits, sync writes fenced by
/// a lease (`SyncWrite.lease`), streams, and command lists (the write
/// batcher's proposals of several kinds of command); 4: epochs of more
/// than 2 MiB or 16,384 writes promoted in steps after their commit
/// (`EpochPromote`, `state_machine/apply/promotion.rs`), tables declared
/// with a default write mode (`TableModeSet`, `CreateJob.tables`), leased
/// sync writes deduplicated under the lease (`apply/leased_writes.rs`);
/// 5: output records staged with an epoch's writes (`StagedOp.emit`),
/// appended to their partitions by its promotion; 6: records a promotion
/// in steps appends are held back from readers until its last step
/// (`PromotingTask.held`, `apply/promotion.rs`); 7: deduplication
/// sessions handed out by the cluster (`ClientRegister`), and a write under
/// a client id it did not hand out, or whose session expired, refused
/// (`state_machine/sessions.rs`); 8: a command that would give a job more
/// than 1,024 state tables or 1,024 streams refused (`keys::MAX_TABLES`,
/// `keys::MAX_STREAMS`), and a lease of a task whose index is not below the
/// job's key-group count (`apply/leases.rs`); 9: a job deleted with all it
/// holds (`JobDelete`, `apply/job_removal.rs`), and the first lease of a task
/// in a job whose name a deleted job had starts above that job's
/// generations; a stream deleted with its records (`StreamDelete`,
/// `apply/streams.rs`), its id never used again and outputs staged for it
/// dropped at their promotion; streams that drop records older than their
/// `retention_ms` by the entries' leader time; 10: tables that place keys
/// by a length-prefixed placement key (`TableModeSet.placement`,
/// `KeyPlacement::Prefix`), whose keys are placed, staged and refused by it.
pub const FORMAT: u32 = 10;

#[derive(Clone)]
pub struct SharedCommand(Arc<Inner>);

struct Inner {
    command: pb::Command,
    header: pb::LogHeader,
    encoded: Bytes,
}

/// An entry this replica must not apply: applying around it would diverge
/// from the replicas that understand it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnknownEntry {
    #[error("the entry is in state-machine format {found}, newer than this node's {FORMAT}: upgrade this node")]
    NewerFormat { found: u32 },
    #[error("the entry carries a command this version does not know (format {format}): upgrade this node")]
    UnknownCommand { format: u32 },
}

impl SharedCommand {
    /// A command to propose, stamped with this node's format and clock:
    /// encoded here, once.
    pub fn new(command: pb::Command) -> Self {
        let leader_time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Self::with_header(
            command,
            pb::LogHeader {
                format: FORMAT,
                leader_time_ms,
            },
        )
    }

    /// A command stamped at time 0, so that the same command always
    /// encodes to the same bytes (tests and benchmarks compare them).
    pub fn fixed(command: pb::Command) -> Self {
        Self::with_header(
            command,
            pb::LogHeader {
                format: FORMAT,
                leader_time_ms: 0,
            },
        )
    }

    /// A command with the header given (tests of other formats).
    pub fn with_header(command: pb::Command, header: pb::LogHeader) -> Self {
        let envelope = pb::LogEnvelope {
            header: Some(header),
            command: Some(command),
        };
        let encoded = Bytes::from(envelope.encode_to_vec());
        let pb::LogEnvelope { header, command } = envelope;
        Self(Arc::new(Inner {
            command: command.unwrap_or_default(),
            header: header.unwrap_or_default(),
            encoded,
        }))
    }

    /// A command received or read back in its encoded form. An entry with
    /// no header predates the envelope: a bare command, format 0.
    pub fn decode(encoded: Bytes) -> Result<Self, prost::DecodeError> {
        let envelope = pb::LogEnvelope::decode(encoded.as_ref())?;
        let (command, header) = match envelope.header {
            Some(header) => (envelope.command.unwrap_or_default(), header),
            None => (
                pb::Command::decode(encoded.as_ref())?,
                pb::LogHeader::default(),
            ),
        };
        Ok(Self(Arc::new(Inner {
            command,
            header,
            encoded,
        })))
    }

    /// The protobuf encoding of the envelope.
    pub fn encoded(&self) -> &Bytes {
        &self.0.encoded
    }

    pub fn header(&self) -> &pb::LogHeader {
        &self.0.header
    }

    /// Whether this replica can apply the entry as every other does. prost
    /// decodes a command variant it does not know as no command at all,
    /// and this node never proposes one, so none means "unknown".
    pub fn check_known(&self) -> Result<(), UnknownEntry> {
        let format = self.0.header.format;
        if format > FORMAT {
            return Err(UnknownEntry::NewerFormat { found: format });
        }
        if self.0.command.kind.is_none() {
            return Err(UnknownEntry::UnknownCommand { format });
        }
        Ok(())
    }
}

impl Deref for SharedCommand {
    type Target = pb::Command;
    fn deref(&self) -> &pb::Command {
        &self.0.command
    }
}

impl PartialEq for SharedCommand {
    fn eq(&self, other: &Self) -> bool {
        self.0.command == other.0.command && self.0.header == other.0.header
    }
}

/// openraft logs entries with it.
impl fmt::Display for SharedCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.command, f)
    }
}

impl fmt::Debug for SharedCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0.command, f)
    }
}

#[cfg(test)]
mod tests {
    use streamshield_proto::v1::command;

    use super::*;

    fn write() -> pb::Command {
        pb::Command {
            kind: Some(command::Kind::Write(pb::SyncWrite {
                job: "j".into(),
                seq: 7,
                ..Default::default()
            })),
        }
    }

    #[test]
    fn decoding_the_encoding_gives_the_command_and_header_back() {
        let shared = SharedCommand::new(write());
        let back = SharedCommand::decode(shared.encoded().clone()).unwrap();
        assert_eq!(*back, write());
        assert_eq!(back.header().format, FORMAT);
        assert!(back.header().leader_time_ms > 1_700_000_000_000);
        assert_eq!(back.encoded(), shared.encoded());
        assert_eq!(back.check_known(), Ok(()));
        assert!(SharedCommand::decode(Bytes::from_static(&[0xff, 0xff])).is_err());
    }

    #[test]
    fn an_entry_from_before_the_envelope_is_its_bare_command_in_format_0() {
        let bare = Bytes::from(write().encode_to_vec());
        let back = SharedCommand::decode(bare).unwrap();
        assert_eq!(*back, write());
        assert_eq!(back.header(), &pb::LogHeader::default());
        assert_eq!(back.check_known(), Ok(()));
    }

    #[test]
    fn a_newer_format_or_an_unknown_command_is_refused_not_skipped() {
        let newer = SharedCommand::with_header(
            write(),
            pb::LogHeader {
                format: FORMAT + 1,
                leader_time_ms: 1,
            },
        );
        let back = SharedCommand::decode(newer.encoded().clone()).unwrap();
        assert_eq!(
            back.check_known(),
            Err(UnknownEntry::NewerFormat { found: FORMAT + 1 })
        );
        // A command variant this version does not have (field 99 of
        // `Command`, as a newer version could add): prost skips it.
        let mut unknown_command = Vec::new();
        prost::encoding::bytes::encode(99, &vec![1u8, 2, 3], &mut unknown_command);
        let mut envelope = Vec::new();
        prost::encoding::message::encode(
            15,
            &pb::LogHeader {
                format: FORMAT,
                leader_time_ms: 1,
            },
            &mut envelope,
        );
        prost::encoding::bytes::encode(16, &unknown_command, &mut envelope);
        let back = SharedCommand::decode(envelope.into()).unwrap();
        assert_eq!(
            back.check_known(),
            Err(UnknownEntry::UnknownCommand { format: FORMAT })
        );
    }
}
