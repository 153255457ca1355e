//! Preemption: for a production instance that fits nowhere, which preemptible instances to
//! stop, and on which host. Apart from the placement loop: it runs only for an instance
//! that found no host.

use std::collections::HashMap;

use crate::job::JobSpec;

use super::fleet::{self, Fleet};
use super::place::{Class, Reason, Scratch};
use super::Running;

/// For a production instance that fits nowhere: the offered host where the fewest
/// preemptible instances (lowest priority first) must stop to make room, and those
/// instances.
#[allow(clippy::too_many_arguments)]
pub(super) fn preemption(
    fleet: &Fleet,
    class: &Class,
    scratch: &Scratch,
    running: &[Running],
    victims: &HashMap<usize, Vec<usize>>,
    gone: &[bool],
    jobs: &[JobSpec],
    by_key: &HashMap<&str, usize>,
) -> Option<(usize, Vec<usize>)> {
    let priority = |v: usize| {
        by_key
            .get(running[v].job_key.as_str())
            .map_or(0, |&j| jobs[j].priority)
    };
    let [need_cpu, need_ram, need_gpus] = class.demand();
    let fits = |h: usize, set: &[usize]| {
        let (mut cpus, mut ram, mut disk, mut gpus, mut ports) = (
            fleet.cpus[h],
            fleet.ram_mb[h],
            fleet.disk_mb[h],
            fleet.gpus[h] as u64,
            fleet.ports[h],
        );
        for &v in set {
            let t = &running[v];
            cpus += t.cpus;
            ram += t.ram_mb;
            disk += t.disk_mb;
            gpus += t.gpus as u64;
            ports += t.ports.len() as u32;
        }
        fleet::ref_milli(cpus, fleet.cpu_factor[h]) as u64 >= need_cpu
            && ram >= need_ram
            && disk >= class.disk_need()
            && gpus >= need_gpus
            && ports >= class.ports_need()
    };
    let mut hosts: Vec<&usize> = victims.keys().collect();
    hosts.sort();
    // (host, victims, worst victim priority)
    let mut best: Option<(usize, Vec<usize>, i64)> = None;
    for &h in hosts {
        match class.check(fleet, scratch, h) {
            Ok(()) => return Some((h, Vec::new())),
            Err(Reason::Cpus | Reason::Ram | Reason::Disk | Reason::Gpus | Reason::Ports) => {}
            Err(_) => continue, // constraints do not change by stopping anything
        }
        let mut list: Vec<usize> = victims[&h].iter().copied().filter(|&v| !gone[v]).collect();
        list.sort_by_key(|&v| (priority(v), std::cmp::Reverse(running[v].cpus), v));
        let Some(enough) = (1..=list.len()).find(|&n| fits(h, &list[..n])) else {
            continue;
        };
        let mut chosen = list[..enough].to_vec();
        // Taking victims in order may take one that a later, larger one made unnecessary:
        // give back every victim the room does not need, the most valuable first.
        for i in (0..chosen.len()).rev() {
            let without: Vec<usize> = chosen
                .iter()
                .enumerate()
                .filter(|&(k, _)| k != i)
                .map(|(_, &v)| v)
                .collect();
            if fits(h, &without) {
                chosen = without;
            }
        }
        let worst = chosen
            .iter()
            .map(|&v| priority(v) as i64)
            .max()
            .unwrap_or(i64::MIN);
        if best
            .as_ref()
            .is_none_or(|(_, c, p)| (chosen.len(), worst) < (c.len(), *p))
        {
            best = Some((h, chosen, worst));
        }
    }
    best.map(|(h, chosen, _)| (h, chosen))
}
