//! Writing a job's input and reading its result, for generators, checks
//! and tools.

use streamshield_client::{pb, Client, ClientError, Producer};

use crate::envelope::{self, Envelope};
use crate::error::RuntimeError;
use crate::job::StreamRef;

/// Records per append.
const CHUNK: usize = 1000;

/// Appends `per_partition[p]` to partition `p` of `to`, from where the
/// partition ends: a rerun of the same generator adds nothing, and a
/// retried chunk is deduplicated by its producer sequence.
pub async fn append_all(
    client: &Client,
    to: &StreamRef,
    per_partition: Vec<Vec<pb::Record>>,
) -> Result<u64, RuntimeError> {
    let info = client.describe_stream(&to.job, &to.stream).await?;
    let mut written = 0;
    for (p, records) in per_partition.into_iter().enumerate() {
        let end = info.partition_info.get(p).map_or(0, |i| i.end_offset) as usize;
        let mut at = end;
        while at < records.len() {
            let n = (records.len() - at).min(CHUNK);
            let producer = Producer {
                id: p as u64 + 1,
                seq: at as u64 + 1,
            };
            client
                .append(
                    &to.job,
                    &to.stream,
                    p as u32,
                    records[at..at + n].to_vec(),
                    Some(producer),
                )
                .await?;
            at += n;
            written += n as u64;
        }
    }
    Ok(written)
}

/// Appends `per_partition` in `steps` growing prefixes, `every` apart, as
/// input that keeps arriving (the demo's and the tests' feed).
pub async fn append_in_steps(
    client: &Client,
    to: &StreamRef,
    per_partition: &[Vec<pb::Record>],
    steps: usize,
    every: std::time::Duration,
) -> Result<(), RuntimeError> {
    let steps = steps.max(1);
    for step in 1..=steps {
        let prefix = per_partition
            .iter()
            .map(|p| p[..p.len() * step / steps].to_vec())
            .collect();
        append_all(client, to, prefix).await?;
        tokio::time::sleep(every).await;
    }
    Ok(())
}

/// One data record of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRecord {
    pub partition: u32,
    pub offset: u64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub event_time: i64,
}

/// Every committed data record of `from` (watermarks skipped), partition
/// by partition, in offset order.
pub async fn read_data(
    client: &Client,
    from: &StreamRef,
    partitions: u32,
) -> Result<Vec<DataRecord>, RuntimeError> {
    let mut out = Vec::new();
    for p in 0..partitions {
        let mut offset = 0;
        loop {
            let page = match client
                .read_stream(&from.job, &from.stream, p, offset, 10_000)
                .await
            {
                Ok(page) => page,
                Err(ClientError::NotFound(_)) => break,
                Err(e) => return Err(e.into()),
            };
            if page.records.is_empty() {
                break;
            }
            offset = page.next_offset;
            for r in page.records {
                match envelope::decode(r.key, r.value) {
                    Ok(Envelope::Data {
                        key,
                        value,
                        event_time,
                    }) => out.push(DataRecord {
                        partition: p,
                        offset: r.offset,
                        key,
                        value,
                        event_time,
                    }),
                    Ok(Envelope::Watermark { .. }) => {}
                    Err(why) => {
                        return Err(RuntimeError::BadRecord {
                            stream: from.label(),
                            partition: p,
                            offset: r.offset,
                            why,
                        })
                    }
                }
            }
        }
    }
    Ok(out)
}

/// What a check of a job's result found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    /// Result records the ground truth implies.
    pub expected: u64,
    /// Result records found.
    pub found: u64,
    /// The first differences (empty: exactly the ground truth).
    pub problems: Vec<String>,
}

impl Verdict {
    pub fn exact(&self) -> bool {
        self.problems.is_empty() && self.found == self.expected
    }

    pub fn problem(&mut self, p: String) {
        if self.problems.len() < 20 {
            self.problems.push(p);
        }
    }
}
