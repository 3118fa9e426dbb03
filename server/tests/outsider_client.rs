//! A client that shares no code with this repository attacks a real
//! cluster: `interop/python/outsider.py`, its stubs generated from
//! `proto/` by grpcio-tools (its own protoc), sends extreme integers, enum
//! values no version knows, requests far past the limits and bytes that
//! are not a message, and checks each status, that nothing changed and
//! that every node still answers. It found the unbounded tables of a job
//! (`keys::MAX_TABLES`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the server crate is in the workspace")
        .to_path_buf()
}

/// A Python with the pinned grpcio-tools: a virtualenv in the target
/// directory, made again when the pins change.
fn python() -> PathBuf {
    let pins = repo().join("interop/python/requirements.txt");
    let wanted = std::fs::read_to_string(&pins).expect("interop/python/requirements.txt");
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("interop-venv");
    let python = venv.join("bin/python");
    let stamp = venv.join("installed-requirements.txt");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&wanted) {
        return python;
    }
    let _ = std::fs::remove_dir_all(&venv);
    let run = |cmd: &mut Command, what: &str| {
        let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed (make deps installs python3 and python3-venv):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv",
    );
    run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&pins),
        "pip install -r interop/python/requirements.txt",
    );
    std::fs::write(&stamp, wanted).expect("stamp the virtualenv");
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_generated_from_the_protos_in_python_gets_each_status_it_should() {
    let python = tokio::task::spawn_blocking(python).await.expect("python");
    let t = TestCluster::start(3, &[]).await;
    t.wait_for_leader(Duration::from_secs(10)).await;
    let endpoints = [1, 2, 3].map(|id| t.addr(id)).join(",");
    let out = tokio::process::Command::new(python)
        .arg(repo().join("interop/python/outsider.py"))
        .arg("--proto-dir")
        .arg(repo().join("proto/proto"))
        .args(["--endpoints", &endpoints])
        .kill_on_drop(true)
        .output()
        .await
        .expect("run outsider.py");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(
        out.status.success(),
        "outsider.py: {}\n{report}",
        out.status
    );
    assert!(report.contains("every case got its status"), "{report}");
}
