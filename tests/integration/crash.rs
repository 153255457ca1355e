//! Crash torture: writers are SIGKILLed at random moments while they commit; after every
//! kill the state must open, hold every transaction the writer acknowledged, and equal a
//! replay of exactly the transactions it holds.
//!
//! The writer commits deterministic transactions `txn(i)`, printing `ack i` only after
//! `write` returned. Each transaction changes something, so the state's txid counts the
//! transactions it holds; the next writer resumes at that index. A small checkpoint
//! threshold makes checkpoints (in-place table rewrites) frequent, so kills land in them too.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use formic::host::{Host, Maintenance, Transport};
use formic::state::{Options, State, Txn};
use formic::task::{Job, Task, TaskState};

use crate::common;

const HOSTS: u64 = 64;
const JOBS: u64 = 8;
const INSTANCES: u64 = 3000;
const TASKS_PER_TXN: u64 = 10;

fn job_key(n: u64) -> String {
    format!("torture/test/j{n}")
}

/// What transaction `i` writes, as the model sees it.
struct Txn_ {
    host: (String, u32, u64),
    job: String,
    tasks: Vec<(u32, u32)>, // (instance, cpus)
    remove: Option<(String, u32)>,
}

fn txn_plan(i: u64) -> Txn_ {
    Txn_ {
        host: (format!("h{}", i % HOSTS), 1000 * (1 + (i % 97) as u32), i),
        job: job_key(i % JOBS),
        tasks: (0..TASKS_PER_TXN)
            .map(|k| (((i * TASKS_PER_TXN + k) % INSTANCES) as u32, k as u32))
            .collect(),
        remove: i
            .is_multiple_of(5)
            .then(|| (job_key((i / 5) % JOBS), ((i * 37) % INSTANCES) as u32)),
    }
}

/// Applies transaction `i` through the library, as a tool would.
fn apply(tx: &mut Txn, i: u64) -> anyhow::Result<()> {
    let plan = txn_plan(i);
    let (name, cpus, ram) = plan.host;
    let host = Host {
        name: name.clone(),
        cpus,
        ram_mb: ram,
        disk_mb: 0,
        gpus: 0,
        ports: vec![(31000, 31999)],
        attrs: vec![("gen".into(), i.to_string())],
        cpu_factor: 1.0,
        transport: Transport::Local,
        maintenance: Maintenance::none(),
    };
    let host_slot = tx.upsert(host);
    let job = tx.view().jobs.find(&plan.job).unwrap_or_else(|| {
        tx.upsert(Job {
            announce: None,
            key: plan.job.clone(),
            ports: vec!["http".into()],
        })
    });
    for (instance, cpus) in plan.tasks {
        let mut t = Task::new(job, instance);
        t.host = host_slot;
        t.state = TaskState::Running;
        t.pid = i as u32;
        t.cpus = cpus;
        tx.upsert(t);
    }
    if let Some((key, instance)) = plan.remove {
        if let Some(j) = tx.view().jobs.find(&key) {
            if let Some(slot) = tx.view().tasks.find(&(j, instance)) {
                tx.remove::<Task>(slot);
            }
        }
    }
    Ok(())
}

/// The expected content: hosts by name, tasks by (job, instance) -> (host, pid, cpus).
#[derive(Default, Debug, PartialEq)]
struct Model {
    hosts: BTreeMap<String, (u32, u64, String)>,
    tasks: BTreeMap<(String, u32), (String, u32, u32)>,
}

impl Model {
    fn apply(&mut self, i: u64) {
        let plan = txn_plan(i);
        let (name, cpus, ram) = plan.host;
        self.hosts.insert(name.clone(), (cpus, ram, i.to_string()));
        for (instance, c) in plan.tasks {
            self.tasks
                .insert((plan.job.clone(), instance), (name.clone(), i as u32, c));
        }
        if let Some(key) = plan.remove {
            self.tasks.remove(&key);
        }
    }

    fn of(state: &State) -> Model {
        let v = state.view();
        let mut m = Model::default();
        for (_, h) in v.hosts.iter() {
            m.hosts.insert(
                h.name.clone(),
                (h.cpus, h.ram_mb, h.attr("gen").unwrap_or("").into()),
            );
        }
        for (_, t) in v.tasks.iter() {
            let job = v.jobs.get(t.job).expect("task's job exists").key.clone();
            let host = v
                .hosts
                .get(t.host)
                .expect("task's host exists")
                .name
                .clone();
            m.tasks.insert((job, t.instance), (host, t.pid, t.cpus));
        }
        m
    }
}

/// Child role: commit transactions from FORMIC_TEST_START on, acknowledging each.
pub fn writer_child() {
    let path = PathBuf::from(std::env::var("FORMIC_TEST_STATE").unwrap());
    let start: u64 = std::env::var("FORMIC_TEST_START").unwrap().parse().unwrap();
    let checkpoint: u64 = std::env::var("FORMIC_TEST_CHECKPOINT")
        .unwrap()
        .parse()
        .unwrap();
    let opts = Options {
        checkpoint_bytes: checkpoint,
        ..Options::default()
    };
    let mut state = State::open_with(&path, opts, true).unwrap();
    let mut out = std::io::stdout().lock();
    for i in start..start + 1_000_000 {
        state.write(|tx| apply(tx, i)).unwrap();
        writeln!(out, "ack {i}").unwrap();
        out.flush().unwrap();
    }
}

/// A small deterministic generator: the kill schedule is reproducible from its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn torture(dir: &Path, kills: u32, checkpoint: u64, seed: u64) {
    let path = dir.join("state");
    let mut rng = Rng(seed);
    let mut model = Model::default();
    let mut held = 0u64; // transactions the state holds (== its txid)
    let started = Instant::now();
    for kill in 0..kills {
        let mut child = common::child("torture-writer")
            .env("FORMIC_TEST_STATE", &path)
            .env("FORMIC_TEST_START", held.to_string())
            .env("FORMIC_TEST_CHECKPOINT", checkpoint.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut last = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(i) = line.strip_prefix("ack ") {
                    last = Some(i.parse::<u64>().unwrap());
                }
            }
            last
        });
        // Spread kills from "while opening" to "after many commits".
        let delay = Duration::from_micros(rng.next() % 25_000);
        std::thread::sleep(delay);
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(
            status.code().is_none() || status.success(),
            "writer failed: {status:?}"
        );
        let acked = reader.join().unwrap();

        if held == 0 && acked.is_none() && !path.exists() {
            // Killed before it created the tables file (on a loaded machine the writer can
            // take longer to start than the delay): there is nothing to hold yet.
            continue;
        }
        let state = State::open(&path)
            .unwrap_or_else(|e| panic!("kill {kill}: state does not open: {e:#}"));
        let txid = state.view().txid;
        if let Some(a) = acked {
            assert!(
                txid > a,
                "kill {kill}: transaction {a} was acknowledged but the state holds only {txid}"
            );
        }
        // Beyond what was acknowledged (or held before), only the one transaction in flight
        // when the kill landed may be there.
        let bound = held.max(acked.map_or(0, |a| a + 1)) + 1;
        assert!(
            txid <= bound,
            "kill {kill}: state holds {txid} transactions, at most {bound} were attempted"
        );
        assert!(
            txid >= held,
            "kill {kill}: state went back from {held} to {txid} transactions"
        );
        while held < txid {
            model.apply(held);
            held += 1;
        }
        assert!(
            Model::of(&state) == model,
            "kill {kill}: state differs from the replay of its {txid} transactions"
        );
    }
    assert!(
        held > kills as u64 / 4,
        "writers made too little progress ({held} transactions) to test anything"
    );
    eprintln!(
        "{kills} kills, {held} transactions, {:?}",
        started.elapsed()
    );
}

/// 500 kills with frequent checkpoints (every few transactions).
#[test]
fn sigkill_at_random_points_loses_nothing_acknowledged() {
    let dir = common::tempdir();
    torture(dir.path(), 500, 16 << 10, 0x9e37_79b9_7f4a_7c15);
}

/// Fewer kills with the default threshold: long journals replayed on open.
#[test]
fn sigkill_with_long_journal() {
    let dir = common::tempdir();
    torture(dir.path(), 60, 8 << 20, 0x2545_f491_4f6c_dd1d);
}
