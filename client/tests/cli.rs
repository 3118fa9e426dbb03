//! The `streamshield` CLI end to end, as a user runs it: `local up`, jobs,
//! put/get/scan, `status --json`, a 4th node added with `members add`,
//! errors with their messages, `local down`. Real server processes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const CLI: &str = env!("CARGO_BIN_EXE_streamshield");

/// The server binary cargo built next to the CLI.
fn server_bin() -> PathBuf {
    let p = Path::new(CLI).with_file_name("streamshield-server");
    assert!(
        p.is_file(),
        "build the server first: {} is missing",
        p.display()
    );
    p
}

fn cli(args: &[&str]) -> Output {
    Command::new(CLI)
        .args(args)
        .env("STREAMSHIELD_SERVER_BIN", server_bin())
        .env_remove("STREAMSHIELD_ENDPOINTS")
        .output()
        .expect("run the CLI")
}

fn ok(args: &[&str]) -> String {
    let out = cli(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    serde_json::from_str(ok(&a).trim()).expect("one JSON document")
}

/// Stops the cluster however the test ends.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = cli(&["local", "down", "--dir", self.0.to_str().unwrap()]);
    }
}

#[test]
fn a_user_session_with_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ss");
    let d = dir.to_str().unwrap();
    let _down = Down(dir.clone());

    ok(&["local", "up", "--nodes", "3", "--dir", d]);
    let endpoints = std::fs::read_to_string(dir.join("endpoints"))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(endpoints.split(',').count(), 3);
    let pids: Vec<i32> = (1..=3)
        .map(|i| {
            std::fs::read_to_string(dir.join(format!("node-{i}.pid")))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(dir.join("node-1.log").exists());
    let e = ["--endpoints", endpoints.as_str()];
    let with =
        |rest: &[&str]| -> Vec<String> { e.iter().chain(rest).map(|s| s.to_string()).collect() };
    let run = |rest: &[&str]| ok(&with(rest).iter().map(String::as_str).collect::<Vec<_>>());
    let run_json = |rest: &[&str]| json(&with(rest).iter().map(String::as_str).collect::<Vec<_>>());

    run(&["jobs", "create", "myjob", "--key-groups", "128"]);
    assert!(run(&["put", "myjob", "counts", "user42", "17"]).starts_with("OK"));
    assert_eq!(run(&["get", "myjob", "counts", "user42"]).trim(), "17");
    // A stale read may go to a follower that has not applied the write
    // (or the job) yet; it converges.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = cli(
            &with(&["get", "myjob", "counts", "user42", "--stale", "--json"])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        let seen: Option<Value> = serde_json::from_slice(&out.stdout).ok();
        if out.status.success() && seen.as_ref().is_some_and(|v| v["kv"]["value"] == "17") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a stale read never saw user42 = 17"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    run(&["put", "myjob", "counts", "user43", "18"]);
    run(&["put", "myjob", "counts", "other", "1"]);
    let scan = run_json(&[
        "scan", "myjob", "counts", "--prefix", "user", "--limit", "100",
    ]);
    let keys: Vec<&str> = scan["kvs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| kv["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, vec!["user42", "user43"]);
    let described = run_json(&["jobs", "describe", "myjob"]);
    assert_eq!(described["states"][0]["name"], "counts");

    // Streams: create, append (a producer's retry appends nothing twice),
    // describe, tail.
    run(&["streams", "create", "myjob", "clicks", "--partitions", "2"]);
    // The same producer id and seq twice: a retry after an unknown outcome.
    let append_seq_1 = || {
        run_json(&[
            "streams",
            "append",
            "myjob",
            "clicks",
            "--partition",
            "1",
            "--record-key",
            "u1",
            "home",
            "--producer-id",
            "9",
            "--producer-seq",
            "1",
        ])
    };
    let first = append_seq_1();
    assert_eq!(
        (first["offset"].as_u64(), first["duplicate"].as_bool()),
        (Some(0), Some(false))
    );
    let retry = append_seq_1();
    assert_eq!(retry["duplicate"].as_bool(), Some(true));
    run(&[
        "streams",
        "append",
        "myjob",
        "clicks",
        "--partition",
        "1",
        "cart",
    ]);
    let described = run_json(&["streams", "describe", "myjob", "clicks"]);
    assert_eq!(described["partition_info"][1]["end_offset"], 2);
    assert_eq!(described["partition_info"][0]["end_offset"], 0);
    let tail = run(&[
        "streams",
        "tail",
        "myjob",
        "clicks",
        "--partition",
        "1",
        "--from",
        "0",
        "--max",
        "2",
    ]);
    assert_eq!(tail.lines().collect::<Vec<_>>(), ["0\tu1\thome", "1\tcart"]);
    run(&["streams", "create", "myjob", "scratch", "--partitions", "1"]);
    let listed = run_json(&["streams", "list", "myjob"]);
    let streams: Vec<&str> = listed["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stream"].as_str().unwrap())
        .collect();
    assert_eq!(streams, ["clicks", "scratch"]);
    assert!(run(&["streams", "delete", "myjob", "scratch"]).contains("deleted stream scratch"));
    assert_eq!(
        run_json(&["streams", "list", "myjob"])["streams"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let tasks = run_json(&["tasks", "myjob"]);
    assert_eq!(
        tasks["tasks"].as_array().map(Vec::len),
        Some(0),
        "no task took a lease"
    );

    // Jobs listed; one deleted with its state and streams.
    run(&["jobs", "create", "scratch", "--key-groups", "4"]);
    run(&["put", "scratch", "t", "k", "v"]);
    // A table that places keys by a length-prefixed placement key.
    let declared = run_json(&[
        "jobs",
        "set-mode",
        "scratch",
        "entries",
        "async",
        "--placement",
        "prefix",
    ]);
    let entries = declared["states"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "entries")
        .unwrap()
        .clone();
    assert_eq!(entries["placement"], "prefix", "{declared}");
    assert!(run(&["jobs", "describe", "scratch"]).contains("entries (async, prefix-placed)"));
    let moved = cli(&with(&[
        "jobs",
        "set-mode",
        "scratch",
        "t",
        "sync",
        "--placement",
        "prefix",
    ])
    .iter()
    .map(String::as_str)
    .collect::<Vec<_>>());
    assert!(
        !moved.status.success(),
        "an existing table's placement is fixed"
    );
    let listed = run_json(&["jobs", "list"]);
    let names: Vec<&str> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["myjob", "scratch"]);
    assert!(run(&["jobs", "list"]).contains("scratch"));
    let deleted = run_json(&["jobs", "delete", "scratch"]);
    assert!(deleted["job_id"].as_u64().is_some(), "{deleted}");
    assert_eq!(
        run_json(&["jobs", "list"])["jobs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let gone = cli(&with(&["get", "scratch", "t", "k"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("not found"));

    let status = run_json(&["status"]);
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for n in nodes {
        for field in ["id", "addr", "role", "term", "leader_id", "last_applied"] {
            assert!(!n[field].is_null(), "status lacks {field}: {n}");
        }
    }
    assert_eq!(nodes.iter().filter(|n| n["role"] == "leader").count(), 1);

    // Errors are precise and change nothing.
    let bad = cli(&with(&["put", "nojob", "counts", "k", "v"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("not found") && stderr.contains("nojob"),
        "{stderr}"
    );
    let missing = cli(&with(&["get", "myjob", "counts", "nobody"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert_eq!(missing.status.code(), Some(1));
    let cas = cli(
        &with(&["put", "myjob", "counts", "user42", "99", "--if-value", "16"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(cas.status.code(), Some(3), "condition failure exit code");
    assert_eq!(run(&["get", "myjob", "counts", "user42"]).trim(), "17");

    // A backup, and a second cluster started from it.
    let saved = tmp.path().join("backup");
    let saved_json = run_json(&["snapshot", "--save", saved.to_str().unwrap()]);
    assert!(saved_json["index"].as_u64().unwrap() > 0, "{saved_json}");
    let restored = tmp.path().join("restored");
    let _down_restored = Down(restored.clone());
    ok(&[
        "local",
        "up",
        "--nodes",
        "3",
        "--dir",
        restored.to_str().unwrap(),
        "--restore-from",
        saved.to_str().unwrap(),
    ]);
    let restored_endpoints = std::fs::read_to_string(restored.join("endpoints")).unwrap();
    let from_backup = ok(&[
        "--endpoints",
        restored_endpoints.trim(),
        "get",
        "myjob",
        "counts",
        "user42",
    ]);
    assert_eq!(from_backup.trim(), "17");
    ok(&["local", "down", "--dir", restored.to_str().unwrap()]);

    // A fourth node: started empty, added as learner, promoted to voter.
    let added = json(&["local", "add-node", "--dir", d, "--id", "4"]);
    let addr = added["addr"].as_str().unwrap().to_string();
    let members = run_json(&["members", "add", "4", &addr]);
    let voters = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["voter"] == true)
        .count();
    assert_eq!(voters, 4);
    // A stale read on node 4 is allowed to lag; it converges.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = cli(&[
            "--endpoints",
            &addr,
            "--json",
            "get",
            "myjob",
            "counts",
            "user43",
            "--stale",
        ]);
        let seen: Option<Value> = serde_json::from_slice(&out.stdout).ok();
        if out.status.success() && seen.as_ref().is_some_and(|v| v["kv"]["value"] == "18") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node 4 never served user43"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = run_json(&["status"]);
    assert_eq!(status["nodes"].as_array().unwrap().len(), 4);

    // A killed node shows up as unreachable, and the rest keep serving.
    ok(&["local", "kill", "--dir", d, "--id", "1"]);
    let status = run_json(&["status"]);
    assert!(status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["role"] == "unreachable"));
    run(&["put", "myjob", "counts", "after", "kill"]);

    ok(&["local", "down", "--dir", d]);
    for pid in pids {
        assert!(
            !streamshield_client::local::pid_alive(pid),
            "pid {pid} still running after local down"
        );
    }
}

#[test]
fn a_tls_cluster_with_etcdctl_style_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ss");
    let d = dir.to_str().unwrap();
    let _down = Down(dir.clone());

    ok(&["local", "up", "--nodes", "3", "--tls", "--dir", d]);
    let tls = dir.join("tls");
    for f in [
        "ca.pem",
        "admin.pem",
        "admin-key.pem",
        "node-1.pem",
        "node-1-key.pem",
    ] {
        assert!(tls.join(f).is_file(), "{f} missing");
    }
    let endpoints = std::fs::read_to_string(dir.join("endpoints"))
        .unwrap()
        .trim()
        .to_string();
    let path = |f: &str| tls.join(f).display().to_string();
    let (ca, cert, key) = (path("ca.pem"), path("admin.pem"), path("admin-key.pem"));
    let ok_certs = |rest: &[&str]| {
        let mut a = vec![
            "--endpoints",
            endpoints.as_str(),
            "--cacert",
            ca.as_str(),
            "--cert",
            cert.as_str(),
            "--key",
            key.as_str(),
        ];
        a.extend_from_slice(rest);
        ok(&a)
    };
    ok_certs(&["jobs", "create", "myjob", "--key-groups", "16"]);
    ok_certs(&["put", "myjob", "counts", "user42", "17"]);
    assert_eq!(ok_certs(&["get", "myjob", "counts", "user42"]).trim(), "17");
    let status: Value = serde_json::from_str(ok_certs(&["status", "--json"]).trim()).unwrap();
    assert_eq!(
        status["nodes"].as_array().map(|n| n.len()),
        Some(3),
        "{status}"
    );

    // The same from the environment, as etcdctl's ETCDCTL_* variables.
    let out = Command::new(CLI)
        .args([
            "--endpoints",
            &endpoints,
            "get",
            "myjob",
            "counts",
            "user42",
        ])
        .env("STREAMSHIELD_CACERT", &ca)
        .env("STREAMSHIELD_CERT", &cert)
        .env("STREAMSHIELD_KEY", &key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Trusting the CA without a certificate of its own: refused, with why.
    let out = cli(&[
        "--endpoints",
        &endpoints,
        "--cacert",
        &ca,
        "--timeout",
        "3",
        "get",
        "myjob",
        "counts",
        "user42",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("client certificate"), "{err}");
    // --cert without --key is a usage error.
    let out = cli(&[
        "--endpoints",
        &endpoints,
        "--cacert",
        &ca,
        "--cert",
        &cert,
        "status",
    ]);
    assert!(!out.status.success());
}
