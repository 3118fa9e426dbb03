//! Deleting a stream on a real 3-node cluster, as Kafka deletes a topic:
//! its records go, its subscribers end, a stream made again under its
//! name is a new one (none of the old records, none of the outputs a task
//! staged for the old one), and the job's other streams and state stay.

mod common;

use std::time::Duration;

use common::*;
use streamshield_client::{pb, Consistency, Producer, TaskSessionConfig};
use tonic::Code;

fn record(value: &str) -> pb::Record {
    pb::Record {
        key: Vec::new(),
        value: value.as_bytes().to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_stream_is_gone_and_its_name_makes_a_new_one() {
    let t = TestCluster::start(3, &[]).await;
    let c = t.client();
    c.create_job("feed", 4).await.expect("job");
    c.create_stream("feed", "clicks", 2, 0)
        .await
        .expect("stream");
    c.create_stream("feed", "views", 1, 0)
        .await
        .expect("stream");
    let producer = Some(Producer { id: 5, seq: 1 });
    c.append("feed", "clicks", 0, vec![record("old")], producer)
        .await
        .expect("append");
    c.append("feed", "views", 0, vec![record("v")], None)
        .await
        .expect("append");

    // A task stages an output for clicks and a write; it commits after
    // the stream is deleted and made again.
    let (mut task, _) = c
        .acquire(whole_job_task("feed", 4), TaskSessionConfig::default())
        .await
        .expect("lease");
    task.put("s", "k", "committed").await.unwrap();
    task.emit("clicks", 0, "", "staged for the old stream")
        .await
        .unwrap();
    task.flush().await.unwrap();

    let mut sub = c
        .subscribe("feed", "clicks", 0, 0)
        .await
        .expect("subscribe");
    let first = sub.message().await.unwrap().expect("a page");
    assert_eq!(first.records.len(), 1);

    let names = |s: Vec<pb::StreamSummary>| s.into_iter().map(|s| s.name).collect::<Vec<_>>();
    assert_eq!(
        names(c.list_streams("feed").await.unwrap()),
        ["clicks", "views"]
    );
    c.delete_stream("feed", "clicks").await.expect("delete");
    // Made again at once, with a record: the old subscription must end
    // rather than carry on into the new stream.
    c.create_stream("feed", "clicks", 2, 0)
        .await
        .expect("again");
    let again = c
        .append("feed", "clicks", 0, vec![record("new")], producer)
        .await
        .expect("append");
    assert_eq!(
        (again.base_offset, again.duplicate),
        (0, false),
        "a new stream: the producer's seq is new to it"
    );
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match sub.message().await {
                Ok(Some(page)) => assert!(
                    page.records.is_empty(),
                    "the old subscription got {:?}",
                    page.records
                ),
                other => return other,
            }
        }
    })
    .await
    .expect("the subscription ends");
    assert_eq!(ended.unwrap_err().code(), Code::NotFound);

    task.commit(Vec::new(), Vec::new()).await.expect("commit");
    let kv = c
        .get("feed", "s", "k", Consistency::Linearizable)
        .await
        .unwrap()
        .expect("the epoch's write");
    assert_eq!(kv.value, b"committed");
    let r = c.read_stream("feed", "clicks", 0, 0, 0).await.unwrap();
    let values: Vec<&[u8]> = r.records.iter().map(|r| r.value.as_slice()).collect();
    assert_eq!(
        values,
        [b"new".as_slice()],
        "nor the old records, nor the output staged for the old stream"
    );
    let views = c.read_stream("feed", "views", 0, 0, 0).await.unwrap();
    assert_eq!(views.records.len(), 1, "the other stream stays");

    let e = c.delete_stream("feed", "nope").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let e = c.delete_stream("nojob", "clicks").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
}
