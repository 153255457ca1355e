//! What to do about a task in a holding state, from what its directory says: pure decisions
//! (a new record, events, signals before and after the commit) that the engine carries out.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::path::{Path, PathBuf};

use super::input::Cause;
use super::{Timing, LEAVE_WAIT_S, STOP_MARGIN_S};
use crate::job::{JobSpec, Restart};
use crate::task::{Reason, Task, TaskState};
use crate::taskdir;

/// The supervisor's default grace period, when spec.json does not say.
const DEFAULT_GRACE_S: f64 = 10.0;

/// What one look at a task's directory found.
#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    /// A supervisor holds the lock, with its latest status (none yet while it starts).
    Alive(Option<taskdir::Status>),
    /// The supervisor's last word: FINISHED, FAILED or KILLED.
    Ended(taskdir::Status),
    /// No supervisor and no final status: it died without a word (or never started).
    Gone(Option<taskdir::Status>),
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
    pub fn of(dir: &Path, started: Option<f64>) -> Facts {
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
    pub fn stop_deadline(&self, since: f64) -> f64 {
        let leave = if self.held { LEAVE_WAIT_S } else { 0.0 };
        since + leave + self.spec().0 + STOP_MARGIN_S
    }

    /// Everything a decision may read, read now: what a remote host sends with its look.
    pub fn resolved(&self) -> (Policy, f64, bool) {
        let (grace, health) = self.spec();
        (self.policy(), grace, health)
    }

    fn policy(&self) -> Policy {
        *self.policy.get_or_init(|| {
            let Some(dir) = &self.dir else {
                return Policy::default();
            };
            match taskdir::read_job(dir) {
                Ok(job) => job.as_ref().map_or_else(Policy::default, Policy::of),
                Err(e) => {
                    eprintln!("reap: {e}; the default restart policy applies");
                    Policy::default()
                }
            }
        })
    }

    /// The grace period of the task's stop, and whether it has a health check.
    fn spec(&self) -> (f64, bool) {
        *self.spec.get_or_init(|| {
            match self.dir.as_deref().and_then(taskdir::read_spec) {
                // The supervisor's own reading of it (clamped), so both keep one deadline.
                Some(s) => (s.grace().as_secs_f64(), s.health.is_some()),
                None => (DEFAULT_GRACE_S, false),
            }
        })
    }
}

/// Something to do to processes, always checked against pid and start time first.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
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
    /// Why, as the task's record keeps it.
    pub reason: Reason,
    /// The words of the moment, when there is more to say than the reason's own (what
    /// the supervisor could not do, say).
    pub detail: Option<Cow<'static, str>>,
    pub not_before: Option<f64>,
}

impl Event {
    pub(super) fn new(state: TaskState) -> Event {
        Event {
            state,
            exit: None,
            reason: Reason::None,
            detail: None,
            not_before: None,
        }
    }

    pub(super) fn why(mut self, reason: Reason) -> Event {
        self.reason = reason;
        self
    }

    pub(super) fn saying(mut self, detail: impl Into<Cow<'static, str>>) -> Event {
        self.detail = Some(detail.into());
        self
    }

    /// What the event says of why: its own words, else its reason's.
    pub fn words(&self) -> Option<&str> {
        self.detail
            .as_deref()
            .or((self.reason != Reason::None).then(|| self.reason.text()))
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

pub(super) fn is_stopping(s: TaskState) -> bool {
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
    let mut plan = match seen {
        Seen::Ended(st) => Some(finish(t, st, facts, now, timing)),
        Seen::Gone(st) => gone(t, st.as_ref(), request, facts, now, timing),
        Seen::Alive(st) => alive(t, st.as_ref(), request, facts, now, timing),
    }?;
    // The record keeps why it is in its state: the reason of its last transition.
    if let Some(e) = plan.events.last() {
        plan.task.reason = e.reason;
    }
    Some(plan)
}

/// The supervisor reported the end of the run.
fn finish(t: &Task, st: &taskdir::Status, facts: &Facts, now: f64, timing: &Timing) -> Plan {
    let exit = st.exit.or(st.signal.map(|s| -s));
    let unhealthy = st.healthy == Some(false);
    // The supervisor's own words (what it could not do) travel on in the event.
    let said = st.reason.clone().map(Cow::Owned);
    let (state, reason) = match st.state.as_str() {
        "FINISHED" => (TaskState::Finished, Reason::Exited),
        "FAILED" if said.is_none() => (TaskState::Failed, Reason::Exited),
        "FAILED" if st.pid.is_none() => (TaskState::Failed, Reason::CouldNotStart),
        "FAILED" => (TaskState::Failed, Reason::SupervisorGaveUp),
        // Stopped because its health checks failed: a failure of the task, not a kill.
        _ if unhealthy => (TaskState::Failed, Reason::Unhealthy),
        // The end of a stop keeps the stop's reason.
        _ if t.reason != Reason::None => (TaskState::Killed, t.reason),
        _ => (TaskState::Killed, Reason::Killed),
    };
    let started = facts.started.unwrap_or(t.since);
    let long = st.since - started >= timing.min_run;
    let why = Event::new(state).why(reason);
    let why = match said {
        Some(words) => why.saying(words),
        None => why,
    };
    ended(t, why, exit, long && !unhealthy, facts, now)
}

/// A run is over: the terminal record, then the restart policy. `healthy_run` says the run
/// lasted at least --min-run and was not ended by its health check.
fn ended(
    t: &Task,
    mut event: Event,
    exit: Option<i32>,
    healthy_run: bool,
    facts: &Facts,
    now: f64,
) -> Plan {
    let state = event.state;
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
    event.exit = exit;
    let reason = event.reason;
    plan.events.push(event);
    if failure && !healthy_run && policy.retries(failures) {
        let until = now + policy.backoff(failures);
        plan.task = plan.task.freed(TaskState::Throttled, now);
        plan.task.exit = exit.unwrap_or(0);
        plan.task.not_before = until;
        // Held back for what ended the run: the record says why it failed.
        let mut e = Event::new(TaskState::Throttled)
            .why(reason)
            .saying("failed after a brief run");
        e.not_before = Some(until);
        plan.events.push(e);
    }
    plan
}

/// No supervisor holds the lock and there is no final word.
fn gone(
    t: &Task,
    st: Option<&taskdir::Status>,
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
        (None, _) if stop => (TaskState::Killed, Reason::StoppedBeforeStart),
        // The launch that recorded it is gone (or took too long) and no supervisor took
        // it: placed again by the next pack.
        (None, TaskState::Assigned) if waited || facts.launcher_gone => {
            let mut plan = Plan::new(t.freed(TaskState::Pending, now));
            let e = Event::new(TaskState::Pending).why(Reason::NeverStarted);
            plan.events.push(if waited {
                e
            } else {
                e.saying("its launch ended before starting it")
            });
            plan.call_off = true;
            return Some(plan);
        }
        // Launch may be between recording the intent and starting the supervisor.
        (None, TaskState::Assigned | TaskState::Starting) if !waited => return None,
        (None, _) => (TaskState::Lost, Reason::NeverReported),
        (Some(_), _) if stop => (TaskState::Killed, Reason::SupervisorGone),
        (Some(_), _) => (TaskState::Lost, Reason::SupervisorGone),
    };
    let mut plan = ended(t, Event::new(state).why(reason), None, false, facts, now);
    if let Some(p) = task_pid {
        plan.before.push(Act::KillGroup { task: p });
    }
    plan.call_off = st.is_none();
    Some(plan)
}

/// A supervisor holds the lock.
fn alive(
    t: &Task,
    st: Option<&taskdir::Status>,
    request: Option<Cause>,
    facts: &Facts,
    now: f64,
    timing: &Timing,
) -> Option<Plan> {
    if is_stopping(t.state) {
        let st = st?; // no status yet: no supervisor pid to signal; the next pass will
        if now >= facts.stop_deadline(t.since) {
            let why = Event::new(TaskState::Killed).why(Reason::StopTimedOut);
            let mut plan = ended(t, why, Some(-9), false, facts, now);
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
            r.healthy_since = match healthy {
                false => 0.0,
                true if r.state != t.state || !t.healthy || r.since != t.since => now,
                true => t.healthy_since,
            };
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
                .push(Event::new(TaskState::Killing).why(Reason::SupervisorStopping));
            Some(plan)
        }
        _ => None,
    }
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

    fn status(state: &str, since: f64) -> taskdir::Status {
        taskdir::Status {
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
        lost_after: 300.0,
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
        assert_eq!(plan.events[0].reason, Reason::Unhealthy);
        assert_eq!(plan.events[0].words(), Some("unhealthy"));
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
