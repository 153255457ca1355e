//! Supervisors at work that the state does not run: found on every host reap reaches, and
//! stopped like any task.

use std::sync::Arc;

use anyhow::Result;

use super::decide::{Act, Event};
use super::engine::Reaper;
use super::input::find_task;
use crate::host::Life;
use crate::state::View;
use crate::task::TaskState;
use crate::transport::{Found, TaskHost};

/// Whether the state runs the incarnation that supervisor runs, on its host.
fn accounted(view: &View, host: &str, s: &Found) -> bool {
    let Some(t) = find_task(view, &s.task).and_then(|slot| view.tasks.get(slot)) else {
        return false;
    };
    let here = view.hosts.get(t.host).is_some_and(|h| h.name == host);
    t.state.holds_resources() && here && s.status.incarnation.is_none_or(|n| n == t.incarnation)
}

impl Reaper {
    /// Nothing runs that the state does not know: a supervisor whose incarnation the state
    /// does not run on its host (two passes placed the task at once before launch refused
    /// the loser, a host removed with --force, a state restored from a backup) is stopped
    /// like any task, SIGTERM first and SIGKILL with its cgroups after its grace.
    pub(super) fn stop_strays(
        &mut self,
        found: Vec<(String, Arc<dyn TaskHost>, Vec<Found>)>,
        now: f64,
    ) -> Result<()> {
        // Judged on the state as it is after the walk: launch records an incarnation
        // before it starts its supervisor, so every supervisor found that the state runs
        // is in this view.
        self.state.refresh()?;
        let mut clean = Vec::new();
        for (name, host, found) in found {
            let mut strays = 0;
            for s in found {
                if !accounted(self.state.view(), &name, &s) {
                    strays += 1;
                    self.stop_stray(&name, host.as_ref(), &s, now)?;
                }
            }
            if strays == 0 {
                clean.push(name);
            }
        }
        self.out.flush()?;
        self.take_back(&clean, now)
    }

    /// Down hosts reached again with nothing left running there that the state does not
    /// run: up, taking work.
    fn take_back(&mut self, clean: &[String], now: f64) -> Result<()> {
        let back = self.state.write_if_changed(|tx| {
            let mut back = Vec::new();
            for name in clean {
                let Some(slot) = tx.view().hosts.find(name) else {
                    continue;
                };
                let h = tx.view().hosts.get(slot).unwrap();
                let reached_now =
                    h.liveness.contact > 0.0 && h.liveness.contact == h.liveness.checked;
                if h.liveness.life == Life::Down && reached_now {
                    let mut h = h.clone();
                    h.liveness = crate::liveness::returned(h.liveness, now);
                    tx.set(slot, Some(h));
                    back.push(name.clone());
                }
            }
            Ok(back)
        })?;
        for name in back {
            eprintln!("reap: host {name} is back and takes work again");
        }
        Ok(())
    }

    fn stop_stray(&mut self, host: &str, on: &dyn TaskHost, s: &Found, now: f64) -> Result<()> {
        let why = match s.status.incarnation {
            Some(n) => format!("the state does not run incarnation {n} on {host}"),
            None => format!("the state does not run it on {host}"),
        };
        let killing = s.status.state == "KILLING";
        if killing && now < s.facts.stop_deadline(s.status.since) {
            return Ok(());
        }
        let act = if killing {
            Act::KillAll {
                supervisor: Some(s.status.supervisor),
                task: s.status.pid,
            }
        } else {
            Act::Stop {
                supervisor: s.status.supervisor,
            }
        };
        let done = match on.act(&[(&s.task, &act)]) {
            Ok(mut r) => r.pop().unwrap_or(Ok(false)),
            Err(e) => Err(format!("host not reached: {e}")),
        };
        let event = match done {
            Err(e) => {
                self.note(format!("task {} on {host}: {e}", s.task));
                if !killing {
                    return Ok(());
                }
                Event::new(TaskState::Killed)
            }
            Ok(false) if !killing => return Ok(()), // gone meanwhile
            Ok(_) if killing => Event::new(TaskState::Killed),
            Ok(_) => Event::new(TaskState::Killing),
        };
        let event = if killing {
            let mut e = event.saying(format!("{why}; it did not stop in time"));
            e.exit = Some(-9);
            e
        } else {
            event.saying(why)
        };
        self.out.event(&s.task, host, &event, now)
    }
}
