//! The per-task supervisor, after s6-supervise: a small parent that starts one task in its
//! own session and sandbox, waits for it, and writes what became of it. Nothing but the
//! kernel is trusted for "it exited": the supervisor is the task's parent and reaps it, and
//! it is the subreaper of everything the task leaves behind.
//!
//! Its life, in the task's directory (see `rundir`):
//! 1. take `lock` for good (a second supervisor of the same task gives up at once);
//! 2. status STARTING; make the task's cgroups (killing what an earlier supervisor of the
//!    task left in them) and give it its identity; start it: its own session and process
//!    group, the sandbox as working directory, only fds 0-2 (stdin /dev/null, stdout and
//!    stderr piped into size-bounded logs in `logs/`), the environment given and nothing
//!    inherited, no new privileges, no capabilities, the given or a dynamic user;
//! 3. status RUNNING with the task's pid and start time;
//! 4. wait: on the task's exit, kill everything left in its cgroups (and its process group,
//!    and every orphan handed to us), and write FINISHED (exit 0) or FAILED; on SIGTERM (a
//!    stop request), SIGTERM to the task's process group, SIGKILL after the grace period,
//!    and write KILLED; meanwhile run the health check and record its verdict.
//!
//! A supervisor never leaves a task behind: whatever makes it give up (a status it cannot
//! write on a full disk, say), it kills everything it started first.
//!
//! Nothing a task can change is ever opened by the supervisor: the task owns only its
//! sandbox, and the supervisor writes the logs, the status and everything else in the
//! root-owned task directory beside it.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{Gid, Pid, Uid};
use serde_json::Value;

use crate::exit::{fail, Status as Exit};
use crate::identity::{self, Ids};
use crate::limits::{Enforcer, InChild, Limits};
use crate::rundir::{self, Status};

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

/// What to run, as launch resolved it (`spec.json` in the task's directory).
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub task: String,
    /// The incarnation of the task this directory was prepared for (see `Task::incarnation`);
    /// the supervisor reports it in every status.
    pub incarnation: u32,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Run as this user; None runs as a dynamic user when `dynamic_ids` names a range,
    /// else as the supervisor's own user.
    pub user: Option<String>,
    /// The uid range a task without a named user takes its own uid from.
    pub dynamic_ids: Option<(u32, u32)>,
    /// Whether the task may run as root.
    pub allow_root: bool,
    /// Seconds between SIGTERM and SIGKILL on a stop.
    pub grace_s: f64,
    /// Size at which a log is rotated (one old generation is kept).
    pub log_max_bytes: u64,
    /// The operators' group that may read the task's logs (root's when it does not exist).
    pub log_group: Option<String>,
    pub health: Option<Health>,
    /// What the task may use (its reservation): cgroups where the host has them.
    pub limits: Limits,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Health {
    /// HTTP GET of `path` on 127.0.0.1:`port`; 2xx and 3xx are healthy.
    pub port: u16,
    pub path: String,
    /// Or a command (argv, no shell) run in the sandbox as the task's user, in its
    /// cgroups: exit 0 is healthy. Used when not empty.
    pub cmd: Vec<String>,
    pub interval_s: f64,
    pub timeout_s: f64,
    /// Consecutive failures that make the task unhealthy.
    pub failures: u32,
}

impl Spec {
    pub fn from_json(v: &Value) -> Option<Spec> {
        let strings = |v: &Value| {
            v.as_array().map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect::<Vec<_>>()
            })
        };
        let health = v.get("health").filter(|h| !h.is_null()).and_then(|h| {
            let cmd = strings(&h["cmd"]).unwrap_or_default();
            Some(Health {
                port: h["port"]
                    .as_u64()
                    .or(if cmd.is_empty() { None } else { Some(0) })? as u16,
                path: h["path"].as_str().unwrap_or("/").to_string(),
                cmd,
                interval_s: h["interval_s"].as_f64().unwrap_or(10.0),
                timeout_s: h["timeout_s"].as_f64().unwrap_or(1.0),
                failures: h["failures"].as_u64().unwrap_or(3) as u32,
            })
        });
        let range = |r: &Value| Some((r[0].as_u64()? as u32, r[1].as_u64()? as u32));
        Some(Spec {
            task: v["task"].as_str()?.to_string(),
            incarnation: v["incarnation"].as_u64().unwrap_or(0) as u32,
            argv: strings(&v["argv"]).filter(|a| !a.is_empty())?,
            env: v["env"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default(),
            user: v["user"].as_str().map(String::from),
            dynamic_ids: range(&v["dynamic_ids"]),
            allow_root: v["allow_root"].as_bool().unwrap_or(false),
            grace_s: v["grace_s"].as_f64().unwrap_or(10.0),
            log_max_bytes: v["log_max_bytes"].as_u64().unwrap_or(16 << 20),
            log_group: v["log_group"].as_str().map(String::from),
            health,
            limits: Limits {
                cpus: v["limits"]["cpus"].as_u64().unwrap_or(0) as u32,
                ram_mb: v["limits"]["ram_mb"].as_u64().unwrap_or(0),
                pids: v["limits"]["pids"].as_u64().unwrap_or(0) as u32,
            },
        })
    }

    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "task": self.task, "incarnation": self.incarnation, "argv": self.argv,
            "env": self.env.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
            "user": self.user, "dynamic_ids": self.dynamic_ids.map(|(a, b)| [a, b]),
            "allow_root": self.allow_root, "grace_s": self.grace_s,
            "log_max_bytes": self.log_max_bytes, "log_group": self.log_group,
            "limits": {"cpus": self.limits.cpus, "ram_mb": self.limits.ram_mb, "pids": self.limits.pids},
            "health": self.health.as_ref().map(|h| serde_json::json!({"port": h.port, "path": h.path, "cmd": h.cmd,
                "interval_s": h.interval_s, "timeout_s": h.timeout_s, "failures": h.failures})),
        })
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Supervises the task in `dir` until it ends; returns its final status.
pub fn run(dir: &Path) -> Result<Status> {
    // Absolute, so a dynamic uid's claim names the directory whatever the caller's cwd.
    let dir = &fs::canonicalize(dir).with_context(|| format!("opening {}", dir.display()))?;
    let lock = rundir::lock_file(dir)?;
    if !rundir::lock_exclusive(&lock, Duration::from_millis(100)) {
        return Err(fail(
            Exit::Temporary,
            format!("{} is supervised already", dir.display()),
        ));
    }
    // launch writes spec.json under the lock before it starts us, and reap removes it
    // under the lock when it calls an abandoned start off: without it there is nothing
    // this supervisor may run.
    let text = match fs::read_to_string(dir.join("spec.json")) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(fail(
                Exit::Temporary,
                format!("{}: the start was called off (no spec.json)", dir.display()),
            ))
        }
        r => r.with_context(|| format!("reading {}/spec.json", dir.display()))?,
    };
    let spec = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| Spec::from_json(&v))
        .ok_or_else(|| {
            fail(
                Exit::BadInput,
                format!("{}/spec.json is not a task spec", dir.display()),
            )
        })?;
    nix::sys::prctl::set_child_subreaper(true).context("becoming a subreaper")?;
    let me = std::process::id();
    let mut status = Status {
        task: spec.task.clone(),
        incarnation: Some(spec.incarnation),
        supervisor: (me, rundir::start_time(me).unwrap_or(0)),
        state: "STARTING".into(),
        since: now(),
        ..Status::default()
    };
    // Nothing is started yet: a status that cannot be written leaves nothing behind.
    status.write(dir)?;
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
    match task.write_status().and_then(|()| task.supervise(&signals)) {
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
        let stderr = dir.join("logs/stderr");
        let _ = append_private(&stderr).and_then(|mut f| f.write_all(line.as_bytes()));
        self.status.state = "FAILED".into();
        self.status.exit = Some(cannot_run_status(&self.error));
        self.status.reason = Some(reason);
        self.status.since = now();
        self.status.write(dir)?;
        Err(self.error)
    }
}

/// One supervised task, from its start to its final status.
struct Supervisor {
    dir: PathBuf,
    spec: Spec,
    status: Status,
    limits: Enforcer,
    ids: Option<Ids>,
    /// The task's pid, which is also its process group and session.
    group: Pid,
    logs: [Option<Log>; 2],
    /// What the logs closed so far could not write.
    dropped_by_closed_logs: u64,
    exited: Option<WaitStatus>,
    stop_deadline: Option<Instant>,
    next_check: Option<Instant>,
}

impl Supervisor {
    /// Starts the task (see [`spawn`]); what its directory holds becomes its supervisor.
    fn start(
        dir: &Path,
        spec: Spec,
        mut status: Status,
        mut limits: Enforcer,
    ) -> Result<Supervisor, Box<NotStarted>> {
        let (ids, log_owner, mut child) = match spawn(dir, &spec, &limits, &mut status) {
            Ok(started) => started,
            Err(error) => {
                limits.kill_all();
                limits.release();
                return Err(Box::new(NotStarted { status, error }));
            }
        };
        let pid = child.id();
        let logs_at = dir.join("logs");
        let logs = [
            child
                .stdout
                .take()
                .map(|p| Log::new(Source::Out(p), logs_at.join("stdout"), &spec, log_owner)),
            child
                .stderr
                .take()
                .map(|p| Log::new(Source::Err(p), logs_at.join("stderr"), &spec, log_owner)),
        ];
        drop(child); // waited for by pid, with every orphan
        let next_check = spec
            .health
            .as_ref()
            .map(|h| Instant::now() + secs(h.interval_s));
        let mut task = Supervisor {
            dir: dir.to_path_buf(),
            spec,
            status,
            limits,
            ids,
            group: Pid::from_raw(pid as i32),
            logs,
            dropped_by_closed_logs: 0,
            exited: None,
            stop_deadline: None,
            next_check,
        };
        task.status.pid = Some((pid, rundir::start_time(pid).unwrap_or(0)));
        task.status.state = "RUNNING".into();
        task.status.since = now();
        Ok(task)
    }

    fn write_status(&mut self) -> Result<()> {
        let open: u64 = self.logs.iter().flatten().map(|l| l.dropped).sum();
        self.status.log_dropped = self.dropped_by_closed_logs + open;
        self.status.write(&self.dir)
    }

    /// Waits for the task (and every event about it) until it has ended and is recorded.
    fn supervise(&mut self, signals: &SignalFd) -> Result<()> {
        loop {
            self.wait_for_events(signals)?;
            self.reap();
            self.enforce_stop_deadline();
            self.check_health()?;
            if self.exited.is_some() && self.try_finish()? {
                return Ok(());
            }
        }
    }

    /// Blocks until a signal, output or a deadline; copies output and acts on signals.
    fn wait_for_events(&mut self, signals: &SignalFd) -> Result<()> {
        let deadline = [self.stop_deadline, self.next_check]
            .into_iter()
            .flatten()
            .min();
        let timeout = deadline.map_or(PollTimeout::NONE, |d| {
            PollTimeout::try_from(d.saturating_duration_since(Instant::now()))
                .unwrap_or(PollTimeout::MAX)
        });
        let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        let open: Vec<usize> = (0..2).filter(|&i| self.logs[i].is_some()).collect();
        for &i in &open {
            let log = self.logs[i].as_ref().expect("open logs only");
            fds.push(PollFd::new(log.fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("waiting"),
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        for (k, &i) in open.iter().enumerate() {
            if ready[k + 1] && !self.logs[i].as_mut().is_some_and(Log::pump) {
                // The task closed it.
                let closed = self.logs[i].take().map_or(0, |l| l.dropped);
                self.dropped_by_closed_logs += closed;
            }
        }
        if ready[0] {
            while let Ok(Some(info)) = signals.read_signal() {
                let stop =
                    Signal::try_from(info.ssi_signo as i32).is_ok_and(|s| s != Signal::SIGCHLD);
                if stop && self.stop_deadline.is_none() && self.exited.is_none() {
                    self.begin_stop()?;
                }
            }
        }
        Ok(())
    }

    /// A stop request: SIGTERM to the task's group now, SIGKILL at the grace period's end.
    fn begin_stop(&mut self) -> Result<()> {
        let _ = killpg(self.group, Signal::SIGTERM);
        self.stop_deadline = Some(Instant::now() + secs(self.spec.grace_s));
        self.status.state = "KILLING".into();
        self.status.since = now();
        self.write_status()
    }

    /// Reaps whatever has ended: the task, and orphans handed to us as subreaper.
    fn reap(&mut self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(ws) if ws.pid() == Some(self.group) => self.exited = Some(ws),
                Ok(_) => {}
            }
        }
    }

    fn enforce_stop_deadline(&mut self) {
        if let Some(d) = self.stop_deadline {
            if Instant::now() >= d && self.exited.is_none() {
                self.kill_everything();
                self.stop_deadline = Some(Instant::now() + Duration::from_secs(3600));
            }
        }
    }

    fn check_health(&mut self) -> Result<()> {
        let (Some(h), Some(at)) = (&self.spec.health, self.next_check) else {
            return Ok(());
        };
        if Instant::now() < at || self.exited.is_some() || self.stop_deadline.is_some() {
            return Ok(());
        }
        let ok = if h.cmd.is_empty() {
            http_ok(h)
        } else {
            command_ok(h, &self.spec, &self.dir, self.ids.clone(), &self.limits)
        };
        let failures = if ok {
            0
        } else {
            self.status.health_failures + 1
        };
        // Healthy from the first check that passes (not before: a task not yet answering
        // must not be announced); unhealthy after `failures` in a row.
        let healthy = if ok {
            Some(true)
        } else if failures >= h.failures {
            Some(false)
        } else {
            self.status.healthy
        };
        self.next_check = Some(Instant::now() + secs(h.interval_s));
        if self.status.healthy != healthy || !ok {
            self.status.health_failures = failures;
            self.status.healthy = healthy;
            return self.write_status();
        }
        self.status.health_failures = failures;
        Ok(())
    }

    /// The task has exited: nothing it started may outlive it. Finishes once its output
    /// is copied; false while descendants still hold its pipes (they are being killed).
    fn try_finish(&mut self) -> Result<bool> {
        self.kill_everything();
        if !(self.logs.iter().all(Option::is_none) || no_children()) {
            return Ok(false);
        }
        for log in self.logs.iter_mut().flatten() {
            log.pump_until_eof();
        }
        reap_all();
        self.limits.release();
        let stopped = self.stop_deadline.is_some();
        finish(&mut self.status, self.exited.expect("exited"), stopped);
        self.write_status()?;
        Ok(true)
    }

    /// SIGKILL to the task's cgroups, its process group and every orphan it left us.
    fn kill_everything(&self) {
        self.limits.kill_all();
        let _ = killpg(self.group, Signal::SIGKILL);
        if !no_children() {
            kill_orphans();
        }
    }

    /// The supervisor cannot go on: it kills and reaps everything it started, and tries
    /// to leave a final word, so that nothing runs that no supervisor watches.
    fn give_up(&mut self, why: &anyhow::Error) {
        self.kill_everything();
        reap_all();
        self.limits.release();
        eprintln!("formic-supervise: {}: giving up: {why:#}", self.spec.task);
        self.status.state = "FAILED".into();
        self.status.reason = Some(format!("supervisor gave up: {why:#}"));
        self.status.since = now();
        let _ = self.write_status();
    }
}

/// Gives the task its identity (recorded in `status`), its logs and sandbox, and starts it
/// in its world; returns its ids, the owner of its logs and the child.
fn spawn(
    dir: &Path,
    spec: &Spec,
    limits: &Enforcer,
    status: &mut Status,
) -> Result<(Option<Ids>, (Uid, Gid), std::process::Child)> {
    let ids = identity(spec, dir)?;
    let owner = ids.as_ref().map_or(Uid::effective(), |i| i.uid);
    status.uid = Some(owner.as_raw());
    let log_owner = (owner, identity::log_gid(spec.log_group.as_deref()));
    give_logs(&make_logs_dir(dir)?, log_owner)?;
    give_sandbox(dir, ids.as_ref())?;
    let mut cmd = in_task_world(spec, dir, &spec.argv, ids.clone(), limits.for_child());
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {:?}", spec.argv[0]))?;
    Ok((ids, log_owner, child))
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn finish(status: &mut Status, ws: WaitStatus, stopped: bool) {
    let (exit, signal) = match ws {
        WaitStatus::Exited(_, code) => (Some(code), None),
        WaitStatus::Signaled(_, sig, _) => (None, Some(sig as i32)),
        _ => (None, None),
    };
    status.exit = exit;
    status.signal = signal;
    status.state = match (stopped, exit) {
        (true, _) => "KILLED",
        (false, Some(0)) => "FINISHED",
        _ => "FAILED",
    }
    .into();
    status.since = now();
}

/// The ids the task runs as (None: the supervisor's own): the user its job names, else an
/// identity of its own from the spec's range. Root only when the spec allows it.
fn identity(spec: &Spec, dir: &Path) -> Result<Option<Ids>> {
    let ids = match (&spec.user, spec.dynamic_ids) {
        (Some(name), _) => Some(identity::named(name)?),
        (None, Some(range)) => Some(identity::dynamic(dir, range)?),
        (None, None) => None,
    };
    let uid = ids.as_ref().map_or(Uid::effective(), |i| i.uid);
    if uid.is_root() && !spec.allow_root {
        return Err(fail(
            Exit::Permission,
            format!("task {} would run as root, which is not allowed", spec.task),
        ));
    }
    Ok(ids)
}

/// The sandbox belongs to the task alone: its owner, mode 0700. Changed through a
/// descriptor of the directory itself, never by a path the task could redirect.
fn give_sandbox(dir: &Path, ids: Option<&Ids>) -> Result<()> {
    let sandbox = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW)
        .open(dir.join("sandbox"))
        .with_context(|| format!("opening {}/sandbox", dir.display()))?;
    if let Some(ids) = ids {
        nix::unistd::fchown(sandbox.as_raw_fd(), Some(ids.uid), Some(ids.gid))
            .context("giving the sandbox to the task's user")?;
    }
    nix::sys::stat::fchmod(
        sandbox.as_raw_fd(),
        nix::sys::stat::Mode::from_bits_truncate(0o700),
    )
    .context("making the sandbox private")?;
    Ok(())
}

/// `DIR/logs/`: root's, so nothing the task does can redirect a log the supervisor opens.
/// Passable by all (the task's user and the operators' group read their files by path),
/// listable by root alone.
fn make_logs_dir(dir: &Path) -> Result<PathBuf> {
    let logs = dir.join("logs");
    match fs::DirBuilder::new().mode(0o711).create(&logs) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", logs.display())),
    }
    Ok(logs)
}

/// The logs an earlier run left go to this run's user (a task directory whose uid changed
/// must not leave them to the uid's next holder). `logs/` is root's: its entries are ours.
fn give_logs(logs: &Path, (uid, gid): (Uid, Gid)) -> Result<()> {
    for name in ["stdout", "stderr", "stdout.1", "stderr.1"] {
        match std::os::unix::fs::lchown(logs.join(name), Some(uid.as_raw()), Some(gid.as_raw())) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("giving {}/{name} to the task", logs.display()))
            }
        }
    }
    Ok(())
}

/// Opens a log for appending, never through a symbolic link.
fn append_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

/// A command in the task's world, for the task and for its health command alike: the
/// sandbox as working directory, the spec's environment and nothing else, stdin from
/// /dev/null, a session of its own, the task's cgroups, no new privileges, the task's
/// user with no capabilities, and only fds 0-2.
fn in_task_world(
    spec: &Spec,
    dir: &Path,
    argv: &[String],
    ids: Option<Ids>,
    limits: InChild,
) -> Command {
    use nix::libc;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir.join("sandbox"))
        .stdin(Stdio::null());
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe
    // system calls (sigprocmask, setsid, write, setrlimit, prctl, setgroups, setgid,
    // setuid, close_range) on values prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            SigSet::empty()
                .thread_set_mask()
                .map_err(std::io::Error::from)?;
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            // Into its cgroups (or under its rlimits) before it runs a single instruction
            // of its own, and while still privileged enough to move itself.
            limits.apply()?;
            // Neither setuid binaries nor file capabilities give it more than it has.
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(ids) = &ids {
                if !ids.uid.is_root() {
                    // No capability can come back, whatever it executes.
                    for cap in 0..64 {
                        libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
                    }
                }
                nix::unistd::setgroups(&ids.groups).map_err(std::io::Error::from)?;
                nix::unistd::setgid(ids.gid).map_err(std::io::Error::from)?;
                nix::unistd::setuid(ids.uid).map_err(std::io::Error::from)?;
            }
            // Only 0-2 cross, whatever a library left open without CLOEXEC.
            only_std_fds_cross_exec()
        });
    }
    cmd
}

/// Runs the health command in the task's world; killed at the timeout.
fn command_ok(h: &Health, spec: &Spec, dir: &Path, ids: Option<Ids>, limits: &Enforcer) -> bool {
    let mut cmd = in_task_world(spec, dir, &h.cmd, ids, limits.for_child());
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let Ok(mut child) = cmd.spawn() else {
        return false;
    };
    let deadline = Instant::now() + secs(h.timeout_s);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                let _ = child.wait();
                return false;
            }
        }
    }
}

fn http_ok(h: &Health) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], h.port));
    let timeout = secs(h.timeout_s).max(Duration::from_millis(1));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    if write!(s, "GET {} HTTP/1.0\r\nHost: localhost\r\n\r\n", h.path).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    let mut n = 0;
    while n < head.len() {
        match s.read(&mut head[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    // "HTTP/1.x 2xx" or "3xx"
    n >= 12 && head.starts_with(b"HTTP/") && matches!(head[9], b'2' | b'3')
}

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

fn kill_orphans() {
    for pid in children() {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Whether this process has no children left. The kernel knows at once (ECHILD); only when
/// some remain does `children` walk /proc to find them. Nothing is reaped here (WNOWAIT):
/// the task's own exit status is collected by `reap`.
fn no_children() -> bool {
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

fn reap_all() {
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

enum Source {
    Out(ChildStdout),
    Err(ChildStderr),
}

/// A task's output pipe copied into a log file in `DIR/logs/`, rotated at a size bound. The
/// file belongs to the task's user and the operators' group (0640). What cannot be
/// written (a full disk) is counted and dropped: a log is never a reason to stop
/// supervising.
struct Log {
    source: Source,
    path: PathBuf,
    owner: (Uid, Gid),
    file: Option<File>,
    written: u64,
    max: u64,
    dropped: u64,
}

impl Log {
    fn new(source: Source, path: PathBuf, spec: &Spec, owner: (Uid, Gid)) -> Log {
        let written = fs::symlink_metadata(&path).map_or(0, |m| m.len());
        Log {
            source,
            path,
            owner,
            file: None,
            written,
            max: spec.log_max_bytes.max(4096),
            dropped: 0,
        }
    }

    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match &self.source {
            Source::Out(p) => p.as_fd(),
            Source::Err(p) => p.as_fd(),
        }
    }

    /// Copies what is there; false at end of file, or when nothing more can be read.
    fn pump(&mut self) -> bool {
        let mut buf = [0u8; 16384];
        let n = match &mut self.source {
            Source::Out(p) => p.read(&mut buf),
            Source::Err(p) => p.read(&mut buf),
        };
        match n {
            Ok(0) => false,
            Ok(n) => {
                self.append(&buf[..n]);
                true
            }
            Err(e) => e.kind() == std::io::ErrorKind::Interrupted,
        }
    }

    /// Appends `bytes`, rotating whenever the log reaches its bound: a read larger than
    /// the bound (it may be up to 16 KiB, the bound as little as 4 KiB) is split across
    /// files rather than making one larger than promised.
    fn append(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.written >= self.max {
                self.rotate();
            }
            let room = (self.max - self.written).min(bytes.len() as u64) as usize;
            let (now, rest) = bytes.split_at(room);
            self.write(now);
            bytes = rest;
        }
    }

    /// The current log becomes the one old generation (`.1`), replacing the one before.
    fn rotate(&mut self) {
        self.file = None;
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        let _ = fs::rename(&self.path, old);
        self.written = 0;
    }

    fn write(&mut self, bytes: &[u8]) {
        let n = bytes.len() as u64;
        if self.file.is_none() {
            self.file = self.open().ok();
        }
        match self.file.as_mut().map(|f| f.write_all(bytes)) {
            Some(Ok(())) => self.written += n,
            Some(Err(_)) | None => {
                self.dropped += n;
                self.file = None; // opened afresh for the next output
            }
        }
    }

    fn open(&self) -> std::io::Result<File> {
        let f = append_private(&self.path)?;
        nix::unistd::fchown(f.as_raw_fd(), Some(self.owner.0), Some(self.owner.1))?;
        nix::sys::stat::fchmod(
            f.as_raw_fd(),
            nix::sys::stat::Mode::from_bits_truncate(0o640),
        )?;
        Ok(f)
    }

    /// Copies what is left once the writers are gone, without blocking.
    fn pump_until_eof(&mut self) {
        let fd = self.fd().as_raw_fd();
        if let Ok(flags) = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL) {
            let flags =
                nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
            let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags));
        }
        while self.pump() {}
    }
}
