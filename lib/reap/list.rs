//! `reap tasks`: the tasks as the state has them.

use anyhow::Result;
use serde_json::{json, Map, Value};

use crate::cli::{self, OutputArgs};
use crate::exit::{bad_input, Status};
use crate::records;
use crate::state::State;
use crate::task::{check_job_key, Reason, Task, TaskState};

pub(super) fn list(
    state: &State,
    jobs: &[String],
    hosts: &[String],
    states: &[TaskState],
    output: &OutputArgs,
) -> Result<Status> {
    let view = state.view();
    // One rule for names, as `offer hosts` and `reap kill` have it: an unknown one is an
    // error, not an empty listing.
    for key in jobs {
        check_job_key(key).map_err(bad_input)?;
        view.jobs
            .find(key)
            .ok_or_else(|| bad_input(format!("no job {key}")))?;
    }
    for name in hosts {
        view.hosts
            .find(name)
            .ok_or_else(|| bad_input(format!("no host named {name:?}")))?;
    }
    let mut rows: Vec<(&str, u32, &Task)> = Vec::new();
    for (_, t) in view.tasks.iter() {
        let Some(job) = view.jobs.get(t.job) else {
            continue;
        };
        let host = view.hosts.get(t.host).map(|h| h.name.as_str());
        if (!jobs.is_empty() && !jobs.contains(&job.key))
            || (!hosts.is_empty() && !host.is_some_and(|h| hosts.iter().any(|x| x == h)))
            || (!states.is_empty() && !states.contains(&t.state))
        {
            continue;
        }
        rows.push((job.key.as_str(), t.instance, t));
    }
    rows.sort_by(|a, b| a.0.cmp(b.0).then(a.1.cmp(&b.1)));
    let mut out = records::Writer::stdout();
    let ports_of = |t: &Task| -> Vec<(String, u16)> {
        let names = &view.jobs.get(t.job).unwrap().ports;
        names
            .iter()
            .zip(t.ports)
            .filter(|(_, p)| *p != 0)
            .map(|(n, p)| (n.clone(), p))
            .collect()
    };
    let exit_of = Task::exit_status;
    let reason_of = |t: &Task| (t.reason != Reason::None).then(|| t.reason.text());
    if output.human() {
        let table: Vec<Vec<String>> = rows
            .iter()
            .map(|(key, i, t)| {
                let ports: Vec<String> = ports_of(t)
                    .iter()
                    .map(|(n, p)| format!("{n}={p}"))
                    .collect();
                vec![
                    format!("{key}/{i}"),
                    view.hosts
                        .get(t.host)
                        .map_or("-".into(), |h| h.name.clone()),
                    t.state.name().into(),
                    if t.pid == 0 {
                        "-".into()
                    } else {
                        t.pid.to_string()
                    },
                    if ports.is_empty() {
                        "-".into()
                    } else {
                        ports.join(",")
                    },
                    if t.state == TaskState::Running {
                        if t.healthy { "yes" } else { "no" }.into()
                    } else {
                        "-".into()
                    },
                    t.failures.to_string(),
                    exit_of(t).map_or("-".into(), |x| x.to_string()),
                    reason_of(t).unwrap_or("-").into(),
                ]
            })
            .collect();
        out.text(&cli::table(
            &[
                "TASK", "HOST", "STATE", "PID", "PORTS", "HEALTHY", "FAILURES", "EXIT", "REASON",
            ],
            &table,
        ))?;
    } else {
        for (key, i, t) in &rows {
            let ports: Map<String, Value> = ports_of(t)
                .into_iter()
                .map(|(n, p)| (n, json!(p)))
                .collect();
            let rec = json!({
                "type": "task",
                "task": format!("{key}/{i}"),
                "job": key,
                "instance": i,
                "host": view.hosts.get(t.host).map(|h| h.name.clone()),
                "state": t.state.name(),
                "pid": (t.pid != 0).then_some(t.pid),
                "ports": ports,
                "healthy": t.healthy,
                // When it entered its state, and last turned healthy (an update's watch).
                "since": t.since,
                "healthy_since": (t.healthy_since != 0.0).then_some(t.healthy_since),
                "announced": t.announced,
                "failures": t.failures,
                "exit": exit_of(t),
                "reason": reason_of(t),
                // The version of the job it runs (what `roll status` counts by).
                "spec": (t.spec != 0).then(|| crate::rollout::hash_text(t.spec)),
                // The run of a batch or cron job it belongs to (`job runs`).
                "run": t.run,
                "incarnation": t.incarnation,
            });
            out.record(&rec)?;
        }
    }
    out.finish()?;
    Ok(Status::Done)
}
