//! Supervisors at work that the state does not run: found by walking the local hosts'
//! task directories, and stopped like any task.

use anyhow::Result;
use std::path::{Path, PathBuf};

use super::decide::{Event, Facts};
use super::engine::{kill_leftovers, now, Reaper};
use super::input::find_task;
use crate::process;
use crate::rundir;
use crate::state::View;
use crate::task::TaskState;

/// A supervisor found in a local host's task directory.
struct Found {
    host: String,
    id: String,
    dir: PathBuf,
    status: rundir::Status,
}

/// Every supervisor at work under the local hosts' run roots that has reported (one that
/// has not yet is left for a later pass: it cannot be told apart from a start under way).
fn supervisors(run_root: &Path) -> Vec<Found> {
    let mut found = Vec::new();
    for (host, root) in rundir::subdirs(run_root) {
        for (id, dir) in rundir::task_dirs(&root) {
            if !rundir::supervised(&dir).unwrap_or(false) {
                continue;
            }
            if let Ok(Some(status)) = rundir::Status::read(&dir) {
                found.push(Found {
                    host: host.clone(),
                    id,
                    dir,
                    status,
                });
            }
        }
    }
    found
}

/// Whether the state runs the incarnation that supervisor runs, on its host.
fn accounted(view: &View, s: &Found) -> bool {
    let Some(t) = find_task(view, &s.id).and_then(|slot| view.tasks.get(slot)) else {
        return false;
    };
    let here = view.hosts.get(t.host).is_some_and(|h| h.name == s.host);
    t.state.holds_resources() && here && s.status.incarnation.is_none_or(|n| n == t.incarnation)
}

impl Reaper {
    /// Nothing runs that the state does not know: a supervisor whose incarnation the state
    /// does not run on its host (two passes placed the task at once before launch refused
    /// the loser, a host removed with --force, a state restored from a backup) is stopped
    /// like any task, SIGTERM first and SIGKILL with its cgroups after its grace.
    pub(super) fn stop_strays(&mut self) -> Result<()> {
        let found = supervisors(&rundir::run_root(&self.path));
        if found.is_empty() {
            return Ok(());
        }
        // Judged on the state as it is after the walk: launch records an incarnation
        // before it starts its supervisor, so every supervisor found that the state runs
        // is in this view.
        self.state.refresh()?;
        let now = now();
        for s in found {
            if !accounted(self.state.view(), &s) {
                self.stop_stray(&s, now)?;
            }
        }
        self.out.flush()
    }

    fn stop_stray(&mut self, s: &Found, now: f64) -> Result<()> {
        use nix::sys::signal::Signal;
        let why = match s.status.incarnation {
            Some(n) => format!("the state does not run incarnation {n} on {}", s.host),
            None => format!("the state does not run it on {}", s.host),
        };
        let event = if s.status.state == "KILLING" {
            let facts = Facts::of(&s.dir, None);
            if now < facts.stop_deadline(s.status.since) {
                return Ok(());
            }
            let group = s.status.pid.map_or(Ok(false), process::kill_group);
            let supervisor = process::signal(s.status.supervisor, Signal::SIGKILL);
            if let Err(e) = group
                .and(supervisor)
                .and_then(|_| kill_leftovers(&s.id, &s.dir))
            {
                self.note(format!("task {} on {}: {e}", s.id, s.host));
            }
            let mut e = Event::new(TaskState::Killed);
            e.exit = Some(-9);
            e.detail = Some(format!("{why}; it did not stop in time").into());
            e
        } else {
            match process::signal(s.status.supervisor, Signal::SIGTERM) {
                Ok(true) => {}
                Ok(false) => return Ok(()), // gone meanwhile
                Err(e) => {
                    self.note(format!("task {} on {}: {e}", s.id, s.host));
                    return Ok(());
                }
            }
            let mut e = Event::new(TaskState::Killing);
            e.detail = Some(why.into());
            e
        };
        self.out.event(&s.id, &s.host, &event, now)
    }
}
