//! How large a task session's staged batches are when it has a commit
//! target ([`crate::TaskSessionConfig::commit_target`]).
//!
//! A commit waits for every batch in flight, and by Little's law that
//! wait is their bytes over the rate at which the cluster answers them.
//! Behind a saturated cluster that rate is the session's share of it, so
//! fixed-size batches make the wait grow with the number of tasks sharing
//! the cluster. Sizing what is in flight as the measured rate times the
//! target keeps the wait near the target whatever shares the cluster, as
//! Flink's buffer debloating sizes its network buffers by throughput
//! times a target time. Below saturation the rate is what the task
//! offers; a task speeding up grows its batches by about the target over
//! the round trip per sample, up to `batch_bytes`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The smallest batch a target shrinks to: below this the cluster's
/// cost per update climbs steeply (README, "Commit latency against
/// throughput at saturation": sessions of 1 × 8 KiB cost 13.3-13.5 µs of
/// machine CPU per update, of 2 × 128 KiB 6.3-7.6).
pub const MIN_BATCH_BYTES: usize = 8 << 10;

/// How often the answered rate is sampled: several round trips of a
/// saturated cluster, so that a sample is not one batch's answer.
const SAMPLE: Duration = Duration::from_millis(100);

/// Weight of the newest sample in the smoothed rate.
const NEWEST: f64 = 0.3;

/// The batch size for a session answered at `rate` bytes per second
/// with `window` batches in flight, within `MIN_BATCH_BYTES..=max`.
pub fn batch_bytes_for(rate: f64, target: Duration, window: usize, max: usize) -> usize {
    let in_flight = rate * target.as_secs_f64();
    let per_batch = in_flight / window.max(1) as f64;
    // `as` saturates a huge or NaN float; the clamp does the rest.
    (per_batch as usize).clamp(MIN_BATCH_BYTES.min(max), max)
}

pub struct BatchSizer {
    target: Duration,
    window: usize,
    max: usize,
    /// Bytes of this session's batches the cluster has answered.
    answered: Arc<AtomicU64>,
    sampled_at: Instant,
    sampled_bytes: u64,
    /// Smoothed answered bytes per second; none before the first sample.
    rate: Option<f64>,
    limit: usize,
}

impl BatchSizer {
    /// Starts at `max`, as a session without a target batches.
    pub fn new(target: Duration, window: usize, max: usize, now: Instant) -> Self {
        Self {
            target,
            window,
            max,
            answered: Arc::default(),
            sampled_at: now,
            sampled_bytes: 0,
            rate: None,
            limit: max,
        }
    }

    /// Where the senders count the bytes of each batch answered.
    pub fn answered(&self) -> Arc<AtomicU64> {
        self.answered.clone()
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Takes a sample once one is due and sizes batches from it.
    pub fn retune(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.sampled_at);
        if elapsed < SAMPLE {
            return;
        }
        let bytes = self.answered.load(Ordering::Relaxed);
        let sample = bytes.saturating_sub(self.sampled_bytes) as f64 / elapsed.as_secs_f64();
        let rate = match self.rate {
            Some(r) => r * (1.0 - NEWEST) + sample * NEWEST,
            None => sample,
        };
        self.rate = Some(rate);
        self.sampled_at = now;
        self.sampled_bytes = bytes;
        self.limit = batch_bytes_for(rate, self.target, self.window, self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn batches_hold_the_rate_times_the_target_shared_by_the_window() {
        // 10 MB/s for 20 ms is 200 kB in flight, 100 kB per batch of 2.
        assert_eq!(batch_bytes_for(10e6, 20 * MS, 2, 1 << 20), 100_000);
        assert_eq!(batch_bytes_for(10e6, 20 * MS, 2, 64 << 10), 64 << 10);
        assert_eq!(batch_bytes_for(1e3, 20 * MS, 2, 1 << 20), MIN_BATCH_BYTES);
        assert_eq!(batch_bytes_for(0.0, 20 * MS, 0, 1 << 20), MIN_BATCH_BYTES);
        assert_eq!(
            batch_bytes_for(f64::NAN, 20 * MS, 2, 1 << 20),
            MIN_BATCH_BYTES
        );
        assert_eq!(batch_bytes_for(f64::INFINITY, 20 * MS, 2, 1 << 20), 1 << 20);
        // A maximum below the floor wins over it.
        assert_eq!(batch_bytes_for(10e6, 20 * MS, 2, 4 << 10), 4 << 10);
    }

    #[test]
    fn the_limit_follows_the_answered_rate_once_per_sample() {
        let t0 = Instant::now();
        let mut s = BatchSizer::new(20 * MS, 2, 128 << 10, t0);
        assert_eq!(s.limit(), 128 << 10, "no sample yet");
        // 1 MB answered in 100 ms: 10 MB/s, so 100 kB per batch.
        s.answered().fetch_add(1_000_000, Ordering::Relaxed);
        s.retune(t0 + 50 * MS);
        assert_eq!(s.limit(), 128 << 10, "a sample waits its period");
        s.retune(t0 + 100 * MS);
        assert!(s.limit().abs_diff(100_000) <= 1, "{}", s.limit());
        // Nothing answered for a period: the smoothed rate falls by the
        // newest sample's weight, not to nothing at once.
        s.retune(t0 + 200 * MS);
        assert!(s.limit().abs_diff(70_000) <= 1, "{}", s.limit());
        for i in 3..40 {
            s.retune(t0 + i * 100 * MS);
        }
        assert_eq!(s.limit(), MIN_BATCH_BYTES);
        // A task speeding up grows its batches back within a few samples.
        let mut at = t0 + 4_000 * MS;
        for _ in 0..10 {
            s.answered().fetch_add(2_000_000, Ordering::Relaxed);
            at += 100 * MS;
            s.retune(at);
        }
        assert_eq!(s.limit(), 128 << 10);
    }
}
