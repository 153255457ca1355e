//! Preemption: for a production instance that fits nowhere, which preemptible instances to
//! stop, and on which host. Apart from the placement loop: it runs only for an instance
//! that found no host, and may sort and allocate.

use std::collections::BTreeMap;

use super::fleet::{self, Fleet};
use super::place::{Class, Reason, Scratch};
use super::{Resources, Running};

/// The preemptible instances running on offered hosts: what a production instance that fits
/// nowhere may stop.
pub(super) struct Victims<'a> {
    running: &'a [Running],
    /// Per offered host, in host order: its preemptible tasks.
    on_host: BTreeMap<usize, Vec<Victim>>,
    /// The tasks this pass has preempted.
    gone: Vec<bool>,
}

/// A preemptible task: its index into the running tasks, and its job's priority.
#[derive(Clone, Copy)]
struct Victim {
    task: usize,
    priority: i32,
}

/// Where a production instance goes by preemption: the host, and the tasks to stop there
/// first (indexes into the running tasks; none when the host has room already).
pub(super) struct Room {
    pub host: usize,
    pub stop: Vec<usize>,
}

impl<'a> Victims<'a> {
    pub fn new(running: &'a [Running]) -> Victims<'a> {
        Victims {
            running,
            on_host: BTreeMap::new(),
            gone: vec![false; running.len()],
        }
    }

    /// Running task `t`, of a preemptible job of `priority`, is on offered host `h`.
    pub fn add(&mut self, h: usize, t: usize, priority: i32) {
        self.on_host
            .entry(h)
            .or_default()
            .push(Victim { task: t, priority });
    }

    /// Running task `t` is preempted in this pass: it makes room once. Returns the task.
    pub fn stop(&mut self, t: usize) -> &'a Running {
        self.gone[t] = true;
        &self.running[t]
    }

    /// For a production instance of `class` that fits nowhere: the offered host where the
    /// fewest preemptible instances (lowest priority first) must stop to make room, and
    /// those instances.
    pub fn room_for(&self, fleet: &Fleet, class: &Class, scratch: &Scratch) -> Option<Room> {
        // The room found so far, and its worst victim's priority.
        let mut best: Option<(Room, i64)> = None;
        for (&h, victims) in &self.on_host {
            match class.check(fleet, scratch, h) {
                Ok(()) => {
                    return Some(Room {
                        host: h,
                        stop: Vec::new(),
                    })
                }
                Err(Reason::Cpus | Reason::Ram | Reason::Disk | Reason::Gpus | Reason::Ports) => {}
                Err(_) => continue, // constraints do not change by stopping anything
            }
            let Some(chosen) = self.fewest_on(fleet, class, h, victims) else {
                continue;
            };
            let worst = chosen
                .iter()
                .map(|v| v.priority as i64)
                .max()
                .unwrap_or(i64::MIN);
            if best
                .as_ref()
                .is_none_or(|(room, p)| (chosen.len(), worst) < (room.stop.len(), *p))
            {
                let stop = chosen.iter().map(|v| v.task).collect();
                best = Some((Room { host: h, stop }, worst));
            }
        }
        best.map(|(room, _)| room)
    }

    /// The fewest of `victims`, on host `h`, whose stopping makes room for an instance of
    /// `class`, lowest priority first; None when stopping them all would not.
    fn fewest_on(
        &self,
        fleet: &Fleet,
        class: &Class,
        h: usize,
        victims: &[Victim],
    ) -> Option<Vec<Victim>> {
        let mut list: Vec<Victim> = victims
            .iter()
            .copied()
            .filter(|v| !self.gone[v.task])
            .collect();
        list.sort_by_key(|v| {
            (
                v.priority,
                std::cmp::Reverse(self.running[v.task].cpus),
                v.task,
            )
        });
        let enough = (1..=list.len()).find(|&n| self.fits(fleet, class, h, &list[..n]))?;
        let mut chosen = list[..enough].to_vec();
        // Taking victims in order may take one that a later, larger one made unnecessary:
        // give back every victim the room does not need, the most valuable first.
        for i in (0..chosen.len()).rev() {
            let without: Vec<Victim> = chosen
                .iter()
                .enumerate()
                .filter(|&(k, _)| k != i)
                .map(|(_, &v)| v)
                .collect();
            if self.fits(fleet, class, h, &without) {
                chosen = without;
            }
        }
        Some(chosen)
    }

    /// Whether an instance of `class` fits on host `h` once the tasks of `set` stop.
    fn fits(&self, fleet: &Fleet, class: &Class, h: usize, set: &[Victim]) -> bool {
        // Physical millicores add up; the instance asks in reference ones.
        let mut room = Resources {
            cpus: fleet.cpus[h] as u64,
            ram_mb: fleet.ram_mb[h],
            disk_mb: fleet.disk_mb[h],
            gpus: fleet.gpus[h] as u64,
        };
        let mut ports = fleet.ports[h];
        for v in set {
            let t = &self.running[v.task];
            room += t.held();
            ports += t.ports.len() as u32;
        }
        let physical = u32::try_from(room.cpus).unwrap_or(u32::MAX);
        room.cpus = fleet::ref_milli(physical, fleet.cpu_factor[h]) as u64;
        class.need().fits_in(room) && ports >= class.ports_need()
    }
}
