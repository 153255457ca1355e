//! The fleet as the placement loop sees it: offers turned into flat arrays of free capacity
//! (struct of arrays, fixed-point integers), attribute values interned to small integers,
//! so the loop compares numbers and never hashes or touches a string.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::host::{Capacity, Mode, DEDICATED};
use crate::records::Record;

use super::Resources;

/// Maps by name (hosts, attribute keys and values), a few lookups per offer. foldhash
/// rather than std's SipHash: SipHash was a tenth of reading 100k offers. Its fast hasher
/// is still seeded per process, so a fleet's names cannot be chosen to collide in advance
/// (and nothing iterates these maps in an order that reaches the output).
type ByName<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// No value for an attribute on a host.
pub const NONE: u32 = u32::MAX;

/// Interned attribute values: one column per attribute key, one entry per host.
#[derive(Default, Debug)]
#[cfg_attr(test, derive(PartialEq))]
pub struct Attrs {
    keys: ByName<usize>,
    values: Vec<ByName<u32>>,
    names: Vec<Vec<String>>,
    columns: Vec<Vec<u32>>,
}

impl Attrs {
    /// The column of `key`, created (all NONE) when first asked for.
    pub fn column_of(&mut self, key: &str, hosts: usize) -> usize {
        if let Some(&c) = self.keys.get(key) {
            return c;
        }
        self.keys.insert(key.to_string(), self.columns.len());
        self.values.push(ByName::default());
        self.names.push(Vec::new());
        self.columns.push(vec![NONE; hosts]);
        self.columns.len() - 1
    }

    pub fn key_name(&self, c: usize) -> &str {
        self.keys
            .iter()
            .find(|(_, &i)| i == c)
            .map_or("", |(k, _)| k.as_str())
    }

    pub fn find_column(&self, key: &str) -> Option<usize> {
        self.keys.get(key).copied()
    }

    /// The id of `value` in column `c`, interned when new.
    pub fn intern(&mut self, c: usize, value: &str) -> u32 {
        if let Some(&v) = self.values[c].get(value) {
            return v;
        }
        let id = self.names[c].len() as u32;
        self.values[c].insert(value.to_string(), id);
        self.names[c].push(value.to_string());
        id
    }

    pub fn lookup(&self, c: usize, value: &str) -> Option<u32> {
        self.values[c].get(value).copied()
    }

    pub fn value_count(&self, c: usize) -> usize {
        self.names[c].len()
    }

    pub fn column(&self, c: usize) -> &[u32] {
        &self.columns[c]
    }

    fn set(&mut self, c: usize, host: usize, value: u32) {
        self.columns[c][host] = value;
    }
}

/// Free capacity per host. Index = position of the host's offer on input.
///
/// Where a failure domain's value is counted: hosts lacking the attribute share slot 0.
pub fn domain_slot(v: u32) -> usize {
    if v == NONE {
        0
    } else {
        v as usize + 1
    }
}

/// A column per resource, not a `Resources` per host: these are the placement loop's own
/// data, laid out for `place` and measured with it (benches/pack.rs), in the widths offers
/// allow (u32 millicores, GPUs and ports, where `Resources` has u64s). What runs once per
/// pass sees them as `Resources` through `largest` and `free_columns`.
#[derive(Default, Debug)]
#[cfg_attr(test, derive(PartialEq))]
pub struct Fleet {
    pub names: Vec<String>,
    /// What each host has free.
    pub free: Vec<Free>,
    /// The free port ranges of each host after its lowest (`Free::port_first`).
    port_ranges: Vec<Vec<(u16, u16)>>,
    /// Scheduled for maintenance: used last.
    pub scheduled: Vec<bool>,
    pub attrs: Attrs,
    /// Column of the `dedicated` attribute, if any host has one. Its ids name lists of
    /// values (a host may be dedicated to several roles or jobs): each distinct list is
    /// interned once, as its values sorted and joined by `,` (which no value holds).
    pub dedicated: Option<usize>,
    /// The values of each list in the dedicated column, by id.
    pub dedications: Vec<Vec<String>>,
    /// The ids of the lists that hold each dedicated value, ascending.
    lists_with: ByName<Vec<u32>>,
    pub by_name: ByName<u32>,
    /// Columns of the failure domains spread spreads across, largest first.
    pub domains: Vec<usize>,
    /// Offers of hosts whose maintenance vetoes every placement (draining, drained): not
    /// in the fleet, named with the mode by --explain. A filter upstream may pass them on.
    pub vetoed: Vec<(String, String)>,
    /// How many reservations were given back (`release`): hosts gain room in no other
    /// way, so while it stays the same they only fill.
    pub releases: u64,
}

/// What one host has free, in one record, with the little else the placement loop reads
/// beside it: checking a host for room and reserving room on it read and write all of
/// it, and kept as a column per resource each was a cache miss of its own on a large
/// fleet. One cache line a host: a record across two lines was two misses.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(align(64))]
pub struct Free {
    /// Physical millicores.
    pub cpus: u32,
    /// The same in reference millicores (floor(cpus × cpu_factor)): what jobs ask in.
    pub ref_cpus: u32,
    pub ram_mb: u64,
    pub disk_mb: u64,
    pub gpus: u32,
    /// Free ports (count).
    pub ports: u32,
    pub cpu_factor: f64,
    /// The lowest free port range: a placement takes its ports from it without following
    /// a pointer to the host's list of ranges.
    port_first: (u16, u16),
    /// The host's value in the smallest failure domain spread spreads across (its rack,
    /// say; `Fleet::domain_value`). Not room, but read beside it: spread weighs the domain
    /// of every host whose room it has just checked, and from the attribute's own column
    /// each was a cache miss. It fills what was padding.
    smallest_domain: u32,
    /// What spread measures the host's emptiness against (`place::Placer::new` sets it).
    /// Not room either, but read with it at every placement spread makes.
    pub size: Size,
}

/// All a host has, free or held by what runs there: reference millicores, GPUs, ram.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Size {
    pub ref_cpus: u32,
    pub gpus: u32,
    pub ram_mb: u64,
}

/// The fields of an offer record (and of `offer_line::Line`).
pub(super) const OFFER_FIELDS: &[&str] = &[
    "type",
    "host",
    "cpus",
    "ram_mb",
    "disk_mb",
    "gpus",
    "ports",
    "attrs",
    "cpu_factor",
    "maintenance",
];

/// An offer, checked: what `Fleet::add` keeps of it.
pub(super) struct Offer<'a> {
    pub name: &'a str,
    pub cap: Capacity,
    /// Each attribute's key and value as interned (the values of `dedicated` sorted, without
    /// repeats, joined by `,`), in the order the offer gives them.
    pub attrs: Vec<(&'a str, Cow<'a, str>)>,
    pub mode: Mode,
}

/// An offer's `attrs` may not name `host`: jobs' constraints use it for the host's name.
const HOST_RESERVED: &str = "field \"attrs\": the key \"host\" is reserved for the host's name";

/// Field `maintenance` of an offer (none when left out).
pub(super) fn maintenance(m: Option<&str>) -> Result<Mode, String> {
    match m {
        None | Some("none") => Ok(Mode::None),
        Some("scheduled") => Ok(Mode::Scheduled),
        Some("draining") => Ok(Mode::Draining),
        Some("drained") => Ok(Mode::Drained),
        Some(m) => Err(format!(
            "field \"maintenance\": {m:?} is not none, scheduled, draining or drained"
        )),
    }
}

impl Fleet {
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Adds one offer; the error names the field. (The fast way, `offer_line`, adds the
    /// plain offers: anything it cannot take for certain comes here.)
    pub fn add_offer(&mut self, rec: &Record) -> Result<(), String> {
        let f = rec.get();
        f.only(OFFER_FIELDS)?;
        let name = f.str("host")?.ok_or("field \"host\" is missing")?;
        self.check_new_host(name)?;
        let cap = crate::host::parse_capacity(&f, true)?;
        // Checked before anything of the host is kept: the key and each value, as interned.
        let mut attrs: Vec<(&str, Cow<str>)> = Vec::new();
        if let Some(map) = f.object("attrs")? {
            if map.contains_key("host") {
                return Err(HOST_RESERVED.into());
            }
            for (k, v) in map {
                let values = crate::host::attr_values(k, v)
                    .map_err(|e| format!("host {name}: field \"attrs\": {e}"))?;
                attrs.push((k, values.join(",").into()));
            }
        }
        let mode = maintenance(f.str("maintenance")?)?;
        self.add(Offer {
            name,
            cap,
            attrs,
            mode,
        });
        Ok(())
    }

    /// A host's name, checked, and not offered before.
    pub(super) fn check_new_host(&self, name: &str) -> Result<(), String> {
        crate::host::check_name(name).map_err(|e| format!("field \"host\": {e}"))?;
        if self.by_name.contains_key(name) || self.vetoed.iter().any(|(n, _)| n == name) {
            return Err(format!("host {name} is offered twice"));
        }
        Ok(())
    }

    /// Adds an offer that was checked in full (it cannot fail: nothing is half added).
    pub(super) fn add(&mut self, offer: Offer) {
        let Offer {
            name,
            cap,
            attrs,
            mode,
        } = offer;
        if !mode.takes_work() {
            self.vetoed
                .push((name.to_string(), mode.name().to_string()));
            return;
        }
        let h = self.names.len();
        let (milli, factor, ranges) = (cap.cpus, cap.cpu_factor, cap.ports);
        self.by_name.insert(name.to_string(), h as u32);
        self.names.push(name.to_string());
        self.free.push(Free {
            cpus: milli,
            ref_cpus: ref_milli(milli, factor),
            ram_mb: cap.ram_mb,
            disk_mb: cap.disk_mb,
            gpus: cap.gpus,
            ports: ranges.iter().map(|&(a, b)| (b - a) as u32 + 1).sum(),
            cpu_factor: factor,
            port_first: NO_PORTS,
            smallest_domain: NONE,
            size: Size::default(),
        });
        self.push_ranges(ranges);
        self.scheduled.push(mode == Mode::Scheduled);
        for col in &mut self.attrs.columns {
            col.push(NONE);
        }
        for (k, v) in attrs {
            let c = self.attrs.column_of(k, h + 1);
            let id = self.attrs.intern(c, &v);
            self.attrs.set(c, h, id);
            if k == DEDICATED && id as usize == self.dedications.len() {
                let list: Vec<String> = v.split(',').map(str::to_string).collect();
                for value in &list {
                    self.lists_with.entry(value.clone()).or_default().push(id);
                }
                self.dedications.push(list);
            }
        }
        self.dedicated = self.attrs.find_column(DEDICATED);
    }

    /// The ids of the dedicated lists with a value that admits the job of role `role` and
    /// name `name` (`ROLE`, `ROLE/NAME` or `*/NAME`), ascending.
    pub fn lists_admitting(&self, role: &str, name: &str) -> Vec<u32> {
        // Most fleets dedicate no host: then no name is built, for any of the jobs.
        if self.lists_with.is_empty() {
            return Vec::new();
        }
        self.lists_naming([
            role.to_string(),
            format!("{role}/{name}"),
            format!("*/{name}"),
        ])
    }

    /// The ids of the dedicated lists that hold any of `values`, ascending.
    pub fn lists_naming<S: AsRef<str>>(&self, values: impl IntoIterator<Item = S>) -> Vec<u32> {
        let mut ids: Vec<u32> = values
            .into_iter()
            .filter_map(|v| self.lists_with.get(v.as_ref()))
            .flatten()
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The id in column `col` of a host not offered, from its attributes as the state
    /// keeps them (a pair per value; the dedicated ones make one list).
    pub fn value_of(&self, col: usize, attrs: &[(String, String)]) -> u32 {
        let key = self.attrs.key_name(col);
        let values: Vec<&str> = attrs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect();
        let value = match values.as_slice() {
            [] => return NONE,
            [one] => one.to_string(),
            many if key == DEDICATED => {
                let mut many = many.to_vec();
                many.sort_unstable();
                many.dedup();
                many.join(",")
            }
            [first, ..] => first.to_string(),
        };
        self.attrs.lookup(col, &value).unwrap_or(NONE)
    }

    /// Names the failure domains to spread across (attributes no host has are skipped).
    pub fn spread_by(&mut self, attrs: &[String]) {
        self.domains = attrs
            .iter()
            .filter_map(|a| self.attrs.find_column(a))
            .collect();
        if let Some(&col) = self.domains.last() {
            for (free, &v) in self.free.iter_mut().zip(self.attrs.column(col)) {
                free.smallest_domain = v;
            }
        }
    }

    /// Host `h`'s value in failure domain `i` (of `domains`).
    #[inline]
    pub fn domain_value(&self, i: usize, h: usize) -> u32 {
        match i + 1 == self.domains.len() {
            true => self.free[h].smallest_domain,
            false => self.attrs.column(self.domains[i])[h],
        }
    }

    /// The column of the pseudo-attribute `host`: each host's own name. Built when a job
    /// first constrains on it (offers may not carry an attribute called `host`).
    pub fn host_column(&mut self) -> usize {
        if let Some(c) = self.attrs.find_column("host") {
            return c;
        }
        let c = self.attrs.column_of("host", self.len());
        for h in 0..self.len() {
            let id = self.attrs.intern(c, &self.names[h]);
            self.attrs.set(c, h, id);
        }
        c
    }

    /// The largest free amount of each resource on any one host (cpus in reference
    /// millicores): the fleet's unit of size.
    pub fn largest(&self) -> Resources {
        Resources {
            cpus: self.free.iter().map(|f| f.ref_cpus).max().unwrap_or(0) as u64,
            ram_mb: self.free.iter().map(|f| f.ram_mb).max().unwrap_or(0),
            disk_mb: self.free.iter().map(|f| f.disk_mb).max().unwrap_or(0),
            gpus: self.free.iter().map(|f| f.gpus).max().unwrap_or(0) as u64,
        }
    }

    /// A copy of the free capacity, a column per resource in the order of
    /// `Resources::to_array` (cpus in reference millicores).
    pub fn free_columns(&self) -> [Vec<u64>; 4] {
        [
            self.free.iter().map(|f| f.ref_cpus as u64).collect(),
            self.free.iter().map(|f| f.ram_mb).collect(),
            self.free.iter().map(|f| f.disk_mb).collect(),
            self.free.iter().map(|f| f.gpus as u64).collect(),
        ]
    }

    /// Physical millicores host `h` spends on `ref_cpus` reference millicores.
    pub fn physical(&self, h: usize, ref_cpus: u32) -> u32 {
        (ref_cpus as f64 / self.free[h].cpu_factor - 1e-9)
            .ceil()
            .max(0.0) as u32
    }

    /// Takes a reservation off host `h`: adds the ports it is given to `taken` (a list of
    /// its own per placement was an allocation per placement) and returns the physical
    /// millicores it takes.
    #[allow(clippy::too_many_arguments)]
    pub fn reserve(
        &mut self,
        h: usize,
        ref_cpus: u32,
        ram: u64,
        disk: u64,
        gpus: u32,
        nports: usize,
        taken: &mut Vec<u16>,
    ) -> u32 {
        let phys = self.physical(h, ref_cpus).min(self.free[h].cpus);
        let free = &mut self.free[h];
        free.cpus -= phys;
        free.ref_cpus = ref_milli(free.cpus, free.cpu_factor);
        free.ram_mb -= ram;
        free.disk_mb -= disk;
        free.gpus -= gpus;
        free.ports -= nports as u32;
        for _ in 0..nports {
            let (lo, hi) = free.port_first;
            taken.push(lo);
            if lo == hi {
                let rest = &mut self.port_ranges[h];
                free.port_first = if rest.is_empty() {
                    NO_PORTS
                } else {
                    rest.remove(0)
                };
            } else {
                free.port_first.0 = lo + 1;
            }
        }
        phys
    }

    /// Gives a reservation back to host `h` (a preempted task's).
    pub fn release(
        &mut self,
        h: usize,
        phys_cpus: u32,
        ram: u64,
        disk: u64,
        gpus: u32,
        ports: &[u16],
    ) {
        self.releases += 1;
        let free = &mut self.free[h];
        free.cpus += phys_cpus;
        free.ref_cpus = ref_milli(free.cpus, free.cpu_factor);
        free.ram_mb += ram;
        free.disk_mb += disk;
        free.gpus += gpus;
        let mut ranges = std::mem::take(&mut self.port_ranges[h]);
        if self.free[h].port_first != NO_PORTS {
            ranges.push(self.free[h].port_first);
        }
        for &p in ports {
            ranges.push((p, p));
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
        for &(a, b) in ranges.iter() {
            match merged.last_mut() {
                Some(last) if a as u32 <= last.1 as u32 + 1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        self.free[h].ports = merged.iter().map(|&(a, b)| (b - a) as u32 + 1).sum();
        self.set_ranges(h, merged);
    }
}

/// A host's first free range when it has none (no port is both at least 1 and at most 0).
const NO_PORTS: (u16, u16) = (1, 0);

impl Fleet {
    /// Adds the free port ranges (sorted, apart) of the host just added.
    fn push_ranges(&mut self, ranges: Vec<(u16, u16)>) {
        self.port_ranges.push(Vec::new());
        self.set_ranges(self.port_ranges.len() - 1, ranges);
    }

    /// Host `h`'s free port ranges, lowest first.
    pub fn free_ranges(&self, h: usize) -> Vec<(u16, u16)> {
        let first = Some(self.free[h].port_first).filter(|&r| r != NO_PORTS);
        first
            .into_iter()
            .chain(self.port_ranges[h].iter().copied())
            .collect()
    }

    /// Sets host `h`'s free port ranges (sorted, apart).
    fn set_ranges(&mut self, h: usize, mut ranges: Vec<(u16, u16)>) {
        self.free[h].port_first = if ranges.is_empty() {
            NO_PORTS
        } else {
            ranges.remove(0)
        };
        self.port_ranges[h] = ranges;
    }
}

/// Reference millicores of `phys` physical millicores at `factor` (rounded down, so a task
/// that fits in reference cores always fits in the physical ones it is charged).
pub fn ref_milli(phys: u32, factor: f64) -> u32 {
    ((phys as f64 * factor) + 1e-9).floor().min(u32::MAX as f64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Reader;

    fn fleet(offers: &[&str]) -> Result<Fleet, String> {
        let mut f = Fleet::default();
        for line in offers {
            let rec = Reader::new(line.as_bytes()).next().unwrap().unwrap();
            f.add_offer(&rec)?;
        }
        Ok(f)
    }

    fn offer(host: &str, attrs: &str) -> String {
        format!(r#"{{"type":"offer","host":"{host}","cpus":1,"ram_mb":1,"attrs":{attrs}}}"#)
    }

    #[test]
    fn each_distinct_list_of_dedicated_values_is_interned_once() {
        let f = fleet(&[
            &offer("h1", r#"{"dedicated":["www/web","db"]}"#),
            &offer("h2", r#"{"dedicated":["db","www/web","db"]}"#),
            &offer("h3", r#"{"dedicated":"db"}"#),
            &offer("h4", r#"{"rack":"r1"}"#),
            &offer("h5", r#"{"dedicated":"*/web"}"#),
        ])
        .unwrap();
        let col = f.dedicated.unwrap();
        assert_eq!(f.attrs.column(col), [0, 0, 1, NONE, 2]);
        assert_eq!(
            f.dedications,
            [vec!["db", "www/web"], vec!["db"], vec!["*/web"]]
        );
        assert_eq!(f.lists_admitting("www", "web"), [0, 2]);
        assert_eq!(f.lists_admitting("db", "x"), [0, 1]);
        assert_eq!(f.lists_admitting("ml", "web"), [2]);
        assert_eq!(f.lists_admitting("ml", "x"), [] as [u32; 0]);
        assert_eq!(f.lists_naming(["www/web", "nothing"]), [0]);
        // A host not offered, from the state's pairs: the same list, the same id.
        let pairs = [
            ("dedicated".to_string(), "www/web".to_string()),
            ("dedicated".to_string(), "db".to_string()),
        ];
        assert_eq!(f.value_of(col, &pairs), 0);
        assert_eq!(f.value_of(col, &pairs[1..]), 1);
        assert_eq!(f.value_of(col, &[]), NONE);
    }

    #[test]
    fn lists_are_for_dedicated_alone_and_bad_values_name_the_host() {
        let err = fleet(&[&offer("h1", r#"{"zone":["z1","z2"]}"#)]).unwrap_err();
        assert_eq!(
            err,
            "host h1: field \"attrs\": zone: a list of values is allowed only for \"dedicated\""
        );
        let err = fleet(&[&offer("h2", r#"{"dedicated":"a/b/c"}"#)]).unwrap_err();
        assert!(
            err.starts_with("host h2: field \"attrs\": dedicated: \"a/b/c\""),
            "{err}"
        );
    }
}
