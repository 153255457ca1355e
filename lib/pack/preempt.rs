//! Preemption: for a production instance that fits nowhere, which preemptible instances to
//! stop, and on which host. Apart from the placement loop: it runs only for an instance
//! that found no host, and may sort and allocate.

use std::collections::BTreeMap;

use super::fleet::{self, Fleet};
use super::place::{Class, Reason, Scratch};
use super::{Resources, Running};
use crate::job::Tier;

/// The preemptible instances running on offered hosts: what a production instance that fits
/// nowhere may stop.
pub(super) struct Victims<'a> {
    running: &'a [Running],
    /// Per offered host, in host order: its preemptible tasks.
    on_host: BTreeMap<usize, Vec<Victim>>,
    /// The tasks this pass has preempted.
    gone: Vec<bool>,
}

/// Up to this many victims on one host, every set is tried for the fewest; above, the
/// largest are taken first.
const EXACT_VICTIMS: usize = 16;

/// Victims, count first: (count, highest priority, sum of priorities, cpus, ram).
type Rank = (usize, i64, i64, u64, u64);

/// Every mask of `k` of `n` bits, in increasing order (Gosper's hack).
fn sets_of(n: usize, k: usize) -> impl Iterator<Item = u32> {
    let end = 1u32 << n;
    let mut next = Some((1u32 << k) - 1);
    std::iter::from_fn(move || {
        let m = next.filter(|&m| m < end)?;
        let low = m & m.wrapping_neg();
        let ripple = m + low;
        next = Some((((ripple ^ m) >> 2) / low) | ripple);
        Some(m)
    })
}

fn pick(list: &[Victim], mask: u32) -> Vec<Victim> {
    (0..list.len())
        .filter(|i| mask & (1 << i) != 0)
        .map(|i| list[i])
        .collect()
}

/// A task that may be preempted: its index into the running tasks, and its job's tier and
/// priority.
#[derive(Clone, Copy)]
struct Victim {
    task: usize,
    tier: Tier,
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

    /// Running task `t`, of a job of `tier` and `priority`, is on offered host `h`.
    pub fn add(&mut self, h: usize, t: usize, tier: Tier, priority: i32) {
        self.on_host.entry(h).or_default().push(Victim {
            task: t,
            tier,
            priority,
        });
    }

    /// Running task `t` is preempted in this pass: it makes room once. Returns the task.
    pub fn stop(&mut self, t: usize) -> &'a Running {
        self.gone[t] = true;
        &self.running[t]
    }

    /// For a production instance of `class` that fits nowhere: the offered host where the
    /// fewest preemptible instances must stop to make room (then the lowest priorities),
    /// and those instances.
    pub fn room_for(
        &self,
        fleet: &Fleet,
        class: &Class,
        scratch: &Scratch,
        may_stop: &dyn Fn(Tier, i32, &str) -> bool,
    ) -> Option<Room> {
        // The room found so far, and how its victims rank.
        let mut best: Option<(Room, Rank)> = None;
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
            let at_most = best
                .as_ref()
                .map_or(usize::MAX, |(room, _)| room.stop.len());
            let Some((chosen, rank)) = self.fewest_on(fleet, class, h, victims, at_most, may_stop)
            else {
                continue;
            };
            if best.as_ref().is_none_or(|(_, r)| rank < *r) {
                let stop = chosen.iter().map(|v| v.task).collect();
                best = Some((Room { host: h, stop }, rank));
            }
        }
        best.map(|(room, _)| room)
    }

    /// The fewest of `victims`, on host `h`, whose stopping makes room for an instance of
    /// `class` (at most `at_most`); of those, the lowest priorities, then the least
    /// capacity. None when no such set is that small, or stopping them all would not do.
    fn fewest_on(
        &self,
        fleet: &Fleet,
        class: &Class,
        h: usize,
        victims: &[Victim],
        at_most: usize,
        may_stop: &dyn Fn(Tier, i32, &str) -> bool,
    ) -> Option<(Vec<Victim>, Rank)> {
        let mut list: Vec<Victim> = victims
            .iter()
            .copied()
            .filter(|v| {
                !self.gone[v.task] && may_stop(v.tier, v.priority, &self.running[v.task].job_key)
            })
            .collect();
        list.sort_by_key(|v| (v.priority, v.task));
        if !self.fits(fleet, class, h, &list) {
            return None;
        }
        if list.len() <= EXACT_VICTIMS {
            // Every set of k victims, k from one up: the first k with a set that makes room
            // is the fewest, and the best ranked of its sets is taken.
            for k in 1..=list.len().min(at_most) {
                let best = sets_of(list.len(), k)
                    .map(|mask| pick(&list, mask))
                    .filter(|set| self.fits(fleet, class, h, set))
                    .map(|set| (self.rank(&set), set))
                    .min_by(|a, b| a.0.cmp(&b.0));
                if let Some((rank, set)) = best {
                    return Some((set, rank));
                }
            }
            return None;
        }
        // Many victims: the largest first until there is room, then every victim the room
        // does not need given back, the most valuable first.
        list.sort_by_key(|v| {
            (
                std::cmp::Reverse(self.running[v.task].cpus),
                v.priority,
                v.task,
            )
        });
        let enough = (1..=list.len()).find(|&n| self.fits(fleet, class, h, &list[..n]))?;
        let mut chosen = list[..enough].to_vec();
        chosen.sort_by_key(|v| (v.priority, v.task));
        for i in (0..chosen.len()).rev() {
            let mut without = chosen.clone();
            without.remove(i);
            if self.fits(fleet, class, h, &without) {
                chosen = without;
            }
        }
        (chosen.len() <= at_most).then(|| {
            let rank = self.rank(&chosen);
            (chosen, rank)
        })
    }

    /// How a set of victims ranks (less is better): fewer, then a lower highest priority,
    /// then lower priorities in all, then less capacity stopped.
    fn rank(&self, set: &[Victim]) -> Rank {
        let worst = set
            .iter()
            .map(|v| v.priority as i64)
            .max()
            .unwrap_or(i64::MIN);
        let sum = set.iter().map(|v| v.priority as i64).sum();
        let held = set.iter().fold(Resources::default(), |acc, v| {
            acc + self.running[v.task].held()
        });
        (set.len(), worst, sum, held.cpus, held.ram_mb)
    }

    /// Whether an instance of `class` fits on host `h` once the tasks of `set` stop.
    fn fits(&self, fleet: &Fleet, class: &Class, h: usize, set: &[Victim]) -> bool {
        // Physical millicores add up; the instance asks in reference ones.
        let mut room = Resources {
            cpus: fleet.free[h].cpus as u64,
            ram_mb: fleet.free[h].ram_mb,
            disk_mb: fleet.free[h].disk_mb,
            gpus: fleet.free[h].gpus as u64,
        };
        let mut ports = fleet.free[h].ports;
        for v in set {
            let t = &self.running[v.task];
            room += t.held();
            ports += t.ports.len() as u32;
        }
        let physical = u32::try_from(room.cpus).unwrap_or(u32::MAX);
        room.cpus = fleet::ref_milli(physical, fleet.free[h].cpu_factor) as u64;
        class.need().fits_in(room) && ports >= class.ports_need()
    }
}

#[cfg(test)]
mod tests {
    use super::sets_of;

    #[test]
    fn sets_of_k_bits_come_in_order_and_all() {
        let two: Vec<u32> = sets_of(4, 2).collect();
        assert_eq!(two, [0b0011, 0b0101, 0b0110, 0b1001, 0b1010, 0b1100]);
        assert_eq!(sets_of(16, 8).count(), 12_870);
        assert_eq!(sets_of(3, 3).collect::<Vec<_>>(), [0b111]);
    }
}
