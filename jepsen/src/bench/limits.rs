//! The machine's floor for a durable write: how long one fsync of the data
//! directory's disk takes and how long one gRPC round trip on loopback
//! takes. A Raft commit with one client needs at least one fsync (leader
//! and follower flush in parallel) and two round trips (client → leader,
//! leader → follower), so `fsync + 2 × rtt` is what no store can beat.
//!
//! A local cluster's replicas share one disk and fsync at the same moment,
//! and each of those fsyncs takes longer than one alone. That figure
//! ([`SHARED_DISK_WRITERS`] writers at once) is reported beside the floor
//! as context; the floor itself stays one fsync alone.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    pub workload: &'static str,
    pub target: &'static str,
    pub clients: u64,
    /// fsyncs measured.
    pub ops: u64,
    pub ops_per_s: f64,
    /// Of one fsync.
    pub p50_us: u64,
    pub p99_us: u64,
    pub errors: u64,
    pub grpc_rtt_p50_us: u64,
    pub grpc_rtt_p99_us: u64,
    /// `fsync p50 + 2 × rtt p50`.
    pub sync_put_floor_us: u64,
    /// One fsync's p50 while [`SHARED_DISK_WRITERS`] writers append and
    /// fsync their own files at once, as a local cluster's replicas do.
    pub shared_disk_fsync_p50_us: u64,
}

/// The replicas of a local cluster.
pub const SHARED_DISK_WRITERS: usize = 3;

impl Limits {
    /// One line for a progress log.
    pub fn summary(&self) -> String {
        format!(
            "machine floor: fsync p50 {} µs ({} µs with {} at once), loopback gRPC round trip p50 {} µs, durable write floor {} µs",
            self.p50_us,
            self.shared_disk_fsync_p50_us,
            SHARED_DISK_WRITERS,
            self.grpc_rtt_p50_us,
            self.sync_put_floor_us
        )
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("static histogram bounds")
}

/// Appends 4 KiB and `fdatasync`s, as a write-ahead log does, for `time`.
pub fn fsync_latency(dir: &Path, time: Duration) -> std::io::Result<Histogram<u64>> {
    let file = tempfile::NamedTempFile::new_in(dir)?;
    let mut f = file.as_file();
    let block = vec![0x5au8; 4096];
    let mut h = histogram();
    let end = Instant::now() + time;
    while Instant::now() < end || h.len() < 10 {
        let t0 = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        h.saturating_record(t0.elapsed().as_micros().max(1) as u64);
    }
    Ok(h)
}

/// [`fsync_latency`] in `writers` threads at once, each on its own file;
/// one histogram of all their fsyncs.
pub fn shared_fsync_latency(
    dir: &Path,
    time: Duration,
    writers: usize,
) -> std::io::Result<Histogram<u64>> {
    let all = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|_| s.spawn(|| fsync_latency(dir, time)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("an fsync thread panicked")))
            })
            .collect::<std::io::Result<Vec<_>>>()
    })?;
    let mut h = histogram();
    for one in &all {
        h.add(one)
            .map_err(|e| std::io::Error::other(format!("merging fsync histograms: {e}")))?;
    }
    Ok(h)
}

/// Sequential unary gRPC calls (health checks) to a tonic server in this
/// process, over a loopback TCP connection.
pub async fn grpc_round_trip(time: Duration) -> anyhow::Result<Histogram<u64>> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (_reporter, service) = tonic_health::server::health_reporter();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                async {
                    let _ = stop_rx.await;
                },
            ),
    );
    let ch = Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut client = HealthClient::new(ch);
    let mut h = histogram();
    let end = Instant::now() + time;
    // The first calls set up the connection; leave them out.
    for _ in 0..50 {
        client.check(HealthCheckRequest::default()).await?;
    }
    while Instant::now() < end {
        let t0 = Instant::now();
        client.check(HealthCheckRequest::default()).await?;
        h.saturating_record(t0.elapsed().as_micros().max(1) as u64);
    }
    let _ = stop_tx.send(());
    let _ = server.await;
    Ok(h)
}

pub async fn measure(dir: &Path, time: Duration) -> anyhow::Result<Limits> {
    // Both disk measurements block: one trip off the runtime for the two.
    let dir2 = dir.to_path_buf();
    let (fsync, shared) = tokio::task::spawn_blocking(move || {
        Ok::<_, std::io::Error>((
            fsync_latency(&dir2, time)?,
            shared_fsync_latency(&dir2, time, SHARED_DISK_WRITERS)?,
        ))
    })
    .await??;
    let rtt = grpc_round_trip(time).await?;
    let fsync_p50 = fsync.value_at_quantile(0.5);
    let rtt_p50 = rtt.value_at_quantile(0.5);
    Ok(Limits {
        workload: "limits",
        target: "machine",
        clients: 1,
        ops: fsync.len(),
        ops_per_s: fsync.len() as f64 / time.as_secs_f64(),
        p50_us: fsync_p50,
        p99_us: fsync.value_at_quantile(0.99),
        errors: 0,
        grpc_rtt_p50_us: rtt_p50,
        grpc_rtt_p99_us: rtt.value_at_quantile(0.99),
        sync_put_floor_us: fsync_p50 + 2 * rtt_p50,
        shared_disk_fsync_p50_us: shared.value_at_quantile(0.5),
    })
}
