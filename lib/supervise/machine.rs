//! The supervisor of a started task as a state machine, after s6-supervise: the loop only
//! waits for events and hands each to a small handler; what a handler may do depends on
//! the state the task is in.
//!
//! ```text
//!            stop signal                  the task exits            its world is empty
//! Running ──────────────▶ Stopping ─────────────────────▶ Exited ─────────────────────▶ Done
//!    │    (SIGTERM now,    (SIGKILL at the grace          (everything left is killed,
//!    │     KILLING)         period's end)                  its output copied)
//!    └───────────────────── the task exits ─────────────────▲
//! ```
//!
//! Events: a signal (a stop request; SIGCHLD: something to reap), the task's exit, its
//! health command's exit, a readable log pipe, an HTTP check's verdict on its pipe, and a
//! timer (the SIGKILL deadline, a check's deadline, the next check, a status write that
//! was put off). No handler blocks: a health check runs beside the loop (see `health`).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::health::{Answer, Check};
use super::log::{Log, Source};
use super::{now, procs, world, NotStarted, Spec};
use crate::identity::Ids;
use crate::limits::Enforcer;
use crate::taskdir::Status;

/// Where the task is in its life, once started.
#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    /// It runs; its health is checked on schedule.
    Running,
    /// Asked to stop: it has had SIGTERM, and gets SIGKILL at `kill_at` (None once sent).
    Stopping { kill_at: Option<Instant> },
    /// It has exited (`stopped`: after a stop request); what it left behind is being
    /// killed and its output copied.
    Exited { how: WaitStatus, stopped: bool },
    /// Its end is recorded.
    Done,
}

/// What the loop waits for.
#[derive(Debug)]
enum Event {
    /// SIGTERM, SIGINT or SIGHUP: stop the task.
    Stop,
    /// The task itself has exited.
    TaskExited(WaitStatus),
    /// The health command has exited.
    CheckExited(WaitStatus),
    /// A log's pipe (0 stdout, 1 stderr) has output, or has closed.
    Output(usize),
    /// The HTTP check's pipe has its verdict, or has closed.
    Answered,
    /// A deadline has come.
    Timer,
}

/// A change of the failure count alone is written at most this often (a change of state
/// or of the health verdict is written at once): a check that fails every 0.1 s must not
/// fsync the status ten times a second.
const COUNT_WRITE_SPACING: Duration = Duration::from_secs(1);

/// One supervised task, from its start to its final status.
pub(super) struct Supervisor {
    dir: PathBuf,
    spec: Spec,
    pub(super) status: Status,
    limits: Enforcer,
    ids: Option<Ids>,
    /// The task's pid, which is also its process group and session.
    group: Pid,
    logs: [Option<Log>; 2],
    /// What the logs closed so far could not write.
    dropped_by_closed_logs: u64,
    state: State,
    /// The health check under way, if any.
    check: Option<Check>,
    /// When the next check starts (while running and none is under way).
    next_check: Option<Instant>,
    /// When the status was last written, and when a change not yet written is due.
    written_at: Instant,
    write_due: Option<Instant>,
}

impl Supervisor {
    /// Starts the task (see `world::spawn`); what its directory holds becomes its
    /// supervisor.
    pub(super) fn start(
        dir: &Path,
        spec: Spec,
        mut status: Status,
        mut limits: Enforcer,
    ) -> Result<Supervisor, Box<NotStarted>> {
        let (ids, log_owner, mut child) = match world::spawn(dir, &spec, &limits, &mut status) {
            Ok(started) => started,
            Err(error) => {
                limits.kill_all();
                limits.release();
                return Err(Box::new(NotStarted { status, error }));
            }
        };
        let pid = child.id();
        let logs_at = crate::runlogs::run_dir(dir, spec.incarnation);
        let log =
            |source, name| Log::new(source, logs_at.join(name), spec.log_max_bytes, log_owner);
        let logs = [
            child.stdout.take().map(|p| log(Source::Out(p), "stdout")),
            child.stderr.take().map(|p| log(Source::Err(p), "stderr")),
        ];
        drop(child); // waited for by pid, with every orphan
        let next_check = spec.health.as_ref().map(|h| Instant::now() + h.interval());
        let mut task = Supervisor {
            dir: dir.to_path_buf(),
            spec,
            status,
            limits,
            ids,
            group: Pid::from_raw(pid as i32),
            logs,
            dropped_by_closed_logs: 0,
            state: State::Running,
            check: None,
            next_check,
            written_at: Instant::now(),
            write_due: None,
        };
        task.status.pid = Some((pid, crate::process::start_time(pid).unwrap_or(0)));
        task.status.state = "RUNNING".into();
        task.status.since = now();
        Ok(task)
    }

    /// Writes the status now: a change of state or of the health verdict.
    pub(super) fn write_status(&mut self) -> Result<()> {
        let open: u64 = self.logs.iter().flatten().map(|l| l.dropped).sum();
        self.status.log_dropped = self.dropped_by_closed_logs + open;
        self.status.write(&self.dir)?;
        self.written_at = Instant::now();
        self.write_due = None;
        Ok(())
    }

    /// Writes a change that can wait (a failure count): now if the last write is
    /// [`COUNT_WRITE_SPACING`] ago, else when it will be.
    fn write_status_soon(&mut self) -> Result<()> {
        let due = self.written_at + COUNT_WRITE_SPACING;
        if Instant::now() >= due {
            return self.write_status();
        }
        self.write_due.get_or_insert(due);
        Ok(())
    }

    /// Runs the machine until the task's end is recorded.
    pub(super) fn supervise(&mut self, signals: &SignalFd) -> Result<()> {
        while self.state != State::Done {
            for event in self.wait(signals)? {
                self.handle(event)?;
            }
            if let State::Exited { how, stopped } = self.state {
                self.try_finish(how, stopped)?;
            }
        }
        Ok(())
    }

    /// The dispatch table: each event, in each state, to its handler.
    fn handle(&mut self, event: Event) -> Result<()> {
        match (self.state, event) {
            (_, Event::Output(i)) => self.on_output(i),
            (State::Running, Event::Stop) => self.on_stop()?,
            // Stopping already, or it has exited: nothing more to ask of it.
            (_, Event::Stop) => {}
            (State::Running | State::Stopping { .. }, Event::TaskExited(how)) => self.on_exit(how),
            (_, Event::TaskExited(_)) => {}
            (_, Event::CheckExited(how)) => {
                self.check = None;
                let ok = matches!(how, WaitStatus::Exited(_, 0));
                self.on_verdict(ok)?;
            }
            (_, Event::Answered) => {
                let Some(check) = self.check.as_mut() else {
                    return Ok(());
                };
                match check.read_answer()? {
                    Answer::Verdict(ok) => self.on_verdict(ok)?,
                    Answer::Over => self.check = None,
                }
            }
            (_, Event::Timer) => self.on_timer()?,
        }
        Ok(())
    }

    /// Copies what a log pipe has; a pipe the task closed is done with.
    fn on_output(&mut self, i: usize) {
        if !self.logs[i].as_mut().is_some_and(Log::pump) {
            let closed = self.logs[i].take().map_or(0, |l| l.dropped);
            self.dropped_by_closed_logs += closed;
        }
    }

    /// A stop request: SIGTERM to the task's group now, SIGKILL at the grace period's end.
    /// A check under way is given up: health no longer matters.
    fn on_stop(&mut self) -> Result<()> {
        let _ = killpg(self.group, Signal::SIGTERM);
        self.abandon_check();
        self.state = State::Stopping {
            kill_at: Some(Instant::now() + self.spec.grace()),
        };
        self.status.state = "KILLING".into();
        self.status.since = now();
        self.write_status()
    }

    /// The task has exited; its end is recorded once its world is empty (`try_finish`).
    fn on_exit(&mut self, how: WaitStatus) {
        self.abandon_check();
        let stopped = matches!(self.state, State::Stopping { .. });
        self.state = State::Exited { how, stopped };
    }

    /// A check's verdict: healthy from the first check that passes (not before: a task
    /// not yet answering must not be announced), unhealthy after `failures` in a row.
    /// Taken only while the task runs.
    fn on_verdict(&mut self, ok: bool) -> Result<()> {
        let Some(h) = self
            .spec
            .health
            .as_ref()
            .filter(|_| self.state == State::Running)
        else {
            return Ok(());
        };
        self.next_check = Some(Instant::now() + h.interval());
        let failures = if ok {
            0
        } else {
            self.status.health_failures.saturating_add(1)
        };
        let healthy = if ok {
            Some(true)
        } else if failures >= h.failures {
            Some(false)
        } else {
            self.status.healthy
        };
        let verdict_changed = healthy != self.status.healthy;
        let count_changed = failures != self.status.health_failures;
        self.status.healthy = healthy;
        self.status.health_failures = failures;
        if verdict_changed {
            self.write_status()
        } else if count_changed {
            self.write_status_soon()
        } else {
            Ok(())
        }
    }

    /// Whatever deadline has come: SIGKILL at the end of the grace period, a check that
    /// took too long (failed), the next check, a status write put off.
    fn on_timer(&mut self) -> Result<()> {
        let now = Instant::now();
        if let State::Stopping { kill_at: Some(at) } = self.state {
            if now >= at {
                self.kill_everything();
                self.state = State::Stopping { kill_at: None };
            }
        }
        if let Some(check) = self.check.take_if(|c| now >= c.deadline()) {
            let answered = check.answered();
            check.abandon();
            if !answered {
                self.on_verdict(false)?;
            }
        }
        if self.state == State::Running
            && self.check.is_none()
            && self.next_check.is_some_and(|at| now >= at)
        {
            self.start_check()?;
        }
        if self.write_due.is_some_and(|at| now >= at) {
            self.write_status()?;
        }
        Ok(())
    }

    /// Starts the health check; one that cannot even start has failed.
    fn start_check(&mut self) -> Result<()> {
        let Some(h) = &self.spec.health else {
            return Ok(());
        };
        self.next_check = None;
        self.check = Check::start(h, &self.spec, &self.dir, self.ids.clone(), &self.limits);
        if self.check.is_none() {
            return self.on_verdict(false);
        }
        Ok(())
    }

    fn abandon_check(&mut self) {
        if let Some(check) = self.check.take() {
            check.abandon();
        }
    }

    /// The earliest deadline the loop must wake for.
    fn next_deadline(&self) -> Option<Instant> {
        let kill = match self.state {
            State::Stopping { kill_at } => kill_at,
            _ => None,
        };
        let check = match &self.check {
            Some(check) => Some(check.deadline()),
            None if self.state == State::Running => self.next_check,
            None => None,
        };
        [kill, check, self.write_due].into_iter().flatten().min()
    }

    /// Blocks until something happens; what did, as events.
    fn wait(&mut self, signals: &SignalFd) -> Result<Vec<Event>> {
        let deadline = self.next_deadline();
        let timeout = deadline.map_or(PollTimeout::NONE, |d| {
            PollTimeout::try_from(d.saturating_duration_since(Instant::now()))
                .unwrap_or(PollTimeout::MAX)
        });
        // What each descriptor polled is: the signals, a log, the HTTP check's answer.
        let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        let mut sources = vec![None];
        for (i, log) in self.logs.iter().enumerate() {
            if let Some(log) = log {
                fds.push(PollFd::new(log.fd(), PollFlags::POLLIN));
                sources.push(Some(Event::Output(i)));
            }
        }
        if let Some(answer) = self.check.as_ref().and_then(Check::answer) {
            fds.push(PollFd::new(answer, PollFlags::POLLIN));
            sources.push(Some(Event::Answered));
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
        let mut events: Vec<Event> = sources
            .into_iter()
            .zip(&ready)
            .filter_map(|(source, &ready)| source.filter(|_| ready))
            .collect();
        if ready[0] {
            let mut stop = false;
            while let Ok(Some(info)) = signals.read_signal() {
                stop |= Signal::try_from(info.ssi_signo as i32).is_ok_and(|s| s != Signal::SIGCHLD);
            }
            if stop {
                events.push(Event::Stop);
            }
        }
        // Reaped whether or not a SIGCHLD was read: signals of the same kind merge.
        self.reap(&mut events);
        if deadline.is_some_and(|d| Instant::now() >= d) {
            events.push(Event::Timer);
        }
        Ok(events)
    }

    /// Reaps whatever has ended: the task, its health command, and orphans handed to us
    /// as subreaper (nothing more to do for those).
    fn reap(&mut self, events: &mut Vec<Event>) {
        let check = self.check.as_ref().and_then(Check::pid);
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(ws) if ws.pid() == Some(self.group) => events.push(Event::TaskExited(ws)),
                Ok(ws) if ws.pid().is_some() && ws.pid() == check => {
                    events.push(Event::CheckExited(ws))
                }
                Ok(_) => {}
            }
        }
    }

    /// The task has exited: nothing it started may outlive it. Done once its output is
    /// copied; until then (descendants still hold its pipes) they are being killed.
    fn try_finish(&mut self, how: WaitStatus, stopped: bool) -> Result<()> {
        self.kill_everything();
        if !(self.logs.iter().all(Option::is_none) || procs::no_children()) {
            return Ok(());
        }
        for log in self.logs.iter_mut().flatten() {
            log.pump_until_eof();
        }
        procs::reap_all();
        self.limits.release();
        finish(&mut self.status, how, stopped);
        self.write_status()?;
        self.state = State::Done;
        Ok(())
    }

    /// SIGKILL to the task's cgroups, its process group and every orphan it left us.
    fn kill_everything(&self) {
        self.limits.kill_all();
        let _ = killpg(self.group, Signal::SIGKILL);
        if !procs::no_children() {
            procs::kill_orphans();
        }
    }

    /// The supervisor cannot go on: it kills and reaps everything it started, and tries
    /// to leave a final word, so that nothing runs that no supervisor watches.
    pub(super) fn give_up(&mut self, why: &anyhow::Error) {
        self.kill_everything();
        procs::reap_all();
        self.limits.release();
        eprintln!("formic-supervise: {}: giving up: {why:#}", self.spec.task);
        self.status.state = "FAILED".into();
        self.status.reason = Some(format!("supervisor gave up: {why:#}"));
        self.status.since = now();
        let _ = self.write_status();
    }
}

/// The final status: FINISHED (exit 0), FAILED, or KILLED when a stop asked for its end.
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
