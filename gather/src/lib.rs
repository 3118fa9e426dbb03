//! Gathering concurrent requests into one call or one proposal.
//!
//! Both ends of the client API batch: the client's coalescer packs the
//! requests waiting for a node into one many-call, and a node's write
//! batcher packs the writes waiting into one Raft proposal. Each forms its
//! batch when the first request arrives. When one answer wakes many callers
//! at once (a many-call's answers, a proposal's answers), the first of them
//! to send wakes the batcher while the others still wait to run; formed at
//! once, its batch would carry that one request alone, and the rest would
//! wait a whole round for it. So a batcher first lets them run.

/// Turns a batcher gives the ready tasks at most.
pub const MAX_TURNS: usize = 4;

/// Lets the tasks that are ready to run on this runtime go first, so that
/// the requests they are about to send join the batch being formed.
///
/// Yields at least twice (callers woken on another worker thread need a
/// moment), then until a turn adds nothing to `queued()`, at most
/// [`MAX_TURNS`] times. A lone caller pays two trips through the scheduler,
/// a few microseconds.
pub async fn let_ready_senders_in(queued: impl Fn() -> usize) {
    let mut before = queued();
    for turn in 1..=MAX_TURNS {
        tokio::task::yield_now().await;
        let after = queued();
        if turn >= 2 && after == before {
            break;
        }
        before = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a single-threaded runtime a spawned task runs only when the
    /// running one yields: what is queued afterwards is what the yields let
    /// in.
    #[tokio::test(flavor = "current_thread")]
    async fn senders_that_are_ready_get_their_requests_in_first() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        for i in 0..10 {
            let tx = tx.clone();
            tokio::spawn(async move {
                // Some senders need a second turn before they send.
                if i % 2 == 0 {
                    tokio::task::yield_now().await;
                }
                tx.send(i).unwrap();
            });
        }
        assert_eq!(rx.len(), 0, "nothing ran yet");
        let_ready_senders_in(|| rx.len()).await;
        assert_eq!(rx.len(), 10);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_steady_trickle_cannot_hold_the_batch_back() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let sender = tokio::spawn(async move {
            for i in 0.. {
                if tx.send(i).is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
        });
        let_ready_senders_in(|| rx.len()).await;
        assert_eq!(rx.len(), MAX_TURNS, "one request per turn, then it stops");
        drop(rx);
        sender.await.unwrap();
    }
}
