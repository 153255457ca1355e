//! Every pass reaches each ssh host once and keeps its liveness (see `liveness`): a host
//! silent for --lost-after is declared down and its tasks LOST, for pack to place
//! elsewhere; one that comes back is up again once its strays are stopped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;

use super::decide::Event;
use super::engine::{now, Reaper, Watch};
use super::input::task_id;
use crate::host::{Host, Life, Transport};
use crate::liveness::{down_budget, overdue, sensed};
use crate::task::{Reason, Task, TaskState};
use crate::transport::{fan_out, TaskHost};

impl Reaper {
    /// Every ssh host of the state that this run has not found unreachable, as reached.
    pub(super) fn ssh_hosts(&mut self) -> Vec<(String, Arc<dyn TaskHost>)> {
        let names: Vec<String> = self
            .state
            .view()
            .hosts
            .iter()
            .filter(|(_, h)| h.transport == Transport::Ssh)
            .map(|(_, h)| h.name.clone())
            .collect();
        names
            .into_iter()
            .filter_map(|name| Some((name.clone(), self.host(&name)?)))
            .collect()
    }

    /// One call to every host: the supervisors at work there, which are stopped if the
    /// state does not run them (see `strays`), and with `look`, a look at each of its tasks
    /// the state holds, kept for the pass that follows (see `pass`). For an ssh host the
    /// same call, answered or not, is its liveness (see `liveness`). Hosts silent too long
    /// are declared down.
    pub(super) fn survey(&mut self, look: bool) -> Result<()> {
        // Every local host root on this machine (those of hosts no longer in the state
        // too), and every ssh host of the state.
        let mut hosts: Vec<(String, Arc<dyn TaskHost>, bool)> =
            crate::transport::local_hosts(&self.path)
                .into_iter()
                .map(|(name, host)| (name, Arc::new(host) as Arc<dyn TaskHost>, false))
                .collect();
        hosts.extend(self.ssh_hosts().into_iter().map(|(n, h)| (n, h, true)));
        let mut watched: HashMap<String, Vec<Watch>> = HashMap::new();
        if look {
            for w in self.watched() {
                watched.entry(w.host.clone()).or_default().push(w);
            }
        }
        let none = Vec::new();
        let on = |name: &str| watched.get(name).unwrap_or(&none);
        // The time the calls went out: one that waits long on a dead host (its shared
        // connection giving up) does not start that host's silence late.
        let now = now();
        let answers = fan_out(&hosts, self.parallel, |(name, host, _)| {
            let t = Instant::now();
            let probes: Vec<(&str, &Task)> =
                on(name).iter().map(|w| (w.id.as_str(), &w.task)).collect();
            host.survey(&probes)
                .map(|s| (s, t.elapsed().as_micros().min(u32::MAX as u128) as u32))
        });
        let mut reached: HashMap<String, Option<u32>> = HashMap::new();
        let mut found = Vec::new();
        for ((name, host, remote), answer) in hosts.into_iter().zip(answers) {
            let rtt = match answer {
                Ok((survey, rtt)) => {
                    for (w, look) in on(&name).iter().zip(survey.looks) {
                        self.prefetched.insert(w.slot, (w.task.clone(), look));
                    }
                    found.push((name.clone(), host, survey.found));
                    Some(rtt)
                }
                Err(e) => {
                    self.unreached(&name, &e);
                    None
                }
            };
            if remote {
                reached.insert(name, rtt);
            }
        }
        // A host that refused our epoch answered: nothing is recorded or stopped by a
        // scheduler that has been taken over.
        self.check_superseded()?;
        self.record_liveness(&reached, now)?;
        self.stop_strays(found, now)
    }

    /// Each ssh host's liveness after this survey (`reached`: its round trip, None when it
    /// did not answer); those silent for --lost-after are declared down, within the bound.
    fn record_liveness(&mut self, reached: &HashMap<String, Option<u32>>, sent: f64) -> Result<()> {
        if reached.is_empty() {
            return Ok(());
        }
        let lost_after = self.timing.lost_after;
        let total = self.state.view().hosts.len();
        let call = crate::liveness::Call {
            sent,
            settled: now(),
        };
        // Times below are the calls': silence is measured between calls sent.
        let now = sent;
        let (down, events) = self.state.write_if_changed(|tx| {
            let mut unreachable = 0;
            let slots: Vec<u32> = tx
                .view()
                .hosts
                .iter()
                .filter(|(_, h)| h.transport == Transport::Ssh)
                .map(|(s, _)| s)
                .collect();
            for &slot in &slots {
                let mut h = tx.view().hosts.get(slot).unwrap().clone();
                let answer = reached.get(&h.name).copied().flatten();
                unreachable += answer.is_none() as usize;
                let next = sensed(h.liveness, answer, call, lost_after);
                if next != h.liveness {
                    h.liveness = next;
                    tx.set(slot, Some(h));
                }
            }
            let mut overdue_hosts: Vec<(u32, Host)> = slots
                .iter()
                .map(|&s| (s, tx.view().hosts.get(s).unwrap().clone()))
                .filter(|(_, h)| overdue(&h.liveness, now, lost_after))
                .collect();
            // The longest silent first.
            overdue_hosts.sort_by(|a, b| a.1.liveness.since.total_cmp(&b.1.liveness.since));
            let budget = down_budget(total, slots.len(), unreachable);
            let held_back = overdue_hosts.len().saturating_sub(budget);
            let mut down = Vec::new();
            let mut events = Vec::new();
            for (slot, mut h) in overdue_hosts.into_iter().take(budget) {
                h.liveness.life = Life::Down;
                h.liveness.since = now;
                tx.set(slot, Some(h.clone()));
                let lost: Vec<(u32, crate::task::Task)> = tx
                    .view()
                    .tasks
                    .iter()
                    .filter(|(_, t)| t.host == slot && t.state.holds_resources())
                    .map(|(s, t)| (s, t.clone()))
                    .collect();
                for (s, t) in lost {
                    let mut r = t.freed(TaskState::Lost, now);
                    r.reason = Reason::HostDown;
                    events.push((task_id(tx.view(), &t), h.name.clone()));
                    tx.set(s, Some(r));
                }
                down.push(h.name.clone());
            }
            if !down.is_empty() {
                crate::maintenance::settle_drains(tx);
            }
            Ok(((down, held_back, unreachable, slots.len()), events))
        })?;
        let (down, held_back, unreachable, remote) = down;
        for name in &down {
            eprintln!(
                "reap: host {name} is down (not reached for {lost_after} s); its tasks are LOST"
            );
        }
        if held_back > 0 {
            // Not a failure of the pass: the bound did its work.
            self.tell(format!(
                "{held_back} hosts silent for {lost_after} s are not declared down in this \
                 pass ({unreachable} of {remote} ssh hosts not reached: at most a tenth of the \
                 hosts a pass, none when most are unreachable)"
            ));
        }
        for (task, host) in events {
            let e = Event::new(TaskState::Lost).why(Reason::HostDown);
            self.out.event(&task, &host, &e, now)?;
        }
        self.out.flush()
    }
}
