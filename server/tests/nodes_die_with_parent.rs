//! A test's cluster dies with the process that started it, even when that
//! process is killed before any `Drop` runs (a CI timeout, `kill -9`):
//! its nodes are tied to it (`streamshield_client::tied_child`).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use streamshield_client::local::LocalCluster;

/// Where the killed parent lays out its cluster.
const DIR_ENV: &str = "STREAMSHIELD_TIED_TEST_DIR";

/// The parent that gets killed, run by `nodes_die_with_a_killed_parent`
/// (ignored otherwise): starts three nodes from a blocking-pool thread, a
/// thread that retires long before the nodes should die, prints their
/// pids and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by nodes_die_with_a_killed_parent as the process it kills"]
async fn killed_parent() {
    let dir = std::env::var(DIR_ENV).expect("run by nodes_die_with_a_killed_parent");
    let cluster = tokio::task::spawn_blocking(move || {
        let mut c = LocalCluster::layout(
            Path::new(&dir),
            3,
            Path::new(SERVER_BIN),
            &base_args(),
            false,
        )
        .expect("lay out");
        for id in 1..=3 {
            c.start_node(id).expect("start node");
        }
        c
    })
    .await
    .expect("starter");
    let pids: Vec<String> = (1..=3)
        .map(|id| cluster.pid(id).expect("a running node").to_string())
        .collect();
    println!("node pids: {}", pids.join(" "));
    std::future::pending::<()>().await;
}

fn alive(pid: i32) -> bool {
    // A zombie has exited; only its parent's reaping is left.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[test]
fn nodes_die_with_a_killed_parent() {
    let dir = tempfile::Builder::new()
        .prefix("streamshield-tied-")
        .tempdir()
        .expect("temp dir");
    let mut parent = Command::new(std::env::current_exe().expect("this test binary"))
        .args(["--exact", "killed_parent", "--ignored", "--nocapture"])
        .env(DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the parent process");
    let parent_pid = parent.id();
    let out = BufReader::new(parent.stdout.take().expect("its stdout"));
    let pids: Vec<i32> = out
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("node pids: ")
                .map(|p| p.split(' ').map(|n| n.parse().expect("a pid")).collect())
        })
        .unwrap_or_else(|| {
            let _ = parent.kill();
            panic!("the parent printed no node pids")
        });
    assert_eq!(pids.len(), 3);
    assert!(pids.iter().all(|&p| alive(p)), "nodes run: {pids:?}");
    parent.kill().expect("kill -9 the parent");
    parent.wait().expect("reap the parent");

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut left: Vec<i32> = pids.clone();
    while !left.is_empty() && Instant::now() < deadline {
        left.retain(|&p| alive(p));
        std::thread::sleep(Duration::from_millis(20));
    }
    for &p in &left {
        // Leave nothing behind, then fail.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    // The parent's port reservations (`LocalCluster`'s registry), which
    // its `Drop` never gave back.
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir().join("streamshield-ports")) {
        for e in entries.flatten() {
            if std::fs::read_to_string(e.path()).is_ok_and(|s| s.trim() == parent_pid.to_string()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    assert!(
        left.is_empty(),
        "nodes {left:?} outlived their killed parent by 30 s"
    );
}
