//! Child processes that die with the process that started them.
//!
//! A local cluster's nodes (and the bench's etcd members) are children of
//! the test, bench or lab run that started them. When that process is
//! killed (a CI timeout, `kill -9`, a panic in a thread that aborts), its
//! `Drop`s never run, and the nodes would live on holding their ports and
//! data directories. Linux's `PR_SET_PDEATHSIG` has the kernel kill such a
//! child when its parent dies, but "parent" means the *thread* that forked
//! it: a node started from a tokio blocking-pool thread would be killed
//! when that thread retires after ten idle seconds. So every tied child is
//! forked by one thread that lives as long as the process.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type Spawn = (Command, mpsc::SyncSender<io::Result<Child>>);

static SPAWNER: OnceLock<Mutex<mpsc::Sender<Spawn>>> = OnceLock::new();

fn spawner() -> &'static Mutex<mpsc::Sender<Spawn>> {
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Spawn>();
        std::thread::Builder::new()
            .name("tied-child-spawner".into())
            .spawn(move || {
                for (mut cmd, answer) in rx {
                    let _ = answer.send(cmd.spawn());
                }
            })
            .expect("a thread to spawn child processes from");
        Mutex::new(tx)
    })
}

/// Spawns `cmd` as a child that the kernel kills (SIGKILL) when this
/// process exits, however it exits.
pub fn spawn(mut cmd: Command) -> io::Result<Child> {
    let parent = std::process::id();
    // SAFETY: between fork and exec the closure makes only
    // async-signal-safe calls (prctl, getppid) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent died before the line above: nobody would kill us.
            // (An OS error code: no allocation in the forked child.)
            if libc::getppid() as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let (answer, spawned) = mpsc::sync_channel(1);
    let gone = || io::Error::other("the child-spawning thread is gone");
    spawner()
        .lock()
        .map_err(|_| gone())?
        .send((cmd, answer))
        .map_err(|_| gone())?;
    spawned.recv().map_err(|_| gone())?
}
