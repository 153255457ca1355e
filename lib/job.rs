//! Job specs: what an operator asks for, read from job files and checked field by field.
//!
//! A job file holds one job object (pretty-printed or not) or JSON lines of jobs. pack uses
//! the resources, constraints, tier and priority; the other blocks are checked here so a
//! mistake is caught when the file is read, not when an instance starts.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Map, Value};

use crate::host::{millicores, Millicores};
use crate::records::{show, Fields};
use crate::task::{check_job_key, Announce, MAX_PORTS};

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

#[derive(Clone, Debug)]
pub struct JobSpec {
    pub key: String,
    pub instances: u32,
    pub resources: Resources,
    pub constraints: Vec<Constraint>,
    pub tier: Tier,
    pub priority: i32,
    pub service: bool,
    /// Where healthy instances are announced, with the defaults filled in.
    pub announce: Option<Announce>,
    /// Stable hash of the whole spec: a change anywhere is a new version of the job.
    pub hash: u64,
    /// Where the job was read from, for messages.
    pub origin: String,
    pub raw: Map<String, Value>,
}

impl JobSpec {
    pub fn role(&self) -> &str {
        self.key.split('/').next().unwrap_or("")
    }
}

const FIELDS: &[&str] = &[
    "job",
    "instances",
    "cmd",
    "shell",
    "env",
    "user",
    "resources",
    "constraints",
    "tier",
    "priority",
    "service",
    "health",
    "announce",
    "restart",
    "update",
    "sla",
];

/// The most instances one job may ask for.
pub const MAX_INSTANCES: u64 = 1_000_000;

/// Parses and checks one job object; errors name the field.
pub fn parse(obj: &Map<String, Value>, origin: &str) -> Result<JobSpec, String> {
    let f = Fields(obj);
    let key = f.str("job")?.ok_or("field \"job\" is missing")?;
    check_job_key(key).map_err(|e| format!("field \"job\": {e}"))?;
    let spec = parse_fields(key, f).map_err(|e| format!("job {key}: {e}"))?;
    Ok(JobSpec {
        origin: origin.to_string(),
        raw: obj.clone(),
        hash: hash(&Value::Object(obj.clone())),
        ..spec
    })
}

fn parse_fields(key: &str, f: Fields<'_>) -> Result<JobSpec, String> {
    f.only(FIELDS)?;
    let instances = f
        .count("instances", MAX_INSTANCES)?
        .ok_or("field \"instances\" is missing")? as u32;
    match f.array("cmd")? {
        None => return Err("field \"cmd\" is missing".into()),
        Some(cmd) if cmd.is_empty() => return Err("field \"cmd\" is empty".into()),
        Some(cmd) => {
            if let Some(bad) = cmd.iter().find(|a| !a.is_string()) {
                return Err(format!(
                    "field \"cmd\": every argument must be a string, got {}",
                    show(bad)
                ));
            }
        }
    }
    if f.has("shell") && !f.0["shell"].is_boolean() {
        return Err("field \"shell\": expected true or false".into());
    }
    if let Some(env) = f.object("env")? {
        if let Some((k, v)) = env
            .iter()
            .find(|(k, v)| !v.is_string() || k.is_empty() || k.contains(['=', '\0']))
        {
            return Err(format!(
                "field \"env\": {k:?} = {}: names are non-empty without = and values are strings",
                show(v)
            ));
        }
    }
    f.str("user")?;
    let resources = parse_resources(
        f.object("resources")?
            .ok_or("field \"resources\" is missing")?,
    )
    .map_err(|e| format!("field \"resources\": {e}"))?;
    let constraints = match f.array("constraints")? {
        None => Vec::new(),
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, c)| parse_constraint(c).map_err(|e| format!("constraint {}: {e}", i + 1)))
            .collect::<Result<_, _>>()?,
    };
    let tier = match f.str("tier")? {
        None | Some("preemptible") => Tier::Preemptible,
        Some("production") => Tier::Production,
        Some(t) => {
            return Err(format!(
                "field \"tier\": {t:?} is not production or preemptible"
            ))
        }
    };
    let priority = match f.0.get("priority") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_i64()
            .filter(|p| p.unsigned_abs() <= 1_000_000)
            .ok_or_else(|| {
                format!(
                    "field \"priority\": expected a whole number within ±1000000, got {}",
                    show(v)
                )
            })? as i32,
    };
    let service = match f.0.get("service") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(format!(
                "field \"service\": expected true or false, got {}",
                show(v)
            ))
        }
    };
    for block in ["health", "announce", "restart", "update", "sla"] {
        f.object(block)?;
    }
    if let Some(h) = f.object("health")? {
        let hf = Fields(h);
        match (
            hf.has("port"),
            hf.array("cmd")
                .map_err(|e| format!("field \"health\": {e}"))?,
        ) {
            (_, Some(cmd)) if cmd.is_empty() || !cmd.iter().all(Value::is_string) => {
                return Err("field \"health\": \"cmd\" must be a non-empty list of strings".into())
            }
            (false, None) => {
                return Err("field \"health\": give \"port\" (an HTTP check) or \"cmd\"".into())
            }
            _ => {}
        }
    }
    check_port_refs(&f, &resources.ports)?;
    let announce = announce(key, obj_of(&f), &resources.ports)?;
    Ok(JobSpec {
        key: key.to_string(),
        instances,
        resources,
        constraints,
        tier,
        priority,
        service,
        announce,
        hash: 0,
        origin: String::new(),
        raw: Map::new(),
    })
}

fn parse_resources(obj: &Map<String, Value>) -> Result<Resources, String> {
    let f = Fields(obj);
    f.only(&["cpus", "ram_mb", "disk_mb", "gpus", "pids", "ports"])?;
    let cpus = f.f64("cpus")?.ok_or("field \"cpus\" is missing")?;
    if !(cpus > 0.0 && cpus <= 100_000.0) || millicores(cpus) == 0 {
        return Err(format!(
            "field \"cpus\": {cpus} must be at least 0.001 and at most 100000"
        ));
    }
    let ram_mb = f
        .count("ram_mb", 1 << 40)?
        .ok_or("field \"ram_mb\" is missing")?;
    let disk_mb = f.count("disk_mb", 1 << 50)?.unwrap_or(0);
    let gpus = f.count("gpus", 1 << 16)?.unwrap_or(0) as u32;
    let pids = f.count("pids", 1 << 22)?.unwrap_or(0) as u32;
    if f.0.contains_key("pids") && pids == 0 {
        return Err("field \"pids\": must be at least 1".into());
    }
    let mut ports = Vec::new();
    for p in f.array("ports")?.map(Vec::as_slice).unwrap_or(&[]) {
        let name = p
            .as_str()
            .ok_or_else(|| format!("field \"ports\": expected names, got {}", show(p)))?;
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
        if ports.iter().any(|q| q == name) {
            return Err(format!("field \"ports\": {name:?} is named twice"));
        }
        ports.push(name.to_string());
    }
    if ports.len() > MAX_PORTS {
        return Err(format!(
            "field \"ports\": {} ports; at most {MAX_PORTS}",
            ports.len()
        ));
    }
    Ok(Resources {
        cpus: millicores(cpus),
        ram_mb,
        disk_mb,
        gpus,
        pids,
        ports,
    })
}

fn parse_constraint(v: &Value) -> Result<Constraint, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("expected an object, got {}", show(v)))?;
    let f = Fields(obj);
    f.only(&["attr", "limit", "values", "not"])?;
    let attr = f
        .str("attr")?
        .ok_or("field \"attr\" is missing")?
        .to_string();
    if attr.is_empty() {
        return Err("field \"attr\" is empty".into());
    }
    let strings = |name: &str| -> Result<Option<Vec<String>>, String> {
        let Some(list) = f.array(name)? else {
            return Ok(None);
        };
        list.iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("field \"{name}\": expected strings, got {}", show(v)))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    };
    match (
        f.count("limit", u32::MAX as u64)?,
        strings("values")?,
        strings("not")?,
    ) {
        (Some(0), None, None) => Err("field \"limit\": 0 would allow no instance anywhere".into()),
        (Some(limit), None, None) => Ok(Constraint::Limit {
            attr,
            limit: limit as u32,
        }),
        (None, Some(values), None) if values.is_empty() => Err("field \"values\" is empty".into()),
        (None, Some(values), None) => Ok(Constraint::Values { attr, values }),
        (None, None, Some(values)) => Ok(Constraint::Not { attr, values }),
        _ => Err("give exactly one of \"limit\", \"values\" or \"not\"".into()),
    }
}

fn obj_of<'a>(f: &Fields<'a>) -> &'a Map<String, Value> {
    f.0
}

/// The longest serverset path: it is kept in the job's record in the state.
pub const ANNOUNCE_PATH_MAX: usize = 255;

/// A job's announce block with its defaults: the path `/formic/ROLE/ENV/NAME`, and as
/// primary port `http` when the job has one, else its first port (as Aurora's announcer
/// does). Every part of the path is a plain name, so it is both a ZooKeeper path and a
/// directory path under the serverset root that cannot leave it.
pub fn announce(
    key: &str,
    job: &Map<String, Value>,
    ports: &[String],
) -> Result<Option<Announce>, String> {
    let Some(block) = Fields(job).object("announce")? else {
        return Ok(None);
    };
    let f = Fields(block);
    f.only(&["primary", "path"])
        .map_err(|e| format!("field \"announce\": {e}"))?;
    let err = |e: String| format!("field \"announce\": {e}");
    let primary = match f.str("primary").map_err(err)? {
        Some(name) => ports.iter().position(|p| p == name).ok_or_else(|| {
            format!("field \"announce\": port {name:?} is not in resources.ports")
        })?,
        None if ports.is_empty() => {
            return Err("field \"announce\": the job has no ports to announce".into())
        }
        None => ports.iter().position(|p| p == "http").unwrap_or(0),
    };
    let path = match f.str("path").map_err(err)? {
        Some(path) => path.to_string(),
        None => format!("/formic/{key}"),
    };
    check_announce_path(&path).map_err(err)?;
    Ok(Some(Announce {
        path,
        primary: primary as u8,
    }))
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

/// Health checks name a port; it must be one the job asks for.
fn check_port_refs(f: &Fields<'_>, ports: &[String]) -> Result<(), String> {
    for (block, field) in [("health", "port")] {
        if let Some(obj) = f.object(block)? {
            if let Some(name) = Fields(obj)
                .str(field)
                .map_err(|e| format!("field \"{block}\": {e}"))?
            {
                if !ports.iter().any(|p| p == name) {
                    return Err(format!(
                        "field \"{block}\": port {name:?} is not in resources.ports"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// FNV-1a over the spec with object keys in sorted order, so the same spec hashes the same
/// whatever the order of its fields in the file.
pub fn hash(v: &Value) -> u64 {
    fn feed(h: &mut u64, bytes: &[u8]) {
        for &b in bytes {
            *h ^= b as u64;
            *h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    fn walk(h: &mut u64, v: &Value) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                feed(h, b"{");
                for k in keys {
                    feed(h, k.as_bytes());
                    feed(h, b":");
                    walk(h, &m[k]);
                    feed(h, b",");
                }
                feed(h, b"}");
            }
            Value::Array(a) => {
                feed(h, b"[");
                for x in a {
                    walk(h, x);
                    feed(h, b",");
                }
                feed(h, b"]");
            }
            other => feed(h, other.to_string().as_bytes()),
        }
    }
    let mut h = 0xcbf2_9ce4_8422_2325;
    walk(&mut h, v);
    h
}

/// Reads every job from files and directories (a directory's `*.json` and `*.jsonl` files,
/// in name order). Every bad job is reported; any bad job fails the whole read.
pub fn read_all(paths: &[PathBuf]) -> Result<Vec<JobSpec>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading job directory {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.extension().is_some_and(|x| x == "json" || x == "jsonl") && f.is_file()
                })
                .collect();
            entries.sort();
            files.extend(entries);
        } else {
            files.push(p.clone());
        }
    }
    let mut jobs: Vec<JobSpec> = Vec::new();
    let mut errors = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for file in &files {
        match read_file(file) {
            Ok(list) => {
                for job in list {
                    if let Some(first) = seen.insert(job.key.clone(), job.origin.clone()) {
                        errors.push(format!(
                            "{}: job {} is already defined at {first}",
                            job.origin, job.key
                        ));
                    } else {
                        jobs.push(job);
                    }
                }
            }
            Err(e) => errors.extend(e),
        }
    }
    crate::exit::refuse_batch("pack", &errors, "job specs", "nothing was placed")?;
    Ok(jobs)
}

/// One file: a single JSON object (pretty-printed or not), or JSON lines of objects. A
/// file whose first line is a whole object is JSON lines; otherwise it is one object, and a
/// syntax error in it is reported at its own line.
fn read_file(path: &Path) -> Result<Vec<JobSpec>, Vec<String>> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| vec![format!("{name}: {e}")])?;
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let json_lines = matches!(serde_json::from_str::<Value>(first), Ok(Value::Object(_)));
    let parse_error = |e: serde_json::Error| {
        let why = e.to_string();
        let why = why
            .rsplit_once(" at line ")
            .map_or(why.as_str(), |(w, _)| w)
            .to_string();
        (e.line(), e.column(), why)
    };
    if !json_lines {
        return match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(obj)) => parse(&obj, &name)
                .map(|j| vec![j])
                .map_err(|e| vec![format!("{name}: {e}")]),
            Ok(_) => Err(vec![format!(
                "{name}: expected a job object or JSON lines of them"
            )]),
            Err(e) => {
                let (line, column, why) = parse_error(e);
                Err(vec![format!(
                    "{name}:{line}: not valid JSON at column {column}: {why}"
                )])
            }
        };
    }
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let origin = format!("{name}:{}", i + 1);
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(obj)) => match parse(&obj, &origin) {
                Ok(job) => out.push(job),
                Err(e) => errors.push(format!("{origin}: {e}")),
            },
            Ok(_) => errors.push(format!("{origin}: expected a job object")),
            Err(e) => {
                let (_, column, why) = parse_error(e);
                errors.push(format!(
                    "{origin}: not valid JSON at column {column}: {why}"
                ))
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(text: &str) -> Result<JobSpec, String> {
        let v: Value = serde_json::from_str(text).unwrap();
        parse(v.as_object().unwrap(), "test")
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
           "restart":{"max_failures":10,"backoff_s":1,"max_backoff_s":300},
           "update":{"batch_size":1,"watch_s":30,"rollback":true},
           "sla":{"max_unavailable":1}}"#)
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
}
