//! `roll`: see and steer jobs' rolling updates. An update starts by itself when a job file
//! changes (the reconciliation pass plans it, `rollout`); this tool shows where each one is
//! and pauses, resumes, narrows to a canary range or aborts it, in the job's record in the
//! state.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::Result;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use crate::cli::{OutputArgs, StateArgs};
use crate::exit::{bad_input, Status, TABLE};
use crate::rollout::{hash_text, Phase, Rollout, Seen, Update, Why};
use crate::state::State;
use crate::task::{Job, Task};

/// See and steer rolling updates
///
/// A job's update starts when its job file changes: the reconciliation pass replaces its
/// instances batch by batch (the job's `update` block), each new instance counted once it
/// has run healthy for watch_s, and rolls back to the last spec rolled out everywhere when
/// the new one fails. `roll` shows each update and steers it; a change takes effect at the
/// next pass. To try a new spec on a few instances first: `roll pause JOB`, change the job
/// file, let a pass record the update (paused), then `roll start JOB --instances 0-1`; when
/// they are good, `roll start JOB` for all.
#[derive(Parser, Debug)]
#[command(name = "roll", version, after_help = TABLE)]
pub struct Cli {
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(subcommand)]
    pub verb: Option<Verb>,
}

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Where each job's update is (every job with one, or the jobs named): its state, specs,
    /// progress, and what it waits for
    Status {
        #[arg(value_name = "JOB", add = crate::complete::jobs())]
        jobs: Vec<String>,
    },
    /// Pause a job's update; with none under way, hold the next one (it starts paused)
    Pause {
        #[arg(value_name = "JOB", add = crate::complete::jobs())]
        job: String,
    },
    /// Resume a paused or held update, or start it on a range of instances (a canary), or
    /// widen a canary to the whole job
    #[command(visible_alias = "start")]
    Resume {
        #[arg(value_name = "JOB", add = crate::complete::jobs())]
        job: String,
        /// The instances to update, FIRST-LAST or one number (default: all)
        #[arg(long, value_name = "FIRST-LAST", value_parser = parse_range)]
        instances: Option<(u32, u32)>,
    },
    /// Abort a job's update: instances stay on the spec they run (it is not tried again
    /// until the job file changes)
    Abort {
        #[arg(value_name = "JOB", add = crate::complete::jobs())]
        job: String,
    },
}

fn parse_range(s: &str) -> Result<(u32, u32), String> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let num = |x: &str| {
        x.trim()
            .parse::<u32>()
            .map_err(|_| format!("{s:?} is not FIRST-LAST"))
    };
    let (a, b) = (num(a)?, num(b)?);
    if a > b {
        return Err(format!("{s:?}: {a} is after {b}"));
    }
    Ok((a, b))
}

pub fn run(cli: Cli) -> Result<Status> {
    let path = cli.state.path();
    match cli.verb.unwrap_or(Verb::Status { jobs: Vec::new() }) {
        Verb::Status { jobs } => status(&State::open(&path)?, &path, &jobs, &cli.output),
        Verb::Pause { job } => steer(&path, &job, pause),
        Verb::Resume { job, instances } => steer(&path, &job, |r, now| resume(r, instances, now)),
        Verb::Abort { job } => steer(&path, &job, abort),
    }
}

/// Changes one job's rollout in one transaction and prints the event; a change that does
/// not apply is bad input (65), and nothing changes.
fn steer(
    path: &std::path::Path,
    key: &str,
    change: impl Fn(&mut Rollout, f64) -> Result<(), String>,
) -> Result<Status> {
    let mut state = State::open_writer(path)?;
    let event = state.write(|tx| {
        let view = tx.view();
        let slot = view
            .jobs
            .find(&key.to_string())
            .ok_or_else(|| bad_input(format!("no job {key} in the state")))?;
        let mut job: Job = view.jobs.get(slot).cloned().expect("a found slot");
        let now = tx.now();
        change(&mut job.rollout, now).map_err(|e| bad_input(format!("job {key}: {e}")))?;
        let mut event = crate::launch::update_event(key, &job.rollout, now);
        event["held"] = json!(job.rollout.held);
        tx.upsert(job);
        Ok(event)
    })?;
    let mut out = crate::records::Writer::stdout();
    out.record(&event)?;
    out.finish()?;
    Ok(Status::Done)
}

fn pause(r: &mut Rollout, _now: f64) -> Result<(), String> {
    match r.update.as_mut() {
        Some(u) if u.phase.is_moving() => {
            u.phase = match u.phase {
                Phase::RollingBack => Phase::RollBackPaused,
                _ => Phase::RollForwardPaused,
            }
        }
        Some(u) if u.phase.is_paused() => return Err("its update is paused already".into()),
        _ if r.held => return Err("its next update is held already".into()),
        _ => r.held = true,
    }
    Ok(())
}

fn resume(r: &mut Rollout, range: Option<(u32, u32)>, now: f64) -> Result<(), String> {
    let was_held = std::mem::replace(&mut r.held, false);
    let everywhere = r.update.as_ref().is_some_and(|u| u.to == r.stable);
    let Some(u) = r.update.as_mut() else {
        return match was_held {
            true => Ok(()),
            false => Err("it has no update to resume".into()),
        };
    };
    let widen = |u: &mut Update| {
        let (first, last) = range.unwrap_or((0, u32::MAX));
        (u.first, u.last) = (first, last);
    };
    match u.phase {
        Phase::RollForwardPaused | Phase::RollBackPaused => {
            u.phase = match u.phase {
                Phase::RollBackPaused => Phase::RollingBack,
                _ => Phase::RollingForward,
            };
            if range.is_some() {
                widen(u);
            }
        }
        // A canary that went out, widened (or moved to another range).
        Phase::RolledForward if range.is_some() || !everywhere => {
            u.phase = Phase::RollingForward;
            widen(u);
        }
        Phase::RollingForward | Phase::RollingBack if range.is_some() => widen(u),
        _ if was_held => return Ok(()),
        p => return Err(format!("its update is {}: nothing to resume", p.name())),
    }
    // Time paused does not count against the progress deadline.
    u.progress = now;
    Ok(())
}

fn abort(r: &mut Rollout, _now: f64) -> Result<(), String> {
    match r.update.as_mut() {
        Some(u) if !u.phase.is_over() => {
            (u.phase, u.why) = (Phase::Aborted, Why::Asked);
            Ok(())
        }
        Some(u) => Err(format!("its update is {} already", u.phase.name())),
        None => Err("it has no update".into()),
    }
}

/// One line per job with an update (or held), or per job named.
fn status(state: &State, path: &Path, keys: &[String], output: &OutputArgs) -> Result<Status> {
    let view = state.view();
    // Tasks by job slot, gathered once: a status of every job is one walk of the tasks.
    let mut by_job: HashMap<u32, Vec<&Task>> = HashMap::new();
    for (_, t) in view.tasks.iter() {
        by_job.entry(t.job).or_default().push(t);
    }
    let now = crate::clock::now();
    let mut rows = Vec::new();
    for (slot, job) in view.jobs.iter() {
        let named = keys.is_empty() || keys.contains(&job.key);
        let has = job.rollout.update.is_some() || job.rollout.held;
        if named && (has || !keys.is_empty()) {
            let tasks = by_job.get(&slot).map_or(&[][..], Vec::as_slice);
            rows.push(describe(path, job, tasks, now));
        }
    }
    if let Some(key) = keys.iter().find(|k| view.jobs.find(*k).is_none()) {
        return Err(bad_input(format!("no job {key} in the state")));
    }
    let headers = [
        "JOB",
        "UPDATE",
        "FROM",
        "TO",
        "INSTANCES",
        "DONE",
        "DESIRED",
        "PENDING",
        "SPECS",
        "WHY",
    ];
    output.print(&headers, &rows, row)?;
    Ok(Status::Done)
}

/// A job's update as a record: the rollout, how many of its live tasks run each spec and
/// which instances, and what the update waits for.
fn describe(path: &Path, job: &Job, tasks: &[&Task], now: f64) -> Value {
    let live: Vec<&Task> = tasks
        .iter()
        .copied()
        .filter(|t| t.state.holds_resources())
        .collect();
    let mut specs: BTreeMap<String, u32> = BTreeMap::new();
    let mut healthy: BTreeMap<String, u32> = BTreeMap::new();
    let mut instances: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for t in &live {
        *specs.entry(hash_text(t.spec)).or_default() += 1;
        if t.healthy {
            *healthy.entry(hash_text(t.spec)).or_default() += 1;
        }
        instances
            .entry(hash_text(t.spec))
            .or_default()
            .push(t.instance);
    }
    let instances: BTreeMap<String, String> = instances
        .into_iter()
        .map(|(spec, mut list)| {
            list.sort_unstable();
            (spec, ranges(&list))
        })
        .collect();
    let mut rec = json!({"type":"update","job":job.key,"held":job.rollout.held,
                         "stable":hash_text(job.rollout.stable),
                         "running":specs,"healthy":healthy,"instances_by_spec":instances,
                         "update":null});
    if let Some(u) = &job.rollout.update {
        rec["update"] = json!({
            "state": u.phase.name(), "from": hash_text(u.from), "to": hash_text(u.to),
            "instances": [u.first, u.last], "started": u.started, "progress": u.progress,
            "done": u.done, "desired": u.desired,
            "pending": u.desired.saturating_sub(live.len() as u32),
            "why": waiting(path, &job.rollout, u, tasks, now),
        });
    }
    rec
}

/// Why an update is where it is, in words. A moving one is asked of `rollout::waiting`,
/// with the update policy, health check and budget of the spec it moves to.
fn waiting(path: &Path, r: &Rollout, u: &Update, tasks: &[&Task], now: f64) -> String {
    match u.phase {
        _ if u.why != Why::None => u.why.words().to_string(),
        Phase::RollForwardPaused | Phase::RollBackPaused if r.held => {
            "held by roll pause before it started: roll start JOB".into()
        }
        Phase::RollForwardPaused | Phase::RollBackPaused => "paused: roll resume JOB".into(),
        Phase::RollingForward | Phase::RollingBack => moving(path, r, u, tasks, now),
        Phase::RolledForward if u.to != r.stable => {
            "a canary range went out: roll start JOB for every instance".into()
        }
        _ => String::new(),
    }
}

fn moving(path: &Path, r: &Rollout, u: &Update, tasks: &[&Task], now: f64) -> String {
    let Some(spec) = crate::specstore::read(path, u.to) else {
        return "its spec is not kept: a pass reads it from the job file".into();
    };
    let seen: Vec<Seen> = tasks.iter().map(|t| Seen::of(t)).collect();
    let available = seen
        .iter()
        .filter(|t| t.instance < u.desired)
        .filter(|t| crate::sla::is_available(t.state, t.healthy, t.healthy_since, &spec.sla, now))
        .count() as u32;
    let kept = |_: u64| true;
    let job = crate::rollout::Job {
        desired: u.to,
        instances: u.desired,
        policy: &spec.update,
        health_checked: spec.health.is_some(),
        rollout: r,
        room: crate::sla::room(&spec.sla, u.desired, available),
        kept: &kept,
    };
    // By instance: a job may have a million of them.
    let mut at: Vec<Option<Seen>> = vec![None; u.desired as usize];
    for t in seen.iter().filter(|t| t.instance < u.desired) {
        at[t.instance as usize] = Some(*t);
    }
    crate::rollout::waiting(&job, u, &|i| at.get(i as usize).copied().flatten(), now)
}

/// Instances as ranges: "0-2,5".
fn ranges(sorted: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        out.push(match i == j {
            true => sorted[i].to_string(),
            false => format!("{}-{}", sorted[i], sorted[j]),
        });
        i = j + 1;
    }
    out.join(",")
}

fn row(r: &Value) -> Vec<String> {
    let u = &r["update"];
    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let specs = r["running"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(h, n)| format!("{}×{n}", &h[..8.min(h.len())]))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let range = match (u["instances"][0].as_u64(), u["instances"][1].as_u64()) {
        (Some(a), Some(b)) if b >= u32::MAX as u64 => format!("{a}-"),
        (Some(a), Some(b)) => format!("{a}-{b}"),
        _ => "-".into(),
    };
    let short = |v: &Value| text(v).chars().take(8).collect::<String>();
    vec![
        text(&r["job"]),
        if u.is_null() && r["held"] == true {
            "HELD".into()
        } else {
            text(&u["state"])
        },
        short(&u["from"]),
        short(&u["to"]),
        range,
        u["done"].as_u64().map_or("-".into(), |d| d.to_string()),
        u["desired"].as_u64().map_or("-".into(), |d| d.to_string()),
        u["pending"].as_u64().map_or("-".into(), |d| d.to_string()),
        specs,
        text(&u["why"]),
    ]
}
