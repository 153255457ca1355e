//! Counting the hosts that refuse a pending job, by the first check each fails (the reasons
//! of a pending record), for every pending job once the pass is over.
//!
//! Asking each host about each pending job costs hosts × pending jobs, and an oversubscribed
//! fleet leaves tens of thousands of jobs pending: two one-instance jobs per host at 1.5 ×
//! capacity spent 4.2 s of a 6.7 s run on 100,000 hosts that way. Here the hosts that pass
//! one check are a set, and a job's count for a reason is how much its check shrinks the
//! set of hosts that passed every check before it:
//! - a host with a value is found in a column's index of hosts by value, so a constraint
//!   costs the hosts it names;
//! - hosts are numbered in the order of their free cpus, most first, so the hosts with the
//!   cpus a job needs are a prefix, and the checks after it cost a word per 64 hosts of it;
//! - the hosts with enough of another resource are a set kept ready for every 1/MARKS of
//!   the fleet in the order of that resource, plus the few between it and the need;
//! - a resource every host has enough of costs nothing.

use std::collections::HashMap;

use super::fleet::{Fleet, NONE};

/// How many ready sets each room resource beyond cpus keeps: a need's hosts are the ready
/// set below it plus at most a MARKS-th of the fleet taken one by one.
const MARKS: usize = 128;

/// The fleet's hosts as sets, for `Survivors` to be narrowed by: built once per pass, each
/// index when first asked for.
pub struct HostSets {
    /// Each host's position: hosts ordered by free cpus, most first.
    position: Vec<u32>,
    /// Free cpus (reference millicores) by position, descending.
    cpus: Vec<u64>,
    /// The other room resources (ram, disk, gpus, ports), each by position, the least of
    /// it any host has, then its index.
    free: [Vec<u64>; 4],
    least: [u64; 4],
    sorted: [Option<Sorted>; 4],
    /// Per attribute column.
    by_value: HashMap<usize, ByValue>,
}

/// One room resource: positions from the most free to the least, and the ready sets.
struct Sorted {
    /// (free amount, position), most first.
    order: Vec<(u64, u32)>,
    /// `ready[t]`: the positions of the first `t * step` entries of `order`.
    ready: Vec<Vec<u64>>,
    step: usize,
}

/// The positions of the hosts with each value of one column: those of value id `v` at
/// `positions[starts[v + 1]..starts[v + 2]]`, those without the attribute first.
struct ByValue {
    starts: Vec<u32>,
    positions: Vec<u32>,
}

impl ByValue {
    fn hosts(&self, v: u32) -> &[u32] {
        let slot = if v == NONE { 0 } else { v as usize + 1 };
        match (self.starts.get(slot), self.starts.get(slot + 1)) {
            (Some(&a), Some(&b)) => &self.positions[a as usize..b as usize],
            _ => &[],
        }
    }
}

/// The hosts that passed every check so far, as bits by position. Only the first `len`
/// positions can be set (the others failed cpus), and `count` is how many are.
///
/// While every one of the first `len` positions is set (`all`), no bit is written: most
/// pending jobs have no constraint, and their first check, cpus, only shortens the
/// prefix, so their hosts are written once, by the first check that leaves gaps, and
/// only as far as the prefix goes, not once per check over the whole fleet.
pub struct Survivors {
    words: Vec<u64>,
    all: bool,
    len: usize,
    count: usize,
}

impl Survivors {
    pub fn count(&self) -> usize {
        self.count
    }

    fn has(&self, p: usize) -> bool {
        p < self.len && (self.all || self.words[p / 64] >> (p % 64) & 1 == 1)
    }

    fn remove(&mut self, p: usize) {
        if self.has(p) {
            self.write_all();
            self.words[p / 64] &= !(1 << (p % 64));
            self.count -= 1;
        }
    }

    /// Writes the bits `all` stands for.
    fn write_all(&mut self) {
        if self.all {
            self.all = false;
            self.words = vec![u64::MAX; self.len.div_ceil(64)];
            self.clear_past_len();
        }
    }

    /// Clears the bits of the last word beyond `len`.
    fn clear_past_len(&mut self) {
        let (full, rest) = (self.len / 64, self.len % 64);
        if rest > 0 {
            self.words[full] &= (1 << rest) - 1;
        }
    }

    /// Keeps the first `len` positions only.
    fn keep_prefix(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        self.len = len;
        if self.all {
            self.count = len;
            return;
        }
        self.words.truncate(len.div_ceil(64));
        self.clear_past_len();
        self.recount();
    }

    /// Keeps the positions set in `set` or listed in `also`.
    fn keep(&mut self, set: &[u64], also: &[u32]) {
        let kept: Vec<u32> = also
            .iter()
            .copied()
            .filter(|&p| self.has(p as usize))
            .collect();
        let used = self.len.div_ceil(64);
        if self.all {
            self.all = false;
            self.words = set[..used].to_vec();
            self.clear_past_len();
        } else {
            for (w, s) in self.words[..used].iter_mut().zip(set) {
                *w &= s;
            }
        }
        for p in kept {
            self.words[p as usize / 64] |= 1 << (p % 64);
        }
        self.recount();
    }

    fn recount(&mut self) {
        let used = self.len.div_ceil(64);
        self.count = self.words[..used]
            .iter()
            .map(|w| w.count_ones() as usize)
            .sum();
    }
}

/// Sets the bit of each position in `positions` below `len`.
fn bits_of(positions: impl Iterator<Item = u32>, len: usize) -> Vec<u64> {
    let mut words = vec![0u64; len.div_ceil(64)];
    for p in positions.filter(|&p| (p as usize) < len) {
        words[p as usize / 64] |= 1 << (p % 64);
    }
    words
}

impl HostSets {
    pub fn new(fleet: &Fleet) -> HostSets {
        let n = fleet.len();
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_by_key(|&h| std::cmp::Reverse(fleet.free[h as usize].ref_cpus));
        let mut position = vec![0u32; n];
        for (p, &h) in order.iter().enumerate() {
            position[h as usize] = p as u32;
        }
        let by_position = |column: &dyn Fn(usize) -> u64| -> Vec<u64> {
            order.iter().map(|&h| column(h as usize)).collect()
        };
        let free = [
            by_position(&|h| fleet.free[h].ram_mb),
            by_position(&|h| fleet.free[h].disk_mb),
            by_position(&|h| fleet.free[h].gpus as u64),
            by_position(&|h| fleet.free[h].ports as u64),
        ];
        HostSets {
            cpus: by_position(&|h| fleet.free[h].ref_cpus as u64),
            least: free
                .each_ref()
                .map(|f| f.iter().copied().min().unwrap_or(0)),
            free,
            position,
            sorted: [None, None, None, None],
            by_value: HashMap::new(),
        }
    }

    /// Every host.
    pub fn everyone(&self) -> Survivors {
        let len = self.cpus.len();
        Survivors {
            words: Vec::new(),
            all: true,
            len,
            count: len,
        }
    }

    pub fn drop_host(&self, left: &mut Survivors, host: usize) {
        left.remove(self.position[host] as usize);
    }

    /// Keeps the hosts with at least `need` of room resource `k` (cpus, ram, disk, gpus,
    /// ports, as `Class::short_of` orders them) free.
    pub fn keep_room(&mut self, left: &mut Survivors, k: usize, need: u64) {
        if k == 0 {
            let enough = self.cpus.partition_point(|&c| c >= need);
            left.keep_prefix(enough);
            return;
        }
        if need <= self.least[k - 1] {
            return;
        }
        let free = &self.free[k - 1];
        let sorted = self.sorted[k - 1].get_or_insert_with(|| Sorted::new(free));
        let enough = sorted.order.partition_point(|&(f, _)| f >= need);
        let t = enough / sorted.step;
        let also: Vec<u32> = sorted.order[t * sorted.step..enough]
            .iter()
            .map(|&(_, p)| p)
            .collect();
        left.keep(&sorted.ready[t], &also);
    }

    /// Drops the hosts whose value in attribute column `col` is `v` (NONE: without it).
    pub fn drop_value(&mut self, left: &mut Survivors, fleet: &Fleet, col: usize, v: u32) {
        for &p in self.index(fleet, col).hosts(v) {
            left.remove(p as usize);
        }
    }

    /// Keeps the hosts whose value in attribute column `col` is one of `values`.
    pub fn keep_values(&mut self, left: &mut Survivors, fleet: &Fleet, col: usize, values: &[u32]) {
        let index = self.index(fleet, col);
        let named = values.iter().flat_map(|&v| index.hosts(v).iter().copied());
        let set = bits_of(named, left.len);
        left.keep(&set, &[]);
    }

    fn index(&mut self, fleet: &Fleet, col: usize) -> &ByValue {
        let position = &self.position;
        self.by_value.entry(col).or_insert_with(|| {
            let column = fleet.attrs.column(col);
            let slot = |v: u32| if v == NONE { 0 } else { v as usize + 1 };
            let slots = fleet.attrs.value_count(col) + 1;
            let mut starts = vec![0u32; slots + 1];
            for &v in column {
                starts[slot(v) + 1] += 1;
            }
            for s in 1..starts.len() {
                starts[s] += starts[s - 1];
            }
            let mut next = starts.clone();
            let mut positions = vec![0u32; column.len()];
            for (h, &v) in column.iter().enumerate() {
                let s = slot(v);
                positions[next[s] as usize] = position[h];
                next[s] += 1;
            }
            ByValue { starts, positions }
        })
    }
}

impl Sorted {
    fn new(free: &[u64]) -> Sorted {
        let n = free.len();
        let mut order: Vec<(u64, u32)> = free
            .iter()
            .enumerate()
            .map(|(p, &f)| (f, p as u32))
            .collect();
        order.sort_unstable_by(|a, b| b.cmp(a));
        let step = n.div_ceil(MARKS).max(1);
        let mut ready = vec![vec![0u64; n.div_ceil(64)]];
        for chunk in order.chunks(step) {
            let mut next = ready[ready.len() - 1].clone();
            for &(_, p) in chunk {
                next[p as usize / 64] |= 1 << (p % 64);
            }
            ready.push(next);
        }
        Sorted { order, ready, step }
    }
}
