//! pack benchmark: speed and memory at a million instances, packing quality against the
//! lower bound, against plain baselines (first-fit decreasing, best fit) and against the
//! exact optimum (OR-Tools CP-SAT), and the real Alibaba GPU 2023 trace.
//! Run: `scripts/bench-pack` (installs ortools if missing, then `cargo bench --bench pack`).
//! `scripts/bench-pack scale|trace|optimum` runs one section.
//!
//! `scripts/bench-pack shapes` (run only when named: about 10 minutes) runs the workload
//! shapes of issue 13 at 1k, 10k and 100k hosts, about 10 instances per host, so that the
//! growth of pack's cost shows: a mixed fleet (five hardware generations, cpu:ram from 3.2
//! to 8 GiB per reference core, cpu_factor 0.8 and 1.25 on two of them) with jobs of many
//! sizes, cpu-heavy and ram-heavy, at 75% of capacity (a); the same with a fifth of the jobs
//! host:1 (b); at 1.5 × capacity (c); two host-sized one-instance jobs per host at 1.5 × (d);
//! hosts/5 jobs each excluding one host with `not` (e); the mixed workload with
//! `--strategy spread` (f); and the reproductions: binpack of 15-core / 1 GiB
//! instances on 16-core / 256 GiB hosts against 15 cores / 240 GiB (g, h; 10k, 20k and 40k
//! hosts), one job host:1 of 10 × hosts instances (i). A line per (shape, size): place_ms,
//! wall, peak RSS, placed, pending, placements per second, hosts used against the lower
//! bound and FFD, and the pending jobs that would still fit after the fact. Each run is
//! killed after 600 s (FORMIC_PACK_CAP_S) with an "over 600 s" line; runs under 10 s are
//! repeated (FORMIC_BENCH_ROUNDS, 3) and the median by place_ms kept;
//! FORMIC_SHAPES_MAX_HOSTS=10000 leaves out the larger sizes.
//!
//! pack always runs as the real release binary, one process per placement, on files this
//! driver writes to a temporary directory; its decisions are read back and checked (no host
//! over capacity, no constraint broken) before they are counted. The baselines run here, in
//! the driver's process, on the same workload, so every figure of pack can be given as a
//! ratio against them measured on the same machine in the same minute.

mod common;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{loadavg, ms, Bench};
use serde_json::Value;

/// The scale workload: 10,000 jobs × 100 instances onto 100,000 hosts.
const HOSTS: usize = 100_000;
const JOBS: usize = 10_000;
const PER_JOB: u32 = 100;
/// Small problems solved exactly, and the solver's time limit for each.
const PROBLEMS: usize = 48;
/// Mixed-ratio small problems per family (issue 13).
const MIXED_PROBLEMS: usize = 128;
const SOLVER_SECONDS: f64 = 10.0;

const TRACE_DIR: &str = "../shared/data/alibaba-gpu-2023";

// ---------------------------------------------------------------------------------------
// The workload, as both pack (offer and job records) and the baselines see it.

/// One host. cpus in physical millicores, like pack's fixed point; cpu_factor is 1 but in
/// the shapes section's mixed fleet, so reference and physical cores are mostly the same.
#[derive(Clone)]
struct Host {
    name: String,
    cpus: u32,
    /// Speed of a core against the reference core: jobs ask for reference millicores, of
    /// which the host has `ref_milli(cpus, cpu_factor)`.
    cpu_factor: f64,
    ram_mb: u64,
    disk_mb: u64,
    gpus: u32,
    /// Ports offered (one range from 31000).
    ports: u32,
    /// Attributes other than the GPU model (rack, zone): pack reads them, nothing here
    /// constrains on them.
    attrs: Vec<(&'static str, String)>,
    gpu_model: Option<String>,
}

/// One job: `instances` identical instances.
#[derive(Clone)]
struct Job {
    key: String,
    instances: u32,
    cpus: u32,
    ram_mb: u64,
    disk_mb: u64,
    gpus: u32,
    ports: u32,
    /// The constraint {"attr":"host","limit":1}.
    one_per_host: bool,
    /// The constraint {"attr":"gpu_model","values":[...]}.
    gpu_models: Option<Vec<String>>,
    /// The constraint {"attr":"host","not":[name]}.
    not_host: Option<String>,
}

impl Job {
    /// A job of a small problem: cpus and ram only, perhaps one instance per host.
    fn small(key: String, instances: u32, (cpus, ram_mb): (u32, u64), one_per_host: bool) -> Job {
        Job {
            key,
            instances,
            cpus,
            ram_mb,
            disk_mb: 0,
            gpus: 0,
            ports: 0,
            one_per_host,
            gpu_models: None,
            not_host: None,
        }
    }

    /// The value constraint on gpu_model (a host without a GPU model has no value, and a
    /// "values" constraint excludes it, as in pack) and the `not` constraint on host.
    fn allows(&self, host: &Host) -> bool {
        let model = match (&self.gpu_models, &host.gpu_model) {
            (None, _) => true,
            (Some(models), Some(m)) => models.contains(m),
            (Some(_), None) => false,
        };
        model && self.not_host.as_ref().is_none_or(|n| *n != host.name)
    }
}

struct Workload {
    hosts: Vec<Host>,
    jobs: Vec<Job>,
}

/// Where each placed instance went: (job, host), by index.
type Placements = Vec<(u32, u32)>;

impl Workload {
    fn instances(&self) -> u64 {
        self.jobs.iter().map(|j| j.instances as u64).sum()
    }

    /// Total demand per resource (cpus, ram, disk, gpus), as pack's lower bound counts it.
    fn demand(&self) -> [u64; 4] {
        let mut d = [0u64; 4];
        for j in &self.jobs {
            let n = j.instances as u64;
            d[0] += j.cpus as u64 * n;
            d[1] += j.ram_mb * n;
            d[2] += j.disk_mb * n;
            d[3] += j.gpus as u64 * n;
        }
        d
    }

    fn capacities(&self) -> [Vec<u64>; 4] {
        let col = |f: fn(&Host) -> u64| self.hosts.iter().map(f).collect::<Vec<u64>>();
        [
            col(|h| ref_milli(h.cpus, h.cpu_factor) as u64),
            col(|h| h.ram_mb),
            col(|h| h.disk_mb),
            col(|h| h.gpus as u64),
        ]
    }

    /// The resource lower bound on hosts needed, by the definition pack reports: per
    /// resource, the fewest hosts (largest first) whose capacity covers the demand; the
    /// bound is the largest of those. Computed here independently, to check pack's.
    fn lower_bound(&self) -> usize {
        let demand = self.demand();
        let mut bound = 0;
        for (caps, want) in self.capacities().into_iter().zip(demand) {
            let mut caps = caps;
            caps.sort_unstable_by(|a, b| b.cmp(a));
            let (mut sum, mut n) = (0u64, 0);
            while sum < want && n < caps.len() {
                sum += caps[n];
                n += 1;
            }
            bound = bound.max(n);
        }
        bound
    }

    /// The fleet's largest host per resource (cpus, ram, gpus): the unit of "size".
    fn scale(&self) -> [f64; 3] {
        let max = |f: fn(&Host) -> u64| self.hosts.iter().map(f).max().unwrap_or(0).max(1);
        [
            max(|h| ref_milli(h.cpus, h.cpu_factor) as u64) as f64,
            max(|h| h.ram_mb) as f64,
            max(|h| h.gpus as u64) as f64,
        ]
    }

    /// An instance's size for the decreasing order of FFD: its largest share of the
    /// fleet's largest host in any resource it asks for.
    fn size(&self, j: &Job, scale: [f64; 3]) -> f64 {
        (j.cpus as f64 / scale[0])
            .max(j.ram_mb as f64 / scale[1])
            .max(j.gpus as f64 / scale[2])
    }

    /// Writes the offers (stdin of pack) and the job file.
    fn write(&self, offers: &Path, jobs: &Path) {
        let mut out = BufWriter::new(std::fs::File::create(offers).unwrap());
        for h in &self.hosts {
            let mut attrs = serde_json::Map::new();
            for (k, v) in &h.attrs {
                attrs.insert(k.to_string(), v.clone().into());
            }
            if let Some(m) = &h.gpu_model {
                attrs.insert("gpu_model".into(), m.clone().into());
            }
            let ports: Vec<[u32; 2]> = match h.ports {
                0 => vec![],
                n => vec![[31000, 31000 + n - 1]],
            };
            let rec = serde_json::json!({
                "type": "offer", "host": h.name, "cpus": h.cpus as f64 / 1000.0,
                "ram_mb": h.ram_mb, "disk_mb": h.disk_mb, "gpus": h.gpus, "ports": ports,
                "attrs": attrs, "cpu_factor": h.cpu_factor, "maintenance": "none",
            });
            writeln!(out, "{rec}").unwrap();
        }
        out.flush().unwrap();
        let mut out = BufWriter::new(std::fs::File::create(jobs).unwrap());
        for j in &self.jobs {
            let mut constraints = Vec::new();
            if j.one_per_host {
                constraints.push(serde_json::json!({"attr": "host", "limit": 1}));
            }
            if let Some(models) = &j.gpu_models {
                constraints.push(serde_json::json!({"attr": "gpu_model", "values": models}));
            }
            if let Some(host) = &j.not_host {
                constraints.push(serde_json::json!({"attr": "host", "not": [host]}));
            }
            let ports: Vec<String> = (0..j.ports).map(|p| format!("p{p}")).collect();
            let rec = serde_json::json!({
                "job": j.key, "instances": j.instances, "cmd": ["serve"],
                "resources": {"cpus": j.cpus as f64 / 1000.0, "ram_mb": j.ram_mb,
                              "disk_mb": j.disk_mb, "gpus": j.gpus, "ports": ports},
                "constraints": constraints,
            });
            writeln!(out, "{rec}").unwrap();
        }
        out.flush().unwrap();
    }

    /// Checks placements against capacity and constraints (panics on a violation, naming
    /// it) and returns the number of hosts used.
    fn check(&self, who: &str, placed: &Placements) -> usize {
        let n = self.hosts.len();
        let mut free = Free::new(&self.hosts);
        let mut per_job = vec![0u32; self.jobs.len()];
        let mut pairs = HashSet::new();
        let mut used = vec![false; n];
        for &(j, h) in placed {
            let (job, host) = (&self.jobs[j as usize], &self.hosts[h as usize]);
            per_job[j as usize] += 1;
            assert!(
                per_job[j as usize] <= job.instances,
                "{who}: job {} placed more than {} times",
                job.key,
                job.instances
            );
            assert!(
                !job.one_per_host || pairs.insert((j, h)),
                "{who}: job {} twice on {}",
                job.key,
                host.name
            );
            assert!(
                job.allows(host),
                "{who}: job {} on {} breaks its gpu_model or host constraint",
                job.key,
                host.name
            );
            assert!(
                free.has_room(h as usize, job),
                "{who}: {} over capacity with job {}",
                host.name,
                job.key
            );
            free.take(h as usize, job);
            used[h as usize] = true;
        }
        used.iter().filter(|&&u| u).count()
    }
}

impl Workload {
    /// Of the jobs left with instances pending by `placed`, those of which one more
    /// instance would still fit on some host as `placed` leaves the fleet (room in every
    /// resource, its constraints kept, host:1 not broken): pending a placer could have
    /// avoided. Returns (such jobs, jobs with pending instances).
    fn pending_that_fits(&self, placed: &Placements) -> (usize, usize) {
        let mut free = Free::new(&self.hosts);
        let mut per_job = vec![0u32; self.jobs.len()];
        let mut on = HashSet::new();
        for &(j, h) in placed {
            let job = &self.jobs[j as usize];
            free.take(h as usize, job);
            per_job[j as usize] += 1;
            if job.one_per_host {
                on.insert((j, h));
            }
        }
        let index = FirstFitIndex::new(&free);
        let (mut fits, mut pending) = (0, 0);
        for (j, job) in self.jobs.iter().enumerate() {
            if per_job[j] >= job.instances {
                continue;
            }
            pending += 1;
            let mut from = 0;
            while let Some(h) = index.first(from, job.cpus.max(1), job.ram_mb) {
                if free.has_room(h, job)
                    && job.allows(&self.hosts[h])
                    && !(job.one_per_host && on.contains(&(j as u32, h as u32)))
                {
                    fits += 1;
                    break;
                }
                from = h + 1;
            }
        }
        (fits, pending)
    }
}

/// Free capacity per host, struct of arrays, for the baselines and the checker. `cpus` is in
/// reference millicores (what jobs ask for), kept from the physical ones as pack keeps it.
struct Free {
    cpus: Vec<u32>,
    phys: Vec<u32>,
    factor: Vec<f64>,
    ram_mb: Vec<u64>,
    disk_mb: Vec<u64>,
    gpus: Vec<u32>,
    ports: Vec<u32>,
}

impl Free {
    fn new(hosts: &[Host]) -> Free {
        Free {
            cpus: hosts
                .iter()
                .map(|h| ref_milli(h.cpus, h.cpu_factor))
                .collect(),
            phys: hosts.iter().map(|h| h.cpus).collect(),
            factor: hosts.iter().map(|h| h.cpu_factor).collect(),
            ram_mb: hosts.iter().map(|h| h.ram_mb).collect(),
            disk_mb: hosts.iter().map(|h| h.disk_mb).collect(),
            gpus: hosts.iter().map(|h| h.gpus).collect(),
            ports: hosts.iter().map(|h| h.ports).collect(),
        }
    }

    #[inline]
    fn has_room(&self, h: usize, j: &Job) -> bool {
        self.cpus[h] >= j.cpus
            && self.ram_mb[h] >= j.ram_mb
            && self.disk_mb[h] >= j.disk_mb
            && self.gpus[h] >= j.gpus
            && self.ports[h] >= j.ports
    }

    /// Takes an instance off host `h`, charging the physical millicores pack charges
    /// (rounded up) and keeping the reference ones rounded down from what is left.
    fn take(&mut self, h: usize, j: &Job) {
        let phys =
            ((j.cpus as f64 / self.factor[h] - 1e-9).ceil().max(0.0) as u32).min(self.phys[h]);
        self.phys[h] -= phys;
        self.cpus[h] = ref_milli(self.phys[h], self.factor[h]);
        self.ram_mb[h] -= j.ram_mb;
        self.disk_mb[h] -= j.disk_mb;
        self.gpus[h] -= j.gpus;
        self.ports[h] -= j.ports;
    }
}

/// Reference millicores of `phys` physical millicores at `factor`, rounded down: pack's
/// `fleet::ref_milli`.
fn ref_milli(phys: u32, factor: f64) -> u32 {
    ((phys as f64 * factor) + 1e-9).floor().min(u32::MAX as f64) as u32
}

// ---------------------------------------------------------------------------------------
// Baselines, run in this process.

/// A max segment tree over hosts in host order, of free cpus and free ram, answering "the
/// first host at or after `from` with at least this much of both". It only skips hosts that
/// cannot fit, so the first-fit decisions are exactly those of a linear scan.
struct FirstFitIndex {
    leaves: usize,
    cpus: Vec<u32>,
    ram: Vec<u64>,
}

impl FirstFitIndex {
    fn new(free: &Free) -> FirstFitIndex {
        let leaves = free.cpus.len().next_power_of_two();
        let mut t = FirstFitIndex {
            leaves,
            cpus: vec![0; 2 * leaves],
            ram: vec![0; 2 * leaves],
        };
        for h in 0..free.cpus.len() {
            t.cpus[leaves + h] = free.cpus[h];
            t.ram[leaves + h] = free.ram_mb[h];
        }
        for i in (1..leaves).rev() {
            t.cpus[i] = t.cpus[2 * i].max(t.cpus[2 * i + 1]);
            t.ram[i] = t.ram[2 * i].max(t.ram[2 * i + 1]);
        }
        t
    }

    fn update(&mut self, h: usize, free: &Free) {
        let mut i = self.leaves + h;
        self.cpus[i] = free.cpus[h];
        self.ram[i] = free.ram_mb[h];
        while i > 1 {
            i /= 2;
            self.cpus[i] = self.cpus[2 * i].max(self.cpus[2 * i + 1]);
            self.ram[i] = self.ram[2 * i].max(self.ram[2 * i + 1]);
        }
    }

    /// The first host ≥ `from` with cpus ≥ `c` and ram ≥ `r` (c ≥ 1, so padding leaves,
    /// which have nothing, never match).
    fn first(&self, from: usize, c: u32, r: u64) -> Option<usize> {
        self.descend(1, 0, self.leaves, from, c, r)
    }

    fn descend(
        &self,
        node: usize,
        lo: usize,
        len: usize,
        from: usize,
        c: u32,
        r: u64,
    ) -> Option<usize> {
        if lo + len <= from || self.cpus[node] < c || self.ram[node] < r {
            return None;
        }
        if len == 1 {
            return Some(lo);
        }
        let half = len / 2;
        self.descend(2 * node, lo, half, from, c, r)
            .or_else(|| self.descend(2 * node + 1, lo + half, half, from, c, r))
    }
}

/// First-fit decreasing: instances by size, largest first (ties in job order, so a job's
/// instances are consecutive), each to the first host in host order where it fits every
/// resource and its constraints.
fn first_fit_decreasing(w: &Workload) -> Placements {
    let scale = w.scale();
    let mut order: Vec<usize> = (0..w.jobs.len()).collect();
    order.sort_by(|&a, &b| {
        w.size(&w.jobs[b], scale)
            .total_cmp(&w.size(&w.jobs[a], scale))
    });
    let mut free = Free::new(&w.hosts);
    let mut index = FirstFitIndex::new(&free);
    // The last job placed on each host: with a job's instances consecutive, this is the
    // host:1 limit check.
    let mut last_job = vec![u32::MAX; w.hosts.len()];
    let mut placed = Vec::with_capacity(w.instances() as usize);
    for j in order {
        let job = &w.jobs[j];
        // Free capacity only shrinks and constraints do not change, so the hosts before the
        // previous instance's host could not take this identical one either (nor that host
        // itself under host:1): starting there is a shortcut, not a different decision.
        let mut start = 0;
        for _ in 0..job.instances {
            let mut from = start;
            let host = loop {
                let Some(h) = index.first(from, job.cpus, job.ram_mb) else {
                    break None;
                };
                let fits = free.has_room(h, job)
                    && job.allows(&w.hosts[h])
                    && !(job.one_per_host && last_job[h] == j as u32);
                if fits {
                    break Some(h);
                }
                from = h + 1;
            };
            // An instance that fits nowhere leaves its identical siblings nowhere either.
            let Some(h) = host else { break };
            free.take(h, job);
            index.update(h, &free);
            last_job[h] = j as u32;
            placed.push((j as u32, h as u32));
            start = if job.one_per_host { h + 1 } else { h };
        }
    }
    placed
}

/// Best fit, online: instances in the given order (the trace's arrival order), each to the
/// host that fits with the least left over, measured as the sum of its free cpus, ram and
/// gpus after placement as shares of the fleet's largest host (ties: first in host order).
fn best_fit(w: &Workload, arrivals: &[u32]) -> Placements {
    let scale = w.scale();
    let mut free = Free::new(&w.hosts);
    let mut placed = Vec::with_capacity(arrivals.len());
    for &j in arrivals {
        let job = &w.jobs[j as usize];
        let mut best: Option<(f64, usize)> = None;
        for (h, host) in w.hosts.iter().enumerate() {
            if !free.has_room(h, job) || !job.allows(host) {
                continue;
            }
            let left = (free.cpus[h] - job.cpus) as f64 / scale[0]
                + (free.ram_mb[h] - job.ram_mb) as f64 / scale[1]
                + (free.gpus[h] - job.gpus) as f64 / scale[2];
            if best.is_none_or(|(b, _)| left < b) {
                best = Some((left, h));
            }
        }
        if let Some((_, h)) = best {
            free.take(h, job);
            placed.push((j, h as u32));
        }
    }
    placed
}

// ---------------------------------------------------------------------------------------
// Running pack.

struct PackRun {
    wall: Duration,
    /// pack's --stats object.
    stats: Value,
    placed: Placements,
    /// Peak RSS of the child from getrusage(RUSAGE_CHILDREN): exact only while pack is the
    /// largest child this driver has waited for.
    children_max_rss_mb: f64,
}

impl PackRun {
    fn stat(&self, name: &str) -> f64 {
        self.stats[name]
            .as_f64()
            .unwrap_or_else(|| panic!("pack --stats has no {name}: {}", self.stats))
    }
}

/// Writes the workload to `dir`, runs the release pack on it (offers on stdin, the job file
/// as argument, decisions to a file), times the process and reads its decisions back.
fn run_pack(dir: &Path, w: &Workload) -> PackRun {
    write_workload(dir, w);
    match launch(dir, w, &[], None, None) {
        Ran::Done(run) => run,
        Ran::Over { .. } => unreachable!("a run without a cap"),
    }
}

/// Writes the workload's offers.jsonl and jobs.jsonl to `dir`.
fn write_workload(dir: &Path, w: &Workload) {
    std::fs::create_dir_all(dir).unwrap();
    w.write(&dir.join("offers.jsonl"), &dir.join("jobs.jsonl"));
}

/// How one run of pack ended: done, or killed at its cap.
enum Ran {
    Done(PackRun),
    /// Killed once it had run `cap`; its peak RSS as /proc last saw it (VmHWM).
    Over {
        cap: Duration,
        peak_rss_mb: f64,
    },
}

/// A shell started while the driver is still small, which starts pack for the shapes
/// section. A process started by this driver directly inherits the driver's peak RSS:
/// Linux carries the high-water mark of the parent's memory (CLONE_VM) or of the forked
/// copy into the child's ru_maxrss at exec, so pack's own peak_rss_mb would read at least
/// the driver's largest (several hundred MiB once it has read back a million placements).
/// Started by the shell, pack's peak_rss_mb is its own.
struct Launcher {
    sh: std::process::Child,
    to: std::process::ChildStdin,
    from: std::io::BufReader<std::process::ChildStdout>,
}

impl Launcher {
    fn new() -> Launcher {
        // Its own stderr is only job control ("Killed"): pack's goes to a file.
        let mut sh = Command::new("/bin/sh")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting /bin/sh");
        let to = sh.stdin.take().unwrap();
        let from = std::io::BufReader::new(sh.stdout.take().unwrap());
        Launcher { sh, to, from }
    }

    fn line(&mut self) -> String {
        use std::io::BufRead;
        let mut line = String::new();
        self.from.read_line(&mut line).unwrap();
        line.trim().to_string()
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        let _ = writeln!(self.to, "exit");
        let _ = self.to.flush();
        let _ = self.sh.wait();
    }
}

/// `path` quoted for /bin/sh.
fn sh_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}

/// The release pack on the files `write_workload` left in `dir`, with `args` before the job
/// file, started by this process or by `via`. With a cap, a watchdog kills it once it has
/// run that long.
fn launch(
    dir: &Path,
    w: &Workload,
    args: &[&str],
    cap: Option<Duration>,
    via: Option<&mut Launcher>,
) -> Ran {
    let (offers, jobs, out, err) = (
        dir.join("offers.jsonl"),
        dir.join("jobs.jsonl"),
        dir.join("out.jsonl"),
        dir.join("stderr.txt"),
    );
    let t0 = Instant::now();
    // The process's id, and what waits for it: its exit code (None: killed by a signal)
    // and its stderr.
    type Wait<'a> = Box<dyn FnOnce() -> (Option<i32>, String) + 'a>;
    let (pid, wait): (u32, Wait) = match via {
        None => {
            let child = Command::new(env!("CARGO_BIN_EXE_pack"))
                .arg("--stats")
                .args(args)
                .arg(&jobs)
                .stdin(std::fs::File::open(&offers).unwrap())
                .stdout(std::fs::File::create(&out).unwrap())
                .stderr(Stdio::piped())
                .spawn()
                .expect("starting target/release/pack");
            let pid = child.id();
            (
                pid,
                Box::new(move || {
                    let r = child.wait_with_output().unwrap();
                    (
                        r.status.code(),
                        String::from_utf8_lossy(&r.stderr).into_owned(),
                    )
                }),
            )
        }
        Some(sh) => {
            let command = format!(
                "{} --stats {} {} <{} >{} 2>{} & echo $!; wait $!; echo $?",
                sh_quote(Path::new(env!("CARGO_BIN_EXE_pack"))),
                args.join(" "),
                sh_quote(&jobs),
                sh_quote(&offers),
                sh_quote(&out),
                sh_quote(&err),
            );
            writeln!(sh.to, "{command}").unwrap();
            sh.to.flush().unwrap();
            let pid = sh.line().parse().expect("the pid of pack from /bin/sh");
            (
                pid,
                Box::new(move || {
                    let rc: i32 = sh.line().parse().expect("pack's status from /bin/sh");
                    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
                    ((rc < 128).then_some(rc), stderr)
                }),
            )
        }
    };
    // The watchdog waits for the word that pack is done, or for the cap; meanwhile it
    // samples pack's peak RSS, for a run that never reaches its --stats.
    let (done, until_done) = std::sync::mpsc::channel::<()>();
    let watchdog = cap.map(|cap| {
        std::thread::spawn(move || {
            let mut rss = 0.0f64;
            loop {
                let left = cap.saturating_sub(t0.elapsed());
                if left.is_zero() {
                    rss = rss.max(vm_hwm_mb(pid));
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    return (true, rss);
                }
                match until_done.recv_timeout(left.min(Duration::from_secs(1))) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        rss = rss.max(vm_hwm_mb(pid))
                    }
                    _ => return (false, rss),
                }
            }
        })
    });
    let (code, stderr) = wait();
    let wall = t0.elapsed();
    let _ = done.send(());
    if let Some((true, peak_rss_mb)) = watchdog.map(|t| t.join().unwrap()) {
        if let Some(cap) = cap.filter(|_| code.is_none()) {
            return Ran::Over { cap, peak_rss_mb };
        }
    }
    // 0: everything placed; 1: some instances pending (the GPU trace asks for more than
    // the fleet has). Anything else is a failure of pack.
    assert!(
        matches!(code, Some(0 | 1)),
        "pack failed (exit code {code:?}): {stderr}"
    );
    let stats: Value = stderr
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no --stats object on pack's stderr: {stderr}"));
    let children_max_rss_mb =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
            .map_or(0.0, |u| u.max_rss() as f64 / 1024.0);
    let placed = read_places(w, &std::fs::read_to_string(&out).unwrap());
    assert_eq!(
        placed.len() as f64,
        stats["placed"].as_f64().unwrap_or(-1.0),
        "place records against pack's --stats"
    );
    Ran::Done(PackRun {
        wall,
        stats,
        placed,
        children_max_rss_mb,
    })
}

/// A live process's peak resident set (VmHWM), MiB; 0 when /proc does not say.
fn vm_hwm_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The (job, host) of every place record. Job keys and host names are checked by pack to
/// hold nothing JSON escapes, so a field is the text between its quotes.
fn read_places(w: &Workload, output: &str) -> Placements {
    let jobs: HashMap<&str, u32> = w
        .jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (j.key.as_str(), i as u32))
        .collect();
    let hosts: HashMap<&str, u32> = w
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h.name.as_str(), i as u32))
        .collect();
    let mut placed = Vec::new();
    for line in output.lines() {
        if !line.starts_with("{\"type\":\"place\"") {
            continue;
        }
        let text = |name: &str| -> &str {
            let at = line
                .find(name)
                .unwrap_or_else(|| panic!("no {name} in {line}"))
                + name.len();
            let rest = &line[at..];
            &rest[..rest.find('"').unwrap()]
        };
        placed.push((jobs[text("\"job\":\"")], hosts[text("\"host\":\"")]));
    }
    placed
}

// ---------------------------------------------------------------------------------------
// Workloads.

/// splitmix64: a fixed seed gives the same workload on every run and machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in lo..=hi.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn weighted<T: Copy>(&mut self, choices: &[(T, u64)]) -> T {
        let total: u64 = choices.iter().map(|c| c.1).sum();
        let mut x = self.next() % total;
        for &(v, w) in choices {
            if x < w {
                return v;
            }
            x -= w;
        }
        unreachable!()
    }
}

/// 4 GiB of ram per core, like most of a fleet's machines.
fn server(name: String, cores: u32, rack: usize, zone: usize) -> Host {
    Host {
        name,
        cpus: cores * 1000,
        cpu_factor: 1.0,
        ram_mb: cores as u64 * 4096,
        disk_mb: 1 << 20,
        gpus: 0,
        ports: 1000,
        attrs: vec![
            ("rack", format!("r{rack:04}")),
            ("zone", format!("z{zone}")),
        ],
        gpu_model: None,
    }
}

/// The 100,000-host fleet: all 32 cores / 128 GiB, or three hardware generations (24, 32
/// and 48 cores at 4 GiB per core, half, 30% and 20% of the hosts, shuffled), which hold
/// about as much in total.
fn scale_fleet(generations: bool, rng: &mut Rng) -> Vec<Host> {
    (0..HOSTS)
        .map(|i| {
            let cores = match generations {
                false => 32,
                true => rng.weighted(&[(24, 50), (32, 30), (48, 20)]),
            };
            server(format!("host-{i:06}"), cores, i / 40, i % 3)
        })
        .collect()
}

/// 10,000 jobs of 100 instances: cpus from a quarter core to 8 cores (mostly 1–2), 2, 4 or
/// 8 GiB of ram per core (so some jobs are cpu-heavy and some ram-heavy against the hosts'
/// 4), 1–10 GiB of disk, one port; every fifth job at most one instance per host. As one
/// batch this is about 70% of the fleet's cpus and 77% of its ram.
fn scale_jobs(rng: &mut Rng) -> Vec<Job> {
    (0..JOBS)
        .map(|j| {
            let cpus = rng.weighted(&[
                (250, 10),
                (500, 15),
                (1000, 25),
                (2000, 25),
                (4000, 15),
                (8000, 10),
            ]);
            let gib_per_core = rng.weighted(&[(2, 30), (4, 45), (8, 25)]);
            Job {
                key: format!("role{:02}/prod/job{j:05}", j % 50),
                instances: PER_JOB,
                cpus,
                ram_mb: cpus as u64 * gib_per_core * 1024 / 1000,
                disk_mb: 1024 * rng.range(1, 10),
                gpus: 0,
                ports: 1,
                one_per_host: j % 5 == 0,
                gpu_models: None,
                not_host: None,
            }
        })
        .collect()
}

/// The Alibaba trace as a workload: identical pods grouped into one job each.
struct Trace {
    w: Workload,
    /// The job of each pod, in the trace's order (creation time): best fit's arrivals.
    arrivals: Vec<u32>,
    /// Per job, the GPU share one pod asked for in the trace, in thousandths of a GPU.
    gpu_milli: Vec<u64>,
}

fn trace_dir() -> PathBuf {
    std::env::var_os("FORMIC_TRACE_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join(TRACE_DIR),
        PathBuf::from,
    )
}

/// Rows of a CSV file without quoting (the trace has none), header skipped.
fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

/// Maps the trace as its README says: a machine is a host (cpus = cpu_milli/1000, ram_mb =
/// memory_mib, gpus = gpu, attrs.gpu_model = model); a pod is an instance (cpus, ram_mb,
/// gpus = num_gpu) and its gpu_spec a values constraint on gpu_model. pack counts whole
/// GPUs only, so a sharing pod (num_gpu 1, gpu_milli < 1000) asks for one whole GPU, for
/// pack and the baselines alike; the share of GPU demand placed is also given in the
/// trace's own terms (num_gpu × gpu_milli).
fn load_trace(pods_file: &str, tag: &str) -> Trace {
    let dir = trace_dir();
    let num = |s: &str| -> u64 { s.parse().unwrap_or_else(|_| panic!("not a number: {s:?}")) };
    let hosts = csv_rows(&dir.join("openb_node_list_all_node.csv"))
        .into_iter()
        .map(|r| Host {
            name: r[0].clone(),
            cpus: num(&r[1]) as u32,
            cpu_factor: 1.0,
            ram_mb: num(&r[2]),
            disk_mb: 0,
            gpus: num(&r[3]) as u32,
            ports: 0,
            attrs: vec![],
            gpu_model: Some(r[4].clone()).filter(|m| !m.is_empty()),
        })
        .collect();
    let mut jobs: Vec<Job> = Vec::new();
    let mut gpu_milli = Vec::new();
    let mut shapes: HashMap<[String; 5], u32> = HashMap::new();
    let mut arrivals = Vec::new();
    for r in csv_rows(&dir.join(pods_file)) {
        let shape: [String; 5] = [
            r[1].clone(),
            r[2].clone(),
            r[3].clone(),
            r[4].clone(),
            r[5].clone(),
        ];
        let next = jobs.len() as u32;
        let j = *shapes.entry(shape).or_insert(next);
        if j == next {
            let mut models: Vec<String> = Vec::new();
            for m in r[5].split('|').filter(|m| !m.is_empty()) {
                if !models.iter().any(|x| x == m) {
                    models.push(m.to_string());
                }
            }
            jobs.push(Job {
                key: format!("openb/{tag}/pods{j:03}"),
                instances: 0,
                cpus: num(&r[1]) as u32,
                ram_mb: num(&r[2]),
                disk_mb: 0,
                gpus: num(&r[3]) as u32,
                ports: 0,
                one_per_host: false,
                gpu_models: (!models.is_empty()).then_some(models),
                not_host: None,
            });
            gpu_milli.push(num(&r[3]) * num(&r[4]));
        }
        jobs[j as usize].instances += 1;
        arrivals.push(j);
    }
    Trace {
        w: Workload { hosts, jobs },
        arrivals,
        gpu_milli,
    }
}

/// A small random problem for the exact solver: 8–20 hosts of one shape (16 cores / 64 GiB
/// or 32 / 128) or, for odd `p`, of both shapes mixed; jobs of 0.25–8 cores at 2, 4 or 8 GiB
/// per core and 1–12 instances, a fifth of them at most one per host, added while the
/// problem stays under its draw of 40–200 instances and 60% of the fleet's cpus and ram (the
/// fewest hosts do not depend on spare hosts, and the spare lets every placer place all).
fn small_problem(p: usize, rng: &mut Rng) -> Workload {
    let n_hosts = rng.range(8, 20) as usize;
    let one_shape = if rng.next().is_multiple_of(2) { 16 } else { 32 };
    let hosts: Vec<Host> = (0..n_hosts)
        .map(|i| {
            let cores = match p % 2 {
                0 => one_shape,
                _ => [16, 32][(rng.next() % 2) as usize],
            };
            Host {
                ports: 0,
                ..server(format!("s{i:02}"), cores, i, 0)
            }
        })
        .collect();
    let cap = [
        hosts.iter().map(|h| h.cpus as u64).sum::<u64>(),
        hosts.iter().map(|h| h.ram_mb).sum::<u64>(),
    ];
    let target = rng.range(40, 200);
    let (mut jobs, mut total, mut used) = (Vec::new(), 0u64, [0u64; 2]);
    for attempt in 0..200 {
        let cpus = 250 * rng.range(1, 32) as u32;
        let ram_mb = cpus as u64 * rng.weighted(&[(2, 30), (4, 45), (8, 25)]) * 1024 / 1000;
        let one_per_host = rng.next().is_multiple_of(5);
        let mut n = rng.range(1, 12);
        if one_per_host {
            n = n.min(n_hosts as u64);
        }
        let fits = total + n <= target
            && (used[0] + n * cpus as u64) * 5 <= cap[0] * 3
            && (used[1] + n * ram_mb) * 5 <= cap[1] * 3;
        if !fits {
            continue;
        }
        total += n;
        used[0] += n * cpus as u64;
        used[1] += n * ram_mb;
        jobs.push(Job::small(
            format!("small/p{p:02}/job{attempt:03}"),
            n as u32,
            (cpus, ram_mb),
            one_per_host,
        ));
    }
    Workload { hosts, jobs }
}

/// Host shapes of the mixed-ratio small problems: cores and GiB of ram, at 2, 4 and 8 GiB a
/// core.
const RATIO_HOSTS: [(u32, u64); 6] = [
    (16, 32),
    (16, 64),
    (16, 128),
    (32, 64),
    (32, 128),
    (24, 192),
];

/// A small mixed-ratio problem (issue 13): 6–10 hosts drawn from 2 or 3 of `RATIO_HOSTS`;
/// jobs of 1–6 instances, cpu-heavy (1–8 cores at 0.5 or 1 GiB a core), ram-heavy (0.25–2
/// cores at 8 or 16 GiB a core) or balanced (0.5–8 cores at 4 GiB a core), each no larger
/// than the largest host; one job in `limited` (0: none) `{"attr":"host","limit":1}`. Jobs
/// are added while the problem stays within 30 instances and its draw of `demand` percent
/// of the fleet's cpus and of its ram.
fn ratio_problem(p: usize, rng: &mut Rng, limited: u64, demand: (u64, u64)) -> Workload {
    let n_hosts = rng.range(6, 10) as usize;
    let mut kinds: Vec<(u32, u64)> = Vec::new();
    for _ in 0..rng.range(2, 3) {
        kinds.push(RATIO_HOSTS[(rng.next() % RATIO_HOSTS.len() as u64) as usize]);
    }
    let hosts: Vec<Host> = (0..n_hosts)
        .map(|i| {
            let (cores, gib) = kinds[(rng.next() % kinds.len() as u64) as usize];
            Host {
                ports: 0,
                ram_mb: gib * 1024,
                ..server(format!("s{i:02}"), cores, i, 0)
            }
        })
        .collect();
    let largest = |f: fn(&Host) -> u64| hosts.iter().map(f).max().unwrap();
    let (max_cpus, max_ram) = (largest(|h| h.cpus as u64), largest(|h| h.ram_mb));
    let cap = [
        hosts.iter().map(|h| h.cpus as u64).sum::<u64>(),
        hosts.iter().map(|h| h.ram_mb).sum::<u64>(),
    ];
    let share = rng.range(demand.0, demand.1);
    let (mut jobs, mut total, mut used) = (Vec::new(), 0u64, [0u64; 2]);
    for attempt in 0..100 {
        let (cpus, mb_per_core) = match rng.next() % 3 {
            0 => (
                500 * rng.range(2, 16),
                [512, 1024][(rng.next() % 2) as usize],
            ),
            1 => (
                250 * rng.range(1, 8),
                [8192, 16384][(rng.next() % 2) as usize],
            ),
            _ => (500 * rng.range(1, 16), 4096),
        };
        let ram_mb = cpus * mb_per_core / 1000;
        if cpus > max_cpus || ram_mb > max_ram {
            continue;
        }
        let one_per_host = limited > 0 && rng.next().is_multiple_of(limited);
        let mut n = rng.range(1, 6);
        if one_per_host {
            n = n.min(n_hosts as u64 - 1);
        }
        let fits = total + n <= 30
            && (used[0] + n * cpus) * 100 <= cap[0] * share
            && (used[1] + n * ram_mb) * 100 <= cap[1] * share;
        if !fits {
            continue;
        }
        total += n;
        used[0] += n * cpus;
        used[1] += n * ram_mb;
        jobs.push(Job::small(
            format!("small/r{p:03}/job{attempt:03}"),
            n as u32,
            (cpus as u32, ram_mb),
            one_per_host,
        ));
    }
    Workload { hosts, jobs }
}

/// The hardware generations of the shapes section's mixed fleet: cores, GiB of ram,
/// cpu_factor, share of the hosts (%). 4, 4, 8, 4 and 8 GiB per core; the oldest hosts'
/// cores are slower than the reference core and the 64-core ones faster.
const GENERATIONS: [(u32, u64, f64, u64); 5] = [
    (16, 64, 0.8, 15),
    (32, 128, 1.0, 25),
    (48, 384, 1.0, 20),
    (64, 256, 1.25, 25),
    (96, 768, 1.0, 15),
];

/// Instance shapes of the mixed jobs: reference millicores, MiB of ram, share of the jobs
/// (%). Small ones, general ones at 4 GiB per core, cpu-heavy (4 cores / 2 GiB, 8 / 4),
/// ram-heavy (0.5 core / 16 GiB, 2 / 64) and large ones. Mean 4.2 cores / 21.8 GiB, so at
/// 75% of the mixed fleet's cpus (53.9 reference cores / 298 GiB a host on average) there
/// are about 10 instances per host.
const SHAPES: [(u32, u64, u64); 12] = [
    (250, 512, 8),
    (500, 1024, 10),
    (1000, 4096, 12),
    (2000, 8192, 12),
    (4000, 2048, 8),
    (8000, 4096, 6),
    (500, 16384, 8),
    (2000, 65536, 5),
    (4000, 16384, 10),
    (8000, 32768, 9),
    (16000, 65536, 7),
    (12000, 131072, 5),
];

/// `n` hosts of the mixed generations, drawn by their shares (names `h0`, `h1`, …; racks
/// of 40 consecutive hosts, racks round-robin over 3 zones).
fn mixed_fleet(n: usize, rng: &mut Rng) -> Vec<Host> {
    let shares: Vec<(usize, u64)> = GENERATIONS
        .iter()
        .enumerate()
        .map(|(g, x)| (g, x.3))
        .collect();
    (0..n)
        .map(|i| {
            let (cores, gib, factor, _) = GENERATIONS[rng.weighted(&shares)];
            Host {
                ram_mb: gib * 1024,
                cpu_factor: factor,
                ..server(format!("h{i}"), cores, i / 40, (i / 40) % 3)
            }
        })
        .collect()
}

/// Jobs of the mixed shapes until the demand reaches `demand` × the fleet's cpus or ram
/// (whichever comes first): instances per job 1–3 (30% of jobs), 4–20 (40%), 21–100 (25%)
/// or 101–1,000 (5%), the last job cut to what is left; 1–10 GiB of disk, one port.
/// `one_per_host`: every fifth job {"attr":"host","limit":1}.
fn mixed_jobs(hosts: &[Host], demand: f64, one_per_host: bool, rng: &mut Rng) -> Vec<Job> {
    let shapes: Vec<(usize, u64)> = SHAPES.iter().enumerate().map(|(k, x)| (k, x.2)).collect();
    let cap = [
        hosts
            .iter()
            .map(|h| ref_milli(h.cpus, h.cpu_factor) as f64)
            .sum::<f64>()
            * demand,
        hosts.iter().map(|h| h.ram_mb as f64).sum::<f64>() * demand,
    ];
    let (mut jobs, mut used, mut misses) = (Vec::new(), [0.0f64; 2], 0);
    while misses < 50 {
        let (cpus, ram_mb, _) = SHAPES[rng.weighted(&shapes)];
        let (lo, hi) = rng.weighted(&[
            ((1, 3), 30),
            ((4, 20), 40),
            ((21, 100), 25),
            ((101, 1000), 5),
        ]);
        let want = rng.range(lo, hi);
        let disk_mb = 1024 * rng.range(1, 10);
        let room = ((cap[0] - used[0]) / cpus as f64).min((cap[1] - used[1]) / ram_mb as f64);
        let n = want.min(room.max(0.0) as u64);
        if n == 0 {
            misses += 1;
            continue;
        }
        used[0] += (n * cpus as u64) as f64;
        used[1] += (n * ram_mb) as f64;
        let j = jobs.len();
        jobs.push(Job {
            key: format!("role{:02}/prod/job{j:06}", j % 50),
            instances: n as u32,
            cpus,
            ram_mb,
            disk_mb,
            gpus: 0,
            ports: 1,
            one_per_host: one_per_host && j % 5 == 0,
            gpu_models: None,
            not_host: None,
        });
    }
    jobs
}

/// Two one-instance jobs per host, each instance 50–100% of the cpus and (drawn apart)
/// 50–100% of the ram of a host of a generation drawn by the fleet's shares: about 1.5 ×
/// the fleet in both.
fn host_sized_jobs(hosts: usize, rng: &mut Rng) -> Vec<Job> {
    let shares: Vec<(usize, u64)> = GENERATIONS
        .iter()
        .enumerate()
        .map(|(g, x)| (g, x.3))
        .collect();
    (0..2 * hosts)
        .map(|j| {
            let (cores, gib, factor, _) = GENERATIONS[rng.weighted(&shares)];
            let ref_cpus = ref_milli(cores * 1000, factor) as u64;
            Job {
                key: format!("role{:02}/prod/one{j:06}", j % 50),
                instances: 1,
                cpus: (ref_cpus * rng.range(50, 100) / 100 / 250 * 250) as u32,
                ram_mb: gib * rng.range(50, 100) / 100 * 1024,
                disk_mb: 1024 * rng.range(1, 10),
                gpus: 0,
                ports: 1,
                one_per_host: false,
                gpu_models: None,
                not_host: None,
            }
        })
        .collect()
}

/// hosts / 5 jobs of 50 instances of the mixed shapes, each {"attr":"host","not":[one
/// host]} (20,000 jobs on 100,000 hosts).
fn excluding_jobs(hosts: &[Host], rng: &mut Rng) -> Vec<Job> {
    let shapes: Vec<(usize, u64)> = SHAPES.iter().enumerate().map(|(k, x)| (k, x.2)).collect();
    (0..hosts.len() / 5)
        .map(|j| {
            let (cpus, ram_mb, _) = SHAPES[rng.weighted(&shapes)];
            Job {
                key: format!("role{:02}/prod/not{j:06}", j % 50),
                instances: 50,
                cpus,
                ram_mb,
                disk_mb: 1024 * rng.range(1, 10),
                gpus: 0,
                ports: 1,
                one_per_host: false,
                gpu_models: None,
                not_host: Some(
                    hosts[rng.range(0, hosts.len() as u64 - 1) as usize]
                        .name
                        .clone(),
                ),
            }
        })
        .collect()
}

/// The reproduction of binpack on mixed ratios: `n` hosts of 16 cores / 256 GiB, one
/// job of `n` instances of 15 cores and `gib` GiB.
fn ratio_repro(n: usize, gib: u64) -> Workload {
    Workload {
        hosts: (0..n)
            .map(|i| Host {
                ram_mb: 256 * 1024,
                ..server(format!("h{i}"), 16, i / 40, (i / 40) % 3)
            })
            .collect(),
        jobs: vec![Job {
            key: "repro/prod/wide".into(),
            instances: n as u32,
            cpus: 15_000,
            ram_mb: gib * 1024,
            disk_mb: 0,
            gpus: 0,
            ports: 0,
            one_per_host: false,
            gpu_models: None,
            not_host: None,
        }],
    }
}

/// The reproduction of one job limited to one instance per host: `n` hosts of 32
/// cores / 128 GiB, one job of 10 × `n` instances of 1 core / 4 GiB with
/// {"attr":"host","limit":1} (so `n` are placed and the rest pend).
fn limit_repro(n: usize) -> Workload {
    Workload {
        hosts: (0..n)
            .map(|i| server(format!("h{i}"), 32, i / 40, (i / 40) % 3))
            .collect(),
        jobs: vec![Job {
            key: "repro/prod/everywhere".into(),
            instances: 10 * n as u32,
            cpus: 1000,
            ram_mb: 4096,
            disk_mb: 0,
            gpus: 0,
            ports: 0,
            one_per_host: true,
            gpu_models: None,
            not_host: None,
        }],
    }
}

// ---------------------------------------------------------------------------------------
// The report: every figure as it is measured, then one table.

struct Row {
    measure: String,
    pack: String,
    ffd: String,
    /// pack ÷ FFD.
    ratio: String,
    /// A third column: best fit, the optimum or the lower bound, where there is one.
    other: String,
    target: &'static str,
    pass: Option<bool>,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    fn row(
        &mut self,
        measure: &str,
        pack: String,
        ffd: String,
        ratio: Option<f64>,
        other: String,
        target: &'static str,
        pass: Option<bool>,
    ) {
        let row = Row {
            measure: measure.to_string(),
            pack,
            ffd,
            ratio: ratio.map_or(String::new(), |r| format!("{r:.3}")),
            other,
            target,
            pass,
        };
        println!(
            "  {:<58} pack {:>12}  FFD {:>12}  pack/FFD {:>6}  {}{}",
            row.measure,
            row.pack,
            row.ffd,
            row.ratio,
            row.other,
            match row.pass {
                Some(true) => format!("  [{}: pass]", row.target),
                Some(false) => format!("  [{}: FAIL]", row.target),
                None => String::new(),
            }
        );
        self.rows.push(row);
    }

    fn print_table(&self) {
        println!("\n| measure | pack | FFD | pack / FFD | other | target | |");
        println!("|---|---|---|---|---|---|---|");
        for r in &self.rows {
            let verdict = match r.pass {
                Some(true) => "pass",
                Some(false) => "**miss**",
                None => "",
            };
            println!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                r.measure, r.pack, r.ffd, r.ratio, r.other, r.target, verdict
            );
        }
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------------------
// The sections.

/// A million instances onto 100,000 hosts: time, memory and hosts used, pack end to end
/// against FFD in this process. Then the same jobs on a fleet of mixed hardware
/// generations, for quality only.
fn scale(dir: &Path, report: &mut Report) {
    let mut rng = Rng(0x5ca1e);
    let jobs = scale_jobs(&mut rng);
    let w = Workload {
        hosts: scale_fleet(false, &mut rng),
        jobs: jobs.clone(),
    };
    let demand = w.demand();
    println!(
        "scale: {} instances ({} jobs, a fifth host:1) onto {} hosts of 32 cores / 128 GiB; demand {:.1}% of cpus, {:.1}% of ram",
        thousands(w.instances()),
        thousands(w.jobs.len() as u64),
        thousands(w.hosts.len() as u64),
        100.0 * demand[0] as f64 / (w.hosts.len() as f64 * 32_000.0),
        100.0 * demand[1] as f64 / (w.hosts.len() as f64 * 131_072.0),
    );
    // pack first: it must be the largest child so far for RUSAGE_CHILDREN to be its own.
    let run = run_pack(&dir.join("scale"), &w);
    let pack_hosts = w.check("pack", &run.placed);
    let lb = w.lower_bound();
    assert_eq!(
        pack_hosts as f64,
        run.stat("hosts_used"),
        "pack's hosts_used against its place records"
    );
    assert_eq!(
        lb as f64,
        run.stat("lower_bound"),
        "pack's lower_bound against the benchmark's"
    );
    let t0 = Instant::now();
    let ffd = first_fit_decreasing(&w);
    let ffd_time = t0.elapsed();
    let ffd_hosts = w.check("FFD", &ffd);
    let n = w.instances();
    println!(
        "  pack: wall {:.0} ms (parse {:.0}, place {:.0}, write {:.0}), peak RSS {:.0} MiB by --stats, {:.0} MiB by getrusage",
        ms(run.wall),
        run.stat("parse_ms"),
        run.stat("place_ms"),
        run.stat("write_ms"),
        run.stat("peak_rss_mb"),
        run.children_max_rss_mb
    );
    let rss = run.stat("peak_rss_mb").max(run.children_max_rss_mb);
    report.row(
        "instances placed",
        thousands(run.placed.len() as u64),
        thousands(ffd.len() as u64),
        Some(run.placed.len() as f64 / ffd.len() as f64),
        format!("of {}", thousands(n)),
        "all",
        Some(run.placed.len() as u64 == n),
    );
    report.row(
        "end to end wall (read, place, write), one process",
        format!("{:.0} ms", ms(run.wall)),
        "—".into(),
        None,
        String::new(),
        "< 2 s",
        Some(run.wall < Duration::from_secs(2)),
    );
    report.row(
        "peak memory (max RSS)",
        format!("{rss:.0} MiB"),
        "—".into(),
        None,
        String::new(),
        "< 1.5 GiB",
        Some(rss < 1536.0),
    );
    report.row(
        "placement time (pack: place_ms; FFD: sort and place)",
        format!("{:.0} ms", run.stat("place_ms")),
        format!("{:.0} ms", ms(ffd_time)),
        Some(run.stat("place_ms") / ms(ffd_time)),
        String::new(),
        "well under 1 s",
        Some(run.stat("place_ms") < 500.0),
    );
    report.row(
        "parse_ms / write_ms",
        format!(
            "{:.0} / {:.0} ms",
            run.stat("parse_ms"),
            run.stat("write_ms")
        ),
        "—".into(),
        None,
        String::new(),
        "",
        None,
    );
    report.row(
        "hosts used",
        thousands(pack_hosts as u64),
        thousands(ffd_hosts as u64),
        Some(pack_hosts as f64 / ffd_hosts as f64),
        format!("lower bound {}", thousands(lb as u64)),
        "",
        None,
    );
    report.row(
        "hosts used / lower bound",
        format!("{:.4}", pack_hosts as f64 / lb as f64),
        format!("{:.4}", ffd_hosts as f64 / lb as f64),
        Some(pack_hosts as f64 / ffd_hosts as f64),
        String::new(),
        "≤ 1.05",
        Some(pack_hosts as f64 <= 1.05 * lb as f64),
    );

    // The same jobs on three hardware generations: the lower bound counts the largest
    // hosts first, so it rewards a placer that fills large hosts before small ones.
    let w = Workload {
        hosts: scale_fleet(true, &mut rng),
        jobs,
    };
    let run = run_pack(&dir.join("scale-generations"), &w);
    let pack_hosts = w.check("pack", &run.placed);
    let lb = w.lower_bound();
    assert_eq!(
        lb as f64,
        run.stat("lower_bound"),
        "pack's lower_bound against the benchmark's"
    );
    let t0 = Instant::now();
    let ffd = first_fit_decreasing(&w);
    let ffd_time = t0.elapsed();
    let ffd_hosts = w.check("FFD", &ffd);
    println!(
        "scale, mixed generations (24/32/48 cores): pack wall {:.0} ms, place {:.0} ms; FFD {:.0} ms; placed {} / {}",
        ms(run.wall),
        run.stat("place_ms"),
        ms(ffd_time),
        thousands(run.placed.len() as u64),
        thousands(ffd.len() as u64)
    );
    // Which generations each placer opened, against the fleet.
    let by_cores = |hosts: &mut dyn Iterator<Item = usize>| {
        let mut seen = vec![false; w.hosts.len()];
        let mut n = [0u64; 3];
        for h in hosts {
            if !std::mem::replace(&mut seen[h], true) {
                n[[24_000, 32_000, 48_000]
                    .iter()
                    .position(|&c| c == w.hosts[h].cpus)
                    .unwrap()] += 1;
            }
        }
        format!(
            "{} / {} / {}",
            thousands(n[0]),
            thousands(n[1]),
            thousands(n[2])
        )
    };
    println!(
        "  hosts of 24 / 32 / 48 cores: fleet {}; used by pack {}, by FFD {}",
        by_cores(&mut (0..w.hosts.len())),
        by_cores(&mut run.placed.iter().map(|p| p.1 as usize)),
        by_cores(&mut ffd.iter().map(|p| p.1 as usize)),
    );
    report.row(
        "mixed generations: hosts used / lower bound",
        format!(
            "{:.4} ({})",
            pack_hosts as f64 / lb as f64,
            thousands(pack_hosts as u64)
        ),
        format!(
            "{:.4} ({})",
            ffd_hosts as f64 / lb as f64,
            thousands(ffd_hosts as u64)
        ),
        Some(pack_hosts as f64 / ffd_hosts as f64),
        format!("lower bound {}", thousands(lb as u64)),
        "",
        None,
    );
}

/// One pod file of the Alibaba trace: pack against best fit and FFD, in pods placed and
/// the share of GPU demand placed.
fn trace(dir: &Path, report: &mut Report, pods_file: &str, tag: &str) {
    let t = load_trace(pods_file, tag);
    let w = &t.w;
    let run = run_pack(&dir.join(format!("trace-{tag}")), w);
    w.check("pack", &run.placed);
    let t0 = Instant::now();
    let bf = best_fit(w, &t.arrivals);
    let bf_time = t0.elapsed();
    w.check("best fit", &bf);
    let t0 = Instant::now();
    let ffd = first_fit_decreasing(w);
    let ffd_time = t0.elapsed();
    w.check("FFD", &ffd);

    let gpus = |p: &Placements| {
        p.iter()
            .map(|&(j, _)| w.jobs[j as usize].gpus as u64)
            .sum::<u64>()
    };
    let milli = |p: &Placements| p.iter().map(|&(j, _)| t.gpu_milli[j as usize]).sum::<u64>();
    let all_gpus: u64 = w
        .jobs
        .iter()
        .map(|j| j.gpus as u64 * j.instances as u64)
        .sum();
    let all_milli: u64 = w
        .jobs
        .iter()
        .zip(&t.gpu_milli)
        .map(|(j, m)| m * j.instances as u64)
        .sum();
    let fleet_gpus: u64 = w.hosts.iter().map(|h| h.gpus as u64).sum();
    println!(
        "trace {pods_file}: {} pods in {} shapes onto {} hosts ({} GPUs); demand {} whole GPUs, {:.0} by gpu_milli",
        thousands(t.arrivals.len() as u64),
        w.jobs.len(),
        thousands(w.hosts.len() as u64),
        thousands(fleet_gpus),
        thousands(all_gpus),
        all_milli as f64 / 1000.0
    );
    println!(
        "  pack wall {:.0} ms (place {:.1} ms); best fit {:.1} ms; FFD {:.1} ms",
        ms(run.wall),
        run.stat("place_ms"),
        ms(bf_time),
        ms(ffd_time)
    );
    let pods = |p: &Placements| p.len() as f64;
    let share = |p: &Placements| gpus(p) as f64 / all_gpus as f64;
    let share_milli = |p: &Placements| milli(p) as f64 / all_milli as f64;
    let (p, b, f) = (&run.placed, &bf, &ffd);
    report.row(
        &format!(
            "{tag}: pods placed (of {})",
            thousands(t.arrivals.len() as u64)
        ),
        thousands(p.len() as u64),
        thousands(f.len() as u64),
        Some(pods(p) / pods(f)),
        format!(
            "best fit {} (pack/BF {:.3})",
            thousands(b.len() as u64),
            pods(p) / pods(b)
        ),
        "≥ best fit",
        Some(p.len() >= b.len()),
    );
    report.row(
        &format!("{tag}: share of GPU demand placed (whole GPUs)"),
        format!("{:.1}%", 100.0 * share(p)),
        format!("{:.1}%", 100.0 * share(f)),
        Some(share(p) / share(f)),
        format!(
            "best fit {:.1}% (pack/BF {:.3})",
            100.0 * share(b),
            share(p) / share(b)
        ),
        "≥ best fit",
        Some(gpus(p) >= gpus(b)),
    );
    // Where GPU pods pend while GPUs sit idle, those GPUs are stranded: their host ran out
    // of cpus or ram (or has the wrong model).
    let idle = |p: &Placements| fleet_gpus - gpus(p);
    report.row(
        &format!(
            "{tag}: GPUs left idle (of {}) while GPU pods pend",
            thousands(fleet_gpus)
        ),
        thousands(idle(p)),
        thousands(idle(f)),
        Some(idle(p) as f64 / idle(f) as f64),
        format!("best fit {}", thousands(idle(b))),
        "",
        None,
    );
    report.row(
        &format!("{tag}: share of GPU demand placed (trace's gpu_milli)"),
        format!("{:.1}%", 100.0 * share_milli(p)),
        format!("{:.1}%", 100.0 * share_milli(f)),
        Some(share_milli(p) / share_milli(f)),
        format!(
            "best fit {:.1}% (pack/BF {:.3})",
            100.0 * share_milli(b),
            share_milli(p) / share_milli(b)
        ),
        "",
        None,
    );
}

/// What the exact solver said of one problem.
struct Solved {
    status: String,
    hosts: usize,
    bound: usize,
}

/// Runs scripts/pack-optimum.py on the problems (one JSON line each) and reads its answers.
fn solve(dir: &Path, problems: &[Workload]) -> Result<Vec<Solved>, String> {
    let path = dir.join("problems.jsonl");
    let mut text = String::new();
    for (id, w) in problems.iter().enumerate() {
        let hosts: Vec<[u64; 2]> = w.hosts.iter().map(|h| [h.cpus as u64, h.ram_mb]).collect();
        let jobs: Vec<Value> = w
            .jobs
            .iter()
            .map(|j| serde_json::json!([j.instances, j.cpus, j.ram_mb, j.one_per_host]))
            .collect();
        let rec =
            serde_json::json!({"id": id, "hosts": hosts, "jobs": jobs, "seconds": SOLVER_SECONDS});
        writeln!(text, "{rec}").unwrap();
    }
    std::fs::write(&path, text).unwrap();
    let python = std::env::var("FORMIC_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pack-optimum.py");
    let out = Command::new(&python)
        .arg(&script)
        .stdin(std::fs::File::open(&path).unwrap())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{python}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{} exited with {}", script.display(), out.status));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).map_err(|e| format!("{l}: {e}"))?;
            Ok(Solved {
                status: v["status"].as_str().unwrap_or("").to_string(),
                hosts: v["hosts"].as_u64().unwrap_or(0) as usize,
                bound: v["bound"].as_u64().unwrap_or(0) as usize,
            })
        })
        .collect()
}

/// One small problem: hosts used ÷ the optimum by pack and by FFD, or None where that
/// placer left an instance pending (or the solver found no optimum).
struct Compared {
    /// Its family, an index into `FAMILIES`.
    family: usize,
    /// The hosts are of two shapes (the first family's odd problems).
    mixed: bool,
    /// The optimum places every instance (the solver found a solution).
    feasible: bool,
    pack: Option<f64>,
    ffd: Option<f64>,
}

/// The families of small problems: a tag, how many, the generator.
type Family = (&'static str, usize, fn(usize, &mut Rng) -> Workload);

/// The first family is the original 48 (8–20 hosts of 16 / 32 cores at 4 GiB per core, up
/// to 60% of the fleet); the others are the mixed-ratio problems of issue 13.
const FAMILIES: [Family; 4] = [
    ("classic", PROBLEMS, small_problem),
    ("ratios", MIXED_PROBLEMS, |p, rng| {
        ratio_problem(p, rng, 0, (50, 90))
    }),
    ("limits", MIXED_PROBLEMS, |p, rng| {
        ratio_problem(p, rng, 3, (50, 90))
    }),
    ("tight", MIXED_PROBLEMS, |p, rng| {
        ratio_problem(p, rng, 4, (85, 98))
    }),
];

/// Small problems solved exactly by CP-SAT, and pack and FFD on the same problems.
fn optimum(dir: &Path, report: &mut Report) {
    let mut problems: Vec<Workload> = Vec::new();
    let mut family_of = Vec::new();
    for (f, &(_, count, make)) in FAMILIES.iter().enumerate() {
        // A seed per family: adding a family leaves the others' problems as they were.
        let mut rng = Rng(0x0b7 + f as u64 * 0x1000);
        for p in 0..count {
            problems.push(make(p, &mut rng));
            family_of.push(f);
        }
    }
    let t0 = Instant::now();
    let solved = match solve(dir, &problems) {
        Ok(s) => s,
        Err(e) => {
            println!("optimum: skipped, the exact solver did not run: {e}");
            return;
        }
    };
    let solver_time = t0.elapsed();
    println!(
        "optimum: {} problems of {}–{} instances on {}–{} hosts, CP-SAT {:.0} s in all ({} s limit each)",
        problems.len(),
        problems.iter().map(Workload::instances).min().unwrap(),
        problems.iter().map(Workload::instances).max().unwrap(),
        problems.iter().map(|w| w.hosts.len()).min().unwrap(),
        problems.iter().map(|w| w.hosts.len()).max().unwrap(),
        solver_time.as_secs_f64(),
        SOLVER_SECONDS
    );
    println!("  (a line for each problem where pack is above the optimum or leaves one pending)");
    let mut compared = Vec::new();
    let (mut proven, mut pack_pending, mut ffd_pending) = (0, 0, 0);
    let mut seq = 0;
    for (p, (w, s)) in problems.iter().zip(&solved).enumerate() {
        let family = family_of[p];
        seq = if p > 0 && family_of[p - 1] == family {
            seq + 1
        } else {
            0
        };
        let tag = FAMILIES[family].0;
        let run = run_pack(&dir.join(format!("small-{tag}-p{seq:03}")), w);
        let pack_hosts = w.check("pack", &run.placed);
        let ffd = first_fit_decreasing(w);
        let ffd_hosts = w.check("FFD", &ffd);
        let n = w.instances() as usize;
        let feasible = s.hosts > 0;
        proven += matches!(s.status.as_str(), "OPTIMAL" | "INFEASIBLE") as usize;
        pack_pending += (run.placed.len() < n && feasible) as usize;
        ffd_pending += (ffd.len() < n && feasible) as usize;
        let pending = |k: usize| match n - k {
            0 => String::new(),
            m => format!(" ({m} pending)"),
        };
        let mixed = family == 0 && seq % 2 == 1;
        if run.placed.len() < n || pack_hosts > s.hosts {
            println!(
                "  {tag:7} p{seq:03} {:5} {:3} instances {:2} hosts: optimum {:2}{} pack {:2}{} FFD {:2}{} lower bound {}",
                if family > 0 { "ratio" } else if mixed { "mixed" } else { "same" },
                n,
                w.hosts.len(),
                s.hosts,
                if s.status == "OPTIMAL" { String::new() } else { format!(" ({}, bound {})", s.status, s.bound) },
                pack_hosts,
                pending(run.placed.len()),
                ffd_hosts,
                pending(ffd.len()),
                w.lower_bound()
            );
        }
        let ratio = |placed: usize, hosts: usize| {
            (placed == n && feasible).then(|| hosts as f64 / s.hosts as f64)
        };
        compared.push(Compared {
            family,
            mixed,
            feasible,
            pack: ratio(run.placed.len(), pack_hosts),
            ffd: ratio(ffd.len(), ffd_hosts),
        });
    }
    println!(
        "  {proven} of {} proven (optimal or infeasible); where the optimum places all, instances left pending in {pack_pending} problems by pack, {ffd_pending} by FFD",
        problems.len()
    );
    let mean = |xs: Vec<f64>| (xs.iter().sum::<f64>() / xs.len().max(1) as f64, xs.len());
    let worst = |xs: Vec<f64>| xs.into_iter().fold(0.0, f64::max);
    // The original rows, on the first family, then a row per family and one for all.
    for (label, shapes) in [
        ("all", None),
        ("one host shape", Some(false)),
        ("two host shapes", Some(true)),
    ] {
        let kept = || {
            compared
                .iter()
                .filter(|c| c.family == 0 && shapes.is_none_or(|m| c.mixed == m))
        };
        let (pack, k) = mean(kept().filter_map(|c| c.pack).collect());
        let (ffd, kf) = mean(kept().filter_map(|c| c.ffd).collect());
        let (ratio, _) = mean(kept().filter_map(|c| Some(c.pack? / c.ffd?)).collect());
        let measure =
            format!("small problems, {label}: hosts used / optimum, mean of {k} (FFD: of {kf})");
        let pending = kept().filter(|c| c.feasible && c.pack.is_none()).count();
        let target = if shapes.is_none() { "≤ 1.05" } else { "" };
        let pass = shapes.is_none().then_some(pack <= 1.05 && pending == 0);
        report.row(
            &measure,
            format!("{pack:.3}"),
            format!("{ffd:.3}"),
            Some(ratio),
            format!("{k} of {} placed", kept().count()),
            target,
            pass,
        );
    }
    let classic_worst = |of: fn(&Compared) -> Option<f64>| {
        let ratios = compared.iter().filter(|c| c.family == 0).filter_map(of);
        format!("{:.3}", worst(ratios.collect()))
    };
    report.row(
        "small problems: worst hosts used / optimum",
        classic_worst(|c| c.pack),
        classic_worst(|c| c.ffd),
        None,
        String::new(),
        "",
        None,
    );
    let families = (1..FAMILIES.len()).map(Some).chain([None]);
    for family in families {
        let kept = || {
            compared
                .iter()
                .filter(|c| family.is_none_or(|f| c.family == f))
        };
        let label = family.map_or("every family", |f| FAMILIES[f].0);
        let feasible = kept().filter(|c| c.feasible).count();
        let (pack, k) = mean(kept().filter_map(|c| c.pack).collect());
        let (ffd, kf) = mean(kept().filter_map(|c| c.ffd).collect());
        let (ratio, _) = mean(kept().filter_map(|c| Some(c.pack? / c.ffd?)).collect());
        let pending = kept().filter(|c| c.feasible && c.pack.is_none()).count();
        let ffd_left = kept().filter(|c| c.feasible && c.ffd.is_none()).count();
        report.row(
            &format!("small {label}: hosts used / optimum, mean of {k} (FFD {kf})"),
            format!("{pack:.3}"),
            format!("{ffd:.3}"),
            Some(ratio),
            format!(
                "{} problems, optimum places all in {feasible}",
                kept().count()
            ),
            "≤ 1.01",
            Some(pack <= 1.01),
        );
        report.row(
            &format!("small {label}: worst hosts used / optimum"),
            format!("{:.3}", worst(kept().filter_map(|c| c.pack).collect())),
            format!("{:.3}", worst(kept().filter_map(|c| c.ffd).collect())),
            None,
            String::new(),
            "",
            None,
        );
        report.row(
            &format!("small {label}: pending where the optimum places all"),
            pending.to_string(),
            ffd_left.to_string(),
            None,
            format!("of {feasible}"),
            "none",
            Some(pending == 0),
        );
    }
}

/// One workload shape of the shapes section.
struct Shape {
    tag: &'static str,
    label: &'static str,
    /// Hosts, per size.
    sizes: &'static [usize],
    /// pack's arguments besides --stats and the job file.
    args: &'static [&'static str],
    make: fn(usize, &mut Rng) -> Workload,
}

/// What one (shape, size) gave: the run reported (the median of its rounds by place_ms)
/// or the cap it went over.
struct Measured {
    tag: &'static str,
    hosts: usize,
    ran: Ran,
}

fn shape_list() -> Vec<Shape> {
    const SIZES: &[usize] = &[1_000, 10_000, 100_000];
    fn mixed(n: usize, rng: &mut Rng) -> Workload {
        let hosts = mixed_fleet(n, rng);
        let jobs = mixed_jobs(&hosts, 0.75, false, rng);
        Workload { hosts, jobs }
    }
    vec![
        Shape {
            tag: "a",
            label: "mixed hosts and ratios, binpack",
            sizes: SIZES,
            args: &[],
            make: mixed,
        },
        Shape {
            tag: "b",
            label: "mixed, 20% of jobs host limit 1",
            sizes: SIZES,
            args: &[],
            make: |n, rng| {
                let hosts = mixed_fleet(n, rng);
                let jobs = mixed_jobs(&hosts, 0.75, true, rng);
                Workload { hosts, jobs }
            },
        },
        Shape {
            tag: "c",
            label: "mixed, demand 1.5 x capacity",
            sizes: SIZES,
            args: &[],
            make: |n, rng| {
                let hosts = mixed_fleet(n, rng);
                let jobs = mixed_jobs(&hosts, 1.5, false, rng);
                Workload { hosts, jobs }
            },
        },
        Shape {
            tag: "d",
            label: "two 1-instance jobs per host, 1.5 x",
            sizes: SIZES,
            args: &[],
            make: |n, rng| Workload {
                hosts: mixed_fleet(n, rng),
                jobs: host_sized_jobs(n, rng),
            },
        },
        Shape {
            tag: "e",
            label: "hosts/5 jobs, each `not` one host",
            sizes: SIZES,
            args: &[],
            make: |n, rng| {
                let hosts = mixed_fleet(n, rng);
                let jobs = excluding_jobs(&hosts, rng);
                Workload { hosts, jobs }
            },
        },
        Shape {
            tag: "f",
            label: "mixed, --strategy spread",
            sizes: SIZES,
            args: &["--strategy", "spread"],
            make: mixed,
        },
        Shape {
            tag: "g",
            label: "16c/256G hosts, one job 15c/1G x N",
            sizes: &[10_000, 20_000, 40_000],
            args: &[],
            make: |n, _| ratio_repro(n, 1),
        },
        Shape {
            tag: "h",
            label: "the same, 15c/240G x N",
            sizes: &[10_000, 20_000, 40_000],
            args: &[],
            make: |n, _| ratio_repro(n, 240),
        },
        Shape {
            tag: "i",
            label: "one job host limit 1, 10 x hosts inst.",
            sizes: SIZES,
            args: &[],
            make: |n, _| limit_repro(n),
        },
    ]
}

/// Placements per second: placed ÷ place_ms.
fn rate(placed: f64, place_ms: f64) -> String {
    if place_ms <= 0.0 {
        return "—".into();
    }
    let r = placed / place_ms * 1000.0;
    if r >= 1e6 {
        format!("{:.2}M/s", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1}k/s", r / 1e3)
    } else {
        format!("{r:.0}/s")
    }
}

/// The workload shapes of issue 13 at 1k, 10k and 100k hosts (the reproductions at their
/// own sizes), one line per (shape, size) so that the growth of the cost shows: pack's
/// place_ms, wall, peak RSS, placed, pending, placements per second and hosts used against
/// the lower bound. A run is killed at FORMIC_PACK_CAP_S (600 s); FORMIC_SHAPES_MAX_HOSTS
/// leaves out the larger sizes (a quick look); FORMIC_SHAPES=af runs those shapes only.
fn shapes(dir: &Path, launcher: &mut Launcher) {
    let cap = Duration::from_secs(
        std::env::var("FORMIC_PACK_CAP_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(600),
    );
    let max_hosts: usize = std::env::var("FORMIC_SHAPES_MAX_HOSTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(usize::MAX);
    let rounds = common::rounds(3);
    println!(
        "shapes: one pack process per run, killed after {} s; runs under 10 s wall repeated to {rounds} (median by place_ms)",
        cap.as_secs()
    );
    let only = std::env::var("FORMIC_SHAPES").unwrap_or_default();
    let list: Vec<Shape> = shape_list()
        .into_iter()
        .filter(|s| only.is_empty() || only.contains(s.tag))
        .collect();
    let mut measured = Vec::new();
    for shape in &list {
        for &n in shape.sizes.iter().filter(|&&n| n <= max_hosts) {
            let mut rng = Rng(0x5a9e5 ^ n as u64);
            let w = (shape.make)(n, &mut rng);
            let d = w.demand();
            let caps = w.capacities();
            let share = |k: usize| 100.0 * d[k] as f64 / caps[k].iter().sum::<u64>() as f64;
            let head = format!(
                "  {} {:<40} {:>7} hosts {:>9} instances {:>7} jobs, demand {:3.0}% cpus {:3.0}% ram:",
                shape.tag,
                shape.label,
                thousands(n as u64),
                thousands(w.instances()),
                thousands(w.jobs.len() as u64),
                share(0),
                share(1),
            );
            let sub = dir.join(format!("shape-{}-{n}", shape.tag));
            write_workload(&sub, &w);
            let mut runs = Vec::new();
            let ran = loop {
                match launch(&sub, &w, shape.args, Some(cap), Some(&mut *launcher)) {
                    over @ Ran::Over { .. } => break over,
                    Ran::Done(run) => {
                        let short = run.wall < Duration::from_secs(10);
                        runs.push(run);
                        if !short || runs.len() >= rounds {
                            runs.sort_by(|a, b| a.stat("place_ms").total_cmp(&b.stat("place_ms")));
                            let k = runs.len() / 2;
                            break Ran::Done(runs.swap_remove(k));
                        }
                    }
                }
            };
            match &ran {
                Ran::Over { cap, peak_rss_mb } => println!(
                    "{head} over {} s: killed (peak RSS by then {peak_rss_mb:.0} MiB)",
                    cap.as_secs()
                ),
                Ran::Done(run) => {
                    let used = w.check("pack", &run.placed);
                    let lb = w.lower_bound();
                    assert_eq!(used as f64, run.stat("hosts_used"), "pack's hosts_used");
                    assert_eq!(lb as f64, run.stat("lower_bound"), "pack's lower_bound");
                    // FFD on the same workload, where pack packs: whether a ratio far
                    // from 1 is pack's or the bound's.
                    let ffd = (shape.args.is_empty()).then(|| {
                        let placed = first_fit_decreasing(&w);
                        let used = w.check("FFD", &placed);
                        format!(
                            " (FFD {} hosts = {:.3}, placed {})",
                            thousands(used as u64),
                            used as f64 / lb as f64,
                            thousands(placed.len() as u64)
                        )
                    });
                    let (fits, pending_jobs) = w.pending_that_fits(&run.placed);
                    let avoidable = match pending_jobs {
                        0 => String::new(),
                        _ => format!("; of {pending_jobs} jobs left pending, {fits} still fit"),
                    };
                    println!(
                        "{head} place {:.0} ms, wall {:.0} ms, RSS {:.0} MiB, placed {}, pending {}, {}, hosts used {} / lower bound {} = {:.3}{}{avoidable}",
                        run.stat("place_ms"),
                        ms(run.wall),
                        run.stat("peak_rss_mb"),
                        thousands(run.stat("placed") as u64),
                        thousands(run.stat("pending") as u64),
                        rate(run.stat("placed"), run.stat("place_ms")),
                        thousands(used as u64),
                        thousands(lb as u64),
                        used as f64 / lb as f64,
                        ffd.unwrap_or_default(),
                    );
                }
            }
            if !common::keep_files() {
                let _ = std::fs::remove_dir_all(&sub);
            }
            measured.push(Measured {
                tag: shape.tag,
                hosts: n,
                ran,
            });
        }
    }
    // The tables: place_ms, placements per second, peak RSS.
    for sizes in [&[1_000, 10_000, 100_000][..], &[10_000, 20_000, 40_000]] {
        let rows: Vec<&Shape> = list.iter().filter(|s| s.sizes == sizes).collect();
        print!("\n| shape (place_ms · placements/s · peak RSS) |");
        for n in sizes {
            print!(" {} hosts |", thousands(*n as u64));
        }
        println!("\n|---|{}", "---|".repeat(sizes.len()));
        for shape in rows {
            print!("| {} {} |", shape.tag, shape.label);
            for &n in sizes {
                let cell = match measured.iter().find(|m| m.tag == shape.tag && m.hosts == n) {
                    None => String::new(),
                    Some(Measured {
                        ran: Ran::Over { cap, peak_rss_mb },
                        ..
                    }) => format!("over {} s · — · {peak_rss_mb:.0} MiB", cap.as_secs()),
                    Some(Measured {
                        ran: Ran::Done(run),
                        ..
                    }) => format!(
                        "{} ms · {} · {:.0} MiB",
                        thousands(run.stat("place_ms").round() as u64),
                        rate(run.stat("placed"), run.stat("place_ms")),
                        run.stat("peak_rss_mb")
                    ),
                };
                print!(" {cell} |");
            }
            println!();
        }
    }
}

fn main() {
    // FORMIC_BENCH_DIR keeps the files (offers, jobs and pack's output per section, to
    // look into a figure).
    let Some(bench) = Bench::from_args("pack") else {
        return;
    };
    // Named only: the shapes take many minutes at 100,000 hosts. Their launcher starts
    // now, while this process is small (see Launcher).
    let mut launcher = std::env::args()
        .skip(1)
        .any(|a| a == "shapes")
        .then(Launcher::new);
    let dir = bench.dir.clone();
    println!(
        "pack benchmark: {}, {} cores, load average {} at the start",
        env!("CARGO_BIN_EXE_pack"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    let mut report = Report::default();
    let t0 = Instant::now();
    if bench.want("scale") {
        scale(&dir, &mut report);
    }
    if bench.want("trace") {
        trace(&dir, &mut report, "openb_pod_list_default.csv", "default");
        trace(
            &dir,
            &mut report,
            "openb_pod_list_gpuspec33.csv",
            "gpuspec33",
        );
    }
    if bench.want("optimum") {
        optimum(&dir, &mut report);
    }
    if let Some(launcher) = &mut launcher {
        shapes(&dir, launcher);
    }
    if !report.rows.is_empty() {
        report.print_table();
    }
    println!(
        "\n{:.0} s in all; load average {} at the end",
        t0.elapsed().as_secs_f64(),
        loadavg()
    );
}
