//! reap's passes: look at the watched tasks' directories, decide, kill what must die before
//! the commit, commit every plan in one transaction, report, then signal the stops that were
//! recorded; `once` repeats passes until the stops are over, `follow` forever. Hosts are
//! reached through `transport`, one call per host per step.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;

use super::decide::{decide, is_stopping, Act, Plan};
use super::input::{task_id, Cause};
use super::out::Out;
use super::{Timing, POLL};
use crate::exit::Status;
use crate::host::Mode;
use crate::process;
use crate::state::State;
use crate::task::{Task, TaskState};
use crate::transport::{self, fan_out, Look, Stamp, TaskHost};

/// With --follow, every task directory is looked at this often even when its status file
/// has not changed (a supervisor that dies without a word changes no file).
const SWEEP_TICKS: u32 = 20;

pub(super) use crate::clock::now;

/// A task reap looks after: in a holding state on a host.
pub(super) struct Watch {
    pub(super) slot: u32,
    pub(super) task: Task,
    pub(super) id: String,
    pub(super) host: String,
    /// Its host is reached over ssh.
    remote: bool,
}

pub(super) struct Reaper {
    pub(super) state: State,
    pub(super) path: PathBuf,
    pub(super) timing: Timing,
    pub(super) out: Out,
    /// Problems that did not stop the pass (reported on stderr; the exit status says 1).
    trouble: usize,
    /// What was reported already: a pass repeated every 50 ms says a thing once.
    told: HashSet<String>,
    /// The hosts reached so far, by name.
    hosts: HashMap<String, Arc<dyn TaskHost>>,
    /// How many hosts are worked at once.
    pub(super) parallel: usize,
    /// Hosts this run could not reach: not tried again by its later steps (liveness
    /// records them; see `sense`).
    unreachable: HashSet<String>,
    /// A host refused this scheduler's epoch: another has taken over, and this one stops.
    superseded: Option<String>,
    /// Whether this pass reaches ssh hosts (every pass but --follow's quick ticks).
    remote_now: bool,
    /// Looks a survey took for the pass that follows it, by task slot, with the record
    /// each was taken for: used only while the record is unchanged.
    pub(super) prefetched: HashMap<u32, (Task, Result<Look, String>)>,
}

/// Work for one host: its name, the host as reap reaches it, and what concerns it.
type OnHost<T> = (String, Arc<dyn TaskHost>, T);

/// A task a pass looks at, with the stop asked for it.
type Chosen = (Watch, Option<Cause>);

/// Which tasks a pass looks at, besides those with a stop asked for (on stdin, by a verb,
/// by a drain).
enum Select<'a> {
    /// Every watched task.
    All,
    /// Only those.
    Asked,
    /// These slots (tasks still being stopped).
    These(&'a HashSet<u32>),
    /// Those `only` picks given their status stamp (one more round trip a host).
    Changed(&'a mut dyn FnMut(&Watch, Option<Stamp>) -> bool),
}

/// What a pass left to wait for: tasks still being stopped, with when their stop is due.
struct Pass {
    stopping: Vec<(u32, f64)>,
}

impl Reaper {
    pub(super) fn open(
        path: &Path,
        timing: Timing,
        human: bool,
        parallel: usize,
    ) -> Result<Reaper> {
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
            hosts: HashMap::new(),
            parallel,
            unreachable: HashSet::new(),
            superseded: None,
            remote_now: true,
            prefetched: HashMap::new(),
        })
    }

    pub(super) fn view(&self) -> &crate::state::View {
        self.state.view()
    }

    pub(super) fn note(&mut self, msg: impl std::fmt::Display) {
        self.tell(msg);
        self.trouble += 1;
    }

    /// Says something on stderr once a run, not as trouble.
    pub(super) fn tell(&mut self, msg: impl std::fmt::Display) {
        let msg = msg.to_string();
        if !self.told.contains(&msg) {
            eprintln!("reap: {msg}");
            self.told.insert(msg);
        }
    }

    /// A host that did not answer: said once, and left alone for the rest of this run. Not
    /// a failure of the pass: the host's liveness keeps the account (suspect, down).
    pub(super) fn unreached(&mut self, name: &str, e: &transport::Unreached) {
        if e.superseded {
            self.superseded
                .get_or_insert_with(|| format!("host {name}: {e}"));
        }
        if self.unreachable.insert(name.to_string()) {
            eprintln!("reap: host {name} not reached: {e}");
        }
    }

    /// Stops the run once a host has refused this scheduler's epoch (status 77).
    pub(super) fn check_superseded(&mut self) -> Result<()> {
        match self.superseded.take() {
            Some(why) => Err(crate::exit::fail(
                Status::Permission,
                format!("{why}; this scheduler stops (see `offer take-over`)"),
            )),
            None => Ok(()),
        }
    }

    /// Forgets the hosts found unreachable (`reap --follow` tries them again each sweep).
    pub(super) fn retry_unreached(&mut self) {
        self.unreachable.clear();
    }

    /// The host named `name` as reap reaches it (None when it cannot be, or did not answer
    /// this run).
    pub(super) fn host(&mut self, name: &str) -> Option<Arc<dyn TaskHost>> {
        if self.unreachable.contains(name) {
            return None;
        }
        if let Some(h) = self.hosts.get(name) {
            return Some(h.clone());
        }
        let view = self.state.view();
        let record = view
            .hosts
            .find(&name.to_string())
            .and_then(|s| view.hosts.get(s))?;
        match transport::reach(&self.path, record) {
            Ok(h) => {
                let h: Arc<dyn TaskHost> = Arc::from(h);
                self.hosts.insert(name.to_string(), h.clone());
                Some(h)
            }
            Err(e) => {
                self.note(format!("{e:#}"));
                None
            }
        }
    }

    /// Tasks in holding states. (Those of draining hosts are stopped as the passes decide,
    /// within their jobs' budgets: pack's `kill` records with the reason `drain`.)
    pub(super) fn watched(&mut self) -> Vec<Watch> {
        let view = self.state.view();
        let mut watches = Vec::new();
        for (slot, t) in view.tasks.iter() {
            if !t.state.holds_resources() {
                continue;
            }
            let Some(host) = view.hosts.get(t.host) else {
                continue;
            };
            watches.push(Watch {
                slot,
                task: t.clone(),
                id: task_id(view, t),
                host: host.name.clone(),
                remote: host.transport == crate::host::Transport::Ssh,
            });
        }
        watches
    }

    /// One pass over the tasks that `select` picks: look, decide, call off abandoned
    /// starts, kill what must die, commit, report, then start the stops that were recorded.
    fn pass(&mut self, requests: &HashMap<u32, Cause>, select: Select) -> Result<Pass> {
        let watches = self.watched();
        let announcer = crate::announce::follower_alive(self.state.path());
        let now = now();
        let request_of = |w: &Watch| requests.get(&w.slot).copied();
        let mut by_host: BTreeMap<String, Vec<Chosen>> = BTreeMap::new();
        let mut by_stamp: BTreeMap<String, Vec<Watch>> = BTreeMap::new();
        for w in watches {
            let request = request_of(&w);
            let picked = match &select {
                Select::All => true,
                Select::Asked => false,
                Select::These(slots) => slots.contains(&w.slot),
                Select::Changed(_) => {
                    // `reap --follow` asks remote hosts once a second, not at every tick.
                    if w.remote && !self.remote_now && request.is_none() {
                        continue;
                    }
                    by_stamp.entry(w.host.clone()).or_default().push(w);
                    continue;
                }
            };
            if picked || request.is_some() {
                by_host
                    .entry(w.host.clone())
                    .or_default()
                    .push((w, request));
            }
        }
        if let Select::Changed(only) = select {
            self.pick_changed(by_stamp, &request_of, only, &mut by_host);
        }
        let chosen: Vec<OnHost<Vec<Chosen>>> = by_host
            .into_iter()
            .filter_map(|(name, mine)| Some((name.clone(), self.host(&name)?, mine)))
            .collect();
        // A host's looks from the survey just before, when it took them of these records;
        // else one call to the host.
        let mut looks: Vec<Option<transport::Reply<Result<Look, String>>>> = chosen
            .iter()
            .map(|(_, _, mine)| self.take_prefetched(mine).map(Ok))
            .collect();
        self.prefetched.clear();
        let missing: Vec<usize> = (0..chosen.len()).filter(|&i| looks[i].is_none()).collect();
        let fetched = fan_out(&missing, self.parallel, |&i| {
            let (_, host, mine) = &chosen[i];
            let probes: Vec<(&str, &Task)> =
                mine.iter().map(|(w, _)| (w.id.as_str(), &w.task)).collect();
            host.look(&probes)
        });
        for (i, reply) in missing.into_iter().zip(fetched) {
            looks[i] = Some(reply);
        }
        let looks = looks.into_iter().map(|l| l.expect("every host looked at"));
        let mut plans: Vec<(Watch, Plan)> = Vec::new();
        let mut stopping = Vec::new();
        for ((name, _, mine), looks) in chosen.into_iter().zip(looks) {
            let looks = match looks {
                Ok(l) => l,
                Err(e) => {
                    self.unreached(&name, &e);
                    continue;
                }
            };
            for ((w, request), look) in mine.into_iter().zip(looks) {
                let mut look = match look {
                    Ok(l) => l,
                    Err(e) => {
                        self.note(format!("task {}: {e}", w.id));
                        continue;
                    }
                };
                look.facts.held = w.task.announced && announcer;
                look.facts.launcher_gone =
                    w.task.state == TaskState::Assigned && !process::alive(w.task.launcher);
                let plan = decide(&w.task, &look.seen, request, &look.facts, now, &self.timing);
                let next = plan.as_ref().map_or(w.task.state, |p| p.task.state);
                if is_stopping(next) {
                    let since = plan.as_ref().map_or(w.task.since, |p| p.task.since);
                    stopping.push((w.slot, look.facts.stop_deadline(since)));
                }
                if let Some(plan) = plan {
                    plans.push((w, plan));
                }
            }
        }
        self.call_off(&mut plans);
        self.act(&plans, |p| &p.before);
        let any_draining = self
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
        let plans: Vec<(Watch, Plan)> = plans
            .into_iter()
            .zip(applied)
            .filter_map(|(p, ok)| ok.then_some(p))
            .collect();
        for (w, plan) in &plans {
            for e in &plan.events {
                self.out.event(&w.id, &w.host, e, now)?;
            }
        }
        self.act(&plans, |p| &p.after);
        self.out.flush()?;
        Ok(Pass { stopping })
    }

    /// The survey's looks at these tasks, if it took one of each as its record is now.
    fn take_prefetched(&mut self, mine: &[Chosen]) -> Option<Vec<Result<Look, String>>> {
        let all = mine.iter().all(|(w, _)| {
            self.prefetched
                .get(&w.slot)
                .is_some_and(|(task, _)| *task == w.task)
        });
        all.then(|| {
            mine.iter()
                .map(|(w, _)| self.prefetched.remove(&w.slot).expect("checked").1)
                .collect()
        })
    }

    /// Adds to `chosen` the tasks `only` picks from their status stamps, asked of every
    /// host at once.
    fn pick_changed(
        &mut self,
        watches: BTreeMap<String, Vec<Watch>>,
        request_of: &dyn Fn(&Watch) -> Option<Cause>,
        only: &mut dyn FnMut(&Watch, Option<Stamp>) -> bool,
        chosen: &mut BTreeMap<String, Vec<Chosen>>,
    ) {
        let groups: Vec<OnHost<Vec<Watch>>> = watches
            .into_iter()
            .filter_map(|(name, ws)| Some((name.clone(), self.host(&name)?, ws)))
            .collect();
        let stamps = fan_out(&groups, self.parallel, |(_, host, ws)| {
            let ids: Vec<&str> = ws.iter().map(|w| w.id.as_str()).collect();
            host.stamps(&ids)
        });
        for ((name, _, watches), stamps) in groups.into_iter().zip(stamps) {
            let stamps = match stamps {
                Ok(s) => s,
                Err(e) => {
                    self.unreached(&name, &e);
                    continue;
                }
            };
            for (w, stamp) in watches.into_iter().zip(stamps) {
                let request = request_of(&w);
                if request.is_some() || only(&w, stamp) {
                    chosen.entry(name.clone()).or_default().push((w, request));
                }
            }
        }
    }

    /// Calls off the starts the plans give up on, one call per host; a plan whose start a
    /// supervisor took after all is dropped (the next pass sees it running).
    fn call_off(&mut self, plans: &mut Vec<(Watch, Plan)>) {
        let mut kept = vec![true; plans.len()];
        let groups = self.hosts_of(plans, |p| p.call_off);
        let answers = fan_out(&groups, self.parallel, |(_, host, idx)| {
            let tasks: Vec<(&str, u32)> = idx
                .iter()
                .map(|&i| (plans[i].0.id.as_str(), plans[i].0.task.incarnation))
                .collect();
            host.call_off(&tasks)
        });
        for ((name, _, idx), answer) in groups.iter().zip(answers) {
            match answer {
                Ok(oks) => idx.iter().zip(oks).for_each(|(&i, ok)| kept[i] = ok),
                Err(e) => {
                    idx.iter().for_each(|&i| kept[i] = false);
                    self.unreached(name, &e);
                }
            }
        }
        // Plans of hosts that could not be reached at all call nothing off.
        for (i, (w, p)) in plans.iter().enumerate() {
            if p.call_off && !groups.iter().any(|(n, _, _)| *n == w.host) {
                kept[i] = false;
            }
        }
        let mut keep = kept.into_iter();
        plans.retain(|_| keep.next().unwrap_or(false));
    }

    /// Carries out the acts `which` picks from each plan, every host at once.
    fn act(&mut self, plans: &[(Watch, Plan)], which: fn(&Plan) -> &Vec<Act>) {
        let groups = self.hosts_of(plans, |p| !which(p).is_empty());
        let answers = fan_out(&groups, self.parallel, |(_, host, idx)| {
            let acts: Vec<(&str, &Act)> = idx
                .iter()
                .flat_map(|&i| {
                    let (w, p) = &plans[i];
                    which(p).iter().map(move |a| (w.id.as_str(), a))
                })
                .collect();
            host.act(&acts).map(|r| {
                acts.iter()
                    .map(|(t, _)| t.to_string())
                    .zip(r)
                    .collect::<Vec<_>>()
            })
        });
        for ((name, _, _), answer) in groups.iter().zip(answers) {
            match answer {
                Ok(results) => {
                    for (task, r) in results {
                        if let Err(e) = r {
                            self.note(format!("task {task}: {e}"));
                        }
                    }
                }
                Err(e) => self.unreached(name, &e),
            }
        }
    }

    /// The plans that `pick` selects, as indexes grouped by the host they are on, each
    /// with the host as reap reaches it.
    fn hosts_of(
        &mut self,
        plans: &[(Watch, Plan)],
        pick: impl Fn(&Plan) -> bool,
    ) -> Vec<OnHost<Vec<usize>>> {
        let mut by_host: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, (w, p)) in plans.iter().enumerate() {
            if pick(p) {
                by_host.entry(w.host.clone()).or_default().push(i);
            }
        }
        by_host
            .into_iter()
            .filter_map(|(name, idx)| Some((name.clone(), self.host(&name)?, idx)))
            .collect()
    }

    /// One pass with these stops, then passes over the stopping tasks until every stop is
    /// complete; then the other input lines go on. With `survey`, every host is surveyed
    /// first and every task looked at; without, only the tasks asked for (and drains).
    pub(super) fn once(
        &mut self,
        requests: HashMap<u32, Cause>,
        passthrough: &[String],
        survey: bool,
    ) -> Result<Status> {
        let select = if survey {
            self.survey(true)?;
            Select::All
        } else {
            Select::Asked
        };
        let mut pass = self.pass(&requests, select)?;
        self.check_superseded()?;
        // Every stop ends by its deadline: the supervisor reports, or reap kills it. A stop
        // that cannot (no status to find its supervisor by) is given up a little later.
        let give_up = |p: &Pass| p.stopping.iter().map(|s| s.1).fold(0.0, f64::max) + 5.0;
        while !pass.stopping.is_empty() && now() < give_up(&pass) {
            std::thread::sleep(POLL);
            let waiting: HashSet<u32> = pass.stopping.iter().map(|s| s.0).collect();
            pass = self.pass(&HashMap::new(), Select::These(&waiting))?;
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
    /// starting or stopping (its clocks run), and every second in any case. Tasks of ssh
    /// hosts are looked at once a second (each look is a round trip).
    pub(super) fn follow(&mut self) -> Result<Status> {
        let mut last: HashMap<u32, (Option<Stamp>, Task)> = HashMap::new();
        let mut tick: u32 = 0;
        loop {
            let started = Instant::now();
            let sweep = tick.is_multiple_of(SWEEP_TICKS);
            let mut current: HashMap<u32, (Option<Stamp>, Task)> = HashMap::new();
            let mut select = |w: &Watch, key: Option<Stamp>| {
                let changed = last
                    .get(&w.slot)
                    .is_none_or(|(k, t)| *k != key || *t != w.task);
                current.insert(w.slot, (key, w.task.clone()));
                sweep
                    || changed
                    || is_stopping(w.task.state)
                    || matches!(w.task.state, TaskState::Assigned | TaskState::Starting)
            };
            self.remote_now = sweep;
            self.pass(&HashMap::new(), Select::Changed(&mut select))?;
            if sweep {
                self.retry_unreached();
                self.survey(false)?;
            }
            self.check_superseded()?;
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
