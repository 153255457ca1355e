//! `offer rebuild`: the task table of a lost or corrupt state, rebuilt from the hosts.
//!
//! The hosts' task directories are the truth about what runs: each holds the spec its
//! supervisor runs (with the task's reservation and ports), the job spec it was placed
//! from, what the supervisor last reported, whether a supervisor is at work, and the fence
//! past which the next incarnation must start. After the hosts are added again (`offer add`
//! from the host file), the rebuild asks every host for its task directories in one call
//! each, takes the fleet over (an epoch past every one the hosts have seen, so a scheduler
//! still holding the old state can no longer act), and records in one transaction:
//!
//! - each task with a supervisor at work, as it runs: its host, incarnation, pid,
//!   reservation, ports and spec; where two hosts run one task id (a partition healed
//!   without the state), the later incarnation, and reap stops the other as a stray;
//! - each task with none, as its last run ended (a finished batch task stays finished),
//!   at the latest incarnation any host fenced, so that its next start is not refused.
//!
//! The job spec each task runs is kept again beside the state (`specstore`). Jobs come
//! from the job files, as always: the next pass places what is missing and changes
//! nothing else.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;

use crate::exit::{fail, Status};
use crate::job::JobSpec;
use crate::state::{State, Txn};
use crate::task::{Reason, Task, TaskState, MAX_PORTS};
use crate::transport::{self, fan_out, Held, Inventory};

/// What a rebuild recorded.
#[derive(Debug, Default, PartialEq)]
pub struct Rebuilt {
    pub hosts: usize,
    pub running: usize,
    pub ended: usize,
    /// Task directories left out: why, one line each.
    pub skipped: Vec<String>,
    pub epoch: u64,
}

/// Rebuilds the task table of the state at `path`, whose hosts are in it and whose tasks
/// are not, from every host's task directories.
pub fn rebuild(state: &mut State, path: &Path, parallel: usize) -> Result<Rebuilt> {
    refuse_tasks(state.view(), path)?;
    let view = state.view();
    let hosts: Vec<(u32, String)> = view
        .hosts
        .iter()
        .map(|(slot, h)| (slot, h.name.clone()))
        .collect();
    if hosts.is_empty() {
        return Err(fail(
            Status::Usage,
            format!(
                "{} holds no hosts: add them first (offer add < HOSTS)",
                path.display()
            ),
        ));
    }
    let reached = hosts
        .iter()
        .map(|(slot, _)| transport::reach(path, view.hosts.get(*slot).unwrap()))
        .collect::<Result<Vec<_>>>()?;
    let answers = fan_out(&reached, parallel, |host| host.inventory());
    let mut inventories = Vec::new();
    let mut silent = Vec::new();
    for ((slot, name), answer) in hosts.iter().zip(answers) {
        match answer {
            Ok(inventory) => inventories.push((*slot, inventory)),
            Err(e) => silent.push(format!("{name} ({e})")),
        }
    }
    if !silent.is_empty() {
        return Err(fail(
            Status::Unavailable,
            format!(
                "hosts not reached, so what they run cannot be known: {}; nothing was \
                 recorded (retry, or remove them from the state first)",
                silent.join(", ")
            ),
        ));
    }
    let past = inventories.iter().map(|(_, i)| i.epoch).max().unwrap_or(0);
    let epoch = transport::take_over(path, past)?;
    let (tasks, skipped) = choose(inventories);
    // The specs the tasks run, kept again before a record names them (as launch keeps
    // them): an update's rollback and the comparison of a spec with the job file's
    // read them from the store, which was lost with the state.
    for c in &tasks {
        crate::specstore::keep(path, &c.job)?;
    }
    // Checked again under the write lock: two rebuilds at once record once.
    let (running, ended) = state.write(|tx| {
        refuse_tasks(tx.view(), path)?;
        record(tx, &tasks)
    })?;
    Ok(Rebuilt {
        hosts: hosts.len(),
        running,
        ended,
        skipped,
        epoch,
    })
}

/// A rebuild is for a state whose tasks were lost: one that holds tasks is refused.
fn refuse_tasks(view: &crate::state::View, path: &Path) -> Result<()> {
    if view.tasks.iter().next().is_some() {
        return Err(fail(
            Status::Usage,
            format!(
                "{} holds tasks: a rebuild is for a state whose tasks were lost (move a \
                 damaged state and its journal aside, then `offer add` the hosts)",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// One task id as the hosts show it: the directory that speaks for it (with its host's
/// slot and job spec), and the latest incarnation any host fenced for it.
#[derive(Debug)]
struct Chosen {
    host: u32,
    held: Held,
    job: JobSpec,
    fence: u32,
}

/// For every task id, the directory that speaks for it: one with a supervisor at work
/// (the latest incarnation if several), else the latest run. Directories whose job.json
/// or spec cannot be read are left out, each with a line saying why.
fn choose(inventories: Vec<(u32, Inventory)>) -> (Vec<Chosen>, Vec<String>) {
    let mut by_task: BTreeMap<String, Chosen> = BTreeMap::new();
    let mut skipped = Vec::new();
    for (host, inventory) in inventories {
        for held in inventory.held {
            let job = match held
                .job
                .as_deref()
                .map(|t| crate::job::parse_text(t, "job.json"))
            {
                Some(Ok(job)) => job,
                Some(Err(e)) => {
                    skipped.push(format!("{}: {e}", held.task));
                    continue;
                }
                None => {
                    skipped.push(format!("{}: no job.json", held.task));
                    continue;
                }
            };
            if is_live(&held) && held.spec.is_none() {
                skipped.push(format!("{}: a supervisor with no spec.json", held.task));
                continue;
            }
            let fence = held.fence.max(incarnation(&held));
            let candidate = Chosen {
                host,
                held,
                job,
                fence,
            };
            match by_task.get_mut(&candidate.held.task) {
                None => {
                    by_task.insert(candidate.held.task.clone(), candidate);
                }
                Some(kept) => {
                    let fence = kept.fence.max(candidate.fence);
                    if speaks_before(&candidate, kept) {
                        *kept = candidate;
                    }
                    kept.fence = fence;
                }
            }
        }
    }
    (by_task.into_values().collect(), skipped)
}

/// A supervisor at work that has reported: a task that runs (or is about to be collected).
fn is_live(h: &Held) -> bool {
    h.supervised && h.status.is_some()
}

fn incarnation(h: &Held) -> u32 {
    h.status
        .as_ref()
        .and_then(|s| s.incarnation)
        .or(h.spec.as_ref().map(|s| s.incarnation))
        .unwrap_or(0)
}

/// Whether `a` speaks for its task rather than `b`: a live run before an ended one, then
/// the later incarnation.
fn speaks_before(a: &Chosen, b: &Chosen) -> bool {
    (is_live(&a.held), incarnation(&a.held)) > (is_live(&b.held), incarnation(&b.held))
}

/// Records every chosen task; returns how many run and how many ended.
fn record(tx: &mut Txn, tasks: &[Chosen]) -> Result<(usize, usize)> {
    let (mut running, mut ended) = (0, 0);
    for c in tasks {
        let live = is_live(&c.held);
        let ports = if live { ports_of(c) } else { Vec::new() };
        let (job, port_slots) = crate::launch::file_under_job(tx, &c.job, &ports)
            .map_err(|e| fail(Status::BadInput, format!("{}: {e}", c.held.task)))?;
        let instance = crate::reap::parse_task_id(&c.held.task)
            .map_err(|e| fail(Status::BadInput, e))?
            .1;
        let mut t = Task::new(job, instance);
        t.host = c.host;
        t.spec = c.job.hash;
        t.run = c.held.spec.as_ref().map_or(0, |s| s.run);
        let status = c.held.status.as_ref();
        t.since = status.map_or(crate::clock::now(), |s| s.since);
        t.exit = status.and_then(|s| s.exit).unwrap_or(0);
        if live {
            let spec = c.held.spec.as_ref().expect("checked in choose");
            let status = status.expect("live");
            t.state = if status.state == "STARTING" {
                TaskState::Starting
            } else {
                TaskState::Running
            };
            t.incarnation = incarnation(&c.held);
            t.healthy = status.healthy.unwrap_or(false);
            // Since when is not on the host: from now, so no watch is cut short.
            t.healthy_since = if t.healthy { crate::clock::now() } else { 0.0 };
            (t.pid, t.pid_start) = status.pid.unwrap_or((0, 0));
            t.cpus = spec.limits.cpus;
            t.ram_mb = spec.limits.ram_mb;
            t.disk_mb = c.job.resources.disk_mb;
            t.gpus = c.job.resources.gpus;
            t.ports = port_slots;
            running += 1;
        } else {
            (t.state, t.reason) = match status.map(|s| s.state.as_str()) {
                Some("FINISHED") => (TaskState::Finished, Reason::Exited),
                Some("FAILED") => (TaskState::Failed, Reason::Exited),
                Some("KILLED") => (TaskState::Killed, Reason::None),
                _ => (TaskState::Lost, Reason::SupervisorGone),
            };
            t.incarnation = c.fence;
            ended += 1;
        }
        tx.upsert(t);
    }
    restore_runs(tx);
    Ok((running, ended))
}

/// A batch or cron job's runs, as far as its tasks tell: the latest run they name is the
/// current one (and its time acted on), so the next pass neither stops it nor starts it
/// again. The counts of runs missed and cancelled are not on the hosts: they start again.
fn restore_runs(tx: &mut Txn) {
    let mut latest: BTreeMap<u32, u64> = BTreeMap::new();
    for (_, t) in tx.view().tasks.iter().filter(|(_, t)| t.run != 0) {
        let run = latest.entry(t.job).or_default();
        *run = (*run).max(t.run);
    }
    for (slot, run) in latest {
        let Some(mut job) = tx.view().jobs.get(slot).cloned() else {
            continue;
        };
        job.runs = crate::cron::Runs {
            current: run,
            fired: run,
            runs: 1,
            ..Default::default()
        };
        tx.upsert(job);
    }
}

/// The ports a live task holds, by the job's names: launch gave each to the task in its
/// environment (FORMIC_PORT_NAME), which spec.json keeps.
fn ports_of(c: &Chosen) -> Vec<(String, u16)> {
    let Some(spec) = &c.held.spec else {
        return Vec::new();
    };
    c.job
        .resources
        .ports
        .iter()
        .take(MAX_PORTS)
        .filter_map(|name| {
            let variable = crate::launch::port_variable(name);
            let (_, value) = spec.env.iter().find(|(k, _)| *k == variable)?;
            Some((name.clone(), value.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervise::Spec;
    use crate::taskdir::Status;

    const JOB: &str = r#"{"job":"t/e/web","instances":2,"cmd":["true"],
        "resources":{"cpus":0.5,"ram_mb":64,"ports":["http"]}}"#;

    fn held(task: &str, incarnation: u32, fence: u32, supervised: bool, state: &str) -> Held {
        let spec = format!(
            r#"{{"task":"{task}","incarnation":{incarnation},"argv":["true"],
                "env":{{"FORMIC_PORT_HTTP":"31007"}}}}"#
        );
        Held {
            task: task.into(),
            fence,
            supervised,
            status: Some(Status {
                task: task.into(),
                incarnation: Some(incarnation),
                supervisor: (100, 1),
                pid: Some((101, 2)),
                state: state.into(),
                exit: None,
                signal: None,
                since: 1.0,
                healthy: Some(true),
                health_failures: 0,
                reason: None,
                uid: None,
                limits: None,
                log_dropped: 0,
            }),
            spec: Some(Spec::parse(&spec).unwrap()),
            job: Some(JOB.into()),
        }
    }

    fn on(host: u32, held: Vec<Held>) -> (u32, Inventory) {
        (host, Inventory { epoch: 0, held })
    }

    #[test]
    fn a_live_run_speaks_for_its_task_and_the_latest_of_two_wins() {
        let (chosen, skipped) = choose(vec![
            on(0, vec![held("t/e/web/0", 3, 3, true, "RUNNING")]),
            on(1, vec![held("t/e/web/0", 5, 5, true, "RUNNING")]),
            on(2, vec![held("t/e/web/0", 7, 8, false, "KILLED")]),
        ]);
        assert!(skipped.is_empty());
        assert_eq!(chosen.len(), 1);
        assert_eq!((chosen[0].host, incarnation(&chosen[0].held)), (1, 5));
        // The next start goes past every fence a host holds for it.
        assert_eq!(chosen[0].fence, 8);
        assert_eq!(ports_of(&chosen[0]), vec![("http".to_string(), 31007)]);
    }

    #[test]
    fn an_ended_task_is_kept_at_its_latest_run_and_unreadable_ones_are_named() {
        let mut no_job = held("t/e/web/1", 1, 1, false, "FINISHED");
        no_job.job = None;
        let mut bad_job = held("t/e/web/2", 1, 1, false, "FINISHED");
        bad_job.job = Some("{".into());
        let (chosen, skipped) = choose(vec![
            on(0, vec![held("t/e/web/0", 2, 2, false, "FAILED"), no_job]),
            on(1, vec![held("t/e/web/0", 4, 4, false, "FINISHED"), bad_job]),
        ]);
        assert_eq!(chosen.len(), 1);
        assert_eq!(chosen[0].host, 1);
        assert_eq!(chosen[0].held.status.as_ref().unwrap().state, "FINISHED");
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(
            skipped[0].starts_with("t/e/web/1: no job.json"),
            "{skipped:?}"
        );
    }
}
