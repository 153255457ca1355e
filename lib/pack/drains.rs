//! Drains, before anything is placed: which instances on draining hosts this pass stops.
//! Each job's availability budget (`sla`, see `crate::sla`) counts every instance down
//! anywhere (failures, starts, other drains, an update's batch); an instance that does
//! not serve is stopped at once (it costs nothing), a serving one only while the budget
//! has room, and past its drain's deadline whatever the budget says. What the drains
//! leave of each budget is what the job's update may take down (`updates::plan`). A
//! stopped instance is placed again elsewhere in the same pass (its host is not offered);
//! when it fits nowhere the stop is taken back (`Run::keep_unplaced_drains`), so a drain
//! never turns a running instance into a pending one.
//!
//! The budget holds per pass, on the snapshot the pass decided on: two passes at once
//! could each spend it (scripts/reconcile runs one pass at a time, under a lock).

use std::collections::HashMap;

use serde_json::{json, Value};

use super::{Input, Running};
use crate::job::Sla;
use crate::sla;
use crate::task::TaskState;

/// Why a pass stops an instance on a draining host (the kill record's reason).
pub const DRAIN: &str = "drain";
pub const DEADLINE: &str = "drain deadline";

/// What the drains ask of this pass.
#[derive(Default)]
pub struct Drains {
    /// Per running task (index into `input.running`): why this pass stops it.
    pub stop: HashMap<usize, &'static str>,
    /// Per job of the files: how many more of its available instances may go down in this
    /// pass once the drains took theirs.
    pub room: Vec<u32>,
    /// Instances on draining hosts this pass leaves running, with why.
    pub waiting: Vec<(usize, String)>,
}

impl Drains {
    /// One `drain` record per instance on a draining host that this pass decided about:
    /// stopped (`stop` true, its replacement is the place record of the same task) or left
    /// running, and why.
    pub fn records(&self, running: &[Running]) -> Vec<Value> {
        let mut out: Vec<(usize, Value)> = Vec::new();
        for (&ri, &why) in &self.stop {
            out.push((ri, record(&running[ri], true, why)));
        }
        for (ri, why) in &self.waiting {
            out.push((*ri, record(&running[*ri], false, why)));
        }
        out.sort_by_key(|(ri, _)| *ri);
        out.into_iter().map(|(_, v)| v).collect()
    }
}

fn record(r: &Running, stop: bool, why: &str) -> Value {
    json!({"type": "drain", "task": r.task, "stop": stop, "why": why})
}

/// Decides the drains' stops of this pass, job by job.
pub fn plan(input: &Input) -> Drains {
    let mut out = Drains {
        room: vec![0; input.jobs.len()],
        ..Drains::default()
    };
    let job_of: HashMap<&str, usize> = input
        .jobs
        .iter()
        .enumerate()
        .map(|(j, spec)| (spec.key.as_str(), j))
        .collect();
    // `running` is sorted by job: each job's tasks are one run of it.
    let running = &input.running;
    let mut start = 0;
    while start < running.len() {
        let key = running[start].job_key.as_str();
        let end = start + running[start..].partition_point(|r| r.job_key == key);
        let job = job_of.get(key).copied();
        let room = plan_job(input, job, start..end, &mut out);
        if let Some(j) = job {
            out.room[j] = room;
        }
        start = end;
    }
    // A job with no task in the state has no room: it has nothing up to take down.
    out
}

/// Decides the stops of one job's tasks (`tasks`, indices into `input.running`); returns
/// the room left in its budget. A job with no file (not pruned in this pass) keeps as
/// many instances as it has live, under the default budget.
fn plan_job(
    input: &Input,
    job: Option<usize>,
    tasks: std::ops::Range<usize>,
    out: &mut Drains,
) -> u32 {
    let now = input.now;
    let running = &input.running;
    let live = |ri: &usize| running[*ri].state.holds_resources();
    let (sla, desired) = match job {
        Some(j) => (input.jobs[j].sla, input.jobs[j].instances),
        None => (Sla::default(), tasks.clone().filter(live).count() as u32),
    };
    let up = |r: &Running| {
        r.instance < desired && sla::is_available(r.state, r.healthy, r.healthy_since, &sla, now)
    };
    let serving = |r: &Running| sla::is_serving(r.state, r.healthy);
    let available = tasks.clone().filter(|&ri| up(&running[ri])).count() as u32;
    // When the next of its serving instances counts as up, giving the budget room.
    let next_up = tasks
        .clone()
        .map(|ri| &running[ri])
        .filter(|r| r.instance < desired && serving(r) && !up(r))
        .map(|r| r.healthy_since + sla.healthy_for_s - now)
        .min_by(f64::total_cmp);
    let mut room = sla::room(&sla, desired, available);
    let mut taken = 0;
    // Instances on draining hosts not yet being stopped: those not serving first (free),
    // then by deadline (the soonest first), then by instance.
    let mut candidates: Vec<usize> = tasks
        .filter(|&ri| {
            let r = &running[ri];
            r.drain.is_some()
                && r.instance < desired
                && matches!(
                    r.state,
                    TaskState::Assigned | TaskState::Starting | TaskState::Running
                )
        })
        .collect();
    let deadline = |r: &Running| match r.drain {
        Some(d) if d > 0.0 => d,
        _ => f64::INFINITY,
    };
    candidates.sort_by(|&a, &b| {
        let (a, b) = (&running[a], &running[b]);
        serving(a)
            .cmp(&serving(b))
            .then(deadline(a).total_cmp(&deadline(b)))
            .then(a.instance.cmp(&b.instance))
    });
    for ri in candidates {
        let r = &running[ri];
        if !serving(r) {
            out.stop.insert(ri, DRAIN);
        } else if room > 0 {
            (room, taken) = (room - 1, taken + 1);
            out.stop.insert(ri, DRAIN);
        } else if now >= deadline(r) {
            out.stop.insert(ri, DEADLINE);
        } else {
            let down = desired.saturating_sub(available) + taken;
            let max = sla::max_down(&sla, desired);
            out.waiting.push((
                ri,
                format!(
                    "budget: {down} of {desired} instances down, at most {max} may be{}",
                    next_up.map_or(String::new(), |s| format!("; one more up in {s:.0} s"))
                ),
            ));
        }
    }
    room
}
