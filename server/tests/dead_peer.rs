//! A leader whose follower is dead keeps serving without spinning: it
//! dials the dead peer at a paced rate, not in a loop, and the follower
//! catches up once it is back.
//!
//! openraft backs off from an unreachable peer only inside the request
//! stream it hands the transport, which nobody polls when the connection
//! itself is refused; without the transport's own pacing the leader
//! re-dialled at once, forever (`network::Redial`).

mod common;

use std::time::{Duration, Instant};

use common::*;

/// CPU time (user + system) of process `pid` so far, from `/proc`.
fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the leader's stat");
    // Fields after the command name, which sits in parentheses and may
    // hold spaces: utime and stime are the 12th and 13th of them.
    let rest = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    Duration::from_millis(ticks * 10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_follower_is_redialled_at_a_paced_rate() {
    let (mut t, _) = TestCluster::with_keys(3, "dead", 16, 0..50, 4).await;

    let (follower, rest) = t.pick_follower().await;
    let leader = t.wait_for_leader(Duration::from_secs(10)).await;
    let leader_pid = t.cluster.pid(leader).expect("the leader runs");
    let metrics = t.cluster.spec(leader).expect("node").metrics_addr.clone();
    let series = format!("streamshield_peer_stream_open_failures_total{{peer=\"{follower}\"}}");
    t.cluster.kill(follower).expect("kill a follower");

    // The leader keeps committing with the other follower meanwhile.
    let survivors = t.client_of(&rest);
    write_keys(&survivors, "dead", "s", 50..60, 2).await;

    let window = Duration::from_secs(3);
    let (cpu_before, failures_before) = (cpu_time(leader_pid), metric_value(&metrics, &series));
    let started = Instant::now();
    while started.elapsed() < window {
        // Work the leader must do anyway, so that it is not merely idle.
        write_keys(&survivors, "dead", "s", 60..62, 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let busy = cpu_time(leader_pid) - cpu_before;
    let failures = metric_value(&metrics, &series) - failures_before;
    let elapsed = started.elapsed();
    println!("dead follower: leader CPU {busy:?} in {elapsed:?}, {failures} failed dials");
    // Re-dialling at once kept a whole core busy (about 0.9 s of CPU per
    // second); paced, a few heartbeats' worth of work remains. Half a core
    // leaves room for a slow debug build on a loaded machine.
    assert!(
        busy < elapsed / 2,
        "the leader used {busy:?} of CPU in {elapsed:?} with a dead follower"
    );
    // At most one attempt per 20 ms even at the start of the backoff;
    // 100 ms apart once it has grown.
    assert!(
        (1..=(elapsed.as_millis() / 20) as u64).contains(&failures),
        "{failures} failed dials of the dead follower in {elapsed:?}"
    );

    // Back, it is dialled again within the backoff and catches up.
    t.cluster
        .start_node(follower)
        .expect("restart the follower");
    let target = t.leader_status().await.expect("a leader").last_log_index;
    t.wait_applied(follower, target, Duration::from_secs(30))
        .await;
}
