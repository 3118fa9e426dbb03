//! A backlog larger than one commit may carry: the word count started on
//! 90,000 words at once (one split task, so its first epochs would emit
//! far more than the store's 10,000 output records per commit) cuts its
//! epochs early and comes out exact.

mod common;

use streamshield_runtime::examples::wordcount;
use streamshield_runtime::source::append_all;

use common::{config, source, word_counts, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_beyond_one_commit_is_cut_into_epochs_and_stays_exact() {
    let c = Cluster::start().await;
    let job = wordcount::job();
    let cfg = config(
        wordcount::NAME,
        "wc-backlog",
        &[("split", 1), ("count", 2)],
        0,
    );
    let (lines, seed) = (20_000, 29);
    job.setup(&c.client, &cfg).await.expect("setup");
    append_all(
        &c.client,
        &source(&job, &cfg),
        wordcount::input(&cfg, lines, seed),
    )
    .await
    .expect("write the input");
    let sup = c.supervise(&job, cfg.clone()).await;
    let v = word_counts(&c, &job, &cfg, lines, seed).await;
    assert!(v.exact(), "{v:?}");
    let status = sup.status().await.expect("status");
    assert!(
        status.tasks.iter().all(|t| t.restarts == 0),
        "no task failed on an oversized commit: {status:?}"
    );
    sup.stop().await;
}
