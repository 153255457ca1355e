//! The processes a supervisor is the parent of: the task, its health commands, and every
//! orphan handed to it as the subreaper of what the task leaves behind.

use std::fs;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Children of this process (orphans reparented to us as subreaper), from /proc.
fn children() -> Vec<i32> {
    let me = std::process::id().to_string();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s[s.rfind(')')? + 1..]
                        .split_whitespace()
                        .nth(1)
                        .map(|p| p == me)
                })
                .unwrap_or(false)
        })
        .collect()
}

pub(super) fn kill_orphans() {
    for pid in children() {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Whether this process has no children left. The kernel knows at once (ECHILD); only when
/// some remain does `children` walk /proc to find them. Nothing is reaped here (WNOWAIT):
/// the task's own exit status is collected by `reap`.
pub(super) fn no_children() -> bool {
    use nix::libc;
    // SAFETY: waitid with a zeroed siginfo_t owned by this frame.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    r == -1 && nix::errno::Errno::last() == nix::errno::Errno::ECHILD
}

pub(super) fn reap_all() {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Err(nix::errno::Errno::ECHILD) => return,
            Ok(WaitStatus::StillAlive) => {
                kill_orphans();
                std::thread::sleep(Duration::from_millis(5));
            }
            _ => {}
        }
    }
}
