//! The first storage failure of a node, which ends it.
//!
//! A node whose disk failed a write or an fsync cannot know what of its
//! data is durable: after a failed fsync Linux may already have dropped the
//! dirty pages it could not write, and a second fsync then reports success
//! for data that is gone (PostgreSQL's "fsyncgate", 2018). So the first
//! failure is final: it is recorded here, nothing is synced again, and the
//! node stops with the failure as its exit message ([`crate::node::run`]).
//! Raft makes that safe: a node that stops loses nothing that a majority
//! acknowledged.

use std::io;
use std::sync::Arc;

use tokio::sync::watch;

/// Shared by everything of one node that writes to disk.
#[derive(Clone)]
pub struct StorageFault {
    first: Arc<watch::Sender<Option<String>>>,
}

impl Default for StorageFault {
    fn default() -> Self {
        Self {
            first: Arc::new(watch::Sender::new(None)),
        }
    }
}

impl StorageFault {
    /// Records a failure of `what`; only the first is kept.
    pub fn report(&self, what: &str, e: &io::Error) {
        let reported = self.first.send_if_modified(|first| {
            if first.is_some() {
                return false;
            }
            *first = Some(format!("{what}: {e}"));
            true
        });
        if reported {
            tracing::error!(what, error = %e, "storage failure: this node stops");
            metrics::counter!("streamshield_storage_failures_total").increment(1);
        }
    }

    /// The first failure, if there was one.
    pub fn failed(&self) -> Option<String> {
        self.first.borrow().clone()
    }

    /// The failure to report instead of touching the disk again.
    pub fn as_error(&self) -> Option<io::Error> {
        self.failed().map(|f| {
            io::Error::other(format!(
                "an earlier storage failure ({f}); nothing is synced after one"
            ))
        })
    }

    /// Waits for the first failure.
    pub async fn wait(&self) -> String {
        let mut rx = self.first.subscribe();
        let first = rx.wait_for(Option::is_some).await.map(|f| f.clone());
        match first {
            Ok(f) => f.unwrap_or_default(),
            // The sender lives as long as `self`.
            Err(_) => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_failure_is_kept_and_wakes_the_waiter() {
        let f = StorageFault::default();
        assert!(f.failed().is_none() && f.as_error().is_none());
        let waiter = tokio::spawn({
            let f = f.clone();
            async move { f.wait().await }
        });
        f.report("log fsync", &io::Error::from_raw_os_error(libc::EIO));
        f.report("state write", &io::Error::from_raw_os_error(libc::ENOSPC));
        let first = waiter.await.unwrap();
        assert!(first.starts_with("log fsync:"), "{first}");
        assert_eq!(f.failed().as_deref(), Some(first.as_str()));
        assert!(f.as_error().unwrap().to_string().contains("log fsync"));
    }
}
