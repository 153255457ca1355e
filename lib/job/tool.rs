//! `job`: a job's status, the runs of batch and cron jobs as the state keeps them and a run
//! asked for by hand (the pass that plans runs is `pack`, see `cron` and `pack::runs`), the
//! history, and the metrics (`job::metrics`).

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use crate::cli::{OutputArgs, StateArgs};
use crate::exit::{bad_input, Status, TABLE};
use crate::state::{State, View};
use crate::task::{Job, Task};

/// Jobs day to day: status, runs (and one by hand), history, metrics
///
/// A batch job ("service": false) places each instance until it has finished, or failed as
/// often as its restart policy allows: one run. A cron job (a "cron" block) starts a run at
/// each time its schedule names. `job run` asks for a run now, and the next reconciliation
/// pass starts it: a finished batch job runs again under its own name. `job runs` shows each
/// job's current run (its number is the Unix second it was due or asked for), its instances'
/// hosts, states and exit statuses, and how many runs were started, missed and cancelled.
/// `job status` shows what each job has and lacks, `job history` what happened, and `job
/// metrics` the cluster as Prometheus metrics.
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
        #[arg(value_name = "JOB", add = crate::complete::jobs())]
        job: String,
        /// The job files the passes place (scripts/reconcile's JOBS): a job no longer in
        /// them, or a service there, is refused
        #[arg(long = "jobs", value_name = "PATH", env = "FORMIC_JOBS")]
        files: Option<std::path::PathBuf>,
    },
    /// Each batch or cron job's runs: every job that has a run or a schedule, or the jobs
    /// named
    Runs {
        #[arg(value_name = "JOB", add = crate::complete::jobs())]
        jobs: Vec<String>,
        /// Also the last N runs before the current one, from the history: each one's
        /// start, end, and its instances' hosts, states and exit statuses
        #[arg(long, value_name = "N", default_value = "0")]
        last: usize,
        /// The job files the passes place (scripts/reconcile's JOBS): each cron job's
        /// schedule and the next time it is due
        #[arg(long = "jobs", value_name = "PATH", env = "FORMIC_JOBS")]
        files: Option<std::path::PathBuf>,
    },
    /// Each job of the job files (or those named): desired, running, healthy, what the
    /// next pass would place and leave pending (with why), throttled, the specs its
    /// instances run, and each instance's host, state and uptime
    Status {
        #[arg(value_name = "JOB", add = crate::complete::jobs())]
        jobs: Vec<String>,
        #[command(flatten)]
        files: JobFiles,
    },
    /// The cluster as a Prometheus text file (node_exporter's textfile collector): tasks by
    /// job and state; desired, running and healthy instances; counters of placements,
    /// restarts, failures, LOST, preemptions and cron runs; hosts by maintenance and
    /// liveness; capacity, reserved and free. `scripts/reconcile --metrics FILE` writes it
    /// at the end of every pass, with the pass's pending instances and duration
    Metrics {
        #[command(flatten)]
        files: JobFiles,
        /// The records a pass printed (launch's output): its pending instances are counted
        /// by job and reason
        #[arg(long, value_name = "FILE")]
        pending: Option<std::path::PathBuf>,
        /// The pass started at this Unix time: its duration and end are shown
        #[arg(long, value_name = "SECONDS", requires = "pass_status", value_parser = unix_time)]
        pass_started: Option<f64>,
        /// The pass's exit status
        #[arg(long, value_name = "STATUS", requires = "pass_started")]
        pass_status: Option<i32>,
        /// Write to FILE (through a temporary file renamed over it), not standard output
        #[arg(long, value_name = "FILE")]
        out: Option<std::path::PathBuf>,
    },
    /// A task's output from the host it runs on (this machine, or one reached over ssh):
    /// standard output, or standard error. Each run of a task on a host (each
    /// incarnation) has its own logs; a host keeps the last five runs' of each task
    Logs {
        /// role/env/name/instance
        #[arg(value_name = "TASK", add = crate::complete::tasks())]
        task: String,
        /// Standard error instead of standard output
        #[arg(long)]
        stderr: bool,
        /// Go on printing what the run writes until it ends (or until interrupted)
        #[arg(short, long)]
        follow: bool,
        /// An earlier run: the task's incarnation N (`#N` in `job history`, `incarnation`
        /// in `reap tasks`)
        #[arg(long, value_name = "N", conflicts_with = "run")]
        incarnation: Option<u32>,
        /// A batch or cron job's run (its number, as `job runs` shows it): the task's
        /// last incarnation in that run
        #[arg(long, value_name = "RUN")]
        run: Option<u64>,
    },
    /// What happened: every transition of tasks, jobs and hosts, oldest first, from the
    /// history kept beside the state
    History {
        /// Jobs (role/env/name, with every task of theirs), tasks (role/env/name/N) or
        /// hosts; all when none is named
        #[arg(value_name = "JOB|TASK|HOST", add = crate::complete::any())]
        names: Vec<String>,
        /// Only transitions from this time on: a duration ago (30m, 2h, 1d) or a time
        /// (2026-12-24T06:00:00Z, or Unix seconds)
        #[arg(long, value_name = "TIME", value_parser = past)]
        since: Option<f64>,
        /// Only transitions before this time (as --since)
        #[arg(long, value_name = "TIME", value_parser = past)]
        until: Option<f64>,
        /// Go on printing transitions as they are made (until interrupted)
        #[arg(short, long)]
        follow: bool,
    },
}

/// The job files the passes place.
#[derive(clap::Args, Debug)]
pub struct JobFiles {
    /// The job files or directories the passes place (scripts/reconcile's JOBS)
    #[arg(
        long = "jobs",
        value_name = "PATH",
        env = "FORMIC_JOBS",
        required = true
    )]
    pub path: std::path::PathBuf,
}

/// `--pass-started`: Unix seconds, a finite number (no timestamp in the metrics is NaN).
fn unix_time(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        _ => Err(format!("{s:?} is not a time in Unix seconds")),
    }
}

/// `--since` and `--until`: a duration ago, or a time.
fn past(s: &str) -> Result<f64, String> {
    crate::clock::parse_past(s, crate::clock::now())
}

pub fn run(cli: Cli) -> Result<Status> {
    let path = cli.state.path();
    match cli.verb {
        Verb::Run { job, files } => ask_for_run(&path, &job, files.as_deref()),
        Verb::Runs { jobs, last, files } => runs(&path, &jobs, last, files.as_deref(), &cli.output),
        Verb::Status { jobs, files } => status(&path, &files.path, &jobs, &cli.output),
        Verb::Logs {
            task,
            stderr,
            follow,
            incarnation,
            run,
        } => {
            let which = match (incarnation, run) {
                (Some(n), _) => super::logs::Which::Incarnation(n),
                (None, Some(r)) => super::logs::Which::Run(r),
                (None, None) => super::logs::Which::Current,
            };
            let stream = match stderr {
                true => crate::runlogs::Stream::Stderr,
                false => crate::runlogs::Stream::Stdout,
            };
            super::logs::logs(&path, &task, which, stream, follow)
        }
        Verb::Metrics {
            files,
            pending,
            pass_started,
            pass_status,
            out,
        } => {
            let pass = pass_started
                .zip(pass_status)
                .map(|(started, status)| super::metrics::Pass { started, status });
            metrics(&path, &files.path, pending.as_deref(), pass, out.as_deref())
        }
        Verb::History {
            names,
            since,
            until,
            follow,
        } => {
            let filter = Filter {
                names,
                since: since.unwrap_or(f64::NEG_INFINITY),
                until: until.unwrap_or(f64::INFINITY),
            };
            history(&path, &filter, follow, cli.output.human())
        }
    }
}

/// One line per job: the job files' jobs (or those named), what runs of each and how, and
/// what the next pass would leave pending, and why (pack's decision on the state as it is).
fn status(
    path: &std::path::Path,
    files: &std::path::Path,
    keys: &[String],
    output: &OutputArgs,
) -> Result<Status> {
    let state = State::open(path)?;
    let view = state.view();
    let offers = crate::offer::offers_but(view, &[])?;
    let (input, outcome) = crate::pack::preview_drain(path, &[files.to_path_buf()], &[], &offers)?;
    if let Some(key) = keys
        .iter()
        .find(|k| !input.jobs.iter().any(|j| j.key == **k))
    {
        return Err(bad_input(format!("no job {key} in {}", files.display())));
    }
    // Pending instances and their reasons (hosts refusing for each), by job.
    let mut pending: HashMap<&str, (u32, std::collections::BTreeMap<String, u32>)> = HashMap::new();
    let mut placing: HashMap<&str, u32> = HashMap::new();
    for d in &outcome.decisions {
        match d {
            crate::pack::Decision::Pending { job, reasons, .. } => {
                let entry = pending.entry(input.jobs[*job].key.as_str()).or_default();
                entry.0 += 1;
                for (why, hosts) in outcome.reasons[*reasons].iter() {
                    *entry.1.entry(why.clone()).or_default() += hosts;
                }
            }
            crate::pack::Decision::Place { job, .. } => {
                *placing.entry(input.jobs[*job].key.as_str()).or_default() += 1;
            }
            _ => {}
        }
    }
    let now = crate::clock::now();
    let by_job = tasks_by_job(view);
    // What announce publishes for each job: its members' endpoints, by instance.
    let mut members: HashMap<&str, Vec<(u32, String)>> = HashMap::new();
    let announced = crate::announce::members(view, &crate::announce::this_host_name());
    for m in announced.values() {
        let key = m.task.rsplit_once('/').map_or("", |(k, _)| k);
        members
            .entry(key)
            .or_default()
            .push((m.shard, m.endpoint.clone()));
    }
    let mut rows = Vec::new();
    // The files' jobs come first; a version of one that an update places comes after.
    let mut seen = std::collections::HashSet::new();
    let named = |j: &&crate::job::JobSpec| keys.is_empty() || keys.contains(&j.key);
    for spec in input.jobs.iter().filter(named) {
        if !seen.insert(spec.key.as_str()) {
            continue;
        }
        let tasks = instances(view, &by_job, spec);
        let count = |f: &dyn Fn(&Task) -> bool| tasks.iter().filter(|t| f(t)).count();
        let mut specs: std::collections::BTreeMap<String, u32> = Default::default();
        for t in tasks.iter().filter(|t| t.state.holds_resources()) {
            *specs.entry(crate::rollout::hash_text(t.spec)).or_default() += 1;
        }
        let (waiting, why) = pending.remove(spec.key.as_str()).unwrap_or_default();
        let instances: Vec<Value> = tasks
            .iter()
            .map(|t| {
                let running = t.state == crate::task::TaskState::Running;
                json!({"instance": t.instance, "host": view.hosts.get(t.host).map(|h| h.name.clone()),
                       "state": t.state.name(), "healthy": t.healthy,
                       "uptime_s": running.then(|| (now - t.since).max(0.0).round()),
                       "spec": crate::rollout::hash_text(t.spec)})
            })
            .collect();
        rows.push(json!({
            "type": "status", "job": spec.key, "desired": spec.instances,
            "running": count(&|t| t.state == crate::task::TaskState::Running),
            "healthy": count(&|t| t.state == crate::task::TaskState::Running && t.healthy),
            "placing": placing.get(spec.key.as_str()).copied().unwrap_or(0),
            "pending": waiting, "why_pending": why,
            "throttled": count(&|t| t.state == crate::task::TaskState::Throttled),
            "spec": crate::rollout::hash_text(spec.hash), "specs": specs,
            "serverset": spec.announce.as_ref().map(|a| a.path.clone()),
            "members": members.remove(spec.key.as_str()).map(|mut m| {
                m.sort();
                m.into_iter().map(|(_, endpoint)| endpoint).collect::<Vec<_>>()
            }).unwrap_or_default(),
            "instances": instances,
        }));
    }
    let headers = [
        "JOB",
        "DESIRED",
        "RUNNING",
        "HEALTHY",
        "PLACING",
        "PENDING",
        "THROTTLED",
        "SPECS",
        "MEMBERS",
        "WHY PENDING",
    ];
    output.print(&headers, &rows, |r| {
        let join = |m: &Value| match m.as_object() {
            Some(m) if !m.is_empty() => m
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", "),
            _ => "-".into(),
        };
        vec![
            r["job"].as_str().unwrap_or("").into(),
            r["desired"].to_string(),
            r["running"].to_string(),
            r["healthy"].to_string(),
            r["placing"].to_string(),
            r["pending"].to_string(),
            r["throttled"].to_string(),
            join(&r["specs"]),
            match r["serverset"].as_str() {
                Some(_) => r["members"].as_array().map_or(0, Vec::len).to_string(),
                None => "-".into(),
            },
            join(&r["why_pending"]),
        ]
    })?;
    Ok(Status::Done)
}

/// `job metrics`: the Prometheus text, to standard output or into `out`.
fn metrics(
    path: &Path,
    files: &Path,
    pending: Option<&Path>,
    pass: Option<super::metrics::Pass>,
    out: Option<&Path>,
) -> Result<Status> {
    let pending = match pending {
        None => None,
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| bad_input(format!("--pending {}: {e}", p.display())))?;
            Some(super::metrics::pending_reasons(
                &text,
                &p.display().to_string(),
            )?)
        }
    };
    let read = crate::job::read_all(&[files.to_path_buf()]);
    let state = State::open(path)?;
    let text = super::metrics::render(&super::metrics::Sources {
        view: state.view(),
        specs: &read.jobs,
        refused: read.errors.len(),
        pending: pending.as_deref(),
        pass,
        now: crate::clock::now(),
    })?;
    match out {
        Some(file) => super::metrics::write_atomically(file, &text)?,
        None => {
            let mut w = crate::records::Writer::stdout();
            w.text(&text)?;
            w.finish()?;
        }
    }
    Ok(Status::Done)
}

/// The state's tasks by the slot of their job.
pub(super) fn tasks_by_job(view: &View) -> HashMap<u32, Vec<&Task>> {
    let mut by: HashMap<u32, Vec<&Task>> = HashMap::new();
    for (_, t) in view.tasks.iter() {
        by.entry(t.job).or_default().push(t);
    }
    by
}

/// The tasks of `spec`'s instances (those below its count), in instance order.
pub(super) fn instances<'v>(
    view: &View,
    by_job: &HashMap<u32, Vec<&'v Task>>,
    spec: &crate::job::JobSpec,
) -> Vec<&'v Task> {
    let slot = view.jobs.find(&spec.key);
    let mut tasks: Vec<&Task> = slot
        .and_then(|s| by_job.get(&s))
        .into_iter()
        .flatten()
        .copied()
        .filter(|t| t.instance < spec.instances)
        .collect();
    tasks.sort_by_key(|t| t.instance);
    tasks
}

/// Which history lines `job history` prints.
struct Filter {
    names: Vec<String>,
    since: f64,
    until: f64,
}

impl Filter {
    fn takes(&self, line: &Value) -> bool {
        let ts = line["ts"].as_f64().unwrap_or(0.0);
        if ts < self.since || ts >= self.until {
            return false;
        }
        if self.names.is_empty() {
            return true;
        }
        let task = line["task"].as_str();
        self.names.iter().any(|n| {
            [&line["job"], &line["host"], &line["task"]]
                .iter()
                .any(|v| v.as_str() == Some(n.as_str()))
                || task.is_some_and(|t| {
                    t.strip_prefix(n.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
                })
        })
    }
}

/// Prints the history's lines that `filter` takes (as they are, or one line of words each
/// for a person), and with `follow` those committed from then on, polling five times a
/// second.
fn history(path: &std::path::Path, filter: &Filter, follow: bool, human: bool) -> Result<Status> {
    let mut state = State::open(path)?;
    let mut reader = crate::state::history::Reader::new(path);
    let mut out = crate::records::Writer::stdout();
    loop {
        let mut failed = Ok(());
        reader.read(state.view().txid, |line| {
            if failed.is_err() {
                return;
            }
            let Ok(v) = serde_json::from_slice::<Value>(line) else {
                return; // not a line the history writes
            };
            if filter.takes(&v) {
                failed = match human {
                    true => out.raw(&words(&v)),
                    false => out.raw(&String::from_utf8_lossy(line)),
                };
            }
        })?;
        failed?;
        if !follow || filter.until <= crate::clock::now() && filter.until.is_finite() {
            break;
        }
        out.flush()?;
        std::thread::sleep(std::time::Duration::from_millis(200));
        state.refresh()?;
    }
    out.finish()?;
    Ok(Status::Done)
}

/// A history line for a person: when, what, from and to, why, where, and who.
fn words(v: &Value) -> String {
    let when = humantime::format_rfc3339_millis(crate::clock::at(v["ts"].as_f64().unwrap_or(0.0)));
    let text = |k: &str| v[k].as_str().map(str::to_string);
    let subject = match (text("task"), text("job"), text("host")) {
        (Some(t), _, _) => format!("{t} #{}", v["incarnation"]),
        (_, Some(j), _) => j,
        (_, _, Some(h)) => format!("host {h}"),
        _ => "?".into(),
    };
    let mut line = format!("{when}  {subject}");
    if let Some(step) = text("cron") {
        line += &format!("  run {} {step}", v["run"]);
    } else {
        let what = ["update", "maintenance", "liveness"]
            .into_iter()
            .find(|k| v[*k].is_string())
            .map_or(String::new(), |k| format!(" {k}"));
        let from = text("from").unwrap_or_else(|| "-".into());
        line += &format!(
            "{what}  {from} -> {}",
            text("to").unwrap_or_else(|| "-".into())
        );
    }
    if let Some(h) = text("host").filter(|_| v["task"].is_string()) {
        line += &format!(" on {h}");
    }
    if v["task"].is_string() && v["from"] == v["to"] {
        // Only its health changed.
        line += if v["healthy"] == true {
            ", healthy"
        } else {
            ", unhealthy"
        };
    }
    if let Some(r) = text("reason") {
        line += &format!(": {r}");
    }
    if let Some(x) = v["exit"].as_i64() {
        line += &format!(" (exit {x})");
    }
    line + &format!(
        "  [{} as {}]",
        text("by").unwrap_or_default(),
        text("user").unwrap_or_default()
    )
}

/// Records a run asked for in the job's record (one transaction) and prints the event; a
/// job the state does not have, or a service, is bad input (65) and nothing changes.
fn ask_for_run(path: &std::path::Path, key: &str, files: Option<&Path>) -> Result<Status> {
    if let Some(files) = files {
        let spec = specs(files)?.into_iter().find(|j| j.key == key);
        match spec {
            None => {
                return Err(bad_input(format!(
                    "no job {key} in {}: a job removed from the job files runs no more",
                    files.display()
                )))
            }
            Some(spec) if spec.service => {
                return Err(bad_input(format!(
                    "job {key} is a service: its instances run all the time, not in runs"
                )))
            }
            Some(_) => {}
        }
    }
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
        // A run asked for already and not started yet is the one this asks for too.
        let asked = match job.runs.requested {
            0 => {
                job.runs.requested = job.runs.request_number(now);
                let asked = job.runs.requested;
                tx.upsert(job);
                asked
            }
            waiting => waiting,
        };
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
fn runs(
    path: &std::path::Path,
    keys: &[String],
    last: usize,
    files: Option<&Path>,
    output: &OutputArgs,
) -> Result<Status> {
    let state = State::open(path)?;
    let view = state.view();
    if let Some(key) = keys.iter().find(|k| view.jobs.find(*k).is_none()) {
        return Err(bad_input(format!("no job {key} in the state")));
    }
    let schedules = match files {
        Some(f) => schedules(f)?,
        None => HashMap::new(),
    };
    let by_job = tasks_by_job(view);
    let now = crate::clock::now() as u64;
    let mut rows = Vec::new();
    for (slot, job) in view.jobs.iter() {
        let named = keys.is_empty() || keys.contains(&job.key);
        let has = job.runs != Default::default();
        if named && (has || !keys.is_empty()) {
            let tasks = by_job.get(&slot).map_or(&[][..], Vec::as_slice);
            let mut row = describe(view, job, tasks);
            if let Some(s) = schedules.get(&job.key) {
                row["schedule"] = json!(s.text);
                row["next_scheduled"] = json!(s.next(now));
            }
            rows.push(row);
        }
    }
    if last > 0 {
        let mut earlier = earlier_runs(path, view.txid, &rows)?;
        for r in &mut rows {
            let mut runs = earlier
                .remove(r["job"].as_str().unwrap_or(""))
                .unwrap_or_default();
            runs.retain(|number, _| Some(*number) != r["run"].as_u64());
            let keep = runs.len().saturating_sub(last);
            r["last"] = Value::Array(
                runs.into_values()
                    .skip(keep)
                    .map(|run| run.record())
                    .collect(),
            );
        }
    }
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
        "NEXT",
    ];
    output.print(&headers, &rows, row)?;
    Ok(Status::Done)
}

/// The cron jobs' schedules in the job files, by key. A file that cannot be read is an
/// error; the jobs it holds that are good are taken, as a pass takes them.
fn schedules(files: &Path) -> Result<HashMap<String, crate::cron::Schedule>> {
    Ok(specs(files)?
        .into_iter()
        .filter_map(|j| Some((j.key, j.cron?)))
        .collect())
}

/// The jobs of the job files. When none is good, the first error says why.
fn specs(files: &Path) -> Result<Vec<crate::job::JobSpec>> {
    let read = crate::job::read_all(&[files.to_path_buf()]);
    match (read.jobs.is_empty(), read.errors.first()) {
        (true, Some(e)) => Err(bad_input(e.clone())),
        _ => Ok(read.jobs),
    }
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

/// One run of a job as its history lines tell it.
#[derive(Default)]
struct PastRun {
    number: u64,
    started: f64,
    ended: f64,
    /// Per instance: its host, and the state and exit status it last reached.
    instances: std::collections::BTreeMap<u64, (Value, Value, Value)>,
}

impl PastRun {
    fn record(self) -> Value {
        let instances: Vec<Value> = self
            .instances
            .into_iter()
            .map(|(i, (host, state, exit))| {
                json!({"instance": i, "host": host, "state": state, "exit": exit})
            })
            .collect();
        json!({"run": self.number, "started": self.started,
               "ended": (self.ended > 0.0).then_some(self.ended), "instances": instances})
    }
}

/// The runs of the jobs of `rows` that the history holds, by job and run number: when each
/// began (its first placement) and ended (its last instance's end), and each instance's
/// host, last state and exit status.
fn earlier_runs(
    path: &std::path::Path,
    committed: u64,
    rows: &[Value],
) -> Result<HashMap<String, std::collections::BTreeMap<u64, PastRun>>> {
    let jobs: std::collections::HashSet<&str> =
        rows.iter().filter_map(|r| r["job"].as_str()).collect();
    let mut out: HashMap<String, std::collections::BTreeMap<u64, PastRun>> = HashMap::new();
    crate::state::history::Reader::new(path).read(committed, |line| {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            return;
        };
        let Some((job, instance)) = v["task"].as_str().and_then(|t| t.rsplit_once('/')) else {
            return;
        };
        let (Some(job), Ok(instance)) = (jobs.get(job), instance.parse::<u64>()) else {
            return;
        };
        let number = v["run"].as_u64().unwrap_or(0);
        let run = out
            .entry(job.to_string())
            .or_default()
            .entry(number)
            .or_insert_with(|| PastRun {
                number,
                ..PastRun::default()
            });
        let ts = v["ts"].as_f64().unwrap_or(0.0);
        if run.started == 0.0 {
            run.started = ts;
        }
        let to = v["to"].clone();
        let over = matches!(to.as_str(), Some("FINISHED" | "FAILED" | "KILLED" | "LOST"));
        if over {
            run.ended = ts;
        }
        run.instances
            .insert(instance, (v["host"].clone(), to, v["exit"].clone()));
    })?;
    Ok(out)
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
        time(&v["next_scheduled"]),
    ]
}
