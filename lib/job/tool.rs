//! `job`: the runs of batch and cron jobs as the state keeps them, and a run asked for by
//! hand (the pass that plans runs is `pack`, see `cron` and `pack::runs`).

use std::collections::HashMap;

use anyhow::Result;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use crate::cli::{OutputArgs, StateArgs};
use crate::exit::{bad_input, Status, TABLE};
use crate::state::{State, View};
use crate::task::{Job, Task};

/// See the runs of batch and cron jobs, and start one by hand
///
/// A batch job ("service": false) places each instance until it has finished, or failed as
/// often as its restart policy allows: one run. A cron job (a "cron" block) starts a run at
/// each time its schedule names. `job run` asks for a run now, and the next reconciliation
/// pass starts it: a finished batch job runs again under its own name. `job runs` shows each
/// job's current run (its number is the Unix second it was due or asked for), its instances'
/// hosts, states and exit statuses, and how many runs were started, missed and cancelled.
#[derive(Parser, Debug)]
#[command(name = "job", version, after_help = TABLE)]
pub struct Cli {
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Ask for a run of a batch or cron job now: the next pass starts it, with a cron job's
    /// collision policy if its last run is still going (a batch job's stops what is left)
    Run {
        #[arg(value_name = "JOB")]
        job: String,
    },
    /// Each batch or cron job's runs: every job that has a run or a schedule, or the jobs
    /// named
    Runs {
        #[arg(value_name = "JOB")]
        jobs: Vec<String>,
    },
}

pub fn run(cli: Cli) -> Result<Status> {
    let path = cli.state.path();
    match cli.verb {
        Verb::Run { job } => ask_for_run(&path, &job),
        Verb::Runs { jobs } => runs(&State::open(&path)?, &jobs, &cli.output),
    }
}

/// Records a run asked for in the job's record (one transaction) and prints the event; a
/// job the state does not have, or a service, is bad input (65) and nothing changes.
fn ask_for_run(path: &std::path::Path, key: &str) -> Result<Status> {
    let mut state = State::open_writer(path)?;
    let event = state.write(|tx| {
        let view = tx.view();
        let slot = view.jobs.find(&key.to_string()).ok_or_else(|| {
            bad_input(format!(
                "no job {key} in the state (a batch job is filed when first placed, a cron \
                 job when a pass first reads its schedule)"
            ))
        })?;
        if is_service(path, view, slot) {
            return Err(bad_input(format!(
                "job {key} is a service: its instances run all the time, not in runs"
            )));
        }
        let mut job: Job = view.jobs.get(slot).cloned().expect("a found slot");
        let now = tx.now();
        let asked = job.runs.request_number(now);
        if job.runs.requested == 0 {
            job.runs.requested = asked;
            tx.upsert(job);
        }
        Ok(json!({"type":"event","job":key,"ts":now,"requested":asked}))
    })?;
    let mut out = crate::records::Writer::stdout();
    out.record(&event)?;
    out.finish()?;
    Ok(Status::Done)
}

/// Whether the spec the job's tasks were placed with says it is a service. (The state
/// keeps no spec of its own: those launch kept beside it are read.)
fn is_service(path: &std::path::Path, view: &View, slot: u32) -> bool {
    let spec = view
        .tasks
        .iter()
        .find(|(_, t)| t.job == slot && t.spec != 0);
    spec.and_then(|(_, t)| crate::specstore::read(path, t.spec))
        .is_some_and(|spec| spec.service)
}

/// One line per job with runs, or per job named.
fn runs(state: &State, keys: &[String], output: &OutputArgs) -> Result<Status> {
    let view = state.view();
    if let Some(key) = keys.iter().find(|k| view.jobs.find(*k).is_none()) {
        return Err(bad_input(format!("no job {key} in the state")));
    }
    let mut by_job: HashMap<u32, Vec<&Task>> = HashMap::new();
    for (_, t) in view.tasks.iter() {
        by_job.entry(t.job).or_default().push(t);
    }
    let mut rows = Vec::new();
    for (slot, job) in view.jobs.iter() {
        let named = keys.is_empty() || keys.contains(&job.key);
        let has = job.runs != Default::default();
        if named && (has || !keys.is_empty()) {
            let tasks = by_job.get(&slot).map_or(&[][..], Vec::as_slice);
            rows.push(describe(view, job, tasks));
        }
    }
    let mut out = crate::records::Writer::stdout();
    if output.human() {
        let table: Vec<Vec<String>> = rows.iter().map(row).collect();
        let headers = [
            "JOB",
            "RUN",
            "STARTED",
            "BY",
            "INSTANCES",
            "RUNS",
            "MISSED",
            "CANCELLED",
            "ASKED",
        ];
        out.raw(crate::cli::table(&headers, &table).trim_end())?;
    } else {
        for r in &rows {
            out.record(r)?;
        }
    }
    out.finish()?;
    Ok(Status::Done)
}

/// A job's runs as a record: its record's counts, and the current run's instances (host,
/// state, exit status, since when) from their tasks.
fn describe(view: &View, job: &Job, tasks: &[&Task]) -> Value {
    let r = &job.runs;
    let mut current: Vec<&Task> = tasks
        .iter()
        .copied()
        .filter(|t| t.run == r.current)
        .collect();
    current.sort_by_key(|t| t.instance);
    let instances: Vec<Value> = current
        .iter()
        .map(|t| {
            json!({
                "instance": t.instance,
                "host": view.hosts.get(t.host).map(|h| h.name.clone()),
                "state": t.state.name(),
                "exit": t.exit_status(),
                "since": t.since,
                "incarnation": t.incarnation,
            })
        })
        .collect();
    json!({
        "type": "runs",
        "job": job.key,
        "run": r.current,
        "started": (r.started != 0.0).then_some(r.started),
        "manual": r.manual,
        "last_scheduled": (r.fired != 0).then_some(r.fired),
        "requested": (r.requested != 0).then_some(r.requested),
        "runs": r.runs,
        "missed": r.missed,
        "cancelled": r.cancelled,
        "instances": instances,
    })
}

/// A record of `describe` as a table row; its instances as counts by state.
fn row(v: &Value) -> Vec<String> {
    let mut states: Vec<(String, u32)> = Vec::new();
    for i in v["instances"].as_array().into_iter().flatten() {
        let s = i["state"].as_str().unwrap_or("?").to_string();
        match states.iter_mut().find(|(name, _)| *name == s) {
            Some((_, n)) => *n += 1,
            None => states.push((s, 1)),
        }
    }
    let states: Vec<String> = states.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let time = |t: &Value| match t.as_f64() {
        Some(t) => humantime::format_rfc3339_seconds(crate::clock::at(t)).to_string(),
        None => "-".into(),
    };
    vec![
        v["job"].as_str().unwrap_or("").into(),
        v["run"].to_string(),
        time(&v["started"]),
        match v["manual"].as_bool() {
            Some(true) => "hand".into(),
            _ if v["started"].is_null() => "-".into(),
            _ => "schedule".into(),
        },
        if states.is_empty() {
            "-".into()
        } else {
            states.join(", ")
        },
        v["runs"].to_string(),
        v["missed"].to_string(),
        v["cancelled"].to_string(),
        time(&v["requested"]),
    ]
}
