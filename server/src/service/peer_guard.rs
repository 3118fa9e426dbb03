//! What a node accepts from the Raft port before openraft sees it.
//!
//! Raft trusts its peers: a `Vote` of a high enough term makes every node
//! adopt it (§5.1 of the Raft paper: "if one server's current term is
//! smaller than the other's, then it updates its current term"). Without
//! these checks one forged `Vote` of term `u64::MAX` from a node that is not
//! a member ends a cluster: the nodes adopt the term, and the next election
//! overflows it. The rules, checked against this node's own view:
//!
//! * a vote (or pre-vote) is asked only by a voter of this node's
//!   membership; refusing a vote is always safe, so a candidate this node
//!   does not know yet simply wins with the votes of the others;
//! * no message carries a term more than [`MAX_TERM_AHEAD`] above this
//!   node's, which no honest peer reaches (with pre-vote, a node cut off
//!   does not raise its term at all);
//! * no message claims to come from this node itself;
//! * on a TLS node, a message names the node its connection's certificate
//!   was issued to ([`check_sender`]).
//!
//! Entries and snapshots from a leader this node does not know yet are
//! accepted: a node that was down while members were replaced learns of
//! its new leader only from that leader's entries; on a TLS node they come
//! from a certified node all the same.

use std::collections::BTreeSet;

/// See the module doc: 2^32 elections are more than a century of failed
/// elections back to back at the shortest timeouts.
pub const MAX_TERM_AHEAD: u64 = 1 << 32;

/// This node's view, as its Raft metrics last reported it.
#[derive(Debug, Clone)]
pub struct PeerView {
    pub this: u64,
    pub current_term: u64,
    /// Voters of the effective membership (of both halves of a joint one);
    /// only collected for a vote, where they are needed.
    pub voters: BTreeSet<u64>,
    /// Whether the node has a membership yet (it was initialized or added).
    pub initialized: bool,
}

/// Why a peer message was refused; nothing of it reached openraft.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerRefusal {
    #[error(
        "node {from} asked for a vote but is not a voter of this node's membership {voters:?}"
    )]
    NotAVoter { from: u64, voters: BTreeSet<u64> },
    #[error("term {term} from node {from} is more than {MAX_TERM_AHEAD} above this node's term {current}")]
    TermTooFarAhead { from: u64, term: u64, current: u64 },
    #[error("a message claims to come from this node ({this})")]
    FromItself { this: u64 },
    #[error("a message claims to come from node {claimed} over a connection certified for node {certified}")]
    NotTheSender { claimed: u64, certified: u64 },
}

/// The sender a message names must be the node its connection's
/// certificate was issued to (on a TLS node; plaintext proves nothing).
pub fn check_sender(claimed: u64, certified: Option<u64>) -> Result<(), PeerRefusal> {
    match certified {
        Some(certified) if certified != claimed => {
            Err(PeerRefusal::NotTheSender { claimed, certified })
        }
        _ => Ok(()),
    }
}

impl PeerView {
    /// A `Vote` or pre-vote request from candidate `from` in `term`.
    pub fn check_vote(&self, from: u64, term: u64) -> Result<(), PeerRefusal> {
        self.check_message(from, term)?;
        if !self.voters.contains(&from) {
            return Err(PeerRefusal::NotAVoter {
                from,
                voters: self.voters.clone(),
            });
        }
        Ok(())
    }

    /// Entries or a snapshot from leader `from` in `term`.
    pub fn check_message(&self, from: u64, term: u64) -> Result<(), PeerRefusal> {
        if from == self.this {
            return Err(PeerRefusal::FromItself { this: self.this });
        }
        // A node that has no membership yet (added as a learner a moment
        // ago) cannot judge a leader's term: the cluster may be old.
        if self.initialized && term > self.current_term.saturating_add(MAX_TERM_AHEAD) {
            return Err(PeerRefusal::TermTooFarAhead {
                from,
                term,
                current: self.current_term,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(current_term: u64, voters: &[u64]) -> PeerView {
        PeerView {
            this: 1,
            current_term,
            voters: voters.iter().copied().collect(),
            initialized: !voters.is_empty(),
        }
    }

    #[test]
    fn a_vote_is_asked_only_by_a_voter() {
        let v = view(5, &[1, 2, 3]);
        assert_eq!(v.check_vote(2, 6), Ok(()));
        assert!(matches!(
            v.check_vote(99, 6),
            Err(PeerRefusal::NotAVoter { from: 99, .. })
        ));
        // A node with no membership yet votes for nobody.
        assert!(view(0, &[]).check_vote(2, 1).is_err());
    }

    #[test]
    fn a_term_no_honest_peer_reaches_is_refused() {
        let v = view(5, &[1, 2, 3]);
        assert_eq!(v.check_vote(2, 5 + MAX_TERM_AHEAD), Ok(()));
        assert_eq!(
            v.check_vote(2, u64::MAX),
            Err(PeerRefusal::TermTooFarAhead {
                from: 2,
                term: u64::MAX,
                current: 5
            })
        );
        assert!(v.check_message(2, 6 + MAX_TERM_AHEAD).is_err());
        // The bound never overflows, even at the top of the range.
        assert_eq!(view(u64::MAX - 1, &[1, 2]).check_vote(2, u64::MAX), Ok(()));
    }

    #[test]
    fn a_certified_connection_speaks_only_for_its_node() {
        assert_eq!(check_sender(2, Some(2)), Ok(()));
        assert_eq!(check_sender(2, None), Ok(()));
        assert_eq!(
            check_sender(3, Some(2)),
            Err(PeerRefusal::NotTheSender {
                claimed: 3,
                certified: 2
            })
        );
    }

    #[test]
    fn entries_come_from_any_other_node_a_fresh_node_included() {
        // A leader this node does not know yet (members were replaced
        // while it was down), and a learner added a moment ago.
        assert_eq!(view(5, &[1, 2, 3]).check_message(7, 9), Ok(()));
        assert_eq!(view(0, &[]).check_message(2, 1 << 40), Ok(()));
        assert_eq!(
            view(5, &[1, 2, 3]).check_message(1, 5),
            Err(PeerRefusal::FromItself { this: 1 })
        );
    }
}
