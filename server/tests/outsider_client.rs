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
/// directory, made again when the pins change; once per test process,
/// whichever test asks first.
fn python() -> PathBuf {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON.get_or_init(make_virtualenv).clone()
}

fn make_virtualenv() -> PathBuf {
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

/// Runs outsider.py against `t` with `args`; panics with its report unless
/// every case got its status.
async fn outsider(t: &TestCluster, args: &[&std::ffi::OsStr]) {
    let python = tokio::task::spawn_blocking(python).await.expect("python");
    t.wait_for_leader(Duration::from_secs(10)).await;
    let endpoints = [1, 2, 3].map(|id| t.addr(id)).join(",");
    let out = tokio::process::Command::new(python)
        .arg(repo().join("interop/python/outsider.py"))
        .arg("--proto-dir")
        .arg(repo().join("proto/proto"))
        .args(["--endpoints", &endpoints])
        .args(args)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_generated_from_the_protos_in_python_gets_each_status_it_should() {
    let t = TestCluster::start(3, &[]).await;
    outsider(&t, &[]).await;
}

/// Over TLS, as a Python client meets it: no credentials, a token the
/// cluster never made and another scheme than Bearer are UNAUTHENTICATED;
/// a token made by the admin is its principal, held to its grants, and
/// never reaches the Raft service.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_python_client_over_tls_authenticates_with_a_token_and_is_held_to_its_grants() {
    let t = TestCluster::start_with(3, &[], |c| c.enable_tls().expect("certificates")).await;
    let tls = t.dir.path().join("tls");
    outsider(&t, &["--tls-dir".as_ref(), tls.as_os_str()]).await;
}
