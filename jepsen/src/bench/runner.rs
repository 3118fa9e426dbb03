//! The closed loop: `clients` tasks, each issuing its next operation as
//! soon as the previous one answered, for a warm-up and then a measured
//! window. Latencies go into one HDR histogram per task, merged at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde::Serialize;

use super::cpu::{self, CpuUse};
use super::target::Target;
use super::workload::{BenchWorkload, KeySpace};

/// What one run measured. Printed as the last line of a run, as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub workload: String,
    pub target: String,
    pub clients: u64,
    pub value_size: usize,
    pub seconds: f64,
    pub ops: u64,
    pub ops_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub errors: u64,
    /// The first error seen, to tell a misconfiguration from noise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// CPU time of the whole machine (every process and the kernel) in the
    /// window, per operation; see `cpu.rs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_op: Option<f64>,
    /// Share of the window's CPU time the hypervisor took, in percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steal_pct: Option<f64>,
}

#[derive(Debug, Clone, Copy)]
pub struct RunShape {
    pub clients: u64,
    pub warmup: Duration,
    pub measure: Duration,
    pub seed: u64,
}

/// The merged outcome of one closed-loop run.
pub struct Measured {
    pub errors: u64,
    /// Latency of every successful operation in the window, in µs.
    pub hist: Histogram<u64>,
    pub first_error: Option<String>,
    pub window: Duration,
    /// The machine's CPU use in the window, where it can be read.
    pub cpu: Option<CpuUse>,
}

struct TaskResult {
    hist: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 100 s at 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("static histogram bounds")
}

/// Writes every key once, so reads find data; `clients` writers.
pub async fn preload<T: Target>(target: &T, space: KeySpace, clients: u64) -> anyhow::Result<()> {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients.max(1) {
        let (target, next) = (target.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(c);
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= space.keys {
                    return Ok::<(), String>(());
                }
                target
                    .execute(super::target::Op::Put {
                        key: space.key(i),
                        value: space.value(&mut rng),
                    })
                    .await?;
            }
        }));
    }
    for t in tasks {
        t.await?.map_err(|e| anyhow::anyhow!("preload: {e}"))?;
    }
    Ok(())
}

/// Runs `workload` against `target` and reports the measured window.
pub async fn run<T: Target>(
    target: &T,
    workload: Arc<dyn BenchWorkload>,
    shape: RunShape,
) -> anyhow::Result<Measured> {
    let started = Instant::now();
    let measure_from = started + shape.warmup;
    let end = measure_from + shape.measure;
    let cpu_in_window = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        let from = cpu::sample();
        tokio::time::sleep_until(end.into()).await;
        Some(cpu::sample()?.since(&from?))
    });
    let mut tasks = Vec::new();
    for c in 0..shape.clients {
        let (target, workload) = (target.clone(), workload.clone());
        let seed = shape.seed.wrapping_mul(1_000_003).wrapping_add(c);
        tasks.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut r = TaskResult {
                hist: new_histogram(),
                errors: 0,
                first_error: None,
            };
            loop {
                let op = workload.next_op(&mut rng);
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let result = target.execute(op).await;
                let t1 = Instant::now();
                // Only operations wholly inside the window count, so the
                // figures do not depend on the warm-up's tail.
                if t0 < measure_from || t1 > end {
                    continue;
                }
                match result {
                    Ok(()) => {
                        let us = (t1 - t0).as_micros().clamp(1, 100_000_000) as u64;
                        r.hist.saturating_record(us);
                    }
                    Err(e) => {
                        r.errors += 1;
                        r.first_error.get_or_insert(e);
                    }
                }
            }
            r
        }));
    }
    let mut hist = new_histogram();
    let mut errors = 0;
    let mut first_error = None;
    for t in tasks {
        let r = t.await?;
        hist.add(&r.hist).expect("same histogram bounds");
        errors += r.errors;
        if first_error.is_none() {
            first_error = r.first_error;
        }
    }
    Ok(Measured {
        errors,
        hist,
        first_error,
        window: shape.measure,
        cpu: cpu_in_window.await?,
    })
}

impl Report {
    pub fn from_run(
        workload: &str,
        target: &str,
        space: KeySpace,
        shape: RunShape,
        m: Measured,
    ) -> Self {
        let Measured {
            errors,
            hist,
            first_error,
            window,
            cpu,
        } = m;
        let ops = hist.len();
        let q = |p: f64| {
            if ops == 0 {
                0
            } else {
                hist.value_at_quantile(p)
            }
        };
        Self {
            workload: workload.into(),
            target: target.into(),
            clients: shape.clients,
            value_size: space.value_size,
            seconds: window.as_secs_f64(),
            ops,
            ops_per_s: ops as f64 / window.as_secs_f64(),
            p50_us: q(0.5),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if ops == 0 { 0 } else { hist.max() },
            errors,
            first_error,
            cpu_us_per_op: cpu.filter(|_| ops > 0).map(|c| c.busy_s * 1e6 / ops as f64),
            steal_pct: cpu.map(|c| c.steal_share * 100.0),
        }
    }
}
