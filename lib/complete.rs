//! Shell completion of the names a cluster holds: host names, job keys and task ids, read
//! from the state when the shell asks (clap_complete's dynamic completion: the scripts in
//! `completions/` call the tool back with `FORMIC_COMPLETE` set, see `cli::main`).
//!
//! The shell's command line is not parsed for `--state`: the state is FORMIC_STATE's, else
//! the default one. A state that cannot be read completes nothing.

use std::ffi::OsStr;

use clap_complete::engine::{ArgValueCompleter, CompletionCandidate};

use crate::cli::StateArgs;
use crate::state::{State, View};

/// The environment variable that makes a tool answer its shell's completion request.
pub const VAR: &str = "FORMIC_COMPLETE";

/// Completes host names.
pub fn hosts() -> ArgValueCompleter {
    ArgValueCompleter::new(|current: &OsStr| names(current, host_names))
}

/// Completes job keys.
pub fn jobs() -> ArgValueCompleter {
    ArgValueCompleter::new(|current: &OsStr| names(current, job_keys))
}

/// Completes task ids.
pub fn tasks() -> ArgValueCompleter {
    ArgValueCompleter::new(|current: &OsStr| names(current, task_ids))
}

/// Completes job keys, task ids and host names (`job history`).
pub fn any() -> ArgValueCompleter {
    ArgValueCompleter::new(|current: &OsStr| {
        names(current, |v| {
            let mut all = job_keys(v);
            all.extend(task_ids(v));
            all.extend(host_names(v));
            all
        })
    })
}

/// The names `of` the state that start with what the shell has so far, in order.
fn names(current: &OsStr, of: fn(&View) -> Vec<String>) -> Vec<CompletionCandidate> {
    let Some(prefix) = current.to_str() else {
        return Vec::new();
    };
    let state = StateArgs {
        state: std::env::var_os("FORMIC_STATE").map(Into::into),
    };
    // A TAB is answered at once or not at all: never after waiting out writers.
    let quick = crate::state::Options {
        lock_timeout: std::time::Duration::from_millis(200),
        ..Default::default()
    };
    let Ok(state) = State::open_with(&state.path(), quick, false) else {
        return Vec::new();
    };
    let mut found: Vec<String> = of(state.view())
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect();
    found.sort();
    found.dedup();
    found.into_iter().map(CompletionCandidate::new).collect()
}

fn host_names(v: &View) -> Vec<String> {
    v.hosts.iter().map(|(_, h)| h.name.clone()).collect()
}

fn job_keys(v: &View) -> Vec<String> {
    v.jobs.iter().map(|(_, j)| j.key.clone()).collect()
}

fn task_ids(v: &View) -> Vec<String> {
    v.tasks
        .iter()
        .filter_map(|(_, t)| Some(format!("{}/{}", v.jobs.get(t.job)?.key, t.instance)))
        .collect()
}
