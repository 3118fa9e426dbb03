//! Calls pipelined on one stream to a node (`State/Session`).
//!
//! A [`SessionSlot`] belongs to one node's connection and opens a session
//! on first use, and again after one ended. Each call goes out under a
//! fresh id and waits for the answer with that id; several calls may be
//! out at once. Nodes that do not know `Session` (UNIMPLEMENTED) are
//! remembered, and their calls go unary.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::transport::Transport;
use streamshield_proto::v1::{
    self as pb, session_reply, session_request, state_client::StateClient,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Code, Status, Streaming};

pub type Answer = Result<session_reply::Result, Status>;

/// The session to one node, opened when first needed.
#[derive(Default)]
pub struct SessionSlot {
    open: tokio::sync::Mutex<Option<Arc<Session>>>,
    unsupported: AtomicBool,
}

/// Where a node's next call goes.
pub enum Route {
    Session(Arc<Session>),
    /// The node has no sessions.
    Unary,
}

impl SessionSlot {
    /// The node's live session, opened if there is none.
    pub async fn route(
        &self,
        client: &StateClient<Transport>,
        timeout: Duration,
    ) -> Result<Route, Status> {
        if self.unsupported.load(Ordering::Relaxed) {
            return Ok(Route::Unary);
        }
        let mut open = self.open.lock().await;
        if let Some(s) = open.as_ref().filter(|s| s.is_live()) {
            return Ok(Route::Session(s.clone()));
        }
        match tokio::time::timeout(timeout, Session::open(client.clone())).await {
            Ok(Ok(s)) => {
                *open = Some(s.clone());
                Ok(Route::Session(s))
            }
            Ok(Err(status)) if status.code() == Code::Unimplemented => {
                self.unsupported.store(true, Ordering::Relaxed);
                Ok(Route::Unary)
            }
            Ok(Err(status)) => Err(status),
            Err(_) => Err(timed_out(timeout)),
        }
    }
}

/// What tonic's per-attempt timeout says, so a call that timed out on a
/// session is retried exactly as one that timed out unary.
fn timed_out(after: Duration) -> Status {
    Status::cancelled(format!("Timeout expired: no answer within {after:?}"))
}

#[derive(Default)]
struct Waiting {
    next_id: u64,
    calls: HashMap<u64, oneshot::Sender<Answer>>,
    /// Why the session ended; no call is taken after that.
    ended: Option<Status>,
}

pub struct Session {
    requests: mpsc::UnboundedSender<pb::SessionRequest>,
    waiting: Arc<Mutex<Waiting>>,
}

impl Session {
    async fn open(mut client: StateClient<Transport>) -> Result<Arc<Session>, Status> {
        let (requests, rx) = mpsc::unbounded_channel();
        let replies = client
            .session(UnboundedReceiverStream::new(rx))
            .await?
            .into_inner();
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        tokio::spawn(deliver(replies, waiting.clone()));
        Ok(Arc::new(Session { requests, waiting }))
    }

    fn is_live(&self) -> bool {
        self.waiting.lock().expect("session").ended.is_none() && !self.requests.is_closed()
    }

    /// Sends `call` and waits up to `timeout` for its answer.
    pub async fn call(&self, call: session_request::Call, timeout: Duration) -> Answer {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut w = self.waiting.lock().expect("session");
            if let Some(why) = &w.ended {
                return Err(why.clone());
            }
            let id = w.next_id;
            w.next_id += 1;
            w.calls.insert(id, tx);
            id
        };
        let sent = self.requests.send(pb::SessionRequest {
            id,
            call: Some(call),
        });
        if sent.is_err() {
            self.waiting.lock().expect("session").calls.remove(&id);
            return Err(Status::unavailable("the session's stream is closed"));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(Status::unavailable("the session ended")),
            Err(_) => {
                self.waiting.lock().expect("session").calls.remove(&id);
                Err(timed_out(timeout))
            }
        }
    }
}

/// Hands each answer to its call; when the stream ends, every call still
/// waiting fails with why, and retries open a new session.
async fn deliver(mut replies: Streaming<pb::SessionReply>, waiting: Arc<Mutex<Waiting>>) {
    let why = loop {
        match replies.message().await {
            Ok(Some(reply)) => {
                let call = waiting.lock().expect("session").calls.remove(&reply.id);
                // A call no longer waiting (its caller timed out) is dropped.
                if let Some(call) = call {
                    let answer = reply
                        .result
                        .ok_or_else(|| Status::internal("a session answer without a result"));
                    let _ = call.send(answer);
                }
            }
            Ok(None) => break Status::unavailable("the node ended the session"),
            Err(status) => break status,
        }
    };
    let calls = {
        let mut w = waiting.lock().expect("session");
        w.ended = Some(why.clone());
        std::mem::take(&mut w.calls)
    };
    for (_, call) in calls {
        let _ = call.send(Err(why.clone()));
    }
}
