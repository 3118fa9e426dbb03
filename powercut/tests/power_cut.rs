//! The file system through the kernel: what processes see while the power
//! is on, and what the disk holds after the cut.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use streamshield_powercut::{PowerCutMount, Writeback};

fn mounted() -> (tempfile::TempDir, PowerCutMount) {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("disk")).unwrap();
    fs::create_dir(dir.path().join("mnt")).unwrap();
    let m = PowerCutMount::mount(&dir.path().join("disk"), &dir.path().join("mnt"))
        .expect("mount (FUSE needs /dev/fuse and root or fusermount3)");
    (dir, m)
}

fn write(path: &Path, bytes: &[u8], sync: bool) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
    if sync {
        f.sync_data().unwrap();
    }
}

#[test]
fn only_synced_data_survives_a_power_cut() {
    let (dir, m) = mounted();
    let mnt = m.path().to_path_buf();
    write(&mnt.join("synced"), b"durable", true);
    write(&mnt.join("unsynced"), b"lost", false);
    write(&mnt.join("half"), b"kept;", true);
    write(&mnt.join("half"), b"gone", false);
    fs::create_dir(mnt.join("sub")).unwrap();
    write(&mnt.join("sub/moved"), b"renamed", true);
    fs::rename(mnt.join("sub/moved"), mnt.join("sub/there")).unwrap();
    fs::hard_link(mnt.join("synced"), mnt.join("linked")).unwrap();

    // While the power is on, every write is visible.
    assert_eq!(fs::read(mnt.join("half")).unwrap(), b"kept;gone");
    assert_eq!(fs::read(mnt.join("unsynced")).unwrap(), b"lost");
    assert_eq!(fs::metadata(mnt.join("half")).unwrap().len(), 9);
    assert_eq!(fs::read(mnt.join("sub/there")).unwrap(), b"renamed");
    assert_eq!(fs::read(mnt.join("linked")).unwrap(), b"durable");

    m.cut_power(Writeback::Nothing);
    assert!(
        fs::write(mnt.join("after"), b"x").is_err(),
        "nothing changes after the cut"
    );
    m.unmount();

    let disk = dir.path().join("disk");
    assert_eq!(fs::read(disk.join("synced")).unwrap(), b"durable");
    assert_eq!(fs::read(disk.join("linked")).unwrap(), b"durable");
    assert_eq!(fs::read(disk.join("unsynced")).unwrap(), b"");
    assert_eq!(fs::read(disk.join("half")).unwrap(), b"kept;");
    assert_eq!(fs::read(disk.join("sub/there")).unwrap(), b"renamed");
    assert!(!disk.join("after").exists());

    // After the reboot the mount shows the disk.
    let m = PowerCutMount::mount(&disk, &dir.path().join("mnt")).unwrap();
    assert_eq!(fs::read(m.path().join("half")).unwrap(), b"kept;");
    m.unmount();
}

#[test]
fn a_clean_unmount_writes_everything_back() {
    let (dir, m) = mounted();
    write(&m.path().join("f"), b"not synced", false);
    m.unmount();
    assert_eq!(fs::read(dir.path().join("disk/f")).unwrap(), b"not synced");
}

#[test]
fn a_random_writeback_keeps_some_unsynced_pages() {
    let (dir, m) = mounted();
    let page = vec![7u8; 4096];
    for _ in 0..64 {
        write(&m.path().join("f"), &page, false);
    }
    m.cut_power(Writeback::Random {
        seed: 1,
        percent: 50,
    });
    m.unmount();
    let d = fs::read(dir.path().join("disk/f")).unwrap();
    let kept = d.chunks(4096).filter(|c| c.iter().all(|b| *b == 7)).count();
    assert!(kept > 0 && kept < 64, "{kept} of 64 pages kept");
}
