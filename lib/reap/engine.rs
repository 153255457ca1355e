//! reap's passes: look at the watched tasks' directories, decide, kill what must die before
//! the commit, commit every plan in one transaction, report, then signal the stops that were
//! recorded; `once` repeats passes until the stops are over, `follow` forever.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;

use super::decide::{decide, is_final, is_stopping, Act, Facts, Plan, Seen};
use super::input::{task_id, Cause};
use super::out::Out;
use super::{Timing, POLL};
use crate::exit::Status;
use crate::host::{Mode, Transport};
use crate::process;
use crate::rundir;
use crate::state::State;
use crate::task::{Task, TaskState};

/// With --follow, every task directory is looked at this often even when its status file
/// has not changed (a supervisor that dies without a word changes no file).
const SWEEP_TICKS: u32 = 20;

/// Looks at a task's directory. The order matters: a supervisor writes its final status
/// and only then lets go of the lock, and takes the lock before it writes anything; so a
/// free lock followed by a status that is not final, with the lock still free after, is a
/// supervisor that died without a word, never one that was just finishing or starting.
pub fn look(dir: &Path, t: &Task) -> Result<Seen> {
    let held = rundir::supervised(dir)?;
    let status = current_status(dir, t)?;
    if let Some(s) = &status {
        if is_final(s) {
            // A final word from a supervisor that is gone, while the lock is held: a new
            // supervisor has started and not yet written; the word is an earlier run's.
            if held && !process::same_process(s.supervisor.0, s.supervisor.1) {
                return Ok(Seen::Alive(None));
            }
            return Ok(Seen::Ended(status.unwrap()));
        }
    }
    if held {
        return Ok(Seen::Alive(status));
    }
    if rundir::supervised(dir)? {
        return Ok(Seen::Alive(current_status(dir, t)?));
    }
    Ok(match current_status(dir, t)? {
        Some(s) if is_final(&s) => Seen::Ended(s),
        other => Seen::Gone(other),
    })
}

/// The status file, if it speaks of the task's current incarnation: one left by an earlier
/// run in the same directory says nothing about this one, and one of this incarnation is
/// believed however old it is.
fn current_status(dir: &Path, t: &Task) -> Result<Option<rundir::Status>> {
    let s = rundir::Status::read(dir)?;
    Ok(s.filter(|s| match s.incarnation {
        Some(n) => n == t.incarnation,
        // From a supervisor older than incarnations: launch records ASSIGNED before it
        // starts the supervisor, so a status older than that record is an earlier run's.
        None => !(t.state == TaskState::Assigned && s.since < t.since),
    }))
}

/// Calls off the start of a task no supervisor has reported for: with the task's lock
/// held (no supervisor has it), and still no word from this incarnation, its spec is
/// removed, so a supervisor that takes the lock after us has nothing to run. Returns the
/// lock, to be held until the task's new record is committed; None when a supervisor got
/// there first.
fn call_off(dir: &Path, t: &Task) -> Option<std::fs::File> {
    // The directory may not be there yet (launch may be about to write it): made here, so
    // that launch finds the lock ours and then the start called off.
    let lock = rundir::create(dir)
        .and_then(|()| rundir::lock_file(dir))
        .ok()?;
    if !rundir::lock_exclusive(&lock, Duration::from_millis(20)) {
        return None;
    }
    if !matches!(current_status(dir, t), Ok(None)) {
        return None;
    }
    match std::fs::remove_file(dir.join("spec.json")) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => None,
        _ => Some(lock),
    }
}

/// Kills whatever the task left in its cgroups (children that called setsid, orphans of
/// a leader that exited: what its process group no longer reaches), once no supervisor
/// holds its lock: holding it ourselves proves the groups are nobody's. A supervisor that
/// holds it (again) owns them, and kills leftovers itself before it starts the task.
pub(super) fn kill_leftovers(task: &str, dir: &Path) -> Result<(), String> {
    let lock = rundir::lock_file(dir).map_err(|e| format!("{e:#}"))?;
    if !rundir::lock_exclusive(&lock, Duration::from_secs(1)) {
        return Ok(());
    }
    if crate::limits::kill_leftovers(task, dir) {
        Ok(())
    } else {
        Err("processes survive SIGKILL in its cgroups".into())
    }
}

pub(super) fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A task reap looks after: in a holding state on a local host.
struct Watch {
    slot: u32,
    task: Task,
    id: String,
    host: String,
    dir: PathBuf,
}

pub(super) struct Reaper {
    pub(super) state: State,
    pub(super) path: PathBuf,
    timing: Timing,
    pub(super) out: Out,
    /// Problems that did not stop the pass (reported on stderr; the exit status says 1).
    trouble: usize,
    /// What was reported already: a pass repeated every 50 ms says a thing once.
    told: HashSet<String>,
}

/// What a pass left to wait for: tasks still being stopped, with when their stop is due.
struct Pass {
    stopping: Vec<(u32, f64)>,
}

impl Reaper {
    pub(super) fn open(path: &Path, timing: Timing, human: bool) -> Result<Reaper> {
        if !path.exists() {
            State::open(path)?; // the usual message for a missing state
        }
        Ok(Reaper {
            state: State::open_writer(path)?,
            path: path.to_path_buf(),
            timing,
            out: Out {
                human,
                out: io::BufWriter::new(io::stdout()),
            },
            trouble: 0,
            told: HashSet::new(),
        })
    }

    pub(super) fn view(&self) -> &crate::state::View {
        self.state.view()
    }

    pub(super) fn note(&mut self, msg: impl std::fmt::Display) {
        let msg = msg.to_string();
        if !self.told.contains(&msg) {
            eprintln!("reap: {msg}");
            self.told.insert(msg);
        }
        self.trouble += 1;
    }

    /// Tasks in holding states on local hosts, and the stops that draining hosts ask for.
    fn watched(&mut self) -> (Vec<Watch>, HashSet<u32>) {
        let view = self.state.view();
        let mut watches = Vec::new();
        let mut draining = HashSet::new();
        let mut remote = 0;
        let mut roots: HashMap<u32, PathBuf> = HashMap::new();
        for (slot, t) in view.tasks.iter() {
            if !t.state.holds_resources() {
                continue;
            }
            let Some(host) = view.hosts.get(t.host) else {
                continue;
            };
            if host.transport != Transport::Local {
                remote += 1;
                continue;
            }
            if host.maintenance.mode == Mode::Draining {
                draining.insert(slot);
            }
            let id = task_id(view, t);
            let root = roots
                .entry(t.host)
                .or_insert_with(|| rundir::host_root(&self.path, &host.name));
            watches.push(Watch {
                slot,
                task: t.clone(),
                dir: rundir::task_dir(root, &id),
                id,
                host: host.name.clone(),
            });
        }
        if remote > 0 {
            self.note(format!(
                "{remote} tasks on hosts reached by ssh were not looked at (only local hosts \
                 are supported so far)"
            ));
        }
        (watches, draining)
    }

    /// One pass over the tasks that `only` selects: look, decide, kill what must die,
    /// commit, report, then start the stops that were recorded.
    fn pass(
        &mut self,
        requests: &HashMap<u32, Cause>,
        only: &mut dyn FnMut(&Watch) -> bool,
    ) -> Result<Pass> {
        let (watches, draining) = self.watched();
        let announcer = crate::announce::follower_alive(self.state.path());
        let now = now();
        let mut plans: Vec<(Watch, Plan)> = Vec::new();
        let mut stopping = Vec::new();
        for w in watches {
            let request = requests
                .get(&w.slot)
                .copied()
                .or(draining.contains(&w.slot).then_some(Cause::Drain));
            if request.is_none() && !only(&w) {
                continue;
            }
            let seen = match look(&w.dir, &w.task) {
                Ok(s) => s,
                Err(e) => {
                    self.note(format!("task {}: {e:#}", w.id));
                    continue;
                }
            };
            let ticks = match &seen {
                Seen::Alive(Some(s)) | Seen::Ended(s) | Seen::Gone(Some(s)) => s.pid.map(|p| p.1),
                _ => None,
            }
            .or((w.task.pid_start != 0).then_some(w.task.pid_start));
            let mut facts = Facts::of(&w.dir, ticks.and_then(process::started_at));
            facts.held = w.task.announced && announcer;
            facts.launcher_gone =
                w.task.state == TaskState::Assigned && !process::alive(w.task.launcher);
            let plan = decide(&w.task, &seen, request, &facts, now, &self.timing);
            let next = plan.as_ref().map_or(w.task.state, |p| p.task.state);
            if is_stopping(next) {
                let since = plan.as_ref().map_or(w.task.since, |p| p.task.since);
                stopping.push((w.slot, facts.stop_deadline(since)));
            }
            if let Some(plan) = plan {
                plans.push((w, plan));
            }
        }
        // Held until the commit: see `Plan::call_off`.
        let mut called_off = Vec::new();
        plans.retain(|(w, plan)| {
            !plan.call_off
                || call_off(&w.dir, &w.task)
                    .map(|lock| called_off.push(lock))
                    .is_some()
        });
        for (w, plan) in &plans {
            for act in &plan.before {
                self.act(w, act);
            }
        }
        let any_draining = !draining.is_empty()
            || self
                .state
                .view()
                .hosts
                .iter()
                .any(|(_, h)| h.maintenance.mode == Mode::Draining);
        // Apply each plan only to the record it was made from: if launch or another reap
        // changed the task meanwhile, the next pass decides again from what is there now.
        let applied = self.state.write_if_changed(|tx| {
            let mut applied = Vec::with_capacity(plans.len());
            let mut changed = false;
            for (w, plan) in &plans {
                let same = tx.view().tasks.get(w.slot) == Some(&w.task);
                if same && plan.task != w.task {
                    tx.set(w.slot, Some(plan.task.clone()));
                    changed = true;
                }
                applied.push(same);
            }
            if changed || any_draining {
                crate::maintenance::settle_drains(tx);
            }
            Ok(applied)
        })?;
        drop(called_off);
        for ((w, plan), ok) in plans.iter().zip(applied) {
            if !ok {
                continue;
            }
            for e in &plan.events {
                self.out.event(&w.id, &w.host, e, now)?;
            }
            for act in &plan.after {
                self.act(w, act);
            }
        }
        self.out.flush()?;
        Ok(Pass { stopping })
    }

    fn act(&mut self, w: &Watch, act: &Act) {
        use nix::sys::signal::Signal;
        let r = match *act {
            Act::Stop { supervisor } => process::signal(supervisor, Signal::SIGTERM).map(|_| ()),
            Act::KillGroup { task } => {
                process::kill_group(task).and_then(|_| kill_leftovers(&w.id, &w.dir))
            }
            Act::KillAll { supervisor, task } => {
                let a = task.map_or(Ok(false), process::kill_group);
                let b = supervisor.map_or(Ok(false), |s| process::signal(s, Signal::SIGKILL));
                a.and(b).and_then(|_| kill_leftovers(&w.id, &w.dir))
            }
        };
        if let Err(e) = r {
            self.note(format!("task {}: {e}", w.id));
        }
    }

    /// One pass with these stops, then passes over the stopping tasks until every stop is
    /// complete; then the other input lines go on.
    pub(super) fn once(
        &mut self,
        requests: HashMap<u32, Cause>,
        passthrough: &[String],
    ) -> Result<Status> {
        self.stop_strays()?;
        let mut pass = self.pass(&requests, &mut |_| true)?;
        // Every stop ends by its deadline: the supervisor reports, or reap kills it. A stop
        // that cannot (no status to find its supervisor by) is given up a little later.
        let give_up = |p: &Pass| p.stopping.iter().map(|s| s.1).fold(0.0, f64::max) + 5.0;
        while !pass.stopping.is_empty() && now() < give_up(&pass) {
            std::thread::sleep(POLL);
            let waiting: HashSet<u32> = pass.stopping.iter().map(|s| s.0).collect();
            pass = self.pass(&HashMap::new(), &mut |w| waiting.contains(&w.slot))?;
        }
        if !pass.stopping.is_empty() {
            let n = pass.stopping.len();
            self.note(format!(
                "{n} stops did not complete; the next pass goes on with them"
            ));
        }
        for line in passthrough {
            self.out.line(line)?;
        }
        self.out.flush()?;
        Ok(if self.trouble > 0 {
            Status::Partial
        } else {
            Status::Done
        })
    }

    /// Passes forever: a task is looked at when its status file changes, while it is
    /// starting or stopping (its clocks run), and every second in any case.
    pub(super) fn follow(&mut self) -> Result<Status> {
        type Key = (u64, i64, i64, u64);
        let mut last: HashMap<u32, (Option<Key>, Task)> = HashMap::new();
        let mut tick: u32 = 0;
        loop {
            let started = Instant::now();
            let sweep = tick.is_multiple_of(SWEEP_TICKS);
            let mut current: HashMap<u32, (Option<Key>, Task)> = HashMap::new();
            let mut select = |w: &Watch| {
                let key = std::fs::metadata(w.dir.join("status"))
                    .ok()
                    .map(|m| (m.ino(), m.mtime(), m.mtime_nsec(), m.size()));
                let changed = last
                    .get(&w.slot)
                    .is_none_or(|(k, t)| *k != key || *t != w.task);
                current.insert(w.slot, (key, w.task.clone()));
                sweep
                    || changed
                    || is_stopping(w.task.state)
                    || matches!(w.task.state, TaskState::Assigned | TaskState::Starting)
            };
            self.pass(&HashMap::new(), &mut select)?;
            if sweep {
                self.stop_strays()?;
            }
            last = current;
            // Problems are reported as they happen; following goes on.
            self.trouble = 0;
            tick = tick.wrapping_add(1);
            if let Some(rest) = POLL.checked_sub(started.elapsed()) {
                std::thread::sleep(rest);
            }
        }
    }
}
