//! Updates, before anything is placed: each job's rollout is planned (`rollout::plan`) on
//! the tasks of the state, and what the plan asks of the placement is set up for it. An
//! instance to be placed with a spec other than its job file's (going back, outside a
//! canary range) is placed by a version of the job read from the kept specs, appended to
//! the jobs; an instance replaced now is killed, and placed again on the same host when
//! the new spec fits there (Aurora's update affinity).

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};

use super::drains::Drains;
use super::{Input, Running};
use crate::job::JobSpec;
use crate::rollout::{self, Rollout, Seen};
use crate::specstore;
use crate::task::TaskState;

/// What the updates ask of this pass's placement.
#[derive(Default)]
pub struct Updates {
    /// Per job of the files: the appended version of it that places some instances.
    pub version_of: Vec<Option<usize>>,
    /// (job, instance) placed by that version rather than the job.
    pub by_version: HashSet<(usize, u32)>,
    /// (job, instance) whose live incarnation is killed and replaced in this pass.
    pub replace: HashSet<(usize, u32)>,
    /// `update` records: each job's rollout as it was read and as the pass leaves it.
    pub records: Vec<Value>,
    /// Jobs whose update moves to their file's spec: its `spec` record goes out with the
    /// update, so launch keeps it (and `roll status` can read its policy) before any
    /// instance of it is placed.
    pub moving_to_file: Vec<usize>,
}

/// Plans every job's update within what the drains left of its budget; appends the
/// versions the plans place to `input.jobs`.
pub fn plan(input: &mut Input, drains: &Drains) -> Updates {
    let files = input.jobs.len();
    let mut out = Updates {
        version_of: vec![None; files],
        ..Updates::default()
    };
    let Some(state) = input.state_path.clone() else {
        return out;
    };
    // Asked per instance of a job whose update names another spec: one look per spec.
    let looked = std::cell::RefCell::new(HashMap::new());
    let kept = |hash: u64| {
        *looked
            .borrow_mut()
            .entry(hash)
            .or_insert_with(|| specstore::is_kept(&state, hash))
    };
    let mut tasks = tasks_by_job(&input.running, drains);
    let empty = Rollout::default();
    for j in 0..files {
        let spec = &input.jobs[j];
        // A cron job's change is for its next run (Aurora: only future runs are
        // affected), not rolled out over the one going.
        if spec.cron.is_some() {
            continue;
        }
        let was = input.rollouts.get(&spec.key).unwrap_or(&empty);
        let mut seen = tasks.remove(spec.key.as_str()).unwrap_or_default();
        same_task_as_desired(&state, spec, &mut seen);
        let job = rollout::Job {
            desired: spec.hash,
            instances: spec.instances,
            policy: &spec.update,
            health_checked: spec.health.is_some(),
            rollout: was,
            room: drains.room[j],
            kept: &kept,
        };
        let plan = rollout::plan(&job, &seen, input.now);
        if plan.rollout != *was {
            out.records.push(json!({
                "type": "update", "job": spec.key,
                "was": was.to_json(), "rollout": plan.rollout.to_json(),
            }));
        }
        if let Some(u) = plan.rollout.update.as_ref() {
            if u.to == spec.hash && !u.phase.is_over() {
                out.moving_to_file.push(j);
            }
        }
        let (key, instances) = (spec.key.clone(), spec.instances);
        for (i, t) in (0..instances).zip(&plan.targets) {
            if t.replace {
                out.replace.insert((j, i));
            }
            if t.spec == input.jobs[j].hash {
                continue;
            }
            let version = match out.version_of[j] {
                Some(v) => v,
                None => match specstore::read(&state, t.spec) {
                    // Kept as its own key's spec: a version of this job.
                    Some(mut old) if old.key == key => {
                        old.instances = instances;
                        input.jobs.push(old);
                        out.version_of[j] = Some(input.jobs.len() - 1);
                        input.jobs.len() - 1
                    }
                    _ => continue,
                },
            };
            if input.jobs[version].hash == t.spec {
                out.by_version.insert((j, i));
            }
        }
    }
    out
}

/// A spec that differs from the desired one only in what does not reach an instance (how
/// many there are, how an update goes) runs the same task: its instances count as the
/// desired spec's, so scaling a job or changing its update block restarts nothing.
fn same_task_as_desired(state: &std::path::Path, desired: &JobSpec, seen: &mut [Seen]) {
    let task_of = |spec: &JobSpec| -> Option<Value> {
        let mut v: Value = serde_json::from_str(&spec.json).ok()?;
        let o = v.as_object_mut()?;
        o.remove("instances");
        o.remove("update");
        Some(v)
    };
    let mut verdicts: HashMap<u64, bool> = HashMap::new();
    let mut desired_task = None;
    for t in seen
        .iter_mut()
        .filter(|t| t.spec != desired.hash && t.spec != 0)
    {
        let same = *verdicts.entry(t.spec).or_insert_with(|| {
            let wanted = desired_task.get_or_insert_with(|| task_of(desired));
            let kept = specstore::read(state, t.spec);
            wanted.is_some() && kept.and_then(|k| task_of(&k)) == *wanted
        });
        if same {
            t.spec = desired.hash;
        }
    }
}

/// The state's tasks of each job, as the planner sees them. One a drain stops in this pass
/// is as good as ended: its replacement is placed with the spec the update wants.
fn tasks_by_job<'a>(running: &'a [Running], drains: &Drains) -> HashMap<&'a str, Vec<Seen>> {
    let mut by_job: HashMap<&str, Vec<Seen>> = HashMap::new();
    for (ri, r) in running.iter().enumerate() {
        let drained = !drains.stop.is_empty() && drains.stop.contains_key(&ri);
        by_job.entry(r.job_key.as_str()).or_default().push(Seen {
            instance: r.instance,
            state: if drained { TaskState::Killed } else { r.state },
            spec: r.spec,
            healthy: r.healthy,
            since: r.since,
            healthy_since: r.healthy_since,
            failures: r.failures,
            replaced: r.replaced,
        });
    }
    by_job
}
