//! A supervisor that dies, even by `kill -9`, leaves no worker behind:
//! each worker sees its stdin (the supervisor's end of the pipe) close and
//! exits, so no task runs on with nobody to replace or stop it.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use streamshield_client::local::pid_alive;

/// The processes whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // The field after the parenthesised command name is the state,
            // then the parent's pid.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = &s[s.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// Kills the supervisor however the test ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_supervisor_leaves_no_worker_behind() {
    let c = Cluster::start().await;
    let toml = c.dir.path().join("orphans.toml");
    std::fs::write(
        &toml,
        "job = \"windowed-sum\"\nname = \"orphans\"\nstandbys = 1\n[parallelism]\nwindow = 2\n",
    )
    .expect("job file");
    let mut supervisor = Reaped(
        Command::new(RUNTIME_BIN)
            .arg("run")
            .arg(&toml)
            .arg("--endpoints")
            .arg(c.endpoints.join(","))
            // Its status file goes to the test's directory.
            .current_dir(c.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the supervisor"),
    );
    // Two task workers and a standby.
    let deadline = Instant::now() + Duration::from_secs(60);
    let workers = loop {
        let w = children(supervisor.0.id());
        if w.len() >= 3 {
            break w;
        }
        assert!(
            Instant::now() < deadline,
            "the supervisor started {} workers",
            w.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    supervisor.0.kill().expect("kill -9 the supervisor");
    supervisor.0.wait().expect("reap the supervisor");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alive: Vec<u32> = workers
            .iter()
            .copied()
            .filter(|pid| pid_alive(*pid as i32))
            .collect();
        if alive.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            for pid in &alive {
                signal(*pid, libc::SIGKILL);
            }
            panic!("workers {alive:?} outlived their supervisor by 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
