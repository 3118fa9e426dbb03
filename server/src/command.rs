//! The payload of a normal Raft entry: a [`pb::Command`] decoded once and
//! encoded once, shared by everything that holds the entry.
//!
//! openraft clones an entry for each reader (the replication stream of
//! every follower, the apply), and the log store and each AppendEntries
//! need its encoding. With the command behind an `Arc` and its bytes
//! (`bytes::Bytes`) kept beside it, a clone is a reference count, and the
//! leader's log and both followers' messages carry the bytes encoded at
//! proposal time; a follower keeps the bytes it received for its own log.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use streamshield_proto::v1 as pb;

#[derive(Clone)]
pub struct SharedCommand(Arc<Inner>);

struct Inner {
    command: pb::Command,
    encoded: Bytes,
}

impl SharedCommand {
    /// A command to propose: encoded here, once.
    pub fn new(command: pb::Command) -> Self {
        let encoded = Bytes::from(command.encode_to_vec());
        Self(Arc::new(Inner { command, encoded }))
    }

    /// A command received or read back in its encoded form.
    pub fn decode(encoded: Bytes) -> Result<Self, prost::DecodeError> {
        let command = pb::Command::decode(encoded.as_ref())?;
        Ok(Self(Arc::new(Inner { command, encoded })))
    }

    /// The protobuf encoding of the command.
    pub fn encoded(&self) -> &Bytes {
        &self.0.encoded
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
        self.0.command == other.0.command
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

    #[test]
    fn decoding_the_encoding_gives_the_command_back() {
        let cmd = pb::Command {
            kind: Some(command::Kind::Write(pb::WriteRequest {
                job: "j".into(),
                seq: 7,
                ..Default::default()
            })),
        };
        let shared = SharedCommand::new(cmd.clone());
        let back = SharedCommand::decode(shared.encoded().clone()).unwrap();
        assert_eq!(*back, cmd);
        assert_eq!(back.encoded(), shared.encoded());
        assert!(SharedCommand::decode(Bytes::from_static(&[0xff, 0xff])).is_err());
    }
}
