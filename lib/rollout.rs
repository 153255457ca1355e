//! Rolling updates: how a job whose spec changed moves its instances to the new spec, batch
//! by batch, and back again when the new spec fails.
//!
//! The job's record in the state keeps its rollout (`Rollout`): the last spec fully rolled
//! out (`stable`), whether new specs are held back (`held`, `roll pause` before a change),
//! and the current or last update (`Update`: from, to, phase, instance range, clocks and
//! counts). Nothing else is kept: each pass works out from the tasks in the state (which
//! spec each runs, since when, whether healthy, how often it failed) what is done, what is
//! in flight and what to replace next (`plan`). pack plans and proposes the next record;
//! launch commits it only if the record pack saw is still the one in the state, as with
//! placements; so any number of passes, and a crash of any of them, lose nothing and do
//! nothing twice.

use serde_json::{json, Value};

use crate::fixed::{Corrupt, Decoder, Encoder};
use crate::job::UpdatePolicy;
use crate::task::TaskState;

/// Where an update is, after Aurora's JobUpdateStatus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    RollingForward = 1,
    RollingBack = 2,
    RollForwardPaused = 3,
    RollBackPaused = 4,
    RolledForward = 5,
    RolledBack = 6,
    Aborted = 7,
    /// Failed with no rollback, or its rollback failed: a person must look.
    Failed = 8,
}

const PHASES: [Phase; 8] = [
    Phase::RollingForward,
    Phase::RollingBack,
    Phase::RollForwardPaused,
    Phase::RollBackPaused,
    Phase::RolledForward,
    Phase::RolledBack,
    Phase::Aborted,
    Phase::Failed,
];

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::RollingForward => "ROLLING_FORWARD",
            Phase::RollingBack => "ROLLING_BACK",
            Phase::RollForwardPaused => "ROLL_FORWARD_PAUSED",
            Phase::RollBackPaused => "ROLL_BACK_PAUSED",
            Phase::RolledForward => "ROLLED_FORWARD",
            Phase::RolledBack => "ROLLED_BACK",
            Phase::Aborted => "ABORTED",
            Phase::Failed => "FAILED",
        }
    }

    pub fn from_name(s: &str) -> Option<Phase> {
        PHASES.iter().copied().find(|p| p.name() == s)
    }

    /// Moving instances (not paused, not over).
    pub fn is_moving(self) -> bool {
        matches!(self, Phase::RollingForward | Phase::RollingBack)
    }

    pub fn is_paused(self) -> bool {
        matches!(self, Phase::RollForwardPaused | Phase::RollBackPaused)
    }

    pub fn is_over(self) -> bool {
        !self.is_moving() && !self.is_paused()
    }

    /// Going back to `from`.
    pub fn is_backward(self) -> bool {
        matches!(self, Phase::RollingBack | Phase::RollBackPaused)
    }
}

/// Why an update ended the way it did, or why it waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Why {
    #[default]
    None = 0,
    /// More instances of the new spec failed than the update tolerates.
    Failures = 1,
    /// No instance was done for progress_deadline_s.
    Deadline = 2,
    /// `roll abort`.
    Asked = 3,
    /// The spec to roll back to is not kept (placed before formic kept specs).
    NoEarlierSpec = 4,
    /// Rolling back, more instances of the old spec failed than the update tolerates.
    RollbackFailures = 5,
    /// Rolling back, no instance was done for progress_deadline_s.
    RollbackDeadline = 6,
}

impl Why {
    pub fn words(self) -> &'static str {
        match self {
            Why::None => "",
            Why::Failures => "too many instances of the new spec failed",
            Why::Deadline => "no instance was done within progress_deadline_s",
            Why::Asked => "aborted by roll abort",
            Why::NoEarlierSpec => {
                "the earlier spec is not kept, so there is nothing to roll back to"
            }
            Why::RollbackFailures => "rolling back, too many instances of the old spec failed",
            Why::RollbackDeadline => {
                "rolling back, no instance was done within progress_deadline_s"
            }
        }
    }

    fn from_u8(v: u8) -> Result<Why, Corrupt> {
        Ok(match v {
            0 => Why::None,
            1 => Why::Failures,
            2 => Why::Deadline,
            3 => Why::Asked,
            4 => Why::NoEarlierSpec,
            5 => Why::RollbackFailures,
            6 => Why::RollbackDeadline,
            _ => return Err(Corrupt(format!("update reason {v} is unknown"))),
        })
    }
}

/// One update of a job: from one spec (by hash) to another, over a range of instances.
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    pub from: u64,
    pub to: u64,
    pub phase: Phase,
    /// The instances it covers, inclusive: all of them, or a canary range.
    pub first: u32,
    pub last: u32,
    pub started: f64,
    /// When the last instance was done (or the update started, or turned back): the
    /// progress deadline counts from here.
    pub progress: f64,
    /// Instances done when `progress` was stamped.
    pub done: u32,
    /// How many instances the job file asks for.
    pub desired: u32,
    pub why: Why,
}

/// What a job's record keeps of its updates.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Rollout {
    /// New specs wait (ROLL_FORWARD_PAUSED) until `roll resume`: set by `roll pause`.
    pub held: bool,
    /// The last spec rolled out to every instance (0: none known yet).
    pub stable: u64,
    pub update: Option<Update>,
}

impl Rollout {
    /// A rollout as large as its record gets: an update under way.
    pub fn largest() -> Rollout {
        Rollout {
            update: Some(Update {
                from: 0,
                to: 0,
                phase: Phase::RollingForward,
                first: 0,
                last: 0,
                started: 0.0,
                progress: 0.0,
                done: 0,
                desired: 0,
                why: Why::None,
            }),
            ..Default::default()
        }
    }

    pub fn encode(&self, e: &mut Encoder) {
        e.u8(self.held as u8);
        e.u64(self.stable);
        match &self.update {
            None => e.u8(0),
            Some(u) => {
                e.u8(u.phase as u8);
                e.u64(u.from);
                e.u64(u.to);
                e.u32(u.first);
                e.u32(u.last);
                e.f64(u.started);
                e.f64(u.progress);
                e.u32(u.done);
                e.u32(u.desired);
                e.u8(u.why as u8);
            }
        }
    }

    pub fn decode(d: &mut Decoder) -> Result<Rollout, Corrupt> {
        let held = d.u8()? != 0;
        let stable = d.u64()?;
        let phase = d.u8()?;
        let update = match phase {
            0 => None,
            p => Some(Update {
                phase: PHASES
                    .get(p as usize - 1)
                    .copied()
                    .ok_or_else(|| Corrupt(format!("update phase {p} is unknown")))?,
                from: d.u64()?,
                to: d.u64()?,
                first: d.u32()?,
                last: d.u32()?,
                started: d.f64()?,
                progress: d.f64()?,
                done: d.u32()?,
                desired: d.u32()?,
                why: Why::from_u8(d.u8()?)?,
            }),
        };
        Ok(Rollout {
            held,
            stable,
            update,
        })
    }

    /// As records carry it (pack's `update` record, `roll status`).
    pub fn to_json(&self) -> Value {
        let update = self.update.as_ref().map(|u| {
            json!({
                "from": hash_text(u.from), "to": hash_text(u.to), "state": u.phase.name(),
                "instances": [u.first, u.last], "started": u.started,
                "progress": u.progress, "done": u.done, "desired": u.desired,
                "why": u.why as u8,
            })
        });
        json!({"held": self.held, "stable": hash_text(self.stable), "update": update})
    }

    pub fn from_json(v: &Value) -> Result<Rollout, String> {
        let bad = |what: &str| format!("field \"{what}\" is missing or not valid");
        let hash = |v: &Value, what: &str| {
            v.as_str()
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .ok_or_else(|| bad(what))
        };
        let held = v["held"].as_bool().ok_or_else(|| bad("held"))?;
        let stable = hash(&v["stable"], "stable")?;
        let update = match &v["update"] {
            Value::Null => None,
            u => {
                let num = |what: &str| u[what].as_f64().ok_or_else(|| bad(what));
                let count = |what: &str| {
                    u[what]
                        .as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| bad(what))
                };
                let range = |i: usize| {
                    u["instances"][i]
                        .as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| bad("instances"))
                };
                Some(Update {
                    from: hash(&u["from"], "from")?,
                    to: hash(&u["to"], "to")?,
                    phase: u["state"]
                        .as_str()
                        .and_then(Phase::from_name)
                        .ok_or_else(|| bad("state"))?,
                    first: range(0)?,
                    last: range(1)?,
                    started: num("started")?,
                    progress: num("progress")?,
                    done: count("done")?,
                    desired: count("desired")?,
                    why: Why::from_u8(count("why")?.min(255) as u8).map_err(|_| bad("why"))?,
                })
            }
        };
        Ok(Rollout {
            held,
            stable,
            update,
        })
    }
}

/// A spec hash as records carry it: 16 lowercase hex digits.
pub fn hash_text(h: u64) -> String {
    format!("{h:016x}")
}

/// What `plan` needs of one of the job's tasks.
#[derive(Clone, Copy, Debug)]
pub struct Seen {
    pub instance: u32,
    pub state: TaskState,
    pub spec: u64,
    pub healthy: bool,
    /// Since when it is in its state, and since when healthy.
    pub since: f64,
    pub healthy_since: f64,
    pub failures: u16,
    /// An update stopped it (to replace it).
    pub replaced: bool,
}

impl Seen {
    pub fn of(t: &crate::task::Task) -> Seen {
        Seen {
            instance: t.instance,
            state: t.state,
            spec: t.spec,
            healthy: t.healthy,
            since: t.since,
            healthy_since: t.healthy_since,
            failures: t.failures,
            replaced: t.reason == crate::task::Reason::Replaced,
        }
    }

    /// Holding its place on a host (assigned, starting, running, being stopped).
    fn live(&self) -> bool {
        self.state.holds_resources()
    }
}

/// What one instance becomes in this pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Target {
    /// The spec it is placed with, when it is placed (missing, or replaced now).
    pub spec: u64,
    /// Its live incarnation runs another spec and is replaced now: killed, then placed
    /// with `spec`, on the same host when it fits there.
    pub replace: bool,
}

/// A pass's plan for one job.
#[derive(Debug, PartialEq)]
pub struct Plan {
    /// The record as this pass leaves it (the same as before when nothing moved).
    pub rollout: Rollout,
    /// Per instance of the desired spec, 0..instances.
    pub targets: Vec<Target>,
}

/// The job as the pass sees it: its desired spec (from its file) and instance count, its
/// update policy, whether it has a health check, and its record.
pub struct Job<'a> {
    pub desired: u64,
    pub instances: u32,
    pub policy: &'a UpdatePolicy,
    pub health_checked: bool,
    pub rollout: &'a Rollout,
    /// How many of its healthy instances the job's availability budget lets this pass take
    /// down (`crate::sla`): a batch is no larger.
    pub room: u32,
    /// Whether the spec of `hash` is kept (the store has its text): only a kept spec can be
    /// placed again.
    pub kept: &'a dyn Fn(u64) -> bool,
}

/// Decides, for one job, what its update does in this pass. `tasks` are the job's tasks in
/// the state, one per instance at most.
pub fn plan(job: &Job, tasks: &[Seen], now: f64) -> Plan {
    let mut at: Vec<Option<&Seen>> = vec![None; job.instances as usize];
    for t in tasks.iter().filter(|t| t.instance < job.instances) {
        at[t.instance as usize] = Some(t);
    }
    let by_instance = |i: u32| at.get(i as usize).copied().flatten();
    let mut rollout = job.rollout.clone();
    // A task of an unknown spec (0: a record older than spec hashes) is left alone.
    let differs = tasks
        .iter()
        .any(|t| t.live() && t.instance < job.instances && t.spec != job.desired && t.spec != 0);
    let current = rollout.update.as_ref().filter(|u| u.to == job.desired);
    if current.is_none() {
        if differs {
            rollout.update = Some(start(job, tasks, now));
        } else {
            // Nothing to roll: every live instance runs the job file's spec. Once every
            // instance runs it healthy, it is the spec to come back to, and an update to
            // another spec that ended (one failed, say, and the file moved on) is history.
            // A job with no record of updates is left without one: its first update starts
            // from what most instances run.
            if rollout.update.as_ref().is_some_and(|u| !u.phase.is_over()) {
                rollout.update = None;
            }
            let settled = (0..job.instances).all(|i| {
                by_instance(i).is_some_and(|t| {
                    t.spec == job.desired
                        && t.state == TaskState::Running
                        && (t.healthy || !job.health_checked)
                })
            });
            let has_history = rollout.stable != 0 || rollout.update.is_some();
            if settled && has_history && rollout.stable != job.desired {
                rollout.stable = job.desired;
                rollout.update = None;
            }
            let targets = (0..job.instances)
                .map(|_| Target {
                    spec: job.desired,
                    replace: false,
                })
                .collect();
            return Plan { rollout, targets };
        }
    }
    let update = rollout.update.as_mut().expect("an update");
    update.desired = job.instances;
    let targets = advance(job, update, &by_instance, now);
    // Rolled out (or back) everywhere: that spec is the one to come back to next time.
    let everywhere = update.first == 0 && update.last >= job.instances.saturating_sub(1);
    match update.phase {
        Phase::RolledForward if everywhere => rollout.stable = update.to,
        Phase::RolledBack if everywhere => rollout.stable = update.from,
        _ => {}
    }
    Plan { rollout, targets }
}

/// A new update to the job file's spec, from the last spec rolled out everywhere (or, when
/// none is known, the one most live instances run).
fn start(job: &Job, tasks: &[Seen], now: f64) -> Update {
    let from = match job.rollout.stable {
        s if s != 0 && s != job.desired => s,
        _ => {
            let mut counts: Vec<(u64, usize)> = Vec::new();
            for t in tasks.iter().filter(|t| t.live() && t.spec != job.desired) {
                match counts.iter_mut().find(|(s, _)| *s == t.spec) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((t.spec, 1)),
                }
            }
            counts.iter().max_by_key(|(_, n)| *n).map_or(0, |(s, _)| *s)
        }
    };
    Update {
        from,
        to: job.desired,
        // Held, or paused when the job file changed again: a person stopped it.
        phase: if job.rollout.held
            || job
                .rollout
                .update
                .as_ref()
                .is_some_and(|u| u.phase.is_paused())
        {
            Phase::RollForwardPaused
        } else {
            Phase::RollingForward
        },
        first: 0,
        last: job.instances.saturating_sub(1),
        started: now,
        progress: now,
        done: 0,
        desired: job.instances,
        why: Why::None,
    }
}

/// One pass of an update: counts what is done and what failed, turns it back, fails or ends
/// it, and picks the next batch. Returns each instance's target.
fn advance<'a>(
    job: &Job,
    u: &mut Update,
    task: &dyn Fn(u32) -> Option<&'a Seen>,
    now: f64,
) -> Vec<Target> {
    let policy = job.policy;
    let in_range = |i: u32| (u.first..=u.last).contains(&i);
    let count = |goal: u64| {
        let (mut done, mut failed, mut total) = (0u32, 0u32, 0u32);
        for i in (0..job.instances).filter(|&i| in_range(i)) {
            total += 1;
            let Some(t) = task(i).filter(|t| t.spec == goal) else {
                continue;
            };
            if is_done(t, job, now) {
                done += 1;
            } else if t.failures > policy.max_per_instance_failures {
                failed += 1;
            }
        }
        (done, failed, total)
    };
    if u.phase.is_moving() {
        let goal = if u.phase.is_backward() { u.from } else { u.to };
        let (done, failed, total) = count(goal);
        if done > u.done {
            (u.done, u.progress) = (done, now);
        }
        let why = if failed > policy.max_total_failures {
            Why::Failures
        } else if done < total && now - u.progress > policy.progress_deadline_s {
            Why::Deadline
        } else {
            Why::None
        };
        if why != Why::None {
            turn_back(u, job, why, now);
        } else if done == total {
            u.phase = match u.phase {
                Phase::RollingBack => Phase::RolledBack,
                _ => Phase::RolledForward,
            };
        }
    }
    targets(job, u, task, now)
}

/// A failed update goes back to `from` when the policy allows and the spec is kept; a
/// failed rollback, or one not allowed, is over: FAILED, for a person to look at.
fn turn_back(u: &mut Update, job: &Job, why: Why, now: f64) {
    let can_roll_back = job.policy.rollback && u.phase == Phase::RollingForward;
    if can_roll_back && u.from != 0 && (job.kept)(u.from) {
        u.phase = Phase::RollingBack;
        (u.progress, u.done, u.why) = (now, 0, why);
    } else {
        u.why = match (u.phase, why) {
            _ if can_roll_back => Why::NoEarlierSpec,
            (Phase::RollingBack, Why::Failures) => Why::RollbackFailures,
            (Phase::RollingBack, Why::Deadline) => Why::RollbackDeadline,
            _ => why,
        };
        u.phase = Phase::Failed;
    }
}

/// Whether an instance on the goal spec counts as done: running for watch_s, and healthy
/// all that time when the job has a health check.
fn is_done(t: &Seen, job: &Job, now: f64) -> bool {
    let watched_from = match job.health_checked {
        true if !t.healthy => return false,
        true => t.healthy_since,
        false => t.since,
    };
    t.state == TaskState::Running && now - watched_from >= job.policy.watch_s
}

/// Each instance's target for this pass. Moving: instances on the goal stay; missing or
/// broken ones out of the goal are replaced at once (they cost no availability); and when
/// nothing of the current batch is still in flight, the next batch of healthy ones (lowest
/// instances first going forward, highest first going back). Otherwise each instance keeps
/// the spec it has (an instance outside a canary range, or of a paused, aborted or failed
/// update, starts again as it was).
fn targets<'a>(
    job: &Job,
    u: &Update,
    task: &dyn Fn(u32) -> Option<&'a Seen>,
    now: f64,
) -> Vec<Target> {
    let goal = goal_of(u);
    let other = if goal == u.to { u.from } else { u.to };
    let in_range = |i: u32| (u.first..=u.last).contains(&i);
    // A spec that is not kept cannot be placed: the job file's is used instead.
    let placeable = |s: u64| {
        if s != 0 && (s == job.desired || (job.kept)(s)) {
            s
        } else {
            job.desired
        }
    };
    // An instance that never ran (scaled up) has no spec of its own: the update's new
    // one, unless the update is going or has gone back.
    let fresh = match u.phase {
        Phase::RollingBack | Phase::RollBackPaused | Phase::RolledBack | Phase::Failed => u.from,
        _ => u.to,
    };
    let keep = |i: u32| {
        let own = task(i).map_or(0, |t| t.spec);
        let spec = match u.phase {
            Phase::RolledForward | Phase::RolledBack if in_range(i) => goal,
            _ if own == u.from || own == u.to => own,
            _ if own == 0 => fresh,
            _ => other,
        };
        Target {
            spec: placeable(spec),
            replace: false,
        }
    };
    let mut out: Vec<Target> = (0..job.instances).map(keep).collect();
    if !u.phase.is_moving() {
        return out;
    }
    let mut in_flight = 0;
    let mut healthy_old = Vec::new();
    for i in (0..job.instances).filter(|&i| in_range(i)) {
        let standing = standing(job, goal, task(i), now);
        in_flight += standing.in_flight() as u32;
        match standing {
            Standing::OnGoal(_) => out[i as usize].spec = goal,
            Standing::Serving => healthy_old.push(i),
            Standing::Down { live, .. } => {
                out[i as usize] = Target {
                    spec: placeable(goal),
                    replace: live,
                }
            }
            Standing::Missing => out[i as usize].spec = placeable(goal),
        }
    }
    if in_flight == 0 {
        if u.phase.is_backward() {
            healthy_old.reverse();
        }
        let batch = job.policy.batch_size.min(job.room);
        for &i in healthy_old.iter().take(batch as usize) {
            out[i as usize] = Target {
                spec: placeable(goal),
                replace: true,
            };
        }
    }
    out
}

/// The spec an update moves its instances to: the new one, or the old one going back.
fn goal_of(u: &Update) -> u64 {
    match u.phase {
        Phase::RollingBack | Phase::RollBackPaused | Phase::RolledBack => u.from,
        _ => u.to,
    }
}

/// Where one instance of a moving update stands.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Standing {
    /// On the goal spec.
    OnGoal(Progress),
    /// On another spec, serving: replaced in its batch.
    Serving,
    /// On another spec and down (ended, or live but failing its checks): replaced at once,
    /// outside the batches. `replaced`: this update stopped it, and its replacement has
    /// not yet been placed.
    Down { live: bool, replaced: bool },
    /// No task (a new instance of a scaled-up job).
    Missing,
}

/// How far an instance on the goal spec is.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Progress {
    Done,
    /// Failed more than the policy lets one instance: not waited for, the failure count
    /// decides.
    Failed,
    Starting,
    NotHealthy,
    /// Healthy for this many seconds, not yet watch_s.
    Watched(f64),
}

impl Standing {
    /// Whether the update waits for it before it starts a batch. One this update stopped
    /// is in flight until its replacement runs: a replacement that cannot be placed holds
    /// the next batch back.
    fn in_flight(self) -> bool {
        match self {
            Standing::OnGoal(p) => !matches!(p, Progress::Done | Progress::Failed),
            Standing::Down { live, replaced } => replaced && !live,
            Standing::Serving | Standing::Missing => false,
        }
    }
}

fn standing(job: &Job, goal: u64, t: Option<&Seen>, now: f64) -> Standing {
    let Some(t) = t else {
        return Standing::Missing;
    };
    let serving = t.live() && (t.healthy || !job.health_checked);
    if t.spec != goal {
        return match serving {
            true => Standing::Serving,
            false => Standing::Down {
                live: t.live(),
                replaced: t.replaced,
            },
        };
    }
    Standing::OnGoal(match () {
        _ if is_done(t, job, now) => Progress::Done,
        _ if t.failures > job.policy.max_per_instance_failures => Progress::Failed,
        _ if t.state != TaskState::Running => Progress::Starting,
        _ if !serving => Progress::NotHealthy,
        _ if job.health_checked => Progress::Watched(now - t.healthy_since),
        _ => Progress::Watched(now - t.since),
    })
}

/// What a moving update waits for, in words, as the next pass would see it: the
/// instances in flight and how far each is, or the budget, or nothing (the next pass
/// starts a batch or ends the update).
pub fn waiting(job: &Job, u: &Update, task: &dyn Fn(u32) -> Option<Seen>, now: f64) -> String {
    let goal = goal_of(u);
    let mut waits: Vec<(String, Vec<u32>)> = Vec::new();
    let mut serving = 0;
    for i in (u.first..=u.last.min(job.instances.saturating_sub(1))).take(job.instances as usize) {
        let standing = standing(job, goal, task(i).as_ref(), now);
        serving += (standing == Standing::Serving) as u32;
        let what = match standing {
            Standing::OnGoal(Progress::Starting) => "starting".to_string(),
            Standing::OnGoal(Progress::NotHealthy) => "not healthy yet".to_string(),
            Standing::OnGoal(Progress::Watched(s)) => {
                format!(
                    "healthy for {:.0} of {:.0} s",
                    s.max(0.0),
                    job.policy.watch_s
                )
            }
            Standing::Down { live: false, .. } | Standing::Missing => "to be placed".to_string(),
            _ => continue,
        };
        match waits.iter_mut().find(|(w, _)| *w == what) {
            Some((_, list)) => list.push(i),
            None => waits.push((what, vec![i])),
        }
    }
    if !waits.is_empty() {
        let parts: Vec<String> = waits
            .iter()
            .map(|(what, list)| format!("{} {what}", instances_text(list)))
            .collect();
        return format!("waiting for {}", parts.join("; "));
    }
    match serving {
        0 => "every instance is on its spec: the next pass ends it".into(),
        _ if job.room == 0 => "waiting for room in the job's availability budget".into(),
        _ => "the next pass starts a batch".into(),
    }
}

/// "instance 3" or "instances 0, 1, 5".
fn instances_text(list: &[u32]) -> String {
    let numbers: Vec<String> = list.iter().map(u32::to_string).collect();
    match list.len() {
        1 => format!("instance {}", numbers[0]),
        _ => format!("instances {}", numbers.join(", ")),
    }
}

#[cfg(test)]
mod tests;
