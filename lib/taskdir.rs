//! The record a host keeps of each task it runs: one directory per task, so that what runs
//! where can be read from the hosts themselves (and a lost state rebuilt from them).
//!
//! ```text
//! ROOT/role/env/name/instance/
//!     spec.json   what to run, resolved by launch (argv, environment, user, ports, health)
//!     job.json    the job spec the task was placed from (restart policy, announce, ...)
//!     lock        held (flock, exclusive) by the task's supervisor for as long as it lives
//!     status      the supervisor's last word, JSON, replaced atomically (write, fsync, rename)
//!     fence       the lowest incarnation that may still start here (see [`fence`])
//!     uid         the dynamic uid the task directory holds (see `identity`)
//!     logs/       the task's stdout and stderr, rotated once (root's directory: the task
//!                 cannot redirect what the supervisor opens there)
//!     sandbox/    the task's working directory, its own (mode 0700)
//! ```
//!
//! Everything but the sandbox is root's: nothing a task does can change what a root
//! process of formic opens here.
//!
//! A supervisor is alive exactly while `lock` is held; the kernel drops the lock when the
//! supervisor dies, however it dies, so "is it still supervised?" never trusts a pid file.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Value};

/// The run root of a local host: `run/HOST/` beside the state file. Several local hosts
/// may share this machine; each has its own root. Host names are checked (letters, digits,
/// `.-_:`, not starting with `.` or `-`), so this never leaves the state's directory.
pub fn host_root(state: &Path, host: &str) -> PathBuf {
    run_root(state).join(host)
}

/// Where the local hosts' run roots are: `run/` beside the state file.
pub fn run_root(state: &Path) -> PathBuf {
    let dir = state
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    dir.join("run")
}

/// The directories in `dir` (not following symbolic links), by name; none if it is not
/// there.
pub fn subdirs(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .collect()
}

/// Every task directory under a host's run root, with its task id
/// (`role/env/name/instance`, as [`task_dir`] lays them out).
pub fn task_dirs(root: &Path) -> Vec<(String, PathBuf)> {
    let mut found = vec![(String::new(), root.to_path_buf())];
    for _ in 0..4 {
        found = found
            .into_iter()
            .flat_map(|(id, dir)| {
                subdirs(&dir).into_iter().map(move |(name, path)| {
                    let id = if id.is_empty() {
                        name
                    } else {
                        format!("{id}/{name}")
                    };
                    (id, path)
                })
            })
            .collect();
    }
    found
}

/// Where a task's directory is under a host's run root. Task ids are checked
/// (`role/env/name/instance`, no part starting with a dot), so this never leaves `root`.
pub fn task_dir(root: &Path, task: &str) -> PathBuf {
    root.join(task)
}

/// What a supervisor reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Status {
    pub task: String,
    /// The incarnation of the task the supervisor runs (None from supervisors that
    /// predate incarnations).
    pub incarnation: Option<u32>,
    /// The supervisor's pid and start time (clock ticks since boot).
    pub supervisor: (u32, u64),
    /// The task's pid and start time, once started.
    pub pid: Option<(u32, u64)>,
    /// STARTING, RUNNING, FINISHED, FAILED or KILLED.
    pub state: String,
    pub exit: Option<i32>,
    pub signal: Option<i32>,
    pub since: f64,
    pub healthy: Option<bool>,
    pub health_failures: u32,
    /// Why the task failed when the supervisor knows better than an exit status (it could
    /// not be started; the supervisor gave up on it).
    pub reason: Option<String>,
    /// The uid the task runs as, once started.
    pub uid: Option<u32>,
    /// How its limits are enforced on this host.
    pub limits: Option<crate::limits::Applied>,
    /// Bytes of its output that could not be written to its logs (a full disk), dropped.
    pub log_dropped: u64,
}

impl Status {
    pub fn to_json(&self) -> Value {
        json!({
            "task": self.task,
            "incarnation": self.incarnation,
            "supervisor": {"pid": self.supervisor.0, "start": self.supervisor.1},
            "pid": self.pid.map(|p| p.0),
            "pid_start": self.pid.map(|p| p.1),
            "state": self.state,
            "exit": self.exit,
            "signal": self.signal,
            "since": self.since,
            "healthy": self.healthy,
            "health_failures": self.health_failures,
            "reason": self.reason,
            "uid": self.uid,
            "limits": self.limits.as_ref().map(|l| l.to_json()),
            "log_dropped": self.log_dropped,
        })
    }

    pub fn from_json(v: &Value) -> Option<Status> {
        let pid = match (v["pid"].as_u64(), v["pid_start"].as_u64()) {
            (Some(p), Some(s)) => Some((p as u32, s)),
            _ => None,
        };
        Some(Status {
            task: v["task"].as_str()?.to_string(),
            incarnation: v["incarnation"].as_u64().map(|n| n as u32),
            supervisor: (
                v["supervisor"]["pid"].as_u64()? as u32,
                v["supervisor"]["start"].as_u64()?,
            ),
            pid,
            state: v["state"].as_str()?.to_string(),
            exit: v["exit"].as_i64().map(|x| x as i32),
            signal: v["signal"].as_i64().map(|x| x as i32),
            since: v["since"].as_f64()?,
            healthy: v["healthy"].as_bool(),
            health_failures: v["health_failures"].as_u64().unwrap_or(0) as u32,
            reason: v["reason"].as_str().map(String::from),
            uid: v["uid"].as_u64().map(|u| u as u32),
            limits: crate::limits::Applied::from_json(&v["limits"]),
            log_dropped: v["log_dropped"].as_u64().unwrap_or(0),
        })
    }

    /// Replaces `dir/status` atomically, durably: a reader sees the old status or the new.
    pub fn write(&self, dir: &Path) -> Result<()> {
        replace_file(
            &dir.join("status"),
            format!("{}\n", self.to_json()).as_bytes(),
            true,
        )
    }

    pub fn read(dir: &Path) -> Result<Option<Status>> {
        let text = match fs::read_to_string(dir.join("status")) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}/status", dir.display())),
        };
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}/status is not JSON", dir.display()))?;
        Ok(Status::from_json(&v))
    }
}

impl Status {
    /// Whether this is the supervisor's last word on its run: FINISHED, FAILED or KILLED.
    pub fn is_final(&self) -> bool {
        matches!(self.state.as_str(), "FINISHED" | "FAILED" | "KILLED")
    }
}

/// The lowest incarnation of the task that may still start in this directory: a start
/// raises it to its own incarnation and a call-off past the one it calls off, both under
/// the task's lock, so a start that was called off, or that a later start overtook, finds
/// itself fenced out however late it comes. 0 when there is none yet.
pub fn fence(dir: &Path) -> Result<u32> {
    match fs::read_to_string(dir.join("fence")) {
        Ok(text) => text
            .trim()
            .parse()
            .with_context(|| format!("{}/fence is not an incarnation", dir.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("reading {}/fence", dir.display())),
    }
}

/// Raises the fence to `incarnation` (never lowers it). Call with the task's lock held.
pub fn set_fence(dir: &Path, incarnation: u32) -> Result<()> {
    if fence(dir)? >= incarnation {
        return Ok(());
    }
    replace_file(
        &dir.join("fence"),
        format!("{incarnation}\n").as_bytes(),
        false,
    )
}

/// Writes what the supervisor is to run.
pub fn write_spec(dir: &Path, spec: &crate::supervise::Spec) -> Result<()> {
    replace_file(
        &dir.join("spec.json"),
        spec.to_json().to_string().as_bytes(),
        false,
    )
}

/// Takes the spec away: a supervisor that comes for it finds nothing to run.
pub fn remove_spec(dir: &Path) -> Result<()> {
    remove(&dir.join("spec.json"))
}

/// What the supervisor is to run, as the supervisor reads it (None when there is none or
/// it cannot be read: the stop deadline and health then take their defaults).
pub fn read_spec(dir: &Path) -> Option<crate::supervise::Spec> {
    let text = fs::read_to_string(dir.join("spec.json")).ok()?;
    crate::supervise::Spec::from_json(&serde_json::from_str(&text).ok()?)
}

/// Writes the job spec the task was placed from, as it was read.
pub fn write_job(dir: &Path, job: &str) -> Result<()> {
    replace_file(&dir.join("job.json"), job.as_bytes(), false)
}

/// The job spec the task was placed from: None when there is none, an error naming the
/// file when it does not read as a job spec.
pub fn read_job(dir: &Path) -> Result<Option<crate::job::JobSpec>, String> {
    let path = dir.join("job.json");
    match fs::read_to_string(&path) {
        Ok(text) => crate::job::parse_text(&text, &path.display().to_string())
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(_) => Ok(None),
    }
}

/// Removes the last run's status before a new run starts.
pub fn remove_status(dir: &Path) -> Result<()> {
    remove(&dir.join("status"))
}

fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Writes a file of a task's directory whole (write `NAME.new`, rename): a reader sees the
/// old content or the new. Readable by the group only (a spec may hold secrets in its
/// environment); `durable` flushes it before the rename.
pub fn replace_file(path: &Path, content: &[u8], durable: bool) -> Result<()> {
    replace_file_mode(path, content, durable, 0o640)
}

/// [`replace_file`] with the new file's mode.
pub fn replace_file_mode(path: &Path, content: &[u8], durable: bool, mode: u32) -> Result<()> {
    let tmp = path.with_extension("new");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(content)
        .and_then(|()| if durable { f.sync_data() } else { Ok(()) })
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

/// Creates a task's directory and sandbox. The directories on the way can be passed
/// through by anyone but listed by no one else: a task running as its own user must reach
/// its sandbox by its full path (programs call getcwd), and must not read its neighbours'.
pub fn create(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(dir.join("sandbox"))
        .with_context(|| format!("creating {}", dir.display()))
}

/// Opens the task's lock file (created when missing).
pub fn lock_file(dir: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o640)
        .open(dir.join("lock"))
        .with_context(|| format!("opening {}/lock", dir.display()))
}

/// Takes the task's lock exclusively, retrying for up to `patience`: a reader testing
/// whether the task is supervised holds it shared for a moment, which is not "busy".
pub fn lock_exclusive(lock: &File, patience: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + patience;
    loop {
        if lock.try_lock().is_ok() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Whether a supervisor holds the task's lock right now.
pub fn supervised(dir: &Path) -> Result<bool> {
    if !dir.join("lock").exists() {
        return Ok(false);
    }
    let f = lock_file(dir)?;
    match f.try_lock_shared() {
        Ok(()) => {
            let _ = f.unlock();
            Ok(false)
        }
        Err(std::fs::TryLockError::WouldBlock) => Ok(true),
        Err(std::fs::TryLockError::Error(e)) => Err(e).context("testing a task's lock"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let s = Status {
            task: "a/b/c/0".into(),
            incarnation: Some(3),
            supervisor: (10, 20),
            pid: Some((30, 40)),
            state: "RUNNING".into(),
            exit: None,
            signal: None,
            since: 1.5,
            healthy: Some(true),
            health_failures: 0,
            reason: Some("why".into()),
            uid: Some(70001),
            limits: Some(crate::limits::Applied {
                memory: "cgroup",
                cpu: "none",
                pids: "rlimit",
                kill: "cgroup.kill",
            }),
            log_dropped: 7,
        };
        s.write(dir.path()).unwrap();
        assert_eq!(Status::read(dir.path()).unwrap(), Some(s));
        assert!(!dir.path().join("status.new").exists());
    }

    #[test]
    fn the_lock_tells_whether_a_supervisor_lives() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!supervised(dir.path()).unwrap());
        let held = lock_file(dir.path()).unwrap();
        held.lock().unwrap();
        assert!(supervised(dir.path()).unwrap());
        drop(held);
        assert!(!supervised(dir.path()).unwrap());
    }
}
