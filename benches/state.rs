//! State file benchmark: commit cost against cluster size, and the time to open and read a
//! fleet-sized state. Run: `cargo bench --bench state` (or scripts/bench-state).
//!
//! Figures are medians over repeated runs, and the large-file figures are also given as a
//! ratio against the empty file measured in the same run, so a noisy machine moves both.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{median, ms, Bench};
use formic::host::{Host, Maintenance, Transport};
use formic::state::{Options, State};
use formic::task::{Job, Task, TaskState};

const HOSTS: u32 = 100_000;
const JOBS: u32 = 10_000;
const PER_JOB: u32 = 100;
const COMMITS: usize = 300;
const OPENS: usize = 7;

fn host(i: u32) -> Host {
    Host {
        name: format!("host-{i:06}.pod{:03}.example.net", i / 1000),
        cpus: 32_000,
        ram_mb: 128 * 1024,
        disk_mb: 1 << 20,
        gpus: 0,
        ports: vec![(31000, 31999)],
        attrs: vec![
            ("rack".into(), format!("r{}", i / 40)),
            ("zone".into(), format!("z{}", i % 3)),
        ],
        cpu_factor: 1.0,
        transport: Transport::Local,
        maintenance: Maintenance::none(),
        access: Default::default(),
        liveness: Default::default(),
    }
}

/// Fills a state with the fleet: hosts, jobs, and a million running tasks, in batches.
fn fill(path: &Path) {
    let mut s = State::open_writer(path).unwrap();
    s.write(|tx| {
        for i in 0..HOSTS {
            tx.upsert(host(i));
        }
        for j in 0..JOBS {
            tx.upsert(Job {
                announce: None,
                key: format!("role{}/prod/job{j}", j % 50),
                ports: vec!["http".into()],
                rollout: Default::default(),
                runs: Default::default(),
                counts: Default::default(),
            });
        }
        Ok(())
    })
    .unwrap();
    for batch in 0..10 {
        s.write(|tx| {
            for j in batch * JOBS / 10..(batch + 1) * JOBS / 10 {
                for k in 0..PER_JOB {
                    let mut t = Task::new(j, k);
                    t.host = (j * PER_JOB + k) % HOSTS;
                    t.state = TaskState::Running;
                    t.cpus = 500;
                    t.ram_mb = 512;
                    t.ports[0] = 31000 + (k as u16 % 1000);
                    tx.upsert(t);
                }
            }
            Ok(())
        })
        .unwrap();
    }
    s.checkpoint_now().unwrap();
}

/// What a timed commit does to its one task.
#[derive(Clone, Copy, PartialEq)]
enum Change {
    /// Its failure count and clock: nothing the history or the counts see.
    Plain,
    /// RUNNING and KILLING in turn: a line in the history.
    Transition,
    /// A new incarnation ASSIGNED: a line in the history and a placement added to its
    /// job's counts (the job record written in the same commit).
    Placement,
}

fn one_commit(s: &mut State, n: u32, change: Change) -> Duration {
    let t0 = Instant::now();
    s.write(|tx| {
        let slot = n % tx.view().tasks.high_water().max(1) as u32;
        let mut t = tx
            .view()
            .tasks
            .get(slot)
            .cloned()
            .unwrap_or_else(|| Task::new(0, n));
        t.failures = t.failures.wrapping_add(1);
        t.since = tx.now();
        match change {
            Change::Plain => {}
            Change::Transition => {
                t.state = match t.state {
                    TaskState::Killing => TaskState::Running,
                    _ => TaskState::Killing,
                }
            }
            Change::Placement => {
                t.state = TaskState::Assigned;
                t.incarnation += 1;
            }
        }
        tx.set(slot, Some(t));
        Ok(())
    })
    .unwrap();
    t0.elapsed()
}

/// Medians of COMMITS commits of `change` on each file, interleaved so that both see the
/// same machine.
fn commits(a: &mut State, b: &mut State, change: Change) -> (Duration, Duration) {
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for n in 0..COMMITS as u32 {
        ta.push(one_commit(a, n, change));
        tb.push(one_commit(b, n * 7919, change));
    }
    (median(ta), median(tb))
}

fn main() {
    // Not from a test runner's smoke run: this writes a 200 MiB file. FORMIC_BENCH_DIR keeps
    // the files (to profile the opener).
    let Some(bench) = Bench::from_args("state") else {
        return;
    };
    let dir = &bench.dir;
    let empty = dir.join("empty");
    let big = dir.join("big");

    let t0 = Instant::now();
    fill(&big);
    let fill_time = t0.elapsed();
    {
        let mut s = State::open_writer(&empty).unwrap();
        s.write(|tx| {
            tx.upsert(Job {
                announce: None,
                key: "a/b/c".into(),
                ports: vec![],
                rollout: Default::default(),
                runs: Default::default(),
                counts: Default::default(),
            });
            tx.upsert(Task::new(0, 0));
            Ok(())
        })
        .unwrap();
        s.checkpoint_now().unwrap();
    }
    let size = std::fs::metadata(&big).unwrap().len();

    // Commits, interleaved so that both files see the same machine.
    let opts = Options::default();
    let mut a = State::open_with(&empty, opts.clone(), true).unwrap();
    let mut b = State::open_with(&big, opts, true).unwrap();
    let (ca, cb) = commits(&mut a, &mut b, Change::Plain);
    let (xa, xb) = commits(&mut a, &mut b, Change::Transition);
    let (pa, pb) = commits(&mut a, &mut b, Change::Placement);

    // Checkpoint after the commits: folds what changed, whatever the file's size.
    let t0 = Instant::now();
    a.checkpoint_now().unwrap();
    let cpa = t0.elapsed();
    let t0 = Instant::now();
    b.checkpoint_now().unwrap();
    let cpb = t0.elapsed();
    drop((a, b));

    // Open and read everything (warm page cache: what a cron pass sees).
    let mut opens = Vec::new();
    let mut counts = (0, 0);
    for _ in 0..OPENS {
        let t0 = Instant::now();
        let s = State::open(&big).unwrap();
        opens.push(t0.elapsed());
        counts = (s.view().hosts.len(), s.view().tasks.len());
    }
    let open = median(opens);
    assert_eq!(counts, (HOSTS as usize, (JOBS * PER_JOB) as usize));

    println!(
        "state file benchmark ({} hosts, {} tasks, file {:.0} MiB, filled in {:.1} s)",
        counts.0,
        counts.1,
        size as f64 / (1 << 20) as f64,
        fill_time.as_secs_f64()
    );
    println!(
        "one-task commit, empty file:        median {:.3} ms over {COMMITS}",
        ms(ca)
    );
    println!(
        "one-task commit, 1,000,000 tasks:   median {:.3} ms over {COMMITS}",
        ms(cb)
    );
    println!(
        "  ratio large/empty:                {:.2} (target <= 2)",
        cb.as_secs_f64() / ca.as_secs_f64()
    );
    println!(
        "one-transition commit (and its history line), empty / 1,000,000 tasks: median {:.3} / {:.3} ms over {COMMITS}",
        ms(xa),
        ms(xb)
    );
    println!(
        "one-placement commit (its history line, and its job's counts), empty / 1,000,000 tasks: median {:.3} / {:.3} ms over {COMMITS}",
        ms(pa),
        ms(pb)
    );
    println!(
        "checkpoint of {} commits, empty: {:.3} ms; large: {:.3} ms",
        3 * COMMITS,
        ms(cpa),
        ms(cpb)
    );
    println!("open and read 100,000 hosts + 1,000,000 tasks: median {:.1} ms over {OPENS} (target < 100)", ms(open));
}
