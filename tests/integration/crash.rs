//! Crash torture: writers are SIGKILLed at random moments while they commit; after every
//! kill the state must open, hold every transaction the writer acknowledged, and equal a
//! replay of exactly the transactions it holds.
//!
//! A SIGKILL leaves the page cache to the disk; a power cut does not. What a power cut can
//! leave of the journal is built from the journal as each commit left it, and must open
//! the same way.
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
use formic::state::{journal_path, Options, State, Txn};
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
        access: Default::default(),
        liveness: Default::default(),
    };
    let host_slot = tx.upsert(host);
    let job = tx.view().jobs.find(&plan.job).unwrap_or_else(|| {
        tx.upsert(Job {
            announce: None,
            key: plan.job.clone(),
            ports: vec!["http".into()],
            rollout: Default::default(),
            runs: Default::default(),
            counts: Default::default(),
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
    assert_history_as_replayed(dir, held);
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

// --- power cuts ---

/// Where the journal's header records even and odd transactions (lib/state/journal.rs).
const RECORDS: [usize; 2] = [8, 36];

/// The journal after each commit: `[t]` as transaction t (0 = none) left it, with the
/// tables file that goes with them (no checkpoint), and the writer to go on with.
fn journals(path: &Path, commits: u64) -> (Vec<Vec<u8>>, Vec<u8>, State) {
    let opts = Options {
        checkpoint_bytes: 1 << 40,
        ..Options::default()
    };
    let mut s = State::open_with(path, opts, true).unwrap();
    let mut j = vec![std::fs::read(journal_path(path)).unwrap()];
    for i in 0..commits {
        s.write(|tx| apply(tx, i)).unwrap();
        j.push(std::fs::read(journal_path(path)).unwrap());
    }
    (j, std::fs::read(path).unwrap(), s)
}

/// The model after transactions 0..t.
fn model_of(t: u64) -> Model {
    let mut m = Model::default();
    (0..t).for_each(|i| m.apply(i));
    m
}

/// Opens the image `tables` + `journal` for reading and for writing; it must hold exactly
/// `want` transactions.
fn assert_opens_with(dir: &Path, tables: &[u8], journal: &[u8], want: u64, what: &str) {
    let path = dir.join("state");
    std::fs::write(&path, tables).unwrap();
    std::fs::write(journal_path(&path), journal).unwrap();
    for writable in [false, true] {
        let state = if writable {
            State::open_writer(&path)
        } else {
            State::open(&path)
        }
        .unwrap_or_else(|e| panic!("{what}: refused after a power cut: {e:#}"));
        assert_eq!(state.view().txid, want, "{what}");
        assert!(Model::of(&state) == model_of(want), "{what}: wrong content");
    }
}

/// Cuts of an entry `len` bytes long: none of it, the head only, parts, all but a byte,
/// all of it.
fn cuts(len: usize) -> Vec<usize> {
    vec![0, 1, 31, 32, 100, 512, len / 2, len - 1, len]
}

/// During commit n+1, after commit n was acknowledged: its fdatasync carried the record of
/// commit n-1 to the disk, while the record of commit n and the entry of n+1 are written
/// and not yet flushed. So the header holds the record of n-1 and, of commit n's record,
/// nothing, all, or a torn part; the entry of n+1 may be cut anywhere, or have a hole where
/// a block did not reach the disk. Each image opens with commit n, and n+1 when its entry
/// is whole: the records must never make a crash look like damage. (Written for the
/// records; the journal without them accepted every cut tail, so this passed before.)
#[test]
fn power_cut_mid_commit_keeps_every_acknowledged_commit() {
    let dir = common::tempdir();
    let img = common::tempdir();
    let (j, tables, _) = journals(&dir.path().join("state"), 8);
    for n in 1..8 {
        let torn = {
            let mut h = j[n][..64].to_vec();
            h[RECORDS[n % 2] + 5] ^= 0x5a;
            h
        };
        let headers = [
            ("record n unwritten", j[n - 1][..64].to_vec()),
            ("record n written", j[n][..64].to_vec()),
            ("record n torn", torn),
        ];
        let (start, end) = (j[n].len(), j[n + 1].len());
        for (h, header) in &headers {
            for cut in cuts(end - start) {
                let image = [&header[..], &j[n + 1][64..start + cut]].concat();
                let want = if start + cut == end { n + 1 } else { n } as u64;
                let what = format!(
                    "commit {n} acknowledged, {h}, {cut} bytes of entry {}",
                    n + 1
                );
                assert_opens_with(img.path(), &tables, &image, want, &what);
            }
            let mut hole = [&header[..], &j[n + 1][64..]].concat();
            hole[start..start + 512].fill(0);
            let what = format!("commit {n} acknowledged, {h}, entry {} with a hole", n + 1);
            assert_opens_with(img.path(), &tables, &hole, n as u64, &what);
        }
    }
}

/// A checkpoint cuts the journal back to its header without a flush of its own; after a
/// power cut the entries of the older generation may still be there, and the first commit
/// after the checkpoint written over their top, cut anywhere. Each image opens with every
/// acknowledged commit.
#[test]
fn power_cut_after_a_checkpoint_keeps_every_acknowledged_commit() {
    let dir = common::tempdir();
    let img = common::tempdir();
    let path = dir.path().join("state");
    let (j, _, mut s) = journals(&path, 6);
    s.checkpoint_now().unwrap();
    let tables = std::fs::read(&path).unwrap();
    let old = &j[6];
    assert_opens_with(img.path(), &tables, old, 6, "the cut lost");
    s.write(|tx| apply(tx, 6)).unwrap();
    let next = std::fs::read(journal_path(&path)).unwrap();
    let len = next.len() - 64;
    assert!(
        old.len() > next.len(),
        "the older entries outlast the new one"
    );
    for cut in cuts(len) {
        let mut image = old.clone();
        image[64..64 + cut].copy_from_slice(&next[64..64 + cut]);
        // A byte not written may hold what was to be written there (zeros, often).
        let want = if image[64..next.len()] == next[64..] {
            7
        } else {
            6
        };
        let what = format!("the cut lost, {cut} bytes of commit 7 over the old entries");
        assert_opens_with(img.path(), &tables, &image, want, &what);
    }
    // Commit 7's record reaches the disk only after its entry did.
    let mut image = old.clone();
    image[..next.len()].copy_from_slice(&next);
    assert_opens_with(
        img.path(),
        &tables,
        &image,
        7,
        "the cut lost, commit 7 recorded",
    );
}

/// The history of a tortured state: every transition of the transactions it holds, once,
/// as a writer never killed writes them (the lines of a transaction a kill cut short are
/// never read, and cut off by the next writer).
fn assert_history_as_replayed(dir: &Path, held: u64) {
    let replayed = dir.join("replayed");
    std::fs::create_dir(&replayed).unwrap();
    let mut clean = State::open_writer(&replayed.join("state")).unwrap();
    for i in 0..held {
        clean.write(|tx| apply(tx, i)).unwrap();
    }
    // What the writer and the time were differ; what happened may not.
    let lines = |state: &Path| {
        let mut out = Vec::new();
        formic::state::history::Reader::new(state)
            .read(held, |l| {
                let mut v: serde_json::Value = serde_json::from_slice(l).unwrap();
                for k in ["ts", "by", "user"] {
                    v.as_object_mut().unwrap().remove(k);
                }
                out.push(v);
            })
            .unwrap();
        out
    };
    let (tortured, expected) = (lines(&dir.join("state")), lines(&replayed.join("state")));
    assert!(!expected.is_empty());
    assert_eq!(tortured.len(), expected.len(), "as many transitions");
    assert!(tortured == expected, "the same transitions, in order");
}
