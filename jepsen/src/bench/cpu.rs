//! The whole machine's CPU time, from `/proc/stat`.
//!
//! On a shared 2-core VM, throughput of one run moves by tens of percent
//! with the neighbours; the CPU time every process of the run (servers,
//! client, kernel) spent per operation moves much less, and it is what a
//! CPU-bound store's throughput comes down to. Time stolen by the
//! hypervisor is reported beside it, so a slow run can be told from a
//! costly one.

/// Cumulative CPU time of all cores, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTicks {
    /// user + nice + system + irq + softirq.
    pub busy: u64,
    pub steal: u64,
    /// Everything, idle and iowait included.
    pub total: u64,
}

/// CPU use over an interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuUse {
    pub busy_s: f64,
    /// Share of the interval's CPU time the hypervisor took.
    pub steal_share: f64,
}

/// The aggregate `cpu` line of `/proc/stat`.
pub fn parse(stat: &str) -> Option<CpuTicks> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    if f.len() < 8 {
        return None;
    }
    Some(CpuTicks {
        busy: f[0] + f[1] + f[2] + f[5] + f[6],
        steal: f[7],
        total: f[..8].iter().sum(),
    })
}

/// Now, or `None` where there is no `/proc/stat`.
pub fn sample() -> Option<CpuTicks> {
    parse(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a constant of the running system.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

impl CpuTicks {
    /// What was used between `earlier` and `self`.
    pub fn since(&self, earlier: &CpuTicks) -> CpuUse {
        let busy = self.busy.saturating_sub(earlier.busy);
        let steal = self.steal.saturating_sub(earlier.steal);
        let total = self.total.saturating_sub(earlier.total);
        CpuUse {
            busy_s: busy as f64 / ticks_per_second(),
            steal_share: if total == 0 {
                0.0
            } else {
                steal as f64 / total as f64
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  2943596 0 616597 1509153 53901 0 106238 3645 0 0\n\
                        cpu0 1504790 0 296345 757499 19766 0 43906 1693 0 0\n\
                        intr 1 2 3\n";

    #[test]
    fn reads_the_aggregate_line() {
        let t = parse(STAT).unwrap();
        assert_eq!(t.busy, 2_943_596 + 616_597 + 106_238);
        assert_eq!(t.steal, 3645);
        assert_eq!(
            t.total,
            2_943_596 + 616_597 + 1_509_153 + 53_901 + 106_238 + 3645
        );
    }

    #[test]
    fn refuses_what_is_not_a_cpu_line() {
        assert_eq!(parse("intr 1 2 3"), None);
        assert_eq!(parse("cpu  1 2 x 4 5 6 7 8"), None);
        assert_eq!(parse("cpu  1 2 3"), None);
    }

    #[test]
    fn use_is_the_difference() {
        let a = CpuTicks {
            busy: 100,
            steal: 10,
            total: 1000,
        };
        let b = CpuTicks {
            busy: 300,
            steal: 30,
            total: 1400,
        };
        let u = b.since(&a);
        assert!((u.busy_s - 200.0 / ticks_per_second()).abs() < 1e-9);
        assert!((u.steal_share - 0.05).abs() < 1e-9);
    }
}
