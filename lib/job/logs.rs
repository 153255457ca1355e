//! `job logs`: a task's output, from the host it ran on, whichever run it was.
//!
//! The run is found in the state (the task's current incarnation and host) or, for an
//! earlier one, in the history (the host each incarnation was placed on, and the run of a
//! batch or cron job it belonged to). Its log is read in pieces through the host's
//! transport, the same for this machine and for a host reached over ssh (`runlogs`).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use crate::exit::{bad_input, fail, Status};
use crate::runlogs::Stream;
use crate::state::{State, View};
use crate::transport::LogRead;

/// Which run of a task: its current one, an incarnation, or a batch or cron job's run.
#[derive(Clone, Copy, Debug)]
pub enum Which {
    Current,
    Incarnation(u32),
    Run(u64),
}

/// How often a follower asks for more.
const POLL: Duration = Duration::from_millis(250);

pub fn logs(path: &Path, task: &str, which: Which, stream: Stream, follow: bool) -> Result<Status> {
    crate::reap::parse_task_id(task).map_err(bad_input)?;
    let state = State::open(path)?;
    let (host_name, incarnation) = locate(path, state.view(), task, which)?;
    let host = state
        .view()
        .hosts
        .find(&host_name)
        .and_then(|s| state.view().hosts.get(s))
        .ok_or_else(|| {
            bad_input(format!(
                "{task} #{incarnation} ran on {host_name}, which is no longer in the state"
            ))
        })?;
    let reached = crate::transport::reach(path, host)?;
    let mut read = LogRead {
        task: task.to_string(),
        incarnation,
        stream,
        from: None,
    };
    let mut out = std::io::stdout().lock();
    loop {
        let piece = reached
            .read_log(&read)
            .map_err(|e| fail(Status::Unavailable, format!("{host_name}: {e}")))?
            .map_err(|why| fail(Status::BadInput, format!("{task} #{incarnation}: {why}")))?;
        if piece.skipped {
            eprintln!("job logs: {task} #{incarnation}: output was rotated away while reading");
        }
        out.write_all(&piece.bytes)?;
        read.from = piece.next;
        if piece.more {
            continue;
        }
        if !follow || !piece.live {
            break;
        }
        out.flush()?;
        std::thread::sleep(POLL);
    }
    out.flush()?;
    Ok(Status::Done)
}

/// The host and incarnation of the run asked for.
fn locate(path: &Path, view: &View, task: &str, which: Which) -> Result<(String, u32)> {
    let (key, instance) = crate::reap::parse_task_id(task).map_err(bad_input)?;
    let current = view
        .jobs
        .find(&key.to_string())
        .and_then(|j| view.tasks.find(&(j, instance)))
        .and_then(|s| view.tasks.get(s))
        .filter(|t| t.incarnation > 0);
    // A run's host is in the state while its task holds one; once freed (pending again,
    // throttled, lost), the history has where that incarnation ran.
    let where_ran = |t: &crate::task::Task| match view.hosts.get(t.host) {
        Some(h) => Ok((h.name.clone(), t.incarnation)),
        None => from_history(path, view.txid, task, Which::Incarnation(t.incarnation)),
    };
    match (which, current) {
        (Which::Current, Some(t)) => where_ran(t),
        (Which::Current, None) => Err(bad_input(format!("no task {task} has been placed"))),
        (Which::Incarnation(n), Some(t)) if t.incarnation == n => where_ran(t),
        (Which::Run(r), Some(t)) if t.run == r => where_ran(t),
        (which, _) => from_history(path, view.txid, task, which),
    }
}

/// The latest placement the history has of the incarnation or run asked for.
fn from_history(path: &Path, txid: u64, task: &str, which: Which) -> Result<(String, u32)> {
    let mut found = None;
    crate::state::history::Reader::new(path).read(txid, |line| {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            return;
        };
        if v["task"] != task {
            return;
        }
        let (Some(host), Some(n)) = (
            v["host"].as_str(),
            v["incarnation"]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok()),
        ) else {
            return;
        };
        let wanted = match which {
            Which::Incarnation(i) => n == i,
            // A batch job's first run is 0, which lines leave out.
            Which::Run(r) => v["run"].as_u64().unwrap_or(0) == r,
            Which::Current => false,
        };
        if wanted {
            found = Some((host.to_string(), n));
        }
    })?;
    found.ok_or_else(|| {
        let what = match which {
            Which::Incarnation(n) => format!("incarnation {n}"),
            Which::Run(r) => format!("run {r}"),
            Which::Current => "a run".into(),
        };
        bad_input(format!("{task}: no {what} in the state or its history"))
    })
}
