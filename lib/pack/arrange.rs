//! A bounded exact search over the arrangements of a small pass: the instances it placed
//! or left pending, on the hosts that could hold them. The greedy loop decides each
//! instance once, in one order; on a small problem that often costs a host, or leaves an
//! instance pending that an arrangement of the same work places (against the CP-SAT
//! optimum on the small problems of scripts/bench-pack: one problem in seven used a host
//! more). A depth-first search, largest instances first, finds the arrangement that opens
//! fewer hosts, or places everything, when there is one within its budget.
//!
//! The model is plain numbers: the caller (decide) builds it from the fleet with the work
//! of the pass taken back, and applies the arrangement found.

use std::cell::Cell;

use super::fleet::ref_milli;

/// Physical millicores, ram, disk and ports free on a host.
pub type Room = [u64; 4];

/// A host the search may use, as it is without the pass's work.
#[derive(Clone, Debug)]
pub struct Host {
    pub free: Room,
    pub cpu_factor: f64,
    /// Holds work that stays, or held some before the pass: using it opens nothing.
    pub in_use: bool,
    /// Hosts not in use of one kind (same room, admitted by the same jobs) are alike: the
    /// search opens them in order, so it never tries two arrangements that differ only
    /// by which of them is which.
    pub kind: usize,
}

/// What the instances of one job ask for, and where they may go.
#[derive(Clone, Debug)]
pub struct Job {
    /// Reference millicores, ram, disk and ports.
    pub need: Room,
    /// Physical millicores one instance takes, per host (its cpu factor).
    pub physical: Vec<u64>,
    /// Per host: its dedicated and value constraints let the job in.
    pub admits: Vec<bool>,
    /// At most this many instances per host, counting those of `held`.
    pub per_host: Option<u32>,
    /// Instances of the job already on each host that stay there.
    pub held: Vec<u32>,
}

/// The instances to arrange (each names its job) on the hosts.
pub struct Model {
    pub hosts: Vec<Host>,
    pub jobs: Vec<Job>,
    pub items: Vec<usize>,
}

impl Model {
    /// Hosts not in use that `at` puts something on.
    pub fn opened(&self, at: &[usize]) -> usize {
        let mut seen = vec![false; self.hosts.len()];
        at.iter()
            .filter(|&&h| !self.hosts[h].in_use && !std::mem::replace(&mut seen[h], true))
            .count()
    }
}

/// An arrangement of every item that opens fewer hosts than `opened` does; or, when the
/// pass left some pending (`opened` is None), one that places them all, then as few
/// hosts as the budget finds. None when the budget ran out first or there is none.
pub fn improve(model: &Model, opened: Option<usize>, budget: &Cell<usize>) -> Option<Vec<usize>> {
    let fresh = model.hosts.iter().filter(|h| !h.in_use).count();
    let mut limit = match opened {
        Some(k) => k.checked_sub(1)?,
        None => fresh,
    };
    let mut best = None;
    loop {
        let mut search = Search::new(model);
        if !search.run(limit, budget) {
            break;
        }
        let k = model.opened(&search.at);
        best = Some(search.at);
        match k.checked_sub(1) {
            Some(l) => limit = l,
            None => break,
        }
    }
    best
}

/// The depth-first search's state: the room left on each host and what is on it.
struct Search<'a> {
    model: &'a Model,
    /// Items in the order they are decided: the largest jobs first, a job's instances
    /// together.
    order: Vec<usize>,
    /// Hosts in use first, then each kind's hosts together: an item of the same job as
    /// the one before it goes on a host at or after that one's position (its instances
    /// are alike, so any arrangement has one in that form).
    position: Vec<usize>,
    by_position: Vec<usize>,
    /// Per kind: its hosts by position, and how many of them are open.
    kinds: Vec<Vec<usize>>,
    open_of_kind: Vec<usize>,
    /// Per resource: the kinds by room, largest first (for the bound).
    kinds_by_room: [Vec<usize>; 4],
    free: Vec<Room>,
    items_on: Vec<u32>,
    /// Instances per job and host, those held included.
    count: Vec<u32>,
    at: Vec<usize>,
    opened: usize,
    limit: usize,
    /// Asked for by the items not yet decided (cpus in reference millicores), and free on
    /// the hosts open (cpus as the reference millicores their physical ones are worth).
    left: [f64; 4],
    open_room: [f64; 4],
    /// The largest host's cpus and ram (for `slack`).
    scale: [f64; 2],
    /// Per depth: the hosts it tries, reused.
    tries: Vec<Vec<(bool, f64, usize)>>,
}

impl<'a> Search<'a> {
    fn new(model: &'a Model) -> Search<'a> {
        let n = model.hosts.len();
        let kinds_n = model.hosts.iter().map(|h| h.kind + 1).max().unwrap_or(0);
        let mut by_position: Vec<usize> = (0..n).collect();
        by_position.sort_by_key(|&h| (!model.hosts[h].in_use, model.hosts[h].kind, h));
        let mut position = vec![0; n];
        let mut kinds = vec![Vec::new(); kinds_n];
        for (p, &h) in by_position.iter().enumerate() {
            position[h] = p;
            if !model.hosts[h].in_use {
                kinds[model.hosts[h].kind].push(h);
            }
        }
        let total = |r: usize| model.hosts.iter().map(|h| h.free[r]).sum::<u64>().max(1) as f64;
        let (cpus, ram) = (total(0), total(1));
        let size = |j: usize| {
            let need = &model.jobs[j].need;
            (need[0] as f64 / cpus).max(need[1] as f64 / ram)
        };
        let mut order: Vec<usize> = (0..model.items.len()).collect();
        order.sort_by(|&a, &b| {
            let (ja, jb) = (model.items[a], model.items[b]);
            size(jb).total_cmp(&size(ja)).then(ja.cmp(&jb))
        });
        let room_of_kind =
            |k: usize, r: usize| kinds[k].first().map_or(0, |&h| model.hosts[h].free[r]);
        let kinds_by_room = std::array::from_fn(|r| {
            let mut ks: Vec<usize> = (0..kinds_n).filter(|&k| !kinds[k].is_empty()).collect();
            ks.sort_by_key(|&k| std::cmp::Reverse(room_of_kind(k, r)));
            ks
        });
        let mut count = vec![0; model.jobs.len() * n];
        for (j, job) in model.jobs.iter().enumerate() {
            count[j * n..(j + 1) * n].copy_from_slice(&job.held);
        }
        let mut left = [0.0; 4];
        for &j in &model.items {
            for (l, &need) in left.iter_mut().zip(&model.jobs[j].need) {
                *l += need as f64;
            }
        }
        let mut open_room = [0.0; 4];
        for host in model.hosts.iter().filter(|h| h.in_use) {
            for (r, room) in open_room.iter_mut().enumerate() {
                *room += worth(host, r, host.free[r]);
            }
        }
        let largest = |r: usize| {
            model
                .hosts
                .iter()
                .map(|h| h.free[r])
                .max()
                .unwrap_or(0)
                .max(1) as f64
        };
        Search {
            model,
            open_room,
            scale: [largest(0), largest(1)],
            tries: vec![Vec::new(); model.items.len()],
            order,
            position,
            by_position,
            open_of_kind: vec![0; kinds_n],
            kinds,
            kinds_by_room,
            free: model.hosts.iter().map(|h| h.free).collect(),
            items_on: vec![0; n],
            count,
            at: vec![usize::MAX; model.items.len()],
            opened: 0,
            limit: 0,
            left,
        }
    }

    /// Whether every item can be arranged opening at most `limit` hosts; the arrangement
    /// is in `at`. False also when the budget ran out.
    fn run(&mut self, limit: usize, budget: &Cell<usize>) -> bool {
        self.limit = limit;
        self.decide(0, budget)
    }

    fn decide(&mut self, k: usize, budget: &Cell<usize>) -> bool {
        let Some(&item) = self.order.get(k) else {
            return true;
        };
        if !self.room_may_suffice() {
            return false;
        }
        let m = self.model;
        let j = m.items[item];
        let same_job_before = k
            .checked_sub(1)
            .map(|p| self.order[p])
            .filter(|&p| m.items[p] == j);
        let from = same_job_before.map_or(0, |p| self.position[self.at[p]]);
        // Hosts already holding something, tightest fit first, then the next host of
        // each kind, likewise.
        let mut tries = std::mem::take(&mut self.tries[k]);
        tries.clear();
        for p in from..self.by_position.len() {
            let h = self.by_position[p];
            if !(m.hosts[h].in_use || self.items_on[h] > 0) {
                continue;
            }
            if !self.spend(budget) {
                self.tries[k] = tries;
                return false;
            }
            if self.fits(j, h) {
                tries.push((false, self.slack(j, h), h));
            }
        }
        if self.opened < self.limit {
            for kind in 0..self.kinds.len() {
                let Some(&h) = self.kinds[kind].get(self.open_of_kind[kind]) else {
                    continue;
                };
                if self.position[h] < from {
                    continue;
                }
                if !self.spend(budget) {
                    self.tries[k] = tries;
                    return false;
                }
                if self.fits(j, h) {
                    tries.push((true, self.slack(j, h), h));
                }
            }
        }
        tries.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let mut found = false;
        for &(_, _, h) in &tries {
            if self.descend(k, item, h, budget) {
                found = true;
                break;
            }
            if budget.get() == 0 {
                break;
            }
        }
        self.tries[k] = tries;
        found
    }

    /// What host `h` would have left with one more instance of job `j`, in shares of the
    /// largest host, cpus and ram together: the least is the tightest fit.
    fn slack(&self, j: usize, h: usize) -> f64 {
        let (job, free) = (&self.model.jobs[j], &self.free[h]);
        (free[0] - job.physical[h]) as f64 / self.scale[0]
            + (free[1] - job.need[1]) as f64 / self.scale[1]
    }

    /// Puts `item` (the k-th decided) on host `h`, decides the rest, and takes it back
    /// unless that succeeded.
    fn descend(&mut self, k: usize, item: usize, h: usize, budget: &Cell<usize>) -> bool {
        self.put(item, h, 1);
        if self.decide(k + 1, budget) {
            return true;
        }
        self.put(item, h, -1);
        false
    }

    fn spend(&self, budget: &Cell<usize>) -> bool {
        match budget.get().checked_sub(1) {
            Some(b) => {
                budget.set(b);
                true
            }
            None => false,
        }
    }

    /// Whether host `h` takes one more instance of job `j` now: the same checks, in the
    /// same arithmetic, as the fleet's.
    fn fits(&self, j: usize, h: usize) -> bool {
        let (job, free) = (&self.model.jobs[j], &self.free[h]);
        let n = self.model.hosts.len();
        job.admits[h]
            && job.per_host.is_none_or(|l| self.count[j * n + h] < l)
            && ref_milli(
                free[0].min(u32::MAX as u64) as u32,
                self.model.hosts[h].cpu_factor,
            ) as u64
                >= job.need[0]
            && (1..4).all(|r| free[r] >= job.need[r])
    }

    /// Adds (+1) or takes back (-1) item `item` on host `h`.
    fn put(&mut self, item: usize, h: usize, sign: i64) {
        let m = self.model;
        let j = m.items[item];
        let n = m.hosts.len();
        let job = &m.jobs[j];
        let host = &m.hosts[h];
        let opens = !host.in_use && self.items_on[h] == 0;
        if opens {
            self.open(h, 1);
        }
        let take = [job.physical[h], job.need[1], job.need[2], job.need[3]];
        for (r, t) in take.into_iter().enumerate() {
            self.free[h][r] = (self.free[h][r] as i64 - sign * t as i64) as u64;
            self.left[r] -= sign as f64 * job.need[r] as f64;
            self.open_room[r] -= sign as f64 * worth(host, r, t);
        }
        self.count[j * n + h] = (self.count[j * n + h] as i64 + sign) as u32;
        self.items_on[h] = (self.items_on[h] as i64 + sign) as u32;
        if !host.in_use && self.items_on[h] == 0 && sign < 0 {
            self.open(h, -1);
        }
        self.at[item] = if sign > 0 { h } else { usize::MAX };
    }

    /// Opens (+1) or closes (-1) host `h`, which is not in use.
    fn open(&mut self, h: usize, sign: i64) {
        let host = &self.model.hosts[h];
        self.opened = (self.opened as i64 + sign) as usize;
        let open = &mut self.open_of_kind[host.kind];
        *open = (*open as i64 + sign) as usize;
        for (r, room) in self.open_room.iter_mut().enumerate() {
            *room += sign as f64 * worth(host, r, self.free[h][r]);
        }
    }

    /// Whether the room on the hosts open, and on the largest of those that may still be
    /// opened, holds what the items left ask for, in each resource: when it does not, no
    /// arrangement below this point exists.
    fn room_may_suffice(&self) -> bool {
        let m = self.model;
        (0..4).all(|r| {
            let mut room = self.open_room[r];
            let mut openings = self.limit - self.opened;
            for &kind in &self.kinds_by_room[r] {
                if openings == 0 {
                    break;
                }
                let hosts = &self.kinds[kind];
                let take = (hosts.len() - self.open_of_kind[kind]).min(openings);
                let host = &m.hosts[hosts[0]];
                room += take as f64 * worth(host, r, host.free[r]);
                openings -= take;
            }
            // Rounding: the bound only has to be no smaller than the truth.
            room + 1.0 >= self.left[r]
        })
    }
}

/// What `amount` of resource `r` on `host` holds of what jobs ask: its cpus in reference
/// millicores.
fn worth(host: &Host, r: usize, amount: u64) -> f64 {
    if r == 0 {
        amount as f64 * host.cpu_factor
    } else {
        amount as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(cpus: u64, ram: u64, kind: usize) -> Host {
        Host {
            free: [cpus, ram, 0, 0],
            cpu_factor: 1.0,
            in_use: false,
            kind,
        }
    }

    fn job(cpus: u64, ram: u64, hosts: usize, per_host: Option<u32>) -> Job {
        Job {
            need: [cpus, ram, 0, 0],
            physical: vec![cpus; hosts],
            admits: vec![true; hosts],
            per_host,
            held: vec![0; hosts],
        }
    }

    /// 4, 4, 3, 3, 3, 3 on hosts of 10: first fit decreasing puts 4+4 on one, 3+3+3 on
    /// the next and the last 3 on a third; 4+3+3 twice uses two.
    #[test]
    fn finds_the_fewest_hosts_where_largest_first_misses() {
        let hosts: Vec<Host> = (0..4).map(|_| host(10, 100, 0)).collect();
        let model = Model {
            jobs: vec![job(4, 1, 4, None), job(3, 1, 4, None)],
            items: vec![0, 0, 1, 1, 1, 1],
            hosts,
        };
        let greedy = vec![0, 0, 1, 1, 1, 2];
        assert_eq!(model.opened(&greedy), 3);
        let budget = Cell::new(1 << 16);
        let at = improve(&model, Some(3), &budget).expect("two hosts hold it");
        assert_eq!(model.opened(&at), 2);
        // The arrangement fits.
        for h in 0..4 {
            let used: u64 = at
                .iter()
                .zip(&model.items)
                .filter(|(&a, _)| a == h)
                .map(|(_, &j)| model.jobs[j].need[0])
                .sum();
            assert!(used <= 10);
        }
        // Proving two is the least took a bounded search, not the budget.
        assert!(budget.get() > 0);
    }

    #[test]
    fn places_what_greedy_left_pending_and_keeps_limits() {
        // Two hosts of 8 cpus; a job of 2 instances of 5 with one per host, and 2 of 3.
        // Putting both 3s on one host leaves no host for the second 5.
        let hosts: Vec<Host> = (0..2).map(|_| host(8, 100, 0)).collect();
        let model = Model {
            jobs: vec![job(3, 1, 2, None), job(5, 1, 2, Some(1))],
            items: vec![0, 0, 1, 1],
            hosts,
        };
        let at = improve(&model, None, &Cell::new(1 << 16)).expect("all fit");
        assert_ne!(at[2], at[3], "one instance of the limited job per host");
        assert_ne!(at[0], at[1]);
    }

    #[test]
    fn an_empty_budget_finds_nothing() {
        let hosts: Vec<Host> = (0..4).map(|_| host(10, 100, 0)).collect();
        let model = Model {
            jobs: vec![job(4, 1, 4, None), job(3, 1, 4, None)],
            items: vec![0, 0, 1, 1, 1, 1],
            hosts,
        };
        assert!(improve(&model, Some(3), &Cell::new(3)).is_none());
    }
}
