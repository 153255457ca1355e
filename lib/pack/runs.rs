//! Runs of batch and cron jobs, before anything is placed: each job's runs are planned
//! (`cron::plan`) on its tasks in the state, a `cron` record proposes what changed to
//! launch, and the pass places the instances of the run it leaves current.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::decide::batch_done;
use super::Input;
use crate::cron::{self, Runs};

/// Which instances of a job the pass considers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// A service: every instance, whatever run its tasks name.
    Always,
    /// A batch or cron job: the instances of this run; an incarnation of another is over.
    Run(u64),
    /// A cron job that has not run yet: none.
    Nothing,
}

/// What the runs ask of this pass: per job of the files, which instances it places, and
/// the `cron` records of the jobs whose runs changed.
pub struct Planned {
    pub wanted: Vec<Wanted>,
    pub records: Vec<Value>,
}

pub fn plan(input: &Input) -> Planned {
    let none = Runs::default();
    // Per batch or cron job: how many instances of its current run are over.
    let mut over: HashMap<&str, u32> = HashMap::new();
    let by_key: HashMap<&str, usize> = input
        .jobs
        .iter()
        .enumerate()
        .filter(|(_, spec)| !spec.service)
        .map(|(j, spec)| (spec.key.as_str(), j))
        .collect();
    for r in &input.running {
        let Some(&j) = by_key.get(r.job_key.as_str()) else {
            continue;
        };
        let spec = &input.jobs[j];
        let current = input.runs.get(&spec.key).unwrap_or(&none).current;
        if r.run == current && r.instance < spec.instances && batch_done(spec, r) {
            *over.entry(spec.key.as_str()).or_default() += 1;
        }
    }
    let mut out = Planned {
        wanted: Vec::with_capacity(input.jobs.len()),
        records: Vec::new(),
    };
    for spec in &input.jobs {
        if spec.service {
            out.wanted.push(Wanted::Always);
            continue;
        }
        let was = input.runs.get(&spec.key).unwrap_or(&none);
        // A batch job's first run starts with it; a cron job has none until one is due.
        let started = spec.cron.is_none() || was.runs > 0;
        let going = started && over.get(spec.key.as_str()).copied().unwrap_or(0) < spec.instances;
        let plan = cron::plan(spec.cron.as_ref(), was, going, input.now);
        out.wanted.push(match plan.wanted {
            Some(run) => Wanted::Run(run),
            None => Wanted::Nothing,
        });
        if let Some(step) = plan.step {
            out.records.push(json!({
                "type": "cron", "job": spec.key, "step": step.name(),
                "was": was, "runs": plan.runs,
            }));
        }
    }
    out
}
