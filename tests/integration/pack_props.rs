//! Property tests of placement: the real `pack` binary on randomised fleets (capacity,
//! cpu_factor, port ranges, racks and zones, some hosts scheduled for maintenance, some
//! dedicated to roles or jobs) and randomised jobs (sizes, instances, limits, values/not
//! constraints, tiers, priorities), with and without a state of running instances.
//!
//! The output is replayed, record by record, against a model of the fleet kept by this test:
//! - a place record lands on a host that can take the instance at that moment: capacity in
//!   every dimension (cpus charged in the host's own cores, at least what the job asked in
//!   reference cores), dedicated hosts, values/not, limits per host and per attribute value
//!   (running instances included), and ports: the job's names, each a free number from the
//!   host's ranges, never one given twice;
//! - a pending record is for an instance no host can take (nor, for production, any host
//!   once its preemptible instances are stopped), nor any host once the pass is over, with
//!   each host's first failed check on the fleet the pass leaves as its reasons (the model's
//!   names and counts); the rest of that job is pending with the same reasons;
//! - an instance in restart backoff is never placed: it is pending with the one reason
//!   `throttled until T`, T its time;
//! - a scheduled host is used only when no other host can take the instance;
//! - preempt records stop preemptible instances only, for a production instance that fits
//!   nowhere, and come right before its place on the same host;
//! - every missing instance is placed or pending exactly once; surplus ones are killed;
//! - two runs give the same bytes; the exit status is 1 exactly when something is pending.
//!
//! Case counts honour PROPTEST_CASES; the defaults keep the module to a few seconds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError};
use serde_json::{json, Value};

use formic::host::{Host, Maintenance, Transport};
use formic::state::State;
use formic::task::{Job, Task, TaskState, MAX_PORTS};

use crate::common::{self, bin, code, run, stderr, stdout};

/// `default` cases unless PROPTEST_CASES says otherwise; no regression files are written
/// into the source tree (a failure prints its minimal input instead).
fn config(default: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

const ROLES: [&str; 3] = ["a", "b", "c"];

// --- what the tests generate ---

#[derive(Clone, Debug)]
struct GenHost {
    /// Physical millicores (the host's capacity, before running tasks).
    cpus: u32,
    /// Hundredths.
    factor: u32,
    ram_mb: u64,
    disk_mb: u64,
    gpus: u32,
    /// Disjoint port ranges.
    ranges: Vec<(u16, u16)>,
    rack: Option<u8>,
    zone: Option<u8>,
    /// The values of `dedicated` (ROLE, ROLE/NAME, */NAME), sorted and distinct; empty
    /// when the host has none.
    dedicated: Vec<String>,
    scheduled: bool,
}

impl GenHost {
    fn factor(&self) -> f64 {
        self.factor as f64 / 100.0
    }

    /// The host's value of a single-valued attribute (rack, zone).
    fn attr(&self, a: Attr) -> Option<String> {
        match a {
            Attr::Rack => self.rack.map(|r| format!("r{r}")),
            Attr::Zone => self.zone.map(|z| format!("z{z}")),
            Attr::Dedicated => unreachable!("dedicated has a list: attr_values"),
        }
    }

    /// Every value the host has of the attribute (dedicated may have several).
    fn attr_values(&self, a: Attr) -> Vec<String> {
        match a {
            Attr::Dedicated => self.dedicated.clone(),
            _ => self.attr(a).into_iter().collect(),
        }
    }

    /// The attribute as an offer carries it: a string, or a list for several values.
    fn attr_json(&self, a: Attr) -> Option<Value> {
        match self.attr_values(a).as_slice() {
            [] => None,
            [one] => Some(json!(one)),
            many => Some(json!(many)),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Attr {
    Rack,
    Zone,
    Dedicated,
}

impl Attr {
    fn name(self) -> &'static str {
        match self {
            Attr::Rack => "rack",
            Attr::Zone => "zone",
            Attr::Dedicated => "dedicated",
        }
    }
}

#[derive(Clone, Debug)]
enum GenConstraint {
    /// At most n per host.
    HostLimit(u32),
    Limit(Attr, u32),
    Values(Attr, Vec<String>),
    Not(Attr, Vec<String>),
}

#[derive(Clone, Debug)]
struct GenJob {
    role: usize,
    instances: u32,
    /// Reference millicores.
    cpus: u32,
    ram_mb: u64,
    disk_mb: u64,
    gpus: u32,
    ports: usize,
    constraints: Vec<GenConstraint>,
    production: bool,
    priority: i32,
}

fn host() -> impl Strategy<Value = GenHost> {
    let ranges = proptest::collection::vec((0..40u16, 0..6u16), 0..3).prop_map(|rs| {
        rs.iter()
            .enumerate()
            .map(|(i, &(off, len))| {
                let lo = 31000 + 50 * i as u16 + off;
                (lo, lo + len)
            })
            .collect::<Vec<_>>()
    });
    (
        (
            prop_oneof![1 => Just(0u32), 8 => 0..16_000u32],
            prop_oneof![3 => Just(100u32), 2 => 30..300u32],
            prop_oneof![1 => Just(0u64), 8 => 0..16_384u64],
            0..4_000u64,
            prop_oneof![4 => Just(0u32), 1 => 0..4u32],
        ),
        ranges,
        proptest::option::weighted(0.8, 0..4u8),
        proptest::option::weighted(0.7, 0..3u8),
        prop_oneof![
            17 => Just(Vec::new()),
            3 => proptest::collection::btree_set(proptest::sample::select(dedicated_values()), 1..3)
                .prop_map(|set| set.into_iter().collect::<Vec<_>>()),
        ],
        proptest::bool::weighted(0.2),
    )
        .prop_map(
            |((cpus, factor, ram_mb, disk_mb, gpus), ranges, rack, zone, dedicated, scheduled)| {
                GenHost {
                    cpus,
                    factor,
                    ram_mb,
                    disk_mb,
                    gpus,
                    ranges,
                    rack,
                    zone,
                    dedicated,
                    scheduled,
                }
            },
        )
}

/// Values of `dedicated` hosts are given: every role, and for the first jobs (named j0, j1,
/// …; see `job_key`) ROLE/NAME and */NAME.
fn dedicated_values() -> Vec<String> {
    let mut all: Vec<String> = ROLES.iter().map(|r| r.to_string()).collect();
    for j in 0..3 {
        all.push(format!("*/j{j}"));
        all.extend(ROLES.iter().map(|r| format!("{r}/j{j}")));
    }
    all
}

fn values_of(a: Attr) -> Vec<String> {
    match a {
        Attr::Rack => (0..5).map(|r| format!("r{r}")).collect(),
        Attr::Zone => (0..4).map(|z| format!("z{z}")).collect(),
        Attr::Dedicated => ROLES
            .iter()
            .map(|r| r.to_string())
            .chain(["a/j0", "b/j1", "*/j2"].map(String::from))
            .collect(),
    }
}

fn constraint() -> impl Strategy<Value = GenConstraint> {
    let attr = prop_oneof![Just(Attr::Rack), Just(Attr::Zone), Just(Attr::Dedicated)];
    let subset = |a: Attr, min: usize| {
        let all = values_of(a);
        proptest::sample::subsequence(all.clone(), min..=all.len())
    };
    prop_oneof![
        2 => (1..4u32).prop_map(GenConstraint::HostLimit),
        // Limits on attributes every host may lack are left to the CLI test of that bug;
        // here they are generated, and counted only among hosts that have the attribute.
        1 => (prop_oneof![Just(Attr::Rack), Just(Attr::Zone)], 1..4u32)
            .prop_map(|(a, n)| GenConstraint::Limit(a, n)),
        1 => attr.clone().prop_flat_map(move |a| subset(a, 1).prop_map(move |v| GenConstraint::Values(a, v))),
        1 => attr.prop_flat_map(move |a| subset(a, 0).prop_map(move |v| GenConstraint::Not(a, v))),
    ]
}

fn job() -> impl Strategy<Value = GenJob> {
    (
        (
            0..ROLES.len(),
            0..7u32,
            prop_oneof![3 => 1..2_000u32, 1 => 1..8_000u32],
            prop_oneof![3 => 0..1_500u64, 1 => 0..6_000u64],
            prop_oneof![1 => Just(0u64), 1 => 0..1_500u64],
            prop_oneof![6 => Just(0u32), 1 => 0..3u32],
        ),
        0..4usize,
        proptest::collection::vec(constraint(), 0..3),
        any::<bool>(),
        -3..4i32,
    )
        .prop_map(
            |(
                (role, instances, cpus, ram_mb, disk_mb, gpus),
                ports,
                mut constraints,
                production,
                priority,
            )| {
                // Two value constraints on one attribute give two reasons of one name, whose
                // counts pack does not add up (a bug kept by a CLI test); one per attribute here.
                let mut seen = Vec::new();
                constraints.retain(|c| match c {
                    GenConstraint::Values(a, _) | GenConstraint::Not(a, _) => {
                        let first = !seen.contains(a);
                        seen.push(*a);
                        first
                    }
                    _ => true,
                });
                GenJob {
                    role,
                    instances,
                    cpus,
                    ram_mb,
                    disk_mb,
                    gpus,
                    ports,
                    constraints,
                    production,
                    priority,
                }
            },
        )
}

/// An instance the state already has: `(job, instance, host, throttled)`.
type GenTask = (Index, u32, Index, bool);

/// A wanted task with its job and host chosen: (job, instance, host, throttled).
type Wanted = (usize, u32, usize, bool);

fn resolve(hosts: &[GenHost], jobs: &[GenJob], wanted: &[GenTask]) -> Vec<Wanted> {
    if jobs.is_empty() {
        return Vec::new();
    }
    wanted
        .iter()
        .map(|(js, i, hs, t)| (js.index(jobs.len()), *i, hs.index(hosts.len()), *t))
        .collect()
}

fn host_name(h: usize) -> String {
    format!("h{h:02}")
}

fn job_key(j: usize, job: &GenJob) -> String {
    format!("{}/prod/j{j}", ROLES[job.role])
}

fn port_names(job: &GenJob) -> Vec<String> {
    (0..job.ports).map(|i| format!("p{i}")).collect()
}

fn job_json(j: usize, job: &GenJob) -> Value {
    let constraints: Vec<Value> = job
        .constraints
        .iter()
        .map(|c| match c {
            GenConstraint::HostLimit(n) => json!({"attr": "host", "limit": n}),
            GenConstraint::Limit(a, n) => json!({"attr": a.name(), "limit": n}),
            GenConstraint::Values(a, v) => json!({"attr": a.name(), "values": v}),
            GenConstraint::Not(a, v) => json!({"attr": a.name(), "not": v}),
        })
        .collect();
    json!({
        "job": job_key(j, job),
        "instances": job.instances,
        "cmd": ["sleep", "1000"],
        "resources": {
            "cpus": job.cpus as f64 / 1000.0,
            "ram_mb": job.ram_mb,
            "disk_mb": job.disk_mb,
            "gpus": job.gpus,
            "ports": port_names(job),
        },
        "constraints": constraints,
        "tier": if job.production { "production" } else { "preemptible" },
        "priority": job.priority,
    })
}

/// Physical millicores a host of `factor` spends on `cpus` reference millicores.
fn physical(cpus: u32, factor: f64) -> u32 {
    (cpus as f64 / factor - 1e-9).ceil().max(0.0) as u32
}

/// Reference millicores in `phys` physical ones, rounded down.
fn reference(phys: u32, factor: f64) -> u64 {
    (phys as f64 * factor + 1e-9).floor() as u64
}

/// Free ports as the ranges an offer lists.
fn ranges_of(free: &BTreeSet<u16>) -> Vec<[u16; 2]> {
    let mut out: Vec<[u16; 2]> = Vec::new();
    for &p in free {
        match out.last_mut() {
            Some(r) if r[1] as u32 + 1 == p as u32 => r[1] = p,
            _ => out.push([p, p]),
        }
    }
    out
}

// --- the model ---

/// What is free on one host, as the replay goes.
#[derive(Clone, Debug)]
struct Free {
    cpus: u32,
    ram_mb: u64,
    disk_mb: u64,
    gpus: u32,
    ports: BTreeSet<u16>,
}

/// A task of the state, as the model knows it.
#[derive(Clone, Debug)]
struct Existing {
    job: usize,
    instance: u32,
    host: Option<usize>,
    throttled: bool,
    cpus: u32,
    ports: Vec<u16>,
}

struct Model<'a> {
    hosts: &'a [GenHost],
    jobs: &'a [GenJob],
    free: Vec<Free>,
    /// Instances of each job per host (running or placed).
    count: HashMap<(usize, usize), u32>,
}

impl<'a> Model<'a> {
    /// Whether host `h` passes the job's dedicated, values/not and limit checks, or the
    /// first it fails, in pack's order (dedicated, then values/not, then limits), named as
    /// pending records name it.
    fn allowed(&self, j: usize, h: usize) -> Result<(), String> {
        let (job, host) = (&self.jobs[j], &self.hosts[h]);
        // A dedicated host takes a job one of its values admits: its role, its role/name
        // or */name.
        let name = format!("j{j}");
        let admits = |v: &String| match v.split_once('/') {
            None => v == ROLES[job.role],
            Some((r, n)) => (r == "*" || r == ROLES[job.role]) && n == name,
        };
        if !host.dedicated.is_empty() && !host.dedicated.iter().any(admits) {
            return Err("dedicated".into());
        }
        for c in &job.constraints {
            match c {
                GenConstraint::Values(a, vs) => {
                    // Named when any of the host's values is named.
                    if !host.attr_values(*a).iter().any(|v| vs.contains(v)) {
                        return Err(format!("constraint {}", a.name()));
                    }
                }
                GenConstraint::Not(a, vs) => {
                    if host.attr_values(*a).iter().any(|v| vs.contains(v)) {
                        return Err(format!("constraint {}", a.name()));
                    }
                }
                GenConstraint::HostLimit(_) | GenConstraint::Limit(..) => {}
            }
        }
        let here = |h2: usize| self.count.get(&(j, h2)).copied().unwrap_or(0);
        for c in &job.constraints {
            match c {
                GenConstraint::HostLimit(n) => {
                    if here(h) >= *n {
                        return Err(format!("limit host:{n}"));
                    }
                }
                // A host without the limited attribute takes none of the job (Aurora, Nomad).
                GenConstraint::Limit(a, n) => {
                    let Some(v) = host.attr(*a) else {
                        return Err(format!("limit {}:{n}", a.name()));
                    };
                    let same: u32 = (0..self.hosts.len())
                        .filter(|&h2| self.hosts[h2].attr(*a).as_ref() == Some(&v))
                        .map(here)
                        .sum();
                    if same >= *n {
                        return Err(format!("limit {}:{n}", a.name()));
                    }
                }
                GenConstraint::Values(..) | GenConstraint::Not(..) => {}
            }
        }
        Ok(())
    }

    /// Whether `free` holds one instance of job `j` on host `h`.
    fn room(&self, j: usize, h: usize, free: &Free) -> Result<(), String> {
        let job = &self.jobs[j];
        let f = self.hosts[h].factor();
        if reference(free.cpus, f) < job.cpus as u64 {
            return Err("insufficient cpus".into());
        }
        if free.ram_mb < job.ram_mb {
            return Err("insufficient ram_mb".into());
        }
        if free.disk_mb < job.disk_mb {
            return Err("insufficient disk_mb".into());
        }
        if free.gpus < job.gpus {
            return Err("insufficient gpus".into());
        }
        if free.ports.len() < job.ports {
            return Err("insufficient ports".into());
        }
        Ok(())
    }

    fn fits(&self, j: usize, h: usize) -> Result<(), String> {
        self.allowed(j, h)?;
        self.room(j, h, &self.free[h])
    }

    fn fits_anywhere(&self, j: usize) -> Option<usize> {
        (0..self.hosts.len()).find(|&h| self.fits(j, h).is_ok())
    }

    /// The reasons a pending record of job `j` should give now: each host's first failed
    /// check, with how many hosts gave it.
    fn reasons(&self, j: usize) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for h in 0..self.hosts.len() {
            if let Err(why) = self.fits(j, h) {
                *out.entry(why).or_default() += 1;
            }
        }
        out
    }
}

/// Everything one run is checked against.
struct Case<'a> {
    hosts: &'a [GenHost],
    jobs: &'a [GenJob],
    existing: &'a [Existing],
    /// What each host offers (capacity less what runs there).
    offered: Vec<Free>,
    /// When the backoff of the throttled instances ends.
    not_before: f64,
}

fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

/// Replays pack's records against the model; the error says which record broke what.
fn check(case: &Case<'_>, out: &std::process::Output) -> Result<(), String> {
    let text = stdout(out);
    let status = code(out);
    if status != 0 && status != 1 {
        return Err(format!("exit {status}: {}", stderr(out)));
    }
    let keys: HashMap<String, usize> = case
        .jobs
        .iter()
        .enumerate()
        .map(|(j, job)| (job_key(j, job), j))
        .collect();
    let hosts: HashMap<String, usize> = (0..case.hosts.len()).map(|h| (host_name(h), h)).collect();
    let mut m = Model {
        hosts: case.hosts,
        jobs: case.jobs,
        free: case.offered.clone(),
        count: HashMap::new(),
    };
    let mut present: BTreeSet<(usize, u32)> = BTreeSet::new();
    let mut throttled: BTreeSet<(usize, u32)> = BTreeSet::new();
    // Preemptible instances on offered hosts that production may stop: task id -> index.
    let mut victims: HashMap<String, usize> = HashMap::new();
    let mut surplus: BTreeSet<String> = BTreeSet::new();
    let mut surplus_at: HashMap<String, usize> = HashMap::new();
    for (i, e) in case.existing.iter().enumerate() {
        let task = format!("{}/{}", job_key(e.job, &case.jobs[e.job]), e.instance);
        match e.host {
            Some(h) => {
                *m.count.entry((e.job, h)).or_default() += 1;
                if e.instance < case.jobs[e.job].instances {
                    present.insert((e.job, e.instance));
                } else {
                    surplus.insert(task.clone());
                    surplus_at.insert(task.clone(), i);
                }
                if !case.jobs[e.job].production && e.instance < case.jobs[e.job].instances {
                    victims.insert(task, i);
                }
            }
            None if e.throttled => {
                throttled.insert((e.job, e.instance));
            }
            None => {}
        }
    }

    let recs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).map_err(|e| format!("not JSON ({e}): {l}")))
        .collect::<Result<_, _>>()?;
    let mut decided: BTreeSet<(usize, u32)> = BTreeSet::new();
    let mut killed: BTreeSet<String> = BTreeSet::new();
    let mut specs: HashMap<usize, String> = HashMap::new();
    let mut any_pending = false;
    // The instance the last preempt records made room for, and where.
    let mut preempting: Option<(String, usize)> = None;
    let mut spec_seen: BTreeSet<usize> = BTreeSet::new();
    // The reasons of each job's first pending instance (not throttled).
    let mut stuck: HashMap<usize, BTreeMap<String, u64>> = HashMap::new();
    for (n, r) in recs.iter().enumerate() {
        let at = format!("record {} {r}", n + 1);
        let kind = r["type"].as_str().unwrap_or("");
        if kind == "place" || kind == "preempt" {
            let task = if kind == "place" {
                &r["task"]
            } else {
                &r["for"]
            };
            let key = task
                .as_str()
                .and_then(|t| t.rsplit_once('/'))
                .map_or("", |(k, _)| k);
            if keys.get(key).is_some_and(|j| !spec_seen.contains(j)) {
                return Err(format!("{at}: {kind} for {key} before its spec record"));
            }
        }
        if let Some((for_task, _)) = &preempting {
            if kind != "preempt" && !(kind == "place" && r["task"] == for_task.as_str()) {
                return Err(format!(
                    "{at}: preempt records for {for_task} are not followed by its place"
                ));
            }
        }
        let instance_of = |r: &Value| -> Result<(usize, u32), String> {
            let key = r["job"].as_str().ok_or("no job")?;
            let j = *keys.get(key).ok_or(format!("unknown job {key}"))?;
            let i = r["instance"].as_u64().ok_or("no instance")? as u32;
            if r["task"] != format!("{key}/{i}").as_str() {
                return Err(format!("task is not {key}/{i}"));
            }
            if i >= case.jobs[j].instances {
                return Err(format!(
                    "instance {i} of a job of {}",
                    case.jobs[j].instances
                ));
            }
            Ok((j, i))
        };
        match kind {
            // One spec record per job, before its first preempt or place, with its hash.
            "spec" => {
                let key = r["job"].as_str().unwrap_or("");
                let j = *keys
                    .get(key)
                    .ok_or(format!("{at}: spec of an unknown job"))?;
                if !spec_seen.insert(j) {
                    return Err(format!("{at}: a second spec record for {key}"));
                }
                if r["spec"]["job"] != key || r["hash"].as_str().is_none_or(|h| h.len() != 16) {
                    return Err(format!(
                        "{at}: the spec record does not carry the job's spec"
                    ));
                }
            }
            "kill" => {
                let task = r["task"].as_str().unwrap_or("").to_string();
                if r["reason"] != "surplus instance" || !surplus.contains(&task) {
                    return Err(format!("{at}: not a surplus instance"));
                }
                if !killed.insert(task.clone()) {
                    return Err(format!("{at}: killed twice"));
                }
                // reap stops what pack kills before launch starts what it places: the
                // instance's room is free for this pass.
                if let Some(&v) = surplus_at.get(&task) {
                    let e = &case.existing[v];
                    if let Some(h) = e.host {
                        let vj = &case.jobs[e.job];
                        let f = &mut m.free[h];
                        f.cpus += e.cpus;
                        f.ram_mb += vj.ram_mb;
                        f.disk_mb += vj.disk_mb;
                        f.gpus += vj.gpus;
                        f.ports.extend(&e.ports);
                        *m.count.entry((e.job, h)).or_default() -= 1;
                    }
                }
            }
            "preempt" => {
                let victim = r["task"].as_str().unwrap_or("").to_string();
                let for_task = r["for"].as_str().unwrap_or("").to_string();
                let h = *hosts
                    .get(r["host"].as_str().unwrap_or(""))
                    .ok_or(format!("{at}: unknown host"))?;
                let (fkey, _) = for_task.rsplit_once('/').unwrap_or(("", ""));
                let fj = *keys.get(fkey).ok_or(format!("{at}: for an unknown job"))?;
                if !case.jobs[fj].production {
                    return Err(format!("{at}: a preemptible instance preempts"));
                }
                match &preempting {
                    Some((t, ph)) if *t == for_task && *ph == h => {}
                    Some(_) => return Err(format!("{at}: preempts for two instances at once")),
                    None => {
                        if let Some(h2) = m.fits_anywhere(fj) {
                            return Err(format!(
                                "{at}: preempts although {} has room",
                                host_name(h2)
                            ));
                        }
                        preempting = Some((for_task.clone(), h));
                    }
                }
                let v = victims.remove(&victim).ok_or(format!(
                    "{at}: the victim is not a running preemptible instance (or was stopped already)"
                ))?;
                let e = &case.existing[v];
                if e.host != Some(h) {
                    return Err(format!("{at}: the victim is not on that host"));
                }
                let vj = &case.jobs[e.job];
                let f = &mut m.free[h];
                f.cpus += e.cpus;
                f.ram_mb += vj.ram_mb;
                f.disk_mb += vj.disk_mb;
                f.gpus += vj.gpus;
                f.ports.extend(&e.ports);
            }
            "place" => {
                let (j, i) = instance_of(r).map_err(|e| format!("{at}: {e}"))?;
                let job = &case.jobs[j];
                let h = *hosts
                    .get(r["host"].as_str().unwrap_or(""))
                    .ok_or(format!("{at}: unknown host"))?;
                if let Some((t, ph)) = preempting.take() {
                    if ph != h {
                        return Err(format!("{at}: placed away from the host {t} preempted on"));
                    }
                }
                if present.contains(&(j, i)) {
                    return Err(format!("{at}: the instance already runs"));
                }
                if throttled.contains(&(j, i)) {
                    return Err(format!("{at}: placed during its restart backoff"));
                }
                if !decided.insert((j, i)) {
                    return Err(format!("{at}: decided twice"));
                }
                m.fits(j, h)
                    .map_err(|why| format!("{at}: the host cannot take it: {why}"))?;
                if case.hosts[h].scheduled {
                    if let Some(h2) = (0..case.hosts.len())
                        .find(|&h2| !case.hosts[h2].scheduled && m.fits(j, h2).is_ok())
                    {
                        return Err(format!(
                            "{at}: on a host scheduled for maintenance while {} has room",
                            host_name(h2)
                        ));
                    }
                }
                let factor = case.hosts[h].factor();
                let cpus = r["cpus"].as_f64().ok_or(format!("{at}: no cpus"))?;
                let phys = (cpus * 1000.0).round() as u32;
                if phys != physical(job.cpus, factor)
                    || (phys as f64) * factor < job.cpus as f64 - 1e-6
                {
                    return Err(format!(
                        "{at}: {} reference millicores at cpu_factor {factor} charged {phys} physical",
                        job.cpus
                    ));
                }
                if r["ram_mb"] != job.ram_mb || r["disk_mb"] != job.disk_mb || r["gpus"] != job.gpus
                {
                    return Err(format!("{at}: resources differ from the job's"));
                }
                let ports = r["ports"].as_object().ok_or(format!("{at}: no ports"))?;
                if ports.keys().cloned().collect::<Vec<_>>() != port_names(job) {
                    return Err(format!("{at}: port names are not the job's"));
                }
                let free = &mut m.free[h];
                for p in ports.values() {
                    let p = p.as_u64().unwrap_or(0) as u16;
                    if !free.ports.remove(&p) {
                        return Err(format!(
                            "{at}: port {p} is not free on {} (used twice, or not offered)",
                            host_name(h)
                        ));
                    }
                }
                free.cpus = free
                    .cpus
                    .checked_sub(phys)
                    .ok_or(format!("{at}: cpus over capacity"))?;
                free.ram_mb = free
                    .ram_mb
                    .checked_sub(job.ram_mb)
                    .ok_or(format!("{at}: ram over capacity"))?;
                free.disk_mb = free
                    .disk_mb
                    .checked_sub(job.disk_mb)
                    .ok_or(format!("{at}: disk over capacity"))?;
                free.gpus = free
                    .gpus
                    .checked_sub(job.gpus)
                    .ok_or(format!("{at}: gpus over capacity"))?;
                *m.count.entry((j, h)).or_default() += 1;
                let spec = r["spec"].as_str().unwrap_or("").to_string();
                if specs.entry(j).or_insert_with(|| spec.clone()) != &spec {
                    return Err(format!("{at}: two specs for one job"));
                }
            }
            "pending" => {
                let (j, i) = instance_of(r).map_err(|e| format!("{at}: {e}"))?;
                any_pending = true;
                if present.contains(&(j, i)) {
                    return Err(format!("{at}: the instance already runs"));
                }
                if !decided.insert((j, i)) {
                    return Err(format!("{at}: decided twice"));
                }
                let reasons = r["reasons"]
                    .as_object()
                    .ok_or(format!("{at}: no reasons"))?;
                if reasons.is_empty() {
                    return Err(format!("{at}: pending without a reason"));
                }
                let reasons: BTreeMap<String, u64> = reasons
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), v.as_u64().ok_or("a count that is not one")?)))
                    .collect::<Result<_, String>>()
                    .map_err(|e| format!("{at}: {e}"))?;
                if throttled.contains(&(j, i)) {
                    let want =
                        BTreeMap::from([(format!("throttled until {:.0}", case.not_before), 1)]);
                    if reasons != want {
                        return Err(format!(
                            "{at}: a throttled instance's reasons, not {want:?}"
                        ));
                    }
                    continue;
                }
                // Instances of a job are alike: once one fits nowhere, the rest of the job
                // is pending with the same reasons, whatever the pass placed in between.
                if let Some(first) = stuck.get(&j) {
                    if *first != reasons {
                        return Err(format!(
                            "{at}: reasons differ from the job's first pending instance's {first:?}"
                        ));
                    }
                    continue;
                }
                if let Some(h) = m.fits_anywhere(j) {
                    return Err(format!("{at}: pending although {} has room", host_name(h)));
                }
                stuck.insert(j, reasons);
                if case.jobs[j].production {
                    // Preemption must have been tried: no host takes it even with every
                    // preemptible instance on it stopped.
                    for h in 0..case.hosts.len() {
                        if m.allowed(j, h).is_err() {
                            continue;
                        }
                        let mut f = m.free[h].clone();
                        for &v in victims.values() {
                            let e = &case.existing[v];
                            if e.host == Some(h) {
                                let vj = &case.jobs[e.job];
                                f.cpus += e.cpus;
                                f.ram_mb += vj.ram_mb;
                                f.disk_mb += vj.disk_mb;
                                f.gpus += vj.gpus;
                                f.ports.extend(&e.ports);
                            }
                        }
                        if m.room(j, h, &f).is_ok() {
                            return Err(format!(
                                "{at}: production left pending although stopping preemptible \
                                 instances on {} makes room",
                                host_name(h)
                            ));
                        }
                    }
                }
            }
            other => return Err(format!("{at}: unexpected record type {other:?}")),
        }
    }
    if let Some((t, _)) = preempting {
        return Err(format!("preempt records for {t} with no place after them"));
    }
    for (j, job) in case.jobs.iter().enumerate() {
        for i in 0..job.instances {
            if !present.contains(&(j, i)) && !decided.contains(&(j, i)) {
                return Err(format!(
                    "{}/{i} is neither running, placed nor pending",
                    job_key(j, job)
                ));
            }
        }
    }
    if killed != surplus {
        return Err(format!("killed {killed:?}, surplus {surplus:?}"));
    }
    // Nothing is left pending that the fleet, as the decisions leave it, could take, and
    // the reasons count each host once, by the first check it fails on that fleet.
    for (&j, reasons) in &stuck {
        let key = job_key(j, &case.jobs[j]);
        if let Some(h) = m.fits_anywhere(j) {
            return Err(format!(
                "{key} left pending, but {} can take it after the pass",
                host_name(h)
            ));
        }
        let total: u64 = reasons.values().sum();
        if total != case.hosts.len() as u64 {
            return Err(format!(
                "{key}: reasons count {total} hosts of {}",
                case.hosts.len()
            ));
        }
        let want = m.reasons(j);
        if *reasons != want {
            return Err(format!(
                "{key}: reasons {reasons:?} are not each host's first failed check after the pass {want:?}"
            ));
        }
    }
    if (status == 1) != any_pending {
        return Err(format!("exit {status} with pending: {any_pending}"));
    }
    Ok(())
}

// --- running a case ---

/// The offers of `hosts` less what `existing` reserves on them; the tasks that fit.
fn settle(hosts: &[GenHost], jobs: &[GenJob], wanted: &[Wanted]) -> (Vec<Free>, Vec<Existing>) {
    let mut free: Vec<Free> = hosts
        .iter()
        .map(|h| Free {
            cpus: h.cpus,
            ram_mb: h.ram_mb,
            disk_mb: h.disk_mb,
            gpus: h.gpus,
            ports: h.ranges.iter().flat_map(|&(a, b)| a..=b).collect(),
        })
        .collect();
    let mut existing = Vec::new();
    let mut seen = BTreeSet::new();
    if jobs.is_empty() {
        return (free, existing);
    }
    for &(j, instance, h, throttled) in wanted {
        let job = &jobs[j];
        // Instances up to one past the job's count: the last is surplus.
        let instance = instance % (job.instances + 1);
        if !seen.insert((j, instance)) {
            continue;
        }
        if throttled {
            existing.push(Existing {
                job: j,
                instance,
                host: None,
                throttled: true,
                cpus: 0,
                ports: Vec::new(),
            });
            continue;
        }
        let f = &mut free[h];
        let phys = physical(job.cpus, hosts[h].factor());
        if f.cpus < phys
            || f.ram_mb < job.ram_mb
            || f.disk_mb < job.disk_mb
            || f.gpus < job.gpus
            || f.ports.len() < job.ports
        {
            seen.remove(&(j, instance));
            continue;
        }
        f.cpus -= phys;
        f.ram_mb -= job.ram_mb;
        f.disk_mb -= job.disk_mb;
        f.gpus -= job.gpus;
        let ports: Vec<u16> = f.ports.iter().copied().take(job.ports).collect();
        for p in &ports {
            f.ports.remove(p);
        }
        existing.push(Existing {
            job: j,
            instance,
            host: Some(h),
            throttled: false,
            cpus: phys,
            ports,
        });
    }
    (free, existing)
}

fn offers_text(hosts: &[GenHost], free: &[Free]) -> String {
    hosts
        .iter()
        .zip(free)
        .enumerate()
        .map(|(i, (h, f))| {
            let mut attrs = serde_json::Map::new();
            for a in [Attr::Rack, Attr::Zone, Attr::Dedicated] {
                if let Some(v) = h.attr_json(a) {
                    attrs.insert(a.name().into(), v);
                }
            }
            let o = json!({
                "type": "offer", "host": host_name(i), "cpus": f.cpus as f64 / 1000.0,
                "ram_mb": f.ram_mb, "disk_mb": f.disk_mb, "gpus": f.gpus,
                "ports": ranges_of(&f.ports), "attrs": attrs, "cpu_factor": h.factor(),
                "maintenance": if h.scheduled { "scheduled" } else { "none" },
            });
            format!("{o}\n")
        })
        .collect()
}

/// A state of `hosts` and `existing` tasks; throttled ones wait until `later`.
fn write_state(
    path: &std::path::Path,
    hosts: &[GenHost],
    jobs: &[GenJob],
    existing: &[Existing],
    later: f64,
) {
    let mut st = State::open_writer(path).unwrap();
    st.write(|tx| {
        for (i, h) in hosts.iter().enumerate() {
            let mut attrs: Vec<(String, String)> = [Attr::Rack, Attr::Zone, Attr::Dedicated]
                .iter()
                .flat_map(|&a| {
                    h.attr_values(a)
                        .into_iter()
                        .map(move |v| (a.name().to_string(), v))
                })
                .collect();
            attrs.sort();
            tx.upsert(Host {
                name: host_name(i),
                cpus: h.cpus,
                ram_mb: h.ram_mb,
                disk_mb: h.disk_mb,
                gpus: h.gpus,
                ports: h.ranges.clone(),
                attrs,
                cpu_factor: h.factor(),
                transport: Transport::Local,
                maintenance: Maintenance::none(),
                access: Default::default(),
                liveness: Default::default(),
            });
        }
        for e in existing {
            let job = &jobs[e.job];
            let slot = tx.upsert(Job {
                announce: None,
                key: job_key(e.job, job),
                ports: port_names(job),
                rollout: Default::default(),
                runs: Default::default(),
                counts: Default::default(),
            });
            let mut t = Task::new(slot, e.instance);
            match e.host {
                Some(h) => {
                    t.host = tx.view().hosts.find(&host_name(h)).unwrap();
                    t.state = TaskState::Running;
                    t.cpus = e.cpus;
                    t.ram_mb = job.ram_mb;
                    t.disk_mb = job.disk_mb;
                    t.gpus = job.gpus;
                    let mut ports = [0u16; MAX_PORTS];
                    ports[..e.ports.len()].copy_from_slice(&e.ports);
                    t.ports = ports;
                }
                None => {
                    t.state = TaskState::Throttled;
                    t.not_before = later;
                }
            }
            tx.upsert(t);
        }
        Ok(())
    })
    .unwrap();
}

/// Runs pack on one generated case with each strategy, twice each, and checks every run.
fn run_case(hosts: &[GenHost], jobs: &[GenJob], wanted: &[Wanted]) -> Result<(), TestCaseError> {
    let dir = common::tempdir();
    let jobs_text: String = jobs
        .iter()
        .enumerate()
        .map(|(j, job)| format!("{}\n", job_json(j, job)))
        .collect();
    std::fs::write(dir.path().join("jobs.jsonl"), &jobs_text).unwrap();
    let (offered, existing) = settle(hosts, jobs, wanted);
    let offers = offers_text(hosts, &offered);
    let state = dir.path().join("state");
    let with_state = !wanted.is_empty();
    // An hour from now, in whole seconds as pending records print it.
    let later = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600) as f64;
    if with_state {
        write_state(&state, hosts, jobs, &existing, later);
    }
    let case = Case {
        hosts,
        jobs,
        existing: &existing,
        offered,
        not_before: later,
    };
    for strategy in ["binpack", "spread"] {
        let pack = || {
            let mut cmd = Command::new(bin("pack"));
            cmd.env_clear()
                .current_dir(dir.path())
                .args(["--strategy", strategy, "jobs.jsonl"]);
            if with_state {
                cmd.arg("--state").arg(&state);
            }
            run(&mut cmd, offers.as_bytes())
        };
        let first = pack();
        let context = || {
            format!(
                "--strategy {strategy}\njobs:\n{jobs_text}offers:\n{offers}state: {existing:?}\nstdout:\n{}stderr: {}",
                stdout(&first),
                stderr(&first)
            )
        };
        check(&case, &first).map_err(|e| fail(format!("{e}\n{}", context())))?;
        let second = pack();
        if second.stdout != first.stdout || code(&second) != code(&first) {
            return Err(fail(format!(
                "two runs differ; the second printed:\n{}\n{}",
                stdout(&second),
                context()
            )));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(40))]

    /// No state: a pure function of job files and offers.
    #[test]
    fn placements_respect_capacity_constraints_and_ports(
        hosts in proptest::collection::vec(host(), 1..10),
        jobs in proptest::collection::vec(job(), 1..7),
    ) {
        run_case(&hosts, &jobs, &[])?;
    }

    /// With a state of running (and throttled) instances: they count for limits, surplus
    /// ones are killed, production preempts only preemptible ones and only when needed.
    #[test]
    fn with_running_instances_only_what_is_missing_is_decided(
        hosts in proptest::collection::vec(host(), 1..8),
        jobs in proptest::collection::vec(job(), 1..6),
        wanted in proptest::collection::vec(
            (any::<Index>(), 0..8u32, any::<Index>(), proptest::bool::weighted(0.1)),
            1..24,
        ),
    ) {
        run_case(&hosts, &jobs, &resolve(&hosts, &jobs, &wanted))?;
    }
}

/// Found by CI (stop 29): pack preempted on h00 for a production instance while h02 still
/// had the ram and the ports it needed.
#[test]
fn a_production_instance_preempts_only_when_no_host_has_room() {
    let host = |cpus, factor, ram_mb, disk_mb, ranges| GenHost {
        cpus,
        factor,
        ram_mb,
        disk_mb,
        gpus: 0,
        ranges,
        rack: None,
        zone: None,
        dedicated: Vec::new(),
        scheduled: false,
    };
    let hosts = [
        host(12771, 135, 3930, 1130, vec![(31000, 31001), (31050, 31050)]),
        host(0, 100, 7779, 2577, vec![]),
        host(5315, 100, 1426, 150, vec![(31000, 31004)]),
    ];
    let job = |instances, ram_mb, ports, production| GenJob {
        role: 0,
        instances,
        cpus: 1,
        ram_mb,
        disk_mb: 0,
        gpus: 0,
        ports,
        constraints: Vec::new(),
        production,
        priority: 0,
    };
    let jobs = [
        job(5, 0, 2, false),
        job(0, 0, 0, false),
        job(5, 476, 1, true),
    ];
    run_case(&hosts, &jobs, &[(2, 0, 0, true), (0, 0, 0, false)]).unwrap();
}

/// The model itself must be able to fail: a hand-made output that breaks each rule is
/// caught, so a passing property means pack kept the rules, not that nothing was checked.
#[test]
fn the_checker_catches_broken_output() {
    let host = GenHost {
        cpus: 2000,
        factor: 100,
        ram_mb: 1000,
        disk_mb: 0,
        gpus: 0,
        ranges: vec![(31000, 31001)],
        rack: Some(0),
        zone: None,
        dedicated: Vec::new(),
        scheduled: false,
    };
    let job = GenJob {
        role: 0,
        instances: 2,
        cpus: 1000,
        ram_mb: 100,
        disk_mb: 0,
        gpus: 0,
        ports: 1,
        constraints: vec![GenConstraint::HostLimit(1)],
        production: true,
        priority: 0,
    };
    let hosts = [
        host.clone(),
        GenHost {
            rack: Some(1),
            ..host
        },
    ];
    let jobs = [job];
    let (offered, existing) = settle(&hosts, &jobs, &[]);
    let case = Case {
        hosts: &hosts,
        jobs: &jobs,
        existing: &existing,
        offered: offered.clone(),
        not_before: 1e9,
    };
    let place = |i: u32, h: &str, cpus: f64, port: u16| {
        json!({"type":"place","task":format!("a/prod/j0/{i}"),"job":"a/prod/j0","instance":i,
               "host":h,"cpus":cpus,"ram_mb":100,"disk_mb":0,"gpus":0,"ports":{"p0":port},
               "spec":"0000000000000000"})
    };
    let pending = |i: u32, reasons: Value| {
        json!({"type":"pending","task":format!("a/prod/j0/{i}"),"job":"a/prod/j0",
               "instance":i,"reasons":reasons})
    };
    let output = |status: i32, recs: &[Value]| {
        use std::os::unix::process::ExitStatusExt;
        std::process::Output {
            status: std::process::ExitStatus::from_raw(status << 8),
            stdout: recs
                .iter()
                .map(|r| format!("{r}\n"))
                .collect::<String>()
                .into_bytes(),
            stderr: Vec::new(),
        }
    };
    let spec = json!({"type":"spec","job":"a/prod/j0","hash":"0000000000000000","spec":{"job":"a/prod/j0"}});
    let good = [
        spec.clone(),
        place(0, "h00", 1.0, 31000),
        place(1, "h01", 1.0, 31000),
    ];
    assert_eq!(check(&case, &output(0, &good)), Ok(()));
    assert!(
        check(&case, &output(0, &good[1..])).is_err(),
        "a place before its job's spec"
    );
    let broken: Vec<(&str, i32, Vec<Value>)> = vec![
        (
            "limit host:1",
            0,
            vec![place(0, "h00", 1.0, 31000), place(1, "h00", 1.0, 31001)],
        ),
        (
            "port outside ranges",
            0,
            vec![place(0, "h00", 1.0, 31005), place(1, "h01", 1.0, 31000)],
        ),
        (
            "cpus charged",
            0,
            vec![place(0, "h00", 0.5, 31000), place(1, "h01", 1.0, 31000)],
        ),
        ("missing instance", 0, vec![place(0, "h00", 1.0, 31000)]),
        (
            "pending with room",
            1,
            vec![
                place(0, "h00", 1.0, 31000),
                pending(1, json!({"limit host:1": 2})),
            ],
        ),
        ("exit 1 with nothing pending", 1, good[1..].to_vec()),
    ];
    for (what, status, recs) in broken {
        // Each with its spec record, so that only the named fault is there to catch.
        let recs: Vec<Value> = std::iter::once(spec.clone()).chain(recs).collect();
        assert!(
            check(&case, &output(status, &recs)).is_err(),
            "{what} was not caught"
        );
    }

    // Instance 1 in its restart backoff: pending until its time, with that one reason.
    let backoff = [Existing {
        job: 0,
        instance: 1,
        host: None,
        throttled: true,
        cpus: 0,
        ports: Vec::new(),
    }];
    let throttled_case = Case {
        existing: &backoff,
        offered: offered.clone(),
        ..case
    };
    let waits = pending(1, json!({"throttled until 1000000000": 1}));
    let good = [spec.clone(), place(0, "h00", 1.0, 31000), waits.clone()];
    assert_eq!(check(&throttled_case, &output(1, &good)), Ok(()));
    let broken: Vec<(&str, i32, Vec<Value>)> = vec![
        (
            "placed during its backoff",
            0,
            vec![place(0, "h00", 1.0, 31000), place(1, "h01", 1.0, 31000)],
        ),
        (
            "another time in the throttled reason",
            1,
            vec![
                place(0, "h00", 1.0, 31000),
                pending(1, json!({"throttled until 1000000005": 1})),
            ],
        ),
    ];
    for (what, status, recs) in broken {
        let recs: Vec<Value> = std::iter::once(spec.clone()).chain(recs).collect();
        assert!(
            check(&throttled_case, &output(status, &recs)).is_err(),
            "{what} was not caught"
        );
    }

    // Three instances on two hosts with a limit of one per host: the third is pending,
    // and each host gives the limit as its reason.
    let three = [GenJob {
        instances: 4,
        ..jobs[0].clone()
    }];
    let case = Case {
        jobs: &three,
        ..case
    };
    let placed = [place(0, "h00", 1.0, 31000), place(1, "h01", 1.0, 31000)];
    let with = |rest: &[Value]| -> Vec<Value> {
        std::iter::once(spec.clone())
            .chain(placed.iter().cloned())
            .chain(rest.iter().cloned())
            .collect()
    };
    let limit = json!({"limit host:1": 2});
    assert_eq!(
        check(
            &case,
            &output(
                1,
                &with(&[pending(2, limit.clone()), pending(3, limit.clone())])
            )
        ),
        Ok(())
    );
    for (what, rest) in [
        (
            "a reason no host gives",
            vec![
                pending(2, json!({"insufficient cpus": 2})),
                pending(3, json!({"insufficient cpus": 2})),
            ],
        ),
        (
            "a host counted under another reason",
            vec![
                pending(2, json!({"limit host:1": 1, "insufficient ports": 1})),
                pending(3, json!({"limit host:1": 1, "insufficient ports": 1})),
            ],
        ),
        (
            "the rest of the job with other reasons",
            vec![
                pending(2, limit.clone()),
                pending(3, json!({"insufficient ram_mb": 2})),
            ],
        ),
    ] {
        assert!(
            check(&case, &output(1, &with(&rest))).is_err(),
            "{what} was not caught"
        );
    }
}
