//! `launch`: starts placed instances on their hosts, each under its own supervisor.
//!
//! For each `place` record (and the `spec` record pack sends before a job's first place):
//! 1. intent: one transaction records every task ASSIGNED on its host with its
//!    reservation, so the resources are spoken for before anything starts;
//! 2. action: the task's directory on the host gets job.json and spec.json (argv with its
//!    templates filled in, environment, user, health check), and `formic-supervise DIR`
//!    starts in a session of its own, to outlive launch;
//! 3. result: a second transaction records STARTING, or RUNNING with the task's pid and
//!    start time once its supervisor reports them.
//!
//! A crash between any two steps is repaired by the next pass: an ASSIGNED task with no
//! supervisor is started again. Nothing starts twice: a task's supervisor holds the task
//! directory's lock for as long as it lives, a second one gives up at once, and a task
//! that is supervised already is left alone (also when two launches run at once).

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::{json, Map, Value};

use crate::cli::{OutputArgs, StateArgs};
use crate::exit::{bad_input, fail, status_of, Status, TABLE};
use crate::host::{millicores, Transport};
use crate::records::{self, Fields, Record, Writer};
use crate::rundir;
use crate::state::{State, Txn};
use crate::supervise::{Health, Spec};
use crate::task::{check_job_key, Job, Task, TaskState, MAX_PORTS, NO_HOST};

/// Start placed instances on their hosts
///
/// Reads `place` records (and the `spec` records pack sends before them) on standard
/// input, records each task in the state, starts it under its own supervisor
/// (formic-supervise) on its host, and prints an `event` record per task. Lines of other
/// types pass through. A task already running is left alone, so running launch twice on the
/// same records starts nothing more.
#[derive(Parser, Debug)]
#[command(name = "launch", version, after_help = TABLE)]
pub struct Cli {
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Let tasks run as root (when their job names root, or names no user and launch runs
    /// as root); otherwise such a job runs as nobody
    #[arg(long, env = "FORMIC_ALLOW_ROOT")]
    pub allow_root: bool,
    /// Seconds a stopped task gets between SIGTERM and SIGKILL
    #[arg(
        long,
        value_name = "SECONDS",
        default_value = "10",
        env = "FORMIC_GRACE"
    )]
    pub grace: f64,
    /// How long to wait for the supervisors to report their tasks running
    #[arg(long, value_name = "SECONDS", default_value = "5")]
    pub wait: f64,
    /// Variables of launch's own environment that tasks also get (repeatable)
    #[arg(long = "pass-env", value_name = "NAME")]
    pub pass_env: Vec<String>,
    /// The uids (and gids of the same numbers) that tasks of jobs naming no user get, one
    /// of its own per task, when launch runs as root; no account may use them
    #[arg(
        long,
        value_name = "FIRST-LAST",
        default_value = "70000-79999",
        env = "FORMIC_UID_RANGE",
        value_parser = crate::identity::parse_range
    )]
    pub uid_range: (u32, u32),
    /// The operators' group that may read every task's logs (beside the task's own user)
    #[arg(
        long,
        value_name = "GROUP",
        default_value = "adm",
        env = "FORMIC_LOG_GROUP"
    )]
    pub log_group: String,
}

/// One placement, checked.
#[derive(Clone, Debug)]
struct Placement {
    task: String,
    job: String,
    instance: u32,
    host: String,
    cpus: u32,
    ram_mb: u64,
    disk_mb: u64,
    gpus: u32,
    ports: Vec<(String, u16)>,
    hash: String,
}

pub fn run(cli: Cli) -> Result<Status> {
    let (places, specs, others) = read(io::stdin().lock())?;
    let path = cli.state.path();
    let mut state = State::open_writer(&path)?;
    let mut out = Writer::stdout();
    for rec in &others {
        out.raw(&rec.raw)?;
    }
    if places.is_empty() {
        out.finish()?;
        return Ok(Status::Done);
    }
    // 1. Intent.
    let now_started = state.write(|tx| record_intent(tx, &places, &specs))?;
    // 2. Action.
    let mut started = Vec::new();
    let mut not_started = HashMap::new();
    for p in &places {
        if !now_started.contains_key(&p.task) {
            continue;
        }
        let dir = rundir::task_dir(&rundir::host_root(&path, &p.host), &p.task);
        let job = &specs[&(p.job.clone(), p.hash.clone())];
        match start(&cli, &dir, p, job) {
            Ok(true) => started.push((p, dir)),
            Ok(false) => {} // supervised already, or being started by a concurrent launch
            Err(e) => {
                eprintln!("launch: {}: {e:#}", p.task);
                not_started.insert(p.task.clone(), e);
            }
        }
    }
    let failures = not_started.len();
    // 3. Result.
    let deadline = Instant::now() + Duration::from_secs_f64(cli.wait.max(0.0));
    let mut reports: Vec<Option<rundir::Status>> = vec![None; started.len()];
    loop {
        for (i, (_, dir)) in started.iter().enumerate() {
            if reports[i].as_ref().is_none_or(|s| s.state == "STARTING") {
                reports[i] = rundir::Status::read(dir).ok().flatten();
            }
        }
        let pending = reports
            .iter()
            .any(|r| r.as_ref().is_none_or(|s| s.state == "STARTING"));
        if !pending || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Only launch's own intent is advanced: a record reap has changed since (a stop, a
    // collection) is reap's, and a supervisor started for a task reap has since stopped is
    // told to stop too. A start that failed stays STARTING: reap collects it, with the
    // restart policy.
    let (events, orphaned) = state.write(|tx| {
        let mut events = record_not_started(tx, &places, &not_started, &now_started);
        let mut orphaned = Vec::new();
        for ((p, dir), report) in started.iter().zip(&reports) {
            let slot = task_slot(tx, &p.job, p.instance);
            let mut t = match slot.and_then(|s| tx.view().tasks.get(s)) {
                Some(t) if t.state == TaskState::Assigned && Some(&t.since) == now_started.get(&p.task) => t.clone(),
                // Another launch's intent, or its result: the task is in hand.
                Some(t) if matches!(t.state, TaskState::Assigned | TaskState::Starting | TaskState::Running) => continue,
                // reap stopped or collected it meanwhile: the supervisor must go too.
                _ => {
                    orphaned.push(dir.clone());
                    continue;
                }
            };
            match report {
                Some(s) if s.state == "RUNNING" => {
                    t.state = TaskState::Running;
                    (t.pid, t.pid_start) = s.pid.unwrap_or((0, 0));
                }
                _ => t.state = TaskState::Starting,
            }
            t.since = tx.now();
            events.push(json!({"type":"event","task":p.task,"host":p.host,"state":t.state.name(),"exit":null,"ts":tx.now()}));
            tx.set(slot.unwrap(), Some(t));
        }
        Ok((events, orphaned))
    })?;
    for dir in orphaned {
        if let Ok(Some(s)) = rundir::Status::read(&dir) {
            let (pid, start) = s.supervisor;
            if rundir::same_process(pid, start) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    }
    for e in &events {
        out.record(e)?;
    }
    out.finish()?;
    Ok(if failures > 0 {
        Status::Partial
    } else {
        Status::Done
    })
}

/// Tasks whose supervisor could not be started fail at once, with the reason, so the
/// next pass decides again (they are not left ASSIGNED for reap to find never started).
fn record_not_started(
    tx: &mut Txn,
    places: &[Placement],
    errors: &HashMap<String, anyhow::Error>,
    intents: &HashMap<String, f64>,
) -> Vec<Value> {
    let mut events = Vec::new();
    for p in places.iter().filter(|p| errors.contains_key(&p.task)) {
        let Some(slot) = task_slot(tx, &p.job, p.instance) else {
            continue;
        };
        let ours =
            tx.view().tasks.get(slot).filter(|t| {
                t.state == TaskState::Assigned && Some(&t.since) == intents.get(&p.task)
            });
        let Some(t) = ours.cloned() else {
            continue; // reap or another launch has it now
        };
        let error = &errors[&p.task];
        let mut failed = t.freed(TaskState::Failed, tx.now());
        failed.exit = crate::supervise::cannot_run_status(error);
        failed.failures = t.failures.saturating_add(1);
        events.push(
            json!({"type":"event","task":p.task,"host":p.host,"state":"FAILED",
            "exit":failed.exit,"ts":tx.now(),"reason":format!("{error:#}")}),
        );
        tx.set(slot, Some(failed));
    }
    events
}

type Specs = HashMap<(String, String), Map<String, Value>>;

/// Reads and checks every record first: one bad record starts nothing.
fn read(input: impl io::BufRead) -> Result<(Vec<Placement>, Specs, Vec<Record>)> {
    let mut places = Vec::new();
    let mut specs: Specs = HashMap::new();
    let mut others = Vec::new();
    let mut errors = Vec::new();
    for item in records::Reader::new(input) {
        let rec = match item {
            Ok(r) => r,
            Err(e) if status_of(&e) == Status::BadInput => {
                errors.push(format!("{e:#}"));
                continue;
            }
            Err(e) => return Err(e),
        };
        let checked = match rec.kind() {
            "spec" => read_spec(&rec).map(|(key, hash, spec)| {
                specs.insert((key, hash), spec);
            }),
            "place" => read_place(&rec).and_then(|p| {
                if !specs.contains_key(&(p.job.clone(), p.hash.clone())) {
                    return Err(format!(
                        "no spec record for job {} (hash {}) before it",
                        p.job, p.hash
                    ));
                }
                places.push(p);
                Ok(())
            }),
            _ => {
                others.push(rec);
                continue;
            }
        };
        if let Err(e) = checked {
            errors.push(format!("line {}: {e}", rec.line));
        }
    }
    crate::exit::refuse_batch("launch", &errors, "records", "nothing was started")?;
    Ok((places, specs, others))
}

fn read_spec(rec: &Record) -> Result<(String, String, Map<String, Value>), String> {
    let f = rec.get();
    f.only(&["type", "job", "hash", "spec"])?;
    let key = f.str("job")?.ok_or("field \"job\" is missing")?;
    let hash = f.str("hash")?.ok_or("field \"hash\" is missing")?;
    let spec = f.object("spec")?.ok_or("field \"spec\" is missing")?;
    let job = crate::job::parse(spec, "spec record")?;
    if job.key != key || format!("{:016x}", job.hash) != hash {
        return Err(format!("the spec of job {key} does not hash to {hash}"));
    }
    Ok((key.to_string(), hash.to_string(), spec.clone()))
}

fn read_place(rec: &Record) -> Result<Placement, String> {
    let f = rec.get();
    f.only(&[
        "type", "task", "job", "instance", "host", "cpus", "ram_mb", "disk_mb", "gpus", "ports",
        "spec",
    ])?;
    let job = f.str("job")?.ok_or("field \"job\" is missing")?;
    check_job_key(job).map_err(|e| format!("field \"job\": {e}"))?;
    let instance = f
        .count("instance", u32::MAX as u64)?
        .ok_or("field \"instance\" is missing")? as u32;
    let task = f.str("task")?.ok_or("field \"task\" is missing")?;
    if task != format!("{job}/{instance}") {
        return Err(format!("field \"task\": {task:?} is not {job}/{instance}"));
    }
    let host = f.str("host")?.ok_or("field \"host\" is missing")?;
    crate::host::check_name(host).map_err(|e| format!("field \"host\": {e}"))?;
    let cpus = f.f64("cpus")?.ok_or("field \"cpus\" is missing")?;
    if !(0.0..=100_000.0).contains(&cpus) {
        return Err(format!("field \"cpus\": {cpus} is out of range"));
    }
    let mut ports = Vec::new();
    for (name, v) in f.object("ports")?.into_iter().flatten() {
        let port = v.as_u64().filter(|p| (1..=65535).contains(p));
        let port =
            port.ok_or_else(|| format!("field \"ports\": {name}: expected a port number"))?;
        ports.push((name.clone(), port as u16));
    }
    if ports.len() > MAX_PORTS {
        return Err(format!(
            "field \"ports\": {} ports; at most {MAX_PORTS}",
            ports.len()
        ));
    }
    let hash = f.str("spec")?.ok_or("field \"spec\" is missing")?;
    if hash.len() != 16 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("field \"spec\": {hash:?} is not a spec hash"));
    }
    Ok(Placement {
        task: task.to_string(),
        job: job.to_string(),
        instance,
        host: host.to_string(),
        cpus: millicores(cpus),
        ram_mb: f.count("ram_mb", 1 << 40)?.unwrap_or(0),
        disk_mb: f.count("disk_mb", 1 << 50)?.unwrap_or(0),
        gpus: f.count("gpus", 1 << 16)?.unwrap_or(0) as u32,
        ports,
        hash: hash.to_string(),
    })
}

fn task_slot(tx: &Txn, job: &str, instance: u32) -> Option<u32> {
    let j = tx.view().jobs.find(&job.to_string())?;
    tx.view().tasks.find(&(j, instance))
}

/// Records every placement ASSIGNED with its reservation; returns the tasks to start: those
/// newly assigned, and those assigned earlier whose start never happened.
fn record_intent(
    tx: &mut Txn,
    places: &[Placement],
    specs: &Specs,
) -> Result<HashMap<String, f64>> {
    let mut to_start = HashMap::new();
    for p in places {
        let h = tx
            .view()
            .hosts
            .find(&p.host)
            .ok_or_else(|| bad_input(format!("{}: no host {} in the state", p.task, p.host)))?;
        let host = tx.view().hosts.get(h).unwrap();
        if host.transport != Transport::Local {
            return Err(fail(
                Status::Unavailable,
                format!(
                    "{}: host {} is reached by ssh, which launch does not do yet",
                    p.task, p.host
                ),
            ));
        }
        let spec = &specs[&(p.job.clone(), p.hash.clone())];
        let port_names: Vec<String> = spec["resources"]["ports"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let announce = crate::job::announce(&p.job, spec, &port_names)
            .map_err(|e| bad_input(format!("{}: {e}", p.task)))?;
        let record = Job {
            key: p.job.clone(),
            ports: port_names.clone(),
            announce,
        };
        let job = match tx.view().jobs.find(&p.job) {
            Some(j) if *tx.view().jobs.get(j).unwrap() == record => j,
            _ => tx.upsert(record),
        };
        let previous = tx
            .view()
            .tasks
            .find(&(job, p.instance))
            .map(|s| tx.view().tasks.get(s).unwrap().clone());
        if let Some(t) = &previous {
            if t.state.holds_resources() && t.state != TaskState::Assigned {
                continue; // placed and started already: the next reap knows its fate
            }
        }
        let mut t = Task::new(job, p.instance);
        t.failures = previous.as_ref().map_or(0, |t| t.failures);
        t.host = h;
        t.state = TaskState::Assigned;
        t.cpus = p.cpus;
        t.ram_mb = p.ram_mb;
        t.disk_mb = p.disk_mb;
        t.gpus = p.gpus;
        for (name, port) in &p.ports {
            let i = port_names.iter().position(|n| n == name).ok_or_else(|| {
                bad_input(format!("{}: port {name} is not one the job names", p.task))
            })?;
            t.ports[i] = *port;
        }
        t.spec = u64::from_str_radix(&p.hash, 16).unwrap_or(0);
        t.since = tx.now();
        if t.host == NO_HOST {
            continue;
        }
        tx.upsert(t);
        to_start.insert(p.task.clone(), tx.now());
    }
    Ok(to_start)
}

/// Writes the task's directory and starts its supervisor, unless one runs already; returns
/// whether this launch started it.
fn start(cli: &Cli, dir: &Path, p: &Placement, job: &Map<String, Value>) -> Result<bool> {
    rundir::create(dir)?;
    // The task's lock is held by its supervisor for life; launch holds it only while it
    // writes the directory. Busy means supervised, or being prepared by a concurrent
    // launch: either way not ours to touch. A supervisor started by two launches at once
    // gives up at once (it cannot take the lock), so nothing starts twice.
    let lock = rundir::lock_file(dir)?;
    if !rundir::lock_exclusive(&lock, Duration::from_millis(100)) {
        return Ok(false);
    }
    let spec = resolve(cli, p, job)?;
    // Not flushed: a spec lost to a power cut is written again by the next launch, which
    // finds its task ASSIGNED without a supervisor.
    let job_json = Value::Object(job.clone()).to_string();
    rundir::replace_file(&dir.join("job.json"), job_json.as_bytes(), false)?;
    rundir::replace_file(
        &dir.join("spec.json"),
        spec.to_json().to_string().as_bytes(),
        false,
    )?;
    let _ = std::fs::remove_file(dir.join("status"));
    let log = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .open(dir.join("supervise.log"))
        .context("creating supervise.log")?;
    drop(lock);
    let mut cmd = Command::new(supervisor()?);
    cmd.arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    unsafe {
        // A session of its own: the supervisor outlives launch and its terminal.
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(io::Error::from)?;
            // Nothing launch inherited (a caller's lock, a pipe) may live on in the
            // supervisor: only fds 0-2 cross.
            crate::supervise::only_std_fds_cross_exec()
        });
    }
    cmd.spawn()
        .with_context(|| format!("starting {}", cmd.get_program().to_string_lossy()))?;
    Ok(true)
}

/// formic-supervise beside launch's own binary, else on PATH.
fn supervisor() -> Result<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .map(|e| e.with_file_name("formic-supervise"));
    Ok(beside
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("formic-supervise")))
}

/// What the supervisor runs: the job's argv with `{{port.NAME}}`, `{{instance}}`,
/// `{{task}}` and `{{host}}` filled in, its environment plus FORMIC_TASK, FORMIC_INSTANCE,
/// FORMIC_HOST and FORMIC_PORT_NAME (and only what --pass-env names of launch's own),
/// its user, and its health check on the port it names.
fn resolve(cli: &Cli, p: &Placement, job: &Map<String, Value>) -> Result<Spec> {
    let f = Fields(job);
    let fill = |s: &str| {
        let mut out = s
            .replace("{{instance}}", &p.instance.to_string())
            .replace("{{task}}", &p.task)
            .replace("{{host}}", &p.host);
        for (name, port) in &p.ports {
            out = out.replace(&format!("{{{{port.{name}}}}}"), &port.to_string());
        }
        out
    };
    let cmd: Vec<String> = f
        .array("cmd")
        .ok()
        .flatten()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(fill))
        .collect();
    let argv = if job.get("shell").and_then(Value::as_bool) == Some(true) {
        vec!["/bin/sh".to_string(), "-c".to_string(), cmd.join(" ")]
    } else {
        cmd
    };
    let mut env: Vec<(String, String)> = Vec::new();
    for name in &cli.pass_env {
        if let Ok(v) = std::env::var(name) {
            env.push((name.clone(), v));
        }
    }
    for (k, v) in f.object("env").ok().flatten().into_iter().flatten() {
        if let Some(v) = v.as_str() {
            env.push((k.clone(), fill(v)));
        }
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()));
    }
    env.push(("FORMIC_TASK".into(), p.task.clone()));
    env.push(("FORMIC_INSTANCE".into(), p.instance.to_string()));
    env.push(("FORMIC_HOST".into(), p.host.clone()));
    for (name, port) in &p.ports {
        env.push((
            format!("FORMIC_PORT_{}", name.to_uppercase().replace('-', "_")),
            port.to_string(),
        ));
    }
    // A job that names no user gets an identity of its own (root only with --allow-root).
    let as_root = nix::unistd::Uid::effective().is_root();
    let user = f.str("user").ok().flatten().map(String::from);
    let dynamic_ids = (user.is_none() && as_root && !cli.allow_root).then_some(cli.uid_range);
    let health = f.object("health").ok().flatten().and_then(|h| {
        let cmd: Vec<String> = h
            .get("cmd")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(fill)).collect())
            .unwrap_or_default();
        let port = match h.get("port").and_then(Value::as_str) {
            Some(name) => p.ports.iter().find(|(n, _)| n == name)?.1,
            None if !cmd.is_empty() => 0,
            None => return None,
        };
        Some(Health {
            port,
            path: h
                .get("http")
                .and_then(Value::as_str)
                .unwrap_or("/")
                .to_string(),
            cmd,
            interval_s: h.get("interval_s").and_then(Value::as_f64).unwrap_or(10.0),
            timeout_s: h.get("timeout_s").and_then(Value::as_f64).unwrap_or(1.0),
            failures: h.get("failures").and_then(Value::as_u64).unwrap_or(3) as u32,
        })
    });
    Ok(Spec {
        task: p.task.clone(),
        argv,
        env,
        user,
        dynamic_ids,
        allow_root: cli.allow_root,
        grace_s: cli.grace,
        log_max_bytes: 16 << 20,
        log_group: Some(cli.log_group.clone()),
        health,
        limits: crate::limits::Limits {
            cpus: p.cpus,
            ram_mb: p.ram_mb,
            pids: job
                .get("resources")
                .and_then(|r| r.get("pids"))
                .and_then(Value::as_u64)
                .map_or(crate::limits::DEFAULT_PIDS, |n| n as u32),
        },
    })
}
