//! How launch and reap reach a host: its task directories and the processes they name.
//!
//! The scheduler's half of formic (pack, the state, the decisions of launch and reap) runs in
//! one place; the host's half (writing a task's directory, starting its supervisor, reading
//! what the supervisor reported, signalling, killing what a task left in its cgroups) runs
//! on the host. [`TaskHost`] is the line between them. Every method takes all of one host's
//! tasks for one step, so that a host reached over the network costs one round trip a step,
//! not one a task; and nothing crosses it that needs the state, so the host's half never
//! trusts a view of the state it cannot lock.
//!
//! A start that reap calls off must never run afterwards, however launch and reap
//! interleave. The host's half keeps that promise by itself with a fence in each task's
//! directory (see `taskdir::fence`): a call-off raises it past the incarnation it calls
//! off, a start lowers nothing and is refused below it, both under the task's lock.

mod local;
pub mod serve;
mod ssh;
pub mod wire;

use std::path::Path;

use anyhow::Result;

use crate::host::{Host, Transport};
use crate::reap::{Act, Facts, Seen};
use crate::supervise::Spec;
use crate::task::Task;
use crate::{runlogs, taskdir};

pub use local::Local;
pub use ssh::Ssh;

/// A task's directory to write and its supervisor to start.
pub struct Prepared<'a> {
    /// `role/env/name/instance`.
    pub task: &'a str,
    pub incarnation: u32,
    /// What the supervisor runs (`spec.json`).
    pub spec: &'a Spec,
    /// The job spec it was placed from, as it was read (`job.json`).
    pub job: &'a str,
}

/// What became of one start.
#[derive(Debug)]
pub enum Start {
    /// Its supervisor was started.
    Started,
    /// reap called the start off (it took it for abandoned), or a later incarnation has
    /// been started there since: nothing may start.
    CalledOff,
    /// The task's directory is held by another supervisor.
    Busy(String),
    /// The supervisor could not be started: why, and the exit status that stands for it
    /// (127: a program not found, 126: could not run).
    Failed { why: String, exit: i32 },
    /// The host was not reached: whether the supervisor started is not known.
    Unreached(String),
    /// The host refused this scheduler's epoch: another has taken over.
    Superseded(String),
}

impl Start {
    pub fn failed(e: &anyhow::Error) -> Start {
        Start::Failed {
            why: format!("{e:#}"),
            exit: crate::supervise::cannot_run_status(e),
        }
    }
}

/// What one look at a task's directory found, and what reap reads beside it when a
/// decision needs it.
pub struct Look {
    pub seen: Seen,
    pub facts: Facts,
}

/// One survey of a host: every supervisor at work there, and a look at each task asked
/// about, in the order asked.
pub struct Survey {
    pub found: Vec<Found>,
    pub looks: Vec<Result<Look, String>>,
}

/// A supervisor at work on a host, as its status names it.
pub struct Found {
    /// `role/env/name/instance`.
    pub task: String,
    pub status: taskdir::Status,
    /// The grace period of its stop, and whether it has a health check (see `Facts`).
    pub facts: Facts,
}

/// A task directory on a host, as a state rebuilt from the hosts reads it (`offer
/// rebuild`): the hosts' task directories are the truth about what runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Held {
    /// `role/env/name/instance`.
    pub task: String,
    /// The latest incarnation started or fenced out there: a later start must be past it.
    pub fence: u32,
    /// Whether a supervisor is at work on it now.
    pub supervised: bool,
    /// What its supervisor last reported.
    pub status: Option<taskdir::Status>,
    /// What the supervisor runs (spec.json).
    pub spec: Option<Spec>,
    /// The job spec it was placed from (job.json), as written.
    pub job: Option<String>,
}

/// Everything a host holds: its task directories, and the newest scheduler epoch it has
/// seen (a rebuilt state takes over past it).
#[derive(Clone, Debug, PartialEq)]
pub struct Inventory {
    pub epoch: u64,
    pub held: Vec<Held>,
}

/// What a host has, measured on it: its online cores, its memory, and the size of the file
/// system its task directories are on.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measured {
    pub cpus: f64,
    pub ram_mb: u64,
    pub disk_mb: u64,
}

/// Something that changes whenever a task's status file is replaced: reap --follow looks
/// again only at tasks whose stamp moved.
pub type Stamp = (u64, i64, i64, u64);

/// The host could not be reached, or its answer was cut short (ssh's exit status 255, a
/// timeout): nothing is known of what happened there, and never that a task failed. Or
/// the host refused the step: another scheduler, of a later epoch, has taken over.
#[derive(Clone, Debug, PartialEq)]
pub struct Unreached {
    pub why: String,
    /// The host answered, refusing this scheduler's epoch.
    pub superseded: bool,
}

impl Unreached {
    pub fn new(why: impl Into<String>) -> Unreached {
        Unreached {
            why: why.into(),
            superseded: false,
        }
    }
}

impl std::fmt::Display for Unreached {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

/// The scheduler's epoch: kept in `STATE.epoch` beside the state file (0 when there is
/// none), sent with every step, and refused by a host that has seen a later one. A
/// scheduler that takes over a fleet (a standby, a state restored from a backup or rebuilt
/// from the hosts) raises it (`offer take-over`), and from its first step on no host obeys
/// the one before.
pub fn epoch(state: &Path) -> Result<u64> {
    let path = epoch_file(state);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map_err(|_| {
            crate::exit::fail(
                crate::exit::Status::Io,
                format!("{} is not an epoch", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    }
}

/// Raises the epoch past `at_least` and the one kept, durably; returns the new one.
pub fn take_over(state: &Path, at_least: u64) -> Result<u64> {
    let next = epoch(state)?.max(at_least) + 1;
    taskdir::replace_file_mode(
        &epoch_file(state),
        format!("{next}\n").as_bytes(),
        true,
        0o644,
    )?;
    Ok(next)
}

fn epoch_file(state: &Path) -> std::path::PathBuf {
    let mut name = state.as_os_str().to_owned();
    name.push(".epoch");
    name.into()
}

/// One answer per task asked about, in the order asked, or the host was not reached.
pub type Reply<T> = Result<Vec<T>, Unreached>;

/// A host as launch and reap reach it. Shared by the threads that work hosts in parallel.
pub trait TaskHost: Send + Sync {
    /// Writes each task's directory and starts its supervisor, unless a call-off or a later
    /// incarnation has fenced the incarnation out.
    fn start(&self, tasks: &[Prepared]) -> Reply<Start>;

    /// The latest status of each (task, incarnation), when its supervisor has written one.
    fn reports(&self, tasks: &[(&str, u32)]) -> Reply<Option<taskdir::Status>>;

    /// SIGTERM to the supervisor of each (task, incarnation), if that incarnation runs:
    /// whether it was signalled.
    fn stop(&self, tasks: &[(&str, u32)]) -> Reply<bool>;

    /// What each task's directory says of the task's current incarnation.
    fn look(&self, tasks: &[(&str, &Task)]) -> Reply<Result<Look, String>>;

    /// The stamp of each task's status file (None: no status yet).
    fn stamps(&self, tasks: &[&str]) -> Reply<Option<Stamp>>;

    /// Calls off each (task, incarnation) whose start no supervisor has taken: afterwards
    /// no supervisor can start it. false where a supervisor got there first.
    fn call_off(&self, tasks: &[(&str, u32)]) -> Reply<bool>;

    /// Signals and kills, each checked against pid and start time first: Ok(false) when the
    /// process signalled first was gone.
    fn act(&self, acts: &[(&str, &Act)]) -> Reply<Result<bool, String>>;

    /// Every supervisor at work on the host that has reported (one that has not yet cannot
    /// be told from a start under way).
    fn supervisors(&self) -> Reply<Found>;

    /// Every supervisor at work on the host and a look at each task: `supervisors` and
    /// `look` in one step (reap's first call to a host in a pass).
    fn survey(&self, tasks: &[(&str, &Task)]) -> Result<Survey, Unreached> {
        Ok(Survey {
            found: self.supervisors()?,
            looks: self.look(tasks)?,
        })
    }

    /// What the host has (`offer add --probe`).
    fn probe(&self) -> Result<Measured, Unreached>;

    /// Every task directory of the host (`offer rebuild`). Read only: asked whatever the
    /// scheduler's epoch, so that a scheduler rebuilding its state learns how far to take
    /// over.
    fn inventory(&self) -> Result<Inventory, Unreached>;

    /// A piece of the log of one run (incarnation) of a task (`job logs`), from a position
    /// on (see `runlogs`); Err(why) when the host keeps no logs of that run. Read only:
    /// asked whatever the scheduler's epoch.
    fn read_log(&self, read: &LogRead) -> Result<Result<runlogs::Piece, String>, Unreached>;
}

/// Which log to read, and from where.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogRead {
    /// `role/env/name/instance`.
    pub task: String,
    pub incarnation: u32,
    pub stream: runlogs::Stream,
    pub from: Option<runlogs::Position>,
}

/// The newest scheduler epoch a host root has seen (`ROOT/epoch`; 0 when none).
pub fn seen_epoch(root: &Path) -> u64 {
    std::fs::read_to_string(root.join("epoch"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// How many hosts launch and reap work at once unless told (`--parallel`).
pub const PARALLEL: usize = 32;

/// Runs `f` on every item, up to `parallel` at once, and returns the results in the order
/// of the items: a step of every host at once, each host one session at a time.
pub fn fan_out<T: Sync, R: Send>(
    items: &[T],
    parallel: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    if items.len() <= 1 || parallel <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..parallel.min(items.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
            });
        }
    });
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .expect("every item was worked")
        })
        .collect()
}

/// Every local host root on this machine (`run/*` beside the state file), with the host
/// names they are for: those of hosts no longer in the state too, whose supervisors may
/// still run.
pub fn local_hosts(state: &Path) -> Vec<(String, Local)> {
    taskdir::subdirs(&taskdir::run_root(state))
        .into_iter()
        .map(|(name, root)| (name, Local::new(root)))
        .collect()
}

/// How to reach `host`, a host of the state at `state`. Local hosts keep their task
/// directories under `run/HOST/` beside the state file; ssh hosts are reached with
/// FORMIC_SSH (default `ssh`), their connections shared through sockets beside the state
/// file, running `formic-host` from FORMIC_REMOTE_BIN there (default: its PATH).
pub fn reach(state: &Path, host: &Host) -> Result<Box<dyn TaskHost>> {
    Ok(match host.transport {
        Transport::Local => Box::new(Local::new(taskdir::host_root(state, &host.name))),
        Transport::Ssh => {
            let command = std::env::var("FORMIC_SSH").unwrap_or_else(|_| "ssh".into());
            let remote_bin = std::env::var("FORMIC_REMOTE_BIN").ok();
            let control = state
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            Box::new(Ssh::new(
                &command,
                host.ssh_target(),
                host.root().into(),
                control,
                remote_bin.as_deref(),
                epoch(state)?,
            ))
        }
    })
}
