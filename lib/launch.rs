//! `launch`: starts placed instances on their hosts, each under its own supervisor.
//!
//! For each `place` record (and the `spec` record pack sends before a job's first place):
//! 1. intent: one transaction admits each placement that still holds in the state as it is
//!    now (Omega's optimistic concurrency: pack decided on a snapshot) and records it
//!    ASSIGNED as the task's next incarnation, with its reservation and this launch's
//!    name, so the resources are spoken for before anything starts; a placement that no
//!    longer holds is a `conflict` record, and the next pass decides again;
//! 2. action: each host is asked once (`transport`) to write its tasks' directories, under
//!    each directory's lock and only while no call-off or later start has fenced the
//!    incarnation out: job.json and spec.json (argv with its templates filled in,
//!    environment, user, health check, incarnation), then `formic-supervise DIR` in a
//!    session of its own, to outlive launch;
//! 3. result: a second transaction records STARTING, or RUNNING with the task's pid and
//!    start time once its supervisor reports them — for this launch's incarnation only.
//!
//! A crash between any two steps is repaired by the next pass: reap calls off the start of
//! an incarnation whose launch has ended without a supervisor taking it (under the same
//! lock, raising the fence, so neither a supervisor nor this launch arriving late starts
//! it), and believes one that did.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cli::{OutputArgs, StateArgs};
use crate::cron::{Runs, Step};
use crate::exit::{fail, status_of, Status, TABLE};
use crate::host::millicores;
use crate::job::{Check, JobSpec};
use crate::records::{self, Record, Writer};
use crate::rollout::Rollout;
use crate::state::{State, Txn, View};
use crate::supervise::{Health, Spec};
use crate::task::{check_job_key, Announce, Job, Reason, Task, TaskState, MAX_PORTS};
use crate::taskdir;
use crate::transport::{self, Prepared, Start, TaskHost};
use crate::usage::{self, Usage};

/// Start placed instances on their hosts
///
/// Reads `place` records (and the `spec` records pack sends before them) on standard
/// input, records each task in the state, starts it under its own supervisor
/// (formic-supervise) on its host, and prints an `event` record per task. Lines of other
/// types pass through. A placement is a proposal: one that no longer holds (the task runs
/// already or has moved on, is backing off, or its host is gone, takes no work, or lacks the
/// room or ports now) starts nothing and prints a `conflict` record, with status 1; so
/// running launch twice on the same records starts nothing more.
#[derive(Parser, Debug)]
#[command(name = "launch", version, after_help = TABLE)]
pub struct Cli {
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub fan_out: crate::cli::FanOut,
    /// Let tasks run as root (when their job names root, or names no user and launch runs
    /// as root); otherwise such a job runs as nobody
    #[arg(long, env = "FORMIC_ALLOW_ROOT")]
    pub allow_root: bool,
    /// Seconds a stopped task gets between SIGTERM and SIGKILL (at most an hour)
    #[arg(
        long,
        value_name = "SECONDS",
        default_value = "10",
        env = "FORMIC_GRACE",
        value_parser = crate::cli::up_to_an_hour
    )]
    pub grace: f64,
    /// How long to wait for the supervisors to report their tasks running (at most an hour)
    #[arg(
        long,
        value_name = "SECONDS",
        default_value = "5",
        value_parser = crate::cli::up_to_an_hour
    )]
    pub wait: f64,
    /// Variables of launch's own environment that tasks also get (repeatable)
    #[arg(long = "pass-env", value_name = "NAME")]
    pub pass_env: Vec<String>,
    /// The uids (and gids of the same numbers) that tasks of jobs naming no user get, one
    /// of its own per task, when launch runs as root; no account may use them
    #[arg(
        long,
        value_name = "FIRST-LAST",
        default_value = "70000-79999",
        env = "FORMIC_UID_RANGE",
        value_parser = crate::identity::parse_range
    )]
    pub uid_range: (u32, u32),
    /// The operators' group that may read every task's logs (beside the task's own user)
    #[arg(
        long,
        value_name = "GROUP",
        default_value = "adm",
        env = "FORMIC_LOG_GROUP"
    )]
    pub log_group: String,
}

/// One placement, checked.
#[derive(Clone, Debug)]
struct Placement {
    task: String,
    job: String,
    instance: u32,
    host: String,
    cpus: u32,
    ram_mb: u64,
    disk_mb: u64,
    gpus: u32,
    ports: Vec<(String, u16)>,
    hash: String,
    /// The incarnation this placement creates, when pack decided it on a view of the state:
    /// it holds only while the task is still at the incarnation before.
    incarnation: Option<u32>,
    /// The run of a batch or cron job it belongs to: it holds only while that is the job's
    /// current run.
    run: u64,
}

impl Placement {
    /// The hash of the spec it is placed with (checked to be 16 hex digits when read).
    fn spec_hash(&self) -> u64 {
        u64::from_str_radix(&self.hash, 16).unwrap_or(0)
    }
}

/// A placement launch recorded ASSIGNED: the incarnation it created.
struct Intent<'a> {
    place: &'a Placement,
    incarnation: u32,
}

pub fn run(cli: Cli) -> Result<Status> {
    let Read {
        places,
        specs,
        updates,
        crons,
        forgets,
        others,
    } = read(crate::cli::stdin_for("launch", "place and spec records"))?;
    let path = cli.state.path();
    let mut state = State::open_writer(&path)?;
    let mut out = Writer::stdout();
    for rec in &others {
        out.raw(&rec.raw)?;
    }
    // Every spec a task may be recorded with is kept first: a later pass may need to place
    // it again (an update going back).
    for spec in specs.values() {
        crate::specstore::keep(&path, spec)?;
    }
    // Before the placements: those of a run started here name it.
    if !updates.is_empty() || !crons.is_empty() || !forgets.is_empty() {
        let events = state.write(|tx| {
            let mut events = record_updates(tx, &updates);
            events.extend(record_runs(tx, &crons));
            events.extend(record_forgets(tx, &forgets));
            Ok(events)
        })?;
        for e in events {
            out.record(&e)?;
        }
    }
    if places.is_empty() {
        out.finish()?;
        return Ok(Status::Done);
    }
    // 1. Intent: a placement is a proposal, recorded only if what it was decided on still
    // holds; the others are conflicts, for the next pass to decide again.
    let me = crate::process::short_name(std::process::id());
    let (incarnations, conflicts) = state.write(|tx| record_intents(tx, &places, &specs, me))?;
    for c in &conflicts {
        out.record(c)?;
    }
    let intents: Vec<Intent> = places
        .iter()
        .zip(incarnations)
        .filter_map(|(p, n)| {
            Some(Intent {
                place: p,
                incarnation: n?,
            })
        })
        .collect();
    // 2. Action: one call per host.
    let hosts = reach_hosts(state.view(), &path, &intents)?;
    let starts = start_all(&cli, &hosts, &intents, &specs);
    for (i, s) in intents.iter().zip(&starts) {
        match s {
            Start::Failed { why, .. } | Start::Busy(why) | Start::Unreached(why) => {
                eprintln!("launch: {}: {why}", i.place.task)
            }
            Start::Superseded(why) => {
                return Err(fail(
                    Status::Permission,
                    format!("{why}; this scheduler stops (see `offer take-over`)"),
                ))
            }
            _ => {}
        }
    }
    // 3. Result.
    let reports = await_reports(&hosts, &intents, &starts, cli.wait, cli.fan_out.parallel);
    let (events, orphaned) = state.write(|tx| record_results(tx, &intents, &starts, &reports))?;
    // A supervisor started for an incarnation the state has moved on from meanwhile.
    for i in orphaned {
        let _ = hosts[&i.place.host].stop(&[(&i.place.task, i.incarnation)]);
    }
    for e in &events {
        out.record(e)?;
    }
    out.finish()?;
    crate::specstore::prune(&path, &named_specs(state.view()));
    let all_started = starts
        .iter()
        .all(|s| matches!(s, Start::Started | Start::CalledOff));
    Ok(if all_started && conflicts.is_empty() {
        Status::Done
    } else {
        Status::Partial
    })
}

type Hosts = HashMap<String, Box<dyn TaskHost>>;

/// Every host the intents are for, as launch reaches it.
fn reach_hosts(view: &View, state: &Path, intents: &[Intent]) -> Result<Hosts> {
    let mut hosts = Hosts::new();
    for i in intents {
        if hosts.contains_key(&i.place.host) {
            continue;
        }
        // Recorded in this launch's intent transaction: the host is there.
        let h = view
            .hosts
            .find(&i.place.host)
            .and_then(|s| view.hosts.get(s))
            .ok_or_else(|| anyhow::anyhow!("host {} left the state", i.place.host))?;
        hosts.insert(i.place.host.clone(), transport::reach(state, h)?);
    }
    Ok(hosts)
}

/// An intent (its index) with its resolved spec.json and job.json.
type Resolved = (usize, Spec, String);

/// Resolves each intent's spec and starts them: one call per host, every host at once.
/// The starts come back in the intents' order.
fn start_all(cli: &Cli, hosts: &Hosts, intents: &[Intent], specs: &Specs) -> Vec<Start> {
    let mut starts: Vec<Option<Start>> = intents.iter().map(|_| None).collect();
    // Per host: the intents it starts, with their resolved spec and job.json.
    let mut work: Vec<(&str, Vec<Resolved>)> = Vec::new();
    for name in hosts.keys() {
        let mut mine = Vec::new();
        for (n, i) in intents.iter().enumerate() {
            if i.place.host != *name {
                continue;
            }
            let job = &specs[&(i.place.job.clone(), i.place.hash.clone())];
            match resolve(cli, i, job) {
                Ok(spec) => mine.push((n, spec, job.json.clone())),
                Err(e) => starts[n] = Some(Start::failed(&e)),
            }
        }
        work.push((name, mine));
    }
    let answers = transport::fan_out(&work, cli.fan_out.parallel, |(name, mine)| {
        let prepared: Vec<Prepared> = mine
            .iter()
            .map(|(n, spec, job)| Prepared {
                task: &intents[*n].place.task,
                incarnation: intents[*n].incarnation,
                spec,
                job,
            })
            .collect();
        hosts[*name].start(&prepared)
    });
    for ((name, mine), answer) in work.iter().zip(answers) {
        match answer {
            Ok(answers) => {
                for ((n, _, _), s) in mine.iter().zip(answers) {
                    starts[*n] = Some(s);
                }
            }
            Err(e) => {
                let why = format!("host {name}: {e}");
                for (n, _, _) in mine {
                    starts[*n] = Some(match e.superseded {
                        true => Start::Superseded(why.clone()),
                        false => Start::Unreached(why.clone()),
                    });
                }
            }
        }
    }
    starts
        .into_iter()
        .map(|s| s.unwrap_or_else(|| Start::Unreached("no host to start on".into())))
        .collect()
}

/// Waits up to `wait` seconds for the supervisors started to report RUNNING (or an end),
/// asking each host once per round.
fn await_reports(
    hosts: &Hosts,
    intents: &[Intent],
    starts: &[Start],
    wait: f64,
    parallel: usize,
) -> Vec<Option<taskdir::Status>> {
    let deadline = Instant::now() + Duration::from_secs_f64(wait);
    let mut reports: Vec<Option<taskdir::Status>> = vec![None; intents.len()];
    let waiting = |r: &Option<taskdir::Status>| r.as_ref().is_none_or(|s| s.state == "STARTING");
    loop {
        let work: Vec<(&str, Vec<usize>)> = hosts
            .keys()
            .map(|name| {
                let idx = (0..intents.len())
                    .filter(|&n| intents[n].place.host == *name)
                    .filter(|&n| matches!(starts[n], Start::Started) && waiting(&reports[n]))
                    .collect();
                (name.as_str(), idx)
            })
            .filter(|(_, idx): &(&str, Vec<usize>)| !idx.is_empty())
            .collect();
        let answers = transport::fan_out(&work, parallel, |(name, idx)| {
            let asked: Vec<(&str, u32)> = idx
                .iter()
                .map(|&n| (intents[n].place.task.as_str(), intents[n].incarnation))
                .collect();
            hosts[*name].reports(&asked)
        });
        // An unreached host is asked again next round, until the deadline.
        for ((_, idx), answer) in work.iter().zip(answers) {
            for (n, r) in idx.iter().zip(answer.unwrap_or_default()) {
                reports[*n] = r;
            }
        }
        let pending = reports
            .iter()
            .zip(starts)
            .any(|(r, s)| matches!(s, Start::Started) && waiting(r));
        if !pending || Instant::now() >= deadline {
            return reports;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Advances each incarnation launch recorded, and only while it is still ASSIGNED: one that
/// reap has moved on since (started, stopped, collected) is reap's. A start that failed is
/// FAILED at once with its reason, and one whose directory another supervisor holds goes
/// back to PENDING, so the next pass decides again rather than waiting. Returns the events
/// and the intents whose supervisor runs an incarnation the state no longer has.
fn record_results<'a>(
    tx: &mut Txn,
    intents: &'a [Intent<'a>],
    starts: &[Start],
    reports: &[Option<taskdir::Status>],
) -> Result<(Vec<Value>, Vec<&'a Intent<'a>>)> {
    let mut events = Vec::new();
    let mut orphaned = Vec::new();
    let now = tx.now();
    for ((i, start), report) in intents.iter().zip(starts).zip(reports) {
        let p = i.place;
        let Some(slot) = task_slot(tx, &p.job, p.instance) else {
            continue;
        };
        let t = tx.view().tasks.get(slot).cloned();
        let Some(t) = t.filter(|t| t.incarnation == i.incarnation) else {
            if matches!(start, Start::Started) {
                orphaned.push(i);
            }
            continue;
        };
        if t.state != TaskState::Assigned {
            continue;
        }
        let mut event = json!({"type":"event","task":p.task,"host":p.host,"exit":null,"ts":now});
        let next = match start {
            Start::Started => {
                let mut r = t.clone();
                match report {
                    Some(s) if s.state == "RUNNING" => {
                        r.state = TaskState::Running;
                        (r.pid, r.pid_start) = s.pid.unwrap_or((0, 0));
                    }
                    // Not running (yet, or any more): reap collects how it ended, with
                    // the restart policy; the event already says why.
                    _ => {
                        r.state = TaskState::Starting;
                        if let Some(why) = report.as_ref().and_then(|s| s.reason.as_ref()) {
                            event["reason"] = json!(why);
                        }
                    }
                }
                r.since = now;
                r
            }
            Start::Failed { why, exit } => {
                let mut r = t.freed(TaskState::Failed, now);
                r.exit = *exit;
                r.failures = t.failures.saturating_add(1);
                r.reason = Reason::CouldNotStart;
                event["exit"] = json!(r.exit);
                event["reason"] = json!(why);
                r
            }
            Start::Busy(why) => {
                event["reason"] = json!(why);
                let mut r = t.freed(TaskState::Pending, now);
                r.reason = Reason::DirectoryBusy;
                r
            }
            // Whether it started is not known: it stays ASSIGNED, for reap to find out (or
            // to call it off) once the host answers.
            Start::CalledOff | Start::Unreached(_) | Start::Superseded(_) => continue,
        };
        event["state"] = json!(next.state.name());
        events.push(event);
        tx.set(slot, Some(next));
    }
    Ok((events, orphaned))
}

type Specs = HashMap<(String, String), JobSpec>;

/// Reads and checks every record first: one bad record starts nothing.
fn read(input: impl io::BufRead) -> Result<Read> {
    let mut places = Vec::new();
    let mut specs: Specs = HashMap::new();
    let mut others = Vec::new();
    let mut updates = Vec::new();
    let mut crons = Vec::new();
    let mut forgets = Vec::new();
    let mut errors = Vec::new();
    for item in records::Reader::new(input) {
        let rec = match item {
            Ok(r) => r,
            Err(e) if status_of(&e) == Status::BadInput => {
                errors.push(format!("{e:#}"));
                continue;
            }
            Err(e) => return Err(e),
        };
        let checked = match rec.kind() {
            "spec" => read_spec(&rec).map(|(key, hash, spec)| {
                specs.insert((key, hash), spec);
            }),
            "place" => read_place(&rec).and_then(|p| {
                let spec = specs.get(&(p.job.clone(), p.hash.clone())).ok_or_else(|| {
                    format!(
                        "no spec record for job {} (hash {}) before it",
                        p.job, p.hash
                    )
                })?;
                port_slots(&p.ports, &spec.resources.ports)
                    .map_err(|e| format!("{}: {e}", p.task))?;
                places.push(p);
                Ok(())
            }),
            "update" => read_update(&rec).map(|u| updates.push(u)),
            "cron" => read_cron(&rec).map(|c| crons.push(c)),
            "forget" => read_forget(&rec).map(|f| forgets.push(f)),
            _ => {
                others.push(rec);
                continue;
            }
        };
        if let Err(e) = checked {
            errors.push(format!("line {}: {e}", rec.line));
        }
    }
    crate::exit::refuse_batch("launch", &errors, "records", "nothing was started")?;
    Ok(Read {
        places,
        specs,
        updates,
        crons,
        forgets,
        others,
    })
}

/// The specs the state still names: those its tasks were placed with, and those of each
/// job's rollout (the one to go back to, and the current update's two).
fn named_specs(view: &View) -> std::collections::HashSet<u64> {
    let mut named: std::collections::HashSet<u64> =
        view.tasks.iter().map(|(_, t)| t.spec).collect();
    for (_, j) in view.jobs.iter() {
        named.insert(j.rollout.stable);
        if let Some(u) = &j.rollout.update {
            named.extend([u.from, u.to]);
        }
    }
    named
}

/// What launch read: placements, the specs they name, updates, and lines to pass on.
struct Read {
    places: Vec<Placement>,
    specs: Specs,
    updates: Vec<UpdateRecord>,
    crons: Vec<CronRecord>,
    forgets: Vec<Forget>,
    others: Vec<Record>,
}

/// An `update` record: a job's rollout as pack read it, and as pack would leave it.
struct UpdateRecord {
    job: String,
    was: Rollout,
    rollout: Rollout,
}

fn read_update(rec: &Record) -> Result<UpdateRecord, String> {
    let f = rec.get();
    f.only(&["type", "job", "was", "rollout"])?;
    let job = f.str("job")?.ok_or("field \"job\" is missing")?;
    check_job_key(job).map_err(|e| format!("field \"job\": {e}"))?;
    let field = |name: &str| {
        let v = rec
            .fields
            .get(name)
            .ok_or(format!("field \"{name}\" is missing"))?;
        Rollout::from_json(v).map_err(|e| format!("field \"{name}\": {e}"))
    };
    Ok(UpdateRecord {
        job: job.to_string(),
        was: field("was")?,
        rollout: field("rollout")?,
    })
}

/// Commits each update whose job's rollout is still the one pack decided on (an event),
/// and refuses the others (a conflict: the next pass decides again).
fn record_updates(tx: &mut Txn, updates: &[UpdateRecord]) -> Vec<Value> {
    let mut out = Vec::new();
    for u in updates {
        let found = tx.view().jobs.find(&u.job);
        let current = found.and_then(|j| tx.view().jobs.get(j)).cloned();
        match current {
            Some(mut job) if job.rollout == u.was => {
                job.rollout = u.rollout.clone();
                tx.upsert(job);
                out.push(update_event(&u.job, &u.rollout, tx.now()));
            }
            _ => out.push(json!({"type":"conflict","job":u.job,
                                 "reason":"its update moved on since the pass read it"})),
        }
    }
    out
}

/// The event of a job's update taking a step.
pub(crate) fn update_event(job: &str, r: &Rollout, now: f64) -> Value {
    let mut e = json!({"type":"event","job":job,"ts":now,"update":null});
    if let Some(u) = &r.update {
        e["update"] = json!(u.phase.name());
        e["from"] = json!(crate::rollout::hash_text(u.from));
        e["to"] = json!(crate::rollout::hash_text(u.to));
        e["done"] = json!(u.done);
        if u.why != crate::rollout::Why::None {
            e["reason"] = json!(u.why.words());
        }
    }
    e
}

/// A `cron` record: a batch or cron job's runs as pack read them, and as pack would leave
/// them (`cron::plan`).
struct CronRecord {
    job: String,
    step: Step,
    was: Runs,
    runs: Runs,
}

fn read_cron(rec: &Record) -> Result<CronRecord, String> {
    let f = rec.get();
    f.only(&["type", "job", "step", "was", "runs"])?;
    let job = f.str("job")?.ok_or("field \"job\" is missing")?;
    check_job_key(job).map_err(|e| format!("field \"job\": {e}"))?;
    let step = f.str("step")?.ok_or("field \"step\" is missing")?;
    let step =
        Step::from_name(step).ok_or_else(|| format!("field \"step\": {step:?} is unknown"))?;
    let runs = |name: &str| {
        let v = rec
            .fields
            .get(name)
            .ok_or(format!("field \"{name}\" is missing"))?;
        Runs::deserialize(v).map_err(|e| format!("field \"{name}\": {e}"))
    };
    let (was, runs) = (runs("was")?, runs("runs")?);
    // Counters of runs go forward only: the metrics count on it.
    if runs.runs < was.runs || runs.missed < was.missed || runs.cancelled < was.cancelled {
        return Err("field \"runs\": its counts are below those of \"was\"".into());
    }
    Ok(CronRecord {
        job: job.to_string(),
        step,
        was,
        runs,
    })
}

/// Commits each job's runs that are still what pack read (an event), and refuses the
/// others (a conflict: another pass or `job run` changed them; the next pass decides
/// again). A job the state has no record of yet gets one: a cron job is filed when its
/// schedule is first seen, before it has placed anything.
fn record_runs(tx: &mut Txn, crons: &[CronRecord]) -> Vec<Value> {
    let mut out = Vec::new();
    for c in crons {
        let found = tx.view().jobs.find(&c.job);
        let mut job = match found.and_then(|j| tx.view().jobs.get(j)) {
            Some(job) => job.clone(),
            None => Job {
                key: c.job.clone(),
                ports: Vec::new(),
                announce: None,
                rollout: Rollout::default(),
                runs: Runs::default(),
                counts: Default::default(),
            },
        };
        if job.runs != c.was {
            out.push(json!({"type":"conflict","job":c.job,
                             "reason":"its runs moved on since the pass read them"}));
            continue;
        }
        job.runs = c.runs.clone();
        tx.upsert(job);
        out.push(run_event(&c.job, c.step, &c.was, &c.runs, tx.now()));
    }
    out
}

/// The event of a job's runs taking a step: the run now current, and what this step
/// missed or cancelled.
pub(crate) fn run_event(job: &str, step: Step, was: &Runs, runs: &Runs, now: f64) -> Value {
    json!({"type":"event","job":job,"ts":now,"cron":step.name(),"run":runs.current,
           "manual":runs.manual,"missed":runs.missed.saturating_sub(was.missed),
           "cancelled":runs.cancelled.saturating_sub(was.cancelled)})
}

/// A `forget` record: an ended task no job wants any more (at the incarnation pack saw),
/// or a removed job with no task left (`pack::retention`).
enum Forget {
    Task {
        job: String,
        instance: u32,
        incarnation: u32,
    },
    Job(String),
}

fn read_forget(rec: &Record) -> Result<Forget, String> {
    let f = rec.get();
    f.only(&["type", "task", "incarnation", "job"])?;
    match (f.str("task")?, f.str("job")?) {
        (Some(task), None) => {
            let (job, instance) = crate::reap::parse_task_id(task)?;
            let incarnation = f
                .count("incarnation", u32::MAX as u64)?
                .ok_or("field \"incarnation\" is missing")?;
            Ok(Forget::Task {
                job: job.to_string(),
                instance,
                incarnation: incarnation as u32,
            })
        }
        (None, Some(job)) => {
            check_job_key(job).map_err(|e| format!("field \"job\": {e}"))?;
            Ok(Forget::Job(job.to_string()))
        }
        _ => Err("a forget record names a task or a job".into()),
    }
}

/// Removes each task still at the ended incarnation pack saw, then each job with no task
/// left; what changed since is left for the next pass. The history keeps what they were.
fn record_forgets(tx: &mut Txn, forgets: &[Forget]) -> Vec<Value> {
    let mut out = Vec::new();
    let now = tx.now();
    for f in forgets {
        let Forget::Task {
            job,
            instance,
            incarnation,
        } = f
        else {
            continue;
        };
        let Some(slot) = task_slot(tx, job, *instance) else {
            continue;
        };
        let t = tx.view().tasks.get(slot).expect("a found slot");
        if t.incarnation == *incarnation && !t.state.holds_resources() {
            tx.remove::<Task>(slot);
            out.push(
                json!({"type":"event","task":format!("{job}/{instance}"),"ts":now,
                            "removed":true}),
            );
        }
    }
    let jobs: Vec<&String> = forgets
        .iter()
        .filter_map(|f| match f {
            Forget::Job(key) => Some(key),
            Forget::Task { .. } => None,
        })
        .collect();
    if jobs.is_empty() {
        return out;
    }
    let in_use: std::collections::HashSet<u32> =
        tx.view().tasks.iter().map(|(_, t)| t.job).collect();
    for key in jobs {
        match tx.view().jobs.find(key) {
            Some(slot) if !in_use.contains(&slot) => {
                tx.remove::<Job>(slot);
                out.push(json!({"type":"event","job":key,"ts":now,"removed":true}));
            }
            _ => {}
        }
    }
    out
}

fn read_spec(rec: &Record) -> Result<(String, String, JobSpec), String> {
    let f = rec.get();
    f.only(&["type", "job", "hash", "spec"])?;
    let key = f.str("job")?.ok_or("field \"job\" is missing")?;
    let hash = f.str("hash")?.ok_or("field \"hash\" is missing")?;
    let spec = f.object("spec")?.ok_or("field \"spec\" is missing")?;
    let job = crate::job::parse(spec, "spec record")?;
    if job.key != key || format!("{:016x}", job.hash) != hash {
        return Err(format!("the spec of job {key} does not hash to {hash}"));
    }
    Ok((key.to_string(), hash.to_string(), job))
}

/// The fields of a `place` record.
const PLACE_FIELDS: &[&str] = &[
    "type",
    "task",
    "job",
    "instance",
    "host",
    "cpus",
    "ram_mb",
    "disk_mb",
    "gpus",
    "ports",
    "spec",
    "incarnation",
    "run",
];

fn read_place(rec: &Record) -> Result<Placement, String> {
    let f = rec.get();
    f.only(PLACE_FIELDS)?;
    let job = f.str("job")?.ok_or("field \"job\" is missing")?;
    check_job_key(job).map_err(|e| format!("field \"job\": {e}"))?;
    let instance = f
        .count("instance", u32::MAX as u64)?
        .ok_or("field \"instance\" is missing")? as u32;
    let task = f.str("task")?.ok_or("field \"task\" is missing")?;
    if task != format!("{job}/{instance}") {
        return Err(format!("field \"task\": {task:?} is not {job}/{instance}"));
    }
    let host = f.str("host")?.ok_or("field \"host\" is missing")?;
    crate::host::check_name(host).map_err(|e| format!("field \"host\": {e}"))?;
    let cpus = f.f64("cpus")?.ok_or("field \"cpus\" is missing")?;
    if !(0.0..=100_000.0).contains(&cpus) {
        return Err(format!("field \"cpus\": {cpus} is out of range"));
    }
    let mut ports = Vec::new();
    for (name, v) in f.object("ports")?.into_iter().flatten() {
        let port = v.as_u64().filter(|p| (1..=65535).contains(p));
        let port =
            port.ok_or_else(|| format!("field \"ports\": {name}: expected a port number"))?;
        ports.push((name.clone(), port as u16));
    }
    if ports.len() > MAX_PORTS {
        return Err(format!(
            "field \"ports\": {} ports; at most {MAX_PORTS}",
            ports.len()
        ));
    }
    let hash = f.str("spec")?.ok_or("field \"spec\" is missing")?;
    if hash.len() != 16 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("field \"spec\": {hash:?} is not a spec hash"));
    }
    let incarnation = f.count("incarnation", u32::MAX as u64)?;
    if incarnation == Some(0) {
        return Err("field \"incarnation\": incarnations count from 1".into());
    }
    Ok(Placement {
        task: task.to_string(),
        job: job.to_string(),
        instance,
        host: host.to_string(),
        cpus: millicores(cpus),
        ram_mb: f.count("ram_mb", crate::task::MB_MAX)?.unwrap_or(0),
        disk_mb: f.count("disk_mb", crate::task::MB_MAX)?.unwrap_or(0),
        gpus: f.count("gpus", 1 << 16)?.unwrap_or(0) as u32,
        ports,
        hash: hash.to_string(),
        incarnation: incarnation.map(|n| n as u32),
        run: f.count("run", u64::MAX)?.unwrap_or(0),
    })
}

fn task_slot(tx: &Txn, job: &str, instance: u32) -> Option<u32> {
    let j = tx.view().jobs.find(&job.to_string())?;
    tx.view().tasks.find(&(j, instance))
}

/// The job as the state keeps it, for a placement of `spec`. Tasks keep their ports by
/// position in the job's list of port names, and instances of an earlier spec may still run
/// when a new one renames or reorders its ports: so a name keeps its position, a new name
/// takes a position no live instance holds a port at (or a new one), and no position a live
/// instance uses is ever given another name.
fn job_record(view: &View, spec: &JobSpec) -> Result<Job, String> {
    let wanted = &spec.resources.ports;
    let old = view
        .jobs
        .find(&spec.key)
        .and_then(|j| Some((j, view.jobs.get(j)?)));
    let names = match old {
        None => wanted.clone(),
        Some((_, old)) if old.ports == *wanted => old.ports.clone(),
        Some((j, old)) => {
            let mut held = [false; MAX_PORTS];
            for (_, t) in view.tasks.iter() {
                if t.job == j && t.state.holds_resources() {
                    for (h, &port) in held.iter_mut().zip(&t.ports) {
                        *h |= port != 0;
                    }
                }
            }
            // Positions neither held nor wanted are free (an empty name).
            let mut names: Vec<String> = old
                .ports
                .iter()
                .zip(held)
                .map(|(n, h)| {
                    if h || wanted.contains(n) {
                        n.clone()
                    } else {
                        String::new()
                    }
                })
                .collect();
            for name in wanted {
                if names.contains(name) {
                    continue;
                }
                match names.iter().position(String::is_empty) {
                    Some(free) => names[free] = name.clone(),
                    None if names.len() < MAX_PORTS => names.push(name.clone()),
                    None => {
                        return Err(format!(
                            "job {}: its port names changed while instances of the earlier \
                             spec run, and together they are more than {MAX_PORTS}",
                            spec.key
                        ))
                    }
                }
            }
            while names.last().is_some_and(String::is_empty) {
                names.pop();
            }
            names
        }
    };
    let announce = spec.announce.as_ref().map(|a| Announce {
        path: a.path.clone(),
        primary: names
            .iter()
            .position(|n| *n == wanted[a.primary as usize])
            .unwrap_or(0) as u8,
    });
    Ok(Job {
        key: spec.key.clone(),
        ports: names,
        announce,
        // Its updates and runs are the passes' to change (`update` and `cron` records),
        // not a placement's.
        rollout: old.map(|(_, j)| j.rollout.clone()).unwrap_or_default(),
        runs: old.map(|(_, j)| j.runs.clone()).unwrap_or_default(),
        counts: old.map(|(_, j)| j.counts).unwrap_or_default(),
    })
}

/// The job slot a task of `spec` holding `ports` is recorded under (the job record brought
/// up to `spec` first, see `job_record`), and its ports as the task record keeps them.
pub(crate) fn file_under_job(
    tx: &mut Txn,
    spec: &JobSpec,
    ports: &[(String, u16)],
) -> Result<(u32, [u16; MAX_PORTS]), String> {
    let record = job_record(tx.view(), spec)?;
    let slots = port_slots(ports, &record.ports)?;
    let job = match tx.view().jobs.find(&spec.key) {
        Some(j) if *tx.view().jobs.get(j).unwrap() == record => j,
        _ => tx.upsert(record),
    };
    Ok((job, slots))
}

/// The ports in the order of the job's port names, as a task record keeps them.
fn port_slots(ports: &[(String, u16)], names: &[String]) -> Result<[u16; MAX_PORTS], String> {
    let mut slots = [0; MAX_PORTS];
    for (name, port) in ports {
        let i = names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| format!("port {name} is not one the job names"))?;
        slots[i] = *port;
    }
    Ok(slots)
}

/// What the state says a placement may become.
struct Admitted {
    host: u32,
    incarnation: u32,
    /// Failures of the earlier incarnations (the restart policy counts on).
    failures: u16,
}

/// Whether a placement, decided on an earlier view of the state, still holds in this one
/// (Omega's optimistic concurrency): the task has no live incarnation and is still at the
/// one the decision saw, it is not backing off, and its host is there, takes work and has
/// the room and ports. Err says why not.
fn admit(view: &View, usage: &[Usage], p: &Placement, now: f64) -> Result<Admitted, String> {
    let previous = view
        .jobs
        .find(&p.job)
        .and_then(|j| view.tasks.find(&(j, p.instance)))
        .and_then(|s| view.tasks.get(s));
    let current = previous.map_or(0, |t| t.incarnation);
    if let Some(t) = previous.filter(|t| t.state.holds_resources()) {
        let on = view
            .hosts
            .get(t.host)
            .map_or("a removed host", |h| h.name.as_str());
        return Err(format!(
            "incarnation {current} is {} on {on}",
            t.state.name()
        ));
    }
    if let Some(n) = p.incarnation.filter(|&n| Some(n) != current.checked_add(1)) {
        return Err(format!(
            "placed as incarnation {n} on an out-of-date view: the task is at incarnation \
             {current} now"
        ));
    }
    let run = view.jobs.find(&p.job).and_then(|j| view.jobs.get(j));
    let run = run.map_or(0, |j| j.runs.current);
    if p.run != run {
        return Err(format!(
            "placed for run {} of the job; its current run is {run}",
            p.run
        ));
    }
    if let Some(t) = previous.filter(|t| t.state == TaskState::Throttled && t.not_before > now) {
        return Err(format!("backing off for {:.1} s more", t.not_before - now));
    }
    let h = view
        .hosts
        .find(&p.host)
        .ok_or_else(|| format!("no host {} in the state", p.host))?;
    let host = view.hosts.get(h).unwrap();
    if !host.maintenance.mode.takes_work() {
        return Err(format!(
            "host {} is {}",
            p.host,
            host.maintenance.mode.name()
        ));
    }
    if host.liveness.life != crate::host::Life::Up {
        return Err(format!("host {} is {}", p.host, host.liveness.life.name()));
    }
    let free = usage::free(host, &usage[h as usize]);
    let short = |what: &str, free: String, asked: String| {
        Err(format!(
            "host {} has {free} {what} free, {asked} asked",
            p.host
        ))
    };
    if p.cpus as u64 > free.cpus {
        return short("cpus", num(free.cpus), num(p.cpus as u64));
    }
    for (what, free, asked) in [
        ("ram_mb", free.ram_mb, p.ram_mb),
        ("disk_mb", free.disk_mb, p.disk_mb),
        ("gpus", free.gpus, p.gpus as u64),
    ] {
        if asked > free {
            return short(what, free.to_string(), asked.to_string());
        }
    }
    for (name, port) in &p.ports {
        if !free.ports.iter().any(|&(lo, hi)| (lo..=hi).contains(port)) {
            return Err(format!(
                "port {port} ({name}) is not free on host {}",
                p.host
            ));
        }
    }
    Ok(Admitted {
        host: h,
        incarnation: current + 1,
        // An update's count starts afresh: a new spec, or one an update stopped (going
        // back, or placed again when its new spec found no room), has failed nothing yet;
        // and so does a new run.
        failures: previous
            .filter(|t| t.spec == p.spec_hash() && t.reason != Reason::Replaced)
            .filter(|t| t.run == p.run)
            .map_or(0, |t| t.failures),
    })
}

/// Millicores as cores, for people.
fn num(milli: u64) -> String {
    crate::host::cores(milli.min(u32::MAX as u64) as u32).to_string()
}

/// Records every placement that still holds ASSIGNED, with its reservation, as a new
/// incarnation of its task started by this launch (`me`). Returns the incarnation recorded
/// for each placement (None where it did not hold) and a conflict record for each that did
/// not.
fn record_intents(
    tx: &mut Txn,
    places: &[Placement],
    specs: &Specs,
    me: (u32, u32),
) -> Result<(Vec<Option<u32>>, Vec<Value>)> {
    let mut usage = usage::by_host(tx.view());
    let now = tx.now();
    let mut incarnations = Vec::with_capacity(places.len());
    let mut conflicts = Vec::new();
    for p in places {
        let admitted = match admit(tx.view(), &usage, p, now) {
            Ok(a) => a,
            Err(reason) => {
                conflicts
                    .push(json!({"type":"conflict","task":p.task,"host":p.host,"reason":reason}));
                incarnations.push(None);
                continue;
            }
        };
        // Checked when the records were read.
        let spec = &specs[&(p.job.clone(), p.hash.clone())];
        let (job, ports) = match file_under_job(tx, spec, &p.ports) {
            Ok(filed) => filed,
            Err(reason) => {
                conflicts
                    .push(json!({"type":"conflict","task":p.task,"host":p.host,"reason":reason}));
                incarnations.push(None);
                continue;
            }
        };
        let mut t = Task::new(job, p.instance);
        t.spec = p.spec_hash();
        t.failures = admitted.failures;
        t.host = admitted.host;
        t.state = TaskState::Assigned;
        t.reason = Reason::None;
        t.cpus = p.cpus;
        t.ram_mb = p.ram_mb;
        t.disk_mb = p.disk_mb;
        t.gpus = p.gpus;
        t.ports = ports;
        t.since = now;
        t.incarnation = admitted.incarnation;
        t.launcher = me;
        t.run = p.run;
        usage[admitted.host as usize].add(&t);
        tx.upsert(t);
        incarnations.push(Some(admitted.incarnation));
    }
    Ok((incarnations, conflicts))
}

/// The environment variable a task finds its port `name` in: FORMIC_PORT_NAME.
pub(crate) fn port_variable(name: &str) -> String {
    format!("FORMIC_PORT_{}", name.to_uppercase().replace('-', "_"))
}

/// What the supervisor runs: the job's argv with `{{port.NAME}}`, `{{instance}}`,
/// `{{task}}` and `{{host}}` filled in, its environment plus FORMIC_TASK, FORMIC_INSTANCE,
/// FORMIC_HOST and FORMIC_PORT_NAME (and only what --pass-env names of launch's own),
/// its user, and its health check on the port it names.
fn resolve(cli: &Cli, i: &Intent, job: &JobSpec) -> Result<Spec> {
    let p = i.place;
    let fill = |s: &str| {
        let mut out = s
            .replace("{{instance}}", &p.instance.to_string())
            .replace("{{task}}", &p.task)
            .replace("{{host}}", &p.host);
        for (name, port) in &p.ports {
            out = out.replace(&format!("{{{{port.{name}}}}}"), &port.to_string());
        }
        out
    };
    let cmd: Vec<String> = job.cmd.iter().map(|a| fill(a)).collect();
    let argv = if job.shell {
        vec!["/bin/sh".to_string(), "-c".to_string(), cmd.join(" ")]
    } else {
        cmd
    };
    let mut env: Vec<(String, String)> = Vec::new();
    for name in &cli.pass_env {
        if let Ok(v) = std::env::var(name) {
            env.push((name.clone(), v));
        }
    }
    for (k, v) in &job.env {
        env.push((k.clone(), fill(v)));
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()));
    }
    env.push(("FORMIC_TASK".into(), p.task.clone()));
    env.push(("FORMIC_INSTANCE".into(), p.instance.to_string()));
    env.push(("FORMIC_HOST".into(), p.host.clone()));
    for (name, port) in &p.ports {
        env.push((port_variable(name), port.to_string()));
    }
    // A job that names no user gets an identity of its own (root only with --allow-root).
    let as_root = nix::unistd::Uid::effective().is_root();
    let user = job.user.clone();
    let dynamic_ids = (user.is_none() && as_root && !cli.allow_root).then_some(cli.uid_range);
    let health = job.health.as_ref().map(|h| {
        let (port, path, cmd) = match &h.check {
            Check::Http { port, path } => {
                let number = p.ports.iter().find(|(n, _)| n == port).map_or(0, |x| x.1);
                (number, path.clone(), Vec::new())
            }
            Check::Cmd(argv) => (0, "/".to_string(), argv.iter().map(|a| fill(a)).collect()),
        };
        Health {
            port,
            path,
            cmd,
            interval_s: h.interval_s,
            timeout_s: h.timeout_s,
            failures: h.failures,
        }
    });
    Ok(Spec {
        task: p.task.clone(),
        incarnation: i.incarnation,
        run: p.run,
        argv,
        env,
        user,
        dynamic_ids,
        allow_root: cli.allow_root,
        grace_s: cli.grace,
        log_max_bytes: 16 << 20,
        log_group: Some(cli.log_group.clone()),
        health,
        limits: crate::limits::Limits {
            cpus: p.cpus,
            ram_mb: p.ram_mb,
            pids: match job.resources.pids {
                0 => crate::limits::DEFAULT_PIDS,
                n => n,
            },
        },
    })
}
