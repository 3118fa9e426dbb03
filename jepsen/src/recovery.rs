//! How soon clients get answers again after a fault heals: the longest
//! pause between completed operations right after each heal, as Jepsen's
//! latency plots show it but as one number a run reports.

use std::time::Duration;

use crate::history::{Op, OpType};
use crate::nemesis::Event;

/// How long after a heal pauses are looked for.
pub const WINDOW: Duration = Duration::from_secs(3);

/// The longest time, over the heals, from the heal or a completed
/// operation to the next completed operation, within the heal's window:
/// [`WINDOW`] after it, cut short where the next fault starts (a pause
/// there is that fault's, not the heal's), or the whole window when
/// nothing completed in it. Heals whose window the workload did not outlive
/// are left out; `None` when none is left.
pub fn longest_pause_after_heal(history: &[Op], events: &[Event]) -> Option<Duration> {
    let mut done: Vec<u64> = history
        .iter()
        .filter(|o| o.kind == OpType::Ok)
        .map(|o| o.time)
        .collect();
    done.sort_unstable();
    let last = *done.last()?;
    events
        .iter()
        .filter_map(|e| {
            let next_fault = events
                .iter()
                .map(|n| n.start)
                .filter(|&s| s >= e.end)
                .min()
                .unwrap_or(u64::MAX);
            let until = e
                .end
                .saturating_add(WINDOW.as_nanos() as u64)
                .min(next_fault);
            (until <= last).then_some((e.end, until))
        })
        .map(|(healed, until)| {
            let from = done.partition_point(|&t| t < healed);
            let mut prev = healed;
            let mut longest = 0;
            for &t in done[from..].iter().take_while(|&&t| t <= until) {
                longest = longest.max(t - prev);
                prev = t;
            }
            longest.max(until - prev)
        })
        .max()
        .map(Duration::from_nanos)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::nemesis::Fault;

    const MS: u64 = 1_000_000;

    fn ok_at(ms: u64) -> Op {
        Op::invoke(0, "read", None, Value::Null, ms * MS).complete(OpType::Ok, Value::Null, ms * MS)
    }

    fn healed_at(ms: u64) -> Event {
        fault(0, ms)
    }

    fn fault(start_ms: u64, end_ms: u64) -> Event {
        Event {
            fault: Fault::Partition,
            detail: String::new(),
            start: start_ms * MS,
            end: end_ms * MS,
        }
    }

    #[test]
    fn the_pause_is_the_longest_gap_from_the_heal_within_the_window() {
        // Completions every 10 ms except a 400 ms hole 100 ms after the
        // heal at 1 s, and a 50 ms wait for the first one.
        let mut times: Vec<u64> = (0..100).map(|i| i * 10).collect();
        times.extend([1_050, 1_100, 1_500]);
        times.extend((1..400).map(|i| 1_500 + i * 10));
        let history: Vec<Op> = times.iter().map(|&t| ok_at(t)).collect();
        assert_eq!(
            longest_pause_after_heal(&history, &[healed_at(1_000)]),
            Some(Duration::from_millis(400))
        );
        // A failed or unfinished operation does not end a pause.
        let mut with_fail = history.clone();
        with_fail.push(
            Op::invoke(1, "write", None, Value::Null, 1_200 * MS).complete(
                OpType::Fail,
                Value::Null,
                1_300 * MS,
            ),
        );
        assert_eq!(
            longest_pause_after_heal(&with_fail, &[healed_at(1_000)]),
            Some(Duration::from_millis(400))
        );
    }

    #[test]
    fn the_window_ends_where_the_next_fault_starts() {
        // Healed at 1 s, answers every 10 ms until the next fault at 1.5 s
        // stops them for 400 ms: that pause is the fault's, not the heal's.
        let mut times: Vec<u64> = (0..=150).map(|i| i * 10).collect();
        times.extend((0..300).map(|i| 1_900 + i * 10));
        let history: Vec<Op> = times.iter().map(|&t| ok_at(t)).collect();
        let events = [fault(500, 1_000), fault(1_500, 1_800)];
        assert_eq!(
            longest_pause_after_heal(&history, &events[..1]),
            Some(Duration::from_millis(400)),
            "without the next fault the pause falls in the window"
        );
        // With it, the first heal's window is 1.0-1.5 s (10 ms pauses); the
        // second heal's, 1.8-4.8 s, waits 100 ms for its first answer.
        assert_eq!(
            longest_pause_after_heal(&history, &events),
            Some(Duration::from_millis(100))
        );
    }

    #[test]
    fn a_heal_without_a_window_of_run_after_it_is_left_out_and_silence_is_the_window() {
        let history: Vec<Op> = (0..=500).map(|i| ok_at(i * 10)).collect();
        // The run ends at 5 s: a heal at 4 s is left out.
        assert_eq!(
            longest_pause_after_heal(&history, &[healed_at(4_000)]),
            None
        );
        assert_eq!(longest_pause_after_heal(&[], &[healed_at(1)]), None);
        // Nothing completes for the 3 s after a heal at 1 s.
        let mut quiet: Vec<Op> = (0..=100).map(|i| ok_at(i * 10)).collect();
        quiet.push(ok_at(4_500));
        assert_eq!(
            longest_pause_after_heal(&quiet, &[healed_at(1_000), healed_at(200)]),
            Some(WINDOW)
        );
    }
}
