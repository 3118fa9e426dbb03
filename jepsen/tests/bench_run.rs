//! The benchmark driver end to end: real StreamShield and etcd clusters
//! started by the CLI, and its last line is the JSON contract scripts rely
//! on. Needs Debian's etcd-server (`make test` installs it).

use std::process::Command;

use serde_json::Value;

fn bench(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_streamshield-jepsen"))
        .arg("bench")
        .args(args)
        .output()
        .expect("run streamshield-jepsen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench {args:?} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().expect("some output");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {last}"))
}

fn assert_contract(v: &Value, workload: &str, target: &str, clients: u64) {
    for field in [
        "workload",
        "target",
        "clients",
        "ops",
        "ops_per_s",
        "p50_us",
        "p99_us",
        "errors",
    ] {
        assert!(v.get(field).is_some(), "{field} missing in {v}");
    }
    assert_eq!(v["workload"], workload);
    assert_eq!(v["target"], target);
    assert_eq!(v["clients"], clients);
    assert!(v["ops"].as_u64().unwrap() > 0, "no operation finished: {v}");
    assert_eq!(v["errors"], 0, "{v}");
    let (p50, p99) = (v["p50_us"].as_u64().unwrap(), v["p99_us"].as_u64().unwrap());
    assert!(p50 > 0 && p50 <= p99, "{v}");
}

#[test]
fn sync_put_runs_on_both_targets_side_by_side() {
    let v = bench(&[
        "--workload",
        "sync-put",
        "--target",
        "both",
        "--clients",
        "4",
        "--seconds",
        "1",
        "--warmup",
        "0",
        "--keys",
        "100",
        "--value-size",
        "64",
    ]);
    assert_contract(&v, "sync-put", "streamshield", 4);
    assert_contract(&v["baseline"], "sync-put", "etcd", 4);
    let ratio = v["ratio_ops_per_s"].as_f64().unwrap();
    let expected = v["ops_per_s"].as_f64().unwrap() / v["baseline"]["ops_per_s"].as_f64().unwrap();
    assert!((ratio - expected).abs() < 1e-9, "{v}");
}

#[test]
fn stale_and_linearizable_reads_find_preloaded_keys() {
    for consistency in ["stale", "linearizable"] {
        let v = bench(&[
            "--workload",
            "get",
            "--consistency",
            consistency,
            "--clients",
            "2",
            "--seconds",
            "1",
            "--warmup",
            "0",
            "--keys",
            "50",
        ]);
        assert_contract(&v, &format!("get-{consistency}"), "streamshield", 2);
    }
}

#[test]
fn limits_measure_fsync_and_round_trip() {
    let v = bench(&["--workload", "limits", "--seconds", "1"]);
    let fsync = v["p50_us"].as_u64().unwrap();
    let rtt = v["grpc_rtt_p50_us"].as_u64().unwrap();
    assert!(fsync > 0 && rtt > 0, "{v}");
    assert_eq!(v["sync_put_floor_us"].as_u64().unwrap(), fsync + 2 * rtt);
    assert!(v["shared_disk_fsync_p50_us"].as_u64().unwrap() > 0, "{v}");
}
