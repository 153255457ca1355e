//! `pack`: the placement engine. Desired jobs (job files) + offers (stdin) + what already
//! runs (the state, when given) -> place, preempt, kill and pending records on stdout.
//!
//! Without a state it is a pure function of its inputs: the same input gives the same
//! output, byte for byte. Reading and checking happen first, so bad input (exit 65) emits
//! nothing; then the loop in `place` decides; then the records are written.

mod fleet;
mod output;
mod place;

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use serde_json::json;

use crate::cli::{self, OutputArgs};
use crate::exit::{bad_input, status_of, Status, TABLE};
use crate::job::{self, JobSpec, Tier};
use crate::records::{self, Record};
use crate::state::{State, View};
use crate::task::{TaskState, NO_HOST};

pub use fleet::Fleet;
pub use place::{lower_bound, Strategy};
use place::{Class, Placer, Reason, Scratch};

/// Decide where every instance runs
///
/// Reads offers (JSON lines, as `offer` prints them) on standard input and job specs from
/// files, and prints a `place` record for each instance it placed, `preempt` records before
/// the placements that need them, `pending` records with every reason and how many hosts
/// gave it, and `kill` records for surplus instances. Lines of other types pass through.
/// With --state it also reads what already runs and places only what is missing; without
/// it, it is a pure function of its inputs.
#[derive(Parser, Debug)]
#[command(name = "pack", version, after_help = TABLE)]
pub struct Cli {
    /// Job files (one job object, or JSON lines of jobs), or directories of *.json and
    /// *.jsonl job files
    #[arg(value_name = "JOB_FILE|DIR")]
    pub jobs: Vec<PathBuf>,
    /// Read what already runs from this state file and place only what is missing
    #[arg(long, env = "FORMIC_STATE", value_name = "PATH")]
    pub state: Option<PathBuf>,
    /// binpack: fewest hosts, least stranded capacity; spread: even load across hosts
    #[arg(
        long,
        value_enum,
        default_value = "binpack",
        env = "FORMIC_STRATEGY",
        value_name = "STRATEGY"
    )]
    pub strategy: StrategyArg,
    /// With --strategy spread: the failure domains to spread each job across, largest
    /// first (attribute names); hosts lacking one count as one domain
    #[arg(
        long,
        value_name = "ATTR,...",
        value_delimiter = ',',
        default_value = "zone,rack",
        env = "FORMIC_SPREAD_BY"
    )]
    pub spread_by: Vec<String>,
    /// With --state: kill the instances of jobs that no job file names
    #[arg(long, requires = "state")]
    pub prune: bool,
    /// Quotas per role (JSON lines: {"role":"www","cpus":64,"ram_mb":262144,"disk_mb":0});
    /// production instances beyond their role's quota stay pending
    #[arg(long, env = "FORMIC_QUOTA", value_name = "FILE")]
    pub quota: Option<PathBuf>,
    /// Print, per host, why TASK (role/env/name/instance) cannot go there, or its score,
    /// instead of the decisions
    #[arg(long, value_name = "TASK")]
    pub explain: Option<String>,
    /// Only check the job files (every job spec, every field, templates and port names)
    /// and exit: 0 when all are good, 65 with one line per problem otherwise; reads no
    /// offers and no state
    #[arg(long, conflicts_with_all = ["state", "explain", "prune"])]
    pub check: bool,
    /// Print one JSON object of counts and timings on standard error
    #[arg(long)]
    pub stats: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum StrategyArg {
    Binpack,
    Spread,
}

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

/// Everything pack read, checked.
pub struct Input {
    pub fleet: Fleet,
    pub jobs: Vec<JobSpec>,
    pub passthrough: Vec<String>,
    pub running: Vec<Running>,
    pub quota: HashMap<String, [u64; 3]>,
    pub now: f64,
    /// `running` was read from a state: placements name the incarnation they create, so
    /// launch can tell whether the view they were decided on still holds.
    pub from_state: bool,
    /// Job files, lines or jobs that could not be read (their jobs are not placed).
    pub job_errors: Vec<String>,
}

/// A task the state says exists, with what pack needs of it.
pub struct Running {
    pub task: String,
    pub job_key: String,
    pub instance: u32,
    pub state: TaskState,
    pub not_before: f64,
    /// Offered host, if the task's host is offered.
    pub host: Option<usize>,
    /// Attribute values of its host, by name (for limits on hosts not offered).
    pub attrs: Vec<(String, String)>,
    pub cpus: u32,
    pub ram_mb: u64,
    pub disk_mb: u64,
    pub gpus: u32,
    pub ports: Vec<u16>,
    /// Failures so far (reap counts them for the restart policy).
    pub failures: u16,
    pub incarnation: u32,
}

/// The decisions and what the summary reports.
pub struct Outcome {
    pub decisions: Vec<Decision>,
    pub ports: Vec<u16>,
    pub reasons: Vec<Vec<(String, u32)>>,
    pub placed: usize,
    pub pending: usize,
    pub preempted: usize,
    pub hosts_used: usize,
    pub lower_bound: usize,
    /// For --explain: the compiled classes and scratch, by job.
    classes: Vec<Option<Class>>,
}

pub fn run(cli: Cli) -> Result<Status> {
    if cli.check {
        return check(&cli.jobs);
    }
    let t0 = Instant::now();
    let mut input = read_input(&cli, io::stdin().lock())?;
    let parse_ms = ms(t0);
    let strategy = match cli.strategy {
        StrategyArg::Binpack => Strategy::Binpack,
        StrategyArg::Spread => Strategy::Spread,
    };
    if strategy == Strategy::Spread {
        input.fleet.spread_by(&cli.spread_by);
    }
    let t1 = Instant::now();
    // A job whose file could not be read is not a removed job: nothing is pruned then.
    let prune = cli.prune && input.job_errors.is_empty();
    let outcome = decide(&mut input, strategy, prune);
    let place_ms = ms(t1);
    let t2 = Instant::now();
    let stdout = io::stdout();
    widen_pipe(&stdout);
    let mut out = io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let written = match &cli.explain {
        Some(task) => explain(&mut out, &input, &outcome, task, cli.output.human()),
        None => output::write(&mut out, &input, &outcome),
    };
    written
        .and_then(|()| out.flush().map_err(Into::into))
        .context("writing output")?;
    let write_ms = ms(t2);
    if cli.stats {
        let stats = json!({
            "placed": outcome.placed, "pending": outcome.pending, "preempted": outcome.preempted,
            "hosts_used": outcome.hosts_used, "lower_bound": outcome.lower_bound,
            "parse_ms": parse_ms, "place_ms": place_ms, "write_ms": write_ms,
            "peak_rss_mb": peak_rss_mb(),
        });
        eprintln!("{stats}");
    }
    crate::exit::refuse_batch(
        "pack",
        &input.job_errors,
        "job files, lines or jobs",
        if cli.prune {
            "every other job was placed, and nothing was pruned"
        } else {
            "every other job was placed"
        },
    )?;
    Ok(if outcome.pending > 0 {
        Status::Partial
    } else {
        Status::Done
    })
}

/// `pack --check`: the job files alone.
fn check(paths: &[PathBuf]) -> Result<Status> {
    if paths.is_empty() {
        return Err(crate::exit::fail(Status::Usage, "--check needs job files"));
    }
    let read = job::read_all(paths);
    crate::exit::refuse_batch("pack", &read.errors, "job files, lines or jobs", "checked")?;
    eprintln!("pack: {} jobs, all good", read.jobs.len());
    Ok(Status::Done)
}

/// A million records through a 64 KiB pipe is thousands of context switches; a 1 MiB pipe
/// buffer lets pack and its reader each work in long stretches. Not a pipe, or not
/// allowed: nothing changes.
fn widen_pipe(stdout: &io::Stdout) {
    use std::os::fd::AsRawFd;
    let _ = nix::fcntl::fcntl(
        stdout.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20),
    );
}

fn ms(since: Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 1e5).round() / 100.0
}

fn peak_rss_mb() -> f64 {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF);
    usage.map_or(0.0, |u| (u.max_rss() as f64 / 1024.0 * 10.0).round() / 10.0)
}

/// Reads offers from `stdin`, jobs from their files, and the state if given. Every problem
/// is reported; any problem fails the whole run before a record is written.
pub fn read_input(cli: &Cli, stdin: impl io::BufRead) -> Result<Input> {
    let job::Read {
        jobs,
        errors: job_errors,
    } = job::read_all(&cli.jobs);
    let mut fleet = Fleet::default();
    let mut passthrough = Vec::new();
    let mut errors = Vec::new();
    for item in records::Reader::new(stdin) {
        let rec: Record = match item {
            Ok(r) => r,
            Err(e) if status_of(&e) == Status::BadInput => {
                errors.push(format!("{e:#}"));
                continue;
            }
            Err(e) => return Err(e),
        };
        if rec.kind() != "offer" {
            passthrough.push(rec.raw);
            continue;
        }
        if let Err(e) = fleet.add_offer(&rec) {
            errors.push(format!("line {}: {e}", rec.line));
        }
    }
    crate::exit::refuse_batch("pack", &errors, "offers", "nothing was placed")?;
    let quota = match &cli.quota {
        Some(path) => read_quota(path)?,
        None => HashMap::new(),
    };
    let running = match &cli.state {
        Some(path) => running(State::open(path)?.view(), &fleet),
        None => Vec::new(),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    Ok(Input {
        fleet,
        jobs,
        passthrough,
        running,
        quota,
        now,
        from_state: cli.state.is_some(),
        job_errors,
    })
}

/// A quota file: one object per line, `{"role":"www","cpus":64,"ram_mb":262144,
/// "disk_mb":0}` (a "type" of "quota" is allowed). A resource left out is not limited.
fn read_quota(path: &std::path::Path) -> Result<HashMap<String, [u64; 3]>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading quota file {}", path.display()))?;
    let mut quota = HashMap::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let parsed = (|| -> Result<_, String> {
            let value: serde_json::Value =
                serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
            let fields = value.as_object().ok_or("expected a JSON object")?;
            let f = records::Fields(fields);
            f.only(&["type", "role", "cpus", "ram_mb", "disk_mb"])?;
            if f.str("type")?.is_some_and(|t| t != "quota") {
                return Err("field \"type\": expected \"quota\"".into());
            }
            let role = f
                .str("role")?
                .ok_or("field \"role\" is missing")?
                .to_string();
            let cpus = match f.f64("cpus")? {
                Some(c) if (0.0..=1e9).contains(&c) => crate::host::millicores(c) as u64,
                Some(c) => return Err(format!("field \"cpus\": {c} is out of range")),
                None => u64::MAX,
            };
            let ram = f.count("ram_mb", 1 << 50)?.unwrap_or(u64::MAX);
            let disk = f.count("disk_mb", 1 << 60)?.unwrap_or(u64::MAX);
            Ok((role, [cpus, ram, disk]))
        })();
        let (role, q) =
            parsed.map_err(|e| bad_input(format!("{}: line {}: {e}", path.display(), i + 1)))?;
        quota.insert(role, q);
    }
    Ok(quota)
}

/// The tasks of the state that pack must know of: all but the finished ones.
fn running(view: &View, fleet: &Fleet) -> Vec<Running> {
    let mut out = Vec::new();
    for (_, t) in view.tasks.iter() {
        let Some(job) = view.jobs.get(t.job) else {
            continue;
        };
        let host = (t.host != NO_HOST)
            .then(|| view.hosts.get(t.host))
            .flatten();
        out.push(Running {
            task: format!("{}/{}", job.key, t.instance),
            job_key: job.key.clone(),
            instance: t.instance,
            state: t.state,
            not_before: t.not_before,
            host: host.and_then(|h| fleet.by_name.get(&h.name).map(|&i| i as usize)),
            attrs: host.map(|h| h.attrs.clone()).unwrap_or_default(),
            cpus: t.cpus,
            ram_mb: t.ram_mb,
            disk_mb: t.disk_mb,
            gpus: t.gpus,
            ports: t.ports.iter().copied().filter(|&p| p != 0).collect(),
            failures: t.failures,
            incarnation: t.incarnation,
        });
    }
    out.sort_by(|a, b| a.job_key.cmp(&b.job_key).then(a.instance.cmp(&b.instance)));
    out
}

/// The state of one decision run: the fleet as it fills, and what has been decided.
struct Run<'a> {
    fleet: &'a mut Fleet,
    jobs: &'a [JobSpec],
    running: &'a [Running],
    by_key: HashMap<&'a str, usize>,
    placer: Placer,
    scratch: Scratch,
    classes: Vec<Option<Class>>,
    /// Each job's role, as an index into `used` and `role_quota`.
    role_of: Vec<usize>,
    /// Production reservations and quota per role (cpus, ram_mb, disk_mb).
    used: Vec<[u64; 3]>,
    role_quota: Vec<Option<[u64; 3]>>,
    /// Preemptible running tasks per offered host, and which have been preempted.
    victims: HashMap<usize, Vec<usize>>,
    preempted_tasks: Vec<bool>,
    throttled: HashMap<(usize, u32), f64>,
    /// Per job: why its instances stopped being placeable (set once one fits nowhere).
    stuck: Vec<Option<&'static str>>,
    decisions: Vec<Decision>,
    ports: Vec<u16>,
    reasons: Vec<Vec<(String, u32)>>,
    reason_of_job: HashMap<usize, usize>,
    hosts_used: Vec<bool>,
    counts: [usize; 3],
    demand: [u64; 4],
}

/// Whether a batch (not service) instance is over: finished, or failed as many times as its
/// job's restart policy allows (`restart.max_failures`, 1 when not given).
fn batch_done(spec: &JobSpec, r: &Running) -> bool {
    if spec.service {
        return false;
    }
    let max = spec.restart.max_failures;
    r.state == TaskState::Finished || (r.state == TaskState::Failed && r.failures as u64 >= max)
}

/// The whole decision: what exists, which instances are missing, then the loop.
pub fn decide(input: &mut Input, strategy: Strategy, prune: bool) -> Outcome {
    let Input {
        fleet,
        jobs,
        running,
        quota,
        now,
        ..
    } = input;
    // The least cpus and memory any GPU job needs per GPU: a host left with less than this
    // beside idle GPUs has stranded them.
    let per_gpu =
        jobs.iter()
            .filter(|j| j.resources.gpus > 0)
            .fold(None, |acc: Option<(u64, u64)>, j| {
                let r = &j.resources;
                let need = (r.cpus as u64 / r.gpus as u64, r.ram_mb / r.gpus as u64);
                Some(acc.map_or(need, |(c, m)| (c.min(need.0), m.min(need.1))))
            });
    let start_caps: [Vec<u64>; 4] = [
        fleet.ref_cpus.iter().map(|&c| c as u64).collect(),
        fleet.ram_mb.clone(),
        fleet.disk_mb.clone(),
        fleet.gpus.iter().map(|&g| g as u64).collect(),
    ];
    let scale = [
        fleet.ref_cpus.iter().copied().max().unwrap_or(0) as u64,
        fleet.ram_mb.iter().copied().max().unwrap_or(0),
    ];
    let mut in_use = vec![false; fleet.len()];
    for r in running.iter().filter(|r| r.state.holds_resources()) {
        if let Some(h) = r.host {
            in_use[h] = true;
        }
    }
    let mut run = Run {
        placer: Placer::new(fleet, strategy, per_gpu, &in_use),
        scratch: Scratch::new(fleet.len()),
        hosts_used: vec![false; fleet.len()],
        fleet,
        jobs,
        running,
        by_key: jobs
            .iter()
            .enumerate()
            .map(|(i, j)| (j.key.as_str(), i))
            .collect(),
        classes: (0..jobs.len()).map(|_| None).collect(),
        role_of: Vec::new(),
        used: Vec::new(),
        role_quota: Vec::new(),
        victims: HashMap::new(),
        preempted_tasks: vec![false; running.len()],
        throttled: HashMap::new(),
        stuck: vec![None; jobs.len()],
        decisions: Vec::new(),
        ports: Vec::new(),
        reasons: Vec::new(),
        reason_of_job: HashMap::new(),
        counts: [0; 3],
        demand: [0; 4],
    };
    // Roles are numbered once here, so the loop indexes rather than hashes.
    let mut roles: HashMap<&str, usize> = HashMap::new();
    for spec in jobs.iter() {
        let next = roles.len();
        let r = *roles.entry(spec.role()).or_insert(next);
        run.role_of.push(r);
        if r == run.used.len() {
            run.used.push([0; 3]);
            run.role_quota.push(quota.get(spec.role()).copied());
        }
    }
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
    let mut want = [0u64; 4];
    for (j, spec) in jobs.iter().enumerate() {
        let n = missing[j].len() as u64;
        let r = &spec.resources;
        for (d, amount) in [r.cpus as u64, r.ram_mb, r.disk_mb, r.gpus as u64]
            .into_iter()
            .enumerate()
        {
            want[d] += n * amount;
        }
    }
    let oversubscribed = (0..4).any(|d| want[d] > start_caps[d].iter().sum::<u64>());
    let gpu_scale = fleet_gpus_max(run.fleet);
    let order = place::order(jobs, [scale[0], scale[1], gpu_scale], oversubscribed);
    for group in place::groups(jobs, &order) {
        // Jobs with limits are placed one after the other, each with its own counts. The
        // others are interleaved instance by instance between those heavier in cpus and
        // those heavier in memory, so hosts fill with a mix rather than strand one resource.
        let (sequential, free): (Vec<usize>, Vec<usize>) = group
            .iter()
            .partition(|&&j| run.class(j).has_limits() || jobs[j].resources.gpus > 0);
        for j in sequential {
            run.scratch.load(run.classes[j].as_ref().unwrap());
            for &instance in &missing[j] {
                run.place_one(j, instance);
            }
        }
        let (cpu_heavy, ram_heavy): (Vec<usize>, Vec<usize>) = free.iter().partition(|&&j| {
            let r = &jobs[j].resources;
            r.cpus as f64 / scale[0].max(1) as f64 >= r.ram_mb as f64 / scale[1].max(1) as f64
        });
        let mut streams = [
            Stream::new(cpu_heavy, &missing),
            Stream::new(ram_heavy, &missing),
        ];
        while let Some(s) = Stream::next_turn(&streams) {
            let (j, instance) = streams[s].take(&missing);
            run.place_one(j, instance);
        }
    }
    let caps = [
        &start_caps[0][..],
        &start_caps[1][..],
        &start_caps[2][..],
        &start_caps[3][..],
    ];
    Outcome {
        lower_bound: lower_bound(caps, run.demand),
        hosts_used: run.hosts_used.iter().filter(|&&u| u).count(),
        placed: run.counts[0],
        pending: run.counts[1],
        preempted: run.counts[2],
        decisions: run.decisions,
        ports: run.ports,
        reasons: run.reasons,
        classes: run.classes,
    }
}

fn fleet_gpus_max(fleet: &Fleet) -> u64 {
    fleet.gpus.iter().copied().max().unwrap_or(0) as u64
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

impl Run<'_> {
    fn class(&mut self, j: usize) -> &mut Class {
        let (jobs, fleet) = (self.jobs, &mut *self.fleet);
        self.classes[j].get_or_insert_with(|| Class::compile(j, &jobs[j], fleet))
    }

    /// Reads what the state says runs: kills for surplus and removed jobs, counts for limits
    /// and quota, victims for preemption, backoff times. Returns the instances present.
    fn take_stock(&mut self, now: f64, prune: bool) -> Vec<Vec<bool>> {
        let mut present: Vec<Vec<bool>> = self
            .jobs
            .iter()
            .map(|j| vec![false; j.instances as usize])
            .collect();
        for (ri, r) in self.running.iter().enumerate() {
            let Some(&j) = self.by_key.get(r.job_key.as_str()) else {
                if prune && r.state.holds_resources() {
                    self.decisions.push(Decision::Kill {
                        task: r.task.clone(),
                        incarnation: r.incarnation,
                        reason: "job removed",
                    });
                    self.free_room_of(r);
                }
                continue;
            };
            let spec = &self.jobs[j];
            if r.instance < spec.instances && batch_done(spec, r) {
                // A batch instance that finished, or failed for the last time, is done:
                // not placed again.
                present[j][r.instance as usize] = true;
                continue;
            }
            if r.state.holds_resources() {
                if r.instance >= spec.instances {
                    // Killed in this pass: it counts for nothing and its room is free.
                    self.decisions.push(Decision::Kill {
                        task: r.task.clone(),
                        incarnation: r.incarnation,
                        reason: "surplus instance",
                    });
                    self.free_room_of(r);
                    continue;
                }
                present[j][r.instance as usize] = true;
                self.class(j);
                let fleet = &*self.fleet;
                let values = |col: usize| {
                    let name = fleet.attrs.key_name(col);
                    r.attrs
                        .iter()
                        .find(|(k, _)| k == name)
                        .and_then(|(_, v)| fleet.attrs.lookup(col, v))
                        .unwrap_or(fleet::NONE)
                };
                let class = self.classes[j].as_mut().unwrap();
                class.count(fleet, r.host, &values, &mut self.scratch);
                match (spec.tier, r.host) {
                    (Tier::Production, _) => self.charge(j),
                    (Tier::Preemptible, Some(h)) => self.victims.entry(h).or_default().push(ri),
                    (Tier::Preemptible, None) => {}
                }
            } else if r.state == TaskState::Throttled
                && r.not_before > now
                && r.instance < spec.instances
            {
                self.throttled.insert((j, r.instance), r.not_before);
            }
        }
        present
    }

    /// A task that this pass kills frees its room for this pass: reap stops what pack kills
    /// before it passes the placements on to launch.
    fn free_room_of(&mut self, r: &Running) {
        if let Some(h) = r.host {
            self.fleet
                .release(h, r.cpus, r.ram_mb, r.disk_mb, r.gpus, &r.ports);
            self.placer.update(self.fleet, h);
        }
    }

    /// Places one instance of job `j`, or records it pending. The class's limit counts must
    /// be loaded in the scratch when the class has limits.
    fn place_one(&mut self, j: usize, instance: u32) {
        let spec = &self.jobs[j];
        let r = &spec.resources;
        for (d, amount) in [r.cpus as u64, r.ram_mb, r.disk_mb, r.gpus as u64]
            .into_iter()
            .enumerate()
        {
            self.demand[d] += amount;
        }
        let throttled = if self.throttled.is_empty() {
            None
        } else {
            self.throttled.get(&(j, instance))
        };
        if let Some(until) = throttled {
            self.reasons
                .push(vec![(format!("throttled until {until:.0}"), 1)]);
            self.decisions.push(Decision::Pending {
                job: j,
                instance,
                reasons: self.reasons.len() - 1,
            });
            self.counts[1] += 1;
            return;
        }
        if self.stuck[j].is_none() && spec.tier == Tier::Production {
            if let Some(q) = self.role_quota[self.role_of[j]] {
                let u = self.used[self.role_of[j]];
                let want = [u[0] + r.cpus as u64, u[1] + r.ram_mb, u[2] + r.disk_mb];
                if want.iter().zip(q).any(|(w, q)| *w > q) {
                    self.stuck[j] = Some("quota");
                }
            }
        }
        let class = self.classes[j]
            .take()
            .unwrap_or_else(|| Class::compile(j, spec, self.fleet));
        let host = match self.stuck[j] {
            Some(_) => None,
            None => self
                .placer
                .find(self.fleet, &class, &self.scratch)
                .or_else(|| self.preempt_for(&class, instance)),
        };
        match host {
            Some(h) => {
                let (cpus, given) =
                    self.fleet
                        .reserve(h, r.cpus, r.ram_mb, r.disk_mb, r.gpus, r.ports.len());
                self.placer.update(self.fleet, h);
                let mut class = class;
                class.count(self.fleet, Some(h), &|_| fleet::NONE, &mut self.scratch);
                self.classes[j] = Some(class);
                let at = self.ports.len();
                self.ports.extend(given);
                self.decisions.push(Decision::Place {
                    job: j,
                    instance,
                    host: h as u32,
                    cpus,
                    ports: at..self.ports.len(),
                });
                self.hosts_used[h] = true;
                self.counts[0] += 1;
                if spec.tier == Tier::Production {
                    self.charge(j);
                }
            }
            None => {
                // Instances of a job are identical: once one fits nowhere, the rest cannot
                // fit either, and share its reasons.
                let why = *self.stuck[j].get_or_insert("");
                let idx = match self.reason_of_job.get(&j) {
                    Some(&idx) => idx,
                    None => {
                        self.reasons.push(match why {
                            "quota" => vec![("quota".to_string(), 1)],
                            _ => reasons_for(self.fleet, &class, &self.scratch, spec),
                        });
                        self.reason_of_job.insert(j, self.reasons.len() - 1);
                        self.reasons.len() - 1
                    }
                };
                self.classes[j] = Some(class);
                self.decisions.push(Decision::Pending {
                    job: j,
                    instance,
                    reasons: idx,
                });
                self.counts[1] += 1;
            }
        }
    }

    /// Counts one production instance of job `j` against its role's quota.
    fn charge(&mut self, j: usize) {
        let r = &self.jobs[j].resources;
        let u = &mut self.used[self.role_of[j]];
        u[0] += r.cpus as u64;
        u[1] += r.ram_mb;
        u[2] += r.disk_mb;
    }

    /// A production instance that fits nowhere: stops preemptible instances on the host
    /// needing the fewest, and returns that host.
    fn preempt_for(&mut self, class: &Class, instance: u32) -> Option<usize> {
        let spec = &self.jobs[class.job];
        if spec.tier != Tier::Production {
            return None;
        }
        let (h, chosen) = preemption(
            self.fleet,
            class,
            &self.scratch,
            self.running,
            &self.victims,
            &self.preempted_tasks,
            self.jobs,
            &self.by_key,
        )?;
        for v in chosen {
            let t = &self.running[v];
            self.preempted_tasks[v] = true;
            self.fleet
                .release(h, t.cpus, t.ram_mb, t.disk_mb, t.gpus, &t.ports);
            self.decisions.push(Decision::Preempt {
                victim: t.task.clone(),
                incarnation: t.incarnation,
                host: h as u32,
                job: class.job,
                instance,
            });
            self.counts[2] += 1;
        }
        self.placer.update(self.fleet, h);
        Some(h)
    }
}

/// Every reason the hosts give, with how many gave it (most first, then by name).
fn reasons_for(
    fleet: &Fleet,
    class: &Class,
    scratch: &Scratch,
    spec: &JobSpec,
) -> Vec<(String, u32)> {
    if fleet.is_empty() {
        return vec![("no offers".into(), 0)];
    }
    let mut counts: HashMap<Reason, u32> = HashMap::new();
    for h in 0..fleet.len() {
        if let Err(r) = class.check(fleet, scratch, h) {
            *counts.entry(r).or_default() += 1;
        }
    }
    // Two constraints on one attribute describe themselves alike: count by the text.
    let mut by_text: HashMap<String, u32> = HashMap::new();
    for (r, n) in counts {
        *by_text.entry(class.describe(spec, r)).or_default() += n;
    }
    let mut out: Vec<(String, u32)> = by_text.into_iter().collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

/// For a production instance that fits nowhere: the offered host where the fewest
/// preemptible instances (lowest priority first) must stop to make room, and those
/// instances.
#[allow(clippy::too_many_arguments)]
fn preemption(
    fleet: &Fleet,
    class: &Class,
    scratch: &Scratch,
    running: &[Running],
    victims: &HashMap<usize, Vec<usize>>,
    gone: &[bool],
    jobs: &[JobSpec],
    by_key: &HashMap<&str, usize>,
) -> Option<(usize, Vec<usize>)> {
    let priority = |v: usize| {
        by_key
            .get(running[v].job_key.as_str())
            .map_or(0, |&j| jobs[j].priority)
    };
    let [need_cpu, need_ram, need_gpus] = class.demand();
    let fits = |h: usize, set: &[usize]| {
        let (mut cpus, mut ram, mut disk, mut gpus, mut ports) = (
            fleet.cpus[h],
            fleet.ram_mb[h],
            fleet.disk_mb[h],
            fleet.gpus[h] as u64,
            fleet.ports[h],
        );
        for &v in set {
            let t = &running[v];
            cpus += t.cpus;
            ram += t.ram_mb;
            disk += t.disk_mb;
            gpus += t.gpus as u64;
            ports += t.ports.len() as u32;
        }
        fleet::ref_milli(cpus, fleet.cpu_factor[h]) as u64 >= need_cpu
            && ram >= need_ram
            && disk >= class.disk_need()
            && gpus >= need_gpus
            && ports >= class.ports_need()
    };
    let mut hosts: Vec<&usize> = victims.keys().collect();
    hosts.sort();
    // (host, victims, worst victim priority)
    let mut best: Option<(usize, Vec<usize>, i64)> = None;
    for &h in hosts {
        match class.check(fleet, scratch, h) {
            Ok(()) => return Some((h, Vec::new())),
            Err(Reason::Cpus | Reason::Ram | Reason::Disk | Reason::Gpus | Reason::Ports) => {}
            Err(_) => continue, // constraints do not change by stopping anything
        }
        let mut list: Vec<usize> = victims[&h].iter().copied().filter(|&v| !gone[v]).collect();
        list.sort_by_key(|&v| (priority(v), std::cmp::Reverse(running[v].cpus), v));
        let Some(enough) = (1..=list.len()).find(|&n| fits(h, &list[..n])) else {
            continue;
        };
        let mut chosen = list[..enough].to_vec();
        // Taking victims in order may take one that a later, larger one made unnecessary:
        // give back every victim the room does not need, the most valuable first.
        for i in (0..chosen.len()).rev() {
            let without: Vec<usize> = chosen
                .iter()
                .enumerate()
                .filter(|&(k, _)| k != i)
                .map(|(_, &v)| v)
                .collect();
            if fits(h, &without) {
                chosen = without;
            }
        }
        let worst = chosen
            .iter()
            .map(|&v| priority(v) as i64)
            .max()
            .unwrap_or(i64::MIN);
        if best
            .as_ref()
            .is_none_or(|(_, c, p)| (chosen.len(), worst) < (c.len(), *p))
        {
            best = Some((h, chosen, worst));
        }
    }
    best.map(|(h, chosen, _)| (h, chosen))
}

/// `--explain TASK`: per host, why the task cannot go there, or its score.
fn explain(
    out: &mut impl Write,
    input: &Input,
    outcome: &Outcome,
    task: &str,
    human: bool,
) -> Result<()> {
    let (key, instance) = task
        .rsplit_once('/')
        .and_then(|(k, i)| Some((k, i.parse::<u32>().ok()?)))
        .ok_or_else(|| {
            bad_input(format!(
                "--explain {task:?}: expected role/env/name/instance"
            ))
        })?;
    let j = input
        .jobs
        .iter()
        .position(|s| s.key == key)
        .ok_or_else(|| bad_input(format!("--explain: no job {key} in the job files")))?;
    let spec = &input.jobs[j];
    if instance >= spec.instances {
        return Err(bad_input(format!(
            "--explain: job {key} has {} instances",
            spec.instances
        )));
    }
    let fleet = &input.fleet;
    let Some(class) = &outcome.classes[j] else {
        writeln!(
            out,
            "{}",
            json!({"type":"explain","task":task,"placed":null,"note":"already running"})
        )?;
        return Ok(());
    };
    let mut scratch = Scratch::new(fleet.len());
    scratch.load(class);
    let placed_on = outcome.decisions.iter().find_map(|d| match d {
        Decision::Place {
            job,
            instance: i,
            host,
            ..
        } if *job == j && *i == instance => Some(*host as usize),
        _ => None,
    });
    let scale = [
        fleet.ref_cpus.iter().copied().max().unwrap_or(0) as u64,
        fleet.ram_mb.iter().copied().max().unwrap_or(0),
    ];
    let mut rows = Vec::new();
    let mut order: Vec<usize> = (0..fleet.len()).collect();
    order.sort_by(|&a, &b| fleet.names[a].cmp(&fleet.names[b]));
    for h in order {
        let verdict = class.check(fleet, &scratch, h);
        let (fits, why) = match verdict {
            Ok(()) => (true, format!("score {}", fleet_score(fleet, scale, h))),
            Err(r) => (false, class.describe(spec, r)),
        };
        rows.push((fleet.names[h].clone(), fits, why));
    }
    if human {
        if let Some(h) = placed_on {
            writeln!(
                out,
                "{task} placed on {}; as the fleet stands after placement:",
                fleet.names[h]
            )?;
        }
        let table: Vec<Vec<String>> = rows
            .into_iter()
            .map(|(h, f, w)| vec![h, if f { "yes" } else { "no" }.into(), w])
            .collect();
        out.write_all(cli::table(&["HOST", "FITS", "WHY"], &table).as_bytes())?;
    } else {
        let placed = placed_on.map(|h| fleet.names[h].clone());
        writeln!(
            out,
            "{}",
            json!({"type":"explain","task":task,"placed":placed})
        )?;
        for (host, fits, why) in rows {
            let rec = if fits {
                json!({"type":"explain","task":task,"host":host,"fits":true,"score":why.trim_start_matches("score ").parse::<f64>().unwrap_or(0.0)})
            } else {
                json!({"type":"explain","task":task,"host":host,"fits":false,"reason":why})
            };
            writeln!(out, "{rec}")?;
        }
    }
    Ok(())
}

/// How full a host is, from 0 (as free as the largest host) to 1 (full), by its scarcest
/// resource against the fleet's largest: binpack prefers higher scores, spread lower ones.
fn fleet_score(fleet: &Fleet, scale: [u64; 2], h: usize) -> f64 {
    let cpu = fleet.ref_cpus[h] as f64 / scale[0].max(1) as f64;
    let ram = fleet.ram_mb[h] as f64 / scale[1].max(1) as f64;
    ((1.0 - cpu.min(ram)) * 1000.0).round() / 1000.0
}
