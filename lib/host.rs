//! Hosts: what a machine offers (capacity, ports, attributes), how to reach it, and its
//! maintenance state. This module owns the host record in all three of its forms: the JSON
//! line an operator writes, the fixed-layout slot in the state file, and the value in memory.

use serde_json::{json, Map, Value};

use crate::fixed::{Corrupt, Decoder, Encoder, TooLarge};
use crate::records::{show, Fields, Record};

/// Cpus are kept in thousandths of a core so capacity arithmetic is exact.
pub type Millicores = u32;

pub fn millicores(cpus: f64) -> Millicores {
    (cpus * 1000.0).round() as Millicores
}

pub fn cores(milli: Millicores) -> f64 {
    milli as f64 / 1000.0
}

/// The fields of a host record on input.
pub const FIELDS: &[&str] = &[
    "type",
    "name",
    "cpus",
    "ram_mb",
    "disk_mb",
    "gpus",
    "ports",
    "attrs",
    "cpu_factor",
    "transport",
    "address",
    "ssh",
    "root",
];

/// Names may carry host and domain names, never path or shell syntax.
const NAME_MAX: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Local,
    Ssh,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Local => "local",
            Transport::Ssh => "ssh",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "local" => Some(Transport::Local),
            "ssh" => Some(Transport::Ssh),
            _ => None,
        }
    }
}

/// Aurora's maintenance states: SCHEDULED hosts still take work but are used last; DRAINING
/// hosts take none while their tasks move away; DRAINED hosts hold none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    None = 0,
    Scheduled = 1,
    Draining = 2,
    Drained = 3,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Scheduled => "scheduled",
            Mode::Draining => "draining",
            Mode::Drained => "drained",
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        [Mode::None, Mode::Scheduled, Mode::Draining, Mode::Drained]
            .get(v as usize)
            .copied()
    }

    /// Whether the host may be offered to pack.
    pub fn takes_work(self) -> bool {
        matches!(self, Mode::None | Mode::Scheduled)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Maintenance {
    pub mode: Mode,
    pub reason: String,
    pub owner: String,
    /// Unix time the mode was entered.
    pub since: f64,
    /// A drain's deadline (Unix time): past it, what is left on the host is stopped whatever
    /// the jobs' budgets say. 0 when none.
    pub deadline: f64,
}

impl Maintenance {
    pub fn none() -> Self {
        Maintenance {
            mode: Mode::None,
            reason: String::new(),
            owner: String::new(),
            since: 0.0,
            deadline: 0.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Host {
    pub name: String,
    pub cpus: Millicores,
    pub ram_mb: u64,
    pub disk_mb: u64,
    pub gpus: u32,
    /// Inclusive port ranges, sorted and disjoint.
    pub ports: Vec<(u16, u16)>,
    /// Attributes sorted by key, then value. `dedicated` may hold several values: one pair
    /// each (see `DEDICATED`); every other key appears once.
    pub attrs: Vec<(String, String)>,
    /// Speed of one of this host's cores against the fleet's reference core.
    pub cpu_factor: f64,
    pub transport: Transport,
    pub maintenance: Maintenance,
    pub access: Access,
    pub liveness: Liveness,
}

/// Whether the scheduler can reach a host, beside whether it is in maintenance: an ssh host
/// a pass could not reach is suspect, and down once unreachable for `--lost-after`. pack
/// places nothing on a host that is not up. Local hosts are always up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Life {
    Up = 0,
    Suspect = 1,
    Down = 2,
}

impl Life {
    pub fn name(self) -> &'static str {
        match self {
            Life::Up => "up",
            Life::Suspect => "suspect",
            Life::Down => "down",
        }
    }

    fn from_u8(v: u8) -> Option<Life> {
        [Life::Up, Life::Suspect, Life::Down]
            .get(v as usize)
            .copied()
    }
}

/// What passes found when they reached for a host.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Liveness {
    pub life: Life,
    /// Unix time it entered `life`.
    pub since: f64,
    /// Unix time a pass last reached it (0: never).
    pub contact: f64,
    /// Unix time a pass last tried to (0: never).
    pub checked: f64,
    /// The round trip of that last contact, in microseconds.
    pub rtt_us: u32,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            life: Life::Up,
            since: 0.0,
            contact: 0.0,
            checked: 0.0,
            rtt_us: 0,
        }
    }
}

/// Where a host is and how formic reaches it; empty fields take their defaults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Access {
    /// The address clients reach its tasks at (announced in serversets); default its name.
    pub address: String,
    /// The ssh destination, `[user@]address[:port]`; default its address.
    pub ssh: String,
    /// The task-directory root on the host (ssh hosts); default [`DEFAULT_ROOT`].
    pub root: String,
}

/// Where an ssh host keeps its task directories unless its record says otherwise.
pub const DEFAULT_ROOT: &str = "/var/lib/formic/host";

impl Host {
    /// The address clients reach its tasks at.
    pub fn address(&self) -> &str {
        match self.access.address.as_str() {
            "" => &self.name,
            a => a,
        }
    }

    /// The ssh destination.
    pub fn ssh_target(&self) -> &str {
        match self.access.ssh.as_str() {
            "" => self.address(),
            t => t,
        }
    }

    /// The task-directory root on an ssh host.
    pub fn root(&self) -> &str {
        match self.access.root.as_str() {
            "" => DEFAULT_ROOT,
            r => r,
        }
    }
}

/// Capacity limits that keep every host record inside its slot.
pub const MAX_PORT_RANGES: usize = 16;
pub const MAX_ATTRS: usize = 32;

impl Host {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Parses and validates a host record; the error says which field and why.
    pub fn from_record(rec: &Record) -> Result<Host, String> {
        let f = rec.get();
        let name = f.str("name")?.ok_or("field \"name\" is missing")?;
        check_name(name).map_err(|e| format!("field \"name\": {e}"))?;
        let host = parse_fields(name, f).map_err(|e| format!("host {name}: {e}"))?;
        host.fits().map_err(|e| format!("host {name}: {e}"))?;
        Ok(host)
    }

    /// Checks the record fits its slot, so a later transaction cannot fail on it.
    pub fn fits(&self) -> Result<(), String> {
        let m = &self.maintenance;
        check_text("maintenance reason", &m.reason)?;
        check_text("maintenance owner", &m.owner)?;
        let mut slot = vec![0u8; SLOT_SIZE];
        self.encode(&mut slot).map_err(|t| {
            format!(
                "name, attributes and maintenance text take {} bytes; a host record holds {}",
                t.needed, t.room
            )
        })
    }

    /// The host as a JSON record (input shape plus maintenance).
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("type".into(), json!("host"));
        m.insert("name".into(), json!(self.name));
        m.insert("cpus".into(), json!(cores(self.cpus)));
        m.insert("ram_mb".into(), json!(self.ram_mb));
        m.insert("disk_mb".into(), json!(self.disk_mb));
        m.insert("gpus".into(), json!(self.gpus));
        m.insert("ports".into(), ranges_json(&self.ports));
        m.insert("attrs".into(), attrs_json(&self.attrs));
        m.insert("cpu_factor".into(), json!(self.cpu_factor));
        m.insert("transport".into(), json!(self.transport.name()));
        for (k, v) in [
            ("address", &self.access.address),
            ("ssh", &self.access.ssh),
            ("root", &self.access.root),
        ] {
            if !v.is_empty() {
                m.insert(k.into(), json!(v));
            }
        }
        m
    }
}

pub fn ranges_json(ranges: &[(u16, u16)]) -> Value {
    Value::Array(ranges.iter().map(|&(a, b)| json!([a, b])).collect())
}

/// Attributes as a record holds them: a string per key, a list for a key with several
/// values (`dedicated`).
pub fn attrs_json(attrs: &[(String, String)]) -> Value {
    let mut m = Map::new();
    for (k, v) in attrs {
        add_attr(&mut m, k, v);
    }
    Value::Object(m)
}

/// Adds value `v` of key `k` to attributes as a record holds them: a second value of a key
/// makes its string a list.
pub fn add_attr(attrs: &mut Map<String, Value>, k: &str, v: &str) {
    match attrs.get_mut(k) {
        None => {
            attrs.insert(k.to_string(), json!(v));
        }
        Some(Value::Array(list)) => list.push(json!(v)),
        Some(one) => *one = json!([one.take(), v]),
    }
}

/// The one attribute that may hold several values: a host with it takes only the jobs one
/// of its values admits (`dedicated_admits`).
pub const DEDICATED: &str = "dedicated";

/// Checks one value of `dedicated`: `ROLE`, `ROLE/NAME` or `*/NAME`, the role and name of
/// letters, digits and `. _ -` as in a job key.
pub fn check_dedicated(value: &str) -> Result<(), String> {
    let part = |p: &str| {
        !p.is_empty()
            && p.len() <= 64
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    };
    let ok = match value.split_once('/') {
        None => part(value),
        Some((role, name)) => (role == "*" || part(role)) && part(name),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{DEDICATED}: {value:?} is not ROLE, ROLE/NAME or */NAME (letters, digits, . _ -)"
        ))
    }
}

/// Whether the `dedicated` value `value` admits the job of role `role` and name `name`
/// (a job key is role/env/name).
pub fn dedicated_admits(value: &str, role: &str, name: &str) -> bool {
    match value.split_once('/') {
        None => value == role,
        Some((r, n)) => (r == "*" || r == role) && n == name,
    }
}

/// The values of `dedicated` in a record's attrs: a string or a non-empty list of strings,
/// each checked, sorted, without repeats. Any other key given a list is an error naming it.
pub fn attr_values(key: &str, v: &Value) -> Result<Vec<String>, String> {
    let mut values = match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => {
            check_list(key, items.len())?;
            items
                .iter()
                .map(|i| match i {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(format!("{key}: expected strings, got {}", show(other))),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        other => return Err(format!("{key}: expected a string, got {}", show(other))),
    };
    if key == DEDICATED {
        values = dedicated_values(values)?;
    }
    Ok(values)
}

/// Whether attribute `key` may hold a list of `len` values: only `dedicated` may, and
/// never an empty one.
pub fn check_list(key: &str, len: usize) -> Result<(), String> {
    if key != DEDICATED {
        return Err(format!(
            "{key}: a list of values is allowed only for \"{DEDICATED}\""
        ));
    }
    if len == 0 {
        return Err(format!("{key}: an empty list; give at least one value"));
    }
    Ok(())
}

/// The values of `dedicated`, each checked, sorted, without repeats.
pub fn dedicated_values(mut values: Vec<String>) -> Result<Vec<String>, String> {
    for value in &values {
        check_dedicated(value)?;
    }
    values.sort();
    values.dedup();
    Ok(values)
}

pub fn maintenance_json(m: &Maintenance) -> Value {
    let mut o = Map::new();
    o.insert("state".into(), json!(m.mode.name()));
    if m.mode != Mode::None {
        o.insert("reason".into(), json!(m.reason));
        o.insert("owner".into(), json!(m.owner));
        o.insert("since".into(), json!(m.since));
    }
    if !m.mode.takes_work() && m.deadline > 0.0 {
        o.insert("deadline".into(), json!(m.deadline));
    }
    Value::Object(o)
}

/// A host name: letters, digits and `.-_:`, at most 128 bytes.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > NAME_MAX {
        return Err(format!("is {} bytes long; at most {NAME_MAX}", name.len()));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ".-_:".contains(*c)))
    {
        Some(c) => Err(format!(
            "{:?} has {c:?}; use letters, digits and . - _ :",
            name
        )),
        None if name.starts_with(['.', '-']) => {
            Err(format!("{name:?} starts with {:?}", &name[..1]))
        }
        None => Ok(()),
    }
}

/// The longest maintenance reason or owner a host record keeps: its slot stores a one-byte
/// length, and a longer text would be cut, possibly inside a character.
pub const TEXT_MAX: usize = 255;

/// Free text (maintenance reason and owner): printable, one line, at most [`TEXT_MAX`] bytes.
pub fn check_text(what: &str, text: &str) -> Result<(), String> {
    if text.len() > TEXT_MAX {
        return Err(format!(
            "{what} is {} bytes long; at most {TEXT_MAX}",
            text.len()
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("{what} has a control character"));
    }
    Ok(())
}

fn parse_fields(name: &str, f: Fields<'_>) -> Result<Host, String> {
    f.only(FIELDS)?;
    let cap = parse_capacity(&f, false)?;
    let transport = match f.str("transport")? {
        None => Transport::Local,
        Some(t) => Transport::parse(t)
            .ok_or_else(|| format!("field \"transport\": {t:?} is not local or ssh"))?,
    };
    let attrs = match f.object("attrs")? {
        None => Vec::new(),
        Some(map) => parse_attrs(map).map_err(|e| format!("field \"attrs\": {e}"))?,
    };
    let access = parse_access(&f)?;
    Ok(Host {
        name: name.to_string(),
        cpus: cap.cpus,
        ram_mb: cap.ram_mb,
        disk_mb: cap.disk_mb,
        gpus: cap.gpus,
        ports: cap.ports,
        attrs,
        cpu_factor: cap.cpu_factor,
        transport,
        maintenance: Maintenance::none(),
        access,
        liveness: Liveness::default(),
    })
}

/// `address`, `ssh` and `root`: each a word the ssh command line and the far shell take as
/// it is (no spaces, quotes or shell syntax), the root an absolute path.
fn parse_access(f: &Fields<'_>) -> Result<Access, String> {
    let word = |key: &str, extra: &str| -> Result<String, String> {
        let Some(v) = f.str(key)? else {
            return Ok(String::new());
        };
        let ok = !v.is_empty()
            && v.len() <= 255
            && !v.starts_with('-')
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-_:@[]".contains(c) || extra.contains(c));
        if !ok {
            return Err(format!(
                "field \"{key}\": {v:?} is not a host address (letters, digits, .-_:@[]{extra})"
            ));
        }
        Ok(v.to_string())
    };
    let access = Access {
        address: word("address", "")?,
        ssh: word("ssh", "")?,
        root: word("root", "/")?,
    };
    if !access.root.is_empty()
        && (!access.root.starts_with('/') || access.root.split('/').any(|p| p == ".." || p == "."))
    {
        return Err(format!(
            "field \"root\": {:?} is not an absolute path without . or ..",
            access.root
        ));
    }
    Ok(access)
}

/// The capacity fields host records and offers share: what a host has, or has free.
pub struct Capacity {
    pub cpus: Millicores,
    pub ram_mb: u64,
    pub disk_mb: u64,
    pub gpus: u32,
    pub ports: Vec<(u16, u16)>,
    pub cpu_factor: f64,
}

/// Parses the capacity fields. A host has some cpus and at most 16 port ranges; an offer
/// may have no cpus left, and its free ports may be split into many ranges.
pub fn parse_capacity(f: &Fields<'_>, offer: bool) -> Result<Capacity, String> {
    let cpus = check_cpus(f.f64("cpus")?, offer)?;
    let ram_mb = f
        .count("ram_mb", RAM_MB_MAX)?
        .ok_or("field \"ram_mb\" is missing")?;
    let disk_mb = f.count("disk_mb", DISK_MB_MAX)?.unwrap_or(0);
    let gpus = f.count("gpus", GPUS_MAX)?.unwrap_or(0) as u32;
    let cpu_factor = check_cpu_factor(f.f64("cpu_factor")?)?;
    let most = if offer { usize::MAX } else { MAX_PORT_RANGES };
    let ports = match f.array("ports")? {
        None => Vec::new(),
        Some(list) => parse_ranges(list, most).map_err(|e| format!("field \"ports\": {e}"))?,
    };
    Ok(Capacity {
        cpus: millicores(cpus),
        ram_mb,
        disk_mb,
        gpus,
        ports,
        cpu_factor,
    })
}

/// The largest `ram_mb`, `disk_mb` and `gpus` a record may give.
pub const RAM_MB_MAX: u64 = 1 << 40;
pub const DISK_MB_MAX: u64 = 1 << 50;
pub const GPUS_MAX: u64 = 1 << 16;

/// Field `cpus`, given: a host has some, an offer may have none left.
pub fn check_cpus(cpus: Option<f64>, offer: bool) -> Result<f64, String> {
    let cpus = cpus.ok_or("field \"cpus\" is missing")?;
    let least = if offer { 0.0 } else { 0.001 };
    if !(cpus >= least && cpus <= 4_000_000.0) || (!offer && millicores(cpus) == 0) {
        return Err(format!(
            "field \"cpus\": {cpus} must be at least {least} and at most 4000000"
        ));
    }
    Ok(cpus)
}

/// Field `cpu_factor` (1 when left out).
pub fn check_cpu_factor(cpu_factor: Option<f64>) -> Result<f64, String> {
    let cpu_factor = cpu_factor.unwrap_or(1.0);
    if !(cpu_factor > 0.0 && cpu_factor <= 1000.0) {
        return Err(format!(
            "field \"cpu_factor\": {cpu_factor} must be above 0 and at most 1000"
        ));
    }
    Ok(cpu_factor)
}

/// Port ranges: `[[lo, hi], …]`, inclusive, 1–65535, no overlaps.
fn parse_ranges(list: &[Value], most: usize) -> Result<Vec<(u16, u16)>, String> {
    if list.len() > most {
        return Err(format!("{} ranges; at most {most}", list.len()));
    }
    let mut ranges = Vec::with_capacity(list.len());
    for v in list {
        let pair = v.as_array().filter(|a| a.len() == 2);
        let bounds = pair.and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)));
        let Some((lo, hi)) = bounds else {
            return Err(format!("expected [low, high], got {}", show(v)));
        };
        ranges.push(port_range(lo, hi)?);
    }
    sorted_apart(ranges)
}

/// One inclusive port range within 1–65535.
pub fn port_range(lo: u64, hi: u64) -> Result<(u16, u16), String> {
    if lo == 0 || hi > 65535 || lo > hi {
        return Err(format!("[{lo}, {hi}] is not a range within 1–65535"));
    }
    Ok((lo as u16, hi as u16))
}

/// Port ranges sorted, or the first two that overlap.
pub fn sorted_apart(mut ranges: Vec<(u16, u16)>) -> Result<Vec<(u16, u16)>, String> {
    ranges.sort_unstable();
    if let Some(w) = ranges.windows(2).find(|w| w[1].0 <= w[0].1) {
        return Err(format!(
            "[{}, {}] overlaps [{}, {}]",
            w[0].0, w[0].1, w[1].0, w[1].1
        ));
    }
    Ok(ranges)
}

fn parse_attrs(map: &Map<String, Value>) -> Result<Vec<(String, String)>, String> {
    if map.len() > MAX_ATTRS {
        return Err(format!("{} attributes; at most {MAX_ATTRS}", map.len()));
    }
    let mut attrs = Vec::with_capacity(map.len());
    for (k, v) in map {
        if k.is_empty()
            || k.len() > 64
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(format!("key {k:?}: use 1–64 letters, digits and . _ -"));
        }
        if k == "host" {
            return Err("key \"host\" is reserved: it always means the host's name".into());
        }
        let values = attr_values(k, v)?;
        for s in values {
            if s.len() > 128 || s.chars().any(char::is_control) {
                return Err(format!(
                    "{k}: value must be at most 128 bytes without control characters"
                ));
            }
            attrs.push((k.clone(), s));
        }
    }
    if attrs.len() > MAX_ATTRS {
        return Err(format!(
            "{} attribute values; at most {MAX_ATTRS}",
            attrs.len()
        ));
    }
    attrs.sort();
    Ok(attrs)
}

// --- the slot in the state file ---

pub const SLOT_SIZE: usize = 512;
/// Layout 2 appends the access fields and the liveness; 3 a drain's deadline.
const LAYOUT: u8 = 3;

impl Host {
    pub fn encode(&self, slot: &mut [u8]) -> Result<(), TooLarge> {
        let mut e = Encoder::new(slot);
        e.u32(self.cpus);
        e.u64(self.ram_mb);
        e.u64(self.disk_mb);
        e.u32(self.gpus);
        e.f64(self.cpu_factor);
        e.u8(self.transport as u8);
        e.u8(self.maintenance.mode as u8);
        e.f64(self.maintenance.since);
        e.u8(self.ports.len() as u8);
        for &(lo, hi) in &self.ports {
            e.u16(lo);
            e.u16(hi);
        }
        e.str8(&self.name);
        e.u8(self.attrs.len() as u8);
        for (k, v) in &self.attrs {
            e.str8(k);
            e.str8(v);
        }
        e.str8(&self.maintenance.reason);
        e.str8(&self.maintenance.owner);
        e.str8(&self.access.address);
        e.str8(&self.access.ssh);
        e.str8(&self.access.root);
        e.u8(self.liveness.life as u8);
        e.f64(self.liveness.since);
        e.f64(self.liveness.contact);
        e.f64(self.liveness.checked);
        e.u32(self.liveness.rtt_us);
        e.f64(self.maintenance.deadline);
        e.seal(LAYOUT)
    }

    pub fn decode(version: u8, body: &[u8]) -> Result<Host, Corrupt> {
        if !(1..=LAYOUT).contains(&version) {
            return Err(Corrupt(format!("host record layout {version} is unknown")));
        }
        let mut d = Decoder::new(body);
        let cpus = d.u32()?;
        let ram_mb = d.u64()?;
        let disk_mb = d.u64()?;
        let gpus = d.u32()?;
        let cpu_factor = d.f64()?;
        let transport = match d.u8()? {
            0 => Transport::Local,
            1 => Transport::Ssh,
            t => return Err(Corrupt(format!("bad transport {t}"))),
        };
        let mode = Mode::from_u8(d.u8()?).ok_or_else(|| Corrupt("bad maintenance mode".into()))?;
        let since = d.f64()?;
        let n = d.u8()? as usize;
        let mut ports = Vec::with_capacity(n);
        for _ in 0..n {
            ports.push((d.u16()?, d.u16()?));
        }
        let name = d.str8()?;
        let n = d.u8()? as usize;
        let mut attrs = Vec::with_capacity(n);
        for _ in 0..n {
            attrs.push((d.str8()?, d.str8()?));
        }
        let reason = d.str8()?;
        let owner = d.str8()?;
        let (access, liveness) = if version >= 2 {
            let access = Access {
                address: d.str8()?,
                ssh: d.str8()?,
                root: d.str8()?,
            };
            let life = Life::from_u8(d.u8()?).ok_or_else(|| Corrupt("bad host liveness".into()))?;
            let liveness = Liveness {
                life,
                since: d.f64()?,
                contact: d.f64()?,
                checked: d.f64()?,
                rtt_us: d.u32()?,
            };
            (access, liveness)
        } else {
            (Access::default(), Liveness::default())
        };
        let deadline = if version >= 3 { d.f64()? } else { 0.0 };
        Ok(Host {
            name,
            cpus,
            ram_mb,
            disk_mb,
            gpus,
            ports,
            attrs,
            cpu_factor,
            transport,
            maintenance: Maintenance {
                mode,
                reason,
                owner,
                since,
                deadline,
            },
            access,
            liveness,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Reader;

    fn parse(line: &str) -> Result<Host, String> {
        let rec = Reader::new(line.as_bytes())
            .next()
            .unwrap()
            .map_err(|e| e.to_string())?;
        Host::from_record(&rec)
    }

    /// `h` encodes into a slot and decodes from it unchanged.
    fn assert_round_trips(h: &Host) {
        let mut slot = vec![0u8; SLOT_SIZE];
        h.encode(&mut slot).unwrap();
        let crate::fixed::Slot::Live { version, body } = crate::fixed::open_slot(&slot).unwrap()
        else {
            panic!()
        };
        assert_eq!(&Host::decode(version, body).unwrap(), h);
    }

    #[test]
    fn design_example_parses_and_round_trips() {
        let h = parse(r#"{"type":"host","name":"h1","cpus":16,"ram_mb":65536,"disk_mb":500000,"gpus":0,"ports":[[31000,31999]],"attrs":{"rack":"r1","zone":"z1"},"cpu_factor":1.0,"transport":"local"}"#).unwrap();
        assert_eq!(
            (h.cpus, h.ram_mb, h.attr("rack")),
            (16000, 65536, Some("r1"))
        );
        assert_round_trips(&h);
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (
                r#"{"type":"host","name":"h","cpus":-1,"ram_mb":1}"#,
                "field \"cpus\"",
            ),
            (
                r#"{"type":"host","name":"h","cpus":1,"ram_mb":-5}"#,
                "field \"ram_mb\"",
            ),
            (
                r#"{"type":"host","name":"h","cpus":1,"ram_mb":"5"}"#,
                "expected a whole number",
            ),
            (
                r#"{"type":"host","name":"h","cpus":1,"ram_mb":1,"ports":[[10,20],[15,30]]}"#,
                "overlaps",
            ),
            (
                r#"{"type":"host","name":"h","cpus":1,"ram_mb":1,"ports":[[0,20]]}"#,
                "within 1–65535",
            ),
            (
                r#"{"type":"host","name":"a b","cpus":1,"ram_mb":1}"#,
                "field \"name\"",
            ),
            (
                r#"{"type":"host","name":"h\u0000","cpus":1,"ram_mb":1}"#,
                "field \"name\"",
            ),
            (
                r#"{"type":"host","name":"h","cpus":1,"ram":1}"#,
                "unknown field \"ram\"",
            ),
            (
                r#"{"type":"host","name":"h","cpus":1,"ram_mb":1,"attrs":{"host":"x"}}"#,
                "reserved",
            ),
            (
                r#"{"type":"host","name":"h","cpus":1,"ram_mb":1,"transport":"tcp"}"#,
                "transport",
            ),
        ];
        for (line, want) in cases {
            let err = parse(line).unwrap_err();
            assert!(err.contains(want), "{line}: {err}");
        }
    }

    #[test]
    fn dedicated_takes_a_list_of_role_role_name_and_star_name() {
        for ok in ["www", "www/web", "*/web", "a.b-c_d/x.y"] {
            assert_eq!(check_dedicated(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "/",
            "/web",
            "www/",
            "www/prod/web",
            "*",
            "**/web",
            "a b",
            "a,b",
        ] {
            assert!(check_dedicated(bad).is_err(), "{bad:?}");
        }
        assert!(dedicated_admits("www", "www", "web"));
        assert!(dedicated_admits("www/web", "www", "web"));
        assert!(dedicated_admits("*/web", "db", "web"));
        assert!(!dedicated_admits("www/web", "www", "api"));
        assert!(!dedicated_admits("www/web", "db", "web"));
        assert!(!dedicated_admits("web", "www", "web"));

        // A list is kept as a pair per value, sorted, once each; it round-trips through the
        // slot and prints back as a list.
        let h = parse(r#"{"type":"host","name":"h","cpus":1,"ram_mb":1,"attrs":{"rack":"r1","dedicated":["www/web","db","www/web"]}}"#).unwrap();
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            h.attrs,
            [
                pair("dedicated", "db"),
                pair("dedicated", "www/web"),
                pair("rack", "r1")
            ]
        );
        assert_eq!(
            attrs_json(&h.attrs),
            json!({"dedicated": ["db", "www/web"], "rack": "r1"})
        );
        assert_round_trips(&h);

        let err = |attrs: &str| {
            parse(&format!(
                r#"{{"type":"host","name":"h","cpus":1,"ram_mb":1,"attrs":{attrs}}}"#
            ))
            .unwrap_err()
        };
        assert_eq!(
            err(r#"{"rack":["r1"]}"#),
            "host h: field \"attrs\": rack: a list of values is allowed only for \"dedicated\""
        );
        assert!(err(r#"{"dedicated":[]}"#).contains("an empty list"));
        assert!(err(r#"{"dedicated":["db","x/y/z"]}"#).contains("\"x/y/z\" is not ROLE"));
    }

    #[test]
    fn oversize_attributes_are_rejected_at_parse_time() {
        let attrs: Vec<String> = (0..8)
            .map(|i| format!("\"k{i}\":\"{}\"", "v".repeat(100)))
            .collect();
        let line = format!(
            r#"{{"type":"host","name":"h","cpus":1,"ram_mb":1,"attrs":{{{}}}}}"#,
            attrs.join(",")
        );
        assert!(parse(&line)
            .unwrap_err()
            .contains("a host record holds 512"));
    }
}
