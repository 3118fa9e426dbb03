//! Event-time windows: assigners and a windowed aggregation operator.
//!
//! A window `[start, end)` of a key fires once, when the watermark reaches
//! `end - 1` (its last millisecond), emitting the key's aggregate with the
//! window's bounds; its state is then dropped. Input for a window that has
//! already fired is late and dropped (`streamshield_runtime_late_records_total`).

use serde::{Deserialize, Serialize};

use crate::context::Context;
use crate::error::RuntimeError;
use crate::operator::{Input, Operator};
use crate::state::{Aggregate, MapState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Window {
    pub start: i64,
    pub end: i64,
}

impl Window {
    /// The last millisecond the window holds: its timer's time.
    pub fn max_timestamp(&self) -> i64 {
        self.end - 1
    }
}

/// Which windows an event belongs to.
pub trait WindowAssigner: Send + Sync + 'static {
    fn assign(&self, event_time: i64) -> Vec<Window>;

    /// The one window whose last millisecond is `max_timestamp`, for
    /// assigners of windows of one size: its timer then reads that
    /// window's state alone. `None` (the default) has the timer scan the
    /// key's windows for those that end then.
    fn window_ending_at(&self, _max_timestamp: i64) -> Option<Window> {
        None
    }
}

/// Fixed, non-overlapping windows of `size_ms`, aligned to the epoch.
#[derive(Debug, Clone, Copy)]
pub struct TumblingWindows {
    pub size_ms: i64,
}

impl WindowAssigner for TumblingWindows {
    fn assign(&self, t: i64) -> Vec<Window> {
        let start = t - t.rem_euclid(self.size_ms);
        vec![Window {
            start,
            end: start + self.size_ms,
        }]
    }

    fn window_ending_at(&self, max_timestamp: i64) -> Option<Window> {
        Some(Window {
            start: max_timestamp + 1 - self.size_ms,
            end: max_timestamp + 1,
        })
    }
}

/// Windows of `size_ms` starting every `slide_ms`: an event belongs to
/// `size_ms / slide_ms` of them.
#[derive(Debug, Clone, Copy)]
pub struct SlidingWindows {
    pub size_ms: i64,
    pub slide_ms: i64,
}

impl WindowAssigner for SlidingWindows {
    fn assign(&self, t: i64) -> Vec<Window> {
        let last_start = t - t.rem_euclid(self.slide_ms);
        let mut out = Vec::new();
        let mut start = last_start;
        while start > t - self.size_ms {
            out.push(Window {
                start,
                end: start + self.size_ms,
            });
            start -= self.slide_ms;
        }
        out.reverse();
        out
    }

    fn window_ending_at(&self, max_timestamp: i64) -> Option<Window> {
        Some(Window {
            start: max_timestamp + 1 - self.size_ms,
            end: max_timestamp + 1,
        })
    }
}

/// What a fired window emits (as JSON): its bounds and the aggregate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowResult<T> {
    pub start: i64,
    pub end: i64,
    pub result: T,
}

/// A keyed aggregation per event-time window: `extract` turns an input
/// into the aggregate's input (or skips it).
pub struct WindowedAggregate<W: WindowAssigner, A: Aggregate> {
    assigner: W,
    agg: A,
    extract: fn(&Input) -> Option<A::In>,
    windows: MapState<Window, A::Acc>,
}

impl<W, A> WindowedAggregate<W, A>
where
    W: WindowAssigner,
    A: Aggregate,
    A::Acc: Clone,
{
    pub fn new(assigner: W, agg: A, extract: fn(&Input) -> Option<A::In>) -> Self {
        Self {
            assigner,
            agg,
            extract,
            windows: MapState::new("windows"),
        }
    }
}

impl<W, A> Operator for WindowedAggregate<W, A>
where
    W: WindowAssigner,
    A: Aggregate,
    A::In: Clone + Send,
    A::Acc: Clone + Sync,
    A::Out: Serialize + Send,
{
    async fn process(&mut self, ctx: &mut Context, input: Input) -> Result<(), RuntimeError> {
        let Some(value) = (self.extract)(&input) else {
            return Ok(());
        };
        for w in self.assigner.assign(input.event_time) {
            if w.max_timestamp() <= ctx.watermark() {
                metrics::counter!("streamshield_runtime_late_records_total").increment(1);
                continue;
            }
            let mut acc = match self.windows.get(ctx, &w).await? {
                Some(acc) => acc,
                None => self.agg.create(),
            };
            self.agg.add(&mut acc, value.clone());
            self.windows.put(ctx, w, acc).await?;
            ctx.register_timer(w.max_timestamp());
        }
        Ok(())
    }

    async fn on_timer(&mut self, ctx: &mut Context, time: i64) -> Result<(), RuntimeError> {
        let due = match self.assigner.window_ending_at(time) {
            Some(w) => match self.windows.get(ctx, &w).await? {
                Some(acc) => vec![(w, acc)],
                None => Vec::new(),
            },
            None => self.windows.entries(ctx).await?,
        };
        for (w, acc) in due {
            if w.max_timestamp() != time {
                continue;
            }
            let value = serde_json::to_vec(&WindowResult {
                start: w.start,
                end: w.end,
                result: self.agg.result(&acc),
            })
            .map_err(|e| RuntimeError::Operator(e.to_string()))?;
            let key = ctx.key().to_vec();
            ctx.emit(key, &value, w.max_timestamp());
            self.windows.remove(ctx, &w).await?;
        }
        Ok(())
    }
}

/// The sum of i64 inputs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sum;

impl Aggregate for Sum {
    type In = i64;
    type Acc = i64;
    type Out = i64;
    fn create(&self) -> i64 {
        0
    }
    fn add(&self, acc: &mut i64, input: i64) {
        *acc = acc.saturating_add(input);
    }
    fn result(&self, acc: &i64) -> i64 {
        *acc
    }
}

/// The number of inputs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Count;

impl Aggregate for Count {
    type In = ();
    type Acc = u64;
    type Out = u64;
    fn create(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, _: ()) {
        *acc += 1;
    }
    fn result(&self, acc: &u64) -> u64 {
        *acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumbling_windows_hold_each_event_once_including_negative_times() {
        let w = TumblingWindows { size_ms: 10 };
        assert_eq!(w.assign(0), vec![Window { start: 0, end: 10 }]);
        assert_eq!(w.assign(9), vec![Window { start: 0, end: 10 }]);
        assert_eq!(w.assign(10), vec![Window { start: 10, end: 20 }]);
        assert_eq!(w.assign(-1), vec![Window { start: -10, end: 0 }]);
    }

    #[test]
    fn the_window_ending_at_a_timer_is_the_one_assigned_that_ends_then() {
        let assigners: [Box<dyn WindowAssigner>; 2] = [
            Box::new(TumblingWindows { size_ms: 10 }),
            Box::new(SlidingWindows {
                size_ms: 10,
                slide_ms: 5,
            }),
        ];
        for a in &assigners {
            for t in -25..40 {
                for w in a.assign(t) {
                    assert_eq!(a.window_ending_at(w.max_timestamp()), Some(w), "t = {t}");
                }
            }
        }
    }

    #[test]
    fn sliding_windows_hold_each_event_size_over_slide_times() {
        let w = SlidingWindows {
            size_ms: 10,
            slide_ms: 5,
        };
        assert_eq!(
            w.assign(12),
            vec![Window { start: 5, end: 15 }, Window { start: 10, end: 20 }]
        );
        assert_eq!(
            w.assign(5),
            vec![Window { start: 0, end: 10 }, Window { start: 5, end: 15 }]
        );
        for t in -20..40 {
            let ws = w.assign(t);
            assert_eq!(ws.len(), 2, "t = {t}");
            assert!(ws.iter().all(|x| x.start <= t && t < x.end));
        }
    }
}

#[cfg(test)]
mod operator_tests {
    use super::*;
    use crate::testing::Harness;

    fn amount(i: &Input) -> Option<i64> {
        std::str::from_utf8(&i.value).ok()?.parse().ok()
    }

    fn results(out: Vec<crate::testing::Emitted>) -> Vec<(String, WindowResult<i64>)> {
        out.into_iter()
            .map(|(k, v, _)| {
                (
                    String::from_utf8(k).unwrap(),
                    serde_json::from_slice(&v).unwrap(),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn a_tumbling_sum_fires_each_window_once_when_the_watermark_passes_it() {
        let op = WindowedAggregate::new(TumblingWindows { size_ms: 10 }, Sum, amount);
        let mut h = Harness::new(op, 1 << 20);
        h.process(b"u1", b"5", 3).await.unwrap();
        h.process(b"u1", b"7", 9).await.unwrap();
        h.process(b"u2", b"1", 4).await.unwrap();
        h.process(b"u1", b"100", 12).await.unwrap();
        assert_eq!(
            h.advance_watermark(8).await.unwrap(),
            0,
            "window [0,10) still open"
        );
        assert!(h.take_output().is_empty());
        h.process(b"u1", b"1", 8).await.unwrap();
        assert_eq!(
            h.advance_watermark(9).await.unwrap(),
            2,
            "one timer per key"
        );
        let mut got = results(h.take_output());
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            vec![
                (
                    "u1".into(),
                    WindowResult {
                        start: 0,
                        end: 10,
                        result: 13
                    }
                ),
                (
                    "u2".into(),
                    WindowResult {
                        start: 0,
                        end: 10,
                        result: 1
                    }
                ),
            ]
        );
        h.process(b"u1", b"1000", 2).await.unwrap();
        assert_eq!(h.pending_timers(), 1, "late input opens no window");
        h.advance_watermark(i64::MAX).await.unwrap();
        assert_eq!(
            results(h.take_output()),
            vec![(
                "u1".into(),
                WindowResult {
                    start: 10,
                    end: 20,
                    result: 100
                }
            )]
        );
        assert_eq!(h.stored(), 0, "fired windows leave no state behind");
    }

    /// Sliding windows that do not say which window ends when: their
    /// timers scan the key's windows.
    struct ScannedSliding(SlidingWindows);
    impl WindowAssigner for ScannedSliding {
        fn assign(&self, t: i64) -> Vec<Window> {
            self.0.assign(t)
        }
    }

    async fn sums_of(assigner: impl WindowAssigner) -> Vec<(String, WindowResult<i64>)> {
        let mut h = Harness::new(WindowedAggregate::new(assigner, Sum, amount), 0);
        for (k, v, t) in [
            (&b"a"[..], "1", 1),
            (b"a", "2", 6),
            (b"b", "4", 7),
            (b"a", "8", 12),
        ] {
            h.process(k, v.as_bytes(), t).await.unwrap();
        }
        h.advance_watermark(i64::MAX).await.unwrap();
        assert_eq!(h.stored(), 0, "fired windows leave no state behind");
        results(h.take_output())
    }

    #[tokio::test]
    async fn timers_of_an_assigner_without_window_ending_at_scan_and_fire_the_same() {
        let sliding = SlidingWindows {
            size_ms: 10,
            slide_ms: 5,
        };
        let direct = sums_of(sliding).await;
        assert_eq!(direct.len(), 6);
        assert_eq!(sums_of(ScannedSliding(sliding)).await, direct);
    }

    #[tokio::test]
    async fn a_sliding_count_counts_each_event_in_every_window_it_falls_in() {
        let op = WindowedAggregate::new(
            SlidingWindows {
                size_ms: 10,
                slide_ms: 5,
            },
            Count,
            |_| Some(()),
        );
        let mut h = Harness::new(op, 0);
        for t in [1, 6, 7, 12] {
            h.process(b"k", b"", t).await.unwrap();
        }
        h.advance_watermark(i64::MAX).await.unwrap();
        let got: Vec<(i64, u64)> = h
            .take_output()
            .into_iter()
            .map(|(_, v, _)| {
                let r: WindowResult<u64> = serde_json::from_slice(&v).unwrap();
                (r.start, r.result)
            })
            .collect();
        assert_eq!(got, vec![(-5, 1), (0, 3), (5, 3), (10, 1)]);
    }
}
