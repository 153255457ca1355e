//! Hosts on this machine: their task directories under a run root, their processes ours to
//! signal.

use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::Signal;

use super::{
    Found, Held, Inventory, Look, Measured, Prepared, Reply, Stamp, Start, TaskHost, Unreached,
};
use crate::process;
use crate::reap::{Act, Facts, Seen};
use crate::runlogs::{self, Piece};
use crate::task::{Task, TaskState};
use crate::taskdir::{self, Status};

/// A host whose task directories are under `root` on this machine.
pub struct Local {
    root: PathBuf,
}

impl Local {
    pub fn new(root: PathBuf) -> Local {
        Local { root }
    }

    fn dir(&self, task: &str) -> PathBuf {
        taskdir::task_dir(&self.root, task)
    }

    /// Writes one task's directory and starts its supervisor.
    fn start_one(&self, p: &Prepared) -> Result<Start> {
        let dir = self.dir(p.task);
        taskdir::create(&dir)?;
        // The task's lock is held by its supervisor for life, by launch while it writes the
        // directory, and by reap for a moment while it calls an abandoned start off.
        let lock = taskdir::lock_file(&dir)?;
        if !taskdir::lock_exclusive(&lock, Duration::from_secs(1)) {
            return Ok(Start::Busy(format!(
                "{} is held by another supervisor",
                dir.display()
            )));
        }
        // Under the lock: a start reap called off, or one older than a start made since,
        // must not run.
        if p.incarnation < taskdir::fence(&dir)? {
            return Ok(Start::CalledOff);
        }
        taskdir::set_fence(&dir, p.incarnation)?;
        // Not flushed: a spec lost to a power cut leaves a task that never started, which
        // reap calls off and the next pass places again.
        taskdir::write_job(&dir, p.job)?;
        taskdir::write_spec(&dir, p.spec)?;
        taskdir::remove_status(&dir)?;
        let log = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .open(dir.join("supervise.log"))
            .context("creating supervise.log")?;
        drop(lock);
        let mut cmd = Command::new(supervisor());
        cmd.arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            // A session of its own: the supervisor outlives launch and its terminal.
            cmd.pre_exec(|| {
                nix::unistd::setsid().map_err(io::Error::from)?;
                // Nothing launch inherited (a caller's lock, a pipe) may live on in the
                // supervisor: only fds 0-2 cross.
                crate::supervise::only_std_fds_cross_exec()
            });
        }
        cmd.spawn()
            .with_context(|| format!("starting {}", cmd.get_program().to_string_lossy()))?;
        Ok(Start::Started)
    }

    /// Calls off one start: with the task's lock held (no supervisor has it) and still no
    /// word from this incarnation, its spec is removed and the fence raised past it, so
    /// neither a supervisor nor a launch that takes the lock after us starts it.
    fn call_off_one(&self, task: &str, incarnation: u32) -> Result<bool> {
        let dir = self.dir(task);
        // The directory may not be there yet (launch may be about to write it): made
        // here, so that launch finds the fence raised.
        taskdir::create(&dir)?;
        let lock = taskdir::lock_file(&dir)?;
        if !taskdir::lock_exclusive(&lock, Duration::from_millis(20)) {
            return Ok(false);
        }
        if Status::read(&dir)?.is_some_and(|s| s.incarnation == Some(incarnation)) {
            return Ok(false);
        }
        taskdir::set_fence(&dir, incarnation.saturating_add(1))?;
        taskdir::remove_spec(&dir)?;
        Ok(true)
    }

    fn act_one(&self, task: &str, act: &Act) -> Result<bool, String> {
        let dir = self.dir(task);
        match *act {
            Act::Stop { supervisor } => process::signal(supervisor, Signal::SIGTERM),
            Act::KillGroup { task: leader } => {
                let hit = process::kill_group(leader)?;
                kill_leftovers(task, &dir).map(|()| hit)
            }
            Act::KillAll {
                supervisor,
                task: leader,
            } => {
                let a = leader.map_or(Ok(false), process::kill_group);
                let b = supervisor.map_or(Ok(false), |s| process::signal(s, Signal::SIGKILL));
                let hit = a.and(b)?;
                kill_leftovers(task, &dir).map(|()| hit)
            }
        }
    }
}

impl TaskHost for Local {
    fn start(&self, tasks: &[Prepared]) -> Reply<Start> {
        Ok(tasks
            .iter()
            .map(|p| self.start_one(p).unwrap_or_else(|e| Start::failed(&e)))
            .collect())
    }

    fn reports(&self, tasks: &[(&str, u32)]) -> Reply<Option<Status>> {
        Ok(tasks
            .iter()
            .map(|&(task, n)| {
                Status::read(&self.dir(task))
                    .ok()
                    .flatten()
                    .filter(|s| s.incarnation == Some(n))
            })
            .collect())
    }

    fn stop(&self, tasks: &[(&str, u32)]) -> Reply<bool> {
        Ok(self
            .reports(tasks)?
            .into_iter()
            .map(|s| s.is_some_and(|s| process::signal(s.supervisor, Signal::SIGTERM) == Ok(true)))
            .collect())
    }

    fn look(&self, tasks: &[(&str, &Task)]) -> Reply<Result<Look, String>> {
        Ok(tasks
            .iter()
            .map(|&(task, t)| {
                let dir = self.dir(task);
                let seen = look(&dir, t).map_err(|e| format!("{e:#}"))?;
                let ticks = match &seen {
                    Seen::Alive(Some(s)) | Seen::Ended(s) | Seen::Gone(Some(s)) => {
                        s.pid.map(|p| p.1)
                    }
                    _ => None,
                }
                .or((t.pid_start != 0).then_some(t.pid_start));
                let facts = Facts::of(&dir, ticks.and_then(process::started_at));
                Ok(Look { seen, facts })
            })
            .collect())
    }

    fn stamps(&self, tasks: &[&str]) -> Reply<Option<Stamp>> {
        Ok(tasks
            .iter()
            .map(|task| {
                std::fs::metadata(self.dir(task).join("status"))
                    .ok()
                    .map(|m| (m.ino(), m.mtime(), m.mtime_nsec(), m.size()))
            })
            .collect())
    }

    fn call_off(&self, tasks: &[(&str, u32)]) -> Reply<bool> {
        Ok(tasks
            .iter()
            .map(|&(task, n)| self.call_off_one(task, n).unwrap_or(false))
            .collect())
    }

    fn act(&self, acts: &[(&str, &Act)]) -> Reply<Result<bool, String>> {
        Ok(acts
            .iter()
            .map(|&(task, act)| self.act_one(task, act))
            .collect())
    }

    fn supervisors(&self) -> Reply<Found> {
        let mut found = Vec::new();
        for (task, dir) in taskdir::task_dirs(&self.root) {
            if !taskdir::supervised(&dir).unwrap_or(false) {
                continue;
            }
            if let Ok(Some(status)) = Status::read(&dir) {
                found.push(Found {
                    task,
                    status,
                    facts: Facts::of(&dir, None),
                });
            }
        }
        Ok(found)
    }

    fn probe(&self) -> Result<Measured, Unreached> {
        measure(&self.root).map_err(|e| Unreached::new(format!("{e:#}")))
    }

    fn inventory(&self) -> Result<Inventory, Unreached> {
        let mut held = Vec::new();
        for (task, dir) in taskdir::task_dirs(&self.root) {
            let unreadable = |e: anyhow::Error| Unreached::new(format!("{task}: {e:#}"));
            held.push(Held {
                fence: taskdir::fence(&dir).map_err(unreadable)?,
                supervised: taskdir::supervised(&dir).map_err(unreadable)?,
                status: Status::read(&dir).map_err(unreadable)?,
                spec: taskdir::read_spec(&dir),
                job: taskdir::job_text(&dir),
                task,
            });
        }
        Ok(Inventory {
            epoch: super::seen_epoch(&self.root),
            held,
        })
    }

    fn read_log(&self, r: &super::LogRead) -> Result<Result<Piece, String>, Unreached> {
        let dir = self.dir(&r.task);
        Ok(runlogs::read(&dir, r.incarnation, r.stream, r.from).map_err(|e| format!("{e:#}")))
    }
}

/// This machine's cores and memory, and the size of the file system `root` is on (or would
/// be on: its nearest existing parent).
pub fn measure(root: &Path) -> Result<Measured> {
    let cpus = nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
        .context("counting cores")?
        .unwrap_or(1)
        .max(1) as f64;
    let meminfo = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    let kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no MemTotal in /proc/meminfo")?;
    let mut dir = root;
    while !dir.exists() {
        dir = dir.parent().unwrap_or(Path::new("/"));
    }
    let fs =
        nix::sys::statvfs::statvfs(dir).with_context(|| format!("statvfs {}", dir.display()))?;
    Ok(Measured {
        cpus,
        ram_mb: kb / 1024,
        disk_mb: (fs.blocks() as u64 * fs.fragment_size() as u64) >> 20,
    })
}

/// Looks at a task's directory. The order matters: a supervisor writes its final status
/// and only then lets go of the lock, and takes the lock before it writes anything; so a
/// free lock followed by a status that is not final, with the lock still free after, is a
/// supervisor that died without a word, never one that was just finishing or starting.
pub fn look(dir: &Path, t: &Task) -> Result<Seen> {
    let held = taskdir::supervised(dir)?;
    let status = current_status(dir, t)?;
    if let Some(s) = &status {
        if s.is_final() {
            // A final word from a supervisor that is gone, while the lock is held: a new
            // supervisor has started and not yet written; the word is an earlier run's.
            if held && !process::same_process(s.supervisor.0, s.supervisor.1) {
                return Ok(Seen::Alive(None));
            }
            return Ok(Seen::Ended(status.unwrap()));
        }
    }
    if held {
        return Ok(Seen::Alive(status));
    }
    if taskdir::supervised(dir)? {
        return Ok(Seen::Alive(current_status(dir, t)?));
    }
    Ok(match current_status(dir, t)? {
        Some(s) if s.is_final() => Seen::Ended(s),
        other => Seen::Gone(other),
    })
}

/// The status file, if it speaks of the task's current incarnation: one left by an earlier
/// run in the same directory says nothing about this one, and one of this incarnation is
/// believed however old it is.
fn current_status(dir: &Path, t: &Task) -> Result<Option<Status>> {
    let s = Status::read(dir)?;
    Ok(s.filter(|s| match s.incarnation {
        Some(n) => n == t.incarnation,
        // From a supervisor older than incarnations: launch records ASSIGNED before it
        // starts the supervisor, so a status older than that record is an earlier run's.
        None => !(t.state == TaskState::Assigned && s.since < t.since),
    }))
}

/// Kills whatever the task left in its cgroups (children that called setsid, orphans of
/// a leader that exited: what its process group no longer reaches), once no supervisor
/// holds its lock: holding it ourselves proves the groups are nobody's. A supervisor that
/// holds it (again) owns them, and kills leftovers itself before it starts the task.
fn kill_leftovers(task: &str, dir: &Path) -> Result<(), String> {
    let lock = taskdir::lock_file(dir).map_err(|e| format!("{e:#}"))?;
    if !taskdir::lock_exclusive(&lock, Duration::from_secs(1)) {
        return Ok(());
    }
    if crate::limits::kill_leftovers(task, dir) {
        Ok(())
    } else {
        Err("processes survive SIGKILL in its cgroups".into())
    }
}

/// formic-supervise beside this binary, else on PATH.
fn supervisor() -> PathBuf {
    std::env::current_exe()
        .ok()
        .map(|e| e.with_file_name("formic-supervise"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("formic-supervise"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(task: &str, incarnation: u32) -> crate::supervise::Spec {
        let mut s =
            crate::supervise::Spec::parse(&format!(r#"{{"task": "{task}", "argv": ["true"]}}"#))
                .unwrap();
        s.incarnation = incarnation;
        s
    }

    fn start(host: &Local, task: &str, incarnation: u32) -> Start {
        let spec = spec(task, incarnation);
        let p = Prepared {
            task,
            incarnation,
            spec: &spec,
            job: "{}",
        };
        host.start(&[p]).unwrap().pop().unwrap()
    }

    /// However launch and reap interleave, a start reap called off never runs: the fence
    /// keeps the promise on the host, with no lock held across reap's commit.
    #[test]
    fn a_start_called_off_or_overtaken_is_fenced_out() {
        let root = tempfile::tempdir().unwrap();
        let host = Local::new(root.path().to_path_buf());
        let task = "a/b/c/0";
        let dir = host.dir(task);
        // reap calls incarnation 5 off before launch has written anything.
        assert_eq!(host.call_off(&[(task, 5)]).unwrap(), [true]);
        assert_eq!(taskdir::fence(&dir).unwrap(), 6);
        assert!(matches!(start(&host, task, 5), Start::CalledOff));
        assert!(!dir.join("spec.json").exists(), "nothing written for it");
        // An older start that arrives after a newer one is fenced out too.
        taskdir::set_fence(&dir, 9).unwrap();
        assert!(matches!(start(&host, task, 8), Start::CalledOff));
        // The fence is only ever raised.
        taskdir::set_fence(&dir, 3).unwrap();
        assert_eq!(taskdir::fence(&dir).unwrap(), 9);
    }

    #[test]
    fn a_start_a_supervisor_reported_is_not_called_off() {
        let root = tempfile::tempdir().unwrap();
        let host = Local::new(root.path().to_path_buf());
        let task = "a/b/c/0";
        let dir = host.dir(task);
        taskdir::create(&dir).unwrap();
        let status = Status {
            task: task.into(),
            incarnation: Some(2),
            supervisor: (1, 1),
            state: "STARTING".into(),
            ..Default::default()
        };
        status.write(&dir).unwrap();
        taskdir::write_spec(&dir, &spec(task, 2)).unwrap();
        assert_eq!(host.call_off(&[(task, 2)]).unwrap(), [false]);
        assert!(dir.join("spec.json").exists());
        // A status of another incarnation says nothing of this one.
        assert_eq!(host.call_off(&[(task, 3)]).unwrap(), [true]);
        assert!(!dir.join("spec.json").exists());
    }

    #[test]
    fn a_directory_held_by_a_supervisor_is_busy_and_not_called_off() {
        let root = tempfile::tempdir().unwrap();
        let host = Local::new(root.path().to_path_buf());
        let task = "a/b/c/0";
        let dir = host.dir(task);
        taskdir::create(&dir).unwrap();
        let held = taskdir::lock_file(&dir).unwrap();
        held.lock().unwrap();
        assert_eq!(host.call_off(&[(task, 1)]).unwrap(), [false]);
        assert!(matches!(start(&host, task, 1), Start::Busy(_)));
        drop(held);
        assert_eq!(host.call_off(&[(task, 1)]).unwrap(), [true]);
    }
}
