//! Records the cluster no longer needs, once a pass has read every job file (`--prune`):
//! the ended tasks of removed jobs, and of instances past their job's count, are kept for
//! `KEEP_S` and at most `KEEP_PER_JOB` of them per job, the newest, as Aurora keeps its
//! terminated tasks (2 days, 100 per job); then the record of a removed job goes once no
//! task of it is left. Each goes to launch as a `forget` record, which it commits only if
//! the task is still the ended incarnation the pass saw (or the job still has no task).
//! What they were stays in the history.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::{Input, Running};

/// How long, and how many per job, ended tasks no job wants are kept.
pub const KEEP_S: f64 = 2.0 * 86_400.0;
pub const KEEP_PER_JOB: usize = 100;

/// The `forget` records of this pass.
pub fn forget(input: &Input) -> Vec<Value> {
    let wanted: HashMap<&str, u32> = input
        .jobs
        .iter()
        .map(|j| (j.key.as_str(), j.instances))
        .collect();
    // Per job: its ended tasks no job wants, and how many of its tasks stay.
    let mut unwanted: HashMap<&str, Vec<&Running>> = HashMap::new();
    let mut staying: HashMap<&str, usize> = HashMap::new();
    for r in &input.running {
        let key = r.job_key.as_str();
        let wants = wanted.get(key).is_some_and(|&n| r.instance < n);
        if wants || r.state.holds_resources() {
            *staying.entry(key).or_default() += 1;
        } else {
            unwanted.entry(key).or_default().push(r);
        }
    }
    let mut out = Vec::new();
    for (key, mut ended) in unwanted {
        ended.sort_by(|a, b| b.since.total_cmp(&a.since));
        for (i, r) in ended.into_iter().enumerate() {
            if i < KEEP_PER_JOB && input.now - r.since <= KEEP_S {
                *staying.entry(key).or_default() += 1;
                continue;
            }
            out.push(json!({"type":"forget","task":r.task,"incarnation":r.incarnation}));
        }
    }
    // Sorted, so that a pass's records do not depend on a map's order.
    out.sort_by(|a, b| a["task"].as_str().cmp(&b["task"].as_str()));
    let mut jobs: Vec<&String> = input
        .rollouts
        .keys()
        .filter(|key| !wanted.contains_key(key.as_str()))
        .filter(|key| staying.get(key.as_str()).copied().unwrap_or(0) == 0)
        .collect();
    jobs.sort();
    out.extend(
        jobs.into_iter()
            .map(|key| json!({"type":"forget","job":key})),
    );
    out
}
