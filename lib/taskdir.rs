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
//!     logs/N/     incarnation N's stdout and stderr, rotated once, the last five runs kept
//!                 (root's directories: the task cannot redirect what the supervisor opens
//!                 there; see `runlogs`)
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

use anyhow::{anyhow, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

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

/// What a supervisor reports (the `status` file). Read by reap and launch as the
/// supervisor wrote it or not at all: a field of the wrong type, a number the field cannot
/// hold (a pid past u32 is no pid, not another one), or a field no supervisor writes is
/// refused with its name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "StatusFile", into = "StatusFile")]
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

/// The status file as written: the supervisor's pid and start time in an object of their
/// own, the task's side by side (`pid`, `pid_start`). A field that may be missing is one
/// that supervisors of an earlier version did not write.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusFile {
    task: String,
    incarnation: Option<u32>,
    supervisor: Supervisor,
    pid: Option<u32>,
    pid_start: Option<u64>,
    state: String,
    exit: Option<i32>,
    signal: Option<i32>,
    since: f64,
    healthy: Option<bool>,
    health_failures: u32,
    reason: Option<String>,
    uid: Option<u32>,
    limits: Option<crate::limits::Applied>,
    #[serde(default)]
    log_dropped: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Supervisor {
    pid: u32,
    start: u64,
}

impl From<Status> for StatusFile {
    fn from(s: Status) -> StatusFile {
        StatusFile {
            task: s.task,
            incarnation: s.incarnation,
            supervisor: Supervisor {
                pid: s.supervisor.0,
                start: s.supervisor.1,
            },
            pid: s.pid.map(|p| p.0),
            pid_start: s.pid.map(|p| p.1),
            state: s.state,
            exit: s.exit,
            signal: s.signal,
            since: s.since,
            healthy: s.healthy,
            health_failures: s.health_failures,
            reason: s.reason,
            uid: s.uid,
            limits: s.limits,
            log_dropped: s.log_dropped,
        }
    }
}

impl TryFrom<StatusFile> for Status {
    type Error = String;

    fn try_from(f: StatusFile) -> Result<Status, String> {
        let pid = match (f.pid, f.pid_start) {
            (Some(pid), Some(start)) => Some((pid, start)),
            (None, None) => None,
            _ => return Err("\"pid\" and \"pid_start\" are given together or not at all".into()),
        };
        Ok(Status {
            task: f.task,
            incarnation: f.incarnation,
            supervisor: (f.supervisor.pid, f.supervisor.start),
            pid,
            state: f.state,
            exit: f.exit,
            signal: f.signal,
            since: f.since,
            healthy: f.healthy,
            health_failures: f.health_failures,
            reason: f.reason,
            uid: f.uid,
            limits: f.limits,
            log_dropped: f.log_dropped,
        })
    }
}

impl Status {
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a status is JSON: its only map has string keys")
    }

    /// A status from the text of a status file; the error names the field refused.
    pub fn parse(text: &str) -> Result<Status, String> {
        decode(text)
    }

    /// Replaces `dir/status` atomically, durably: a reader sees the old status or the new.
    pub fn write(&self, dir: &Path) -> Result<()> {
        replace_file(
            &dir.join("status"),
            format!("{}\n", self.to_json()).as_bytes(),
            true,
        )
    }

    /// The task's status; None when the supervisor has not written one. A status that is
    /// not one (see [`Status`]) is an error naming the file and the field.
    pub fn read(dir: &Path) -> Result<Option<Status>> {
        let path = dir.join("status");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Status::parse(&text)
            .map(Some)
            .map_err(|why| anyhow!("{}: {why}", path.display()))
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
    crate::supervise::Spec::parse(&text).ok()
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

/// The text of job.json, as launch wrote it (None when there is none).
pub fn job_text(dir: &Path) -> Option<String> {
    fs::read_to_string(dir.join("job.json")).ok()
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

/// Reads the text of one of the task directory's JSON files as `T`, whole: an error is one
/// line, naming the field refused (`field "supervisor.pid": invalid value: ...`) or where
/// the text stops being JSON.
pub fn decode<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let t = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        refusal(&path, e.into_inner())
    })?;
    de.end().map_err(|e| refusal(".", e))?;
    Ok(t)
}

/// Why [`decode`] refused a file, naming the field (`path`; `.` for the file as a whole).
fn refusal(path: &str, e: serde_json::Error) -> String {
    let syntax = e.is_syntax() || e.is_eof();
    let e = e.to_string();
    // Where in the text a value was refused is of no use when the field is named; where
    // the text stops being JSON is.
    let why = match syntax {
        true => e.as_str(),
        false => e
            .rsplit_once(" at line ")
            .map_or(e.as_str(), |(why, _)| why),
    };
    match path {
        "." if syntax => format!("not JSON: {why}"),
        "." => why.to_string(),
        path => format!("field \"{path}\": {why}"),
    }
}

/// For the tests of the readers of a task directory's files: `v` with `bad` at `path`
/// (dot-separated) is refused by [`decode`] as a `T`, naming the field `named`.
#[cfg(test)]
pub(crate) fn assert_refused<T: DeserializeOwned + std::fmt::Debug>(
    mut v: Value,
    path: &str,
    bad: Value,
    named: &str,
) {
    let mut at = &mut v;
    for key in path.split('.') {
        at = &mut at[key];
    }
    *at = bad.clone();
    let text = v.to_string();
    let e = decode::<T>(&text).expect_err(&text);
    assert!(
        e.starts_with(&format!("field \"{named}\": ")),
        "{path}: {bad}: {e}"
    );
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

/// Creates a host's task-directory root (mode 0711: passed through, listed by no one else).
pub fn create_root(root: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(root)
        .with_context(|| format!("creating {}", root.display()))
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
    // Read-only, and never made: a reader only tests the lock (flock needs no write).
    let f = match File::open(dir.join("lock")) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("opening {}/lock", dir.display())),
    };
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
    use serde_json::json;

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

    /// A status with every field given, as a supervisor of a task that failed writes it.
    fn full() -> Status {
        Status {
            task: "a/b/c/0".into(),
            incarnation: Some(u32::MAX),
            supervisor: (u32::MAX, u64::MAX),
            pid: Some((4_194_304, 1 << 40)),
            state: "FAILED".into(),
            exit: Some(i32::MIN),
            signal: Some(i32::MAX),
            since: 1.5e9,
            healthy: Some(false),
            health_failures: u32::MAX,
            reason: Some("why".into()),
            uid: Some(u32::MAX),
            limits: Some(crate::limits::Applied {
                memory: "rlimit",
                cpu: "none",
                pids: "cgroup",
                kill: "freezer",
            }),
            log_dropped: u64::MAX,
        }
    }

    #[test]
    fn a_full_status_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        full().write(dir.path()).unwrap();
        assert_eq!(Status::read(dir.path()).unwrap(), Some(full()));
    }

    /// Status files as supervisors of this version and of the first one wrote them (the
    /// latter without incarnation, reason, uid, limits and log_dropped) still read.
    #[test]
    fn a_status_an_earlier_supervisor_wrote_still_reads() {
        let now = r#"{"task":"a/b/c/0","incarnation":4294967295,"supervisor":{"pid":4294967295,"start":18446744073709551615},"pid":4194304,"pid_start":1099511627776,"state":"FAILED","exit":-2147483648,"signal":2147483647,"since":1500000000.0,"healthy":false,"health_failures":4294967295,"reason":"why","uid":4294967295,"limits":{"memory":"rlimit","cpu":"none","pids":"cgroup","kill":"freezer"},"log_dropped":18446744073709551615}"#;
        assert_eq!(Status::parse(now), Ok(full()));
        assert_eq!(full().to_json().to_string(), now, "the file's shape");
        let first = r#"{"task":"a/b/c/0","supervisor":{"pid":10,"start":20},"pid":null,"pid_start":null,"state":"STARTING","exit":null,"signal":null,"since":1.5,"healthy":null,"health_failures":0}"#;
        let expected = Status {
            task: "a/b/c/0".into(),
            supervisor: (10, 20),
            state: "STARTING".into(),
            since: 1.5,
            ..Status::default()
        };
        assert_eq!(Status::parse(first), Ok(expected));
    }

    /// `full()` with `bad` at `path` is refused, naming the field.
    fn refused(path: &str, bad: Value) {
        assert_refused::<Status>(full().to_json(), path, bad, path);
    }

    /// A number a field cannot hold is refused, not wrapped into another pid, exit status
    /// or incarnation.
    #[test]
    fn a_number_out_of_range_is_refused() {
        for (path, bad) in [
            ("supervisor.pid", json!(4_294_967_301u64)),
            ("supervisor.start", json!(-1)),
            ("pid", json!(4_294_967_301u64)),
            ("pid_start", json!(-1)),
            ("exit", json!(2_147_483_648u64)),
            ("exit", json!(-2_147_483_649i64)),
            ("signal", json!(2_147_483_648u64)),
            ("incarnation", json!(4_294_967_296u64)),
            ("health_failures", json!(4_294_967_296u64)),
            ("uid", json!(-1)),
            ("log_dropped", json!(-1)),
            ("exit", json!(1.5)),
        ] {
            refused(path, bad);
        }
    }

    /// A field of the wrong type, or one no supervisor writes, is refused rather than
    /// read as absent.
    #[test]
    fn a_field_of_the_wrong_type_is_refused() {
        for (path, bad) in [
            ("exit", json!("1")),
            ("healthy", json!(1)),
            ("uid", json!("70001")),
            ("reason", json!(["why"])),
            ("limits.memory", json!("lots")),
            ("limits.kill", json!("none")),
            ("health_failures", Value::Null),
            ("extra", json!(1)),
        ] {
            refused(path, bad);
        }
    }

    /// A status file that is not one is an error naming the file and the field (reap
    /// reports it and leaves the task as it is); none at all is no status yet.
    #[test]
    fn a_status_file_refused_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Status::read(dir.path()).unwrap(), None);
        let file = dir.path().join("status");
        let mut v = full().to_json();
        v["supervisor"]["pid"] = json!(4_294_967_301u64);
        fs::write(&file, v.to_string()).unwrap();
        let e = format!("{:#}", Status::read(dir.path()).unwrap_err());
        assert_eq!(
            e,
            format!(
                "{}: field \"supervisor.pid\": invalid value: integer `4294967301`, \
                 expected u32",
                file.display()
            )
        );
        fs::write(&file, "nonsense").unwrap();
        let e = format!("{:#}", Status::read(dir.path()).unwrap_err());
        assert!(
            e.starts_with(&format!("{}: not JSON: ", file.display())),
            "{e}"
        );
        v = full().to_json();
        v["pid"] = Value::Null;
        fs::write(&file, v.to_string()).unwrap();
        let e = format!("{:#}", Status::read(dir.path()).unwrap_err());
        assert!(e.contains("\"pid\" and \"pid_start\""), "{e}");
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
