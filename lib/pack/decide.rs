//! The placement decision: what already runs, which instances are missing, then the loop
//! that places them (in `place`), with preemption and quota on the way.

use std::collections::HashMap;

use crate::job::{JobSpec, Tier};
use crate::task::TaskState;

use super::drains::{self, Drains};
use super::explain::reasons_for;
use super::fleet::{self, Fleet};
use super::place::{self, lower_bound, Class, Placer, Scratch, Strategy};
use super::preempt::{Room, Victims};
use super::refusals::HostSets;
use super::runs::{self, Wanted};
use super::updates::Updates;
use super::{Input, Resources, Running};

mod rearrange;

/// What pack decided, in decision order.
pub enum Decision {
    Place {
        job: usize,
        instance: u32,
        host: u32,
        cpus: u32,
        ports: std::ops::Range<usize>,
    },
    Preempt {
        victim: String,
        incarnation: u32,
        host: u32,
        job: usize,
        instance: u32,
    },
    Pending {
        job: usize,
        instance: u32,
        reasons: usize,
    },
    Kill {
        task: String,
        incarnation: u32,
        reason: &'static str,
    },
}

/// The most decisions, and ports, room is made for before the pass (16M: 768 MiB).
const RESERVED_MAX: usize = 1 << 24;

/// Why instances are pending, each with how many hosts refused them for it. Jobs refused
/// alike share one list (tens of thousands on an oversubscribed fleet of small jobs).
pub type Reasons = std::sync::Arc<Vec<(String, u32)>>;

/// The decisions and what the summary reports.
pub struct Outcome {
    pub decisions: Vec<Decision>,
    pub ports: Vec<u16>,
    pub reasons: Vec<Reasons>,
    pub placed: usize,
    pub pending: usize,
    pub preempted: usize,
    pub hosts_used: usize,
    pub lower_bound: usize,
    /// For --explain: the compiled classes and scratch, by job.
    pub(super) classes: Vec<Option<Class>>,
    /// `update` and `drain` records, written before the decisions.
    pub notes: Vec<serde_json::Value>,
    /// Jobs whose `spec` record goes before the notes (`Updates::moving_to_file`).
    pub specs_first: Vec<usize>,
    /// The run placements of a batch or cron job name (where it is not the first, 0).
    pub run_of: HashMap<String, u64>,
}

/// The state of one decision run: the fleet as it fills, and what has been decided.
struct Run<'a> {
    fleet: &'a mut Fleet,
    jobs: &'a [JobSpec],
    running: &'a [Running],
    by_key: HashMap<&'a str, usize, foldhash::fast::RandomState>,
    placer: Placer,
    scratch: Scratch,
    classes: Vec<Option<Class>>,
    /// Each job's role, as an index into `used` and `role_quota`.
    role_of: Vec<usize>,
    /// Production reservations and quota per role.
    used: Vec<Resources>,
    role_quota: Vec<Option<Resources>>,
    victims: Victims<'a>,
    throttled: HashMap<(usize, u32), f64>,
    /// Per job: why its instances stopped being placeable (set once one fits nowhere).
    stuck: Vec<Option<&'static str>>,
    decisions: Vec<Decision>,
    ports: Vec<u16>,
    reasons: Vec<Reasons>,
    /// The reasons of each job left pending. Those of a job that fit nowhere are counted
    /// once the pass is over (`count_refusals`), against the fleet as it leaves it.
    reason_of_job: HashMap<usize, usize, foldhash::fast::RandomState>,
    /// Instances placed per host in this pass (a retry takes placements back).
    hosts_used: Vec<u32>,
    /// What the placer was built from, to build it again for a retry: the strategy, the
    /// least need per GPU, the hosts that held or freed something before this pass placed
    /// anything (those are not fresh), and what running tasks hold.
    strategy: Strategy,
    per_gpu: Option<(u64, u64)>,
    in_use: Vec<bool>,
    held: Vec<Resources>,
    /// Tables of instances per failure domain, for the job being placed (spread).
    spare: place::Spare,
    /// The fleet is asked for more than it has: pending is expected, a retry is not tried.
    oversubscribed: bool,
    placed: usize,
    pending: usize,
    preempted: usize,
    /// `--preempt-within-tier`.
    within_tier: bool,
    /// What the instances not yet decided ask for, in all.
    remaining: Resources,
    /// What the jobs' updates ask of the pass.
    updates: Updates,
    /// What the drains stop in this pass.
    drains: Drains,
    /// (job, instance) replaced by an update: the host its killed incarnation ran on,
    /// tried first.
    prefer: HashMap<(usize, u32), usize>,
    /// Per job of the files: which of its instances the pass considers (batch and cron
    /// jobs place those of one run).
    wanted: Vec<Wanted>,
}

/// Whether a batch (not service) instance is over: finished, or failed as many times as its
/// job's restart policy allows (`restart.max_failures`, 1 when not given).
pub(super) fn batch_done(spec: &JobSpec, r: &Running) -> bool {
    if spec.service {
        return false;
    }
    let max = spec.restart.max_failures;
    r.state == TaskState::Finished || (r.state == TaskState::Failed && r.failures as u64 >= max)
}

/// The whole decision: what exists, which instances are missing, then the loop.
pub fn decide(input: &mut Input, strategy: Strategy, prune: bool, within_tier: bool) -> Outcome {
    let runs = runs::plan(input);
    let forgets = match prune {
        true => super::retention::forget(input),
        false => Vec::new(),
    };
    let drains = drains::plan(input);
    let updates = super::updates::plan(input, &drains);
    let Input {
        fleet,
        jobs,
        running,
        quota,
        now,
        ..
    } = input;
    // What the offers hold before this pass frees anything: the lower bound and whether the
    // fleet is oversubscribed are measured against it, the jobs' sizes against its largest.
    let offered = fleet.free_columns();
    let scale = fleet.largest();
    let mut run = Run::new(fleet, jobs, running, quota, strategy);
    run.within_tier = within_tier;
    run.updates = updates;
    run.drains = drains;
    let run_of = jobs
        .iter()
        .zip(&runs.wanted)
        .filter_map(|(spec, w)| match *w {
            Wanted::Run(n) if n != 0 => Some((spec.key.clone(), n)),
            _ => None,
        })
        .collect();
    run.wanted = runs.wanted;
    let present = run.take_stock(*now, prune);
    let missing: Vec<Vec<u32>> = jobs
        .iter()
        .enumerate()
        .map(|(j, spec)| {
            (0..spec.instances)
                .filter(|&i| !present[j][i as usize])
                .collect()
        })
        .collect();
    // Oversubscribed: some resource is asked for more than the offers hold in all.
    let mut want = Resources::default();
    for (spec, m) in jobs.iter().zip(&missing) {
        want += Resources::of(&spec.resources).times(m.len() as u64);
    }
    let total = Resources::from_array(offered.each_ref().map(|c| c.iter().sum()));
    let oversubscribed = !want.fits_in(total);
    run.oversubscribed = oversubscribed;
    run.remaining = want;
    // The order's GPU scale is read after take_stock has freed the room of what this pass
    // kills, its cpus and ram scale before. Kept as it was: reading both at one point would
    // reorder jobs when a kill frees the most GPUs any host has.
    let order_scale = Resources {
        gpus: fleet_gpus_max(run.fleet),
        ..scale
    };
    let order = place::order(jobs, order_scale, oversubscribed);
    for group in place::groups(jobs, &order) {
        run.place_group(&group, &missing, total);
    }
    // A pass that puts updated instances back where they ran keeps them there: moving
    // instances after placing would undo the update's affinity for a host saved. Where
    // a host scheduled for maintenance was used, room the moves free would have been
    // taken before it: they are not made. Nor where the pass preempted: a move can free
    // room on a host at a point of the records where a production instance found none
    // and preempted, and a preemption is the last resort only if no host had room then.
    if run.may_reorder() && run.prefer.is_empty() && !run.used_scheduled() && run.preempted == 0 {
        let budget = std::cell::Cell::new(SEARCH_CHECKS);
        run.repair(&budget);
        run.consolidate(&budget);
        run.rearrange(&budget);
    }
    run.keep_unplaced_drains();
    run.count_refusals();
    let mut notes = runs.records;
    notes.append(&mut run.updates.records);
    notes.extend(run.drains.records(running));
    notes.extend(forgets);
    let specs_first = std::mem::take(&mut run.updates.moving_to_file);
    Outcome {
        // Every missing instance went through place_one once: `want` is what was placed
        // or left pending.
        lower_bound: lower_bound(offered, want),
        hosts_used: run.hosts_used.iter().filter(|&&u| u > 0).count(),
        placed: run.placed,
        pending: run.pending,
        preempted: run.preempted,
        decisions: run.decisions,
        ports: run.ports,
        reasons: run.reasons,
        classes: run.classes,
        notes,
        specs_first,
        run_of,
    }
}

fn fleet_gpus_max(fleet: &Fleet) -> u64 {
    fleet.free.iter().map(|f| f.gpus).max().unwrap_or(0) as u64
}

/// Consolidation tries pairs among this many of the least full hosts, each into one fresh
/// host of each shape.
const PAIRS_FROM: usize = 8;

/// Repair and consolidation, after placing, ask at most this many hosts in all (filling
/// a pending instance into room a repair left is not counted): on a large fleet they
/// cost a few milliseconds. Repair is for a few instances left pending where a different
/// arrangement takes them, not for a fleet short of room: above REPAIR_MAX pending
/// instances it is not tried.
const SEARCH_CHECKS: usize = 1 << 20;
const REPAIR_MAX: usize = 256;

/// How many times `Run::place_group` places a group at most (then once more, the best).
const ATTEMPTS: usize = 4;

/// What `Run::undo` restores: lengths and counters before a group, and its jobs' classes
/// and stuck marks.
struct Mark {
    decisions: usize,
    ports: usize,
    reasons: usize,
    placed: usize,
    pending: usize,
    preempted: usize,
    used: Vec<Resources>,
    remaining: Resources,
    jobs: Vec<(usize, Option<Class>, Option<&'static str>)>,
}

/// Instances of a list of jobs, taken in order, one at a time.
struct Stream {
    jobs: Vec<usize>,
    job: usize,
    instance: usize,
    taken: usize,
    total: usize,
}

impl Stream {
    fn new(jobs: Vec<usize>, missing: &[Vec<u32>]) -> Stream {
        let total = jobs.iter().map(|&j| missing[j].len()).sum();
        Stream {
            jobs,
            job: 0,
            instance: 0,
            taken: 0,
            total,
        }
    }

    /// Which stream goes next: the one that is proportionally furthest behind.
    fn next_turn(streams: &[Stream; 2]) -> Option<usize> {
        let progress =
            |s: &Stream| (s.taken < s.total).then(|| (s.taken + 1) as f64 / s.total as f64);
        match (progress(&streams[0]), progress(&streams[1])) {
            (Some(a), Some(b)) => Some(if a <= b { 0 } else { 1 }),
            (Some(_), None) => Some(0),
            (None, Some(_)) => Some(1),
            (None, None) => None,
        }
    }

    /// Whether the instance taken last was its job's last.
    fn took_last(&self, missing: &[Vec<u32>]) -> bool {
        self.instance == missing[self.jobs[self.job]].len()
    }

    fn take(&mut self, missing: &[Vec<u32>]) -> (usize, u32) {
        while self.instance >= missing[self.jobs[self.job]].len() {
            self.job += 1;
            self.instance = 0;
        }
        let j = self.jobs[self.job];
        self.instance += 1;
        self.taken += 1;
        (j, missing[j][self.instance - 1])
    }
}

impl<'a> Run<'a> {
    fn new(
        fleet: &'a mut Fleet,
        jobs: &'a [JobSpec],
        running: &'a [Running],
        quota: &HashMap<String, Resources>,
        strategy: Strategy,
    ) -> Run<'a> {
        // The least cpus and memory any GPU job needs per GPU: a host left with less than
        // this beside idle GPUs has stranded them.
        let per_gpu = jobs.iter().filter(|j| j.resources.gpus > 0).fold(
            None,
            |acc: Option<(u64, u64)>, j| {
                let r = &j.resources;
                let need = (r.cpus as u64 / r.gpus as u64, r.ram_mb / r.gpus as u64);
                Some(acc.map_or(need, |(c, m)| (c.min(need.0), m.min(need.1))))
            },
        );
        let mut in_use = vec![false; fleet.len()];
        let mut held = vec![Resources::default(); fleet.len()];
        for r in running.iter().filter(|r| r.state.holds_resources()) {
            if let Some(h) = r.host {
                in_use[h] = true;
                held[h] += r.held();
            }
        }
        // A decision per instance, most often: room for them at once, where growing by
        // doubling copied a million of them over and over (a twentieth of shape f's
        // place). Bounded, as a few jobs may ask for far more than any fleet holds.
        let instances: usize = jobs.iter().map(|j| j.instances as usize).sum();
        let ports: usize = jobs
            .iter()
            .map(|j| j.instances as usize * j.resources.ports.len())
            .sum();
        let placer = Placer::new(fleet, strategy, per_gpu, &in_use, &held);
        let mut run = Run {
            placer,
            scratch: Scratch::new(fleet.len()),
            hosts_used: vec![0; fleet.len()],
            strategy,
            per_gpu,
            oversubscribed: false,
            fleet,
            jobs,
            running,
            // The job files' jobs, before the versions updates appended.
            by_key: jobs
                .iter()
                .enumerate()
                .rev()
                .map(|(i, j)| (j.key.as_str(), i))
                .collect(),
            classes: (0..jobs.len()).map(|_| None).collect(),
            role_of: Vec::new(),
            used: Vec::new(),
            role_quota: Vec::new(),
            victims: Victims::new(running),
            throttled: HashMap::new(),
            stuck: vec![None; jobs.len()],
            decisions: Vec::with_capacity(instances.min(RESERVED_MAX)),
            ports: Vec::with_capacity(ports.min(RESERVED_MAX)),
            reasons: Vec::new(),
            reason_of_job: HashMap::default(),
            placed: 0,
            pending: 0,
            preempted: 0,
            within_tier: false,
            remaining: Resources::default(),
            updates: Updates::default(),
            drains: Drains::default(),
            prefer: HashMap::new(),
            wanted: Vec::new(),
            in_use,
            held,
            spare: place::Spare::default(),
        };
        // Roles are numbered once here, so the loop indexes rather than hashes.
        let mut roles: HashMap<&str, usize, foldhash::fast::RandomState> = HashMap::default();
        for spec in jobs {
            let next = roles.len();
            let r = *roles.entry(spec.role()).or_insert(next);
            run.role_of.push(r);
            if r == run.used.len() {
                run.used.push(Resources::default());
                run.role_quota.push(quota.get(spec.role()).copied());
            }
        }
        run
    }

    /// Places the missing instances of a group of jobs of one tier and priority.
    ///
    /// The first attempt is `place_in_order`. When it leaves something pending that no
    /// host could take, on a binpack fleet that holds all that is asked, the order is to
    /// blame: the jobs left pending are taken back with everything else of the group and
    /// placed first, the rest after them, and so on while new jobs are left pending (at
    /// most `ATTEMPTS` placings of the group), keeping the attempt that left the fewest
    /// pending. Each retry costs the group's placements once more and a rebuild of the
    /// placer, never a scan of the fleet per instance.
    fn place_group(&mut self, group: &[usize], missing: &[Vec<u32>], capacity: Resources) {
        let mark = self.mark(group);
        // Per job of the group (by position): whether it goes first.
        let mut front = vec![false; group.len()];
        // The fewest pending so far, and the front that gave it.
        let mut best = (usize::MAX, front.clone());
        for attempt in 1..=ATTEMPTS {
            self.place_front_first(group, &front, missing, capacity);
            let pending = self.pending - mark.pending;
            let unplaceable = self.unplaceable(group);
            if pending < best.0 {
                best = (pending, front.clone());
            }
            if pending == 0 || !self.may_retry(&mark) || attempt == ATTEMPTS {
                break;
            }
            // A job that fits no host in any order (a constraint no host meets) is left
            // pending again with no other job new to it: one retry, then the loop ends.
            let mut more = false;
            for (k, &j) in group.iter().enumerate() {
                if !front[k] && self.stuck[j] == Some("") && !unplaceable.contains(&j) {
                    front[k] = true;
                    more = true;
                }
            }
            if !more {
                break;
            }
            self.undo(&mark);
        }
        let (fewest, front) = best;
        if self.pending - mark.pending > fewest {
            self.undo(&mark);
            self.place_front_first(group, &front, missing, capacity);
        }
    }

    /// The jobs of `group` left pending that no host admits whatever the order (dedicated
    /// hosts, value constraints): placing the group again cannot help them, and a group
    /// whose only pending job is such is placed once, not three times.
    fn unplaceable(&self, group: &[usize]) -> Vec<usize> {
        group
            .iter()
            .copied()
            .filter(|&j| {
                self.stuck[j] == Some("")
                    && self.classes[j]
                        .as_ref()
                        .is_some_and(|class| !class.admitted_somewhere(self.fleet))
            })
            .collect()
    }

    /// `place_in_order` on the jobs of `group` marked in `front`, then on the others.
    fn place_front_first(
        &mut self,
        group: &[usize],
        front: &[bool],
        missing: &[Vec<u32>],
        capacity: Resources,
    ) {
        let pick = |first: bool| -> Vec<usize> {
            group
                .iter()
                .zip(front)
                .filter(|&(_, &f)| f == first)
                .map(|(&j, _)| j)
                .collect()
        };
        self.place_in_order(&pick(true), missing, capacity);
        self.place_in_order(&pick(false), missing, capacity);
    }

    /// Places jobs (in the group's order, larger first): jobs with limits first, one after
    /// the other, each with its own counts; the others interleaved instance by instance
    /// between those heavier in cpus and those heavier in memory than the fleet is, so
    /// hosts fill with a mix rather than strand one resource. Heavier is measured against
    /// the fleet's total capacity, not its largest host: on a fleet of mixed cpu:ram
    /// ratios the largest host in cpus and the largest in ram are different hosts, and
    /// against them nearly every job looked cpu-heavy (small problems against the optimum:
    /// 1.057 -> 1.048 of the optimum, 17 -> 15 left pending where it places all).
    fn place_in_order(&mut self, group: &[usize], missing: &[Vec<u32>], capacity: Resources) {
        let jobs = self.jobs;
        let (sequential, free): (Vec<usize>, Vec<usize>) = group
            .iter()
            .partition(|&&j| self.class(j).has_limits() || jobs[j].resources.gpus > 0);
        for &j in &sequential {
            self.place_job(j, missing);
        }
        let (cpu_heavy, ram_heavy): (Vec<usize>, Vec<usize>) = free.iter().partition(|&&j| {
            let r = &jobs[j].resources;
            r.cpus as f64 / capacity.cpus.max(1) as f64
                >= r.ram_mb as f64 / capacity.ram_mb.max(1) as f64
        });
        let mut streams = [
            Stream::new(cpu_heavy, missing),
            Stream::new(ram_heavy, missing),
        ];
        while let Some(s) = Stream::next_turn(&streams) {
            let (j, instance) = streams[s].take(missing);
            self.place_one(j, instance);
            if streams[s].took_last(missing) {
                self.placed_all_of(j);
            }
        }
    }

    /// Job `j` has had every missing instance placed or left pending: its tables of
    /// instances per failure domain are for the next jobs.
    fn placed_all_of(&mut self, j: usize) {
        if let Some(class) = &mut self.classes[j] {
            class.close_tables(&mut self.spare);
        }
    }

    /// Places the missing instances of job `j` one after the other, with its limit counts.
    fn place_job(&mut self, j: usize, missing: &[Vec<u32>]) {
        self.class(j);
        self.scratch.load(self.classes[j].as_ref().unwrap());
        self.placer.parking(self.fleet, true);
        for &instance in &missing[j] {
            self.place_one(j, instance);
            self.placer.park_refused();
        }
        self.placer.parking(self.fleet, false);
        self.placed_all_of(j);
    }

    /// What a retry of `group` restores.
    fn mark(&self, group: &[usize]) -> Mark {
        Mark {
            decisions: self.decisions.len(),
            ports: self.ports.len(),
            reasons: self.reasons.len(),
            placed: self.placed,
            pending: self.pending,
            preempted: self.preempted,
            used: self.used.clone(),
            remaining: self.remaining,
            // A group is placed again only where reordering may help (`may_retry`): the
            // copies of its classes are made only then (200,000 of them on a large run).
            jobs: match self.may_reorder() {
                true => group
                    .iter()
                    .map(|&j| (j, self.classes[j].clone(), self.stuck[j]))
                    .collect(),
                false => Vec::new(),
            },
        }
    }

    /// Whether pending is worth placing a group again for: binpack, on a fleet that holds
    /// what is asked (oversubscribed, pending is expected).
    fn may_reorder(&self) -> bool {
        self.strategy == Strategy::Binpack && !self.oversubscribed
    }

    /// Whether the group placed since `mark` is worth placing again in another order:
    /// binpack on a fleet that holds what is asked, something of the group fit nowhere
    /// (not quota, not backoff), and nothing was preempted (that is not taken back).
    fn may_retry(&self, mark: &Mark) -> bool {
        self.may_reorder()
            && self.preempted == mark.preempted
            && mark.jobs.iter().any(|&(j, _, _)| self.stuck[j] == Some(""))
    }

    /// Takes back everything decided since `mark`: the reservations, the counts, the
    /// decisions and reasons. The placer and scratch are built again, so the hosts this
    /// took are fresh again: O(placements taken back + hosts), once per retry.
    fn undo(&mut self, mark: &Mark) {
        let jobs = self.jobs;
        for d in self.decisions.drain(mark.decisions..).rev() {
            if let Decision::Place {
                job,
                host,
                cpus,
                ports,
                ..
            } = d
            {
                let r = &jobs[job].resources;
                let h = host as usize;
                self.fleet
                    .release(h, cpus, r.ram_mb, r.disk_mb, r.gpus, &self.ports[ports]);
                self.hosts_used[h] -= 1;
            }
        }
        self.ports.truncate(mark.ports);
        self.reasons.truncate(mark.reasons);
        for (j, class, stuck) in &mark.jobs {
            self.classes[*j] = class.clone();
            self.stuck[*j] = *stuck;
            self.reason_of_job.remove(j);
        }
        self.used.clone_from(&mark.used);
        self.remaining = mark.remaining;
        self.placed = mark.placed;
        self.pending = mark.pending;
        let in_use: Vec<bool> = (0..self.fleet.len())
            .map(|h| self.in_use[h] || self.hosts_used[h] > 0)
            .collect();
        self.placer = Placer::new(self.fleet, self.strategy, self.per_gpu, &in_use, &self.held);
        self.scratch = Scratch::new(self.fleet.len());
    }

    fn class(&mut self, j: usize) -> &mut Class {
        let (jobs, fleet) = (self.jobs, &mut *self.fleet);
        self.classes[j].get_or_insert_with(|| Class::compile(j, &jobs[j], fleet))
    }

    /// Reads what the state says runs: kills for surplus and removed jobs, counts for limits
    /// and quota, victims for preemption, backoff times. Returns the instances present.
    fn take_stock(&mut self, now: f64, prune: bool) -> Vec<Vec<bool>> {
        let mut present = self.presence();
        for (ri, r) in self.running.iter().enumerate() {
            let Some(&j) = self.by_key.get(r.job_key.as_str()) else {
                if prune && r.state.holds_resources() {
                    self.kill(r, "job removed");
                } else if let Some(&why) = self.drains.stop.get(&ri) {
                    self.kill(r, why);
                }
                continue;
            };
            let spec = &self.jobs[j];
            match self.wanted.get(j) {
                Some(&Wanted::Run(run)) if r.run == run => {}
                // A batch job made a cron job: what its runs before the schedule left is
                // left alone until its first scheduled run.
                Some(Wanted::Nothing) if r.run == 0 => {}
                Some(Wanted::Run(_) | Wanted::Nothing) => {
                    // An incarnation of an earlier run counts for nothing; one still live
                    // is stopped (the collision policy let a new run start).
                    if r.state.holds_resources() {
                        self.kill(r, "a newer run");
                    }
                    continue;
                }
                _ => {}
            }
            // Who places this instance: the job, or the version of it its update asks for.
            let owner = self.owner(j, r.instance);
            if r.instance < spec.instances && batch_done(spec, r) {
                // A batch instance that finished, or failed for the last time, is done:
                // not placed again.
                present[owner][r.instance as usize] = true;
                continue;
            }
            if r.state.holds_resources() {
                if let Some(&why) = self.drains.stop.get(&ri) {
                    // Placed again elsewhere in this pass: its host is not offered.
                    self.kill(r, why);
                    continue;
                }
                if r.instance >= spec.instances {
                    // Killed in this pass: it counts for nothing and its room is free.
                    self.kill(r, "surplus instance");
                    continue;
                }
                let replaced = !self.updates.replace.is_empty()
                    && self.updates.replace.contains(&(j, r.instance));
                if replaced {
                    self.kill(r, "update");
                    if let Some(h) = r.host {
                        self.prefer.insert((owner, r.instance), h);
                    }
                    continue;
                }
                present[owner][r.instance as usize] = true;
                let version = self.updates.version_of.get(j).copied().flatten();
                for c in [Some(j), version].into_iter().flatten() {
                    self.count_running(c, r);
                }
                if spec.tier == Tier::Production {
                    self.charge(j);
                }
                if let Some(h) = r.host {
                    if spec.tier == Tier::Preemptible || self.within_tier {
                        self.victims.add(h, ri, spec.tier, spec.priority);
                    }
                }
            } else if r.state == TaskState::Throttled
                && r.not_before > now
                && r.instance < spec.instances
            {
                self.throttled.insert((owner, r.instance), r.not_before);
            }
        }
        present
    }

    /// Which instances each job may place: all of its own but those a version of it
    /// places, and a version only those.
    fn presence(&self) -> Vec<Vec<bool>> {
        // A cron job that has not run places nothing.
        let mut present: Vec<Vec<bool>> = self
            .jobs
            .iter()
            .enumerate()
            .map(|(j, spec)| {
                let idle = self.wanted.get(j) == Some(&Wanted::Nothing);
                vec![idle; spec.instances as usize]
            })
            .collect();
        for (j, version) in self.updates.version_of.iter().enumerate() {
            let Some(v) = *version else { continue };
            for i in 0..self.jobs[j].instances {
                let by_version = self.updates.by_version.contains(&(j, i));
                present[if by_version { j } else { v }][i as usize] = true;
            }
        }
        present
    }

    /// The job, or the version of it, that places instance `i` of job `j`.
    fn owner(&self, j: usize, i: u32) -> usize {
        match self.updates.version_of.get(j).copied().flatten() {
            Some(v) if self.updates.by_version.contains(&(j, i)) => v,
            _ => j,
        }
    }

    /// Counts a running task of the job (or a version of it) in `j`'s limits.
    fn count_running(&mut self, j: usize, r: &Running) {
        self.class(j);
        let fleet = &*self.fleet;
        let values = |col: usize| fleet.value_of(col, &r.attrs);
        let class = self.classes[j].as_mut().unwrap();
        class.count(fleet, r.host, &values, &mut self.scratch);
    }

    /// Kills a running task. Its room is free for this pass: reap stops what pack kills
    /// before it passes the placements on to launch.
    fn kill(&mut self, r: &Running, reason: &'static str) {
        self.decisions.push(Decision::Kill {
            task: r.task.clone(),
            incarnation: r.incarnation,
            reason,
        });
        if let Some(h) = r.host {
            self.fleet
                .release(h, r.cpus, r.ram_mb, r.disk_mb, r.gpus, &r.ports);
            self.placer.update(self.fleet, h);
            self.in_use[h] = true;
        }
    }

    /// Places one instance of job `j`, or records it pending. The class's limit counts must
    /// be loaded in the scratch when the class has limits.
    /// The host an update's replacement goes back to, when it fits there.
    fn preferred(&self, j: usize, instance: u32, class: &Class) -> Option<usize> {
        if self.prefer.is_empty() {
            return None;
        }
        let h = *self.prefer.get(&(j, instance))?;
        let takes_work = !self.fleet.scheduled[h];
        (takes_work && class.check(self.fleet, &self.scratch, h).is_ok()).then_some(h)
    }

    fn place_one(&mut self, j: usize, instance: u32) {
        let spec = &self.jobs[j];
        let r = &spec.resources;
        let throttled = if self.throttled.is_empty() {
            None
        } else {
            self.throttled.get(&(j, instance))
        };
        if let Some(until) = throttled {
            self.reasons.push(Reasons::new(vec![(
                format!("throttled until {until:.0}"),
                1,
            )]));
            self.decisions.push(Decision::Pending {
                job: j,
                instance,
                reasons: self.reasons.len() - 1,
            });
            self.pending += 1;
            return;
        }
        if self.stuck[j].is_none() && spec.tier == Tier::Production {
            if let Some(quota) = self.role_quota[self.role_of[j]] {
                let want = self.used[self.role_of[j]] + Resources::of(r);
                if !want.fits_in(quota) {
                    self.stuck[j] = Some("quota");
                }
            }
        }
        // The class stays where it is: moved out and back for each instance, it was a
        // copy of a few hundred bytes twice a placement.
        let class = self.classes[j].get_or_insert_with(|| Class::compile(j, spec, self.fleet));
        class.open_tables(self.fleet, &mut self.spare);
        let host = match self.stuck[j] {
            Some(_) => None,
            None => {
                let demand = (self.strategy == Strategy::Binpack && !self.oversubscribed)
                    .then_some(self.remaining);
                let class = self.classes[j].as_ref().expect("compiled above");
                self.preferred(j, instance, class)
                    .or_else(|| self.placer.find(self.fleet, class, &self.scratch, demand))
                    .or_else(|| {
                        // Preemption changes other jobs' classes, never this one's.
                        let class = self.classes[j].take().expect("compiled above");
                        let h = self.preempt_for(&class, instance);
                        self.classes[j] = Some(class);
                        h
                    })
            }
        };
        self.remaining = self.remaining.less(Resources::of(r));
        match host {
            Some(h) => {
                let placed = self.take_room(j, instance, h);
                self.decisions.push(placed);
            }
            None => {
                // Instances of a job are identical: once one fits nowhere, the rest cannot
                // fit either, and share its reasons.
                let why = *self.stuck[j].get_or_insert("");
                let idx = match self.reason_of_job.get(&j) {
                    Some(&idx) => idx,
                    None => {
                        let reasons = match why {
                            "quota" => vec![("quota".to_string(), 1)],
                            // Counted when the pass is over (`count_refusals`).
                            _ => Vec::new(),
                        };
                        let idx = self.new_reasons(reasons);
                        self.reason_of_job.insert(j, idx);
                        idx
                    }
                };
                self.decisions.push(Decision::Pending {
                    job: j,
                    instance,
                    reasons: idx,
                });
                self.pending += 1;
            }
        }
    }

    fn new_reasons(&mut self, reasons: Vec<(String, u32)>) -> usize {
        self.reasons.push(Reasons::new(reasons));
        self.reasons.len() - 1
    }

    /// A drain stops an instance only when its replacement is placed: one that fits nowhere
    /// keeps running where it is (its host is not offered, so nothing counted its room
    /// free), and the drain waits for room. Past the drain's deadline it is stopped anyway.
    fn keep_unplaced_drains(&mut self) {
        let mut drained: HashMap<(usize, u32), usize> = HashMap::new();
        for (&ri, &why) in &self.drains.stop {
            let r = &self.running[ri];
            if let (drains::DRAIN, Some(&j)) = (why, self.by_key.get(r.job_key.as_str())) {
                drained.insert((self.owner(j, r.instance), r.instance), ri);
            }
        }
        if drained.is_empty() {
            return;
        }
        let mut kept = Vec::new();
        self.decisions.retain(|d| match d {
            Decision::Pending { job, instance, .. } => match drained.get(&(*job, *instance)) {
                Some(&ri) => {
                    kept.push(ri);
                    false
                }
                None => true,
            },
            _ => true,
        });
        if kept.is_empty() {
            return;
        }
        let running = self.running;
        let stays: std::collections::HashSet<(&str, u32)> = kept
            .iter()
            .map(|&ri| (running[ri].task.as_str(), running[ri].incarnation))
            .collect();
        self.decisions.retain(|d| match d {
            Decision::Kill {
                task, incarnation, ..
            } => !stays.contains(&(task.as_str(), *incarnation)),
            _ => true,
        });
        self.pending -= kept.len();
        for ri in kept {
            self.drains.stop.remove(&ri);
            let why = "no room elsewhere for its replacement".to_string();
            self.drains.waiting.push((ri, why));
        }
    }

    /// Whether this pass placed an instance on a host scheduled for maintenance.
    fn used_scheduled(&self) -> bool {
        let f = &*self.fleet;
        self.decisions
            .iter()
            .any(|d| matches!(d, Decision::Place { host, .. } if f.scheduled[*host as usize]))
    }

    /// Empties hosts this pass opened onto the other hosts in use: greedy placement opens
    /// a host for whatever came when the hosts in use were full, and later placements may
    /// leave room for it elsewhere. The least full hosts are tried first, one at a time,
    /// then two at a time into one fresh host of another shape (two hosts of the wrong
    /// cpu:ram ratio for the work become one of the right one). Not when a job was left
    /// pending for want of room.
    fn consolidate(&mut self, budget: &std::cell::Cell<usize>) {
        // Room it frees would be room for a job left pending for want of it.
        if self.stuck.contains(&Some("")) {
            return;
        }
        for _ in 0..4 {
            if !self.consolidate_once(budget) {
                break;
            }
        }
    }

    /// Places instances left pending for want of room though the fleet holds all that is
    /// asked, each by moving one instance this pass placed off a host that would then take
    /// it, onto another host in use (an ejection): the order of placing can fill the only
    /// hosts a job may use (a limit per host, a constraint) with work that fits elsewhere
    /// as well. In the records, the instance placed takes the place of the one moved, and
    /// that one goes where the pending record was. Jobs under a role quota are left alone.
    fn repair(&mut self, budget: &std::cell::Cell<usize>) {
        let jobs = self.jobs;
        let pending: Vec<usize> = (0..self.decisions.len())
            .filter(|&d| match self.decisions[d] {
                Decision::Pending { job, instance, .. } => {
                    self.stuck[job] == Some("")
                        && !self.throttled.contains_key(&(job, instance))
                        && self.role_quota[self.role_of[job]].is_none()
                        && jobs[job].resources.gpus == 0
                }
                _ => false,
            })
            .collect();
        if pending.is_empty() || pending.len() > REPAIR_MAX {
            return;
        }
        let mut on_host = self.placed_on_hosts();
        // Instances of a job are alike: once one can be neither filled nor repaired, the
        // rest of the job is not asked about.
        let mut given_up = vec![false; jobs.len()];
        let mut repaired = false;
        for &d in &pending {
            let Decision::Pending { job, .. } = self.decisions[d] else {
                continue;
            };
            if given_up[job] || self.fill(d, &mut on_host) {
                continue;
            }
            let Some((h, x, t)) = self.ejection_for(job, &on_host, budget) else {
                given_up[job] = true;
                continue;
            };
            self.move_placed(x, t);
            self.place_pending(d, h);
            self.decisions.swap(x, d);
            on_host[t].push(d);
            repaired = true;
        }
        // A later repair may have left room for an instance of a job given up before.
        given_up.fill(false);
        for &d in pending.iter().filter(|_| repaired) {
            if let Decision::Pending { job, .. } = self.decisions[d] {
                given_up[job] = given_up[job] || !self.fill(d, &mut on_host);
            }
        }
        self.unstick_placed();
    }

    /// Forgets that a job fit nowhere once none of its instances is left pending.
    fn unstick_placed(&mut self) {
        for j in 0..self.jobs.len() {
            let left = |d: &Decision| matches!(d, Decision::Pending { job, .. } if *job == j);
            if self.stuck[j] == Some("") && !self.decisions.iter().any(left) {
                self.stuck[j] = None;
            }
        }
    }

    /// Places pending decision `d` on a host in use that takes it as it is (a repair
    /// before left room), at its own point of the records: a host has no less room there
    /// than at the end.
    fn fill(&mut self, d: usize, on_host: &mut [Vec<usize>]) -> bool {
        let Decision::Pending { job, .. } = self.decisions[d] else {
            return false;
        };
        let unbounded = std::cell::Cell::new(usize::MAX);
        let Some(h) = self.host_for_move(job, &|_| false, &unbounded) else {
            return false;
        };
        self.place_pending(d, h);
        on_host[h].push(d);
        true
    }

    /// For one more instance of job `j`: a host `h` that refuses it only for room, an
    /// instance `x` this pass placed there whose room would do, and another host in use
    /// that takes `x`; such that no pending instance fits on `h` at any point of the
    /// records once `x` has made way (`refuses_pending`).
    fn ejection_for(
        &mut self,
        j: usize,
        on_host: &[Vec<usize>],
        budget: &std::cell::Cell<usize>,
    ) -> Option<(usize, usize, usize)> {
        let (jobs, n) = (self.jobs, self.fleet.len());
        budget.set(budget.get().checked_sub(n)?);
        let class = self.classes[j].as_ref()?;
        if !self.scratch.holds(class) {
            self.scratch.load(class);
        }
        let f = &*self.fleet;
        let short: Vec<usize> = (0..n)
            .filter(|&h| !f.scheduled[h])
            .filter(|&h| matches!(class.check(f, &self.scratch, h), Err(r) if r.is_room()))
            .collect();
        for h in short {
            for &x in &on_host[h] {
                let Decision::Place { job, cpus, .. } = self.decisions[x] else {
                    continue;
                };
                let r = &jobs[job].resources;
                let freed = Resources {
                    cpus: cpus as u64,
                    ..Resources::of(r)
                };
                let class = self.classes[j].as_ref()?;
                if job == j
                    || !class.fits_with(self.fleet, h, freed, r.ports.len() as u32)
                    || !self.refuses_pending(h, x, j, &on_host[h])
                {
                    continue;
                }
                if let Some(t) = self.host_for_move(job, &|t| t == h, budget) {
                    return Some((h, x, t));
                }
                if budget.get() == 0 {
                    return None;
                }
            }
        }
        None
    }

    /// Whether, with the instance of decision `x` on host `h` replaced by one of job `j`,
    /// every instance left pending of another job still fits nowhere at its point of the
    /// records: `h` has the most room just after `x`, its room at the end plus what is
    /// placed there later.
    fn refuses_pending(&self, h: usize, x: usize, j: usize, on_h: &[usize]) -> bool {
        let jobs = self.jobs;
        let need = |job: usize| {
            let r = &jobs[job].resources;
            [
                r.cpus as u64,
                r.ram_mb,
                r.disk_mb,
                r.gpus as u64,
                r.ports.len() as u64,
            ]
        };
        let f = &*self.fleet;
        let Decision::Place { job: xj, .. } = self.decisions[x] else {
            return false;
        };
        let mut room = [
            f.free[h].ref_cpus as u64,
            f.free[h].ram_mb,
            f.free[h].disk_mb,
            f.free[h].gpus as u64,
            f.free[h].ports as u64,
        ];
        let later = on_h
            .iter()
            .filter(|&&d| d > x)
            .filter_map(|&d| match self.decisions[d] {
                Decision::Place { job, .. } => Some(job),
                _ => None,
            });
        for job in std::iter::once(xj).chain(later) {
            for (r, n) in room.iter_mut().zip(need(job)) {
                *r += n;
            }
        }
        for (r, n) in room.iter_mut().zip(need(j)) {
            *r = r.saturating_sub(n);
        }
        self.decisions.iter().all(|d| match d {
            // The job's own instances are asked again after it (`repair`).
            Decision::Pending { job, instance, .. }
                if *job != j
                    && self.stuck[*job] == Some("")
                    && !self.throttled.contains_key(&(*job, *instance)) =>
            {
                let admits = self.classes[*job].as_ref().is_some_and(|c| c.admits(f, h));
                !admits || need(*job).iter().zip(&room).any(|(n, r)| n > r)
            }
            _ => true,
        })
    }

    /// Turns pending decision `d` into a placement on host `h`.
    fn place_pending(&mut self, d: usize, h: usize) {
        let Decision::Pending { job, instance, .. } = self.decisions[d] else {
            return;
        };
        self.decisions[d] = self.take_room(job, instance, h);
        self.pending -= 1;
    }

    /// Places instance `instance` of job `j` (compiled) on host `h`: its room, ports,
    /// limit counts and quota. Returns the decision.
    fn take_room(&mut self, j: usize, instance: u32, h: usize) -> Decision {
        let (cpus, ports) = self.occupy(j, h);
        self.placed += 1;
        if self.jobs[j].tier == Tier::Production {
            self.charge(j);
        }
        Decision::Place {
            job: j,
            instance,
            host: h as u32,
            cpus,
            ports,
        }
    }

    /// Reserves one instance of job `j` (compiled) on host `h`: its room, ports and limit
    /// counts. Returns the physical cpus and the ports it was given.
    fn occupy(&mut self, j: usize, h: usize) -> (u32, std::ops::Range<usize>) {
        let r = &self.jobs[j].resources;
        let at = self.ports.len();
        let cpus = self.fleet.reserve(
            h,
            r.cpus,
            r.ram_mb,
            r.disk_mb,
            r.gpus,
            r.ports.len(),
            &mut self.ports,
        );
        self.placer.update(self.fleet, h);
        let class = self.classes[j].as_mut().expect("a job placed is compiled");
        class.count(self.fleet, Some(h), &|_| fleet::NONE, &mut self.scratch);
        self.hosts_used[h] += 1;
        (cpus, at..self.ports.len())
    }

    /// Gives back the room, ports and counts of the instance placed by decision `d` (its
    /// record still names the host; the placer is left to the caller).
    fn vacate(&mut self, d: usize) {
        let Decision::Place {
            job,
            host,
            cpus,
            ref ports,
            ..
        } = self.decisions[d]
        else {
            return;
        };
        let (j, h) = (job, host as usize);
        let r = &self.jobs[j].resources;
        self.fleet.release(
            h,
            cpus,
            r.ram_mb,
            r.disk_mb,
            r.gpus,
            &self.ports[ports.clone()],
        );
        let class = self.classes[j].as_mut().expect("a placed job is compiled");
        class.uncount(self.fleet, h, &mut self.scratch);
        self.hosts_used[h] -= 1;
    }

    /// One round of `consolidate`, while `budget` (hosts asked) lasts; whether it emptied
    /// a host.
    fn consolidate_once(&mut self, budget: &std::cell::Cell<usize>) -> bool {
        let on_host = self.placed_on_hosts();
        let opened = self.opened_by_fill(&on_host);
        let mut emptied = vec![false; self.fleet.len()];
        let mut any = false;
        for &h in &opened {
            any |= self.empty_hosts(&[h], None, &on_host, &mut emptied, budget);
        }
        let left: Vec<usize> = opened
            .into_iter()
            .filter(|&h| !emptied[h])
            .take(PAIRS_FROM)
            .collect();
        let shapes = self.placer.fresh_of_each_shape(self.fleet);
        for (i, &a) in left.iter().enumerate() {
            for &b in &left[i + 1..] {
                if emptied[a] || emptied[b] {
                    continue;
                }
                for &f in &shapes {
                    if self.placer.is_fresh(f)
                        && self.empty_hosts(&[a, b], Some(f), &on_host, &mut emptied, budget)
                    {
                        any = true;
                        break;
                    }
                }
            }
        }
        any
    }

    /// The place decisions of this pass on each host (GPU work stays where it is).
    fn placed_on_hosts(&self) -> Vec<Vec<usize>> {
        let mut on_host: Vec<Vec<usize>> = vec![Vec::new(); self.fleet.len()];
        for (d, decision) in self.decisions.iter().enumerate() {
            if let Decision::Place { host, job, .. } = decision {
                if self.jobs[*job].resources.gpus == 0 {
                    on_host[*host as usize].push(d);
                }
            }
        }
        on_host
    }

    /// The hosts this pass opened that hold only what it placed, least full first.
    fn opened_by_fill(&self, on_host: &[Vec<usize>]) -> Vec<usize> {
        let (jobs, f) = (self.jobs, &*self.fleet);
        let mut opened: Vec<(f64, usize)> = (0..f.len())
            .filter(|&h| !self.in_use[h] && self.hosts_used[h] > 0)
            .filter(|&h| on_host[h].len() == self.hosts_used[h] as usize)
            .map(|h| {
                let mut used = [0u64; 2];
                for &d in &on_host[h] {
                    if let Decision::Place { job, cpus, .. } = self.decisions[d] {
                        used[0] += cpus as u64;
                        used[1] += jobs[job].resources.ram_mb;
                    }
                }
                let cpu = used[0] as f64 / (used[0] + f.free[h].cpus as u64).max(1) as f64;
                let ram = used[1] as f64 / (used[1] + f.free[h].ram_mb).max(1) as f64;
                (cpu.max(ram), h)
            })
            .collect();
        opened.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        opened.into_iter().map(|(_, h)| h).collect()
    }

    /// Moves every instance this pass placed on `from` to other hosts in use (and `fresh`,
    /// opened for them, when given), largest first; or, when one fits nowhere, none.
    fn empty_hosts(
        &mut self,
        from: &[usize],
        fresh: Option<usize>,
        on_host: &[Vec<usize>],
        emptied: &mut [bool],
        budget: &std::cell::Cell<usize>,
    ) -> bool {
        let jobs = self.jobs;
        let mut placed: Vec<usize> = from
            .iter()
            .flat_map(|&h| on_host[h].iter().copied())
            .collect();
        let size = |d: &usize| match self.decisions[*d] {
            Decision::Place { job, .. } => {
                let r = &jobs[job].resources;
                (r.cpus as u64, r.ram_mb)
            }
            _ => (0, 0),
        };
        placed.sort_by_key(|d| std::cmp::Reverse(size(d)));
        for &h in from {
            emptied[h] = true;
        }
        if let Some(f) = fresh {
            self.placer.update(self.fleet, f);
        }
        let mut moved: Vec<(usize, usize)> = Vec::new();
        for &d in &placed {
            let Decision::Place { job, host, .. } = self.decisions[d] else {
                continue;
            };
            match self.host_for_move(job, &|t| emptied[t], budget) {
                Some(t) => {
                    self.move_placed(d, t);
                    moved.push((d, host as usize));
                }
                None => break,
            }
        }
        let done = moved.len() == placed.len();
        if !done {
            for &(d, h) in moved.iter().rev() {
                self.move_placed(d, h);
            }
            for &h in from {
                emptied[h] = false;
            }
        }
        if let Some(f) = fresh.filter(|&f| self.hosts_used[f] == 0) {
            self.placer.refresh(self.fleet, f);
        }
        done
    }

    /// The fullest host in use, other than those `skip` names, that takes one more
    /// instance of job `j` (placed already, so compiled).
    fn host_for_move(
        &mut self,
        j: usize,
        skip: &dyn Fn(usize) -> bool,
        budget: &std::cell::Cell<usize>,
    ) -> Option<usize> {
        let class = self.classes[j].as_ref().expect("a placed job is compiled");
        if !self.scratch.holds(class) {
            // Loading costs a step per instance of the job: counted as asking a host.
            budget.set(budget.get().saturating_sub(class.instances_counted()));
            self.scratch.load(class);
        }
        self.placer
            .find_in_use(self.fleet, class, &self.scratch, skip, budget)
    }

    /// Moves the instance placed by decision `d` to host `t`: its room, ports and counts.
    fn move_placed(&mut self, d: usize, t: usize) {
        let Decision::Place { host, .. } = self.decisions[d] else {
            return;
        };
        self.vacate(d);
        self.settle(d, t);
        self.placer.update(self.fleet, host as usize);
    }

    /// Reserves the instance of place decision `d`, vacated, on host `t`, and records it
    /// there.
    fn settle(&mut self, d: usize, t: usize) {
        let Decision::Place { job, instance, .. } = self.decisions[d] else {
            return;
        };
        let (cpus, ports) = self.occupy(job, t);
        self.decisions[d] = Decision::Place {
            job,
            instance,
            host: t as u32,
            cpus,
            ports,
        };
    }

    /// The reasons of the jobs left pending because no host would take them: the hosts
    /// that refuse each, by the first check they fail, on the fleet as the pass leaves it.
    fn count_refusals(&mut self) {
        let mut sets = HostSets::new(self.fleet);
        // Jobs that ask only for room are refused alike when they ask for the same: on an
        // oversubscribed fleet of many small jobs, tens of thousands of them.
        let mut by_need: HashMap<(Resources, u32), Reasons, foldhash::fast::RandomState> =
            HashMap::default();
        for (&j, &idx) in &self.reason_of_job {
            let (Some(""), Some(class)) = (self.stuck[j], &self.classes[j]) else {
                continue;
            };
            let mut count =
                || Reasons::new(reasons_for(self.fleet, &mut sets, class, &self.jobs[j]));
            self.reasons[idx] = match class.asks_only_room() {
                true => by_need
                    .entry((class.need(), class.ports_need()))
                    .or_insert_with(count)
                    .clone(),
                false => count(),
            };
        }
    }

    /// Counts one production instance of job `j` against its role's quota.
    fn charge(&mut self, j: usize) {
        self.used[self.role_of[j]] += Resources::of(&self.jobs[j].resources);
    }

    /// An instance that fits nowhere: stops the instances it may preempt on the host needing
    /// the fewest, and returns that host. Production preempts preemptible work; with
    /// --preempt-within-tier, an instance also preempts lower priorities of its own tier
    /// and role.
    fn preempt_for(&mut self, class: &Class, instance: u32) -> Option<usize> {
        let spec = &self.jobs[class.job];
        if spec.tier != Tier::Production && !self.within_tier {
            return None;
        }
        let within_tier = self.within_tier;
        let may_stop = |tier: Tier, priority: i32, job: &str| {
            (spec.tier == Tier::Production && tier == Tier::Preemptible)
                || (within_tier
                    && tier == spec.tier
                    && priority < spec.priority
                    && job.split('/').next() == Some(spec.role()))
        };
        let Room { host: h, stop } =
            self.victims
                .room_for(self.fleet, class, &self.scratch, &may_stop)?;
        for v in stop {
            let t = self.victims.stop(v);
            self.fleet
                .release(h, t.cpus, t.ram_mb, t.disk_mb, t.gpus, &t.ports);
            self.decisions.push(Decision::Preempt {
                victim: t.task.clone(),
                incarnation: t.incarnation,
                host: h as u32,
                job: class.job,
                instance,
            });
            self.preempted += 1;
        }
        self.placer.update(self.fleet, h);
        Some(h)
    }
}
