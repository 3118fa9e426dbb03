//! Proposes concurrent client writes, and any other command of the
//! client services, together.
//!
//! A Raft entry costs about the same whether it carries one write or many:
//! an append to three logs, an encode and a decode on every replica, a slot
//! in a replication message, openraft's bookkeeping. At most
//! [`MAX_IN_FLIGHT`] proposals are outstanding; writes that arrive while
//! they are go out together as one entry (`Command::OwnedWrites`, each
//! write with the principal that sent it) as soon as a
//! slot frees. A write that finds a free slot goes out after the handlers
//! ready to run have had their turn ([`gather`]), alone if none of them
//! submits: with 64 clients making one unary call per write, that took
//! 8,921 → 11,354 ops/s (3 alternating 8 s rounds each on two clusters).
//! Each write keeps its own conditions, dedupe record and answer; the apply
//! path handles them one by one. Other commands (staged writes, epoch
//! commits, leases, appends) join the same proposal: with any of them in
//! it, it goes out as a `Command::Commands` list (the writes as one
//! `OwnedWrites` in it), each command answered on its own.
//!
//! Epoch commits and lease changes wait in a lane of their own that each
//! proposal empties first: a whole task waits for each of them, and a
//! commit behind other tasks' staged batches waited for all of them to
//! replicate and apply (a task's 64 MiB epoch staging while 4 others
//! commit small ones: their commits' p99 987 and 1,020 ms with the lane,
//! 1,471 and 1,211 ms without; PERFORMANCE.md, "Task sessions: the apply
//! path"). Going first reorders nothing a client could have ordered: a
//! session sends its commit only once every batch of the epoch in flight
//! was answered, the epoch's last writes travel in the same item as the
//! commit (one item's commands stay next to each other, in order), and
//! commands that wait together were concurrent.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prost::Message;
use streamshield_gather as gather;
use streamshield_proto::v1::{self as pb, command, command_response};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::Proposer;
use crate::error::{rejected, ServiceError};

/// Proposals outstanding at once. Two let one batch replicate while the
/// next one fills.
pub const MAX_IN_FLIGHT: usize = 2;
/// Bounds of one batch.
pub const MAX_WRITES: usize = 512;
pub const MAX_BYTES: usize = 1 << 20;
/// Writes waiting for a proposal at most, by count and by bytes: past
/// them a write is refused with RESOURCE_EXHAUSTED at once instead of
/// queueing behind a backlog its caller would time out on. 64 batches of
/// the largest size are over a second of proposals on this machine.
pub const MAX_QUEUED_WRITES: usize = 64 * MAX_WRITES;
pub const MAX_QUEUED_BYTES: usize = 64 * MAX_BYTES;
/// The retry hint of a refused write: about one proposal round.
const RETRY_AFTER_MS: u32 = 20;

type Answer = Result<pb::WriteResponse, ServiceError>;
/// The answers of commands proposed as one item, in their order, and the
/// index of the entry that carried them.
type CommandsAnswer = Result<(u64, Vec<pb::CommandResponse>), ServiceError>;

enum Item {
    Write(pb::OwnedWrite, oneshot::Sender<Answer>),
    /// Commands that go into the proposal next to each other, in order
    /// (an epoch's last staged batch and its commit).
    Commands(Vec<pb::command::Kind>, oneshot::Sender<CommandsAnswer>),
}

impl Item {
    fn abandoned(&self) -> bool {
        match self {
            Item::Write(_, reply) => reply.is_closed(),
            Item::Commands(_, reply) => reply.is_closed(),
        }
    }

    fn fail(self, e: &ServiceError) {
        match self {
            Item::Write(_, reply) => {
                let _ = reply.send(Err(e.duplicate()));
            }
            Item::Commands(_, reply) => {
                let _ = reply.send(Err(e.duplicate()));
            }
        }
    }
}

struct Pending {
    item: Item,
    bytes: usize,
}

pub struct WriteBatcher {
    tx: mpsc::UnboundedSender<Pending>,
    /// Commands that go before everything else waiting ([`is_urgent`]).
    urgent: mpsc::UnboundedSender<Pending>,
    queued: Arc<Queued>,
    /// Proposals between their proposal and their answer.
    proposing: Arc<AtomicUsize>,
}

/// What waits in the channel, so that it stays bounded.
#[derive(Default)]
struct Queued {
    writes: AtomicUsize,
    bytes: AtomicUsize,
}

impl Queued {
    /// Takes room for one write of `bytes`, or says the queue is full.
    fn admit(&self, bytes: usize) -> bool {
        let writes = self.writes.fetch_add(1, Ordering::AcqRel);
        let total = self.bytes.fetch_add(bytes, Ordering::AcqRel);
        // The first write always gets in, whatever its size.
        if writes > 0 && (writes >= MAX_QUEUED_WRITES || total + bytes > MAX_QUEUED_BYTES) {
            self.release(bytes);
            return false;
        }
        true
    }

    fn release(&self, bytes: usize) {
        self.writes.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }
}

fn answer_of(resp: pb::CommandResponse) -> Answer {
    match resp.kind {
        Some(command_response::Kind::Write(w)) => Ok(w),
        Some(command_response::Kind::Error(e)) => Err(rejected(&e)),
        other => Err(ServiceError::Unavailable(format!(
            "a write was answered with {other:?}"
        ))),
    }
}

async fn propose(proposer: Proposer, batch: Vec<Pending>) {
    let mut writes = Vec::new();
    let mut write_replies = Vec::new();
    let mut commands = Vec::new();
    // Each item's reply and how many of the list's commands are its.
    let mut command_replies = Vec::new();
    for p in batch {
        match p.item {
            Item::Write(w, reply) => {
                writes.push(w);
                write_replies.push(reply);
            }
            Item::Commands(kinds, reply) => {
                command_replies.push((reply, kinds.len()));
                commands.extend(
                    kinds
                        .into_iter()
                        .map(|kind| pb::Command { kind: Some(kind) }),
                );
            }
        }
    }
    let n = writes.len();
    let commands_len = commands.len();
    let owned = |writes| pb::Command {
        kind: Some(command::Kind::OwnedWrites(pb::OwnedWrites { writes })),
    };
    // Writes alone travel as they always have; with other commands, as a
    // list whose first item holds the writes.
    let cmd = if commands.is_empty() {
        owned(writes)
    } else {
        let mut list = Vec::with_capacity(commands.len() + 1);
        if n > 0 {
            list.push(owned(writes));
        }
        list.extend(commands);
        pb::Command {
            kind: Some(command::Kind::Commands(pb::CommandList { commands: list })),
        }
    };
    let expected = if command_replies.is_empty() {
        n
    } else {
        commands_len + usize::from(n > 0)
    };
    let unexpected = |what: String| ServiceError::Unavailable(what);
    let (index, mut answers) = match proposer.propose_answers(cmd).await {
        Ok((
            index,
            pb::CommandResponse {
                kind: Some(command_response::Kind::Batch(b)),
            },
        )) if b.answers.len() == expected => (index, b.answers),
        Ok((_, other)) => {
            let e = unexpected(format!(
                "a proposal of {expected} items was answered with {other:?}"
            ));
            return fail_all(write_replies, command_replies, &e);
        }
        Err(e) => return fail_all(write_replies, command_replies, &e),
    };
    // With other commands, the writes' answers are the list's first.
    let rest = if command_replies.is_empty() {
        Vec::new()
    } else {
        let rest = answers.split_off(usize::from(n > 0));
        answers = match answers.pop().map(|w| w.kind) {
            Some(Some(command_response::Kind::Batch(b))) if b.answers.len() == n => b.answers,
            None => Vec::new(),
            Some(other) => {
                let e = unexpected(format!("a batch of {n} writes was answered with {other:?}"));
                return fail_all(write_replies, command_replies, &e);
            }
        };
        rest
    };
    for (reply, a) in write_replies.into_iter().zip(answers) {
        let _ = reply.send(answer_of(a));
    }
    let mut rest = rest.into_iter();
    for (reply, k) in command_replies {
        let _ = reply.send(Ok((index, rest.by_ref().take(k).collect())));
    }
}

fn fail_all(
    writes: Vec<oneshot::Sender<Answer>>,
    commands: Vec<(oneshot::Sender<CommandsAnswer>, usize)>,
    e: &ServiceError,
) {
    for r in writes {
        let _ = r.send(Err(e.duplicate()));
    }
    for (r, _) in commands {
        let _ = r.send(Err(e.duplicate()));
    }
}

impl WriteBatcher {
    /// Starts the task that forms batches; it ends when the batcher is
    /// dropped.
    pub fn start(proposer: Proposer) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Pending>();
        let (urgent, mut urgent_rx) = mpsc::unbounded_channel::<Pending>();
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let proposing = Arc::new(AtomicUsize::new(0));
        let counted = proposing.clone();
        let queued = Arc::new(Queued::default());
        let taken = queued.clone();
        tokio::spawn(async move {
            loop {
                // Wait for a free slot before taking writes, so that they
                // gather in the channel while every slot is busy.
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let first = tokio::select! {
                    biased;
                    p = urgent_rx.recv() => p,
                    p = rx.recv() => p,
                };
                let Some(first) = first else {
                    return;
                };
                // Handlers that are ready to run are about to submit
                // writes (a WriteMany's items, or concurrent unary calls
                // woken together): let them join this proposal.
                gather::let_ready_senders_in(|| rx.len() + urgent_rx.len()).await;
                let mut bytes = 0;
                let mut batch = Vec::new();
                let mut next = Some(first);
                while let Some(p) = next.take() {
                    taken.release(p.bytes);
                    // A caller that gave up (its deadline passed, its
                    // connection closed) no longer waits for the answer:
                    // its write is not proposed behind its back.
                    if p.item.abandoned() {
                        metrics::counter!("streamshield_writes_abandoned_total").increment(1);
                    } else {
                        bytes += p.bytes;
                        batch.push(p);
                    }
                    if batch.len() < MAX_WRITES && bytes < MAX_BYTES {
                        next = urgent_rx.try_recv().or_else(|_| rx.try_recv()).ok();
                    }
                }
                if batch.is_empty() {
                    continue;
                }
                metrics::histogram!("streamshield_writes_per_proposal").record(batch.len() as f64);
                let proposer = proposer.clone();
                let counted = counted.clone();
                counted.fetch_add(1, Ordering::AcqRel);
                tokio::spawn(async move {
                    propose(proposer, batch).await;
                    counted.fetch_sub(1, Ordering::AcqRel);
                    drop(slot);
                });
            }
        });
        Self {
            tx,
            urgent,
            queued,
            proposing,
        }
    }

    /// Whether a proposal is under way (between its proposal and its
    /// answer).
    pub fn in_flight(&self) -> bool {
        self.proposing.load(Ordering::Acquire) > 0
    }

    /// Proposes `write` on behalf of `principal`, who will own its client
    /// id.
    pub async fn submit(&self, principal: String, write: pb::SyncWrite) -> Answer {
        let (reply, answer) = oneshot::channel();
        let write = pb::OwnedWrite {
            principal,
            write: Some(write),
        };
        let bytes = write.encoded_len();
        self.enqueue(&self.tx, Item::Write(write, reply), bytes)?;
        answer
            .await
            .unwrap_or_else(|_| Err(ServiceError::Unavailable("write proposal abandoned".into())))
    }

    /// Proposes `kinds` next to each other in one entry, in this order,
    /// with whatever else is waiting; their answers in the same order.
    pub async fn submit_commands(&self, kinds: Vec<pb::command::Kind>) -> CommandsAnswer {
        let (reply, answer) = oneshot::channel();
        let bytes = kinds.iter().map(|k| k.encoded_len()).sum();
        let lane = if kinds.iter().any(is_urgent) {
            &self.urgent
        } else {
            &self.tx
        };
        let n = kinds.len();
        self.enqueue(lane, Item::Commands(kinds, reply), bytes)?;
        let (index, answers) = answer
            .await
            .unwrap_or_else(|_| Err(ServiceError::Unavailable("proposal abandoned".into())))?;
        if answers.len() != n {
            return Err(ServiceError::Unavailable(format!(
                "{n} commands were answered with {} answers",
                answers.len()
            )));
        }
        Ok((index, answers))
    }

    fn enqueue(
        &self,
        lane: &mpsc::UnboundedSender<Pending>,
        item: Item,
        bytes: usize,
    ) -> Result<(), ServiceError> {
        if !self.queued.admit(bytes) {
            metrics::counter!("streamshield_writes_shed_total").increment(1);
            return Err(ServiceError::Overloaded {
                what: "the write queue is full",
                retry_after_ms: RETRY_AFTER_MS,
            });
        }
        lane.send(Pending { item, bytes }).map_err(|e| {
            self.queued.release(bytes);
            e.0.item.fail(&ServiceError::Unavailable(
                "the node is shutting down".into(),
            ));
            ServiceError::Unavailable("the node is shutting down".into())
        })
    }
}

/// Commands that a whole task waits for: they take the lane each
/// proposal empties first.
fn is_urgent(kind: &pb::command::Kind) -> bool {
    matches!(
        kind,
        command::Kind::CommitEpoch(_)
            | command::Kind::AcquireLease(_)
            | command::Kind::ReleaseLease(_)
    )
}
