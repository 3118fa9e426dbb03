//! The benchmark driver: closed-loop clients against StreamShield and etcd
//! on the same machine, in the same process, alternating.
//!
//! [`workload`] says what a client does next (one type per workload),
//! [`target`] executes it on a store, [`runner`] runs the closed loop and
//! measures, [`etcd`] starts and reaches the comparison cluster,
//! [`limits`] measures the machine's floor, [`matrix`] runs the whole
//! comparison and writes `BENCHMARKS.md`; [`task_session`] measures stream
//! tasks writing through `TaskSession`s and committing epochs,
//! [`subscribe`] how soon a subscriber sees a committed record, [`reattach`]
//! how soon the operator runtime has a killed task working again.

pub mod cli;
pub mod cpu;
pub mod etcd;
pub mod limits;
pub mod matrix;
pub mod reattach;
pub mod runner;
pub mod subscribe;
pub mod target;
pub mod task_session;
pub mod workload;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use streamshield_client::local::LocalCluster;
use streamshield_client::{Client, ClientConfig};

use runner::{Report, RunShape};
use target::{EtcdTarget, StreamShieldTarget, Target, TargetKind};
use workload::{KeySpace, WorkloadKind};

/// Clusters a benchmark talks to; the ones it started die with it.
pub struct Clusters {
    pub streamshield: Option<StreamShieldTarget>,
    /// The same cluster through a client that does not coalesce calls.
    pub streamshield_uncoalesced: Option<StreamShieldTarget>,
    /// A second cluster over mutual TLS, beside the plaintext one.
    pub streamshield_tls: Option<StreamShieldTarget>,
    pub etcd: Option<EtcdTarget>,
    /// Targets whose key space is already written (reads need data).
    preloaded: std::sync::Mutex<Vec<TargetKind>>,
    _own: Option<LocalCluster>,
    _own_tls: Option<LocalCluster>,
    _own_etcd: Option<etcd::EtcdCluster>,
}

/// Where to find or how to start each target.
#[derive(Debug, Clone, Default)]
pub struct ClusterSpec {
    /// `None`: start a local 3-node cluster in `dir`.
    pub streamshield_endpoints: Option<Vec<String>>,
    pub etcd_endpoints: Option<Vec<String>>,
    pub server_bin: Option<PathBuf>,
    /// Extra flags for the servers this driver starts.
    pub server_args: Vec<String>,
    /// Start them with mutual TLS.
    pub tls: bool,
}

const READY_WITHIN: Duration = Duration::from_secs(30);

impl Clusters {
    pub async fn start(
        want: &[TargetKind],
        spec: &ClusterSpec,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let mut c = Self {
            streamshield: None,
            streamshield_uncoalesced: None,
            streamshield_tls: None,
            etcd: None,
            preloaded: Default::default(),
            _own: None,
            _own_tls: None,
            _own_etcd: None,
        };
        if want.iter().any(|t| t.cluster() == TargetKind::Streamshield) {
            let endpoints = match &spec.streamshield_endpoints {
                Some(e) => e.clone(),
                None => {
                    let bin = spec
                        .server_bin
                        .clone()
                        .context("streamshield-server binary not found")?;
                    let mut cluster = LocalCluster::layout(
                        &dir.join("streamshield"),
                        3,
                        &bin,
                        &spec.server_args,
                        false,
                    )?;
                    if spec.tls {
                        cluster.enable_tls()?;
                    }
                    cluster.start_founders()?;
                    let e = cluster.endpoints();
                    c._own = Some(cluster);
                    e
                }
            };
            let mut cfg = ClientConfig::new(endpoints);
            cfg.tls = match &c._own {
                Some(cluster) => cluster.client_tls()?,
                None => None,
            };
            cfg.deadline = READY_WITHIN;
            let client = Client::new(cfg.clone())?;
            client.wait_for_leader().await?;
            c.streamshield = Some(StreamShieldTarget::prepare(client).await?);
            cfg.coalesce = false;
            c.streamshield_uncoalesced = Some(StreamShieldTarget {
                client: Client::new(cfg)?,
            });
        }
        if want.contains(&TargetKind::StreamshieldTls) {
            c.start_tls(spec, dir).await?;
        }
        if want.contains(&TargetKind::Etcd) {
            let endpoints = match &spec.etcd_endpoints {
                Some(e) => e.clone(),
                None => {
                    let cluster = etcd::EtcdCluster::start(dir, 3)?;
                    let e = cluster.client_urls.clone();
                    c._own_etcd = Some(cluster);
                    e
                }
            };
            let kv = etcd::connect_leader(&endpoints, READY_WITHIN).await?;
            c.etcd = Some(EtcdTarget { kv });
        }
        Ok(c)
    }

    /// Starts the cluster over mutual TLS in `dir/streamshield-tls`.
    async fn start_tls(&mut self, spec: &ClusterSpec, dir: &Path) -> anyhow::Result<()> {
        let bin = spec
            .server_bin
            .clone()
            .context("streamshield-server binary not found")?;
        let mut cluster = LocalCluster::layout(
            &dir.join("streamshield-tls"),
            3,
            &bin,
            &spec.server_args,
            false,
        )?;
        cluster.enable_tls()?;
        cluster.start_founders()?;
        let mut cfg = ClientConfig::new(cluster.endpoints());
        cfg.deadline = READY_WITHIN;
        cfg.tls = cluster.client_tls()?;
        let client = Client::new(cfg)?;
        client.wait_for_leader().await?;
        self.streamshield_tls = Some(StreamShieldTarget::prepare(client).await?);
        self._own_tls = Some(cluster);
        Ok(())
    }

    /// Stops the plaintext StreamShield cluster this driver started and
    /// starts the TLS one in its place, so that the two never run side by
    /// side (an idle cluster's heartbeats and fsyncs would tax the other's
    /// measurement).
    pub async fn switch_to_tls(&mut self, spec: &ClusterSpec, dir: &Path) -> anyhow::Result<()> {
        self.streamshield = None;
        self.streamshield_uncoalesced = None;
        if let Some(mut c) = self._own.take() {
            c.stop_all(Duration::from_secs(10))?;
        }
        if self.streamshield_tls.is_none() {
            self.start_tls(spec, dir).await?;
        }
        Ok(())
    }

    /// Runs one measurement of `kind` on `target`, preloading keys first
    /// when the workload reads them.
    pub async fn measure(
        &self,
        target: TargetKind,
        kind: WorkloadKind,
        space: KeySpace,
        shape: RunShape,
    ) -> anyhow::Result<Report> {
        let workload: Arc<dyn workload::BenchWorkload> = Arc::from(kind.build(space));
        let preload = workload.needs_preload() && {
            let mut done = self.preloaded.lock().expect("preloaded");
            let first = !done.contains(&target.cluster());
            done.push(target.cluster());
            first
        };
        let run = Run {
            target,
            kind,
            space,
            shape,
            workload,
            preload,
        };
        match target {
            TargetKind::Streamshield
            | TargetKind::StreamshieldUncoalesced
            | TargetKind::StreamshieldTls => {
                let t = match target {
                    TargetKind::Streamshield => &self.streamshield,
                    TargetKind::StreamshieldTls => &self.streamshield_tls,
                    _ => &self.streamshield_uncoalesced,
                };
                run.on(t.as_ref().context("no streamshield target")?).await
            }
            TargetKind::Etcd => {
                let t = self.etcd.as_ref().context("no etcd target")?;
                run.on(t).await
            }
        }
    }
}

/// One measurement, ready to run on a target.
struct Run {
    target: TargetKind,
    kind: WorkloadKind,
    space: KeySpace,
    shape: RunShape,
    workload: Arc<dyn workload::BenchWorkload>,
    preload: bool,
}

impl Run {
    async fn on<T: Target>(self, t: &T) -> anyhow::Result<Report> {
        if self.preload {
            runner::preload(t, self.space, 64).await?;
            t.settle().await?;
        }
        let m = runner::run(t, self.workload, self.shape).await?;
        Ok(Report::from_run(
            &self.kind.name(),
            self.target.name(),
            self.space,
            self.shape,
            m,
        ))
    }
}

/// The median of `xs` (the lower one of the middle two for even counts).
pub fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    xs[(xs.len() - 1) / 2]
}

/// The report whose throughput is the median of `runs`, so its latency
/// figures come from one real run rather than a mix.
pub fn median_report(runs: &[Report]) -> Option<Report> {
    lower_middle_by(runs, |a, b| a.ops_per_s.total_cmp(&b.ops_per_s))
}

/// The middle item in `order` (the lower of the two middle ones of an even
/// count), whole: a run's figures stay together.
pub fn lower_middle_by<T: Clone>(
    items: &[T],
    order: impl FnMut(&&T, &&T) -> std::cmp::Ordering,
) -> Option<T> {
    let mut sorted: Vec<&T> = items.iter().collect();
    sorted.sort_by(order);
    sorted
        .get(sorted.len().saturating_sub(1) / 2)
        .map(|t| (*t).clone())
}

pub fn table_header() -> String {
    format!(
        "{:<18} {:<14} {:>7} {:>9} {:>11} {:>9} {:>9} {:>9} {:>7} {:>10} {:>6}",
        "workload",
        "target",
        "clients",
        "ops",
        "ops/s",
        "p50 µs",
        "p99 µs",
        "p999 µs",
        "errors",
        "CPU µs/op",
        "steal"
    )
}

pub fn table_row(r: &Report) -> String {
    format!(
        "{:<18} {:<14} {:>7} {:>9} {:>11.0} {:>9} {:>9} {:>9} {:>7} {:>10} {:>6}",
        r.workload,
        r.target,
        r.clients,
        r.ops,
        r.ops_per_s,
        r.p50_us,
        r.p99_us,
        r.p999_us,
        r.errors,
        r.cpu_us_per_op.map_or("-".into(), |c| format!("{c:.1}")),
        r.steal_pct.map_or("-".into(), |s| format!("{s:.1}%")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(ops_per_s: f64, p99: u64) -> Report {
        Report {
            workload: "w".into(),
            target: "t".into(),
            clients: 1,
            value_size: 1,
            seconds: 1.0,
            ops: ops_per_s as u64,
            ops_per_s,
            p50_us: 1,
            p99_us: p99,
            p999_us: 1,
            max_us: 1,
            errors: 0,
            first_error: None,
            cpu_us_per_op: None,
            steal_pct: None,
        }
    }

    #[test]
    fn median_report_keeps_the_middle_run_whole() {
        let runs = vec![report(300.0, 3), report(100.0, 1), report(200.0, 2)];
        let m = median_report(&runs).unwrap();
        assert_eq!((m.ops_per_s, m.p99_us), (200.0, 2));
        assert_eq!(median(vec![3.0, 1.0, 2.0, 10.0]), 2.0);
        assert!(median_report(&[]).is_none());
    }
}
