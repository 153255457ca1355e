//! `job metrics`: the cluster as a Prometheus text file, for node_exporter's textfile
//! collector (written beside the others under a temporary name and renamed, so a scrape
//! never reads half a file; no timestamps, as the collector wants).
//!
//! Jobs and hosts are labels, never parts of a metric's name. Gauges are read from the state
//! as it is; counters come from the job records (`crate::counts`, `cron::Runs`), which the
//! commits of every tool keep, so they survive one-shot tools and crashes. What only a pass
//! knows (its pending instances and their reasons, its duration and status) comes from the
//! pass: `scripts/reconcile --metrics FILE` runs `job metrics` as its last step.

use std::collections::{BTreeMap, HashMap, HashSet};

use foldhash::fast::RandomState as Fast;
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::exit::bad_input;
use crate::job::JobSpec;
use crate::state::View;
use crate::task::{Job, TaskState};

/// What only the pass knows: when it started and how it ended.
pub struct Pass {
    pub started: f64,
    pub status: i32,
}

/// Everything one file shows.
pub struct Sources<'a> {
    pub view: &'a View,
    /// The job files' jobs, and how many jobs, lines or files they refused.
    pub specs: &'a [JobSpec],
    pub refused: usize,
    /// The pass's pending instances: (job, the reason most hosts gave).
    pub pending: Option<&'a [(String, String)]>,
    pub pass: Option<Pass>,
    pub now: f64,
}

/// The reason a pending record gives most (by hosts refusing for it; of those tied, the
/// first it names), for each pending record among `text`'s JSON lines; other records
/// are passed over. `from` names the text in errors.
pub fn pending_reasons(text: &str, from: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: &str| bad_input(format!("{from}:{}: {why}", n + 1));
        let rec: Value = serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
        if rec["type"] != "pending" {
            continue;
        }
        let job = rec["job"]
            .as_str()
            .ok_or_else(|| bad("a pending record without a job"))?;
        let reasons = rec["reasons"]
            .as_object()
            .ok_or_else(|| bad("a pending record without reasons"))?;
        let mut main: Option<(&str, u64)> = None;
        for (why, hosts) in reasons {
            let hosts = hosts
                .as_u64()
                .ok_or_else(|| bad("a reason's hosts are not a count"))?;
            if main.is_none_or(|(_, most)| hosts > most) {
                main = Some((why, hosts));
            }
        }
        let reason = match main.map_or("no host offered", |(why, _)| why) {
            // One series for every backoff, not one for each time one ends.
            why if why.starts_with("throttled until ") => "throttled",
            why => why,
        };
        out.push((job.to_string(), reason.to_string()));
    }
    Ok(out)
}

/// The Prometheus text of `from`.
pub fn render(from: &Sources) -> Result<String> {
    let mut out = Text::default();
    tasks(&mut out, from);
    jobs(&mut out, from);
    counters(&mut out, from.view);
    hosts(&mut out, from.view)?;
    if let Some(pass) = &from.pass {
        out.family(
            "formic_pass_duration_seconds",
            "gauge",
            "How long the last reconciliation pass took.",
        );
        out.sample(&[], (from.now - pass.started).max(0.0));
        out.family(
            "formic_last_pass_timestamp_seconds",
            "gauge",
            "When the last reconciliation pass ended (Unix time).",
        );
        out.sample(&[], from.now);
        out.family(
            "formic_last_pass_status",
            "gauge",
            "The exit status of the last reconciliation pass (0: every step did its work).",
        );
        out.sample(&[], pass.status as f64);
    }
    Ok(out.0)
}

/// Task records by job and state, as `reap tasks` lists them.
fn tasks(out: &mut Text, from: &Sources) {
    let view = from.view;
    // Counted by job slot and state code: a million tasks are counted without a string
    // compared; the jobs are put in order once.
    let mut by = vec![[0u64; crate::task::STATES.len()]; view.jobs.high_water()];
    let mut orphans = [0u64; crate::task::STATES.len()];
    for (_, t) in view.tasks.iter() {
        let counts = by.get_mut(t.job as usize).unwrap_or(&mut orphans);
        counts[t.state as usize] += 1;
    }
    let mut rows: Vec<(&str, [u64; crate::task::STATES.len()])> = view
        .jobs
        .iter()
        .map(|(slot, j)| (j.key.as_str(), by[slot as usize]))
        .chain(std::iter::once(("?", orphans)))
        .filter(|(_, n)| n.iter().any(|&c| c > 0))
        .collect();
    rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.family(
        "formic_tasks",
        "gauge",
        "Task records in the state, by job and state (what `reap tasks` lists).",
    );
    let mut states = crate::task::STATES;
    states.sort_by_key(|s| s.name());
    for (job, n) in rows {
        for state in states.iter().filter(|s| n[**s as usize] > 0) {
            out.sample(
                &[("job_key", job), ("state", state.name())],
                n[*state as usize] as f64,
            );
        }
    }
}

/// Per job of the job files: desired, running, healthy; and the pass's pending instances.
fn jobs(out: &mut Text, from: &Sources) {
    let view = from.view;
    // Each job of the files once (a version an update places comes after the job's own):
    // desired, running, healthy.
    let mut rows: Vec<(&str, [u64; 3])> = Vec::new();
    let mut seen: HashSet<&str, Fast> = HashSet::default();
    let mut by_slot: HashMap<u32, (u32, usize), Fast> = HashMap::default();
    for spec in from.specs.iter().filter(|s| seen.insert(s.key.as_str())) {
        if let Some(slot) = view.jobs.find(&spec.key) {
            by_slot.insert(slot, (spec.instances, rows.len()));
        }
        rows.push((&spec.key, [spec.instances as u64, 0, 0]));
    }
    // One pass over the tasks, counting as `job status` does: the instances a job asks for.
    for (_, t) in view.tasks.iter() {
        match by_slot.get(&t.job) {
            Some(&(n, row)) if t.instance < n && t.state == TaskState::Running => {
                rows[row].1[1] += 1;
                rows[row].1[2] += t.healthy as u64;
            }
            _ => {}
        }
    }
    rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let helps = [
        (
            "formic_job_desired_instances",
            "Instances the job files ask of each job.",
        ),
        (
            "formic_job_running_instances",
            "Instances of each job that are RUNNING.",
        ),
        (
            "formic_job_healthy_instances",
            "Instances of each job that are RUNNING and pass their health check.",
        ),
    ];
    for (i, (name, help)) in helps.into_iter().enumerate() {
        out.family(name, "gauge", help);
        for (job, row) in &rows {
            out.sample(&[("job_key", job)], row[i] as f64);
        }
    }
    out.family(
        "formic_job_file_errors",
        "gauge",
        "Jobs, lines or files of the job files that were refused (each is reported by the pass).",
    );
    out.sample(&[], from.refused as f64);
    if let Some(pending) = from.pending {
        let mut by: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for (job, reason) in pending {
            *by.entry((job, reason)).or_default() += 1;
        }
        out.family(
            "formic_job_pending_instances",
            "gauge",
            "Instances the last pass left pending, by job and the reason most hosts gave.",
        );
        for ((job, reason), n) in by {
            out.sample(&[("job_key", job), ("reason", reason)], n as f64);
        }
    }
}

/// A counter of a job record: its name, help, value, and whether only jobs with runs (a
/// batch or cron job that has had one, or a schedule) have it.
type Counter = (&'static str, &'static str, fn(&Job) -> u64, bool);

const COUNTERS: [Counter; 8] = [
    (
        "formic_placements_total",
        "Incarnations of each job's tasks placed.",
        |j| j.counts.placed,
        false,
    ),
    (
        "formic_restarts_total",
        "Instances placed again in the same run after they failed, finished or were lost.",
        |j| j.counts.restarted,
        false,
    ),
    (
        "formic_task_failures_total",
        "Runs of each job's tasks that ended as failures (FAILED, or THROTTLED after failing).",
        |j| j.counts.failed,
        false,
    ),
    (
        "formic_tasks_lost_total",
        "Incarnations of each job's tasks LOST with their host or supervisor.",
        |j| j.counts.lost,
        false,
    ),
    (
        "formic_preemptions_total",
        "Incarnations of each job's tasks preempted for a higher tier.",
        |j| j.counts.preempted,
        false,
    ),
    (
        "formic_cron_runs_total",
        "Runs of each batch or cron job started, by schedule or by hand.",
        |j| j.runs.runs,
        true,
    ),
    (
        "formic_cron_missed_runs_total",
        "Scheduled times of each cron job passed over (a backlog, or past the starting deadline).",
        |j| j.runs.missed,
        true,
    ),
    (
        "formic_cron_cancelled_runs_total",
        "Runs not started because the last was still going (collision cancel_new).",
        |j| j.runs.cancelled,
        true,
    ),
];

/// What happened to each job's tasks and runs, counted by the commits that made it.
fn counters(out: &mut Text, view: &View) {
    let mut jobs: Vec<&Job> = view.jobs.iter().map(|(_, j)| j).collect();
    jobs.sort_by(|a, b| a.key.cmp(&b.key));
    for (name, help, get, runs_only) in COUNTERS {
        out.family(name, "counter", help);
        let has = |j: &&&Job| !runs_only || j.runs != crate::cron::Runs::default();
        for j in jobs.iter().filter(has) {
            out.sample(&[("job_key", &j.key)], get(j) as f64);
        }
    }
}

/// Hosts by maintenance and liveness, and the cluster's capacity, as `offer hosts
/// --summary` shows them.
fn hosts(out: &mut Text, view: &View) -> Result<()> {
    let scopes = crate::offer::summary(view, &[], &[])?;
    let cluster = &scopes[0].tally;
    out.family(
        "formic_hosts",
        "gauge",
        "Hosts by maintenance (as `offer hosts` shows it) and liveness.",
    );
    for ((maintenance, liveness), n) in cluster.conditions() {
        out.sample(
            &[("maintenance", maintenance), ("liveness", liveness)],
            *n as f64,
        );
    }
    out.family(
        "formic_hosts_offered",
        "gauge",
        "Hosts a pass offers work to: up and not draining or drained.",
    );
    out.sample(&[], cluster.offered() as f64);
    // The units Prometheus wants: cores and bytes.
    const MIB: f64 = (1u64 << 20) as f64;
    type InUnit = fn(u64) -> f64;
    let resources: [(&str, &str, InUnit); 4] = [
        ("cpus", "core", |millicores| millicores as f64 / 1000.0),
        ("ram", "byte", |mb| mb as f64 * MIB),
        ("disk", "byte", |mb| mb as f64 * MIB),
        ("gpus", "integer", |n| n as f64),
    ];
    let [capacity, reserved, free] = cluster.amounts();
    let families = [
        (
            "formic_resource_capacity",
            "What the hosts have, by resource.",
            capacity,
        ),
        (
            "formic_resource_reserved",
            "What the tasks on the hosts hold, by resource.",
            reserved,
        ),
        (
            "formic_resource_free",
            "What is left on the hosts, by resource.",
            free,
        ),
    ];
    for (name, help, amounts) in families {
        out.family(name, "gauge", help);
        for ((resource, unit, in_unit), amount) in resources.iter().zip(amounts) {
            out.sample(&[("resource", resource), ("unit", unit)], in_unit(amount));
        }
    }
    Ok(())
}

/// The text format: families one after another, each with its HELP and TYPE.
#[derive(Default)]
struct Text(String, String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        self.1 = name.to_string();
        let help = help.replace('\\', r"\\").replace('\n', r"\n");
        // Writing to a String cannot fail.
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// A sample of the family last begun. Prometheus keeps every value as a float; so
    /// does this, which also writes whole numbers without a fraction.
    fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(&self.1);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (name, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                self.0.push_str(name);
                self.0.push_str("=\"");
                escape_into(&mut self.0, value);
                self.0.push('"');
            }
            self.0.push('}');
        }
        // Whole numbers (counts, bytes) as integers: itoa is several times faster than a
        // float's formatting, and a large file has a million of them.
        if value.fract() == 0.0 && value.abs() < 9e15 {
            self.0.push(' ');
            self.0.push_str(itoa::Buffer::new().format(value as i64));
            self.0.push('\n');
        } else {
            let _ = writeln!(self.0, " {value}");
        }
    }
}

/// A label value as the text format quotes it: `\\`, `"` and newlines escaped.
fn escape_into(out: &mut String, value: &str) {
    if !value.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        out.push_str(value); // job keys and host names, always
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str(r"\n"),
            c => out.push(c),
        }
    }
}

/// Writes `text` to `path` whole or not at all: into a new file beside it, flushed, then
/// renamed over it, so a scrape reads the last file or this one.
pub fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| bad_input(format!("--out {}: not a file name", path.display())))?;
    // A dot first: the collector reads only `*.prom` files, and never this one.
    let temp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        // A name left by a process of the same pid that died: not ours to trust, removed.
        let _ = std::fs::remove_file(&temp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&temp)?;
        // Readable by the collector's user whatever the umask.
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.write_all(text.as_bytes())?;
        f.sync_data()?;
        std::fs::rename(&temp, path)
    };
    write()
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&temp);
        })
        .with_context(|| format!("writing the metrics to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_instance_is_counted_under_the_reason_most_hosts_gave() {
        let text = concat!(
            r#"{"type":"event","task":"a/b/c/0","state":"RUNNING"}"#,
            "\n",
            r#"{"type":"pending","job":"a/b/c","instance":1,"reasons":{"insufficient cpus":3,"insufficient ram_mb":9}}"#,
            "\n",
            r#"{"type":"pending","job":"a/b/c","instance":2,"reasons":{"limit host:1":4,"quota":4}}"#,
            "\n",
            r#"{"type":"pending","job":"a/b/d","instance":0,"reasons":{}}"#,
            "\n",
            r#"{"type":"pending","job":"a/b/d","instance":1,"reasons":{"throttled until 1796413322":1}}"#,
            "\n"
        );
        let got = pending_reasons(text, "launched").unwrap();
        let want = [
            ("a/b/c", "insufficient ram_mb"),
            ("a/b/c", "limit host:1"),
            ("a/b/d", "no host offered"),
            ("a/b/d", "throttled"),
        ];
        let got: Vec<(&str, &str)> = got.iter().map(|(j, r)| (j.as_str(), r.as_str())).collect();
        assert_eq!(got, want);
        let err = pending_reasons("{\"type\":\"pending\"}\n", "launched").unwrap_err();
        assert_eq!(
            err.to_string(),
            "launched:1: a pending record without a job"
        );
    }

    #[test]
    fn label_values_are_escaped_and_families_come_whole() {
        let mut out = Text::default();
        out.family("formic_x", "gauge", "Back\\slash.");
        out.sample(&[("reason", "constraint \"rack\" \\ a\nb")], 2.0);
        out.sample(&[], 0.5);
        assert_eq!(
            out.0,
            "# HELP formic_x Back\\\\slash.\n# TYPE formic_x gauge\n\
             formic_x{reason=\"constraint \\\"rack\\\" \\\\ a\\nb\"} 2\nformic_x 0.5\n"
        );
    }
}
