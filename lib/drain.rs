//! `offer drain --dry-run` and `--wait`: what the next pass would do on hosts put under a
//! drain (pack's own decision, made on the current state, offers and job files), and
//! waiting for the passes to empty them.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{json, Value};

use crate::cli::{self, OutputArgs};
use crate::exit::{fail, Status};
use crate::pack::Decision;
use crate::records::Writer;
use crate::state::State;
use crate::task::NO_HOST;

/// Per instance on `hosts`: whether the next pass would stop it now, where its replacement
/// would go, or why it would wait. Done when every instance would move now, Partial when
/// some would wait.
pub fn dry_run(
    state: &State,
    path: &Path,
    hosts: &[String],
    jobs: &Path,
    output: &OutputArgs,
) -> Result<Status> {
    let rows = verdicts(state, path, hosts, jobs)?;
    let mut out = Writer::stdout();
    if output.human() {
        let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
        let table: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    text(&r["task"]),
                    text(&r["host"]),
                    if r["stop"] == true { "now" } else { "waits" }.into(),
                    text(&r["to"]),
                    text(&r["why"]),
                ]
            })
            .collect();
        out.text(&cli::table(
            &["TASK", "HOST", "STOP", "REPLACEMENT", "WHY"],
            &table,
        ))?;
    } else {
        for r in &rows {
            out.record(r)?;
        }
    }
    out.finish()?;
    Ok(if rows.iter().all(|r| r["stop"] == true) {
        Status::Done
    } else {
        Status::Partial
    })
}

/// The `drain` rows of a dry run: per instance on `hosts`, its task, host, whether the
/// next pass stops it (`stop`), where its replacement goes (`to`), and `why`.
fn verdicts(state: &State, path: &Path, hosts: &[String], jobs: &Path) -> Result<Vec<Value>> {
    let view = state.view();
    crate::offer::slots_of(view, hosts)?;
    let offers = crate::offer::offers_but(view, hosts)?;
    let (input, outcome) = crate::pack::preview_drain(path, &[jobs.to_path_buf()], hosts, &offers)?;
    let mut placed: HashMap<String, &str> = HashMap::new();
    for d in &outcome.decisions {
        if let Decision::Place {
            job,
            instance,
            host,
            ..
        } = *d
        {
            let task = format!("{}/{instance}", input.jobs[job].key);
            placed.insert(task, &input.fleet.names[host as usize]);
        }
    }
    let host_of = task_hosts(state);
    let mut rows = Vec::new();
    for note in outcome.notes.iter().filter(|n| n["type"] == "drain") {
        let task = note["task"].as_str().unwrap_or_default();
        let Some(host) = host_of.get(task).filter(|h| hosts.contains(h)) else {
            continue;
        };
        let stop = note["stop"] == true;
        rows.push(json!({
            "type": "drain", "task": task, "host": host, "stop": stop,
            "to": if stop { json!(placed.get(task)) } else { Value::Null },
            "why": note["why"],
        }));
    }
    Ok(rows)
}

/// Each live task's host, by task id.
fn task_hosts(state: &State) -> HashMap<String, String> {
    let view = state.view();
    let mut out = HashMap::new();
    for (_, t) in view.tasks.iter() {
        if !t.state.holds_resources() || t.host == NO_HOST {
            continue;
        }
        if let (Some(job), Some(host)) = (view.jobs.get(t.job), view.hosts.get(t.host)) {
            out.insert(format!("{}/{}", job.key, t.instance), host.name.clone());
        }
    }
    out
}

/// How often `wait` asks whether the drain can go on at all.
const IMPOSSIBLE_EVERY: Duration = Duration::from_secs(5);
/// How many of those looks in a row must find it stuck for want of room.
const IMPOSSIBLE_LOOKS: u32 = 3;

/// Blocks until no task is left on `hosts` (the passes move them), showing how many are
/// left on a terminal. Done when drained by `deadline` (0: none), Partial past it (the
/// passes stopped the rest whatever the budgets); Temporary (75) after `limit` seconds.
/// With `jobs`, every few seconds a dry run asks whether what is left can move at all:
/// when nothing would and some of it waits for room elsewhere, three looks in a row,
/// Unavailable (69) naming those jobs (the drain goes on; its deadline stops them
/// regardless).
pub fn wait(
    path: &Path,
    hosts: &[String],
    deadline: f64,
    limit: Option<f64>,
    jobs: Option<&Path>,
) -> Result<Status> {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let (mut looked, mut stuck) = (Instant::now(), 0);
    loop {
        let left = tasks_left(path, hosts)?;
        let waited = started.elapsed().as_secs_f64();
        if left == 0 {
            if tty {
                eprint!("\r\x1b[K");
            }
            let past = deadline > 0.0 && crate::clock::now() > deadline;
            eprintln!(
                "offer: {} drained after {waited:.0} s{}",
                hosts.join(" "),
                if past { ", past the deadline" } else { "" }
            );
            return Ok(if past { Status::Partial } else { Status::Done });
        }
        if limit.is_some_and(|l| waited >= l) {
            if tty {
                eprint!("\r\x1b[K");
            }
            return Err(fail(
                Status::Temporary,
                format!(
                    "{left} tasks left on {} after {waited:.0} s; the drain goes on",
                    hosts.join(" ")
                ),
            ));
        }
        if let Some(jobs) = jobs.filter(|_| looked.elapsed() >= IMPOSSIBLE_EVERY) {
            looked = Instant::now();
            let rows = verdicts(&State::open(path)?, path, hosts, jobs)?;
            // Nothing would move, and some of it for want of room (the rest of those jobs
            // then waits for the budget those tries took).
            let blocked = rows.iter().all(|r| r["stop"] == false);
            stuck = if blocked && rows.iter().any(waits_for_room) {
                stuck + 1
            } else {
                0
            };
            if stuck >= IMPOSSIBLE_LOOKS {
                if tty {
                    eprint!("\r\x1b[K");
                }
                return Err(fail(
                    Status::Unavailable,
                    format!(
                        "no room elsewhere for the replacements of {}; the drain goes on, \
                         and its deadline stops them regardless",
                        jobs_of(rows.iter().filter(|r| waits_for_room(r))).join(", ")
                    ),
                ));
            }
        }
        if tty {
            eprint!(
                "\r\x1b[Koffer: {left} tasks left on {} ({waited:.0} s)",
                hosts.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn waits_for_room(row: &Value) -> bool {
    row["stop"] == false && row["why"].as_str().is_some_and(|w| w.contains("no room"))
}

/// The jobs of dry-run rows, each once.
fn jobs_of<'a>(rows: impl Iterator<Item = &'a Value>) -> Vec<&'a str> {
    let mut jobs: Vec<&str> = rows
        .filter_map(|r| Some(r["task"].as_str()?.rsplit_once('/')?.0))
        .collect();
    jobs.sort();
    jobs.dedup();
    jobs
}

/// How many tasks hold room on `hosts` now.
fn tasks_left(path: &Path, hosts: &[String]) -> Result<u32> {
    let state = State::open(path)?;
    let view = state.view();
    let usage = crate::usage::by_host(view);
    let slots = crate::offer::slots_of(view, hosts)?;
    Ok(slots.iter().map(|&s| usage[s as usize].tasks).sum())
}

/// One job's verdict in a probe of hosts.
struct Verdict {
    job: String,
    instances: u32,
    /// Its live instances on the hosts probed.
    on_hosts: u32,
    /// Down now (not available), anywhere.
    down: u32,
    max_down: u32,
    /// Down were the hosts drained at once.
    down_after: u32,
    /// When it would be safe, in seconds from now (0: now); None when waiting alone does
    /// not make it safe (too many of its instances on the hosts, or some failing).
    safe_in: Option<f64>,
}

/// `offer probe`: per job with instances on `hosts`, how many would go down were they all
/// drained at once, whether its budget allows that now, and when it would (Aurora's
/// sla_probe_hosts). Done when every job is safe now, Partial otherwise.
pub fn probe(state: &State, hosts: &[String], jobs: &Path, output: &OutputArgs) -> Result<Status> {
    let view = state.view();
    let slots = crate::offer::slots_of(view, hosts)?;
    let read = crate::job::read_all(&[jobs.to_path_buf()]);
    crate::exit::refuse_batch(
        "offer",
        &read.errors,
        "job files, lines or jobs",
        "nothing was probed",
    )?;
    let specs: HashMap<&str, &crate::job::JobSpec> =
        read.jobs.iter().map(|j| (j.key.as_str(), j)).collect();
    let now = crate::clock::now();
    // Each job's live tasks: (on the hosts, serving, healthy since).
    let mut by_job: std::collections::BTreeMap<&str, Vec<(bool, bool, f64)>> = Default::default();
    for (_, t) in view.tasks.iter() {
        let Some(job) = view.jobs.get(t.job) else {
            continue;
        };
        if !t.state.holds_resources() {
            continue;
        }
        let serving = crate::sla::is_serving(t.state, t.healthy);
        let on = slots.contains(&t.host);
        by_job
            .entry(job.key.as_str())
            .or_default()
            .push((on, serving, t.healthy_since));
    }
    let mut verdicts = Vec::new();
    for (key, tasks) in by_job {
        let on_hosts = tasks.iter().filter(|t| t.0).count() as u32;
        if on_hosts == 0 {
            continue;
        }
        let (sla, desired) = match specs.get(key) {
            Some(spec) => (spec.sla, spec.instances),
            None => (crate::job::Sla::default(), tasks.len() as u32),
        };
        let available_at = |t: &(bool, bool, f64)| t.1.then_some(t.2 + sla.healthy_for_s);
        let down_at = |when: f64, drained: bool| {
            let up = tasks
                .iter()
                .filter(|t| !(drained && t.0) && available_at(t).is_some_and(|a| a <= when))
                .count() as u32;
            desired.saturating_sub(up)
        };
        let max_down = crate::sla::max_down(&sla, desired);
        // Safe once the serving instances off the hosts have matured, if then.
        let matured = tasks
            .iter()
            .filter(|t| !t.0)
            .filter_map(available_at)
            .fold(now, f64::max);
        let safe_in = if down_at(now, true) <= max_down {
            Some(0.0)
        } else if down_at(matured, true) <= max_down {
            Some(matured - now)
        } else {
            None
        };
        verdicts.push(Verdict {
            job: key.to_string(),
            instances: desired,
            on_hosts,
            down: down_at(now, false),
            max_down,
            down_after: down_at(now, true),
            safe_in,
        });
    }
    let mut out = Writer::stdout();
    if output.human() {
        let rows: Vec<Vec<String>> = verdicts
            .iter()
            .map(|v| {
                vec![
                    v.job.clone(),
                    format!("{}/{}", v.on_hosts, v.instances),
                    v.down.to_string(),
                    format!("{}/{}", v.down_after, v.max_down),
                    if v.safe_in == Some(0.0) { "yes" } else { "no" }.into(),
                    v.safe_in
                        .map_or("not by waiting".into(), |s| format!("{s:.0} s")),
                ]
            })
            .collect();
        out.text(&cli::table(
            &[
                "JOB",
                "ON_HOSTS",
                "DOWN",
                "DOWN_AFTER/MAX",
                "SAFE",
                "SAFE_IN",
            ],
            &rows,
        ))?;
    } else {
        for v in &verdicts {
            out.record(&json!({
                "type": "probe", "job": v.job, "instances": v.instances,
                "on_hosts": v.on_hosts, "down": v.down, "max_down": v.max_down,
                "down_after": v.down_after, "safe": v.safe_in == Some(0.0),
                "safe_in_s": v.safe_in,
            }))?;
        }
    }
    out.finish()?;
    Ok(if verdicts.iter().all(|v| v.safe_in == Some(0.0)) {
        Status::Done
    } else {
        Status::Partial
    })
}
