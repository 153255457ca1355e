//! Job specs: what an operator asks for, read from job files and checked field by field.
//!
//! A job file holds one job object (pretty-printed or not) or JSON lines of jobs. pack uses
//! the resources, constraints, tier and priority; the other blocks are checked here so a
//! mistake is caught when the file is read, not when an instance starts.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::host::{millicores, Millicores};
use crate::task::{check_job_key, Announce, MAX_PORTS};

mod compact;
pub mod logs;
pub mod metrics;
pub mod tool;

/// Production work may preempt preemptible work, never the reverse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    Production,
    Preemptible,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Production => "production",
            Tier::Preemptible => "preemptible",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Constraint {
    /// At most `limit` instances of the job per value of `attr` (`host` means per host).
    Limit { attr: String, limit: u32 },
    /// Only hosts whose `attr` is one of `values`.
    Values { attr: String, values: Vec<String> },
    /// Only hosts whose `attr` is none of `values` (a host without the attribute qualifies).
    Not { attr: String, values: Vec<String> },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Resources {
    /// Reference millicores: a host with cpu_factor f spends ceil(cpus / f) of its own.
    pub cpus: Millicores,
    pub ram_mb: u64,
    pub disk_mb: u64,
    pub gpus: u32,
    /// Processes and threads each instance may have (0: the host's default).
    pub pids: u32,
    /// Names of the ports each instance needs, in the order they are stored in the task.
    pub ports: Vec<String>,
}

/// How an instance's health is checked: an HTTP GET on one of its ports, or a command.
#[derive(Clone, Debug, PartialEq)]
pub enum Check {
    /// GET `path` on 127.0.0.1:PORT; 2xx and 3xx are healthy.
    Http { port: String, path: String },
    /// argv (templates allowed) run in the sandbox as the task's user; exit 0 is healthy.
    Cmd(Vec<String>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Health {
    pub check: Check,
    pub interval_s: f64,
    pub timeout_s: f64,
    /// Consecutive failed checks that make the instance unhealthy.
    pub failures: u32,
}

/// The restart policy: how often an instance that ended is started again, and how soon.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Restart {
    /// Failures after which a batch instance is not started again.
    pub max_failures: u64,
    /// The wait after the first failed brief run; it doubles with each one after.
    pub backoff_s: f64,
    pub max_backoff_s: f64,
}

impl Default for Restart {
    /// Aurora's defaults where DESIGN.md's example gives none: a batch task is not retried
    /// after it failed once; backoff 1 s doubling up to 5 minutes.
    fn default() -> Self {
        Restart {
            max_failures: 1,
            backoff_s: 1.0,
            max_backoff_s: 300.0,
        }
    }
}

impl Restart {
    /// The wait before the next start after `failures` failed brief runs in a row.
    pub fn backoff(&self, failures: u16) -> f64 {
        let doublings = failures.saturating_sub(1).min(60) as i32;
        (self.backoff_s * 2f64.powi(doublings)).min(self.max_backoff_s)
    }
}

/// How a new version of a job's spec replaces the running instances (the `update` block):
/// `batch_size` instances at a time, each counted done once it has run the new spec,
/// healthy, for `watch_s`; an instance restarted more than `max_per_instance_failures`
/// times has failed, and more than `max_total_failures` failed instances, or no instance
/// done for `progress_deadline_s`, fail the update, which then rolls back if `rollback`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UpdatePolicy {
    pub batch_size: u32,
    pub watch_s: f64,
    pub max_per_instance_failures: u16,
    pub max_total_failures: u32,
    pub rollback: bool,
    pub progress_deadline_s: f64,
}

impl Default for UpdatePolicy {
    /// Aurora's batch of 1 and failure tolerances of 0; a 30 s watch (Aurora 45, Nomad 10);
    /// Nomad's 10-minute progress deadline (Aurora has none, and its updates could hang).
    fn default() -> Self {
        UpdatePolicy {
            batch_size: 1,
            watch_s: 30.0,
            max_per_instance_failures: 0,
            max_total_failures: 0,
            rollback: true,
            progress_deadline_s: 600.0,
        }
    }
}

/// How many of a job's instances may be unavailable at once, for every voluntary stop
/// (drains, updates) together: a count, or a share of the instances that must stay healthy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    MaxUnavailable(u32),
    MinHealthyPercent(f64),
}

/// The job's availability budget (`sla` block).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sla {
    pub budget: Budget,
    /// An instance counts as available once running and healthy for this long.
    pub healthy_for_s: f64,
}

impl Default for Sla {
    /// One instance down at a time, as Nomad's migrate block (max_parallel 1; a job with no
    /// `sla` block has its update's batch_size and watch_s instead, see `check`); an instance
    /// is available after 30 s healthy (Aurora's default duration is longer, 30 min, but
    /// counts uptime over a window; Nomad's min_healthy_time is 10 s).
    fn default() -> Self {
        Sla {
            budget: Budget::MaxUnavailable(1),
            healthy_for_s: 30.0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct JobSpec {
    pub key: String,
    pub instances: u32,
    /// The command, templates unfilled (`{{port.NAME}}`, `{{instance}}`, `{{task}}`,
    /// `{{host}}`), and whether it runs under /bin/sh -c.
    pub cmd: Vec<String>,
    pub shell: bool,
    /// Environment variables, templates unfilled, in the order written.
    pub env: Vec<(String, String)>,
    pub user: Option<String>,
    pub resources: Resources,
    pub constraints: Vec<Constraint>,
    pub tier: Tier,
    pub priority: i32,
    pub service: bool,
    /// When it runs, for a cron job (a batch job run on a schedule).
    pub cron: Option<crate::cron::Schedule>,
    pub health: Option<Health>,
    pub restart: Restart,
    /// How a change of this spec rolls out over running instances.
    pub update: UpdatePolicy,
    /// How many instances drains and updates may take down at once.
    pub sla: Sla,
    /// Where healthy instances are announced, with the defaults filled in.
    pub announce: Option<Announce>,
    /// Stable hash of the whole spec: a change anywhere is a new version of the job.
    pub hash: u64,
    /// Where the job was read from, for messages.
    pub origin: Origin,
    /// The spec as serde_json writes it: compact, fields in the order written. pack echoes
    /// it in spec records and launch keeps it as the task's job.json. (Text, not a `Value`:
    /// a map per object was most of what 200,000 jobs held.)
    pub json: String,
}

/// Where a job was read from: a file, shared by all its jobs, and the line. (A string
/// per job, formatted as each was read, was a twentieth of reading 200,000 of them.)
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    pub file: Arc<str>,
    /// From 1; 0 when the whole file is the job.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.line {
            0 => f.write_str(&self.file),
            line => write!(f, "{}:{line}", self.file),
        }
    }
}

impl From<&str> for Origin {
    fn from(file: &str) -> Origin {
        Origin {
            file: file.into(),
            line: 0,
        }
    }
}

impl JobSpec {
    pub fn role(&self) -> &str {
        // A byte loop: a role is a few bytes, shorter than a `str` search takes to set up,
        // and pack asks it of every job.
        let end = self.key.bytes().position(|b| b == b'/');
        &self.key[..end.unwrap_or(self.key.len())]
    }

    /// The job's name: the last part of its key (role/env/name).
    pub fn name(&self) -> &str {
        self.key.rsplit('/').next().unwrap_or("")
    }
}

/// The most instances one job may ask for.
pub const MAX_INSTANCES: u64 = 1_000_000;

// --- the spec as written: every block typed, nothing unknown accepted ---

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    job: String,
    instances: u64,
    cmd: Vec<String>,
    #[serde(default)]
    shell: bool,
    #[serde(default)]
    env: UniqueMap,
    user: Option<String>,
    resources: WrittenResources,
    #[serde(default)]
    constraints: Vec<WrittenConstraint>,
    tier: Option<WrittenTier>,
    priority: Option<i32>,
    service: Option<bool>,
    health: Option<WrittenHealth>,
    announce: Option<WrittenAnnounce>,
    restart: Option<WrittenRestart>,
    update: Option<WrittenUpdate>,
    sla: Option<WrittenSla>,
    cron: Option<WrittenCron>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WrittenCron {
    schedule: String,
    timezone: Option<String>,
    collision: Option<crate::cron::Collision>,
    starting_deadline_s: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WrittenResources {
    cpus: f64,
    ram_mb: u64,
    #[serde(default)]
    disk_mb: u64,
    #[serde(default)]
    gpus: u32,
    pids: Option<u32>,
    #[serde(default)]
    ports: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WrittenConstraint {
    attr: String,
    limit: Option<u32>,
    values: Option<Vec<String>>,
    not: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum WrittenTier {
    Production,
    Preemptible,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WrittenHealth {
    port: Option<String>,
    http: Option<String>,
    cmd: Option<Vec<String>>,
    interval_s: Option<f64>,
    timeout_s: Option<f64>,
    failures: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WrittenAnnounce {
    primary: Option<String>,
    path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WrittenRestart {
    max_failures: Option<u64>,
    backoff_s: Option<f64>,
    max_backoff_s: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WrittenUpdate {
    batch_size: Option<u32>,
    watch_s: Option<f64>,
    max_per_instance_failures: Option<u32>,
    max_total_failures: Option<u32>,
    rollback: Option<bool>,
    progress_deadline_s: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WrittenSla {
    max_unavailable: Option<u32>,
    min_healthy_percent: Option<f64>,
    healthy_for_s: Option<f64>,
}

/// A JSON object of strings whose keys must each appear once (serde's maps let the last
/// of two equal keys win silently).
#[derive(Default)]
pub(crate) struct UniqueMap(pub(crate) Vec<(String, String)>);

impl<'de> Deserialize<'de> for UniqueMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = UniqueMap;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<UniqueMap, A::Error> {
                let mut out: Vec<(String, String)> = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, String>()? {
                    if out.iter().any(|(seen, _)| *seen == k) {
                        return Err(serde::de::Error::custom(format!("{k:?} is given twice")));
                    }
                    out.push((k, v));
                }
                Ok(UniqueMap(out))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// Parses and checks one job object; errors name the field.
pub fn parse(obj: &Map<String, Value>, origin: &str) -> Result<JobSpec, String> {
    let value = Value::Object(obj.clone());
    let written = serde_path_to_error::deserialize::<_, Written>(&value)
        .map_err(|e| located(obj, e.path().to_string(), e.inner().to_string()))?;
    finish(written, value.to_string(), hash(&value), origin.into())
}

/// Parses and checks one job object from its text: as [`parse`], and a key given twice in
/// any object is refused too (a JSON value keeps only the last).
pub fn parse_text(text: &str, origin: &str) -> Result<JobSpec, String> {
    read_text(text, origin.into(), &mut compact::Feed::default())
}

/// [`parse_text`] with the buffer of its hash feed kept from one job to the next.
///
/// A good spec is read once, into its types, its compact text and its hash together; only
/// a spec refused (or an object with a key twice) is read into a `Value` as well, which is
/// what names the field, and the job, in the message.
fn read_text(text: &str, origin: Origin, feed: &mut compact::Feed) -> Result<JobSpec, String> {
    match compact::read::<Written>(text, feed) {
        Some((written, json, hash)) => finish(written, json, hash, origin),
        None => parse_text_slowly(text, origin),
    }
}

/// [`parse_text`] by way of a `Value` of the whole spec, for the error messages.
fn parse_text_slowly(text: &str, origin: Origin) -> Result<JobSpec, String> {
    let obj = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(obj)) => obj,
        Ok(_) => return Err("expected a job object".into()),
        Err(e) => return Err(syntax(&e)),
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let written = serde_path_to_error::deserialize::<_, Written>(&mut de).map_err(|e| {
        located(
            &obj,
            e.path().to_string(),
            strip_position(&e.inner().to_string()),
        )
    })?;
    let value = Value::Object(obj);
    finish(written, value.to_string(), hash(&value), origin)
}

/// An error at `path`, with the job's key when it has one. serde names an unknown field by
/// its own path: it is named at the block that holds it.
fn located(obj: &Map<String, Value>, path: String, why: String) -> String {
    let why = why.replace('`', "\"");
    let why = match why.strip_prefix("missing field ") {
        Some(name) => format!("field {name} is missing"),
        None => why,
    };
    let path = match why.starts_with("unknown field") {
        true => path
            .rsplit_once('.')
            .map_or(".", |(parent, _)| parent)
            .to_string(),
        false => path,
    };
    let at: String = match path.as_str() {
        "." => String::new(),
        _ => path
            .split('.')
            .map(|part| format!("field \"{part}\": "))
            .collect(),
    };
    match obj.get("job").and_then(Value::as_str) {
        Some(key) if check_job_key(key).is_ok() => format!("job {key}: {at}{why}"),
        _ => format!("{at}{why}"),
    }
}

fn strip_position(why: &str) -> String {
    why.rsplit_once(" at line ")
        .map_or(why, |(w, _)| w)
        .to_string()
}

fn syntax(e: &serde_json::Error) -> String {
    format!(
        "not valid JSON at line {} column {}: {}",
        e.line(),
        e.column(),
        strip_position(&e.to_string())
    )
}

fn finish(mut w: Written, json: String, hash: u64, origin: Origin) -> Result<JobSpec, String> {
    check_job_key(&w.job).map_err(|e| format!("field \"job\": {e}"))?;
    // Taken out, not copied, for the message: `check` needs the rest.
    let key = std::mem::take(&mut w.job);
    match check(w, &key) {
        Ok(spec) => Ok(JobSpec {
            key,
            origin,
            hash,
            json,
            ..spec
        }),
        Err(e) => Err(format!("job {key}: {e}")),
    }
}

/// Every check beyond the types: ranges, names, references between blocks, of the spec of
/// job `key` (its `job` field taken out).
fn check(w: Written, key: &str) -> Result<JobSpec, String> {
    if w.instances > MAX_INSTANCES {
        return Err(format!(
            "field \"instances\": {} is more than {MAX_INSTANCES}",
            w.instances
        ));
    }
    let resources =
        check_resources(w.resources).map_err(|e| format!("field \"resources\": {e}"))?;
    let ports = &resources.ports;
    check_argv(&w.cmd, ports).map_err(|e| format!("field \"cmd\": {e}"))?;
    for (k, v) in &w.env.0 {
        if k.is_empty() || k.contains(['=', '\0']) {
            return Err(format!(
                "field \"env\": {k:?}: a name is not empty and has no = or NUL"
            ));
        }
        check_text(v, ports).map_err(|e| format!("field \"env\": {k}: {e}"))?;
    }
    if let Some(u) = &w.user {
        if u.is_empty() || u.len() > 32 || u.contains(['\0', '/', ':']) {
            return Err(format!("field \"user\": {u:?} is not a user name"));
        }
    }
    let constraints = w
        .constraints
        .into_iter()
        .enumerate()
        .map(|(i, c)| check_constraint(c).map_err(|e| format!("constraint {}: {e}", i + 1)))
        .collect::<Result<_, _>>()?;
    let priority = w.priority.unwrap_or(0);
    if priority.unsigned_abs() > 1_000_000 {
        return Err(format!(
            "field \"priority\": {priority} is not within ±1000000"
        ));
    }
    let health = w
        .health
        .map(|h| check_health(h, ports))
        .transpose()
        .map_err(|e| format!("field \"health\": {e}"))?;
    let restart = check_restart(w.restart.unwrap_or(WrittenRestart {
        max_failures: None,
        backoff_s: None,
        max_backoff_s: None,
    }))
    .map_err(|e| format!("field \"restart\": {e}"))?;
    let update =
        check_update(w.update, w.instances).map_err(|e| format!("field \"update\": {e}"))?;
    let sla = match w.sla {
        Some(block) => check_sla(block).map_err(|e| format!("field \"sla\": {e}"))?,
        // What the job's update already takes down at once, and watches for, is what it
        // tolerates.
        None => Sla {
            budget: Budget::MaxUnavailable(update.batch_size),
            healthy_for_s: update.watch_s.min(MAX_HEALTHY_FOR_S),
        },
    };
    let announce = w
        .announce
        .map(|a| check_announce(key, a, ports))
        .transpose()
        .map_err(|e| format!("field \"announce\": {e}"))?;
    check_record_fits(key, ports, announce.as_ref())?;
    let cron = w
        .cron
        .map(|c| {
            let zone = c.timezone.as_deref();
            crate::cron::Schedule::new(&c.schedule, zone, c.collision, c.starting_deadline_s)
        })
        .transpose()
        .map_err(|e| format!("field \"cron\": {e}"))?;
    if cron.is_some() && w.service == Some(true) {
        return Err("a cron job is a batch job: \"service\" is false or left out".into());
    }
    Ok(JobSpec {
        key: String::new(),
        instances: w.instances as u32,
        cmd: w.cmd,
        shell: w.shell,
        env: w.env.0,
        user: w.user,
        resources,
        constraints,
        tier: match w.tier {
            Some(WrittenTier::Production) => Tier::Production,
            None | Some(WrittenTier::Preemptible) => Tier::Preemptible,
        },
        priority,
        service: w.service.unwrap_or(cron.is_none()),
        cron,
        health,
        restart,
        update,
        sla,
        announce,
        hash: 0,
        origin: Origin::default(),
        json: String::new(),
    })
}

/// The job's record in the state, at its largest (an update under way), must fit its
/// slot: else the first commit to write it would fail, and every change of that pass with
/// it, pass after pass.
fn check_record_fits(
    key: &str,
    ports: &[String],
    announce: Option<&Announce>,
) -> Result<(), String> {
    crate::task::job_record_fits(key, ports, announce).map_err(|e| {
        format!(
            "the job's key, port names and announce path take {} bytes of the state's \
             {}-byte record: shorten them",
            e.needed, e.room
        )
    })
}

fn check_resources(r: WrittenResources) -> Result<Resources, String> {
    if !(r.cpus > 0.0 && r.cpus <= 100_000.0) || millicores(r.cpus) == 0 {
        return Err(format!(
            "field \"cpus\": {} must be at least 0.001 and at most 100000",
            r.cpus
        ));
    }
    for (name, v, max) in [
        ("ram_mb", r.ram_mb, crate::task::MB_MAX),
        ("disk_mb", r.disk_mb, crate::task::MB_MAX),
        ("gpus", r.gpus as u64, 1 << 16),
        ("pids", r.pids.unwrap_or(1) as u64, 1 << 22),
    ] {
        if v > max {
            return Err(format!("field \"{name}\": {v} is more than {max}"));
        }
    }
    if r.pids == Some(0) {
        return Err("field \"pids\": must be at least 1".into());
    }
    for (i, name) in r.ports.iter().enumerate() {
        if name.is_empty()
            || name.len() > 32
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "field \"ports\": {name:?}: use 1–32 letters, digits, _ and -"
            ));
        }
        if r.ports[..i].contains(name) {
            return Err(format!("field \"ports\": {name:?} is named twice"));
        }
    }
    if r.ports.len() > MAX_PORTS {
        return Err(format!(
            "field \"ports\": {} ports; at most {MAX_PORTS}",
            r.ports.len()
        ));
    }
    Ok(Resources {
        cpus: millicores(r.cpus),
        ram_mb: r.ram_mb,
        disk_mb: r.disk_mb,
        gpus: r.gpus,
        pids: r.pids.unwrap_or(0),
        ports: r.ports,
    })
}

/// A command: at least a non-empty program, no NUL anywhere, only known templates.
fn check_argv(argv: &[String], ports: &[String]) -> Result<(), String> {
    match argv.first() {
        None => return Err("is empty".into()),
        Some(p) if p.is_empty() => return Err("the program is an empty string".into()),
        _ => {}
    }
    argv.iter().try_for_each(|a| check_text(a, ports))
}

/// A string given to a task: no NUL (it cannot cross exec), and every `{{...}}` one launch
/// fills in: `instance`, `task`, `host`, or `port.NAME` of a declared port.
fn check_text(text: &str, ports: &[String]) -> Result<(), String> {
    if text.contains('\0') {
        return Err(format!("{text:?} holds a NUL byte"));
    }
    let mut rest = text;
    while let Some(at) = rest.find("{{") {
        let after = &rest[at + 2..];
        let Some(end) = after.find("}}") else {
            break;
        };
        let name = &after[..end];
        let known = matches!(name, "instance" | "task" | "host")
            || name
                .strip_prefix("port.")
                .is_some_and(|p| ports.iter().any(|q| q == p));
        if !known {
            return Err(match name.strip_prefix("port.") {
                Some(p) => format!("{{{{{name}}}}}: port {p:?} is not in resources.ports"),
                None => {
                    format!("{{{{{name}}}}} is not a template (instance, task, host, port.NAME)")
                }
            });
        }
        rest = &after[end + 2..];
    }
    Ok(())
}

fn check_constraint(c: WrittenConstraint) -> Result<Constraint, String> {
    if c.attr.is_empty() {
        return Err("field \"attr\" is empty".into());
    }
    let attr = c.attr;
    match (c.limit, c.values, c.not) {
        (Some(0), None, None) => Err("field \"limit\": 0 would allow no instance anywhere".into()),
        (Some(limit), None, None) => Ok(Constraint::Limit { attr, limit }),
        (None, Some(values), None) if values.is_empty() => Err("field \"values\" is empty".into()),
        (None, Some(values), None) => Ok(Constraint::Values { attr, values }),
        (None, None, Some(values)) => Ok(Constraint::Not { attr, values }),
        _ => Err("give exactly one of \"limit\", \"values\" or \"not\"".into()),
    }
}

/// The longest a health check may wait between checks (an hour), as Aurora bounds it.
pub const MAX_HEALTH_INTERVAL_S: f64 = 3600.0;

fn check_health(h: WrittenHealth, ports: &[String]) -> Result<Health, String> {
    let check = match (h.port, h.http, h.cmd) {
        (Some(port), path, None) => {
            if !ports.contains(&port) {
                return Err(format!("port {port:?} is not in resources.ports"));
            }
            let path = path.unwrap_or_else(|| "/".into());
            // It goes into the request line as it is.
            if !path.starts_with('/')
                || path.len() > 1024
                || !path.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(format!(
                    "field \"http\": {path:?} is not a path (/..., printable, no spaces, at most 1024 bytes)"
                ));
            }
            Check::Http { port, path }
        }
        (None, None, Some(cmd)) => {
            check_argv(&cmd, ports).map_err(|e| format!("field \"cmd\": {e}"))?;
            Check::Cmd(cmd)
        }
        (None, Some(_), None) => return Err("\"http\" needs the \"port\" to check".into()),
        (None, None, None) => return Err("give \"port\" (an HTTP check) or \"cmd\"".into()),
        (Some(_), _, Some(_)) | (None, Some(_), Some(_)) => {
            return Err("give either \"port\" (an HTTP check) or \"cmd\", not both".into())
        }
    };
    let interval_s = h.interval_s.unwrap_or(10.0);
    if !(interval_s > 0.0 && interval_s <= MAX_HEALTH_INTERVAL_S) {
        return Err(format!(
            "field \"interval_s\": {interval_s} is not more than 0 and at most {MAX_HEALTH_INTERVAL_S}"
        ));
    }
    // A check may take at most its interval; the default second fits any interval above it.
    let timeout_s = h.timeout_s.unwrap_or(1f64.min(interval_s / 2.0));
    if !(timeout_s > 0.0 && timeout_s < interval_s) {
        return Err(format!(
            "field \"timeout_s\": {timeout_s} is not more than 0 and less than interval_s ({interval_s})"
        ));
    }
    let failures = h.failures.unwrap_or(3);
    if !(1..=1000).contains(&failures) {
        return Err(format!("field \"failures\": {failures} is not 1 to 1000"));
    }
    Ok(Health {
        check,
        interval_s,
        timeout_s,
        failures,
    })
}

/// The longest restart backoff: a day.
pub const MAX_BACKOFF_S: f64 = 86_400.0;

fn check_restart(r: WrittenRestart) -> Result<Restart, String> {
    let d = Restart::default();
    let backoff_s = r.backoff_s.unwrap_or(d.backoff_s);
    let max_backoff_s = r.max_backoff_s.unwrap_or(d.max_backoff_s.max(backoff_s));
    if !(backoff_s > 0.0 && backoff_s <= MAX_BACKOFF_S) {
        return Err(format!(
            "field \"backoff_s\": {backoff_s} is not more than 0 and at most {MAX_BACKOFF_S}"
        ));
    }
    if !(max_backoff_s >= backoff_s && max_backoff_s <= MAX_BACKOFF_S) {
        return Err(format!(
            "field \"max_backoff_s\": {max_backoff_s} is not from backoff_s ({backoff_s}) to {MAX_BACKOFF_S}"
        ));
    }
    let max_failures = r.max_failures.unwrap_or(d.max_failures);
    if max_failures > 1_000_000 {
        return Err(format!(
            "field \"max_failures\": {max_failures} is more than 1000000"
        ));
    }
    Ok(Restart {
        max_failures,
        backoff_s,
        max_backoff_s,
    })
}

/// The longest watch and progress deadline of an update: a day.
pub const MAX_UPDATE_WAIT_S: f64 = 86_400.0;

fn check_update(u: Option<WrittenUpdate>, instances: u64) -> Result<UpdatePolicy, String> {
    let d = UpdatePolicy::default();
    let Some(u) = u else { return Ok(d) };
    let batch_size = u.batch_size.unwrap_or(d.batch_size);
    if !(1..=MAX_INSTANCES as u32).contains(&batch_size) {
        return Err(format!(
            "field \"batch_size\": {batch_size} is not 1 to {MAX_INSTANCES}"
        ));
    }
    let watch_s = u.watch_s.unwrap_or(d.watch_s);
    if !(0.0..=MAX_UPDATE_WAIT_S).contains(&watch_s) {
        return Err(format!(
            "field \"watch_s\": {watch_s} is not 0 to {MAX_UPDATE_WAIT_S}"
        ));
    }
    let progress_deadline_s = u.progress_deadline_s.unwrap_or(d.progress_deadline_s);
    if !(progress_deadline_s > watch_s && progress_deadline_s <= MAX_UPDATE_WAIT_S) {
        return Err(format!(
            "field \"progress_deadline_s\": {progress_deadline_s} is not more than watch_s \
             ({watch_s}) and at most {MAX_UPDATE_WAIT_S}"
        ));
    }
    let max_total_failures = u.max_total_failures.unwrap_or(d.max_total_failures);
    // Aurora's rule: tolerating as many failures as there are instances tolerates all.
    if max_total_failures > 0 && max_total_failures as u64 >= instances {
        return Err(format!(
            "field \"max_total_failures\": {max_total_failures} is not less than instances \
             ({instances})"
        ));
    }
    Ok(UpdatePolicy {
        batch_size,
        watch_s,
        max_per_instance_failures: u
            .max_per_instance_failures
            .unwrap_or(d.max_per_instance_failures as u32)
            .min(u16::MAX as u32 - 1) as u16,
        max_total_failures,
        rollback: u.rollback.unwrap_or(d.rollback),
        progress_deadline_s,
    })
}

/// The longest an instance must be healthy to count as available: two hours, Aurora's
/// cap on an SLA's duration (a longer one holds maintenance hostage).
pub const MAX_HEALTHY_FOR_S: f64 = 7_200.0;

fn check_sla(w: WrittenSla) -> Result<Sla, String> {
    let budget = match (w.max_unavailable, w.min_healthy_percent) {
        (Some(_), Some(_)) => {
            return Err("max_unavailable and min_healthy_percent: give one, not both".into())
        }
        (Some(n), None) if n as u64 > MAX_INSTANCES => {
            return Err(format!(
                "field \"max_unavailable\": {n} is more than {MAX_INSTANCES}"
            ))
        }
        (Some(n), None) => Budget::MaxUnavailable(n),
        (None, Some(p)) if !(0.0..=100.0).contains(&p) => {
            return Err(format!(
                "field \"min_healthy_percent\": {p} is not 0 to 100"
            ))
        }
        (None, Some(p)) => Budget::MinHealthyPercent(p),
        (None, None) => Sla::default().budget,
    };
    let healthy_for_s = w.healthy_for_s.unwrap_or(Sla::default().healthy_for_s);
    if !(0.0..=MAX_HEALTHY_FOR_S).contains(&healthy_for_s) {
        return Err(format!(
            "field \"healthy_for_s\": {healthy_for_s} is not 0 to {MAX_HEALTHY_FOR_S}"
        ));
    }
    Ok(Sla {
        budget,
        healthy_for_s,
    })
}

/// The longest serverset path: it is kept in the job's record in the state.
pub const ANNOUNCE_PATH_MAX: usize = 255;

/// A job's announce block with its defaults: the path `/formic/ROLE/ENV/NAME`, and as
/// primary port `http` when the job has one, else its first port (as Aurora's announcer
/// does). Every part of the path is a plain name, so it is both a ZooKeeper path and a
/// directory path under the serverset root that cannot leave it.
fn check_announce(key: &str, a: WrittenAnnounce, ports: &[String]) -> Result<Announce, String> {
    let primary = match a.primary {
        Some(name) => ports
            .iter()
            .position(|p| *p == name)
            .ok_or_else(|| format!("port {name:?} is not in resources.ports"))?,
        None if ports.is_empty() => return Err("the job has no ports to announce".into()),
        None => ports.iter().position(|p| p == "http").unwrap_or(0),
    };
    let path = a.path.unwrap_or_else(|| format!("/formic/{key}"));
    check_announce_path(&path)?;
    Ok(Announce {
        path,
        primary: primary as u8,
    })
}

/// A serverset path: absolute, parts of letters, digits and `._-` not starting with a dot.
pub fn check_announce_path(path: &str) -> Result<(), String> {
    let ok_part = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    };
    match path.strip_prefix('/') {
        Some(rest) if path.len() <= ANNOUNCE_PATH_MAX && rest.split('/').all(ok_part) => Ok(()),
        _ => Err(format!(
            "path {path:?} is not /PART/PART... (letters, digits, . _ -; no part starting with .; at most {ANNOUNCE_PATH_MAX} bytes)"
        )),
    }
}

/// FNV-1a over the spec with object keys in sorted order, so the same spec hashes the same
/// whatever the order of its fields in the file. (`compact::read` feeds the same bytes
/// while it reads the text.)
pub fn hash(v: &Value) -> u64 {
    fn walk(h: &mut u64, v: &Value) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                fnv(h, b"{");
                for k in keys {
                    fnv(h, k.as_bytes());
                    fnv(h, b":");
                    walk(h, &m[k]);
                    fnv(h, b",");
                }
                fnv(h, b"}");
            }
            Value::Array(a) => {
                fnv(h, b"[");
                for x in a {
                    walk(h, x);
                    fnv(h, b",");
                }
                fnv(h, b"]");
            }
            other => fnv(h, other.to_string().as_bytes()),
        }
    }
    let mut h = FNV_START;
    walk(&mut h, v);
    h
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(h: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *h ^= b as u64;
        *h = h.wrapping_mul(0x100_0000_01b3);
    }
}

/// What reading the job files gave: every job that could be read, and one line per file,
/// line or job that could not (each naming where).
#[derive(Default)]
pub struct Read {
    pub jobs: Vec<JobSpec>,
    pub errors: Vec<String>,
}

/// The largest job file read (larger ones are refused unread, as over-long lines are on
/// pipes): a million small jobs fit.
pub const MAX_FILE: u64 = 256 << 20;

/// Reads every job from files and directories (a directory's `*.json` and `*.jsonl` files,
/// in name order). A bad file, line or job is reported and the rest is still read: one
/// team's broken file does not stop every other team's placements. A job defined twice is
/// an error, and its first definition is the one kept.
pub fn read_all(paths: &[PathBuf]) -> Read {
    let mut read = Read::default();
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            match std::fs::read_dir(p) {
                Ok(entries) => {
                    let mut entries: Vec<PathBuf> = entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|f| {
                            f.extension().is_some_and(|x| x == "json" || x == "jsonl")
                                && f.is_file()
                        })
                        .collect();
                    entries.sort();
                    files.extend(entries);
                }
                Err(e) => read
                    .errors
                    .push(format!("{}: cannot read the directory: {e}", p.display())),
            }
        } else {
            files.push(p.clone());
        }
    }
    let each: Vec<(Vec<JobSpec>, Vec<String>)> = files.iter().map(|f| read_file(f)).collect();
    keep_first(each, &mut read);
    read
}

/// Moves the jobs of each file into `read` with the file's errors, each job's first
/// definition only: a later one is an error, said after its file's own.
fn keep_first(files: Vec<(Vec<JobSpec>, Vec<String>)>, read: &mut Read) {
    // Found first, while the jobs are where they are, so no key is copied.
    let jobs = files.iter().map(|(jobs, _)| jobs.len()).sum();
    let mut first: HashMap<&str, &Origin, foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(jobs, Default::default());
    let mut later: Vec<Vec<String>> = Vec::with_capacity(files.len());
    let mut is_later: Vec<Vec<bool>> = Vec::with_capacity(files.len());
    for (jobs, _) in &files {
        let mut said = Vec::new();
        let mut marks = vec![false; jobs.len()];
        for (job, mark) in jobs.iter().zip(&mut marks) {
            if let Some(at) = first.get(job.key.as_str()) {
                said.push(format!(
                    "{}: job {} is already defined at {at}",
                    job.origin, job.key
                ));
                *mark = true;
            } else {
                first.insert(&job.key, &job.origin);
            }
        }
        later.push(said);
        is_later.push(marks);
    }
    drop(first);
    for (((jobs, errors), said), marks) in files.into_iter().zip(later).zip(is_later) {
        read.errors.extend(errors);
        read.errors.extend(said);
        if read.jobs.is_empty() && !marks.contains(&true) {
            // Most often the only file: its jobs stay where they are rather than be copied.
            read.jobs = jobs;
            continue;
        }
        let kept = jobs.into_iter().zip(marks).filter(|(_, later)| !later);
        read.jobs.extend(kept.map(|(job, _)| job));
    }
}

/// Reads a file whole, up to [`MAX_FILE`] bytes.
fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    // Sized at once: through `take` the string would grow by doubling, copying the file
    // over and over. (The size is a hint: a file that grows meanwhile is still bounded.)
    let size = file.metadata().map_or(0, |m| m.len()).min(MAX_FILE + 1);
    let mut text = String::with_capacity(size as usize + 1);
    file.take(MAX_FILE + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE {
        return Err(std::io::Error::other(format!(
            "larger than {} MiB",
            MAX_FILE >> 20
        )));
    }
    Ok(text)
}

/// One file: a single JSON object (pretty-printed or not), or JSON lines of objects; an
/// empty file holds no jobs. A file whose first line is a whole object is JSON lines;
/// otherwise it is one object, and a syntax error in it is reported at its own line.
fn read_file(path: &Path) -> (Vec<JobSpec>, Vec<String>) {
    let name = path.display().to_string();
    let text = match read_bounded(path) {
        Ok(t) => t,
        Err(e) => return (Vec::new(), vec![format!("{name}: {e}")]),
    };
    let first = text.lines().find(|l| !l.trim().is_empty());
    let Some(first) = first else {
        return (Vec::new(), Vec::new());
    };
    if !matches!(serde_json::from_str::<Value>(first), Ok(Value::Object(_))) {
        // One object, perhaps over many lines: a syntax error is named by its own line.
        if let Err(e) = serde_json::from_str::<Value>(&text) {
            let why = format!("{}", e);
            return (
                Vec::new(),
                vec![format!(
                    "{name}:{}: not valid JSON at column {}: {}",
                    e.line(),
                    e.column(),
                    strip_position(&why)
                )],
            );
        }
        return match parse_text(&text, &name) {
            Ok(job) => (vec![job], Vec::new()),
            Err(e) => (Vec::new(), vec![format!("{name}: {e}")]),
        };
    }
    parse_lines(&text, &name)
}

/// A file of JSON lines smaller than this is parsed on one thread: cutting it saves less
/// than a thread costs.
const PIECE_MIN: usize = 1 << 20;

/// The jobs of JSON lines `text` (of the file `name`), in the order written, and an error
/// per bad line. A large file is cut at line ends into a piece per core, each parsed on a
/// thread of its own: its lines do not depend on each other, and at 200,000 jobs the parse
/// was the longest step of pack's reading.
fn parse_lines(text: &str, name: &str) -> (Vec<JobSpec>, Vec<String>) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pieces = cut_at_lines(text, cores.min(text.len() / PIECE_MIN).max(1));
    // Room for every line at once in the first piece's list, which the others join: a
    // spec is large, and growing by doubling copies them all.
    let lines = pieces.iter().map(|p| p.lines).sum();
    let mut parsed = std::thread::scope(|s| {
        let later: Vec<_> = pieces[1..]
            .iter()
            .map(|piece| s.spawn(move || parse_piece(piece, piece.lines, name)))
            .collect();
        let mut all = vec![parse_piece(&pieces[0], lines, name)];
        for thread in later {
            all.push(
                thread
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p)),
            );
        }
        all
    })
    .into_iter();
    let (mut jobs, mut errors) = parsed.next().unwrap_or_default();
    for (more_jobs, more_errors) in parsed {
        jobs.extend(more_jobs);
        errors.extend(more_errors);
    }
    (jobs, errors)
}

/// Consecutive lines of a file.
struct Piece<'a> {
    text: &'a str,
    /// The number of its first line in the file (from 1), and how many it has.
    first: usize,
    lines: usize,
}

/// `text` cut into `n` pieces of about one size, each but the last ending at a line end.
fn cut_at_lines(text: &str, n: usize) -> Vec<Piece<'_>> {
    let bytes = text.as_bytes();
    let mut pieces = Vec::with_capacity(n);
    let (mut start, mut first) = (0, 1);
    for k in 1..=n {
        let end = match k == n {
            true => text.len(),
            false => {
                let at = (text.len() * k / n).max(start);
                memchr::memchr(b'\n', &bytes[at..]).map_or(text.len(), |i| at + i + 1)
            }
        };
        let piece = &text[start..end];
        // The lines as `str::lines` counts them: one more when the last has no line end.
        let ends = memchr::memchr_iter(b'\n', piece.as_bytes()).count();
        let lines = ends + usize::from(!piece.is_empty() && !piece.ends_with('\n'));
        pieces.push(Piece {
            text: piece,
            first,
            lines,
        });
        first += ends;
        start = end;
    }
    pieces
}

/// The jobs of one piece of a JSON lines file, with room in their list for `room`.
fn parse_piece(piece: &Piece, room: usize, name: &str) -> (Vec<JobSpec>, Vec<String>) {
    let mut out = Vec::with_capacity(room);
    let mut errors = Vec::new();
    let mut feed = compact::Feed::default();
    // The piece's own: threads counting references to one would share its cache line.
    let file: Arc<str> = name.into();
    for (i, text) in piece.text.lines().enumerate() {
        if text.trim().is_empty() {
            continue;
        }
        let line = piece.first + i;
        let origin = Origin {
            file: file.clone(),
            line,
        };
        match read_text(text, origin, &mut feed) {
            Ok(job) => out.push(job),
            Err(e) => errors.push(format!("{name}:{line}: {e}")),
        }
    }
    (out, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(text: &str) -> Result<JobSpec, String> {
        let v: Value = serde_json::from_str(text).unwrap();
        parse(v.as_object().unwrap(), "test")
    }

    /// However a file is cut, its pieces put together are the file, each starts on a line
    /// of its own, and their first lines and counts are those `str::lines` gives.
    #[test]
    fn pieces_are_whole_lines_numbered_as_in_the_file() {
        let texts = [
            "",
            "a",
            "a\n",
            "\n\n",
            "ab\ncd",
            "one\r\ntwo\n\nthree\nfour",
            "é\nü\n",
        ];
        for text in texts {
            for n in 1..6 {
                let pieces = cut_at_lines(text, n);
                assert_eq!(pieces.len(), n);
                let whole: String = pieces.iter().map(|p| p.text).collect();
                assert_eq!(whole, text);
                let mut line = 1;
                for piece in &pieces {
                    assert_eq!(piece.first, line, "{text:?} in {n}");
                    assert_eq!(piece.lines, piece.text.lines().count(), "{text:?} in {n}");
                    line += piece.text.matches('\n').count();
                }
            }
        }
    }

    /// A file large enough to be parsed in pieces gives its jobs in the order written and
    /// names a bad line by its number in the file.
    #[test]
    fn a_large_file_is_read_as_one() {
        let spec = |i: usize| {
            format!(
                r#"{{"job":"www/prod/j{i}","instances":1,"cmd":["x"],"resources":{{"cpus":1,"ram_mb":64}}}}"#
            )
        };
        let mut lines: Vec<String> = (0..40_000).map(spec).collect();
        lines[12_345] = "{not json".into();
        lines[15_000] = String::new();
        let text = lines.join("\n");
        assert!(text.len() > 2 * PIECE_MIN);
        let (jobs, errors) = parse_lines(&text, "f.jsonl");
        let keys: Vec<String> = jobs.iter().map(|j| j.key.clone()).collect();
        let want: Vec<String> = (0..40_000)
            .filter(|&i| i != 12_345 && i != 15_000)
            .map(|i| format!("www/prod/j{i}"))
            .collect();
        assert_eq!(keys, want);
        assert_eq!(jobs[12_345].origin.to_string(), "f.jsonl:12347");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("f.jsonl:12346: "), "{}", errors[0]);
    }

    #[test]
    fn design_example_parses() {
        let j = job(r#"{"job":"www/prod/hello","instances":3,
           "cmd":["python3","-m","http.server","{{port.http}}"],"env":{},"user":"nobody",
           "resources":{"cpus":0.5,"ram_mb":128,"disk_mb":64,"gpus":0,"ports":["http"]},
           "constraints":[{"attr":"host","limit":1},{"attr":"rack","values":["r1","r2"]},
                          {"attr":"zone","not":["z9"]}],
           "tier":"production","priority":0,"service":true,
           "health":{"http":"/health","port":"http","interval_s":10,"timeout_s":1,"failures":3},
           "announce":{"primary":"http","path":"/formic/www/prod/hello"},
           "restart":{"max_failures":10,"backoff_s":1,"max_backoff_s":300}}"#)
        .unwrap();
        assert_eq!(
            (j.instances, j.resources.cpus, j.tier, j.role()),
            (3, 500, Tier::Production, "www")
        );
        assert_eq!(
            j.constraints[0],
            Constraint::Limit {
                attr: "host".into(),
                limit: 1
            }
        );
    }

    #[test]
    fn hash_ignores_field_order_but_not_values() {
        let a: Value = serde_json::from_str(r#"{"a":1,"b":{"c":[1,2]}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"b":{"c":[1,2]},"a":1}"#).unwrap();
        let c: Value = serde_json::from_str(r#"{"b":{"c":[2,1]},"a":1}"#).unwrap();
        assert_eq!(hash(&a), hash(&b));
        assert_ne!(hash(&a), hash(&c));
    }

    /// The spec text pack echoes and the hash that names its version are what the whole
    /// `Value` gave, whatever the spacing, escapes and spelling of numbers in the file.
    #[test]
    fn compact_text_and_hash_are_the_values() {
        for text in [
            r#"{"job":"a/b/c","instances":1}"#,
            "{ \"b\" : [ 1 , 2.50 , -0 , -0.0 , 1.0e2 , 1E-7 , 18446744073709551616 ] ,\n \"a\":{} }",
            r#"{"s":"\u0041\/\u00e9\n\"\\\u0001","t":true,"f":false,"n":null,"e":[],"o":{"z":{},"y":[[]]}}"#,
            r#"{"big":-9223372036854775809,"small":5e-324,"neg":-12}"#,
        ] {
            let v: Value = serde_json::from_str(text).unwrap();
            let want = Some((v.to_string(), hash(&v)));
            assert_eq!(compact::compact(text, &mut Default::default()), want, "{text}");
        }
        // A key twice, however it is spelt: the caller asks the `Value`.
        assert_eq!(
            compact::compact(r#"{"a":1,"a":2}"#, &mut Default::default()),
            None
        );
        assert_eq!(
            compact::compact(r#"{"k\u0020y":1,"k y":2}"#, &mut Default::default()),
            None
        );
        assert_eq!(
            compact::compact(r#"{"a":1e400}"#, &mut Default::default()),
            None
        );
        assert_eq!(
            compact::compact(r#"{"a":1} x"#, &mut Default::default()),
            None
        );
    }

    /// A good spec, read once into its types, has the text and hash its `Value` gives,
    /// whatever its spacing, escapes, field order and spelling of numbers; an enum written
    /// as an object (which the one pass does not follow) is still read, the slow way.
    #[test]
    fn a_spec_read_once_has_the_text_and_hash_of_its_value() {
        for (i, text) in [
            r#"{"job":"a/b/c","instances":2,"cmd":["x"],"resources":{"cpus":1,"ram_mb":1}}"#,
            r#"{ "resources" : { "ram_mb" : 1000 , "cpus" : 5.0e-1, "ports": ["http"] },
                "cmd" : [ "sh", "-c", "echo \u00e9\t\"q\" $PORT_HTTP" ],
                "job":"r\u006fle/prod/web", "instances": 3, "tier": "production",
                "env": {"B": "2", "A": "\u0001"}, "user": null, "priority": -2,
                "constraints": [{"limit": 1, "attr": "host"}], "service": true,
                "restart": {"backoff_s": 1, "max_failures": 5} }"#,
            r#"{"job":"a/b/c","instances":1,"cmd":["x"],"resources":{"cpus":1,"ram_mb":1},
                "tier":{"production":null}}"#,
        ]
        .iter()
        .enumerate()
        {
            let v: Value = serde_json::from_str(text).unwrap();
            let spec = parse_text(text, "test").unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!((spec.json, spec.hash), (v.to_string(), hash(&v)), "{text}");
            let once = compact::read::<Written>(text, &mut Default::default());
            assert_eq!(once.is_some(), i < 2, "read in one pass: {text}");
        }
    }

    #[test]
    fn bad_specs_name_the_field() {
        let base = r#""job":"a/b/c","cmd":["x"],"resources":{"cpus":1,"ram_mb":1}"#;
        for (extra, want) in [
            (r#","instances":-1"#, "instances"),
            (r#","instances":1,"tier":"gold""#, "tier"),
            (
                r#","instances":1,"constraints":[{"attr":"rack","limit":1,"values":["x"]}]"#,
                "exactly one",
            ),
            (
                r#","instances":1,"health":{"port":"http"}"#,
                "not in resources.ports",
            ),
            (r#","instances":1,"colour":"red""#, "unknown field"),
            (r#","instances":1,"job":"a/../c""#, "job key"),
        ] {
            let err = job(&format!("{{{base}{extra}}}")).unwrap_err();
            assert!(err.contains(want), "{extra}: {err}");
        }
    }

    #[test]
    fn sla_blocks_get_their_defaults_and_bad_ones_are_named() {
        let base = r#""job":"a/b/c","cmd":["x"],"instances":4,"resources":{"cpus":1,"ram_mb":1}"#;
        let sla = |block: &str| {
            job(&format!(r#"{{{base},"sla":{block}}}"#))
                .map(|j| (j.sla.budget, j.sla.healthy_for_s))
        };
        assert_eq!(job(&format!("{{{base}}}")).unwrap().sla, Sla::default());
        let batch = job(&format!(
            r#"{{{base},"update":{{"batch_size":3,"watch_s":5}}}}"#
        ))
        .unwrap();
        assert_eq!(
            batch.sla.budget,
            Budget::MaxUnavailable(3),
            "no block: the batch size"
        );
        assert_eq!(batch.sla.healthy_for_s, 5.0, "and the watch");
        assert_eq!(sla("{}"), Ok((Budget::MaxUnavailable(1), 30.0)));
        assert_eq!(
            sla(r#"{"max_unavailable":2,"healthy_for_s":5}"#),
            Ok((Budget::MaxUnavailable(2), 5.0))
        );
        assert_eq!(
            sla(r#"{"min_healthy_percent":50}"#),
            Ok((Budget::MinHealthyPercent(50.0), 30.0))
        );
        for (block, want) in [
            (r#"{"min_healthy_percent":101}"#, "min_healthy_percent"),
            (r#"{"max_unavailable":-1}"#, "max_unavailable"),
            (r#"{"healthy_for_s":1e9}"#, "healthy_for_s"),
            (r#"{"healthy_for_s":-1}"#, "healthy_for_s"),
            (r#"{"coordinator":["x"]}"#, "unknown field"),
        ] {
            let err = sla(block).unwrap_err();
            assert!(err.contains("sla") && err.contains(want), "{block}: {err}");
        }
    }

    #[test]
    fn announce_blocks_get_their_defaults_and_bad_ones_are_named() {
        let with = |ports: &str, block: &str| {
            job(&format!(
                r#"{{"job":"www/prod/hello","instances":1,"cmd":["x"],
                    "resources":{{"cpus":1,"ram_mb":1,"ports":{ports}}},"announce":{block}}}"#
            ))
        };
        let a = |path: &str, primary: u8| {
            Some(Announce {
                path: path.into(),
                primary,
            })
        };
        assert_eq!(
            with(r#"["admin","http"]"#, "{}").unwrap().announce,
            a("/formic/www/prod/hello", 1)
        );
        assert_eq!(
            with(r#"["thrift","admin"]"#, r#"{"path":"/s/hello"}"#)
                .unwrap()
                .announce,
            a("/s/hello", 0)
        );
        for (ports, block, want) in [
            ("[]", "{}", "no ports to announce"),
            (
                r#"["http"]"#,
                r#"{"primary":"grpc"}"#,
                "not in resources.ports",
            ),
            (r#"["http"]"#, r#"{"path":"relative/x"}"#, "is not /PART"),
            (r#"["http"]"#, r#"{"path":"/a/../etc"}"#, "is not /PART"),
            (r#"["http"]"#, r#"{"path":"/a//b"}"#, "is not /PART"),
            (r#"["http"]"#, r#"{"path":"/a/"}"#, "is not /PART"),
            (r#"["http"]"#, r#"{"zk":"x"}"#, "unknown field"),
        ] {
            let err = with(ports, block).unwrap_err();
            assert!(
                err.contains("announce") && err.contains(want),
                "{block}: {err}"
            );
        }
    }

    /// Each part within its bounds, all together too long for the job's record in the
    /// state: refused where it is read, not at the commit of every pass.
    #[test]
    fn a_job_whose_record_cannot_fit_the_state_is_refused() {
        let part = "p".repeat(60);
        let text = |ports: usize, path: &str| {
            let ports: Vec<String> = (0..ports)
                .map(|i| format!("{i}{}", "n".repeat(30)))
                .collect();
            serde_json::json!({"job": format!("{part}/{part}/{part}"), "instances": 1,
                               "cmd": ["x"], "resources": {"cpus": 1, "ram_mb": 1, "ports": ports},
                               "announce": {"path": path}})
            .to_string()
        };
        let err = parse_text(&text(8, &format!("/{}", "s".repeat(200))), "test").unwrap_err();
        assert!(err.contains("of the state's 512-byte record"), "{err}");
        // Fewer ports, a shorter path: it fits, an update under way included.
        assert!(parse_text(&text(2, "/s"), "test").is_ok());
    }

    /// Issue 11: specs that were accepted and misunderstood, ignored or passed on to the
    /// task literally are refused where they are read, naming the field.
    #[test]
    fn what_no_tool_understands_is_refused_when_read() {
        let base =
            r#""job":"a/b/c","instances":1,"resources":{"cpus":1,"ram_mb":1,"ports":["http"]}"#;
        let with = |rest: &str| parse_text(&format!("{{{base},{rest}}}"), "test");
        for (rest, want) in [
            (
                r#""cmd":["x"],"restart":{"max_failure":3}"#,
                r#"field "restart": unknown field "max_failure""#,
            ),
            (
                r#""cmd":["x"],"restart":{"backoff_s":"ten"}"#,
                r#"field "restart": field "backoff_s": invalid type"#,
            ),
            (
                r#""cmd":["x"],"health":{"port":"http","http":"/x\r\nHost: evil"}"#,
                r#"field "health": field "http""#,
            ),
            (
                r#""cmd":["x"],"health":{"port":"http","interval_s":0}"#,
                r#"field "interval_s": 0"#,
            ),
            (
                r#""cmd":["x"],"health":{"port":"http","interval_s":1e30}"#,
                "field \"interval_s\"",
            ),
            (
                r#""cmd":["x"],"health":{"port":"http","interval_s":2,"timeout_s":2}"#,
                "field \"timeout_s\"",
            ),
            (
                r#""cmd":["x"],"health":{"port":"http","cmd":["true"]}"#,
                "not both",
            ),
            (
                r#""cmd":["x"],"health":{"port":"http","retries":1}"#,
                r#"unknown field "retries""#,
            ),
            (
                r#""cmd":["x"],"update":{"batch":1}"#,
                r#"field "update": unknown field "batch""#,
            ),
            (
                r#""cmd":["x"],"update":{"batch_size":0}"#,
                r#"field "update": field "batch_size": 0"#,
            ),
            (
                r#""cmd":["x"],"update":{"watch_s":-1}"#,
                r#"field "update": field "watch_s": -1"#,
            ),
            (
                r#""cmd":["x"],"update":{"watch_s":60,"progress_deadline_s":60}"#,
                r#"field "progress_deadline_s": 60 is not more than watch_s"#,
            ),
            (
                r#""cmd":["x"],"update":{"max_total_failures":1}"#,
                r#"field "max_total_failures": 1 is not less than instances (1)"#,
            ),
            (
                r#""cmd":["x"],"sla":{"max_unavailable":1,"min_healthy_percent":50}"#,
                r#"field "sla": max_unavailable and min_healthy_percent: give one"#,
            ),
            (
                r#""cmd":["x"],"cron":{"schedule":"* * * *"}"#,
                r#"field "cron": field "schedule": "* * * *": "#,
            ),
            (
                r#""cmd":["x"],"cron":{"schedule":"* * * * *","collision":"run_overlap"}"#,
                r#"field "cron": field "collision": unknown variant "run_overlap""#,
            ),
            (
                r#""cmd":["x"],"service":true,"cron":{"schedule":"@daily"}"#,
                r#"a cron job is a batch job"#,
            ),
            (
                r#""cmd":["x","{{port.nope}}"]"#,
                r#"port "nope" is not in resources.ports"#,
            ),
            (r#""cmd":["x","{{nope}}"]"#, "{{nope}} is not a template"),
            (
                r#""cmd":["x"],"env":{"A":"{{port.admin}}"}"#,
                r#"field "env": A: {{port.admin}}"#,
            ),
            (r#""cmd":["x\u0000y"]"#, "NUL"),
            (r#""cmd":["x"],"env":{"A":"b\u0000"}"#, "NUL"),
            (r#""cmd":[""]"#, "the program is an empty string"),
            (
                r#""cmd":["x"],"env":{"A":"1","A":"2"}"#,
                r#""A" is given twice"#,
            ),
            (r#""cmd":["x"],"cmd":["y"]"#, r#"duplicate field "cmd""#),
            (
                r#""cmd":["x"],"restart":{"backoff_s":10,"max_backoff_s":5}"#,
                "field \"max_backoff_s\"",
            ),
            (r#""cmd":["x"],"user":"a/b""#, "field \"user\""),
        ] {
            let err = with(rest).unwrap_err();
            assert!(err.contains(want), "{rest}: {want:?} not in {err}");
            assert!(err.starts_with("job a/b/c: "), "{err}");
        }
        let job = with(
            r#""cmd":["x","{{port.http}}","{{instance}}","{{task}}","{{host}}"],
            "health":{"port":"http","interval_s":0.5}"#,
        )
        .unwrap();
        let h = job.health.unwrap();
        assert_eq!((h.interval_s, h.timeout_s, h.failures), (0.5, 0.25, 3));
        assert_eq!(
            h.check,
            Check::Http {
                port: "http".into(),
                path: "/".into()
            }
        );
        assert_eq!(job.restart, Restart::default());
    }

    use proptest::prelude::*;

    /// JSON values of a job's shape, mostly wrong: the fields a spec has, with values of
    /// any type, nested a little.
    fn near_spec() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            "[ -~\\x00\\r\\n{}]{0,12}".prop_map(Value::from),
            prop_oneof![
                Just("{{port.http}}"),
                Just("{{nope}}"),
                Just("a/b/c"),
                Just("http")
            ]
            .prop_map(Value::from),
        ];
        let value = leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("port".to_string()),
                        Just("http".to_string()),
                        Just("cmd".to_string()),
                        Just("interval_s".to_string()),
                        Just("cpus".to_string()),
                        Just("ram_mb".to_string()),
                        Just("ports".to_string()),
                        Just("attr".to_string()),
                        Just("limit".to_string()),
                        "[a-z]{1,6}"
                    ],
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        prop::collection::btree_map(
            prop_oneof![
                Just("job"),
                Just("instances"),
                Just("cmd"),
                Just("env"),
                Just("resources"),
                Just("health"),
                Just("restart"),
                Just("constraints"),
                Just("announce"),
                Just("tier"),
                Just("user"),
                Just("update")
            ],
            value,
            0..10,
        )
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
    }

    proptest! {
        /// Whatever the job file holds, reading it gives a spec or an error naming the
        /// job or field, never a panic; and a spec read from text reads the same as from
        /// its value.
        #[test]
        fn any_job_object_is_read_or_refused_without_a_panic(v in near_spec()) {
            let text = v.to_string();
            let from_text = parse_text(&text, "prop");
            let from_value = parse(v.as_object().unwrap(), "prop");
            prop_assert_eq!(from_text.is_ok(), from_value.is_ok(), "{}", text);
            match (from_text, from_value) {
                (Ok(a), Ok(b)) => prop_assert_eq!((a.json, a.hash), (b.json, b.hash)),
                (Err(e), _) => prop_assert!(!e.is_empty()),
                _ => {}
            }
        }

        /// A spec's compact text and hash are the same taken from its text, compact or
        /// pretty-printed, as from its `Value`, and the same again with the feed of a
        /// spec read before.
        #[test]
        fn compact_text_and_hash_follow_the_value(v in near_spec()) {
            let want = Some((v.to_string(), hash(&v)));
            let mut feed = compact::Feed::default();
            prop_assert_eq!(&compact::compact(&v.to_string(), &mut feed), &want);
            let pretty = serde_json::to_string_pretty(&v).unwrap();
            prop_assert_eq!(&compact::compact(&pretty, &mut feed), &want);
        }

        #[test]
        fn any_text_is_read_or_refused_without_a_panic(text in "[ -~\\x00\\n]{0,80}") {
            let _ = parse_text(&text, "prop");
        }
    }
}
