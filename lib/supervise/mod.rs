//! The per-task supervisor, after s6-supervise: a small parent that starts one task in its
//! own session and sandbox, waits for it, and writes what became of it. Nothing but the
//! kernel is trusted for "it exited": the supervisor is the task's parent and reaps it, and
//! it is the subreaper of everything the task leaves behind.
//!
//! Its life, in the task's directory (see `taskdir`):
//! 1. take `lock` for good (a second supervisor of the same task gives up at once);
//! 2. status STARTING; refuse a spec it cannot honour (`spec`); make the task's cgroups
//!    (killing what an earlier supervisor of the task left in them) and give it its
//!    identity; refuse a sandbox that identity cannot reach; start it (`world`): its own
//!    session and process group, the sandbox as working directory, only fds 0-2 (stdin
//!    /dev/null, stdout and stderr piped into size-bounded logs of the run in `logs/N/`,
//!    see `log` and `runlogs`), the
//!    environment given and nothing inherited, no new privileges, no capabilities, the
//!    given or a dynamic user;
//! 3. status RUNNING with the task's pid and start time;
//! 4. run the state machine (`machine`) until the task's end is recorded: on the task's
//!    exit, kill everything left in its cgroups (and its process group, and every orphan
//!    handed to us, see `procs`), and write FINISHED (exit 0) or FAILED; on SIGTERM (a stop
//!    request), SIGTERM to the task's process group at once, SIGKILL after the grace
//!    period, and write KILLED; meanwhile run the health check beside the loop (`health`)
//!    and record its verdict.
//!
//! A supervisor never leaves a task behind: whatever makes it give up (a status it cannot
//! write on a full disk, say, or a bug of its own), it kills everything it started first.
//!
//! Nothing a task can change is ever opened by the supervisor: the task owns only its
//! sandbox, and the supervisor writes the logs, the status and everything else in the
//! root-owned task directory beside it.

mod health;
mod log;
mod machine;
mod procs;
mod spec;
mod world;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

pub use spec::{Health, Spec};

use crate::exit::{fail, Status as Exit};
use crate::limits::Enforcer;
use crate::taskdir::{self, Status};
use machine::Supervisor;

/// Supervise one task: start it, wait for it, record how it ended
///
/// The per-task supervisor that launch starts for every instance. DIR is the task's
/// directory on this host (spec.json, lock, status, logs/, sandbox/). It holds DIR/lock for
/// as long as it lives, writes DIR/status atomically at every change, and outlives whoever
/// started it. Send it SIGTERM to stop the task: SIGTERM to the task's process group,
/// SIGKILL after the grace period.
#[derive(clap::Parser, Debug)]
#[command(name = "formic-supervise", version, after_help = crate::exit::TABLE)]
pub struct Cli {
    /// The task's directory
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// The binary's body: supervise, and exit 0 however the task ended (its end is in status).
pub fn main(cli: Cli) -> Result<Exit> {
    run(&cli.dir).map(|_| Exit::Done)
}

use crate::clock::now;

/// Supervises the task in `dir` until it ends; returns its final status.
pub fn run(dir: &Path) -> Result<Status> {
    // Absolute, so a dynamic uid's claim names the directory whatever the caller's cwd.
    let dir = &fs::canonicalize(dir).with_context(|| format!("opening {}", dir.display()))?;
    let lock = taskdir::lock_file(dir)?;
    if !taskdir::lock_exclusive(&lock, Duration::from_millis(100)) {
        return Err(fail(
            Exit::Temporary,
            format!("{} is supervised already", dir.display()),
        ));
    }
    let spec = read_spec(dir)?;
    nix::sys::prctl::set_child_subreaper(true).context("becoming a subreaper")?;
    let me = std::process::id();
    let mut status = Status {
        task: spec.task.clone(),
        incarnation: Some(spec.incarnation),
        supervisor: (me, crate::process::start_time(me).unwrap_or(0)),
        state: "STARTING".into(),
        since: now(),
        ..Status::default()
    };
    // Nothing is started yet: a status that cannot be written leaves nothing behind.
    status.write(dir)?;
    if let Some(why) = spec.refusal() {
        let error = fail(
            Exit::BadInput,
            format!("{}/spec.json: {why}", dir.display()),
        );
        return Box::new(NotStarted { status, error }).record(dir);
    }
    let signals = stop_signals()?;
    let limits = Enforcer::prepare(&spec.task, dir, spec.limits);
    status.limits = Some(limits.applied.clone());
    let weaker = limits.applied.weaker_than(spec.limits);
    if !weaker.is_empty() {
        eprintln!(
            "formic-supervise: {}: limits weaker than asked on this host: {}",
            spec.task,
            weaker.join("; ")
        );
    }
    let mut task = match Supervisor::start(dir, spec, status, limits) {
        Ok(task) => task,
        Err(not_started) => return not_started.record(dir),
    };
    // A bug (a panic) in the loop is caught too: the task must not outlive its supervisor.
    let supervised =
        crate::exit::catch_bug(|| task.write_status().and_then(|()| task.supervise(&signals)));
    match supervised.and_then(|r| r) {
        Ok(()) => {
            drop(lock);
            Ok(task.status)
        }
        Err(e) => {
            task.give_up(&e);
            Err(e)
        }
    }
}

/// The task's `spec.json`. launch writes it under the lock before it starts us, and reap
/// removes it under the lock when it calls an abandoned start off: without it there is
/// nothing this supervisor may run.
fn read_spec(dir: &Path) -> Result<Spec> {
    let text = match fs::read_to_string(dir.join("spec.json")) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(fail(
                Exit::Temporary,
                format!("{}: the start was called off (no spec.json)", dir.display()),
            ))
        }
        r => r.with_context(|| format!("reading {}/spec.json", dir.display()))?,
    };
    Spec::parse(&text).map_err(|why| {
        fail(
            Exit::BadInput,
            format!("{}/spec.json: {why}", dir.display()),
        )
    })
}

/// SIGCHLD and the stop signals, blocked and read from a descriptor, so the supervisor's
/// loop is the only place they act.
fn stop_signals() -> Result<SignalFd> {
    let mut signals = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        signals.add(s);
    }
    signals.thread_block().context("blocking signals")?;
    Ok(SignalFd::with_flags(
        &signals,
        SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
    )?)
}

/// The exit status of a command that could not be run, as a shell gives it: 127 when it
/// was not found, 126 when it was found but could not be run.
pub fn cannot_run_status(error: &anyhow::Error) -> i32 {
    let not_found = error.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound)
    });
    if not_found {
        127
    } else {
        126
    }
}

/// Marks every descriptor above 2 close-on-exec, between fork and exec (one system call,
/// async-signal-safe). Marked, not closed: the standard library reports a failed exec
/// through a pipe that must stay open until the exec.
pub fn only_std_fds_cross_exec() -> std::io::Result<()> {
    use nix::libc;
    const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;
    // SAFETY: a plain system call on integers.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A task that could not be started, and why: it failed as a shell says a command that
/// cannot run failed (127: not found, 126: found but not runnable).
struct NotStarted {
    status: Status,
    error: anyhow::Error,
}

impl NotStarted {
    /// Records the failure; the supervisor then exits with the error's status.
    fn record(mut self: Box<Self>, dir: &Path) -> Result<Status> {
        let reason = format!("{:#}", self.error);
        eprintln!("formic-supervise: {}: {reason}", self.status.task);
        // Where the task's own complaint would have gone, for whoever reads its logs (when
        // it got as far as having them).
        let line = format!("formic-supervise: {reason}\n");
        let run = crate::runlogs::run_dir(dir, self.status.incarnation.unwrap_or(0));
        let stderr = run.join("stderr");
        let _ = log::append_private(&stderr).and_then(|mut f| f.write_all(line.as_bytes()));
        self.status.state = "FAILED".into();
        self.status.exit = Some(cannot_run_status(&self.error));
        self.status.reason = Some(reason);
        self.status.since = now();
        self.status.write(dir)?;
        Err(self.error)
    }
}
