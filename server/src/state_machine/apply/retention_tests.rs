//! Unit tests of a stream's retention by age (`StreamCreate.retention_ms`)
//! through the apply path: the entries' leader time decides, on every
//! replica alike.

use streamshield_proto::v1::{self as pb, command, command_response};

use super::fixture::Fixture;
use super::task_tests::stream_records as stored;

fn create(f: &mut Fixture, retention_bytes: u64, retention_ms: u64) {
    let r = f.apply(pb::Command {
        kind: Some(command::Kind::CreateStream(pb::StreamCreate {
            job: "j".into(),
            stream: "log".into(),
            partitions: 1,
            retention_bytes,
            retention_ms,
        })),
    });
    assert!(
        matches!(r.kind, Some(command_response::Kind::StreamCreated(_))),
        "{r:?}"
    );
}

fn append(f: &mut Fixture, values: &[&str]) {
    let r = f.apply(pb::Command {
        kind: Some(command::Kind::Append(pb::StreamAppend {
            principal: String::new(),
            job: "j".into(),
            stream: "log".into(),
            partition: 0,
            records: values
                .iter()
                .map(|v| pb::StreamEntry {
                    key: Vec::new(),
                    value: v.as_bytes().to_vec(),
                })
                .collect(),
            producer_id: 0,
            producer_seq: 0,
        })),
    });
    assert!(
        matches!(r.kind, Some(command_response::Kind::Appended(_))),
        "{r:?}"
    );
}

#[test]
fn records_older_than_the_retention_go_as_new_ones_come() {
    let mut f = Fixture::new();
    create(&mut f, 0, 1_000);
    f.time_ms = 10_000;
    append(&mut f, &["a", "b"]);
    f.time_ms = 10_500;
    append(&mut f, &["c"]);
    // 1,000 ms after the first: "a" and "b" are exactly at the limit, kept.
    f.time_ms = 11_000;
    append(&mut f, &["d"]);
    assert_eq!(stored(&f).len(), 4);
    // Past it for the first two, not for "c".
    f.time_ms = 11_200;
    append(&mut f, &["e"]);
    let left: Vec<(u64, String)> = stored(&f);
    assert_eq!(
        left,
        [(2, "c".into()), (3, "d".into()), (4, "e".into())],
        "offsets are kept; only the old records go"
    );
    // A leader whose clock is behind trims nothing it should not.
    f.time_ms = 9_000;
    append(&mut f, &["f"]);
    assert_eq!(stored(&f).len(), 4);
}

#[test]
fn retention_by_age_and_by_bytes_each_trim_and_a_stream_without_either_keeps_all() {
    let mut f = Fixture::new();
    // Three bytes at most, and one second.
    create(&mut f, 3, 1_000);
    f.time_ms = 5_000;
    append(&mut f, &["a", "b"]);
    append(&mut f, &["c", "d"]);
    let by_bytes: Vec<String> = stored(&f).into_iter().map(|(_, v)| v).collect();
    assert_eq!(by_bytes, ["b", "c", "d"]);
    f.time_ms = 7_000;
    append(&mut f, &["e"]);
    let by_age: Vec<String> = stored(&f).into_iter().map(|(_, v)| v).collect();
    assert_eq!(by_age, ["e"]);

    let mut g = Fixture::new();
    create(&mut g, 0, 0);
    for t in [1_000, 1_000_000, 1_000_000_000] {
        g.time_ms = t;
        append(&mut g, &["x"]);
    }
    assert_eq!(stored(&g).len(), 3);
}
