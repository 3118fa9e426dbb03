//! Conditional writes are atomic compare-and-set: of many concurrent
//! increments of one counter, exactly the acknowledged ones took effect,
//! and a batch whose condition fails writes nothing.

mod common;

use common::*;
use streamshield_client::{ClientError, Consistency, WriteBatch};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cas_increments_count_exactly() {
    let t = TestCluster::start(3, &[]).await;
    let client = t.client();
    client.create_job("cas", 8).await.expect("create job");
    client
        .compare_and_swap("cas", "c", b"counter", None, "0")
        .await
        .expect("initialise");

    let mut tasks = Vec::new();
    for _ in 0..8 {
        // Separate clients: separate client ids and sequence spaces.
        let c = t.client();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut conflicts, mut unknown) = (0u64, 0u64, 0u64);
            for _ in 0..40 {
                let cur = c
                    .get("cas", "c", b"counter".to_vec(), Consistency::Linearizable)
                    .await
                    .expect("get")
                    .expect("present");
                let n: u64 = String::from_utf8(cur.value.clone())
                    .unwrap()
                    .parse()
                    .unwrap();
                match c
                    .compare_and_swap(
                        "cas",
                        "c",
                        b"counter",
                        Some(&cur.value),
                        (n + 1).to_string(),
                    )
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(ClientError::ConditionFailed { .. }) => conflicts += 1,
                    Err(ClientError::Unavailable { .. } | ClientError::DeadlineExceeded(_)) => {
                        unknown += 1
                    }
                    Err(e) => panic!("unexpected error {e}"),
                }
            }
            (ok, conflicts, unknown)
        }));
    }
    let (mut ok, mut conflicts, mut unknown) = (0, 0, 0);
    for task in tasks {
        let (o, c, u) = task.await.expect("task");
        ok += o;
        conflicts += c;
        unknown += u;
    }
    let final_value: u64 = String::from_utf8(
        client
            .get("cas", "c", b"counter".to_vec(), Consistency::Linearizable)
            .await
            .expect("get")
            .expect("present")
            .value,
    )
    .unwrap()
    .parse()
    .unwrap();
    assert_eq!(ok + conflicts + unknown, 320);
    assert!(ok > 0, "some increments must win");
    // A healthy cluster leaves no outcome unknown; were there any, they
    // could have applied, and only those.
    assert!(
        final_value >= ok && final_value <= ok + unknown,
        "counter {final_value}, acknowledged {ok}, unknown {unknown}"
    );
    assert_eq!(unknown, 0, "no faults were injected");
    assert_eq!(final_value, ok);

    // A failing condition writes nothing, not even the ops before it.
    let err = client
        .write(
            WriteBatch::new("cas")
                .put("c", "side", "effect")
                .if_version("c", "counter", 9999)
                .put("c", "counter", "bogus"),
        )
        .await
        .expect_err("condition must fail");
    match err {
        ClientError::ConditionFailed {
            failed_condition,
            current,
        } => {
            assert_eq!(failed_condition, 0);
            assert_eq!(
                current.expect("counter exists").value,
                final_value.to_string().into_bytes()
            );
        }
        e => panic!("expected ConditionFailed, got {e}"),
    }
    let side = client
        .get("cas", "c", b"side".to_vec(), Consistency::Linearizable)
        .await
        .expect("get");
    assert!(side.is_none(), "no partial write");
}
