//! A node whose disk fails a write or an fsync stops, with a clear message
//! and a non-zero exit, instead of limping on (its Raft core used to stop
//! while the process stayed up and its health check said `SERVING` for
//! ever). The other nodes serve on with every acknowledged write.
//!
//! Faults come from libfiu (Debian's `fiu-utils`, installed by `make
//! deps`): the node runs under `fiu-run -x`, which preloads wrappers of the
//! POSIX I/O calls, and `fiu-ctrl` makes them fail on a running process.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use streamshield_client::Consistency;

fn fiu_tool(name: &str) -> PathBuf {
    let path = Path::new("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: install Debian's fiu-utils (`make deps` does)",
        path.display()
    );
    path
}

/// Makes the failure points `names` of process `pid` fail with `errno`.
fn inject(fifo: &Path, pid: i32, names: &[&str], errno: i32) {
    for name in names {
        let out = Command::new(fiu_tool("fiu-ctrl"))
            .arg("-f")
            .arg(fifo)
            .arg("-c")
            .arg(format!("enable name={name},failinfo={errno}"))
            .arg(pid.to_string())
            .output()
            .expect("run fiu-ctrl");
        assert!(
            out.status.success(),
            "fiu-ctrl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Starts a cluster whose nodes all run under `fiu-run` (nothing fails
/// until told), fails `names` with `errno` on a follower under writes,
/// and checks that it exits saying `expect_in_log` while the others keep
/// every acknowledged write and go on.
async fn a_follower_whose_disk_fails_exits(names: &[&str], errno: i32, expect_in_log: &str) {
    let fifo_dir = tempfile::tempdir().expect("fifo dir");
    let fifo = fifo_dir.path().join("fiu-ctrl");
    let mut t = TestCluster::start_with(3, &[], |c| {
        for id in 1..=3 {
            c.set_node_wrapper(
                id,
                vec![
                    fiu_tool("fiu-run").display().to_string(),
                    "-x".into(),
                    "-f".into(),
                    fifo.display().to_string(),
                ],
            );
        }
    })
    .await;
    let client = t.client();
    client.create_job("j", 8).await.expect("create job");
    write_keys(&client, "j", "s", 0..200, 4).await;
    let (victim, rest) = t.pick_follower().await;
    let pid = t.cluster.pid(victim).expect("victim pid");

    inject(&fifo, pid, names, errno);
    // Writes go on; the victim's next log write or fsync fails.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut next = 200;
    let status = loop {
        write_keys(&client, "j", "s", next..next + 50, 4).await;
        next += 50;
        if let Some(status) = t.cluster.exit_status(victim).expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "node {victim} still runs 60 s after its disk started failing"
        );
    };
    assert!(!status.success(), "node {victim} exited with {status}");
    let log = std::fs::read_to_string(t.cluster.log_path(victim)).expect("victim log");
    assert!(
        log.contains("this node can no longer serve") && log.contains(expect_in_log),
        "node {victim}'s log does not say why it stopped ({expect_in_log:?}):\n{}",
        log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );

    // Nothing acknowledged is lost, and the two others go on.
    write_keys(&client, "j", "s", next..next + 50, 4).await;
    next += 50;
    let survivors = t.client_of(&rest);
    let all = survivors
        .scan_all("j", "s", b"", Consistency::Linearizable)
        .await
        .expect("scan");
    assert_exact(&all, 0..next);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_fsync_ends_the_node() {
    a_follower_whose_disk_fails_exits(&["posix/io/sync/*"], libc::EIO, "Input/output error").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_ends_the_node() {
    // pwrite is what the Raft log's segments are written with; the node's
    // own log lines (write) still reach its log file.
    a_follower_whose_disk_fails_exits(
        &["posix/io/rw/pwrite", "posix/io/rw/pwritev"],
        libc::ENOSPC,
        "No space left on device",
    )
    .await;
}
