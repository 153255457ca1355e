//! What reap is asked to stop: `kill` and `preempt` records on standard input, and the
//! tasks, jobs and hosts named on its command line.

use std::collections::HashMap;
use std::io::BufRead;

use anyhow::Result;

use crate::exit::{bad_input, status_of, Status};
use crate::records::{self, Record};
use crate::state::View;
use crate::task::{check_job_key, Reason, Task, TaskState};

/// Why a task is being stopped; each cause has its own state while the stop is under way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// A `kill` record or `reap kill`.
    Kill,
    /// A `preempt` record: room for a task of a higher tier.
    Preempt,
    /// A `kill` record of a drain: its host is draining and its job's budget allows it.
    Drain,
    /// A `kill` record of a drain past its deadline.
    DrainDeadline,
    /// Its health check failed.
    Unhealthy,
    /// A `kill` record of an update: replaced by an instance of the new spec.
    Update,
}

impl Cause {
    pub(super) fn state(self) -> TaskState {
        match self {
            Cause::Kill | Cause::Unhealthy | Cause::Update => TaskState::Killing,
            Cause::Preempt => TaskState::Preempting,
            Cause::Drain | Cause::DrainDeadline => TaskState::Draining,
        }
    }

    /// The kind of record that asks for this stop.
    pub(super) fn record(self) -> &'static str {
        match self {
            Cause::Preempt => "preempt",
            _ => "kill",
        }
    }

    pub(super) fn reason(self) -> Reason {
        match self {
            Cause::Kill => Reason::Killed,
            Cause::Preempt => Reason::Preempted,
            Cause::Drain => Reason::Drained,
            Cause::DrainDeadline => Reason::DrainDeadline,
            Cause::Unhealthy => Reason::Unhealthy,
            Cause::Update => Reason::Replaced,
        }
    }
}

/// A `kill` or `preempt` record.
#[derive(Clone, Debug, PartialEq)]
pub struct StopRecord {
    pub line: u64,
    pub task: String,
    pub cause: Cause,
    /// For preempt: the host the victim was on when pack decided.
    pub host: Option<String>,
    /// The incarnation the stop was decided on: a later one is not stopped by it.
    pub incarnation: Option<u32>,
}

/// Reads every line; returns the stop records and the other lines to pass through. Every
/// bad line is reported and any bad line fails the whole input before anything is done.
pub fn read_input(input: impl BufRead) -> Result<(Vec<StopRecord>, Vec<String>)> {
    let mut stops = Vec::new();
    let mut others = Vec::new();
    let mut errors = Vec::new();
    for item in records::Reader::new(input) {
        let rec = match item {
            Ok(rec) => rec,
            Err(e) if status_of(&e) == Status::BadInput => {
                errors.push(format!("{e:#}"));
                continue;
            }
            Err(e) => return Err(e),
        };
        let cause = match rec.kind() {
            "kill" => Cause::Kill,
            "preempt" => Cause::Preempt,
            _ => {
                others.push(rec.raw);
                continue;
            }
        };
        match stop_record(&rec, cause) {
            Ok(s) => stops.push(s),
            Err(e) => errors.push(format!("line {}: {} record: {e}", rec.line, rec.kind())),
        }
    }
    crate::exit::refuse_batch("reap", &errors, "records", "nothing was changed")?;
    Ok((stops, others))
}

fn stop_record(rec: &Record, cause: Cause) -> Result<StopRecord, String> {
    let f = rec.get();
    let task = f.str("task")?.ok_or("field \"task\" is missing")?;
    parse_task_id(task).map_err(|e| format!("field \"task\": {e}"))?;
    // Present in pack's records; checked so a malformed one is caught, not ignored.
    let cause = match (cause, f.str("reason")?) {
        (Cause::Kill, Some("update")) => Cause::Update,
        (Cause::Kill, Some("drain")) => Cause::Drain,
        (Cause::Kill, Some("drain deadline")) => Cause::DrainDeadline,
        (c, _) => c,
    };
    f.str("for")?;
    let host = f.str("host")?.map(str::to_string);
    let incarnation = f.count("incarnation", u32::MAX as u64)?.map(|n| n as u32);
    Ok(StopRecord {
        line: rec.line,
        task: task.to_string(),
        cause,
        host,
        incarnation,
    })
}

/// `role/env/name/instance` → (job key, instance).
pub fn parse_task_id(id: &str) -> Result<(&str, u32), String> {
    let (job, instance) = id
        .rsplit_once('/')
        .filter(|_| id.split('/').count() == 4)
        .ok_or_else(|| format!("{id:?} is not role/env/name/instance"))?;
    check_job_key(job).map_err(|e| format!("{id:?}: {e}"))?;
    let n = instance
        .parse::<u32>()
        .ok()
        .filter(|_| !instance.starts_with('+') && (instance == "0" || !instance.starts_with('0')))
        .ok_or_else(|| format!("{id:?}: instance {instance:?} is not a whole number"))?;
    Ok((job, n))
}

pub(super) fn find_task(view: &View, id: &str) -> Option<u32> {
    let (job, instance) = parse_task_id(id).ok()?;
    let j = view.jobs.find(&job.to_string())?;
    view.tasks.find(&(j, instance))
}

pub(super) fn task_id(view: &View, t: &Task) -> String {
    match view.jobs.get(t.job) {
        Some(job) => format!("{}/{}", job.key, t.instance),
        None => format!("?{}/{}", t.job, t.instance),
    }
}

/// The tasks named on the command line, each of which must exist.
pub fn named(
    view: &View,
    tasks: &[String],
    jobs: &[String],
    hosts: &[String],
) -> Result<HashMap<u32, Cause>> {
    let mut out = HashMap::new();
    for id in tasks {
        parse_task_id(id).map_err(bad_input)?;
        let slot = find_task(view, id).ok_or_else(|| bad_input(format!("no task {id}")))?;
        out.insert(slot, Cause::Kill);
    }
    for key in jobs {
        check_job_key(key).map_err(bad_input)?;
        let j = view
            .jobs
            .find(key)
            .ok_or_else(|| bad_input(format!("no job {key}")))?;
        for (slot, t) in view.tasks.iter().filter(|(_, t)| t.job == j) {
            if t.state.holds_resources() {
                out.insert(slot, Cause::Kill);
            }
        }
    }
    for name in hosts {
        let h = view
            .hosts
            .find(name)
            .ok_or_else(|| bad_input(format!("no host named {name:?}")))?;
        for (slot, t) in view.tasks.iter().filter(|(_, t)| t.host == h) {
            if t.state.holds_resources() {
                out.insert(slot, Cause::Kill);
            }
        }
    }
    Ok(out)
}

/// The tasks that kill and preempt records name. A task that no longer exists or holds
/// nothing needs no stop; a stop decided on an incarnation that has since been
/// replaced, or a preempt for a task that has since moved to another host, is out of
/// date and ignored.
pub fn requested(view: &View, stops: &[StopRecord]) -> HashMap<u32, Cause> {
    let mut out = HashMap::new();
    for s in stops {
        let Some(slot) = find_task(view, &s.task) else {
            continue;
        };
        let t = view.tasks.get(slot).unwrap();
        if !t.state.holds_resources() {
            continue;
        }
        if let Some(n) = s.incarnation.filter(|&n| n != t.incarnation) {
            eprintln!(
                "reap: line {}: incarnation {n} of {} is gone (it is at {} now); {} \
                 ignored",
                s.line,
                s.task,
                t.incarnation,
                s.cause.record()
            );
            continue;
        }
        if let Some(h) = &s.host {
            let on = view.hosts.get(t.host).map(|h| h.name.as_str());
            if on != Some(h.as_str()) {
                eprintln!(
                    "reap: line {}: {} is no longer on {h}; preempt ignored",
                    s.line, s.task
                );
                continue;
            }
        }
        out.entry(slot).or_insert(s.cause);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_are_checked() {
        assert_eq!(parse_task_id("www/prod/hello/3"), Ok(("www/prod/hello", 3)));
        for bad in [
            "www/prod/hello",
            "www/prod/hello/x",
            "www/prod/hello/-1",
            "www/../x/0",
            "a/b/c/01",
            "a/b/c/+1",
        ] {
            assert!(parse_task_id(bad).is_err(), "{bad}");
        }
    }
}
