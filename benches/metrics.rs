//! `job metrics` benchmark: the Prometheus text of a cluster of 1,000, 10,000 and 100,000
//! hosts, against reading its state (what any tool pays to look at the cluster), measured
//! in the same run. Run: `cargo bench --bench metrics` (or scripts/bench-metrics).
//!
//! The fleet is mixed: three hardware generations with their own cpu:ram ratios, racks and
//! zones, a few hosts draining or down. Ten tasks a host in many small jobs (ten instances
//! each) of several sizes, most RUNNING and healthy, some THROTTLED, FINISHED or LOST; a
//! tenth of the jobs are batch jobs with runs. The pass's records hold a pending instance
//! for one job in fifty. Figures are medians.

mod common;

use std::path::Path;
use std::time::Instant;

use common::{median, ms, Bench};
use formic::host::{Host, Life, Maintenance, Mode, Transport};
use formic::state::State;
use formic::task::{Job, Task, TaskState};

const SIZES: [u32; 3] = [1_000, 10_000, 100_000];
const TASKS_PER_HOST: u32 = 10;
const PER_JOB: u32 = 10;

/// Host `i`: a generation's cores and memory, its rack and zone; one in 200 draining, one in
/// 500 down.
fn host(i: u32) -> Host {
    let (cpus, ram_gb) = [(16_000, 64), (32_000, 256), (64_000, 384)][(i % 3) as usize];
    let mut maintenance = Maintenance::none();
    if i % 200 == 7 {
        maintenance.mode = Mode::Draining;
    }
    let mut h = Host {
        name: format!("host-{i:06}.pod{:03}", i / 1000),
        cpus,
        ram_mb: ram_gb * 1024,
        disk_mb: 1 << 20,
        gpus: if i.is_multiple_of(50) { 4 } else { 0 },
        ports: vec![(31000, 31999)],
        attrs: vec![
            ("rack".into(), format!("r{}", i / 40)),
            ("zone".into(), format!("z{}", i % 3)),
        ],
        cpu_factor: 1.0,
        transport: Transport::Local,
        maintenance,
        access: Default::default(),
        liveness: Default::default(),
    };
    if i % 500 == 11 {
        h.liveness.life = Life::Down;
    }
    h
}

fn key(j: u32) -> String {
    format!("role{}/prod/job{j}", j % 97)
}

/// Writes the state and the job files of a fleet of `hosts`.
fn fill(state: &Path, jobs_file: &Path, hosts: u32) {
    let jobs = hosts * TASKS_PER_HOST / PER_JOB;
    let mut s = State::open_writer(state).unwrap();
    s.write(|tx| {
        for i in 0..hosts {
            tx.upsert(host(i));
        }
        for j in 0..jobs {
            let mut job = Job {
                announce: None,
                key: key(j),
                ports: vec!["http".into()],
                rollout: Default::default(),
                runs: Default::default(),
                counts: Default::default(),
            };
            job.counts.placed = (PER_JOB + j % 7) as u64;
            if j % 10 == 0 {
                job.runs.runs = (j % 13) as u64;
                job.runs.current = 1_796_000_000;
            }
            tx.upsert(job);
        }
        Ok(())
    })
    .unwrap();
    // Tasks in batches: one transaction holds at most a few MiB of records.
    let per_batch = 50_000;
    let total = hosts * TASKS_PER_HOST;
    for start in (0..total).step_by(per_batch as usize) {
        s.write(|tx| {
            for n in start..(start + per_batch).min(total) {
                let mut t = Task::new(n / PER_JOB, n % PER_JOB);
                t.host = n % hosts;
                (t.cpus, t.ram_mb) = [(500, 512), (1_000, 2_048), (2_000, 8_192)][(n % 3) as usize];
                t.state = match n % 100 {
                    0 => TaskState::Throttled,
                    1 => TaskState::Finished,
                    2 => TaskState::Lost,
                    _ => TaskState::Running,
                };
                t.healthy = t.state == TaskState::Running && n % 37 != 0;
                t.incarnation = 1;
                tx.upsert(t);
            }
            Ok(())
        })
        .unwrap();
    }
    let mut text = String::new();
    for j in 0..jobs {
        text.push_str(&format!(
            "{{\"job\":\"{}\",\"instances\":{PER_JOB},\"cmd\":[\"serve\"],\"resources\":{{\"cpus\":0.5,\"ram_mb\":512,\"ports\":[\"http\"]}}}}\n",
            key(j)
        ));
    }
    std::fs::write(jobs_file, text).unwrap();
}

/// The pass's pending records: one instance of one job in fifty.
fn pending(hosts: u32) -> Vec<(String, String)> {
    let jobs = hosts * TASKS_PER_HOST / PER_JOB;
    (0..jobs)
        .step_by(50)
        .map(|j| {
            let why = ["insufficient ram_mb", "insufficient cpus", "limit host:1"];
            (key(j), why[(j % 3) as usize].to_string())
        })
        .collect()
}

fn main() {
    let Some(bench) = Bench::from_args("metrics") else {
        return;
    };
    let rounds = common::rounds(5);
    println!("job metrics: the Prometheus text against reading the state, medians of {rounds}");
    println!("| hosts | tasks | jobs | read the state | read the job files | render | text | render / read |");
    println!("|---|---|---|---|---|---|---|---|");
    for hosts in SIZES {
        if !bench.want(&hosts.to_string()) {
            continue;
        }
        let dir = bench.dir.join(format!("fleet-{hosts}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (state_path, jobs_file) = (dir.join("state"), dir.join("jobs.jsonl"));
        fill(&state_path, &jobs_file, hosts);
        let pending = pending(hosts);
        let (mut open, mut files, mut render, mut bytes) = (Vec::new(), Vec::new(), Vec::new(), 0);
        for _ in 0..rounds {
            let t = Instant::now();
            let state = State::open(&state_path).unwrap();
            open.push(t.elapsed());
            let t = Instant::now();
            let read = formic::job::read_all(std::slice::from_ref(&jobs_file));
            files.push(t.elapsed());
            let t = Instant::now();
            let text = formic::job::metrics::render(&formic::job::metrics::Sources {
                view: state.view(),
                specs: &read.jobs,
                refused: read.errors.len(),
                pending: Some(&pending),
                pass: Some(formic::job::metrics::Pass {
                    started: 0.0,
                    status: 0,
                }),
                now: 1.0,
            })
            .unwrap();
            render.push(t.elapsed());
            bytes = text.len();
        }
        let (open, files, render) = (median(open), median(files), median(render));
        println!(
            "| {hosts} | {} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} MiB | {:.2} |",
            hosts * TASKS_PER_HOST,
            hosts * TASKS_PER_HOST / PER_JOB,
            ms(open),
            ms(files),
            ms(render),
            bytes as f64 / (1 << 20) as f64,
            render.as_secs_f64() / open.as_secs_f64(),
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
