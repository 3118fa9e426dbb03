//! `bench --workload subscribe`: how soon a subscriber sees a committed
//! record. One producer appends records one at a time (sync `Append`,
//! closed loop) while one subscriber follows the partition; for each
//! record it reports the append's latency and when the subscriber got it,
//! measured from the append's start and from its acknowledgement.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use streamshield_client::{pb, Client, ClientError};

const JOB: &str = "bench-streams";
const STREAM: &str = "latency";

#[derive(Debug, Clone, Serialize)]
pub struct SubscribeReport {
    pub workload: String,
    pub records: u64,
    pub append_p50_us: u64,
    pub append_p99_us: u64,
    /// From the append's start to the subscriber holding the record.
    pub delivered_p50_us: u64,
    pub delivered_p99_us: u64,
    /// From the append's acknowledgement to the subscriber holding the
    /// record (0 when the subscriber had it first).
    pub after_ack_p50_us: u64,
    pub after_ack_p99_us: u64,
    pub errors: u64,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("static bounds")
}

/// When each record was sent and acknowledged, by offset.
#[derive(Default)]
struct Sent {
    started: Vec<Instant>,
    acked: Vec<Option<Instant>>,
}

pub async fn run(client: &Client, measure: Duration) -> anyhow::Result<SubscribeReport> {
    match client.create_job(JOB, 16).await {
        Ok(_) | Err(ClientError::AlreadyExists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let from = match client.create_stream(JOB, STREAM, 1, 0).await {
        Ok(s) => s.partition_info[0].end_offset,
        Err(ClientError::AlreadyExists(_)) => {
            client.describe_stream(JOB, STREAM).await?.partition_info[0].end_offset
        }
        Err(e) => return Err(e.into()),
    };
    let sent = Arc::new(Mutex::new(Sent::default()));
    let mut sub = client.subscribe(JOB, STREAM, 0, from).await?;
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let seen = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let (mut delivered, mut after_ack) = (hist(), hist());
            loop {
                let page = tokio::select! {
                    m = sub.message() => match m {
                        Ok(Some(page)) => page,
                        _ => break,
                    },
                    _ = stopped.changed() => break,
                };
                let now = Instant::now();
                let s = sent.lock().expect("sent");
                for r in page.records {
                    let i = (r.offset - from) as usize;
                    if let Some(t0) = s.started.get(i) {
                        delivered
                            .record(now.duration_since(*t0).as_micros().max(1) as u64)
                            .ok();
                    }
                    let after = match s.acked.get(i).copied().flatten() {
                        Some(t) => now.saturating_duration_since(t).as_micros().max(1) as u64,
                        None => 1,
                    };
                    after_ack.record(after).ok();
                }
            }
            (delivered, after_ack)
        })
    };
    let mut append = hist();
    let mut errors = 0;
    let end = Instant::now() + measure;
    let mut n = 0u64;
    while Instant::now() < end {
        let started = Instant::now();
        {
            let mut s = sent.lock().expect("sent");
            s.started.push(started);
            s.acked.push(None);
        }
        let record = pb::Record {
            key: Vec::new(),
            value: n.to_string().into_bytes(),
        };
        match client.append(JOB, STREAM, 0, vec![record], None).await {
            Ok(r) if r.base_offset == from + n => {
                let acked = Instant::now();
                append
                    .record(acked.duration_since(started).as_micros().max(1) as u64)
                    .ok();
                sent.lock().expect("sent").acked[n as usize] = Some(acked);
                n += 1;
            }
            // Another writer, or an unknown outcome: the offsets no longer
            // line up with what was sent; stop measuring.
            _ => {
                errors += 1;
                break;
            }
        }
    }
    // Let the last records arrive, then end the subscription.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send_replace(true);
    let (delivered, after_ack) = seen.await?;
    let q = |h: &Histogram<u64>, p: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(p)
        }
    };
    Ok(SubscribeReport {
        workload: "subscribe".into(),
        records: n,
        append_p50_us: q(&append, 0.5),
        append_p99_us: q(&append, 0.99),
        delivered_p50_us: q(&delivered, 0.5),
        delivered_p99_us: q(&delivered, 0.99),
        after_ack_p50_us: q(&after_ack, 0.5),
        after_ack_p99_us: q(&after_ack, 0.99),
        errors,
    })
}
