//! `reap`: stops what must stop and collects what ended. It owns every transition of a task
//! after launch has started it: from what each task's directory on its host says (the
//! supervisor's `status`, and whether its `lock` is held) it records RUNNING, FINISHED,
//! FAILED, KILLED or LOST, frees reservations, and applies the restart policy of the job
//! (`job.json`): a service that ended is missing and the next pack places it again, unless
//! it failed after a brief run, when it is THROTTLED with exponential backoff; a batch task
//! that finished stays finished, one that failed is retried until `max_failures`.
//!
//! Stops are graceful and survive a crash of reap: the stop is recorded first (KILLING,
//! DRAINING or PREEMPTING, with the time in `since`), then the supervisor gets SIGTERM and
//! stops its task (SIGTERM to the group, SIGKILL after the grace period). Every pass resumes
//! stops left half-done, and one whose supervisor has not reported KILLED by `since` plus the
//! grace period and a margin is finished with SIGKILL to the supervisor and the task's group. A process is
//! only ever signalled when its pid and start time both match, so a reused pid is never hit.
//!
//! Promises: one transaction per pass, all or nothing; an event is printed only for a
//! transition that was committed; bad records on stdin change nothing (status 65).

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead, IsTerminal, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{ArgGroup, Parser, Subcommand};
use serde_json::{json, Map, Value};

use crate::cli::{self, OutputArgs, StateArgs};
use crate::exit::{bad_input, fail, status_of, Status, TABLE};
use crate::host::{Mode, Transport};
use crate::job::{JobSpec, Restart};
use crate::records::{self, Record};
use crate::rundir;
use crate::state::{State, View};
use crate::task::{check_job_key, Task, TaskState};

/// Stop what must stop, collect what ended, apply the restart policy, list tasks.
///
/// With no verb, one pass: reads `kill` and `preempt` records on standard input (unless it
/// is a terminal) and stops those tasks gracefully; stops the tasks of draining hosts and
/// tasks failing their health checks; collects every task of a local host whose supervisor
/// reported an end (FINISHED, FAILED with its exit status, KILLED) or died without a word
/// (LOST, and its process group is killed); frees their reservations; and applies each
/// job's restart policy. A task left ASSIGNED by a launch that has ended, and that no
/// supervisor took, goes back to PENDING at once (after --start-grace while its launch
/// lives). A supervisor found in a local host's task directories that runs an incarnation
/// the state does not run there is stopped. A kill or preempt record for an incarnation
/// that has since been replaced stops nothing. Prints one event record per transition, then
/// passes every other input line (place records, ...) through unchanged, once the stops are
/// complete. In a script whose standard input is not meant for reap, give it </dev/null.
///
/// Restart policy, from the job spec the task was launched with: a service (the default)
/// that ended is missing, and the next pack places it again; one that failed or exited
/// after a run shorter than --min-run is THROTTLED for restart.backoff_s × 2^(failures-1)
/// seconds (default 1, at most restart.max_backoff_s, default 300) before pack may place it.
/// A batch task (service false) that finished stays FINISHED; one that failed is retried,
/// with the same backoff after a brief run, until it has failed restart.max_failures times
/// (default 1). A run of at least --min-run that did not fail its health check resets the
/// failure count. LOST and KILLED are not failures of the task.
///
/// Stops: the stop is recorded (KILLING, DRAINING or PREEMPTING), then the supervisor gets
/// SIGTERM and stops its task (SIGTERM to its process group, SIGKILL after the task's grace
/// period) and reports KILLED. A supervisor that has not reported 3 seconds after the grace
/// period is SIGKILLed with the task's process group. A process is signalled only while its
/// pid and start time both match, never a reused pid.
#[derive(Parser, Debug)]
#[command(name = "reap", version, after_help = TABLE)]
pub struct Cli {
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Stay running: collect and stop continuously and print events as they happen (task
    /// directories are polled every 50 ms; standard input is not read)
    #[arg(long)]
    pub follow: bool,
    #[command(flatten)]
    pub timing: Timing,
    #[command(subcommand)]
    pub verb: Option<Verb>,
}

/// The clocks of the restart policy.
#[derive(clap::Args, Debug, Clone)]
pub struct Timing {
    /// Seconds a task may stay ASSIGNED (or STARTING) with no supervisor, while the launch
    /// that recorded it lives, before reap gives up on its start: ASSIGNED goes back to
    /// PENDING, STARTING becomes LOST
    #[arg(
        long,
        env = "FORMIC_START_GRACE",
        value_name = "SECS",
        default_value_t = 30.0,
        global = true
    )]
    pub start_grace: f64,
    /// A failed run shorter than this many seconds makes the task THROTTLED (its next start
    /// waits backoff_s × 2^(failures-1), at most max_backoff_s); a longer healthy run resets
    /// the failure count
    #[arg(
        long,
        env = "FORMIC_MIN_RUN",
        value_name = "SECS",
        default_value_t = 60.0,
        global = true
    )]
    pub min_run: f64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            start_grace: 30.0,
            min_run: 60.0,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Stop tasks gracefully
    ///
    /// Records the stop (KILLING), sends SIGTERM to each task's supervisor, which sends
    /// SIGTERM to the task's process group and SIGKILL after the task's grace period, waits
    /// for the supervisors to report KILLED, and records it; their reservations are freed.
    /// A task that a running `announce --follow` holds in a serverset is signalled once it
    /// has left it (after 5 s at most).
    /// Like every pass it also collects whatever else ended. A service's instance that was
    /// killed is missing, so the next pack places it again: to remove instances, change the
    /// job files.
    #[command(
        after_help = TABLE,
        group(ArgGroup::new("what").required(true).multiple(true).args(["tasks", "job", "host"]))
    )]
    Kill {
        /// Tasks to stop (role/env/name/instance)
        #[arg(value_name = "TASK")]
        tasks: Vec<String>,
        /// Stop every instance of this job (role/env/name; repeatable)
        #[arg(long, value_name = "JOB")]
        job: Vec<String>,
        /// Stop every task on this host (repeatable)
        #[arg(long, value_name = "HOST")]
        host: Vec<String>,
    },
    /// List tasks with their host, state, pid, ports, health and failure count
    ///
    /// Reads the state only; it collects nothing.
    #[command(after_help = TABLE)]
    Tasks {
        /// Only the instances of this job (role/env/name; repeatable)
        #[arg(long, value_name = "JOB")]
        job: Vec<String>,
        /// Only tasks on this host (repeatable)
        #[arg(long, value_name = "HOST")]
        host: Vec<String>,
        /// Only tasks in these states (RUNNING, THROTTLED, ...; comma-separated)
        #[arg(long = "in", value_name = "STATE,...", value_delimiter = ',', value_parser = parse_state)]
        states: Vec<TaskState>,
    },
}

fn parse_state(s: &str) -> Result<TaskState, String> {
    TaskState::from_name(&s.to_ascii_uppercase()).ok_or_else(|| {
        format!("{s:?} is not a task state (PENDING, THROTTLED, ASSIGNED, STARTING, RUNNING, KILLING, FINISHED, FAILED, KILLED, LOST, DRAINING, PREEMPTING)")
    })
}

/// How long reap waits past a task's grace period for its supervisor to report the stop
/// before it SIGKILLs the supervisor and the task's group itself. The supervisor needs
/// milliseconds after its own SIGKILL; the margin covers a loaded machine.
pub const STOP_MARGIN_S: f64 = 3.0;
/// The longest a graceful stop waits for the announcer to take the instance out of
/// discovery before it signals the task anyway.
pub const LEAVE_WAIT_S: f64 = 5.0;
/// How often task directories are looked at while waiting for stops and with --follow.
pub const POLL: Duration = Duration::from_millis(50);
/// With --follow, every task directory is looked at this often even when its status file
/// has not changed (a supervisor that dies without a word changes no file).
const SWEEP_TICKS: u32 = 20;
/// The supervisor's default grace period, when spec.json does not say.
const DEFAULT_GRACE_S: f64 = 10.0;

pub fn run(cli: Cli) -> Result<Status> {
    let path = cli.state.path();
    let human = cli.output.human();
    if cli.follow && cli.verb.is_some() {
        return Err(fail(Status::Usage, "--follow is not for a verb"));
    }
    check_timing(&cli.timing)?;
    match cli.verb {
        Some(Verb::Tasks { job, host, states }) => {
            list(&State::open(&path)?, &job, &host, &states, &cli.output)
        }
        Some(Verb::Kill { tasks, job, host }) => {
            let mut reaper = Reaper::open(&path, cli.timing, human)?;
            let requests = reaper.named(&tasks, &job, &host)?;
            reaper.once(requests, &[])
        }
        None if cli.follow => Reaper::open(&path, cli.timing, human)?.follow(),
        None => {
            let stdin = io::stdin();
            let (stops, passthrough) = if stdin.is_terminal() {
                (Vec::new(), Vec::new())
            } else {
                read_input(stdin.lock())?
            };
            let mut reaper = Reaper::open(&path, cli.timing, human)?;
            let requests = reaper.requested(&stops);
            reaper.once(requests, &passthrough)
        }
    }
}

fn check_timing(t: &Timing) -> Result<()> {
    for (name, v) in [("--start-grace", t.start_grace), ("--min-run", t.min_run)] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(fail(
                Status::Usage,
                format!("{name}: {v} is not a number of seconds ≥ 0"),
            ));
        }
    }
    Ok(())
}

// --- records on standard input ---

/// Why a task is being stopped; each cause has its own state while the stop is under way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// A `kill` record or `reap kill`.
    Kill,
    /// A `preempt` record: room for a task of a higher tier.
    Preempt,
    /// Its host is draining.
    Drain,
    /// Its health check failed.
    Unhealthy,
}

impl Cause {
    fn state(self) -> TaskState {
        match self {
            Cause::Kill | Cause::Unhealthy => TaskState::Killing,
            Cause::Preempt => TaskState::Preempting,
            Cause::Drain => TaskState::Draining,
        }
    }

    /// The kind of record that asks for this stop.
    fn record(self) -> &'static str {
        match self {
            Cause::Preempt => "preempt",
            _ => "kill",
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Cause::Kill => "killed",
            Cause::Preempt => "preempted",
            Cause::Drain => "host draining",
            Cause::Unhealthy => "unhealthy",
        }
    }
}

/// A `kill` or `preempt` record.
#[derive(Clone, Debug, PartialEq)]
pub struct StopRecord {
    pub line: u64,
    pub task: String,
    pub cause: Cause,
    /// For preempt: the host the victim was on when pack decided.
    pub host: Option<String>,
    /// The incarnation the stop was decided on: a later one is not stopped by it.
    pub incarnation: Option<u32>,
}

/// Reads every line; returns the stop records and the other lines to pass through. Every
/// bad line is reported and any bad line fails the whole input before anything is done.
pub fn read_input(input: impl BufRead) -> Result<(Vec<StopRecord>, Vec<String>)> {
    let mut stops = Vec::new();
    let mut others = Vec::new();
    let mut errors = Vec::new();
    for item in records::Reader::new(input) {
        let rec = match item {
            Ok(rec) => rec,
            Err(e) if status_of(&e) == Status::BadInput => {
                errors.push(format!("{e:#}"));
                continue;
            }
            Err(e) => return Err(e),
        };
        let cause = match rec.kind() {
            "kill" => Cause::Kill,
            "preempt" => Cause::Preempt,
            _ => {
                others.push(rec.raw);
                continue;
            }
        };
        match stop_record(&rec, cause) {
            Ok(s) => stops.push(s),
            Err(e) => errors.push(format!("line {}: {} record: {e}", rec.line, rec.kind())),
        }
    }
    crate::exit::refuse_batch("reap", &errors, "records", "nothing was changed")?;
    Ok((stops, others))
}

fn stop_record(rec: &Record, cause: Cause) -> Result<StopRecord, String> {
    let f = rec.get();
    let task = f.str("task")?.ok_or("field \"task\" is missing")?;
    parse_task_id(task).map_err(|e| format!("field \"task\": {e}"))?;
    // Present in pack's records; checked so a malformed one is caught, not ignored.
    f.str("reason")?;
    f.str("for")?;
    let host = f.str("host")?.map(str::to_string);
    let incarnation = f.count("incarnation", u32::MAX as u64)?.map(|n| n as u32);
    Ok(StopRecord {
        line: rec.line,
        task: task.to_string(),
        cause,
        host,
        incarnation,
    })
}

/// `role/env/name/instance` → (job key, instance).
pub fn parse_task_id(id: &str) -> Result<(&str, u32), String> {
    let (job, instance) = id
        .rsplit_once('/')
        .filter(|_| id.split('/').count() == 4)
        .ok_or_else(|| format!("{id:?} is not role/env/name/instance"))?;
    check_job_key(job).map_err(|e| format!("{id:?}: {e}"))?;
    let n = instance
        .parse::<u32>()
        .ok()
        .filter(|_| !instance.starts_with('+') && (instance == "0" || !instance.starts_with('0')))
        .ok_or_else(|| format!("{id:?}: instance {instance:?} is not a whole number"))?;
    Ok((job, n))
}

fn find_task(view: &View, id: &str) -> Option<u32> {
    let (job, instance) = parse_task_id(id).ok()?;
    let j = view.jobs.find(&job.to_string())?;
    view.tasks.find(&(j, instance))
}

fn task_id(view: &View, t: &Task) -> String {
    match view.jobs.get(t.job) {
        Some(job) => format!("{}/{}", job.key, t.instance),
        None => format!("?{}/{}", t.job, t.instance),
    }
}

// --- what a task's directory says ---

/// What one look at a task's directory found.
#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    /// A supervisor holds the lock, with its latest status (none yet while it starts).
    Alive(Option<rundir::Status>),
    /// The supervisor's last word: FINISHED, FAILED or KILLED.
    Ended(rundir::Status),
    /// No supervisor and no final status: it died without a word (or never started).
    Gone(Option<rundir::Status>),
}

fn is_final(s: &rundir::Status) -> bool {
    matches!(s.state.as_str(), "FINISHED" | "FAILED" | "KILLED")
}

/// Looks at a task's directory. The order matters: a supervisor writes its final status
/// and only then lets go of the lock, and takes the lock before it writes anything; so a
/// free lock followed by a status that is not final, with the lock still free after, is a
/// supervisor that died without a word, never one that was just finishing or starting.
pub fn look(dir: &Path, t: &Task) -> Result<Seen> {
    let held = rundir::supervised(dir)?;
    let status = current_status(dir, t)?;
    if let Some(s) = &status {
        if is_final(s) {
            // A final word from a supervisor that is gone, while the lock is held: a new
            // supervisor has started and not yet written; the word is an earlier run's.
            if held && !rundir::same_process(s.supervisor.0, s.supervisor.1) {
                return Ok(Seen::Alive(None));
            }
            return Ok(Seen::Ended(status.unwrap()));
        }
    }
    if held {
        return Ok(Seen::Alive(status));
    }
    if rundir::supervised(dir)? {
        return Ok(Seen::Alive(current_status(dir, t)?));
    }
    Ok(match current_status(dir, t)? {
        Some(s) if is_final(&s) => Seen::Ended(s),
        other => Seen::Gone(other),
    })
}

/// The status file, if it speaks of the task's current incarnation: one left by an earlier
/// run in the same directory says nothing about this one, and one of this incarnation is
/// believed however old it is.
fn current_status(dir: &Path, t: &Task) -> Result<Option<rundir::Status>> {
    let s = rundir::Status::read(dir)?;
    Ok(s.filter(|s| match s.incarnation {
        Some(n) => n == t.incarnation,
        // From a supervisor older than incarnations: launch records ASSIGNED before it
        // starts the supervisor, so a status older than that record is an earlier run's.
        None => !(t.state == TaskState::Assigned && s.since < t.since),
    }))
}

/// The restart policy of a job: whether it is a service, and its `restart` block, as the
/// typed job spec reads them (pack reads the same, and does not place a batch task that
/// failed `max_failures` times).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    pub service: bool,
    pub restart: Restart,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            service: true,
            restart: Restart::default(),
        }
    }
}

impl Policy {
    pub fn of(job: &JobSpec) -> Policy {
        Policy {
            service: job.service,
            restart: job.restart,
        }
    }

    /// The wait before the next start after `failures` failed brief runs in a row.
    pub fn backoff(&self, failures: u16) -> f64 {
        self.restart.backoff(failures)
    }

    fn retries(&self, failures: u16) -> bool {
        self.service || (failures as u64) < self.restart.max_failures
    }
}

/// What reap reads from a task's directory beyond its status, read only when a decision
/// needs it.
pub struct Facts {
    dir: Option<PathBuf>,
    policy: OnceCell<Policy>,
    spec: OnceCell<(f64, bool)>,
    /// Unix time the task's process started, when known.
    pub started: Option<f64>,
    /// A running `announce --follow` still holds a serverset member for the task: a
    /// graceful stop waits (up to [`LEAVE_WAIT_S`]) for it to go before signalling.
    pub held: bool,
    /// The task is ASSIGNED and the launch that recorded it has ended: if no supervisor
    /// ever took it, none will, and its start is abandoned.
    pub launcher_gone: bool,
}

impl Facts {
    fn of(dir: &Path, started: Option<f64>) -> Facts {
        Facts {
            dir: Some(dir.to_path_buf()),
            policy: OnceCell::new(),
            spec: OnceCell::new(),
            started,
            held: false,
            launcher_gone: false,
        }
    }

    /// Fixed facts, for tests.
    pub fn fixed(policy: Policy, grace_s: f64, health_check: bool, started: Option<f64>) -> Facts {
        Facts {
            dir: None,
            policy: OnceCell::from(policy),
            spec: OnceCell::from((grace_s, health_check)),
            started,
            held: false,
            launcher_gone: false,
        }
    }

    /// When a stop recorded at `since` must be over: the leave, the grace, a margin.
    fn stop_deadline(&self, since: f64) -> f64 {
        let leave = if self.held { LEAVE_WAIT_S } else { 0.0 };
        since + leave + self.spec().0 + STOP_MARGIN_S
    }

    fn policy(&self) -> Policy {
        *self.policy.get_or_init(|| {
            let Some(dir) = &self.dir else {
                return Policy::default();
            };
            let path = dir.join("job.json");
            match std::fs::read_to_string(&path) {
                Ok(text) => match crate::job::parse_text(&text, &path.display().to_string()) {
                    Ok(job) => Policy::of(&job),
                    Err(e) => {
                        eprintln!(
                            "reap: {}: {e}; the default restart policy applies",
                            path.display()
                        );
                        Policy::default()
                    }
                },
                Err(_) => Policy::default(),
            }
        })
    }

    /// The grace period of the task's stop, and whether it has a health check.
    fn spec(&self) -> (f64, bool) {
        *self.spec.get_or_init(|| {
            let spec = self
                .dir
                .as_ref()
                .and_then(|d| std::fs::read_to_string(d.join("spec.json")).ok())
                .and_then(|t| crate::supervise::Spec::parse(&t).ok());
            match spec {
                // The supervisor's own reading of it (clamped), so both keep one deadline.
                Some(s) => (s.grace().as_secs_f64(), s.health.is_some()),
                None => (DEFAULT_GRACE_S, false),
            }
        })
    }
}

// --- decisions ---

/// Something to do to processes, always checked against pid and start time first.
#[derive(Clone, Debug, PartialEq)]
pub enum Act {
    /// SIGTERM to a supervisor: stop the task gracefully.
    Stop { supervisor: (u32, u64) },
    /// SIGKILL to the task's process group: its supervisor is gone.
    KillGroup { task: (u32, u64) },
    /// SIGKILL to a supervisor that did not finish a stop in time, and to its task's group.
    KillAll {
        supervisor: Option<(u32, u64)>,
        task: Option<(u32, u64)>,
    },
}

/// One transition to report.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub state: TaskState,
    pub exit: Option<i32>,
    pub reason: Option<Cow<'static, str>>,
    pub not_before: Option<f64>,
}

impl Event {
    fn new(state: TaskState) -> Event {
        Event {
            state,
            exit: None,
            reason: None,
            not_before: None,
        }
    }

    fn why(mut self, reason: &'static str) -> Event {
        self.reason = Some(Cow::Borrowed(reason));
        self
    }
}

/// What to do about one task: its new record, what to report, and what to signal before
/// the commit (kills, so a crash never leaves a process running under a final record) and
/// after it (SIGTERM, so the stop is recorded before it begins).
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub task: Task,
    pub events: Vec<Event>,
    pub before: Vec<Act>,
    pub after: Vec<Act>,
    /// No supervisor ever reported this incarnation: its start is called off before the
    /// commit (its spec removed under the task's lock, held until the commit is made), so
    /// a supervisor that launch started a moment ago finds nothing to run. When the lock
    /// cannot be had, a supervisor has just taken it, and the plan is dropped.
    pub call_off: bool,
}

impl Plan {
    fn new(task: Task) -> Plan {
        Plan {
            task,
            events: Vec::new(),
            before: Vec::new(),
            after: Vec::new(),
            call_off: false,
        }
    }
}

fn is_stopping(s: TaskState) -> bool {
    matches!(
        s,
        TaskState::Killing | TaskState::Draining | TaskState::Preempting
    )
}

/// Decides what to do about a task in a holding state, given what its directory says,
/// whether a stop was asked for, and the time. Pure: the caller acts on the plan.
pub fn decide(
    t: &Task,
    seen: &Seen,
    request: Option<Cause>,
    facts: &Facts,
    now: f64,
    timing: &Timing,
) -> Option<Plan> {
    match seen {
        Seen::Ended(st) => Some(finish(t, st, facts, now, timing)),
        Seen::Gone(st) => gone(t, st.as_ref(), request, facts, now, timing),
        Seen::Alive(st) => alive(t, st.as_ref(), request, facts, now, timing),
    }
}

/// The supervisor reported the end of the run.
fn finish(t: &Task, st: &rundir::Status, facts: &Facts, now: f64, timing: &Timing) -> Plan {
    let exit = st.exit.or(st.signal.map(|s| -s));
    let unhealthy = st.healthy == Some(false);
    // The supervisor's own reason (the task could not be started, say) travels on.
    let said = st.reason.clone().map(Cow::Owned);
    let (state, reason) = match st.state.as_str() {
        "FINISHED" => (TaskState::Finished, None),
        "FAILED" => (TaskState::Failed, said),
        // Stopped because its health checks failed: a failure of the task, not a kill.
        _ if unhealthy => (TaskState::Failed, Some(Cow::Borrowed("unhealthy"))),
        _ => (TaskState::Killed, None),
    };
    let started = facts.started.unwrap_or(t.since);
    let long = st.since - started >= timing.min_run;
    ended(t, state, exit, reason, long && !unhealthy, facts, now)
}

/// A run is over: the terminal record, then the restart policy. `healthy_run` says the run
/// lasted at least --min-run and was not ended by its health check.
fn ended(
    t: &Task,
    state: TaskState,
    exit: Option<i32>,
    reason: Option<Cow<'static, str>>,
    healthy_run: bool,
    facts: &Facts,
    now: f64,
) -> Plan {
    let mut r = t.freed(state, now);
    r.exit = exit.unwrap_or(0);
    let policy = facts.policy();
    // A service is meant to run until stopped: its exit, even with 0, is a failure.
    let failure = state == TaskState::Failed || (state == TaskState::Finished && policy.service);
    let mut failures = if healthy_run { 0 } else { t.failures };
    if failure {
        failures = failures.saturating_add(1);
    }
    r.failures = failures;
    let mut plan = Plan::new(r);
    plan.events.push(Event {
        state,
        exit,
        reason,
        not_before: None,
    });
    if failure && !healthy_run && policy.retries(failures) {
        let until = now + policy.backoff(failures);
        plan.task = plan.task.freed(TaskState::Throttled, now);
        plan.task.exit = exit.unwrap_or(0);
        plan.task.not_before = until;
        let mut e = Event::new(TaskState::Throttled).why("failed after a brief run");
        e.not_before = Some(until);
        plan.events.push(e);
    }
    plan
}

/// No supervisor holds the lock and there is no final word.
fn gone(
    t: &Task,
    st: Option<&rundir::Status>,
    request: Option<Cause>,
    facts: &Facts,
    now: f64,
    timing: &Timing,
) -> Option<Plan> {
    let stop = is_stopping(t.state) || request.is_some();
    let task_pid = st
        .and_then(|s| s.pid)
        .or((t.pid != 0).then_some((t.pid, t.pid_start)));
    let waited = now - t.since >= timing.start_grace;
    let (state, reason) = match (st, t.state) {
        // Asked to stop before it started: there is nothing to signal.
        (None, _) if stop => (TaskState::Killed, "stopped before it started"),
        // The launch that recorded it is gone (or took too long) and no supervisor took
        // it: placed again by the next pack.
        (None, TaskState::Assigned) if waited || facts.launcher_gone => {
            let mut plan = Plan::new(t.freed(TaskState::Pending, now));
            plan.events
                .push(Event::new(TaskState::Pending).why(if waited {
                    "never started"
                } else {
                    "its launch ended before starting it"
                }));
            plan.call_off = true;
            return Some(plan);
        }
        // Launch may be between recording the intent and starting the supervisor.
        (None, TaskState::Assigned | TaskState::Starting) if !waited => return None,
        (None, _) => (TaskState::Lost, "supervisor never reported"),
        (Some(_), _) if stop => (TaskState::Killed, "supervisor gone"),
        (Some(_), _) => (TaskState::Lost, "supervisor gone"),
    };
    let mut plan = ended(t, state, None, Some(reason.into()), false, facts, now);
    if let Some(p) = task_pid {
        plan.before.push(Act::KillGroup { task: p });
    }
    plan.call_off = st.is_none();
    Some(plan)
}

/// A supervisor holds the lock.
fn alive(
    t: &Task,
    st: Option<&rundir::Status>,
    request: Option<Cause>,
    facts: &Facts,
    now: f64,
    timing: &Timing,
) -> Option<Plan> {
    if is_stopping(t.state) {
        let st = st?; // no status yet: no supervisor pid to signal; the next pass will
        if now >= facts.stop_deadline(t.since) {
            let mut plan = ended(
                t,
                TaskState::Killed,
                Some(-9),
                Some("stop timed out".into()),
                false,
                facts,
                now,
            );
            plan.before.push(Act::KillAll {
                supervisor: Some(st.supervisor),
                task: st.pid,
            });
            return Some(plan);
        }
        if st.state != "KILLING" {
            if facts.held && now < t.since + LEAVE_WAIT_S {
                return None; // still in discovery: clients are being told first
            }
            // A stop recorded but not (yet) under way: the SIGTERM was lost, the reap
            // that recorded it died first, or the instance has left discovery.
            let mut plan = Plan::new(t.clone());
            plan.after.push(Act::Stop {
                supervisor: st.supervisor,
            });
            return Some(plan);
        }
        return None;
    }
    let unhealthy = st.is_some_and(|s| s.state == "RUNNING" && s.healthy == Some(false))
        && t.state == TaskState::Running;
    if let Some(cause) = request.or(unhealthy.then_some(Cause::Unhealthy)) {
        let mut r = t.clone();
        r.state = cause.state();
        r.since = now;
        let mut plan = Plan::new(r);
        plan.events
            .push(Event::new(cause.state()).why(cause.reason()));
        if let Some(st) = st.filter(|_| !facts.held) {
            plan.after.push(Act::Stop {
                supervisor: st.supervisor,
            });
        }
        return Some(plan);
    }
    let st = st?;
    match st.state.as_str() {
        "STARTING" if t.state == TaskState::Assigned => {
            let mut r = t.clone();
            r.state = TaskState::Starting;
            r.since = now;
            let mut plan = Plan::new(r);
            plan.events.push(Event::new(TaskState::Starting));
            Some(plan)
        }
        "RUNNING" => {
            let (pid, start) = st.pid.unwrap_or((t.pid, t.pid_start));
            let healthy = st.healthy.unwrap_or_else(|| !facts.spec().1);
            let mut r = t.clone();
            let mut events = Vec::new();
            if t.state != TaskState::Running || (pid, start) != (t.pid, t.pid_start) {
                r.state = TaskState::Running;
                r.since = now;
                events.push(Event::new(TaskState::Running));
            }
            r.pid = pid;
            r.pid_start = start;
            r.healthy = healthy;
            let started = facts.started.unwrap_or(r.since);
            if healthy && now - started >= timing.min_run {
                r.failures = 0; // a healthy run: the backoff starts over
            }
            if r == *t {
                return None;
            }
            let mut plan = Plan::new(r);
            plan.events = events;
            Some(plan)
        }
        "KILLING" => {
            // Someone other than reap asked the supervisor to stop.
            let mut r = t.clone();
            r.state = TaskState::Killing;
            r.since = now;
            let mut plan = Plan::new(r);
            plan.events
                .push(Event::new(TaskState::Killing).why("supervisor stopping"));
            Some(plan)
        }
        _ => None,
    }
}

// --- signals ---

/// Sends `sig` to the process `pid` only if it is still the one that started at `start`.
/// With a pidfd, the check and the signal name the same process even if the pid is reused
/// in between. Ok(false): it is gone (or was never it).
fn signal_process(who: (u32, u64), sig: nix::sys::signal::Signal) -> Result<bool, String> {
    use nix::libc;
    let (pid, start) = who;
    if pid == 0 || pid > i32::MAX as u32 {
        return Ok(false);
    }
    // SAFETY: plain system calls on integers; the descriptor is closed below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) } as libc::c_int;
    if fd < 0 {
        // No pidfds (old kernel): check, then signal.
        if !rundir::same_process(pid, start) {
            return Ok(false);
        }
        return match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig) {
            Ok(()) => Ok(true),
            Err(nix::errno::Errno::ESRCH) => Ok(false),
            Err(e) => Err(format!("signalling process {pid}: {e}")),
        };
    }
    let result = if rundir::same_process(pid, start) {
        // SAFETY: as above.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd,
                sig as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            )
        };
        if r == 0 {
            Ok(true)
        } else {
            match nix::errno::Errno::last() {
                nix::errno::Errno::ESRCH => Ok(false),
                e => Err(format!("signalling process {pid}: {e}")),
            }
        }
    } else {
        Ok(false)
    };
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };
    result
}

/// SIGKILL to the process group led by `pid`, only while its leader is still the process
/// that started at `start` (a task is the leader of its own session and group).
fn kill_group(who: (u32, u64)) -> Result<bool, String> {
    let (pid, start) = who;
    if pid == 0 || pid > i32::MAX as u32 || !rundir::same_process(pid, start) {
        return Ok(false);
    }
    match nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    ) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::ESRCH) => Ok(false),
        Err(e) => Err(format!("killing process group {pid}: {e}")),
    }
}

/// Calls off the start of a task no supervisor has reported for: with the task's lock
/// held (no supervisor has it), and still no word from this incarnation, its spec is
/// removed, so a supervisor that takes the lock after us has nothing to run. Returns the
/// lock, to be held until the task's new record is committed; None when a supervisor got
/// there first.
fn call_off(dir: &Path, t: &Task) -> Option<std::fs::File> {
    // The directory may not be there yet (launch may be about to write it): made here, so
    // that launch finds the lock ours and then the start called off.
    let lock = rundir::create(dir)
        .and_then(|()| rundir::lock_file(dir))
        .ok()?;
    if !rundir::lock_exclusive(&lock, Duration::from_millis(20)) {
        return None;
    }
    if !matches!(current_status(dir, t), Ok(None)) {
        return None;
    }
    match std::fs::remove_file(dir.join("spec.json")) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => None,
        _ => Some(lock),
    }
}

/// Kills whatever the task left in its cgroups (children that called setsid, orphans of
/// a leader that exited: what its process group no longer reaches), once no supervisor
/// holds its lock: holding it ourselves proves the groups are nobody's. A supervisor that
/// holds it (again) owns them, and kills leftovers itself before it starts the task.
fn kill_leftovers(task: &str, dir: &Path) -> Result<(), String> {
    let lock = rundir::lock_file(dir).map_err(|e| format!("{e:#}"))?;
    if !rundir::lock_exclusive(&lock, Duration::from_secs(1)) {
        return Ok(());
    }
    if crate::limits::kill_leftovers(task, dir) {
        Ok(())
    } else {
        Err("processes survive SIGKILL in its cgroups".into())
    }
}

/// Unix time of a process start given in clock ticks since boot (/proc/PID/stat field 22).
fn started_at(ticks: u64) -> Option<f64> {
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
    Some(now() - (uptime - ticks as f64 / hz))
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

// --- supervisors the state does not know ---

/// A supervisor found in a local host's task directory.
struct Found {
    host: String,
    id: String,
    dir: PathBuf,
    status: rundir::Status,
}

/// Every supervisor at work under the local hosts' run roots that has reported (one that
/// has not yet is left for a later pass: it cannot be told apart from a start under way).
fn supervisors(run_root: &Path) -> Vec<Found> {
    let mut found = Vec::new();
    for (host, root) in rundir::subdirs(run_root) {
        for (id, dir) in rundir::task_dirs(&root) {
            if !rundir::supervised(&dir).unwrap_or(false) {
                continue;
            }
            if let Ok(Some(status)) = rundir::Status::read(&dir) {
                found.push(Found {
                    host: host.clone(),
                    id,
                    dir,
                    status,
                });
            }
        }
    }
    found
}

/// Whether the state runs the incarnation that supervisor runs, on its host.
fn accounted(view: &View, s: &Found) -> bool {
    let Some(t) = find_task(view, &s.id).and_then(|slot| view.tasks.get(slot)) else {
        return false;
    };
    let here = view.hosts.get(t.host).is_some_and(|h| h.name == s.host);
    t.state.holds_resources() && here && s.status.incarnation.is_none_or(|n| n == t.incarnation)
}

// --- the engine ---

/// A task reap looks after: in a holding state on a local host.
struct Watch {
    slot: u32,
    task: Task,
    id: String,
    host: String,
    dir: PathBuf,
}

/// Events go to standard output as records, or as lines for a person on a terminal.
struct Out {
    human: bool,
    out: io::BufWriter<io::Stdout>,
}

impl Out {
    fn event(&mut self, task: &str, host: &str, e: &Event, ts: f64) -> Result<()> {
        let line = if self.human {
            let mut l = format!(
                "{}  {:<10}  {}  on {}",
                clock(ts),
                e.state.name(),
                task,
                host
            );
            if let Some(x) = e.exit {
                l.push_str(&format!("  exit {x}"));
            }
            if let Some(r) = &e.reason {
                l.push_str(&format!("  ({r})"));
            }
            if let Some(nb) = e.not_before {
                l.push_str(&format!("  until {}", clock(nb)));
            }
            l
        } else {
            let mut m = Map::new();
            m.insert("type".into(), json!("event"));
            m.insert("task".into(), json!(task));
            m.insert("host".into(), json!(host));
            m.insert("state".into(), json!(e.state.name()));
            m.insert("exit".into(), json!(e.exit));
            m.insert("ts".into(), json!(ts));
            if let Some(r) = &e.reason {
                m.insert("reason".into(), json!(r));
            }
            if let Some(nb) = e.not_before {
                m.insert("not_before".into(), json!(nb));
            }
            Value::Object(m).to_string()
        };
        self.line(&line)
    }

    fn line(&mut self, line: &str) -> Result<()> {
        self.out
            .write_all(line.as_bytes())
            .and_then(|()| self.out.write_all(b"\n"))
            .context("writing output")
    }

    fn flush(&mut self) -> Result<()> {
        self.out.flush().context("writing output")
    }
}

/// Time of day, UTC, to the millisecond.
fn clock(ts: f64) -> String {
    let ms = (ts * 1000.0).round() as u64;
    let s = ms / 1000 % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        ms % 1000
    )
}

struct Reaper {
    state: State,
    path: PathBuf,
    timing: Timing,
    out: Out,
    /// Problems that did not stop the pass (reported on stderr; the exit status says 1).
    trouble: usize,
    /// What was reported already: a pass repeated every 50 ms says a thing once.
    told: HashSet<String>,
}

/// What a pass left to wait for: tasks still being stopped, with when their stop is due.
struct Pass {
    stopping: Vec<(u32, f64)>,
}

impl Reaper {
    fn open(path: &Path, timing: Timing, human: bool) -> Result<Reaper> {
        if !path.exists() {
            State::open(path)?; // the usual message for a missing state
        }
        Ok(Reaper {
            state: State::open_writer(path)?,
            path: path.to_path_buf(),
            timing,
            out: Out {
                human,
                out: io::BufWriter::new(io::stdout()),
            },
            trouble: 0,
            told: HashSet::new(),
        })
    }

    fn note(&mut self, msg: impl std::fmt::Display) {
        let msg = msg.to_string();
        if !self.told.contains(&msg) {
            eprintln!("reap: {msg}");
            self.told.insert(msg);
        }
        self.trouble += 1;
    }

    /// The tasks named on the command line, each of which must exist.
    fn named(
        &self,
        tasks: &[String],
        jobs: &[String],
        hosts: &[String],
    ) -> Result<HashMap<u32, Cause>> {
        let view = self.state.view();
        let mut out = HashMap::new();
        for id in tasks {
            parse_task_id(id).map_err(bad_input)?;
            let slot = find_task(view, id).ok_or_else(|| bad_input(format!("no task {id}")))?;
            out.insert(slot, Cause::Kill);
        }
        for key in jobs {
            check_job_key(key).map_err(bad_input)?;
            let j = view
                .jobs
                .find(key)
                .ok_or_else(|| bad_input(format!("no job {key}")))?;
            for (slot, t) in view.tasks.iter().filter(|(_, t)| t.job == j) {
                if t.state.holds_resources() {
                    out.insert(slot, Cause::Kill);
                }
            }
        }
        for name in hosts {
            let h = view
                .hosts
                .find(name)
                .ok_or_else(|| bad_input(format!("no host named {name:?}")))?;
            for (slot, t) in view.tasks.iter().filter(|(_, t)| t.host == h) {
                if t.state.holds_resources() {
                    out.insert(slot, Cause::Kill);
                }
            }
        }
        Ok(out)
    }

    /// The tasks that kill and preempt records name. A task that no longer exists or holds
    /// nothing needs no stop; a stop decided on an incarnation that has since been
    /// replaced, or a preempt for a task that has since moved to another host, is out of
    /// date and ignored.
    fn requested(&self, stops: &[StopRecord]) -> HashMap<u32, Cause> {
        let view = self.state.view();
        let mut out = HashMap::new();
        for s in stops {
            let Some(slot) = find_task(view, &s.task) else {
                continue;
            };
            let t = view.tasks.get(slot).unwrap();
            if !t.state.holds_resources() {
                continue;
            }
            if let Some(n) = s.incarnation.filter(|&n| n != t.incarnation) {
                eprintln!(
                    "reap: line {}: incarnation {n} of {} is gone (it is at {} now); {} \
                     ignored",
                    s.line,
                    s.task,
                    t.incarnation,
                    s.cause.record()
                );
                continue;
            }
            if let Some(h) = &s.host {
                let on = view.hosts.get(t.host).map(|h| h.name.as_str());
                if on != Some(h.as_str()) {
                    eprintln!(
                        "reap: line {}: {} is no longer on {h}; preempt ignored",
                        s.line, s.task
                    );
                    continue;
                }
            }
            out.entry(slot).or_insert(s.cause);
        }
        out
    }

    /// Tasks in holding states on local hosts, and the stops that draining hosts ask for.
    fn watched(&mut self) -> (Vec<Watch>, HashSet<u32>) {
        let view = self.state.view();
        let mut watches = Vec::new();
        let mut draining = HashSet::new();
        let mut remote = 0;
        let mut roots: HashMap<u32, PathBuf> = HashMap::new();
        for (slot, t) in view.tasks.iter() {
            if !t.state.holds_resources() {
                continue;
            }
            let Some(host) = view.hosts.get(t.host) else {
                continue;
            };
            if host.transport != Transport::Local {
                remote += 1;
                continue;
            }
            if host.maintenance.mode == Mode::Draining {
                draining.insert(slot);
            }
            let id = task_id(view, t);
            let root = roots
                .entry(t.host)
                .or_insert_with(|| rundir::host_root(&self.path, &host.name));
            watches.push(Watch {
                slot,
                task: t.clone(),
                dir: rundir::task_dir(root, &id),
                id,
                host: host.name.clone(),
            });
        }
        if remote > 0 {
            self.note(format!(
                "{remote} tasks on hosts reached by ssh were not looked at (only local hosts \
                 are supported so far)"
            ));
        }
        (watches, draining)
    }

    /// One pass over the tasks that `only` selects: look, decide, kill what must die,
    /// commit, report, then start the stops that were recorded.
    fn pass(
        &mut self,
        requests: &HashMap<u32, Cause>,
        only: &mut dyn FnMut(&Watch) -> bool,
    ) -> Result<Pass> {
        let (watches, draining) = self.watched();
        let announcer = crate::announce::follower_alive(self.state.path());
        let now = now();
        let mut plans: Vec<(Watch, Plan)> = Vec::new();
        let mut stopping = Vec::new();
        for w in watches {
            let request = requests
                .get(&w.slot)
                .copied()
                .or(draining.contains(&w.slot).then_some(Cause::Drain));
            if request.is_none() && !only(&w) {
                continue;
            }
            let seen = match look(&w.dir, &w.task) {
                Ok(s) => s,
                Err(e) => {
                    self.note(format!("task {}: {e:#}", w.id));
                    continue;
                }
            };
            let ticks = match &seen {
                Seen::Alive(Some(s)) | Seen::Ended(s) | Seen::Gone(Some(s)) => s.pid.map(|p| p.1),
                _ => None,
            }
            .or((w.task.pid_start != 0).then_some(w.task.pid_start));
            let mut facts = Facts::of(&w.dir, ticks.and_then(started_at));
            facts.held = w.task.announced && announcer;
            facts.launcher_gone =
                w.task.state == TaskState::Assigned && !rundir::alive(w.task.launcher);
            let plan = decide(&w.task, &seen, request, &facts, now, &self.timing);
            let next = plan.as_ref().map_or(w.task.state, |p| p.task.state);
            if is_stopping(next) {
                let since = plan.as_ref().map_or(w.task.since, |p| p.task.since);
                stopping.push((w.slot, facts.stop_deadline(since)));
            }
            if let Some(plan) = plan {
                plans.push((w, plan));
            }
        }
        // Held until the commit: see `Plan::call_off`.
        let mut called_off = Vec::new();
        plans.retain(|(w, plan)| {
            !plan.call_off
                || call_off(&w.dir, &w.task)
                    .map(|lock| called_off.push(lock))
                    .is_some()
        });
        for (w, plan) in &plans {
            for act in &plan.before {
                self.act(w, act);
            }
        }
        let any_draining = !draining.is_empty()
            || self
                .state
                .view()
                .hosts
                .iter()
                .any(|(_, h)| h.maintenance.mode == Mode::Draining);
        // Apply each plan only to the record it was made from: if launch or another reap
        // changed the task meanwhile, the next pass decides again from what is there now.
        let applied = self.state.write_if_changed(|tx| {
            let mut applied = Vec::with_capacity(plans.len());
            let mut changed = false;
            for (w, plan) in &plans {
                let same = tx.view().tasks.get(w.slot) == Some(&w.task);
                if same && plan.task != w.task {
                    tx.set(w.slot, Some(plan.task.clone()));
                    changed = true;
                }
                applied.push(same);
            }
            if changed || any_draining {
                crate::offer::settle_drains(tx);
            }
            Ok(applied)
        })?;
        drop(called_off);
        for ((w, plan), ok) in plans.iter().zip(applied) {
            if !ok {
                continue;
            }
            for e in &plan.events {
                self.out.event(&w.id, &w.host, e, now)?;
            }
            for act in &plan.after {
                self.act(w, act);
            }
        }
        self.out.flush()?;
        Ok(Pass { stopping })
    }

    fn act(&mut self, w: &Watch, act: &Act) {
        use nix::sys::signal::Signal;
        let r = match *act {
            Act::Stop { supervisor } => signal_process(supervisor, Signal::SIGTERM).map(|_| ()),
            Act::KillGroup { task } => kill_group(task).and_then(|_| kill_leftovers(&w.id, &w.dir)),
            Act::KillAll { supervisor, task } => {
                let a = task.map_or(Ok(false), kill_group);
                let b = supervisor.map_or(Ok(false), |s| signal_process(s, Signal::SIGKILL));
                a.and(b).and_then(|_| kill_leftovers(&w.id, &w.dir))
            }
        };
        if let Err(e) = r {
            self.note(format!("task {}: {e}", w.id));
        }
    }

    /// Nothing runs that the state does not know: a supervisor whose incarnation the state
    /// does not run on its host (two passes placed the task at once before launch refused
    /// the loser, a host removed with --force, a state restored from a backup) is stopped
    /// like any task, SIGTERM first and SIGKILL with its cgroups after its grace.
    fn stop_strays(&mut self) -> Result<()> {
        let found = supervisors(&rundir::run_root(&self.path));
        if found.is_empty() {
            return Ok(());
        }
        // Judged on the state as it is after the walk: launch records an incarnation
        // before it starts its supervisor, so every supervisor found that the state runs
        // is in this view.
        self.state.refresh()?;
        let now = now();
        for s in found {
            if !accounted(self.state.view(), &s) {
                self.stop_stray(&s, now)?;
            }
        }
        self.out.flush()
    }

    fn stop_stray(&mut self, s: &Found, now: f64) -> Result<()> {
        use nix::sys::signal::Signal;
        let why = match s.status.incarnation {
            Some(n) => format!("the state does not run incarnation {n} on {}", s.host),
            None => format!("the state does not run it on {}", s.host),
        };
        let event = if s.status.state == "KILLING" {
            let facts = Facts::of(&s.dir, None);
            if now < facts.stop_deadline(s.status.since) {
                return Ok(());
            }
            let group = s.status.pid.map_or(Ok(false), kill_group);
            let supervisor = signal_process(s.status.supervisor, Signal::SIGKILL);
            if let Err(e) = group
                .and(supervisor)
                .and_then(|_| kill_leftovers(&s.id, &s.dir))
            {
                self.note(format!("task {} on {}: {e}", s.id, s.host));
            }
            let mut e = Event::new(TaskState::Killed);
            e.exit = Some(-9);
            e.reason = Some(format!("{why}; it did not stop in time").into());
            e
        } else {
            match signal_process(s.status.supervisor, Signal::SIGTERM) {
                Ok(true) => {}
                Ok(false) => return Ok(()), // gone meanwhile
                Err(e) => {
                    self.note(format!("task {} on {}: {e}", s.id, s.host));
                    return Ok(());
                }
            }
            let mut e = Event::new(TaskState::Killing);
            e.reason = Some(why.into());
            e
        };
        self.out.event(&s.id, &s.host, &event, now)
    }

    /// One pass with these stops, then passes over the stopping tasks until every stop is
    /// complete; then the other input lines go on.
    fn once(&mut self, requests: HashMap<u32, Cause>, passthrough: &[String]) -> Result<Status> {
        self.stop_strays()?;
        let mut pass = self.pass(&requests, &mut |_| true)?;
        // Every stop ends by its deadline: the supervisor reports, or reap kills it. A stop
        // that cannot (no status to find its supervisor by) is given up a little later.
        let give_up = |p: &Pass| p.stopping.iter().map(|s| s.1).fold(0.0, f64::max) + 5.0;
        while !pass.stopping.is_empty() && now() < give_up(&pass) {
            std::thread::sleep(POLL);
            let waiting: HashSet<u32> = pass.stopping.iter().map(|s| s.0).collect();
            pass = self.pass(&HashMap::new(), &mut |w| waiting.contains(&w.slot))?;
        }
        if !pass.stopping.is_empty() {
            let n = pass.stopping.len();
            self.note(format!(
                "{n} stops did not complete; the next pass goes on with them"
            ));
        }
        for line in passthrough {
            self.out.line(line)?;
        }
        self.out.flush()?;
        Ok(if self.trouble > 0 {
            Status::Partial
        } else {
            Status::Done
        })
    }

    /// Passes forever: a task is looked at when its status file changes, while it is
    /// starting or stopping (its clocks run), and every second in any case.
    fn follow(&mut self) -> Result<Status> {
        type Key = (u64, i64, i64, u64);
        let mut last: HashMap<u32, (Option<Key>, Task)> = HashMap::new();
        let mut tick: u32 = 0;
        loop {
            let started = Instant::now();
            let sweep = tick.is_multiple_of(SWEEP_TICKS);
            let mut current: HashMap<u32, (Option<Key>, Task)> = HashMap::new();
            let mut select = |w: &Watch| {
                let key = std::fs::metadata(w.dir.join("status"))
                    .ok()
                    .map(|m| (m.ino(), m.mtime(), m.mtime_nsec(), m.size()));
                let changed = last
                    .get(&w.slot)
                    .is_none_or(|(k, t)| *k != key || *t != w.task);
                current.insert(w.slot, (key, w.task.clone()));
                sweep
                    || changed
                    || is_stopping(w.task.state)
                    || matches!(w.task.state, TaskState::Assigned | TaskState::Starting)
            };
            self.pass(&HashMap::new(), &mut select)?;
            if sweep {
                self.stop_strays()?;
            }
            last = current;
            // Problems are reported as they happen; following goes on.
            self.trouble = 0;
            tick = tick.wrapping_add(1);
            if let Some(rest) = POLL.checked_sub(started.elapsed()) {
                std::thread::sleep(rest);
            }
        }
    }
}

// --- the listing ---

fn list(
    state: &State,
    jobs: &[String],
    hosts: &[String],
    states: &[TaskState],
    output: &OutputArgs,
) -> Result<Status> {
    let view = state.view();
    // One rule for names, as `offer hosts` and `reap kill` have it: an unknown one is an
    // error, not an empty listing.
    for key in jobs {
        check_job_key(key).map_err(bad_input)?;
        view.jobs
            .find(key)
            .ok_or_else(|| bad_input(format!("no job {key}")))?;
    }
    for name in hosts {
        view.hosts
            .find(name)
            .ok_or_else(|| bad_input(format!("no host named {name:?}")))?;
    }
    let mut rows: Vec<(&str, u32, &Task)> = Vec::new();
    for (_, t) in view.tasks.iter() {
        let Some(job) = view.jobs.get(t.job) else {
            continue;
        };
        let host = view.hosts.get(t.host).map(|h| h.name.as_str());
        if (!jobs.is_empty() && !jobs.contains(&job.key))
            || (!hosts.is_empty() && !host.is_some_and(|h| hosts.iter().any(|x| x == h)))
            || (!states.is_empty() && !states.contains(&t.state))
        {
            continue;
        }
        rows.push((job.key.as_str(), t.instance, t));
    }
    rows.sort_by(|a, b| a.0.cmp(b.0).then(a.1.cmp(&b.1)));
    let mut out = records::Writer::stdout();
    let ports_of = |t: &Task| -> Vec<(String, u16)> {
        let names = &view.jobs.get(t.job).unwrap().ports;
        names
            .iter()
            .zip(t.ports)
            .filter(|(_, p)| *p != 0)
            .map(|(n, p)| (n.clone(), p))
            .collect()
    };
    if output.human() {
        let table: Vec<Vec<String>> = rows
            .iter()
            .map(|(key, i, t)| {
                let ports: Vec<String> = ports_of(t)
                    .iter()
                    .map(|(n, p)| format!("{n}={p}"))
                    .collect();
                let terminal = matches!(
                    t.state,
                    TaskState::Finished
                        | TaskState::Failed
                        | TaskState::Killed
                        | TaskState::Throttled
                );
                vec![
                    format!("{key}/{i}"),
                    view.hosts
                        .get(t.host)
                        .map_or("-".into(), |h| h.name.clone()),
                    t.state.name().into(),
                    if t.pid == 0 {
                        "-".into()
                    } else {
                        t.pid.to_string()
                    },
                    if ports.is_empty() {
                        "-".into()
                    } else {
                        ports.join(",")
                    },
                    if t.state == TaskState::Running {
                        if t.healthy { "yes" } else { "no" }.into()
                    } else {
                        "-".into()
                    },
                    t.failures.to_string(),
                    if terminal {
                        t.exit.to_string()
                    } else {
                        "-".into()
                    },
                ]
            })
            .collect();
        out.text(&cli::table(
            &[
                "TASK", "HOST", "STATE", "PID", "PORTS", "HEALTHY", "FAILURES", "EXIT",
            ],
            &table,
        ))?;
    } else {
        for (key, i, t) in &rows {
            let ports: Map<String, Value> = ports_of(t)
                .into_iter()
                .map(|(n, p)| (n, json!(p)))
                .collect();
            let rec = json!({
                "type": "task",
                "task": format!("{key}/{i}"),
                "job": key,
                "instance": i,
                "host": view.hosts.get(t.host).map(|h| h.name.clone()),
                "state": t.state.name(),
                "pid": (t.pid != 0).then_some(t.pid),
                "ports": ports,
                "healthy": t.healthy,
                "announced": t.announced,
                "failures": t.failures,
            });
            out.record(&rec)?;
        }
    }
    out.finish()?;
    Ok(Status::Done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::NO_HOST;

    fn task(state: TaskState, since: f64) -> Task {
        let mut t = Task::new(0, 0);
        t.state = state;
        t.host = 0;
        t.since = since;
        t.cpus = 500;
        t.ram_mb = 128;
        t.ports[0] = 31000;
        t.pid = 100;
        t.pid_start = 7;
        t
    }

    fn status(state: &str, since: f64) -> rundir::Status {
        rundir::Status {
            task: "a/b/c/0".into(),
            supervisor: (99, 5),
            pid: Some((100, 7)),
            state: state.into(),
            exit: None,
            signal: None,
            since,
            healthy: None,
            health_failures: 0,
            ..Default::default()
        }
    }

    fn service(backoff: f64, cap: f64) -> Policy {
        Policy {
            service: true,
            restart: Restart {
                max_failures: 1,
                backoff_s: backoff,
                max_backoff_s: cap,
            },
        }
    }

    fn batch(max_failures: u64) -> Policy {
        Policy {
            service: false,
            restart: Restart {
                max_failures,
                ..Restart::default()
            },
        }
    }

    const T: Timing = Timing {
        start_grace: 30.0,
        min_run: 60.0,
    };

    /// A grace period of 1e30 s in spec.json (the supervisor clamps it) gave reap a stop
    /// deadline that never came: reap reads it as the supervisor does.
    #[test]
    fn a_huge_grace_in_spec_json_still_gives_a_stop_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec =
            crate::supervise::Spec::parse(r#"{"task": "a/b/c/0", "argv": ["true"]}"#).unwrap();
        spec.grace_s = 1e30;
        std::fs::write(dir.path().join("spec.json"), spec.to_json().to_string()).unwrap();
        let facts = Facts::of(dir.path(), None);
        let deadline = facts.stop_deadline(0.0);
        assert!(deadline.is_finite() && deadline <= 1e9 + 10.0, "{deadline}");
    }

    fn facts(p: Policy) -> Facts {
        Facts::fixed(p, 5.0, false, None)
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let p = service(2.0, 10.0);
        let got: Vec<f64> = (1..=5).map(|f| p.backoff(f)).collect();
        assert_eq!(got, [2.0, 4.0, 8.0, 10.0, 10.0]);
        assert_eq!(p.backoff(u16::MAX), 10.0);
    }

    #[test]
    fn task_ids_are_checked() {
        assert_eq!(parse_task_id("www/prod/hello/3"), Ok(("www/prod/hello", 3)));
        for bad in [
            "www/prod/hello",
            "www/prod/hello/x",
            "www/prod/hello/-1",
            "www/../x/0",
            "a/b/c/01",
            "a/b/c/+1",
        ] {
            assert!(parse_task_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_failed_brief_service_run_is_throttled_and_a_long_one_resets() {
        let mut t = task(TaskState::Running, 1000.0);
        t.failures = 2;
        let mut st = status("FAILED", 1010.0);
        st.exit = Some(1);
        let plan = decide(
            &t,
            &Seen::Ended(st.clone()),
            None,
            &facts(service(1.0, 300.0)),
            1011.0,
            &T,
        )
        .unwrap();
        assert_eq!(plan.task.state, TaskState::Throttled);
        assert_eq!(plan.task.failures, 3);
        assert_eq!(plan.task.not_before, 1011.0 + 4.0);
        assert_eq!(
            (plan.task.host, plan.task.cpus, plan.task.ports[0]),
            (NO_HOST, 0, 0)
        );
        let states: Vec<_> = plan.events.iter().map(|e| (e.state, e.exit)).collect();
        assert_eq!(
            states,
            [(TaskState::Failed, Some(1)), (TaskState::Throttled, None)]
        );

        // The same failure after a two-minute run: failures start over, no backoff.
        st.since = 1120.0;
        let plan = decide(
            &t,
            &Seen::Ended(st),
            None,
            &facts(service(1.0, 300.0)),
            1121.0,
            &T,
        )
        .unwrap();
        assert_eq!(
            (plan.task.state, plan.task.failures),
            (TaskState::Failed, 1)
        );
    }

    #[test]
    fn batch_tasks_finish_for_good_and_give_up_after_max_failures() {
        let t = task(TaskState::Running, 1000.0);
        let mut st = status("FINISHED", 1001.0);
        st.exit = Some(0);
        let plan = decide(&t, &Seen::Ended(st), None, &facts(batch(3)), 1002.0, &T).unwrap();
        assert_eq!(
            (plan.task.state, plan.task.failures),
            (TaskState::Finished, 0)
        );

        let mut t = task(TaskState::Running, 1000.0);
        t.failures = 1;
        let mut st = status("FAILED", 1001.0);
        st.signal = Some(9);
        let plan = decide(
            &t,
            &Seen::Ended(st.clone()),
            None,
            &facts(batch(3)),
            1002.0,
            &T,
        )
        .unwrap();
        assert_eq!(
            (plan.task.state, plan.task.exit),
            (TaskState::Throttled, -9)
        );
        t.failures = 2;
        let plan = decide(&t, &Seen::Ended(st), None, &facts(batch(3)), 1002.0, &T).unwrap();
        assert_eq!(
            (plan.task.state, plan.task.failures),
            (TaskState::Failed, 3)
        );
        assert_eq!(plan.events.len(), 1);
    }

    #[test]
    fn a_stop_is_recorded_then_signalled_and_killed_at_its_deadline() {
        let t = task(TaskState::Running, 1000.0);
        let st = status("RUNNING", 1000.0);
        let plan = decide(
            &t,
            &Seen::Alive(Some(st.clone())),
            Some(Cause::Preempt),
            &facts(batch(1)),
            1100.0,
            &T,
        )
        .unwrap();
        assert_eq!(plan.task.state, TaskState::Preempting);
        assert_eq!(
            plan.after,
            [Act::Stop {
                supervisor: (99, 5)
            }]
        );
        assert!(plan.before.is_empty());

        // Still RUNNING (the SIGTERM was lost): sent again, the record stays.
        let stopping = plan.task;
        let again = decide(
            &stopping,
            &Seen::Alive(Some(st.clone())),
            None,
            &facts(batch(1)),
            1101.0,
            &T,
        )
        .unwrap();
        assert_eq!(
            (again.task.clone(), again.after.len()),
            (stopping.clone(), 1)
        );
        // KILLING within grace + margin: wait.
        let killing = status("KILLING", 1100.0);
        assert!(decide(
            &stopping,
            &Seen::Alive(Some(killing.clone())),
            None,
            &facts(batch(1)),
            1107.0,
            &T
        )
        .is_none());
        // Past it: SIGKILL both, record KILLED.
        let late = decide(
            &stopping,
            &Seen::Alive(Some(killing)),
            None,
            &facts(batch(1)),
            1108.5,
            &T,
        )
        .unwrap();
        assert_eq!((late.task.state, late.task.exit), (TaskState::Killed, -9));
        assert_eq!(
            late.before,
            [Act::KillAll {
                supervisor: Some((99, 5)),
                task: Some((100, 7))
            }]
        );
    }

    #[test]
    fn an_announced_instance_leaves_discovery_before_it_is_signalled() {
        let st = status("RUNNING", 1000.0);
        let held = || {
            let mut f = facts(batch(1));
            f.held = true;
            f
        };
        let mut t = task(TaskState::Running, 1000.0);
        t.announced = true;
        // The stop is recorded, but no SIGTERM while the announcer holds the member.
        let plan = decide(
            &t,
            &Seen::Alive(Some(st.clone())),
            Some(Cause::Drain),
            &held(),
            1100.0,
            &T,
        )
        .unwrap();
        assert_eq!(plan.task.state, TaskState::Draining);
        assert!(plan.after.is_empty() && plan.before.is_empty());
        let draining = plan.task;
        assert!(decide(
            &draining,
            &Seen::Alive(Some(st.clone())),
            None,
            &held(),
            1101.0,
            &T
        )
        .is_none());
        // The member is gone (the mark cleared): the signal goes.
        let mut left = draining.clone();
        left.announced = false;
        let go = decide(
            &left,
            &Seen::Alive(Some(st.clone())),
            None,
            &facts(batch(1)),
            1101.5,
            &T,
        )
        .unwrap();
        assert_eq!(
            go.after,
            [Act::Stop {
                supervisor: (99, 5)
            }]
        );
        // An announcer that never answers holds the stop back no longer than LEAVE_WAIT_S.
        let late = decide(
            &draining,
            &Seen::Alive(Some(st)),
            None,
            &held(),
            1100.0 + LEAVE_WAIT_S,
            &T,
        )
        .unwrap();
        assert_eq!(
            late.after,
            [Act::Stop {
                supervisor: (99, 5)
            }]
        );
        // And its grace period is not eaten by the wait: the deadline moves with it.
        assert_eq!(
            held().stop_deadline(1100.0),
            facts(batch(1)).stop_deadline(1100.0) + LEAVE_WAIT_S
        );
    }

    #[test]
    fn a_silent_supervisor_means_lost_and_an_unstarted_task_waits_for_launch() {
        let t = task(TaskState::Running, 1000.0);
        let plan = decide(
            &t,
            &Seen::Gone(Some(status("RUNNING", 1000.0))),
            None,
            &facts(service(1.0, 9.0)),
            1001.0,
            &T,
        )
        .unwrap();
        assert_eq!(plan.task.state, TaskState::Lost);
        assert_eq!(plan.before, [Act::KillGroup { task: (100, 7) }]);
        assert_eq!(
            plan.events.len(),
            1,
            "LOST is not the task's failure: no backoff"
        );

        let mut t = task(TaskState::Assigned, 1000.0);
        t.pid = 0;
        assert!(decide(&t, &Seen::Gone(None), None, &facts(batch(1)), 1029.0, &T).is_none());
        let plan = decide(&t, &Seen::Gone(None), None, &facts(batch(1)), 1030.0, &T).unwrap();
        assert_eq!(
            (plan.task.state, plan.task.host, plan.task.ram_mb),
            (TaskState::Pending, NO_HOST, 0)
        );
        assert!(plan.before.is_empty());
    }

    #[test]
    fn health_is_followed_and_an_unhealthy_task_is_stopped() {
        let mut t = task(TaskState::Starting, 1000.0);
        t.pid = 0;
        let mut st = status("RUNNING", 1000.0);
        let plan = decide(
            &t,
            &Seen::Alive(Some(st.clone())),
            None,
            &Facts::fixed(batch(1), 5.0, true, None),
            1001.0,
            &T,
        )
        .unwrap();
        assert_eq!(
            (plan.task.state, plan.task.pid, plan.task.healthy),
            (TaskState::Running, 100, false)
        );
        let running = plan.task;
        st.healthy = Some(false);
        let plan = decide(
            &running,
            &Seen::Alive(Some(st.clone())),
            None,
            &facts(batch(1)),
            1002.0,
            &T,
        )
        .unwrap();
        assert_eq!(plan.task.state, TaskState::Killing);
        assert_eq!(plan.events[0].reason.as_deref(), Some("unhealthy"));
        // Its end is a failure, not a kill.
        st.state = "KILLED".into();
        st.signal = Some(15);
        let plan = decide(
            &plan.task,
            &Seen::Ended(st),
            None,
            &facts(batch(5)),
            1003.0,
            &T,
        )
        .unwrap();
        assert_eq!(plan.events[0].state, TaskState::Failed);
        assert_eq!(plan.task.failures, 1);
    }
}
