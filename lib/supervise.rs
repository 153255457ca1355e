//! The per-task supervisor, after s6-supervise: a small parent that starts one task in its
//! own session and sandbox, waits for it, and writes what became of it. Nothing but the
//! kernel is trusted for "it exited": the supervisor is the task's parent and reaps it, and
//! it is the subreaper of everything the task leaves behind.
//!
//! Its life, in the task's directory (see `rundir`):
//! 1. take `lock` for good (a second supervisor of the same task gives up at once);
//! 2. status STARTING; start the task: its own session and process group, the sandbox as
//!    working directory, only fds 0-2 (stdin /dev/null, stdout and stderr piped into
//!    size-bounded logs), the environment given and nothing inherited, the given user with
//!    privileges dropped in the order setgroups, setgid, setuid;
//! 3. status RUNNING with the task's pid and start time;
//! 4. wait: on the task's exit, kill what is left of its process group and every orphan it
//!    left, and write FINISHED (exit 0) or FAILED; on SIGTERM (a stop request), send SIGTERM
//!    to the task's process group, SIGKILL after the grace period, and write KILLED;
//!    meanwhile run the health check and record its verdict.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{Gid, Pid, Uid, User};
use serde_json::Value;

use crate::exit::{fail, Status as Exit};
use crate::limits::{Enforcer, InChild, Limits};
use crate::rundir::{self, Status};

/// Supervise one task: start it, wait for it, record how it ended
///
/// The per-task supervisor that launch starts for every instance. DIR is the task's
/// directory on this host (spec.json, lock, status, sandbox/). It holds DIR/lock for as long
/// as it lives, writes DIR/status atomically at every change, and outlives whoever started
/// it. Send it SIGTERM to stop the task: SIGTERM to the task's process group, SIGKILL after
/// the grace period.
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
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Run as this user; None runs as the supervisor's own user.
    pub user: Option<String>,
    /// Whether the task may run as root.
    pub allow_root: bool,
    /// Seconds between SIGTERM and SIGKILL on a stop.
    pub grace_s: f64,
    /// Size at which a log is rotated (one old generation is kept).
    pub log_max_bytes: u64,
    pub health: Option<Health>,
    /// What the task may use (its reservation): cgroups where the host has them.
    pub limits: Limits,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Health {
    /// HTTP GET of `path` on 127.0.0.1:`port`; 2xx and 3xx are healthy.
    pub port: u16,
    pub path: String,
    /// Or a command (argv, no shell) run in the sandbox as the task's user: exit 0 is
    /// healthy. Used when not empty.
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
        Some(Spec {
            task: v["task"].as_str()?.to_string(),
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
            allow_root: v["allow_root"].as_bool().unwrap_or(false),
            grace_s: v["grace_s"].as_f64().unwrap_or(10.0),
            log_max_bytes: v["log_max_bytes"].as_u64().unwrap_or(16 << 20),
            health,
            limits: Limits {
                cpus: v["limits"]["cpus"].as_u64().unwrap_or(0) as u32,
                ram_mb: v["limits"]["ram_mb"].as_u64().unwrap_or(0),
            },
        })
    }

    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "task": self.task, "argv": self.argv,
            "env": self.env.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
            "user": self.user, "allow_root": self.allow_root, "grace_s": self.grace_s,
            "log_max_bytes": self.log_max_bytes,
            "limits": {"cpus": self.limits.cpus, "ram_mb": self.limits.ram_mb},
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
    let lock = rundir::lock_file(dir)?;
    if !rundir::lock_exclusive(&lock, Duration::from_millis(100)) {
        return Err(fail(
            Exit::Temporary,
            format!("{} is supervised already", dir.display()),
        ));
    }
    let text = fs::read_to_string(dir.join("spec.json"))
        .with_context(|| format!("reading {}/spec.json", dir.display()))?;
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
        supervisor: (me, rundir::start_time(me).unwrap_or(0)),
        pid: None,
        state: "STARTING".into(),
        exit: None,
        signal: None,
        since: now(),
        healthy: None,
        health_failures: 0,
    };
    status.write(dir)?;

    // Signals arrive as readable events, so the loop below is the only place they act.
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
    let sfd = SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;

    let limits = Enforcer::prepare(&spec.task, dir, spec.limits);
    let mut child = match start(&spec, dir, &limits) {
        Ok(c) => c,
        Err(e) => {
            limits.release();
            status.state = "FAILED".into();
            status.exit = Some(127);
            status.since = now();
            status.write(dir)?;
            return Err(e);
        }
    };
    let pid = child.id();
    status.pid = Some((pid, rundir::start_time(pid).unwrap_or(0)));
    status.state = "RUNNING".into();
    status.since = now();
    status.write(dir)?;

    let mut logs = [
        child.stdout.take().map(|p| {
            Log::new(
                Source::Out(p),
                dir.join("sandbox/stdout"),
                spec.log_max_bytes,
            )
        }),
        child.stderr.take().map(|p| {
            Log::new(
                Source::Err(p),
                dir.join("sandbox/stderr"),
                spec.log_max_bytes,
            )
        }),
    ];
    let group = Pid::from_raw(pid as i32);
    let mut exited: Option<WaitStatus> = None;
    let mut stop_deadline: Option<Instant> = None;
    let mut next_check = spec
        .health
        .as_ref()
        .map(|h| Instant::now() + secs(h.interval_s));
    drop(child); // waited for by pid below, with every orphan

    loop {
        let deadline = [stop_deadline, next_check].into_iter().flatten().min();
        let timeout = deadline.map_or(PollTimeout::NONE, |d| {
            PollTimeout::try_from(d.saturating_duration_since(Instant::now()))
                .unwrap_or(PollTimeout::MAX)
        });
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        let open: Vec<usize> = (0..2).filter(|&i| logs[i].is_some()).collect();
        for &i in &open {
            fds.push(PollFd::new(
                logs[i].as_ref().unwrap().fd(),
                PollFlags::POLLIN,
            ));
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
            if ready[k + 1] && !logs[i].as_mut().unwrap().pump()? {
                logs[i] = None; // the task closed it
            }
        }
        if ready[0] {
            while let Ok(Some(info)) = sfd.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => {}
                    Ok(_) if stop_deadline.is_none() && exited.is_none() => {
                        let _ = killpg(group, Signal::SIGTERM);
                        stop_deadline = Some(Instant::now() + secs(spec.grace_s));
                        status.state = "KILLING".into();
                        status.since = now();
                        status.write(dir)?;
                    }
                    Ok(_) => {}
                    Err(_) => {}
                }
            }
        }
        // Reap whatever has ended: the task, and orphans handed to us as subreaper.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(ws) if ws.pid() == Some(group) => exited = Some(ws),
                Ok(_) => {}
            }
        }
        if let Some(d) = stop_deadline {
            if Instant::now() >= d && exited.is_none() {
                let _ = killpg(group, Signal::SIGKILL);
                stop_deadline = Some(Instant::now() + Duration::from_secs(3600));
            }
        }
        if let (Some(h), Some(at)) = (&spec.health, next_check) {
            if Instant::now() >= at && exited.is_none() && stop_deadline.is_none() {
                let ok = if h.cmd.is_empty() {
                    http_ok(h)
                } else {
                    command_ok(h, &spec, dir)
                };
                status.health_failures = if ok { 0 } else { status.health_failures + 1 };
                // Healthy from the first check that passes (not before: a task not yet
                // answering must not be announced); unhealthy after `failures` in a row.
                let healthy = if ok {
                    Some(true)
                } else if status.health_failures >= h.failures {
                    Some(false)
                } else {
                    status.healthy
                };
                if status.healthy != healthy || !ok {
                    status.healthy = healthy;
                    status.write(dir)?;
                }
                next_check = Some(Instant::now() + secs(h.interval_s));
            }
        }
        if let Some(ws) = exited {
            // The task is gone: nothing it started may outlive it.
            let _ = killpg(group, Signal::SIGKILL);
            if !no_children() {
                kill_orphans();
            }
            if logs.iter().all(Option::is_none) || no_children() {
                for log in logs.iter_mut().flatten() {
                    let _ = log.pump_until_eof();
                }
                reap_all();
                limits.release();
                finish(&mut status, ws, stop_deadline.is_some());
                status.write(dir)?;
                drop(lock);
                return Ok(status);
            }
        }
    }
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

/// Starts the task: its own session, the sandbox, fds 0-2 only, its environment, its user.
/// The uid, gid and groups a task runs as (None: the supervisor's own), refused when that
/// is root and the spec does not allow it.
type Identity = Option<(Uid, Gid, Vec<Gid>)>;

fn identity(spec: &Spec) -> Result<Identity> {
    let ids = match &spec.user {
        Some(name) => {
            let user = User::from_name(name)
                .with_context(|| format!("looking up user {name}"))?
                .ok_or_else(|| fail(Exit::BadInput, format!("no user {name:?} on this host")))?;
            Some((user.uid, user.gid, supplementary_groups(&user)?))
        }
        None => None,
    };
    let uid = ids.as_ref().map_or(Uid::effective(), |(u, _, _)| *u);
    if uid.is_root() && !spec.allow_root {
        return Err(fail(
            Exit::Permission,
            format!("task {} would run as root, which is not allowed", spec.task),
        ));
    }
    Ok(ids)
}

fn start(spec: &Spec, dir: &Path, limits: &Enforcer) -> Result<std::process::Child> {
    let ids = identity(spec)?;
    if let Some((uid, gid, _)) = &ids {
        // The sandbox is the task's to write in.
        nix::unistd::chown(&dir.join("sandbox"), Some(*uid), Some(*gid))
            .context("giving the sandbox to the task's user")?;
    }
    let mut cmd = in_task_world(spec, dir, &spec.argv, ids, Some(limits.for_child()));
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.spawn()
        .with_context(|| format!("starting {:?}", spec.argv[0]))
}

/// A command in the task's world, for the task and for its health command alike: the
/// sandbox as working directory, the spec's environment and nothing else, stdin from
/// /dev/null, a session of its own, the task's cgroups (for the task), the task's user,
/// and only fds 0-2.
fn in_task_world(
    spec: &Spec,
    dir: &Path,
    argv: &[String],
    ids: Identity,
    limits: Option<InChild>,
) -> Command {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir.join("sandbox"))
        .stdin(Stdio::null());
    unsafe {
        cmd.pre_exec(move || {
            // Between fork and exec: async-signal-safe calls only.
            SigSet::empty()
                .thread_set_mask()
                .map_err(std::io::Error::from)?;
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            // Into its cgroups (or under its rlimits) before it runs a single instruction
            // of its own, and while still privileged enough to move itself.
            if let Some(limits) = &limits {
                limits.apply()?;
            }
            if let Some((uid, gid, groups)) = &ids {
                nix::unistd::setgroups(groups).map_err(std::io::Error::from)?;
                nix::unistd::setgid(*gid).map_err(std::io::Error::from)?;
                nix::unistd::setuid(*uid).map_err(std::io::Error::from)?;
            }
            // Only 0-2 cross, whatever a library left open without CLOEXEC.
            nix::libc::syscall(nix::libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    cmd
}

fn supplementary_groups(user: &User) -> Result<Vec<Gid>> {
    let name = std::ffi::CString::new(user.name.clone())?;
    Ok(nix::unistd::getgrouplist(&name, user.gid).unwrap_or_else(|_| vec![user.gid]))
}

/// Runs the health command in the task's world; killed at the timeout.
fn command_ok(h: &Health, spec: &Spec, dir: &Path) -> bool {
    let Ok(ids) = identity(spec) else {
        return false;
    };
    let mut cmd = in_task_world(spec, dir, &h.cmd, ids, None);
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
/// some remain does `children` walk /proc to find them. (Reaping a zombie on the way is
/// what the caller is about anyway.)
fn no_children() -> bool {
    matches!(
        waitpid(None, Some(WaitPidFlag::WNOHANG)),
        Err(nix::errno::Errno::ECHILD)
    )
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

/// A task's output pipe copied into a log file that is rotated at a size bound.
struct Log {
    source: Source,
    path: PathBuf,
    file: Option<File>,
    written: u64,
    max: u64,
}

impl Log {
    fn new(source: Source, path: PathBuf, max: u64) -> Log {
        let written = fs::metadata(&path).map_or(0, |m| m.len());
        Log {
            source,
            path,
            file: None,
            written,
            max: max.max(4096),
        }
    }

    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match &self.source {
            Source::Out(p) => p.as_fd(),
            Source::Err(p) => p.as_fd(),
        }
    }

    /// Copies what is there; false at end of file.
    fn pump(&mut self) -> Result<bool> {
        let mut buf = [0u8; 16384];
        let n = match &mut self.source {
            Source::Out(p) => p.read(&mut buf),
            Source::Err(p) => p.read(&mut buf),
        };
        let n = match n {
            Ok(0) => return Ok(false),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(true),
            Err(e) => return Err(e).context("reading the task's output"),
        };
        if self.written + n as u64 > self.max {
            self.file = None;
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            let _ = fs::rename(&self.path, old);
            self.written = 0;
        }
        if self.file.is_none() {
            self.file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .with_context(|| format!("opening {}", self.path.display()))?,
            );
        }
        self.file.as_mut().unwrap().write_all(&buf[..n])?;
        self.written += n as u64;
        Ok(true)
    }

    fn pump_until_eof(&mut self) -> Result<()> {
        let fd = self.fd().as_raw_fd();
        // The writers are dead; read what is left without blocking forever.
        let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        while let Ok(true) = self.pump() {}
        Ok(())
    }
}
