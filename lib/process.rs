//! Processes named so that a reused pid is never mistaken for them, and signalled only while
//! they are still the process named.
//!
//! A pid alone does not name a process: once it exits and is reaped, the kernel hands the
//! number to the next fork. formic names a process by its pid and its start time (clock
//! ticks since boot, field 22 of /proc/PID/stat), which together never repeat. Every tool
//! that signals a process it did not fork itself (launch stopping a supervisor it started,
//! reap stopping supervisors and killing tasks) goes through [`signal`] or [`kill_group`]:
//! they open a pidfd first, check the start time through it, and signal through it, so the
//! process checked is the process signalled even if the pid is reused in between.
//!
//! The one exception is a process's own children: a parent that has not reaped a child
//! holds its pid, so formic-supervise signals its task and its orphans by pid.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::Signal;

/// A process: its pid and its start time in clock ticks since boot.
pub type Who = (u32, u64);

/// The start time of `pid` in clock ticks since boot, while it exists.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// This process as [`Who`] names it.
pub fn me() -> Who {
    let pid = std::process::id();
    (pid, start_time(pid).unwrap_or(0))
}

/// Whether `pid` is still the process that started at `start`.
pub fn same_process(pid: u32, start: u64) -> bool {
    start_time(pid) == Some(start)
}

/// A process named compactly enough for a task record: its pid and the low 32 bits of its
/// start time (at 100 ticks a second they wrap after 497 days, so a reused pid is still not
/// mistaken for it).
pub fn short_name(pid: u32) -> (u32, u32) {
    (pid, start_time(pid).unwrap_or(0) as u32)
}

/// Whether the process [`short_name`] named is still alive.
pub fn alive(name: (u32, u32)) -> bool {
    name.0 != 0 && start_time(name.0).map(|s| s as u32) == Some(name.1)
}

/// Unix time of a process start given in clock ticks since boot.
pub fn started_at(ticks: u64) -> Option<f64> {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&h| h > 0)? as f64;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    Some(now - (uptime - ticks as f64 / hz))
}

/// A handle on one process that stays its own while held: a pidfd, or on a kernel without
/// pidfds (before 5.3) the bare pid, checked just before each use.
enum Handle {
    Pidfd(OwnedFd),
    Pid(u32),
}

/// Opens a handle on `who` if it is still that process. Ok(None): it is gone, or the pid
/// now names another process.
fn open(who: Who) -> Result<Option<Handle>, String> {
    let (pid, start) = who;
    if pid == 0 || pid > i32::MAX as u32 {
        return Ok(None);
    }
    // SAFETY: a system call on integers; a descriptor it returns is owned below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) } as libc::c_int;
    let handle = if fd >= 0 {
        // SAFETY: a fresh descriptor nothing else owns.
        Handle::Pidfd(unsafe { OwnedFd::from_raw_fd(fd) })
    } else {
        match Errno::last() {
            Errno::ESRCH => return Ok(None),
            Errno::ENOSYS => Handle::Pid(pid),
            e => return Err(format!("opening process {pid}: {e}")),
        }
    };
    // Checked after the pidfd is open: if the start time matches now, the pidfd refers to
    // that process, whatever happens to the number afterwards.
    Ok(same_process(pid, start).then_some(handle))
}

impl Handle {
    fn signal(&self, sig: Signal) -> Result<bool, String> {
        let r = match self {
            // SAFETY: our descriptor; a null siginfo asks for the usual kill() semantics.
            Handle::Pidfd(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    sig as libc::c_int,
                    std::ptr::null::<libc::siginfo_t>(),
                    0u32,
                )
            },
            // SAFETY: kill(2) on integers.
            Handle::Pid(pid) => {
                unsafe { libc::kill(*pid as libc::pid_t, sig as libc::c_int) }.into()
            }
        };
        match r {
            0 => Ok(true),
            _ => match Errno::last() {
                Errno::ESRCH => Ok(false),
                e => Err(format!("{e}")),
            },
        }
    }

    /// Whether the process has exited (a zombie counts): its pidfd polls readable.
    fn exited(&self) -> bool {
        match self {
            Handle::Pidfd(fd) => {
                let mut p = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one pollfd on our descriptor, no wait.
                let ready = unsafe { libc::poll(&mut p, 1, 0) };
                ready != 0
            }
            Handle::Pid(_) => false,
        }
    }
}

/// Sends `sig` to `who` if it is still that process. Ok(false): it is gone (or was never
/// it).
pub fn signal(who: Who, sig: Signal) -> Result<bool, String> {
    match open(who)? {
        Some(h) => h
            .signal(sig)
            .map_err(|e| format!("signalling process {}: {e}", who.0)),
        None => Ok(false),
    }
}

/// SIGKILL to the process group that `who` leads (a task leads its own session and group),
/// while its leader is still that process.
///
/// A group has no pidfd. The leader's pidfd, checked and still not exited when the group is
/// signalled, proves its pid is not reused, and so the group is its. Once the leader has
/// exited, the group is left to the cgroup kill (`limits::kill_leftovers`), which is what
/// reaches the members that left the group anyway.
pub fn kill_group(who: Who) -> Result<bool, String> {
    let Some(leader) = open(who)? else {
        return Ok(false);
    };
    if leader.exited() {
        return Ok(false);
    }
    match nix::sys::signal::killpg(nix::unistd::Pid::from_raw(who.0 as i32), Signal::SIGKILL) {
        Ok(()) => Ok(true),
        Err(Errno::ESRCH) => Ok(false),
        Err(e) => Err(format!("killing process group {}: {e}", who.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_process_is_signalled_only_while_its_start_time_matches() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let start = start_time(pid).unwrap();
        assert!(same_process(pid, start));
        // The same pid with another start time is another process: left alone.
        assert_eq!(signal((pid, start + 1), Signal::SIGKILL), Ok(false));
        assert!(child.try_wait().unwrap().is_none());
        assert_eq!(signal((pid, start), Signal::SIGKILL), Ok(true));
        child.wait().unwrap();
        // Gone: nothing to signal, not an error.
        assert_eq!(signal((pid, start), Signal::SIGKILL), Ok(false));
        assert_eq!(signal((0, 0), Signal::SIGKILL), Ok(false));
        assert_eq!(signal((u32::MAX, 0), Signal::SIGKILL), Ok(false));
    }

    #[test]
    fn a_group_is_killed_through_its_checked_leader() {
        use std::os::unix::process::CommandExt;
        // A leader of its own group with a child in it.
        let mut leader = Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = leader.id();
        let start = start_time(pid).unwrap();
        assert_eq!(kill_group((pid, start + 1)), Ok(false));
        assert!(leader.try_wait().unwrap().is_none());
        assert_eq!(kill_group((pid, start)), Ok(true));
        leader.wait().unwrap();
        // A zombie leader is not signalled through: its group is the cgroup kill's.
        let mut zombie = Command::new("true").process_group(0).spawn().unwrap();
        let z = (zombie.id(), start_time(zombie.id()).unwrap_or(0));
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(kill_group(z), Ok(false));
        zombie.wait().unwrap();
    }

    #[test]
    fn a_short_name_lives_as_long_as_its_process() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let name = short_name(child.id());
        assert!(alive(name));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!alive(name));
        assert!(!alive((0, 0)));
    }
}
