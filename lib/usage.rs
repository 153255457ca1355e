//! What tasks reserve on each host. A task holds its reservation (cpus, memory, disk, gpus,
//! ports) from ASSIGNED until its stop completes; free capacity is a host's capacity minus
//! the reservations of the tasks it holds. It is computed from the tasks every time rather
//! than kept as a running total, so it cannot drift from them.

use crate::host::Host;
use crate::state::View;
use crate::task::{Task, NO_HOST};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    pub cpus: u64,
    pub ram_mb: u64,
    pub disk_mb: u64,
    pub gpus: u64,
    pub tasks: u32,
    /// Ports held, unsorted.
    pub ports: Vec<u16>,
}

/// Reservations per host slot.
pub fn by_host(view: &View) -> Vec<Usage> {
    let mut usage = vec![Usage::default(); view.hosts.high_water()];
    for (_, t) in view.tasks.iter() {
        if !t.state.holds_resources() || t.host == NO_HOST {
            continue;
        }
        if let Some(u) = usage.get_mut(t.host as usize) {
            u.add(t);
        }
    }
    usage
}

impl Usage {
    /// Counts `t`'s reservation in.
    pub fn add(&mut self, t: &Task) {
        self.cpus += t.cpus as u64;
        self.ram_mb += t.ram_mb;
        self.disk_mb += t.disk_mb;
        self.gpus += t.gpus as u64;
        self.tasks += 1;
        self.ports
            .extend(t.ports.iter().copied().filter(|&p| p != 0));
    }
}

/// A host's capacity left after `used`; never below zero (a host whose capacity shrank
/// under its reservations is simply full).
#[derive(Clone, Debug, PartialEq)]
pub struct Free {
    pub cpus: u64,
    pub ram_mb: u64,
    pub disk_mb: u64,
    pub gpus: u64,
    pub ports: Vec<(u16, u16)>,
}

pub fn free(host: &Host, used: &Usage) -> Free {
    let mut taken = used.ports.clone();
    taken.sort_unstable();
    taken.dedup();
    Free {
        cpus: (host.cpus as u64).saturating_sub(used.cpus),
        ram_mb: host.ram_mb.saturating_sub(used.ram_mb),
        disk_mb: host.disk_mb.saturating_sub(used.disk_mb),
        gpus: (host.gpus as u64).saturating_sub(used.gpus),
        ports: subtract(&host.ports, &taken),
    }
}

/// Port ranges minus sorted, distinct ports.
pub fn subtract(ranges: &[(u16, u16)], taken: &[u16]) -> Vec<(u16, u16)> {
    let mut out = Vec::with_capacity(ranges.len() + taken.len());
    for &(lo, hi) in ranges {
        let mut start = lo as u32;
        let first = taken.partition_point(|&p| p < lo);
        for &p in taken[first..].iter().take_while(|&&p| p <= hi) {
            if p as u32 > start {
                out.push((start as u16, p - 1));
            }
            start = p as u32 + 1;
        }
        if start <= hi as u32 {
            out.push((start as u16, hi));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtracting_ports_splits_ranges() {
        assert_eq!(
            subtract(&[(31000, 31999)], &[31000, 31008, 31999]),
            vec![(31001, 31007), (31009, 31998)]
        );
        assert_eq!(
            subtract(&[(10, 10), (20, 22)], &[10, 21]),
            vec![(20, 20), (22, 22)]
        );
        assert_eq!(subtract(&[(1, 65535)], &[65535]), vec![(1, 65534)]);
    }
}
