//! The placement loop. Jobs are taken in order (production before preemptible, higher
//! priority first, larger first); all instances of a job are identical (Borg's equivalence
//! class), so a job is compiled once into a `Class` and its instances placed one after the
//! other. Hosts sit in buckets by how much they have left; binpack takes the fullest host
//! that fits (best fit), spread the emptiest (worst fit). A host's bucket key is its
//! scarcest free resource as a share of the fleet's largest, so a host full in any resource
//! sinks to the bottom and is not looked at again by instances that need more than it has;
//! within a bucket, cells by how much it has of the other of cpus and ram keep a host short
//! of one from being looked at by instances that need more of it (`index`).
//!
//! The inner loop reads flat arrays, compares integers and allocates nothing.

use crate::job::{Constraint, JobSpec, Tier};
use crate::pack::fleet::{domain_slot, Fleet, NONE};
use crate::pack::Resources;

use super::index::{bucket_of, cell_of, covers, Index, Room, Slot, Want, CELLS};
use super::refusals::{HostSets, Survivors};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Fewest hosts, least stranded capacity.
    Binpack,
    /// Even load across hosts.
    Spread,
}

/// Why a host cannot take an instance: the first check it fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    Dedicated,
    /// Index into the class's value constraints.
    Constraint(u16),
    /// Index into the class's limits.
    Limit(u16),
    Cpus,
    Ram,
    Disk,
    Gpus,
    Ports,
}

impl Reason {
    /// Whether it is a resource the host is short of (and every other check passed).
    pub fn is_room(self) -> bool {
        ROOM_REASONS.contains(&self)
    }
}

/// The resources a host can be short of, in the order `check` asks.
const ROOM_REASONS: [Reason; 5] = [
    Reason::Cpus,
    Reason::Ram,
    Reason::Disk,
    Reason::Gpus,
    Reason::Ports,
];

/// A limit is kept per host (attribute `host`) or per value of an attribute column.
#[derive(Clone, Debug)]
enum Scope {
    Host,
    Column(usize),
}

/// A `values` or `not` constraint compiled: the value ids it names, sorted.
#[derive(Debug, Clone)]
struct ValueRule {
    column: usize,
    named: Vec<u32>,
    /// `values` (a host must have one of them) rather than `not`.
    positive: bool,
}

impl ValueRule {
    /// Whether a host whose value in the column is `v` passes.
    #[inline]
    fn allows(&self, v: u32) -> bool {
        if v == NONE {
            // A host without the attribute has none of the values.
            return !self.positive;
        }
        self.named.binary_search(&v).is_ok() == self.positive
    }
}

/// A set of small integers (ids of dedicated lists) asked in O(1) for the first 64, the
/// rest by a search of the few beyond: sized by what it holds, not by the ids there are.
#[derive(Clone, Debug, Default)]
struct IdSet {
    low: u64,
    high: Vec<u32>,
}

impl IdSet {
    fn new(ids: &[u32]) -> IdSet {
        let mut set = IdSet::default();
        for &id in ids {
            if id < 64 {
                set.low |= 1 << id;
            } else {
                set.high.push(id);
            }
        }
        set.high.sort_unstable();
        set
    }

    fn is_empty(&self) -> bool {
        self.low == 0 && self.high.is_empty()
    }

    #[inline]
    fn contains(&self, id: u32) -> bool {
        if id < 64 {
            self.low >> id & 1 == 1
        } else {
            self.high.binary_search(&id).is_ok()
        }
    }
}

/// Instances of a job per value of one failure-domain column (by `domain_slot`).
///
/// A table with a slot per value while the job is placed: spread reads it for every
/// candidate host. Otherwise only the values it holds are kept, and the table waits in
/// `Spare` for the next job: 20,000 jobs over 2,500 racks held 200 MB of tables, and
/// allocating them was a tenth of the pass.
#[derive(Debug, Clone)]
enum DomainCounts {
    /// The counts by slot, and the slots ever counted in while the table was open (some
    /// twice): closing reads and zeroes those, not a table of 2,500 racks for a job on a
    /// few of them.
    Table(Vec<u32>, Vec<u32>),
    Held(Vec<(u32, u32)>),
}

/// Zeroed tables of jobs not being placed, for the next jobs to take.
#[derive(Default)]
pub struct Spare(Vec<Vec<u32>>);

impl DomainCounts {
    #[inline]
    fn get(&self, slot: usize) -> u32 {
        match self {
            DomainCounts::Table(t, _) => t.get(slot).copied().unwrap_or(0),
            DomainCounts::Held(held) => held
                .binary_search_by_key(&(slot as u32), |&(s, _)| s)
                .map_or(0, |i| held[i].1),
        }
    }

    /// Adds one instance in `slot`, or takes one away.
    fn add(&mut self, slot: usize, one: bool) {
        let n = match self {
            DomainCounts::Table(t, counted) => match t.get_mut(slot) {
                Some(n) => {
                    if *n == 0 && one {
                        counted.push(slot as u32);
                    }
                    n
                }
                None => return,
            },
            DomainCounts::Held(held) => {
                let i = match held.binary_search_by_key(&(slot as u32), |&(s, _)| s) {
                    Ok(i) => i,
                    Err(i) => {
                        held.insert(i, (slot as u32, 0));
                        i
                    }
                };
                &mut held[i].1
            }
        };
        *n = if one { *n + 1 } else { n.saturating_sub(1) };
    }

    /// A table of `slots` slots, from `spare` when one of that size waits there.
    fn open(&mut self, slots: usize, spare: &mut Spare) {
        let DomainCounts::Held(held) = self else {
            return;
        };
        let mut table = match spare.0.iter().rposition(|t| t.len() == slots) {
            Some(i) => spare.0.swap_remove(i),
            None => vec![0; slots],
        };
        let mut counted = Vec::with_capacity(held.len());
        for &(slot, n) in held.iter() {
            if let Some(x) = table.get_mut(slot as usize) {
                *x = n;
                counted.push(slot);
            }
        }
        *self = DomainCounts::Table(table, counted);
    }

    /// Keeps only the values held, and hands the table back zeroed.
    fn close(&mut self, spare: &mut Spare) {
        let DomainCounts::Table(table, counted) = self else {
            return;
        };
        counted.sort_unstable();
        counted.dedup();
        let held = counted
            .iter()
            .map(|&slot| (slot, std::mem::take(&mut table[slot as usize])))
            .filter(|&(_, n)| n > 0)
            .collect();
        spare.0.push(std::mem::take(table));
        *self = DomainCounts::Held(held);
    }
}

/// A job compiled for the loop.
#[derive(Debug, Clone)]
pub struct Class {
    pub job: usize,
    /// What one instance asks for, in the widths of the fleet's columns that `check`
    /// compares them with (no widening in the loop); `need` gives them as `Resources`.
    ref_cpus: u32,
    ram: u64,
    disk: u64,
    gpus: u32,
    ports: u32,
    /// Value constraints, each sized by the values it names, not by the values the
    /// fleet has (a job that excludes one host of 100,000 holds one id, not 100,000).
    values: Vec<ValueRule>,
    limits: Vec<(Scope, u32)>,
    /// The lists of `dedicated` values (ids in the fleet's dedicated column) that admit the
    /// job: one of their values is its role, its role/name or */name.
    admitted: IdSet,
    /// Hosts holding an instance of the job (running or placed now), for host limits.
    hosts: Vec<u32>,
    /// Instances per attribute value, per limit.
    value_used: Vec<Vec<u32>>,
    /// Instances per failure domain, per domain column (spread only).
    domain_used: Vec<DomainCounts>,
}

/// Instances of the current job per host, without a hash in the loop: counts are valid
/// only where the stamp is that of the last load.
pub struct Scratch {
    stamp: Vec<u32>,
    count: Vec<u32>,
    /// The job loaded, and the stamp of its load.
    job: u32,
    current: u32,
}

impl Scratch {
    pub fn new(hosts: usize) -> Scratch {
        Scratch {
            stamp: vec![0; hosts],
            count: vec![0; hosts],
            job: u32::MAX,
            current: 0,
        }
    }

    /// Loads the per-host counts of `class`, forgetting those loaded before.
    pub fn load(&mut self, class: &Class) {
        self.job = class.job as u32;
        self.current += 1;
        for &h in &class.hosts {
            self.add(h as usize);
        }
    }

    /// Whether the counts loaded are those of `class` (kept up to date by `Class::count`
    /// and `Class::uncount` since).
    pub fn holds(&self, class: &Class) -> bool {
        self.job == class.job as u32
    }

    fn add(&mut self, h: usize) {
        if self.stamp[h] != self.current {
            self.stamp[h] = self.current;
            self.count[h] = 0;
        }
        self.count[h] += 1;
    }

    fn sub(&mut self, h: usize) {
        if self.stamp[h] == self.current {
            self.count[h] -= 1;
        }
    }

    #[inline]
    fn get(&self, h: usize) -> u32 {
        if self.stamp[h] == self.current {
            self.count[h]
        } else {
            0
        }
    }
}

impl Class {
    pub fn compile(job: usize, spec: &JobSpec, fleet: &mut Fleet) -> Class {
        let n = fleet.len();
        let r = &spec.resources;
        let mut values = Vec::new();
        let mut limits = Vec::new();
        let mut value_used = Vec::new();
        for c in &spec.constraints {
            match c {
                Constraint::Limit { attr, limit } if attr == "host" => {
                    limits.push((Scope::Host, *limit))
                }
                Constraint::Limit { attr, limit } => {
                    let col = fleet.attrs.column_of(attr, n);
                    limits.push((Scope::Column(col), *limit));
                }
                Constraint::Values { attr, values: vs } | Constraint::Not { attr, values: vs } => {
                    let positive = matches!(c, Constraint::Values { .. });
                    let col = if attr == "host" {
                        fleet.host_column()
                    } else {
                        fleet.attrs.column_of(attr, n)
                    };
                    // On `dedicated` a host's id names a list: it is named when any of
                    // its values is.
                    let mut named: Vec<u32> = if Some(col) == fleet.dedicated {
                        fleet.lists_naming(vs)
                    } else {
                        vs.iter()
                            .filter_map(|v| fleet.attrs.lookup(col, v))
                            .collect()
                    };
                    named.sort_unstable();
                    named.dedup();
                    values.push(ValueRule {
                        column: col,
                        named,
                        positive,
                    });
                }
            }
        }
        for (scope, _) in &limits {
            value_used.push(match scope {
                Scope::Column(col) => vec![0; fleet.attrs.value_count(*col)],
                Scope::Host => Vec::new(),
            });
        }
        let admitted = IdSet::new(&fleet.lists_admitting(spec.role(), spec.name()));
        Class {
            job,
            ref_cpus: r.cpus,
            ram: r.ram_mb,
            disk: r.disk_mb,
            gpus: r.gpus,
            ports: r.ports.len() as u32,
            values,
            limits,
            admitted,
            hosts: Vec::new(),
            value_used,
            domain_used: fleet
                .domains
                .iter()
                .map(|_| DomainCounts::Held(Vec::new()))
                .collect(),
        }
    }

    /// How many instances of the job are in host `h`'s failure domains, largest domain
    /// first, from domain `from` on (those before it are left as they are); hosts lacking
    /// a domain attribute share one domain.
    fn domain_load(&self, fleet: &Fleet, h: usize, from: usize, out: &mut [u32; 4]) {
        for (i, out) in out
            .iter_mut()
            .enumerate()
            .take(fleet.domains.len())
            .skip(from)
        {
            *out = self.domain_used[i].get(domain_slot(fleet.domain_value(i, h)));
        }
    }

    /// Counts an instance on host `h` (placed now, or already running there) against the
    /// limits. `h` may be a host not offered (a draining one): then `values` gives its
    /// attribute values by column.
    pub fn count(
        &mut self,
        fleet: &Fleet,
        h: Option<usize>,
        values: &dyn Fn(usize) -> u32,
        scratch: &mut Scratch,
    ) {
        if let Some(h) = h {
            self.hosts.push(h as u32);
            if scratch.job == self.job as u32 {
                scratch.add(h);
            }
        }
        for (i, &col) in fleet.domains.iter().enumerate() {
            let v = match h {
                Some(h) => fleet.domain_value(i, h),
                None => values(col),
            };
            self.domain_used[i].add(domain_slot(v), true);
        }
        for (i, (scope, _)) in self.limits.iter().enumerate() {
            match scope {
                Scope::Host => {}
                Scope::Column(col) => {
                    let v = match h {
                        Some(h) => fleet.attrs.column(*col)[h],
                        None => values(*col),
                    };
                    if let Some(n) = self.value_used[i].get_mut(v as usize) {
                        *n += 1;
                    }
                }
            }
        }
    }

    /// Takes back the count of an instance placed on host `h` (moved elsewhere).
    pub fn uncount(&mut self, fleet: &Fleet, h: usize, scratch: &mut Scratch) {
        if let Some(i) = self.hosts.iter().rposition(|&x| x as usize == h) {
            self.hosts.swap_remove(i);
            if scratch.job == self.job as u32 {
                scratch.sub(h);
            }
        }
        for i in 0..fleet.domains.len() {
            let v = fleet.domain_value(i, h);
            self.domain_used[i].add(domain_slot(v), false);
        }
        for (i, (scope, _)) in self.limits.iter().enumerate() {
            if let Scope::Column(col) = scope {
                let v = fleet.attrs.column(*col)[h];
                if let Some(n) = self.value_used[i].get_mut(v as usize) {
                    *n -= 1;
                }
            }
        }
    }

    /// Whether some host passes the checks no placement changes (dedicated hosts, value
    /// constraints): a job no host admits is refused everywhere, in any order.
    pub fn admitted_somewhere(&self, fleet: &Fleet) -> bool {
        (0..fleet.len()).any(|h| self.admits(fleet, h))
    }

    /// Whether host `h` passes the checks no placement changes (dedicated, constraints).
    pub fn admits(&self, fleet: &Fleet, h: usize) -> bool {
        let dedicated = fleet.dedicated.map(|c| fleet.attrs.column(c)[h]);
        dedicated.is_none_or(|d| d == NONE || self.admitted.contains(d))
            && self
                .values
                .iter()
                .all(|rule| rule.allows(fleet.attrs.column(rule.column)[h]))
    }

    /// Whether host `h` can take one more instance now, or the first reason it cannot.
    #[inline]
    pub fn check(&self, fleet: &Fleet, scratch: &Scratch, h: usize) -> Result<(), Reason> {
        let mut first = Ok(());
        self.each_veto(fleet, scratch, h, &mut |r| {
            first = Err(r);
            false
        });
        first
    }

    /// Every reason host `h` cannot take one more instance now (Aurora reports them all;
    /// `--explain` prints them).
    pub fn vetoes(&self, fleet: &Fleet, scratch: &Scratch, h: usize) -> Vec<Reason> {
        let mut all = Vec::new();
        self.each_veto(fleet, scratch, h, &mut |r| {
            all.push(r);
            true
        });
        all
    }

    /// Gives `veto` each reason host `h` cannot take one more instance, in a fixed order,
    /// for as long as it asks for more (returns true).
    #[inline(always)]
    fn each_veto(
        &self,
        fleet: &Fleet,
        scratch: &Scratch,
        h: usize,
        veto: &mut impl FnMut(Reason) -> bool,
    ) {
        if let Some(col) = fleet.dedicated {
            let d = fleet.attrs.column(col)[h];
            if d != NONE && !self.admitted.contains(d) && !veto(Reason::Dedicated) {
                return;
            }
        }
        for (i, rule) in self.values.iter().enumerate() {
            if !rule.allows(fleet.attrs.column(rule.column)[h])
                && !veto(Reason::Constraint(i as u16))
            {
                return;
            }
        }
        for (i, (scope, limit)) in self.limits.iter().enumerate() {
            let used = match scope {
                Scope::Host => scratch.get(h),
                // A host without the attribute cannot be counted against the limit, so it
                // takes none of the job (as Aurora and Nomad do).
                Scope::Column(col) => match fleet.attrs.column(*col)[h] {
                    NONE => u32::MAX,
                    v => self.value_used[i].get(v as usize).copied().unwrap_or(0),
                },
            };
            if used >= *limit && !veto(Reason::Limit(i as u16)) {
                return;
            }
        }
        for (is_short, reason) in self.short_of(fleet, h).into_iter().zip(ROOM_REASONS) {
            if is_short && !veto(reason) {
                return;
            }
        }
    }

    /// How many hosts refuse one more instance, by the first reason each gives (the
    /// reasons of a pending record): each check in `each_veto`'s order narrows the hosts
    /// that passed the ones before it, and a reason counts the hosts its check took away.
    pub fn refusals(&self, fleet: &Fleet, sets: &mut HostSets) -> Vec<(Reason, u32)> {
        let mut left = sets.everyone();
        let mut out = Vec::new();
        let mut tally = |reason: Reason, before: usize, left: &Survivors| {
            if before > left.count() {
                out.push((reason, (before - left.count()) as u32));
            }
        };
        if let Some(col) = fleet.dedicated {
            let before = left.count();
            for id in (0..fleet.dedications.len() as u32).filter(|&id| !self.admitted.contains(id))
            {
                sets.drop_value(&mut left, fleet, col, id);
            }
            tally(Reason::Dedicated, before, &left);
        }
        for (i, rule) in self.values.iter().enumerate() {
            let before = left.count();
            if rule.positive {
                sets.keep_values(&mut left, fleet, rule.column, &rule.named);
            } else {
                for &v in &rule.named {
                    sets.drop_value(&mut left, fleet, rule.column, v);
                }
            }
            tally(Reason::Constraint(i as u16), before, &left);
        }
        for (i, (scope, limit)) in self.limits.iter().enumerate() {
            let before = left.count();
            match scope {
                Scope::Host => {
                    let mut hosts = self.hosts.clone();
                    hosts.sort_unstable();
                    for run in hosts.chunk_by(|a, b| a == b) {
                        if run.len() as u32 >= *limit {
                            sets.drop_host(&mut left, run[0] as usize);
                        }
                    }
                }
                Scope::Column(col) => {
                    // A host without the attribute takes none of the job (`each_veto`).
                    sets.drop_value(&mut left, fleet, *col, NONE);
                    let used = &self.value_used[i];
                    for v in (0..used.len()).filter(|&v| used[v] >= *limit) {
                        sets.drop_value(&mut left, fleet, *col, v as u32);
                    }
                }
            }
            tally(Reason::Limit(i as u16), before, &left);
        }
        let need = [
            self.ref_cpus as u64,
            self.ram,
            self.disk,
            self.gpus as u64,
            self.ports as u64,
        ];
        for (k, reason) in ROOM_REASONS.into_iter().enumerate() {
            let before = left.count();
            sets.keep_room(&mut left, k, need[k]);
            tally(reason, before, &left);
        }
        out
    }

    /// Whether host `h` is short of each resource of `ROOM_REASONS`, in that order.
    #[inline(always)]
    fn short_of(&self, fleet: &Fleet, h: usize) -> [bool; 5] {
        let free = &fleet.free[h];
        [
            free.ref_cpus < self.ref_cpus,
            free.ram_mb < self.ram,
            free.disk_mb < self.disk,
            free.gpus < self.gpus,
            free.ports < self.ports,
        ]
    }

    /// The text of a reason, as pending records and --explain print it.
    pub fn describe(&self, spec: &JobSpec, reason: Reason) -> String {
        match reason {
            Reason::Dedicated => "dedicated".into(),
            Reason::Constraint(i) => {
                let attr = spec.constraints.iter().filter_map(|c| match c {
                    Constraint::Values { attr, .. } | Constraint::Not { attr, .. } => Some(attr),
                    Constraint::Limit { .. } => None,
                });
                format!(
                    "constraint {}",
                    attr.clone().nth(i as usize).map_or("?", |s| s.as_str())
                )
            }
            Reason::Limit(i) => {
                let limit = spec.constraints.iter().filter_map(|c| match c {
                    Constraint::Limit { attr, limit } => Some(format!("limit {attr}:{limit}")),
                    _ => None,
                });
                limit
                    .clone()
                    .nth(i as usize)
                    .unwrap_or_else(|| "limit".into())
            }
            Reason::Cpus => "insufficient cpus".into(),
            Reason::Ram => "insufficient ram_mb".into(),
            Reason::Disk => "insufficient disk_mb".into(),
            Reason::Gpus => "insufficient gpus".into(),
            Reason::Ports => "insufficient ports".into(),
        }
    }

    /// Instances of the job in value slot `slot` of failure domain `level` (see
    /// `domain_slot`).
    pub fn domain_count(&self, level: usize, slot: usize) -> u32 {
        self.domain_used[level].get(slot)
    }

    /// The job is about to be placed: its instances per failure domain in tables.
    pub fn open_tables(&mut self, fleet: &Fleet, spare: &mut Spare) {
        for (counts, &col) in self.domain_used.iter_mut().zip(&fleet.domains) {
            counts.open(fleet.attrs.value_count(col) + 1, spare);
        }
    }

    /// The job is placed: its tables go back to `spare`.
    pub fn close_tables(&mut self, spare: &mut Spare) {
        for counts in &mut self.domain_used {
            counts.close(spare);
        }
    }

    /// Whether host `h` would have room for one more instance with `freed` more free
    /// (cpus in the host's physical millicores) and `ports` more ports.
    pub fn fits_with(&self, fleet: &Fleet, h: usize, freed: Resources, ports: u32) -> bool {
        let free = &fleet.free[h];
        let phys = (free.cpus as u64 + freed.cpus).min(u32::MAX as u64) as u32;
        super::fleet::ref_milli(phys, free.cpu_factor) >= self.ref_cpus
            && free.ram_mb + freed.ram_mb >= self.ram
            && free.disk_mb + freed.disk_mb >= self.disk
            && free.gpus as u64 + freed.gpus >= self.gpus as u64
            && free.ports + ports >= self.ports
    }

    /// How many instances are counted on hosts.
    pub fn instances_counted(&self) -> usize {
        self.hosts.len()
    }

    pub fn has_limits(&self) -> bool {
        !self.limits.is_empty()
    }

    /// Whether a host refuses an instance only for want of room: no constraint, no limit,
    /// and no dedicated host admits it (so every dedicated host refuses it, whatever job
    /// it is).
    pub fn asks_only_room(&self) -> bool {
        self.values.is_empty() && self.limits.is_empty() && self.admitted.is_empty()
    }

    /// Whether a limit counts instances per value of an attribute (a rack, a zone) rather
    /// than per host.
    pub fn limits_per_value(&self) -> bool {
        self.limits
            .iter()
            .any(|(s, _)| matches!(s, Scope::Column(_)))
    }

    /// The most instances a host may hold under the job's per-host limits.
    pub fn per_host_limit(&self) -> Option<u32> {
        self.limits
            .iter()
            .filter(|(s, _)| matches!(s, Scope::Host))
            .map(|&(_, l)| l)
            .min()
    }

    /// Instances of the job on host `h`, running or placed now.
    pub fn on_host(&self, h: usize) -> u32 {
        self.hosts.iter().filter(|&&x| x as usize == h).count() as u32
    }

    /// What one instance asks for (cpus in reference millicores).
    pub fn need(&self) -> Resources {
        Resources {
            cpus: self.ref_cpus as u64,
            ram_mb: self.ram,
            disk_mb: self.disk,
            gpus: self.gpus as u64,
        }
    }

    pub fn ports_need(&self) -> u32 {
        self.ports
    }
}

/// spread's buckets hold hosts of one emptiness (a 256th of a host) and one size of what
/// is free (`size_of`).
const SIZES: usize = 16;

/// The size class of the least share a host has free of the largest host: geometric, each
/// class √2 times the one below, over the 8 octaves below a whole host. A bucket then
/// holds hosts within √2 of each other in what they have free, whatever their size, so an
/// instance is refused only by hosts of the class its own need falls in. (A class a 16th
/// of the largest host wide put every host with less than 6 of 96 cores or 48 of 768 GiB
/// free in one class, where instances of 16 GiB were refused by most of them.)
fn size_of(share: f64) -> usize {
    let size = (share.log2() + 8.0) * (SIZES as f64 / 8.0);
    (size.max(0.0) as usize).min(SIZES - 1)
}

fn room_of(fleet: &Fleet, h: usize) -> Room {
    let free = &fleet.free[h];
    [
        free.ref_cpus as u64,
        free.ram_mb,
        free.disk_mb,
        free.gpus as u64,
        free.ports as u64,
    ]
}

/// `amount` as a share of `scale`; a resource no host has (scale 0) is never scarce.
fn share(amount: u64, scale: u64) -> f64 {
    match scale {
        0 => 1.0,
        _ => amount as f64 / scale as f64,
    }
}

/// Hosts are pooled so that the strategy can take them in a sensible order: ordinary hosts
/// before hosts scheduled for maintenance; within each, hosts in use, then fresh hosts
/// without GPUs, then fresh hosts with GPUs (so work that needs no GPU opens GPU hosts last).
const IN_USE: usize = 0;
const FRESH: usize = 1;
const FRESH_GPU: usize = 2;

fn pool_of(scheduled: bool, kind: usize) -> usize {
    3 * scheduled as usize + kind
}

/// spread keeps a pool per value of its largest failure domain when it has fewer values
/// than this.
const MAX_SPLIT: usize = 64;

/// The hosts, bucketed by how much they have left.
///
/// binpack fills the hosts in use by best fit and, when none takes an instance, opens the
/// largest fresh host: a fresh small host would otherwise look fuller than a fresh large one
/// and be opened first. spread keeps every host in one pool and takes the emptiest.
///
/// When jobs need GPUs, a placement that would leave a host with idle GPUs but fewer cpus or
/// less memory than any GPU job needs per GPU strands those GPUs, and work that needs no GPU
/// on a host with idle GPUs risks it; the placer passes over such hosts while one of the
/// next few candidates, in this pool or a later one, would not.
pub struct Placer {
    /// The six pools of `pool_of`, then, when spread splits the fleet by its largest failure
    /// domain (`split`), two pools (ordinary, scheduled) per value of that domain.
    pools: Index,
    pool_count: usize,
    /// spread: the column of the largest failure domain when it has few enough values
    /// (zones) for a pool each, so the least loaded zone with room is found over the whole
    /// fleet, not among a sample of the emptiest hosts.
    split: Option<usize>,
    /// Where each host is in the pools, in one record: a placement reads and writes it.
    seats: Vec<Seat>,
    /// Largest free amount per keyed resource at the start: cpus, ram, disk (binpack) and,
    /// when jobs need GPUs, gpus (0: not keyed).
    scale: Resources,
    strategy: Strategy,
    /// The least cpus and memory any GPU job needs per GPU.
    per_gpu: Option<(u64, u64)>,
    /// While one job's instances are placed one after the other (`Placer::parking`):
    /// the hosts that could not take one of them, taken out of the pools until the job is
    /// done. Its instances are all alike and hosts only fill meanwhile, so a host that
    /// could not take one cannot take the next: looking at it again for every instance
    /// is what made a job with a limit per host quadratic.
    parking: bool,
    refused: std::cell::RefCell<Vec<u32>>,
    parked: Vec<u32>,
    /// The least rooms (`Room`) that `find` found no host with, for instances that ask
    /// only for room, and the fleet's `releases` then: until a host gains room, an instance
    /// that needs as much or more fits nowhere either, and is not searched for. In an
    /// oversubscribed fleet, tens of thousands of jobs are left pending: searching every
    /// pool for each was the most of placing them.
    no_room: std::cell::RefCell<(u64, Vec<Room>)>,
    /// binpack: the fresh hosts without GPUs, not scheduled, by shape (free cpus and ram),
    /// for `open`; empty when there are more than MAX_SHAPES shapes. A host opened stays
    /// in its list until it reaches the top.
    shapes: Vec<Shape>,
    shape_of: std::collections::HashMap<(u32, u64), usize>,
    /// The free cpus and ram of the hosts in use that are not scheduled: what the hosts
    /// already open can still hold. `counted` is each host's part of it.
    open_free: [u64; 2],
    counted: Vec<[u64; 2]>,
}

/// A host's place in the pools: its bucket and cell, its kind (`pool_of`), whether it
/// is parked (out of the pools while a job is placed), and its first pool (`home`).
#[derive(Clone, Copy, Default)]
struct Seat {
    slot: Slot,
    kind: u8,
    parked: bool,
    /// The pool of its kind `IN_USE` (binpack: the scheduled hosts' or the others'; spread
    /// split by a domain: its value's), kept here because reading it from the attribute
    /// and maintenance columns was two cache misses a placement.
    home: u8,
}

/// Fresh hosts of one shape.
struct Shape {
    cpus: u32,
    ram: u64,
    hosts: std::cell::RefCell<Vec<u32>>,
}

/// `Placer::open` chooses among at most this many host shapes (hardware generations and
/// configurations); a fleet of more opens the largest fresh host, as before.
const MAX_SHAPES: usize = 64;

/// How many fresh hosts of one shape `open` asks before passing the shape over (hosts that
/// differ only in attributes a constraint refuses).
const SHAPE_TRIES: usize = 16;

/// How many rooms `Placer::no_room` keeps: each instance that asks only for room is
/// compared with all of them.
const NO_ROOM_KEPT: usize = 64;

/// How many more fitting hosts a pool is searched for one that strands no GPU.
const GPU_CANDIDATES: usize = 16;

impl Placer {
    /// Buckets the fleet; `in_use` marks hosts that already hold instances, `held` what
    /// they hold (physical cpus).
    pub fn new(
        fleet: &mut Fleet,
        strategy: Strategy,
        per_gpu: Option<(u64, u64)>,
        in_use: &[bool],
        held: &[Resources],
    ) -> Placer {
        if strategy == Strategy::Spread {
            for (free, held) in fleet.free.iter_mut().zip(held) {
                let physical = (free.cpus as u64 + held.cpus).min(u32::MAX as u64);
                free.size = super::fleet::Size {
                    ref_cpus: super::fleet::ref_milli(physical as u32, free.cpu_factor),
                    gpus: (free.gpus as u64 + held.gpus).min(u32::MAX as u64) as u32,
                    ram_mb: free.ram_mb + held.ram_mb,
                };
            }
        }
        let fleet = &*fleet;
        let largest = fleet.largest();
        // binpack keys disk too, so a host out of disk sinks with the full ones rather than
        // be passed over, bucket after bucket, by every instance that needs some.
        let scale = Resources {
            disk_mb: match strategy {
                Strategy::Binpack => largest.disk_mb,
                Strategy::Spread => 0,
            },
            gpus: if per_gpu.is_some() { largest.gpus } else { 0 },
            ..largest
        };
        let mut seats: Vec<Seat> = (0..fleet.len())
            .map(|h| Seat {
                kind: match () {
                    _ if strategy == Strategy::Spread || in_use[h] => IN_USE as u8,
                    _ if fleet.free[h].gpus > 0 => FRESH_GPU as u8,
                    _ => FRESH as u8,
                },
                ..Seat::default()
            })
            .collect();
        let split = match (strategy, fleet.domains.first()) {
            (Strategy::Spread, Some(&col)) if fleet.attrs.value_count(col) < MAX_SPLIT => Some(col),
            _ => None,
        };
        for (h, seat) in seats.iter_mut().enumerate() {
            let scheduled = fleet.scheduled[h];
            seat.home = match split {
                Some(col) => 6 + 2 * domain_slot(fleet.attrs.column(col)[h]) + scheduled as usize,
                None => pool_of(scheduled, IN_USE),
            } as u8;
        }
        let pool_count = 6 + split.map_or(0, |col| 2 * (fleet.attrs.value_count(col) + 1));
        let cells = match strategy {
            Strategy::Binpack => CELLS,
            Strategy::Spread => 1,
        };
        let mut p = Placer {
            pools: Index::new(pool_count, cells, fleet.len()),
            pool_count,
            split,
            seats,
            scale,
            strategy,
            per_gpu,
            parking: false,
            refused: std::cell::RefCell::new(Vec::new()),
            parked: Vec::new(),
            no_room: std::cell::RefCell::new((0, Vec::new())),
            shapes: Vec::new(),
            shape_of: std::collections::HashMap::new(),
            open_free: [0, 0],
            counted: vec![[0, 0]; fleet.len()],
        };
        for h in insertion_order(fleet, strategy) {
            p.seats[h].slot = p.insert(fleet, h);
            p.account(fleet, h);
        }
        if strategy == Strategy::Binpack {
            p.sort_shapes(fleet);
        }
        p
    }

    /// Lists the fresh hosts by shape, largest last in each list (taken first).
    fn sort_shapes(&mut self, fleet: &Fleet) {
        let mut fresh: Vec<u32> = (0..fleet.len() as u32)
            .filter(|&h| self.openable(fleet, h as usize))
            .collect();
        fresh.sort_by_key(|&h| std::cmp::Reverse(h));
        for h in fresh {
            let key = (
                fleet.free[h as usize].ref_cpus,
                fleet.free[h as usize].ram_mb,
            );
            let next = self.shapes.len();
            let s = *self.shape_of.entry(key).or_insert(next);
            if s == next {
                if next == MAX_SHAPES {
                    self.shapes.clear();
                    self.shape_of.clear();
                    return;
                }
                self.shapes.push(Shape {
                    cpus: key.0,
                    ram: key.1,
                    hosts: std::cell::RefCell::new(Vec::new()),
                });
            }
            self.shapes[s].hosts.borrow_mut().push(h);
        }
    }

    /// The fresh host `open` would take first of each shape.
    pub fn fresh_of_each_shape(&self, fleet: &Fleet) -> Vec<usize> {
        let top = |shape: &Shape| {
            let hosts = shape.hosts.borrow();
            let mut open = hosts.iter().rev().map(|&h| h as usize);
            open.find(|&h| self.openable(fleet, h))
        };
        self.shapes.iter().filter_map(top).collect()
    }

    /// Whether `open` may open host `h`: fresh, without GPUs, not scheduled.
    fn openable(&self, fleet: &Fleet, h: usize) -> bool {
        self.seats[h].kind == FRESH as u8 && !self.seats[h].parked && !fleet.scheduled[h]
    }

    /// Keeps `open_free` up to date with host `h` (binpack's: spread opens nothing).
    fn account(&mut self, fleet: &Fleet, h: usize) {
        if self.strategy != Strategy::Binpack {
            return;
        }
        let now = if self.seats[h].kind == IN_USE as u8 && !fleet.scheduled[h] {
            [fleet.free[h].ref_cpus as u64, fleet.free[h].ram_mb]
        } else {
            [0, 0]
        };
        let was = self.counted[h];
        self.open_free = std::array::from_fn(|k| self.open_free[k] - was[k] + now[k]);
        self.counted[h] = now;
    }

    /// binpack, when no host in use takes an instance and the fleet holds all that is asked:
    /// the fresh host to open, by shape. The hosts in use and the one opened should hold as
    /// much as they can of what is still to place (`demand`) in its scarcest resource, so
    /// the shapes opened follow the work's cpu:ram ratio rather than the fleet's largest
    /// host; then the largest against the demand. On shape a of the benchmark (mixed
    /// ratios, 10k hosts) it took hosts used from 9,776 to 8,100 and placed the 2,810
    /// instances of shape e it left pending.
    fn open(
        &self,
        fleet: &Fleet,
        class: &Class,
        scratch: &Scratch,
        demand: Resources,
    ) -> Option<usize> {
        let d = [demand.cpus.max(1) as f64, demand.ram_mb.max(1) as f64];
        let mut best: Option<((f64, f64), usize)> = None;
        for shape in &self.shapes {
            let mut hosts = shape.hosts.borrow_mut();
            while hosts
                .last()
                .is_some_and(|&h| !self.openable(fleet, h as usize))
            {
                hosts.pop();
            }
            let Some(&h) = hosts
                .iter()
                .rev()
                .take(SHAPE_TRIES)
                .find(|&&h| class.check(fleet, scratch, h as usize).is_ok())
            else {
                continue;
            };
            let cpus = (self.open_free[0] + shape.cpus as u64) as f64 / d[0];
            let ram = (self.open_free[1] + shape.ram) as f64 / d[1];
            let key = (
                cpus.min(ram).min(1.0),
                shape.cpus as f64 / d[0] + shape.ram as f64 / d[1],
            );
            if best.is_none_or(|(b, _)| key > b) {
                best = Some((key, h as usize));
            }
        }
        best.map(|(_, h)| h)
    }

    /// The pool host `h` belongs in, given its kind.
    fn pool(&self, h: usize, kind: usize) -> usize {
        let home = self.seats[h].home as usize;
        match self.split {
            Some(_) => home,
            None => home + kind,
        }
    }

    /// Where host `h` belongs. Its bucket: binpack, its scarcest free keyed resource as a
    /// share of the fleet's largest (so it ranks against hosts of every size by what is
    /// left); spread, as a share of its own capacity (so each host fills in proportion to
    /// its size). Its cell: binpack, which resource is scarcest and how much it has of the
    /// other (see `index`); spread, 0.
    fn host_key(&self, fleet: &Fleet, h: usize) -> Slot {
        let free = [
            fleet.free[h].ref_cpus as u64,
            fleet.free[h].ram_mb,
            fleet.free[h].gpus as u64,
        ];
        let (bucket, cell) = match self.strategy {
            Strategy::Binpack => {
                let [c, r, g] = self.shares(free[0], free[1], free[2]);
                let other = g.min(share(fleet.free[h].disk_mb, self.scale.disk_mb));
                (bucket_of(c.min(r).min(other)), cell_of(c, r, other))
            }
            Strategy::Spread => {
                let mut emptiness = 1.0f64;
                let size = fleet.free[h].size;
                let whole = [size.ref_cpus as u64, size.ram_mb, size.gpus as u64];
                for (i, (amount, whole)) in free.iter().zip(whole).enumerate() {
                    let keyed = i < 2 || self.scale.gpus > 0;
                    if keyed && whole > 0 {
                        emptiness = emptiness.min(*amount as f64 / whole as f64);
                    }
                }
                // Emptiness first, then how much the host has free against the largest:
                // hosts of one emptiness but of different sizes sit apart, so a bucket's
                // bound passes over the small ones for a large instance.
                let [c, r, g] = self.shares(free[0], free[1], free[2]);
                (
                    bucket_of(emptiness) / SIZES * SIZES + size_of(c.min(r).min(g)),
                    0,
                )
            }
        };
        Slot {
            bucket: bucket as u16,
            cell: cell as u8,
        }
    }

    /// An amount's cpus, ram and GPUs as shares of the fleet's largest (1 for GPUs when
    /// they are not keyed).
    fn shares(&self, cpus: u64, ram: u64, gpus: u64) -> [f64; 3] {
        [
            share(cpus, self.scale.cpus),
            share(ram, self.scale.ram_mb),
            share(gpus, self.scale.gpus),
        ]
    }

    /// What a scan for `need` looks for, and the lowest bucket a host that takes it can be
    /// in: binpack's key of the need; spread's keys are shares of each host's own size,
    /// which bound nothing.
    fn want(&self, need: Resources, ports: u32) -> (Want, usize) {
        let room = [
            need.cpus,
            need.ram_mb,
            need.disk_mb,
            need.gpus,
            ports as u64,
        ];
        match self.strategy {
            Strategy::Binpack => {
                let [c, r, g] = self.shares(need.cpus, need.ram_mb, need.gpus);
                let other = g.min(share(need.disk_mb, self.scale.disk_mb));
                (Want::shares(room, c, r), bucket_of(c.min(r).min(other)))
            }
            Strategy::Spread => (Want::room(room), 0),
        }
    }

    /// Moves host `h` to the bucket its free capacity now belongs in, and into the pool of
    /// hosts in use (it has just taken an instance).
    pub fn update(&mut self, fleet: &Fleet, h: usize) {
        if self.seats[h].parked {
            // Freed room (a preemption) on a parked host: it may take the next one.
            self.seats[h].parked = false;
            self.seats[h].kind = IN_USE as u8;
            self.seats[h].slot = self.insert(fleet, h);
            self.account(fleet, h);
            return;
        }
        let at = self.host_key(fleet, h);
        let old = self.seats[h].slot;
        if at != old || self.seats[h].kind != IN_USE as u8 {
            let from = self.pool(h, self.seats[h].kind as usize);
            self.pools.remove(from, old, h as u32);
            self.seats[h].kind = IN_USE as u8;
            self.seats[h].slot = self.insert(fleet, h);
        } else {
            // Freed room (a kill, a preemption) in the same place: raise its bound.
            let pool = self.pool(h, IN_USE);
            self.pools
                .raise(pool, old.bucket as usize, room_of(fleet, h));
        }
        self.account(fleet, h);
    }

    /// Puts an empty host in use back among the fresh ones (a consolidation that opened it
    /// for nothing).
    pub fn refresh(&mut self, fleet: &Fleet, h: usize) {
        let from = self.pool(h, self.seats[h].kind as usize);
        self.pools.remove(from, self.seats[h].slot, h as u32);
        self.seats[h].kind = if fleet.free[h].gpus > 0 {
            FRESH_GPU
        } else {
            FRESH
        } as u8;
        self.seats[h].slot = self.insert(fleet, h);
        self.account(fleet, h);
        let key = (fleet.free[h].ref_cpus, fleet.free[h].ram_mb);
        if let Some(&s) = self.shape_of.get(&key).filter(|_| self.openable(fleet, h)) {
            self.shapes[s].hosts.borrow_mut().push(h as u32);
        }
    }

    /// Whether host `h` is fresh (holds nothing, and was not opened).
    pub fn is_fresh(&self, h: usize) -> bool {
        self.seats[h].kind != IN_USE as u8 && !self.seats[h].parked
    }

    /// Puts host `h` where its free capacity and kind say; returns where.
    fn insert(&mut self, fleet: &Fleet, h: usize) -> Slot {
        let at = self.host_key(fleet, h);
        let pool = self.pool(h, self.seats[h].kind as usize);
        self.pools.insert(pool, at, h as u32, room_of(fleet, h));
        at
    }

    /// Starts or ends the placing of one job's instances one after the other: while it
    /// lasts, each host that could not take an instance is parked; at its end every parked
    /// host goes back.
    pub fn parking(&mut self, fleet: &Fleet, on: bool) {
        self.parking = on;
        self.refused.get_mut().clear();
        for h in std::mem::take(&mut self.parked) {
            let h = h as usize;
            if self.seats[h].parked {
                self.seats[h].parked = false;
                self.seats[h].slot = self.insert(fleet, h);
            }
        }
    }

    /// Parks the hosts the last `find` refused (see `parking`).
    pub fn park_refused(&mut self) {
        for h in std::mem::take(self.refused.get_mut()) {
            let hu = h as usize;
            if self.seats[hu].parked {
                continue;
            }
            let pool = self.pool(hu, self.seats[hu].kind as usize);
            self.pools.remove(pool, self.seats[hu].slot, h);
            self.seats[hu].parked = true;
            self.parked.push(h);
        }
    }

    /// The host the strategy picks for one instance of `class`, if any can take it.
    /// `demand`, what is still to place, when the fleet holds all that is asked: binpack
    /// then opens fresh hosts by shape (`open`).
    pub fn find(
        &self,
        fleet: &Fleet,
        class: &Class,
        scratch: &Scratch,
        demand: Option<Resources>,
    ) -> Option<usize> {
        // `search` finds no host only when no host in the pools passes `check`; for an
        // instance that asks only for room, that is when none has the room.
        let only_room = class.asks_only_room();
        let room = self.want(class.need(), class.ports_need()).0.room;
        if only_room && self.known_short(fleet, &room) {
            return None;
        }
        let found = self.search(fleet, class, scratch, demand);
        // Parked hosts are out of the pools: a search without them says nothing of them.
        if only_room && found.is_none() && !self.parking {
            self.remember_short(fleet, room);
        }
        found
    }

    /// Whether every host was found short of a room that `room` covers, and no host
    /// gained room since.
    fn known_short(&self, fleet: &Fleet, room: &Room) -> bool {
        let no_room = self.no_room.borrow();
        no_room.0 == fleet.releases && no_room.1.iter().any(|least| covers(room, least))
    }

    /// Notes that no host has `room` (see `no_room`).
    fn remember_short(&self, fleet: &Fleet, room: Room) {
        let mut no_room = self.no_room.borrow_mut();
        let (releases, least) = &mut *no_room;
        if *releases != fleet.releases {
            *releases = fleet.releases;
            least.clear();
        }
        // A room that covers this one says no more than it.
        least.retain(|known| !covers(known, &room));
        if least.len() < NO_ROOM_KEPT {
            least.push(room);
        }
    }

    /// `find`'s search of the pools.
    fn search(
        &self,
        fleet: &Fleet,
        class: &Class,
        scratch: &Scratch,
        demand: Option<Resources>,
    ) -> Option<usize> {
        let need = class.need();
        let (c, r, g) = (need.cpus, need.ram_mb, need.gpus);
        let (want, lowest) = self.want(need, class.ports_need());
        let fits = |h: u32| {
            let ok = class.check(fleet, scratch, h as usize).is_ok();
            if !ok && self.parking {
                self.refused.borrow_mut().push(h);
            }
            ok
        };
        let room = |h: u32| room_of(fleet, h as usize);
        // Work that needs no GPU takes a host with idle GPUs only when no other will do;
        // a GPU instance avoids leaving GPUs without the cpus or memory to use them.
        let strands = |h: usize| {
            let Some((cpu_per_gpu, ram_per_gpu)) = self.per_gpu else {
                return false;
            };
            fleet.free[h].gpus as u64 > g
                && (g == 0
                    || fleet.free[h].ref_cpus as u64 - c < cpu_per_gpu
                    || fleet.free[h].ram_mb - r < ram_per_gpu)
        };
        if g > 0 && self.strategy == Strategy::Binpack {
            if let Some(h) = self.gpu_fit(fleet, c, g, &want, &fits) {
                return Some(h);
            }
        }
        if self.split.is_some() {
            return self.spread_split(fleet, class, &want, &fits, &strands);
        }
        // Whether the hosts in use (not scheduled) were searched already, in vain.
        let mut searched_in_use = false;
        if let Some(demand) = demand.filter(|_| g == 0 && self.per_gpu.is_none()) {
            let in_use = pool_of(false, IN_USE);
            let found = self
                .pools
                .scan_up(in_use, lowest, &want, &room, &fits)
                .next();
            if let Some(h) = found
                .map(|h| h as usize)
                .or_else(|| self.open(fleet, class, scratch, demand))
            {
                return Some(h);
            }
            searched_in_use = true;
        }
        let mut fallback = None;
        for scheduled in [false, true] {
            for kind in [IN_USE, FRESH, FRESH_GPU] {
                if searched_in_use && !scheduled && kind == IN_USE {
                    continue;
                }
                let pool = pool_of(scheduled, kind);
                let mut candidates: Box<dyn Iterator<Item = u32>> = match (self.strategy, kind) {
                    (Strategy::Binpack, IN_USE) => {
                        Box::new(self.pools.scan_up(pool, lowest, &want, &room, &fits))
                    }
                    (Strategy::Spread, _) if !fleet.domains.is_empty() => Box::new(
                        self.spread_pick(pool, &want, fleet, class, 0, &fits)
                            .into_iter(),
                    ),
                    // The largest fresh host first, as spread takes the emptiest of all.
                    _ => Box::new(self.pools.scan_down(pool, lowest, &want, &room, &fits)),
                };
                let Some(first) = candidates.next() else {
                    continue;
                };
                if !strands(first as usize) {
                    return Some(first as usize);
                }
                fallback = fallback.or(Some(first as usize));
                if let Some(h) = candidates
                    .take(GPU_CANDIDATES)
                    .find(|&h| !strands(h as usize))
                {
                    return Some(h as usize);
                }
            }
            if fallback.is_some() {
                break; // a scheduled host is no better than stranding a GPU
            }
        }
        fallback
    }
}

/// The order hosts go into the index, which is the reverse of the order a bucket gives
/// them back. spread: the first host of every value of the smallest failure domain (each
/// rack), then the second of each, and so on. Offers come rack by rack, and a bucket
/// handing them back so would send spread's search through every host of a rack that
/// already holds the job before it reaches another rack.
fn insertion_order(fleet: &Fleet, strategy: Strategy) -> Vec<usize> {
    let mut order: Vec<usize> = (0..fleet.len()).collect();
    let Some(&col) = fleet
        .domains
        .last()
        .filter(|_| strategy == Strategy::Spread)
    else {
        return order;
    };
    let values = fleet.attrs.column(col);
    let mut seen = vec![0u32; fleet.attrs.value_count(col) + 1];
    let nth: Vec<u32> = values
        .iter()
        .map(|&v| {
            let n = &mut seen[domain_slot(v)];
            *n += 1;
            *n
        })
        .collect();
    order.sort_unstable_by_key(|&h| std::cmp::Reverse((nth[h], domain_slot(values[h]))));
    order
}

impl Placer {
    /// spread over a fleet split by its largest failure domain: the least loaded values of
    /// that domain first, over the whole fleet; among values equally loaded, the one whose
    /// emptiest host that takes the instance is emptiest; in it, `spread_pick`. Scheduled
    /// hosts only when no other takes it.
    fn spread_split(
        &self,
        fleet: &Fleet,
        class: &Class,
        want: &Want,
        fits: &dyn Fn(u32) -> bool,
        strands: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        // On the stack: this runs for every instance spread places.
        let mut loads = [(0u32, 0usize); MAX_SPLIT + 1];
        let by_load = &mut loads[..(self.pool_count - 6) / 2];
        for (slot, load) in by_load.iter_mut().enumerate() {
            *load = (class.domain_count(0, slot), slot);
        }
        by_load.sort_unstable();
        let room = |h: u32| room_of(fleet, h as usize);
        let mut fallback = None;
        for scheduled in [false, true] {
            for tier in by_load.chunk_by(|a, b| a.0 == b.0) {
                let Some(((_, _, first), rest)) =
                    self.emptiest_of(tier, scheduled, want, &room, fits)
                else {
                    continue;
                };
                // That host is the first candidate of the zone, and the pick when none of
                // the job is in its other domains; else the zone's search goes on from it.
                let mut load = [0u32; 4];
                class.domain_load(fleet, first as usize, 1, &mut load);
                let h = match load.iter().all(|&n| n == 0) {
                    true => first as usize,
                    false => {
                        let candidates = std::iter::once(first).chain(rest);
                        least_loaded(candidates, fleet, class, 1)? as usize
                    }
                };
                if !strands(h) {
                    return Some(h);
                }
                fallback = fallback.or(Some(h));
            }
            if fallback.is_some() {
                break;
            }
        }
        fallback
    }

    /// Of the zones (slots) of `tier`, the one whose emptiest host that `fits` is emptiest,
    /// the lower slot on a tie: (bucket of that host, slot, host), and the rest of that
    /// zone's hosts that fit, emptiest first. A zone's top non-empty bucket bounds the
    /// bucket of its emptiest fitting host, so zones are searched from the highest top
    /// down, and the search ends at the first zone whose top cannot beat the host found:
    /// most instances search one zone, not every zone of the tier.
    fn emptiest_of<'a>(
        &'a self,
        tier: &[(u32, usize)],
        scheduled: bool,
        want: &'a Want,
        room: &'a dyn Fn(u32) -> Room,
        fits: &'a dyn Fn(u32) -> bool,
    ) -> Option<(Emptiest, impl Iterator<Item = u32> + 'a)> {
        use std::cmp::Reverse;
        let pool = |slot: usize| 6 + 2 * slot + scheduled as usize;
        let mut tops = [(Reverse(0usize), 0usize); MAX_SPLIT + 1];
        let mut n = 0;
        for &(_, slot) in tier {
            if let Some(top) = self.pools.top(pool(slot)) {
                tops[n] = (Reverse(top), slot);
                n += 1;
            }
        }
        let tops = &mut tops[..n];
        tops.sort_unstable();
        let mut best = None;
        for &(top, slot) in tops.iter() {
            // While parking, every zone is searched as before: the hosts a search refuses
            // are parked, and they go back to the head of their buckets' lists after the
            // job, so which were parked decides which of equally empty hosts come first.
            if let Some(((b, s, _), _)) = best.as_ref().filter(|_| !self.parking) {
                if (top, slot) > (*b, *s) {
                    break;
                }
            }
            let mut hosts = self.pools.emptiest(pool(slot), want, room, fits);
            if let Some((bucket, h)) = hosts.next() {
                let found = (Reverse(bucket), slot, h);
                if best.as_ref().is_none_or(|(b, _)| found < *b) {
                    best = Some((found, hosts));
                }
            }
        }
        best.map(|(found, rest)| (found, rest.map(|(_, h)| h)))
    }

    /// spread across failure domains: of the emptiest hosts of `pool` that take the
    /// instance, the one whose domains (largest first) hold the fewest instances of the
    /// job (`least_loaded`). The first `settled` domains are the same for every host of
    /// the pool.
    fn spread_pick(
        &self,
        pool: usize,
        want: &Want,
        fleet: &Fleet,
        class: &Class,
        settled: usize,
        fits: &dyn Fn(u32) -> bool,
    ) -> Option<u32> {
        let room = |h: u32| room_of(fleet, h as usize);
        let candidates = self.pools.scan_down(pool, 0, want, &room, fits);
        least_loaded(candidates, fleet, class, settled)
    }

    /// binpack: the fullest host in use (not scheduled for maintenance) that takes one more
    /// instance of `class`, other than those `skip` names.
    /// `checks` is how many hosts it may still ask: it ends the search (None) when it
    /// runs out.
    pub fn find_in_use(
        &self,
        fleet: &Fleet,
        class: &Class,
        scratch: &Scratch,
        skip: &dyn Fn(usize) -> bool,
        checks: &std::cell::Cell<usize>,
    ) -> Option<usize> {
        let (want, lowest) = self.want(class.need(), class.ports_need());
        // Out of checks, the host at hand is taken, to end the scan, and dropped below.
        let fits = |h: u32| {
            let Some(left) = checks.get().checked_sub(1) else {
                return true;
            };
            checks.set(left);
            !skip(h as usize) && class.check(fleet, scratch, h as usize).is_ok()
        };
        let room = |h: u32| room_of(fleet, h as usize);
        let pool = pool_of(false, IN_USE);
        let h = self.pools.scan_up(pool, lowest, &want, &room, &fits).next();
        h.filter(|_| checks.get() > 0).map(|h| h as usize)
    }

    /// For an instance needing `g` GPUs and `c` cpus: the host whose free cpus per free GPU
    /// is the least that is still at least the instance's own, so hosts short of cpus per
    /// GPU take the instances that need few, and none is left with GPUs it has no cpus for.
    /// Ties go to the fuller host. Scheduled hosts are left to `find`.
    fn gpu_fit(
        &self,
        fleet: &Fleet,
        c: u64,
        g: u64,
        want: &Want,
        fits: &dyn Fn(u32) -> bool,
    ) -> Option<usize> {
        let need = c as f64 / g as f64;
        let mut best: Option<(bool, f64, usize, usize)> = None; // (short, ratio, bucket, host)
        let room = |h: u32| room_of(fleet, h as usize);
        for kind in [IN_USE, FRESH_GPU] {
            let pool = pool_of(false, kind);
            for h in self
                .pools
                .scan_up(pool, 0, want, &room, fits)
                .take(GPU_SCAN)
            {
                let h = h as usize;
                let ratio = fleet.free[h].ref_cpus as f64 / fleet.free[h].gpus as f64;
                let short = ratio < need;
                // Not short before short; then the closest ratio above the need (or, when
                // all are short, the largest below it); then the fuller host.
                let key = (
                    short,
                    if short { -ratio } else { ratio },
                    self.seats[h].slot.bucket as usize,
                    h,
                );
                if best.is_none_or(|b| (key.0, key.1, key.2, key.3) < b) {
                    best = Some(key);
                }
            }
        }
        best.map(|(_, _, _, h)| h)
    }
}

/// How many of the emptiest fitting hosts spread compares for their failure domains.
const SPREAD_CANDIDATES: usize = 64;

/// (bucket of a zone's emptiest fitting host, the zone's slot, that host): the least is
/// spread's zone.
type Emptiest = (std::cmp::Reverse<usize>, usize, u32);

/// Of the first SPREAD_CANDIDATES `candidates` (the emptiest first), the one whose failure
/// domains from `settled` on (those before are alike for all) hold the fewest instances of
/// the job, the first on a tie. A host with none of the job in them cannot be beaten by
/// one after it, so the search ends there: a job of a few instances over many racks
/// compares one host.
fn least_loaded(
    candidates: impl Iterator<Item = u32>,
    fleet: &Fleet,
    class: &Class,
    settled: usize,
) -> Option<u32> {
    let mut best: Option<([u32; 4], u32)> = None;
    let mut load = [0u32; 4];
    for h in candidates.take(SPREAD_CANDIDATES) {
        // The settled domains, alike over the pool, stay 0 unread: each is a cache miss.
        class.domain_load(fleet, h as usize, settled, &mut load);
        if best.is_none_or(|(b, _)| load < b) {
            best = Some((load, h));
        }
        if load[settled..].iter().all(|&n| n == 0) {
            break;
        }
    }
    best.map(|(_, h)| h)
}

/// How many fitting hosts `gpu_fit` compares, per pool.
const GPU_SCAN: usize = 512;

/// Placement order: production first, then higher priority, then by size (the largest
/// share any resource takes of the fleet's largest host), then by key.
///
/// When everything fits, larger first packs into the fewest hosts. When the fleet is
/// oversubscribed (some resource is asked for more than it has), smaller first places the
/// most instances, and the most of the scarce resource, that the fleet can hold.
pub fn order(jobs: &[JobSpec], scale: Resources, oversubscribed: bool) -> Vec<usize> {
    let size = |j: &JobSpec| {
        let r = &j.resources;
        let cpus = r.cpus as f64 / scale.cpus.max(1) as f64;
        let ram = r.ram_mb as f64 / scale.ram_mb.max(1) as f64;
        let gpus = if scale.gpus > 0 {
            r.gpus as f64 / scale.gpus as f64
        } else {
            0.0
        };
        cpus.max(ram).max(gpus)
    };
    // What the order compares, taken from each spec once: comparing the specs themselves,
    // scattered over memory, was most of the sort at 200,000 jobs.
    // Keys are compared by their first bytes, kept in the rank, before the keys
    // themselves: jobs of one size are many, and each comparison of their keys was two
    // cache misses.
    struct Rank<'a> {
        preemptible: bool,
        priority: i32,
        size: f64,
        prefix: (u128, u64),
        key: &'a str,
        job: usize,
    }
    let prefix = |key: &str| {
        let mut first = [0u8; 24];
        let n = key.len().min(24);
        first[..n].copy_from_slice(&key.as_bytes()[..n]);
        let (a, b) = first.split_at(16);
        (
            u128::from_be_bytes(a.try_into().expect("16 bytes")),
            u64::from_be_bytes(b.try_into().expect("8 bytes")),
        )
    };
    let mut ranks: Vec<Rank> = jobs
        .iter()
        .enumerate()
        .map(|(job, spec)| Rank {
            preemptible: spec.tier == Tier::Preemptible,
            priority: spec.priority,
            size: size(spec),
            prefix: prefix(&spec.key),
            key: &spec.key,
            job,
        })
        .collect();
    // The position last, so that jobs alike in all else (versions of a job an update
    // added) keep the order they came in, as a stable sort would.
    ranks.sort_unstable_by(|a, b| {
        let by_size = if oversubscribed {
            a.size.total_cmp(&b.size)
        } else {
            b.size.total_cmp(&a.size)
        };
        a.preemptible
            .cmp(&b.preemptible)
            .then(b.priority.cmp(&a.priority))
            .then(by_size)
            .then(a.prefix.cmp(&b.prefix))
            .then_with(|| a.key.cmp(b.key))
            .then(a.job.cmp(&b.job))
    });
    ranks.into_iter().map(|r| r.job).collect()
}

/// Splits an order into runs of jobs of the same tier and priority: what may be
/// interleaved without breaking "production first, higher priority first".
pub fn groups(jobs: &[JobSpec], order: &[usize]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    for &j in order {
        let same = out
            .last()
            .and_then(|g| g.last())
            .is_some_and(|&p| jobs[p].tier == jobs[j].tier && jobs[p].priority == jobs[j].priority);
        if same {
            out.last_mut().unwrap().push(j);
        } else {
            out.push(vec![j]);
        }
    }
    out
}

/// The resource lower bound on hosts needed: per resource, the fewest hosts (largest
/// first) whose capacity covers the demand; the bound is the largest of those. `capacity`
/// has a column per resource, in the order of `Resources::to_array`.
pub fn lower_bound(capacity: [Vec<u64>; 4], demand: Resources) -> usize {
    let mut bound = 0;
    for (mut caps, want) in capacity.into_iter().zip(demand.to_array()) {
        if want == 0 {
            continue;
        }
        caps.sort_unstable_by(|a, b| b.cmp(a));
        let mut sum = 0u64;
        let n = caps.iter().take_while(|&&c| {
            let more = sum < want;
            sum += c;
            more
        });
        bound = bound.max(n.count());
    }
    bound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_counts_keep_what_they_hold_and_hand_on_a_zeroed_table() {
        let mut spare = Spare::default();
        let mut a = DomainCounts::Held(Vec::new());
        a.add(3, true);
        a.open(8, &mut spare);
        for slot in [3, 3, 7, 0] {
            a.add(slot, true);
        }
        a.add(7, false);
        let counts = |c: &DomainCounts| (0..9).map(|s| c.get(s)).collect::<Vec<_>>();
        let before = counts(&a);
        assert_eq!(before, [1, 0, 0, 3, 0, 0, 0, 0, 0]);
        a.close(&mut spare);
        assert!(matches!(&a, DomainCounts::Held(h) if h.len() == 2));
        assert_eq!(counts(&a), before);
        // The next job takes the same table back, zeroed.
        let mut b = DomainCounts::Held(vec![(5, 2)]);
        b.open(8, &mut spare);
        assert!(spare.0.is_empty());
        assert_eq!(counts(&b), [0, 0, 0, 0, 0, 2, 0, 0, 0]);
        // A count taken back after the job is placed stays right.
        a.add(3, false);
        a.add(1, true);
        assert_eq!(counts(&a), [1, 1, 0, 2, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn id_sets_hold_ids_below_and_beyond_64() {
        let set = IdSet::new(&[0, 5, 63, 64, 1000]);
        for id in [0, 5, 63, 64, 1000] {
            assert!(set.contains(id), "{id}");
        }
        for id in [1, 62, 65, 999, NONE] {
            assert!(!set.contains(id), "{id}");
        }
        assert!(!IdSet::new(&[]).contains(0));
    }

    #[test]
    fn lower_bound_counts_the_largest_hosts_of_the_scarcest_resource() {
        let capacity = [
            vec![2000, 8000, 4000],
            vec![65536, 16384, 16384],
            vec![100, 100, 100],
            vec![0, 0, 0],
        ];
        let demand = |cpus, ram_mb, disk_mb| Resources {
            cpus,
            ram_mb,
            disk_mb,
            gpus: 0,
        };
        // cpus: the two largest (8000 + 4000) cover 11,000; ram: 65536 alone covers 60,000.
        assert_eq!(lower_bound(capacity.clone(), demand(11_000, 60_000, 1)), 2);
        // ram: 65536 + 16384 do not cover 90,000; all three hosts do.
        assert_eq!(lower_bound(capacity.clone(), demand(1000, 90_000, 1)), 3);
        // disk alone: 250 MB takes all three hosts of 100.
        assert_eq!(lower_bound(capacity, demand(1000, 1000, 250)), 3);
    }

    /// The reasons counted from host sets are those a scan of every host gives, by the
    /// first check each fails: on hosts of every size, some without the attributes, some
    /// dedicated, for jobs with constraints, limits already reached and every kind of need.
    #[test]
    fn refusals_count_each_host_by_the_first_check_it_fails() {
        use crate::records::Reader;
        let mut draw = crate::pack::draws(11);
        let mut fleet = Fleet::default();
        // 1,001 hosts: the ready sets of a room resource are 8 hosts apart, and the last
        // word of a set is partly used.
        for h in 0..1001 {
            let mut attrs = vec![format!(r#""zone":"z{}""#, draw(3))];
            if draw(10) > 0 {
                attrs.push(format!(r#""rack":"r{}""#, draw(40)));
            }
            match draw(20) {
                0 => attrs.push(r#""dedicated":"db""#.into()),
                1 => attrs.push(r#""dedicated":["www/web","db/store"]"#.into()),
                _ => {}
            }
            let line = format!(
                r#"{{"type":"offer","host":"h{h}","cpus":{},"ram_mb":{},"disk_mb":{},"gpus":{},"ports":[[31000,{}]],"attrs":{{{}}}}}"#,
                1 + draw(64),
                1024 * (1 + draw(256)),
                1024 * (1 + draw(100)),
                draw(3) * draw(5),
                31000 + draw(4),
                attrs.join(",")
            );
            let rec = Reader::new(line.as_bytes()).next().unwrap().unwrap();
            fleet.add_offer(&rec).unwrap();
        }
        let rules = [
            "",
            r#"{"attr":"zone","values":["z1","z2"]}"#,
            r#"{"attr":"rack","not":["r3","r7","r9"]}"#,
            r#"{"attr":"host","not":["h5","h600","h1000"]}"#,
            r#"{"attr":"dedicated","values":["db"]}"#,
            r#"{"attr":"host","limit":1}"#,
            r#"{"attr":"rack","limit":2}"#,
            r#"{"attr":"zone","limit":40}"#,
        ];
        let roles = ["www", "db", "batch"];
        for round in 0..200 {
            let constraints: Vec<&str> = (0..draw(3))
                .map(|_| rules[draw(rules.len() as u64) as usize])
                .filter(|r| !r.is_empty())
                .collect();
            let job = format!(
                r#"{{"job":"{}/prod/web","instances":1,"cmd":["x"],"resources":{{"cpus":{},"ram_mb":{},"disk_mb":{},"gpus":{},"ports":[{}]}},"constraints":[{}]}}"#,
                roles[draw(3) as usize],
                [0.5, 4.0, 16.0, 40.0][draw(4) as usize],
                [64, 8192, 65536, 200_000][draw(4) as usize],
                [0, 1024, 50_000][draw(3) as usize],
                draw(3),
                ["", r#""a""#, r#""a","b","c","d""#][draw(3) as usize],
                constraints.join(",")
            );
            let spec = crate::job::parse_text(&job, "test").unwrap();
            let mut class = Class::compile(round, &spec, &mut fleet);
            let mut scratch = Scratch::new(fleet.len());
            scratch.load(&class);
            for _ in 0..draw(300) {
                let h = draw(fleet.len() as u64) as usize;
                class.count(&fleet, Some(h), &|_| NONE, &mut scratch);
            }
            let mut scanned: Vec<(Reason, u32)> = Vec::new();
            for h in 0..fleet.len() {
                if let Err(r) = class.check(&fleet, &scratch, h) {
                    match scanned.iter_mut().find(|(x, _)| *x == r) {
                        Some((_, n)) => *n += 1,
                        None => scanned.push((r, 1)),
                    }
                }
            }
            scanned.sort();
            let mut counted = class.refusals(&fleet, &mut HostSets::new(&fleet));
            counted.sort();
            assert_eq!(counted, scanned, "{job}");
        }
    }

    /// `find` answers as a search of the pools does, while hosts fill and now and then one
    /// is given room back, and passes over instances no host has room for.
    #[test]
    fn find_passes_over_only_what_no_host_has_room_for() {
        use crate::records::Reader;
        let mut draw = crate::pack::draws(5);
        for strategy in [Strategy::Binpack, Strategy::Spread] {
            let mut fleet = Fleet::default();
            for h in 0..300 {
                let line = format!(
                    r#"{{"type":"offer","host":"h{h}","cpus":{},"ram_mb":{},"disk_mb":100000,"ports":[[31000,31009]]}}"#,
                    1 + draw(32),
                    1024 * (1 + draw(128))
                );
                let rec = Reader::new(line.as_bytes()).next().unwrap().unwrap();
                fleet.add_offer(&rec).unwrap();
            }
            let n = fleet.len();
            let none = vec![Resources::default(); n];
            let mut placer = Placer::new(&mut fleet, strategy, None, &vec![false; n], &none);
            let scratch = Scratch::new(n);
            let mut placed = Vec::new();
            let mut passed_over = 0;
            for round in 0..3000 {
                let job = format!(
                    r#"{{"job":"www/prod/j{round}","instances":1,"cmd":["x"],"resources":{{"cpus":{},"ram_mb":{},"ports":["a"]}}}}"#,
                    [0.5, 2.0, 8.0, 24.0][draw(4) as usize],
                    [512, 4096, 32768, 100_000][draw(4) as usize]
                );
                let spec = crate::job::parse_text(&job, "test").unwrap();
                let class = Class::compile(round, &spec, &mut fleet);
                let (want, _) = placer.want(class.need(), class.ports_need());
                passed_over += placer.known_short(&fleet, &want.room) as usize;
                let searched = placer.search(&fleet, &class, &scratch, None);
                let found = placer.find(&fleet, &class, &scratch, None);
                assert_eq!(found, searched, "{strategy:?}, round {round}");
                let r = &spec.resources;
                if let Some(h) = found {
                    let mut ports = Vec::new();
                    let cpus = fleet.reserve(h, r.cpus, r.ram_mb, 0, 0, 1, &mut ports);
                    placer.update(&fleet, h);
                    placed.push((h, cpus, r.ram_mb, ports));
                }
                if draw(40) == 0 && !placed.is_empty() {
                    let (h, cpus, ram, ports) =
                        placed.swap_remove(draw(placed.len() as u64) as usize);
                    fleet.release(h, cpus, ram, 0, 0, &ports);
                    placer.update(&fleet, h);
                }
            }
            assert!(passed_over > 100, "{strategy:?}: {passed_over}");
        }
    }
}
