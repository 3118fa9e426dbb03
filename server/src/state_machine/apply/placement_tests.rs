//! Tables that place keys by a length-prefixed placement key
//! (`KeyPlacement::Prefix`): where their keys go, which keys they refuse,
//! and that a table's placement never changes once it exists.

use streamshield_proto::v1::{self as pb, command, command_response, KeyPlacement};
use streamshield_proto::{key_group, prefixed_key};
use tonic::Code;

use super::fixture::Fixture;
use super::task_tests::{acquire, commit, granted, lease, refused, stage, staged_keys};
use crate::state_machine::meta::load_job;

const GROUPS: u32 = 4;

fn declare(f: &mut Fixture, state: &str, placement: Option<KeyPlacement>) -> pb::CommandResponse {
    f.apply(pb::Command {
        kind: Some(command::Kind::SetTableMode(pb::TableModeSet {
            job: "j".into(),
            state: state.into(),
            mode: pb::WriteMode::Async as i32,
            placement: placement.map(|p| p as i32),
        })),
    })
}

fn code(r: &pb::CommandResponse) -> Option<Code> {
    match &r.kind {
        Some(command_response::Kind::Error(e)) => Some(Code::from_i32(e.code)),
        _ => None,
    }
}

fn placement_of(f: &Fixture, state: &str) -> i32 {
    let job = load_job(&f.db, 0, "j").unwrap().unwrap();
    job.states
        .iter()
        .find(|t| t.name == state)
        .unwrap()
        .placement
}

fn put(key: Vec<u8>, value: &str) -> pb::StagedOp {
    pb::StagedOp {
        state: "s".into(),
        key,
        kind: Some(pb::staged_op::Kind::Put(value.as_bytes().to_vec())),
    }
}

/// A placement key in key group `group`.
fn placement_key_in(group: u16) -> Vec<u8> {
    (0u32..)
        .map(|i| format!("user-{i}").into_bytes())
        .find(|k| key_group(k, GROUPS) == group)
        .unwrap()
}

#[test]
fn a_placement_keys_entries_live_in_its_key_group_whatever_their_whole_key_hashes_to() {
    let mut f = Fixture::new();
    assert_eq!(
        code(&declare(&mut f, "s", Some(KeyPlacement::Prefix))),
        None
    );
    let user = placement_key_in(2);
    let entries: Vec<Vec<u8>> = (0..32)
        .map(|i| prefixed_key(&user, format!("window-{i}").as_bytes()))
        .collect();
    // Placed by the whole key, most of them would be another task's.
    assert!(entries.iter().any(|k| key_group(k, GROUPS) != 2));
    let g = granted(&acquire(&mut f, 0, (2, 3), "")).generation;
    let ops = entries.iter().map(|k| put(k.clone(), "v")).collect();
    assert_eq!(code(&stage(&mut f, lease(0, g), 1, 1, ops)), None);
    assert_eq!(code(&commit(&mut f, lease(0, g), 1, 32)), None);
    for k in &entries {
        let kv = f.get(k).expect("committed");
        assert_eq!((kv.value.as_slice(), kv.key_group), (&b"v"[..], 2));
    }
    // Another placement key's entries are another group's, whatever the
    // rest of the key hashes to.
    let other = prefixed_key(&placement_key_in(1), b"window-0");
    let r = stage(&mut f, lease(0, g), 2, 1, vec![put(other, "x")]);
    assert_eq!(refused(&r).0, Code::InvalidArgument);
}

#[test]
fn a_key_without_a_placement_key_is_refused_everywhere_and_changes_nothing() {
    let mut f = Fixture::new();
    declare(&mut f, "s", Some(KeyPlacement::Prefix));
    let g = granted(&acquire(&mut f, 0, (0, GROUPS), "")).generation;
    let good = prefixed_key(b"u", b"e");
    for bad in [&b""[..], b"\x00", b"\x00\x09short", b"\xff\xff"] {
        let r = stage(
            &mut f,
            lease(0, g),
            1,
            1,
            vec![put(good.clone(), "v"), put(bad.to_vec(), "v")],
        );
        assert_eq!(refused(&r).0, Code::InvalidArgument, "{bad:?}");
        assert_eq!(
            staged_keys(&f),
            0,
            "{bad:?}: the batch's good op is not staged either"
        );
        let r = f.put("s", bad, b"v");
        assert_eq!(code(&r), Some(Code::InvalidArgument), "{bad:?}");
        let info = load_job(&f.db, 0, "j").unwrap();
        let read = crate::state_machine::read::get(&f.db, info.as_ref(), 0, "j", "s", bad);
        assert!(
            matches!(
                read,
                Err(crate::error::ServiceError::InvalidArgument { .. })
            ),
            "{bad:?}: {read:?}"
        );
    }
    // The same bytes are an ordinary key of a table that places by the
    // whole key.
    let r = f.put("whole", b"\x00", b"v");
    assert_eq!(code(&r), None);
}

#[test]
fn a_tables_placement_is_fixed_once_it_exists() {
    let mut f = Fixture::new();
    let (whole, prefix) = (KeyPlacement::WholeKey as i32, KeyPlacement::Prefix as i32);
    // Made by a write: the whole key.
    let g = granted(&acquire(&mut f, 0, (0, GROUPS), "")).generation;
    assert_eq!(
        code(&stage(
            &mut f,
            lease(0, g),
            1,
            1,
            vec![put(b"k".to_vec(), "v")]
        )),
        None
    );
    assert_eq!(placement_of(&f, "s"), whole);
    let r = declare(&mut f, "s", Some(KeyPlacement::Prefix));
    assert_eq!(code(&r), Some(Code::FailedPrecondition));
    assert_eq!(placement_of(&f, "s"), whole);
    // Naming the placement it has, or none, changes its mode only.
    assert_eq!(
        code(&declare(&mut f, "s", Some(KeyPlacement::WholeKey))),
        None
    );
    assert_eq!(code(&declare(&mut f, "s", None)), None);
    // Declared new with a placement: kept by later declarations without one.
    assert_eq!(
        code(&declare(&mut f, "m", Some(KeyPlacement::Prefix))),
        None
    );
    assert_eq!(code(&declare(&mut f, "m", None)), None);
    assert_eq!(placement_of(&f, "m"), prefix);
    let r = declare(&mut f, "m", Some(KeyPlacement::WholeKey));
    assert_eq!(code(&r), Some(Code::FailedPrecondition));
    assert_eq!(placement_of(&f, "m"), prefix);
    // A value this version does not know changes nothing.
    let before = load_job(&f.db, 0, "j").unwrap();
    for bad in [2, -1, i32::MAX] {
        let r = f.apply(pb::Command {
            kind: Some(command::Kind::SetTableMode(pb::TableModeSet {
                job: "j".into(),
                state: "n".into(),
                mode: 0,
                placement: Some(bad),
            })),
        });
        assert_eq!(code(&r), Some(Code::InvalidArgument), "{bad}");
    }
    assert_eq!(load_job(&f.db, 0, "j").unwrap(), before);
    let r = f.apply(pb::Command {
        kind: Some(command::Kind::CreateJob(pb::CreateJob {
            job: "k".into(),
            key_groups: 4,
            tables: vec![pb::TableModeSet {
                job: "k".into(),
                state: "t".into(),
                mode: 0,
                placement: Some(5),
            }],
        })),
    });
    assert_eq!(code(&r), Some(Code::InvalidArgument));
    assert!(load_job(&f.db, 0, "k").unwrap().is_none());
}
