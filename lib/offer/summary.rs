//! `offer hosts --summary`: what the cluster has, holds and has left, in all and per value
//! of the attributes named (zone and rack unless told), as a capacity planner asks it.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::host::{cores, Host};
use crate::usage::{Free, Usage};

/// Amounts of the resources a summary adds up: millicores, ram, disk, GPUs.
#[derive(Clone, Copy, Default)]
struct Amounts([u64; 4]);

impl Amounts {
    fn of_host(h: &Host) -> Amounts {
        Amounts([h.cpus as u64, h.ram_mb, h.disk_mb, h.gpus as u64])
    }

    fn of_free(f: &Free) -> Amounts {
        Amounts([f.cpus, f.ram_mb, f.disk_mb, f.gpus])
    }

    fn add(&mut self, other: Amounts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    fn less(self, other: Amounts) -> Amounts {
        Amounts(std::array::from_fn(|i| {
            self.0[i].saturating_sub(other.0[i])
        }))
    }

    fn json(self) -> Value {
        let [cpus, ram_mb, disk_mb, gpus] = self.0;
        json!({"cpus": cores(cpus.min(u32::MAX as u64) as u32), "ram_mb": ram_mb,
               "disk_mb": disk_mb, "gpus": gpus})
    }
}

/// The hosts of one scope (the cluster, or one value of an attribute) added up.
#[derive(Default)]
pub struct Tally {
    hosts: u64,
    /// Hosts pack is offered: taking work (not draining or drained) and up.
    offered: u64,
    tasks: u64,
    capacity: Amounts,
    free: Amounts,
    /// Free on the hosts offered: what the next pass can place.
    offered_free: Amounts,
    by_maintenance: BTreeMap<&'static str, u64>,
    by_liveness: BTreeMap<&'static str, u64>,
    /// Hosts by maintenance and liveness together.
    by_condition: BTreeMap<(&'static str, &'static str), u64>,
}

impl Tally {
    fn count(&mut self, h: &Host, u: &Usage, f: &Free, mode: &'static str, offered: bool) {
        self.hosts += 1;
        self.tasks += u.tasks as u64;
        self.capacity.add(Amounts::of_host(h));
        self.free.add(Amounts::of_free(f));
        if offered {
            self.offered += 1;
            self.offered_free.add(Amounts::of_free(f));
        }
        *self.by_maintenance.entry(mode).or_default() += 1;
        *self.by_liveness.entry(h.liveness.life.name()).or_default() += 1;
        let condition = (mode, h.liveness.life.name());
        *self.by_condition.entry(condition).or_default() += 1;
    }

    /// Capacity, reserved and free: millicores, ram_mb, disk_mb, GPUs.
    pub fn amounts(&self) -> [[u64; 4]; 3] {
        let reserved = self.capacity.less(self.free);
        [self.capacity.0, reserved.0, self.free.0]
    }

    /// Hosts by (maintenance, liveness), as `offer hosts` shows each.
    pub fn conditions(&self) -> &BTreeMap<(&'static str, &'static str), u64> {
        &self.by_condition
    }

    /// Free of capacity, as `offer hosts` shows a host's: `FREE/CAPACITY`.
    pub fn free_of(&self, i: usize) -> (u64, u64) {
        (self.free.0[i], self.capacity.0[i])
    }

    pub fn hosts(&self) -> u64 {
        self.hosts
    }

    pub fn offered(&self) -> u64 {
        self.offered
    }

    pub fn tasks(&self) -> u64 {
        self.tasks
    }

    fn json(&self) -> Value {
        json!({
            "hosts": self.hosts,
            "offered": self.offered,
            "tasks": self.tasks,
            "maintenance": self.by_maintenance,
            "liveness": self.by_liveness,
            "capacity": self.capacity.json(),
            "reserved": self.capacity.less(self.free).json(),
            "free": self.free.json(),
            "offered_free": self.offered_free.json(),
        })
    }
}

/// One line of a summary: the cluster, or the hosts with one value of an attribute (None:
/// the hosts without it).
pub struct Scope {
    pub attr: Option<String>,
    pub value: Option<String>,
    pub tally: Tally,
}

impl Scope {
    pub fn record(&self) -> Value {
        let mut rec = json!({"type": "summary"});
        if let Some(attr) = &self.attr {
            rec["attr"] = json!(attr);
            rec["value"] = json!(self.value);
        }
        let Value::Object(fields) = self.tally.json() else {
            unreachable!("a tally is an object")
        };
        rec.as_object_mut().expect("an object").extend(fields);
        rec
    }

    /// `cluster`, or `ATTR=VALUE` (`ATTR=-` for the hosts without it).
    pub fn label(&self) -> String {
        match &self.attr {
            None => "cluster".into(),
            Some(attr) => format!("{attr}={}", self.value.as_deref().unwrap_or("-")),
        }
    }
}

/// A host as the summary counts it: its record, use, free room, maintenance as shown, and
/// whether it is offered.
pub struct Counted<'a> {
    pub host: &'a Host,
    pub usage: &'a Usage,
    pub free: &'a Free,
    pub mode: &'static str,
    pub offered: bool,
}

/// The cluster, then each value of each attribute in `by` (in the order named; values in
/// name order, the hosts without the attribute last). An attribute no host has gives no
/// line; a host with several values of one (`dedicated`) counts under each.
pub fn summarize(hosts: &[Counted], by: &[String]) -> Vec<Scope> {
    let mut cluster = Tally::default();
    for c in hosts {
        cluster.count(c.host, c.usage, c.free, c.mode, c.offered);
    }
    let mut scopes = vec![Scope {
        attr: None,
        value: None,
        tally: cluster,
    }];
    for attr in by {
        let mut values: BTreeMap<Option<&str>, Tally> = BTreeMap::new();
        for c in hosts {
            let mut had = false;
            for (_, v) in c.host.attrs.iter().filter(|(k, _)| k == attr) {
                had = true;
                let tally = values.entry(Some(v.as_str())).or_default();
                tally.count(c.host, c.usage, c.free, c.mode, c.offered);
            }
            if !had {
                let tally = values.entry(None).or_default();
                tally.count(c.host, c.usage, c.free, c.mode, c.offered);
            }
        }
        if values.keys().all(Option::is_none) {
            continue; // no host has it
        }
        // Named values in order, then the hosts without one.
        let (named, none): (Vec<_>, Vec<_>) = values.into_iter().partition(|(v, _)| v.is_some());
        for (value, tally) in named.into_iter().chain(none) {
            scopes.push(Scope {
                attr: Some(attr.clone()),
                value: value.map(str::to_string),
                tally,
            });
        }
    }
    scopes
}
