//! announce benchmark, against a standalone ZooKeeper server the bench starts itself
//! (Debian's `zookeeper` package). Run: `cargo bench --bench announce` (or
//! scripts/bench-announce, which installs the package and builds the release binaries);
//! `cargo bench --bench announce -- join|death` runs one section.
//!
//! `join`: a state (written directly through the library) with one local host and one job
//! with an announce block, 10,000 tasks RUNNING and healthy, each with its own port. Timed
//! from spawning `announce --zk ADDR --follow` until 10,000 join lines have been read from
//! its stdout; a separate client then checks that exactly 10,000 members exist, each with
//! the data its task asks for. That time includes announce's process start, state open,
//! session set-up and serverset path creation; its write of the `announced` marks comes
//! after its last line and is timed apart (until a reader of the state sees all 10,000).
//! Baselines, in the same rounds on the same server, with the same crate
//! (`zookeeper-client`) and the same member data (10,000 ephemeral sequential creates under
//! a fresh path; the session and the path are made before the clock starts):
//! - window: a sliding window of 2,000 single creates in flight (the best a loop of the
//!   crate's `create` does; the baseline of the target);
//! - batches: batches of 2,000 single creates awaited together;
//! - multi: multi requests of 100 creates, 20 in flight: the same requests as announce's,
//!   so announce / multi is what announce's own work costs;
//! - serial: one create awaited at a time (for reference).
//!
//! The server runs with a fixed 1 GiB heap and snapCount=10000000, so that neither a heap
//! resize nor a snapshot lands in one measurement and not another; it still fsyncs its log.
//!
//! Rounds (FORMIC_BENCH_ROUNDS, default 9) alternate the order; figures are medians.
//!
//! `death`: a real cluster (`offer add`, `pack`, `launch`) of 20 `sleep` instances with an
//! announce block, `reap --follow` and `announce --zk --follow` running; 20 times, a task is
//! SIGKILLed (pid from `reap tasks`) and timed until its member node is gone from ZooKeeper
//! (polled with `exists` every 2 ms), and until reap's event and announce's leave line. Both
//! followers poll the state every 50 ms; reap --follow is restarted before each kill, at
//! another phase of announce's polls each time, so the kills see many phases between the two
//! (started together, they would keep one). FORMIC_BENCH_VERBOSE=1 prints each kill's timings and the lines timed.
//!
//! Every process the bench starts works in a directory under the bench directory; each
//! section's processes are killed at its end (also on a panic), the ZooKeeper server at the
//! end of the run. The bench is a child subreaper, so it reaps orphaned supervisors and tasks.

mod common;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use common::{
    keep_files, lines_of, loadavg, median, ms, package_version, percentile, pipe, schedstat,
    settle, tool, verdict, Bench, Pauses, Sweep,
};
use formic::host::{Host, Maintenance, Transport};
use formic::state::State;
use formic::task::{Announce, Job, Task, TaskState};
use futures::StreamExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use zookeeper_client::{Acls, Client, CreateMode};

/// Members in the join section.
const MEMBERS: usize = 10_000;
/// Creates in flight at once: announce's window.
const WINDOW: usize = 2000;
/// Creates in one multi request, as announce sends them.
const MULTI: usize = 100;
/// Instances in the death section, and kills.
const INSTANCES: usize = 20;
const KILLS: usize = 20;
/// How often the death section asks ZooKeeper whether a member is still there.
const POLL: Duration = Duration::from_millis(2);
/// Anything that takes longer has failed.
const LIMIT: Duration = Duration::from_secs(120);
/// The pause after each measurement, for its writes to settle.
const SETTLE: Duration = Duration::from_millis(300);

fn main() {
    // FORMIC_BENCH_DIR keeps the files (states, task directories, logs).
    let Some(bench) = Bench::from_args("announce") else {
        return;
    };
    let rounds = common::rounds(9);
    let dir = bench.dir.clone();
    nix::sys::prctl::set_child_subreaper(true).unwrap();

    let zk = ZkServer::start(&dir.join("zk"));
    println!(
        "announce benchmark: ZooKeeper {} standalone at {} (started in {:.1} s), {} cores, load average {} at the start",
        package_version("zookeeper"),
        zk.addr,
        zk.started.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    if bench.want("join") {
        join_section(&dir, &zk, rounds);
    }
    if bench.want("death") {
        death_section(&dir, &zk);
    }
}

// ---------------------------------------------------------------------------------------
// ZooKeeper

/// A standalone ZooKeeper server of the bench's own, killed when dropped.
struct ZkServer {
    child: Child,
    addr: String,
    started: Duration,
}

impl ZkServer {
    fn start(dir: &Path) -> ZkServer {
        let _ = fs::remove_dir_all(dir); // a kept directory's last run
        fs::create_dir_all(dir.join("data")).unwrap();
        let port = free_port();
        let cfg = dir.join("zoo.cfg");
        fs::write(
            &cfg,
            format!(
                "tickTime=2000\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
                 admin.enableServer=false\n4lw.commands.whitelist=*\nsnapCount=10000000\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let t0 = Instant::now();
        let child = Command::new("java")
            .args([
                "-Xms1g",
                "-Xmx1g",
                "-cp",
                "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar",
                "-Dzookeeper.root.logger=WARN,CONSOLE",
                "org.apache.zookeeper.server.quorum.QuorumPeerMain",
            ])
            .arg(&cfg)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.join("zookeeper.log")).unwrap())
            .stderr(Stdio::from(
                fs::File::options()
                    .append(true)
                    .open(dir.join("zookeeper.log"))
                    .unwrap(),
            ))
            .spawn()
            .expect("starting ZooKeeper (java and Debian's zookeeper package)");
        let mut server = ZkServer {
            child,
            addr: format!("127.0.0.1:{port}"),
            started: Duration::ZERO,
        };
        while four_letters(&server.addr, "ruok").as_deref() != Some("imok") {
            if let Some(s) = server.child.try_wait().unwrap() {
                panic!(
                    "ZooKeeper exited ({s}): {}",
                    fs::read_to_string(dir.join("zookeeper.log")).unwrap_or_default()
                );
            }
            assert!(t0.elapsed() < LIMIT, "ZooKeeper did not answer ruok");
            std::thread::sleep(Duration::from_millis(100));
        }
        server.started = t0.elapsed();
        server
    }

    /// A new session, ready to use.
    fn client(&self) -> Client {
        block_on(
            Client::connector()
                .with_session_timeout(Duration::from_secs(10))
                .connect(&self.addr),
        )
        .unwrap()
    }
}

impl Drop for ZkServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port no one listens on now (the kernel's pick; others pick theirs the same way).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A four-letter command's answer, or None while the server does not answer.
fn four_letters(addr: &str, cmd: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(cmd.as_bytes()).ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    Some(answer)
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

/// Closes a session and waits until the server has ended it (its ephemeral nodes gone).
fn close(client: Client) {
    let mut watcher = client.state_watcher();
    drop(client);
    let t0 = Instant::now();
    while !matches!(
        watcher.state(),
        zookeeper_client::SessionState::Closed | zookeeper_client::SessionState::Expired
    ) && t0.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The children of `path`, empty when it does not exist.
fn children(client: &Client, path: &str) -> Vec<String> {
    match block_on(client.list_children(path)) {
        Ok(c) => c,
        Err(zookeeper_client::Error::NoNode) => Vec::new(),
        Err(e) => panic!("listing {path}: {e}"),
    }
}

/// Waits until `path` has no children (a closed session's nodes are gone).
fn wait_empty(client: &Client, path: &str) {
    let t0 = Instant::now();
    while !children(client, path).is_empty() {
        assert!(t0.elapsed() < LIMIT, "{path} still has members");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------
// join: 10,000 members

/// One announce run of the join section.
#[derive(Clone, Copy, Debug, Default)]
struct AnnounceRun {
    /// From the spawn: stderr's "connected to ZooKeeper", the first and the last join line.
    connected: f64,
    first: f64,
    last: f64,
    /// From the spawn until a reader of the state sees all 10,000 `announced` marks.
    marked: f64,
    /// announce's time on a CPU and runnable waiting for one, ms, until its last line.
    on_cpu: f64,
    waiting: f64,
}

/// One raw create loop: session set-up, and the creates alone, ms.
#[derive(Clone, Copy, Debug, Default)]
struct RawRun {
    connect: f64,
    creates: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Measure {
    Announce,
    Window,
    Batches,
    Multi,
    Serial,
}

const MEASURES: [Measure; 5] = [
    Measure::Announce,
    Measure::Window,
    Measure::Batches,
    Measure::Multi,
    Measure::Serial,
];

fn join_section(dir: &Path, zk: &ZkServer, rounds: usize) {
    println!();
    println!(
        "join: {MEMBERS} members (RUNNING healthy tasks of one job) -> ZooKeeper, {rounds} rounds"
    );
    let checker = zk.client();
    let mut announce: Vec<AnnounceRun> = Vec::new();
    let mut raw: HashMap<&'static str, Vec<RawRun>> = HashMap::new();
    let mut data_size = 0;
    // The server is a JVM: its first 10,000 creates run mostly interpreted. One pass of
    // each pipelined kind first, not counted.
    {
        let work = common::fresh_dir(&dir.join("join-warmup"));
        let _sweep = Sweep(work.clone());
        let path = "/bench/warmup/announce";
        let state = work.join("state");
        let data = fill_join_state(&state, path);
        let a = announce_join(&work, &state, zk, &checker, path, &data);
        let w = raw_creates(zk, &checker, "/bench/warmup/window", &data, Measure::Window);
        let b = raw_creates(
            zk,
            &checker,
            "/bench/warmup/batches",
            &data,
            Measure::Batches,
        );
        println!(
            "warm-up, not counted: announce {:.0} ms, raw window {:.0} ms, raw batches {:.0} ms",
            a.last, w.creates, b.creates
        );
        if !keep_files() {
            drop(_sweep);
            let _ = fs::remove_dir_all(&work);
        }
    }
    for r in 0..rounds {
        let work = common::fresh_dir(&dir.join(format!("join-{r}")));
        let _sweep = Sweep(work.clone());
        let path = format!("/bench/announce/r{r}");
        let state = work.join("state");
        let data = fill_join_state(&state, &path);
        data_size = data.iter().map(Vec::len).sum::<usize>() / data.len();
        // Alternate orders: announce first in even rounds, last in odd ones.
        let mut order = MEASURES.to_vec();
        if r % 2 == 1 {
            order.reverse();
        }
        for m in order {
            settle(SETTLE);
            match m {
                Measure::Announce => {
                    let a = announce_join(&work, &state, zk, &checker, &path, &data);
                    println!(
                        "round {r} announce   {:>8.0} ms  {:>7.0} members/s  (connected {:.0} ms, first line {:.0} ms, marks {:.0} ms; on a CPU {:.0} ms, waiting for one {:.0} ms)",
                        a.last,
                        rate(a.last),
                        a.connected,
                        a.first,
                        a.marked,
                        a.on_cpu,
                        a.waiting
                    );
                    announce.push(a);
                }
                _ => {
                    let name = match m {
                        Measure::Window => "window",
                        Measure::Batches => "batches",
                        Measure::Multi => "multi",
                        _ => "serial",
                    };
                    let p = format!("/bench/raw-{name}/r{r}");
                    let x = raw_creates(zk, &checker, &p, &data, m);
                    println!(
                        "round {r} raw {name:<7}{:>8.0} ms  {:>7.0} members/s  (session set-up {:.1} ms, not counted)",
                        x.creates,
                        rate(x.creates),
                        x.connect
                    );
                    raw.entry(name).or_default().push(x);
                }
            }
        }
        if !keep_files() {
            drop(_sweep);
            let _ = fs::remove_dir_all(&work);
        }
    }

    let med = |xs: Vec<f64>| median(xs);
    let a_last = med(announce.iter().map(|a| a.last).collect());
    let raw_med = |n: &str| med(raw[n].iter().map(|x| x.creates).collect());
    let (w, b, s) = (raw_med("window"), raw_med("batches"), raw_med("serial"));
    let mu = raw_med("multi");
    // The ratio of rates, per round, then the median.
    let ratios: Vec<f64> = announce
        .iter()
        .zip(&raw["window"])
        .map(|(a, x)| x.creates / a.last)
        .collect();
    let ratio = med(ratios.clone());
    // Against the faster of the two pipelined loops, round by round: the stricter ratio.
    let best: Vec<f64> = announce
        .iter()
        .zip(raw["window"].iter().zip(&raw["batches"]))
        .map(|(a, (w, b))| w.creates.min(b.creates) / a.last)
        .collect();
    let best_ratio = med(best.clone());
    println!(
        "join, medians of {rounds} rounds ({MEMBERS} creates each, member data {data_size} bytes on average):"
    );
    println!(
        "  announce --zk --follow, spawn -> {MEMBERS} join lines  {a_last:>7.0} ms  {:>7.0} members/s",
        rate(a_last)
    );
    println!(
        "    spawn -> connected {:.0} ms, -> first join line {:.0} ms, -> {MEMBERS} marks in the state {:.0} ms",
        med(announce.iter().map(|a| a.connected).collect()),
        med(announce.iter().map(|a| a.first).collect()),
        med(announce.iter().map(|a| a.marked).collect())
    );
    println!(
        "    announce on a CPU {:.0} ms, runnable waiting for one {:.0} ms",
        med(announce.iter().map(|a| a.on_cpu).collect()),
        med(announce.iter().map(|a| a.waiting).collect())
    );
    println!(
        "  raw, window of {WINDOW} in flight       {w:>7.0} ms  {:>7.0} members/s",
        rate(w)
    );
    println!(
        "  raw, batches of {WINDOW}                {b:>7.0} ms  {:>7.0} members/s",
        rate(b)
    );
    println!(
        "  raw, multis of {MULTI}, {} in flight      {mu:>7.0} ms  {:>7.0} members/s",
        WINDOW / MULTI,
        rate(mu)
    );
    println!(
        "  raw, one at a time                 {s:>7.0} ms  {:>7.0} members/s",
        rate(s)
    );
    // The target's ratio is that of the medians (each measure's median rate); the median
    // of the per-round ratios is shown too. On a noisy machine the measures of one round are
    // seconds apart, so pairing them by round does not cancel the noise.
    let joined = |xs: &[f64]| {
        xs.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let of_medians = w / a_last;
    println!(
        "  announce / raw window (rates), ratio of the medians: {of_medians:.2}  target >= 0.80  {}",
        verdict(of_medians >= 0.80)
    );
    println!(
        "    median of the per-round ratios {ratio:.2} (rounds: {})",
        joined(&ratios)
    );
    println!(
        "  announce / raw batches (rates), ratio of the medians: {:.2}; announce / the faster pipelined loop of each round, median {best_ratio:.2} (rounds: {})",
        b / a_last,
        joined(&best)
    );
    println!(
        "  announce / raw multis (rates), ratio of the medians: {:.2} (the same requests as announce's: what its own work costs)",
        mu / a_last
    );
    close(checker);
}

fn rate(ms: f64) -> f64 {
    MEMBERS as f64 / (ms / 1e3)
}

/// A state with one local host, one job announced under `path` and MEMBERS tasks RUNNING and
/// healthy, each on its own port. Returns each member's data as announce makes it.
fn fill_join_state(state: &Path, path: &str) -> Vec<Vec<u8>> {
    let mut s = State::open_writer(state).unwrap();
    s.write(|tx| {
        tx.upsert(Host {
            name: "h1".into(),
            cpus: 64_000,
            ram_mb: 1 << 20,
            disk_mb: 1 << 20,
            gpus: 0,
            ports: vec![(20000, 20000 + MEMBERS as u16)],
            attrs: vec![],
            cpu_factor: 1.0,
            transport: Transport::Local,
            maintenance: Maintenance::none(),
            access: Default::default(),
            liveness: Default::default(),
        });
        tx.upsert(Job {
            key: "bench/prod/join".into(),
            ports: vec!["http".into()],
            announce: Some(Announce {
                path: path.into(),
                primary: 0,
            }),
            rollout: Default::default(),
            runs: Default::default(),
            counts: Default::default(),
        });
        Ok(())
    })
    .unwrap();
    s.write(|tx| {
        for i in 0..MEMBERS as u32 {
            let mut t = Task::new(0, i);
            t.host = 0;
            t.state = TaskState::Running;
            t.healthy = true;
            t.cpus = 10;
            t.ram_mb = 1;
            t.ports[0] = 20000 + i as u16;
            t.since = tx.now();
            tx.upsert(t);
        }
        Ok(())
    })
    .unwrap();
    s.checkpoint_now().unwrap();
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    let members = formic::announce::members(s.view(), &host);
    assert_eq!(members.len(), MEMBERS, "members the state asks for");
    members.into_values().map(|m| m.data).collect()
}

fn announce_join(
    work: &Path,
    state: &Path,
    zk: &ZkServer,
    checker: &Client,
    path: &str,
    data: &[Vec<u8>],
) -> AnnounceRun {
    let mut run = AnnounceRun::default();
    let mut reader = State::open(state).unwrap();
    let t0 = Instant::now();
    let mut child = tool("announce", state, work)
        .args(["--zk", &zk.addr, "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let err = lines_of(child.stderr.take().unwrap());
    let mut errors = Vec::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let mut joins = 0;
    let mut nodes = HashSet::new();
    while joins < MEMBERS {
        line.clear();
        let n = out.read_line(&mut line).unwrap();
        if n == 0 {
            errors.extend(err.try_iter().map(|(_, l)| l));
            panic!("announce ended after {joins} joins: {errors:?}");
        }
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["type"] == "member" && v["op"] == "join" {
            if joins == 0 {
                run.first = ms(t0.elapsed());
            }
            joins += 1;
            assert_eq!(v["path"], path);
            nodes.insert(v["member"].as_str().unwrap().to_string());
        }
    }
    run.last = ms(t0.elapsed());
    (run.on_cpu, run.waiting) = schedstat(pid).unwrap_or_default();
    // The marks: written after the last line.
    loop {
        reader.refresh().unwrap();
        let marked = reader
            .view()
            .tasks
            .iter()
            .filter(|(_, t)| t.announced)
            .count();
        if marked == MEMBERS {
            run.marked = ms(t0.elapsed());
            break;
        }
        assert!(t0.elapsed() < LIMIT, "{marked} announced marks");
        std::thread::sleep(Duration::from_millis(2));
    }
    for (at, l) in err.try_iter() {
        if l.contains("connected to ZooKeeper") && run.connected == 0.0 {
            run.connected = ms(at.saturating_duration_since(t0));
        }
        errors.push(l);
    }
    // A separate client: exactly MEMBERS members, the nodes announce named, with the data
    // the tasks ask for.
    check_members(checker, path, data, Some(&nodes));
    assert_eq!(nodes.len(), MEMBERS, "distinct member nodes");

    // SIGTERM: announce closes its session, and its members go with it.
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(30));
    errors.extend(err.try_iter().map(|(_, l)| l));
    assert!(
        status.is_some_and(|s| s.success()),
        "announce after SIGTERM: {status:?}: {errors:?}"
    );
    wait_empty(checker, path);
    run
}

/// Checks with a separate client that `path` holds exactly MEMBERS members, each with one
/// of the wanted data, every datum once (and the named nodes, when given).
fn check_members(checker: &Client, path: &str, data: &[Vec<u8>], nodes: Option<&HashSet<String>>) {
    let names = children(checker, path);
    assert_eq!(names.len(), MEMBERS, "members under {path}");
    if let Some(nodes) = nodes {
        let found: HashSet<String> = names.iter().cloned().collect();
        assert!(
            &found == nodes,
            "the nodes announce named are not those under {path}"
        );
    }
    let paths: Vec<String> = names.iter().map(|n| format!("{path}/{n}")).collect();
    let got: Vec<Vec<u8>> = block_on(
        futures::stream::iter(paths.iter().map(|p| checker.get_data(p)))
            .buffered(WINDOW)
            .map(|r| r.unwrap().0)
            .collect::<Vec<_>>(),
    );
    let mut got: Vec<&Vec<u8>> = got.iter().collect();
    let mut want: Vec<&Vec<u8>> = data.iter().collect();
    got.sort();
    want.sort();
    assert!(
        got == want,
        "member data under {path} differ from the tasks'"
    );
}

/// MEMBERS ephemeral sequential creates of the members' data under a fresh `path`, in a
/// session of their own; only the creates are timed.
fn raw_creates(
    zk: &ZkServer,
    checker: &Client,
    path: &str,
    data: &[Vec<u8>],
    how: Measure,
) -> RawRun {
    let t0 = Instant::now();
    let client = zk.client();
    let persistent = CreateMode::Persistent.with_acls(Acls::anyone_all());
    block_on(client.mkdir(path, &persistent)).unwrap();
    let connect = ms(t0.elapsed());
    let prefix = format!("{path}/member_");
    let options = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
    let create = |d: &Vec<u8>| client.create(&prefix, d, &options);
    let t0 = Instant::now();
    let answers = match how {
        Measure::Window => block_on(
            futures::stream::iter(data.iter().map(create))
                .buffered(WINDOW)
                .collect::<Vec<_>>(),
        ),
        Measure::Batches => {
            let mut answers = Vec::with_capacity(data.len());
            for chunk in data.chunks(WINDOW) {
                answers.extend(block_on(futures::future::join_all(
                    chunk.iter().map(create),
                )));
            }
            answers
        }
        Measure::Serial => data.iter().map(|d| block_on(create(d))).collect(),
        Measure::Multi => {
            let multis = block_on(
                futures::stream::iter(data.chunks(MULTI).map(|chunk| {
                    let mut multi = client.new_multi_writer();
                    for d in chunk {
                        multi.add_create(&prefix, d, &options).unwrap();
                    }
                    multi.commit()
                }))
                .buffered(WINDOW / MULTI)
                .collect::<Vec<_>>(),
            );
            let creates = ms(t0.elapsed());
            for m in multis {
                m.unwrap();
            }
            check_members(checker, path, data, None);
            close(client);
            wait_empty(checker, path);
            return RawRun { connect, creates };
        }
        Measure::Announce => unreachable!(),
    };
    let creates = ms(t0.elapsed());
    for a in answers {
        a.unwrap();
    }
    check_members(checker, path, data, None);
    close(client);
    wait_empty(checker, path);
    RawRun { connect, creates }
}

// ---------------------------------------------------------------------------------------
// death: a killed task's member goes

/// The job of the death section: tiny `sleep` instances with one port, announced.
const JOB: &str = "bench/prod/sleep";
const DEATH_PATH: &str = "/bench/death";

fn death_section(dir: &Path, zk: &ZkServer) {
    println!();
    let work = common::fresh_dir(&dir.join("death"));
    let _sweep = Sweep(work.clone());
    settle(SETTLE);
    let state = work.join("state");

    // The cluster: offer add, offer | pack, launch.
    let host = r#"{"type":"host","name":"h1","cpus":8,"ram_mb":8192,"disk_mb":100000,"ports":[[31000,31999]]}"#;
    pipe(tool("offer", &state, &work).arg("add"), host.as_bytes());
    let jobs = work.join("jobs.json");
    let spec = serde_json::json!({
        "job": JOB, "instances": INSTANCES, "cmd": ["sleep", "100000"],
        "resources": {"cpus": 0.01, "ram_mb": 1, "ports": ["http"]},
        "announce": {"primary": "http", "path": DEATH_PATH},
    });
    fs::write(&jobs, spec.to_string()).unwrap();
    let offers = pipe(&mut tool("offer", &state, &work), b"");
    let places = pipe(tool("pack", &state, &work).arg(&jobs), &offers);
    let launched = pipe(
        tool("launch", &state, &work).args(["--wait", "30", "--grace", "1"]),
        &places,
    );
    let running = String::from_utf8_lossy(&launched)
        .lines()
        .filter(|l| l.contains(r#""state":"RUNNING""#))
        .count();
    assert_eq!(running, INSTANCES, "launch's RUNNING events");

    // reap --follow and announce --zk --follow, their lines timestamped.
    let spawn_reap = || {
        let mut reap = tool("reap", &state, &work)
            .arg("--follow")
            .stdout(Stdio::piped())
            .stderr(
                fs::File::options()
                    .create(true)
                    .append(true)
                    .open(work.join("reap.err"))
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        let lines = lines_of(reap.stdout.take().unwrap());
        (reap, lines)
    };
    let (mut reap, mut reap_lines) = spawn_reap();
    let mut announce = tool("announce", &state, &work)
        .args(["--zk", &zk.addr, "--follow"])
        .stdout(Stdio::piped())
        .stderr(fs::File::create(work.join("announce.err")).unwrap())
        .spawn()
        .unwrap();
    let announce_lines = lines_of(announce.stdout.take().unwrap());
    let checker = zk.client();

    // Every instance a member: its node, by task.
    let mut node_of: HashMap<String, String> = HashMap::new();
    let t0 = Instant::now();
    while node_of.len() < INSTANCES || children(&checker, DEATH_PATH).len() < INSTANCES {
        for (_, l) in announce_lines.try_iter() {
            let v: serde_json::Value = serde_json::from_str(&l).unwrap();
            if v["op"] == "join" {
                node_of.insert(
                    v["task"].as_str().unwrap().into(),
                    v["member"].as_str().unwrap().into(),
                );
            }
        }
        for (name, child) in [("reap", &mut reap), ("announce", &mut announce)] {
            if let Some(s) = child.try_wait().unwrap() {
                panic!(
                    "{name} --follow exited ({s}): {}",
                    fs::read_to_string(work.join(format!("{name}.err"))).unwrap_or_default()
                );
            }
        }
        assert!(
            t0.elapsed() < LIMIT,
            "{} of {INSTANCES} members",
            node_of.len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let all_members = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    while reap_lines.try_recv().is_ok() {}

    // Each task's pid, from `reap tasks`.
    let listed = pipe(tool("reap", &state, &work).arg("tasks"), b"");
    let mut pid_of: HashMap<String, u32> = HashMap::new();
    for l in String::from_utf8_lossy(&listed).lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        if let (Some(task), Some(pid)) = (v["task"].as_str(), v["pid"].as_u64()) {
            pid_of.insert(task.into(), pid as u32);
        }
    }

    let mut gone = Vec::new();
    let mut reaped = Vec::new();
    let mut left = Vec::new();
    let mut pauses = Pauses::default();
    for k in 0..KILLS {
        // Both followers poll every 50 ms; started together, they would stay in phase, and
        // every kill would see the same lag from reap's commit to announce's next look. So
        // reap --follow is restarted before each kill, at another phase of announce's polls
        // each time: the loop comes here just after announce's look that removed the last
        // member, and waits 0-49 ms (37k mod 50: 20 different pauses) before the restart.
        std::thread::sleep(Duration::from_millis((k as u64 * 37) % 50));
        stop(&mut reap, "reap");
        (reap, reap_lines) = spawn_reap();
        std::thread::sleep(Duration::from_millis(200));
        while reap_lines.try_recv().is_ok() {}
        // A pause of 0-50 ms: the kills fall at every phase of reap's and announce's polls.
        std::thread::sleep(pauses.next_pause());
        let task = format!("{JOB}/{k}");
        let pid = pid_of[&task];
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        assert_eq!(comm.trim(), "sleep", "{task}: pid {pid} is not its sleep");
        let node = format!("{DEATH_PATH}/{}", node_of[&task]);
        assert!(block_on(checker.check_stat(&node)).unwrap().is_some());
        let t = Instant::now();
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
        loop {
            if block_on(checker.check_stat(&node)).unwrap().is_none() {
                gone.push(ms(t.elapsed()));
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "{task}'s member {node} still there 30 s after the kill"
            );
            std::thread::sleep(POLL);
        }
        // reap's event and announce's leave line, for where the time goes.
        let find = |rx: &Receiver<(Instant, String)>, what: &dyn Fn(&serde_json::Value) -> bool| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while let Ok((at, l)) =
                rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                let v: serde_json::Value = serde_json::from_str(&l).unwrap_or_default();
                if v["task"] == task.as_str() && what(&v) {
                    if std::env::var_os("FORMIC_BENCH_VERBOSE").is_some() {
                        println!("  {:.1} ms: {l}", ms(at.saturating_duration_since(t)));
                    }
                    return Some(ms(at.saturating_duration_since(t)));
                }
            }
            None
        };
        reaped.push(find(&reap_lines, &|v| v["type"] == "event"));
        left.push(find(&announce_lines, &|v| v["op"] == "leave"));
    }
    let remaining = children(&checker, DEATH_PATH).len();
    let on_cpu = schedstat(announce.id()).unwrap_or_default().0;

    // Clean-up: announce closes its session; reap, supervisors and tasks are killed.
    stop(&mut announce, "announce");
    stop(&mut reap, "reap");
    close(checker);

    if std::env::var_os("FORMIC_BENCH_VERBOSE").is_some() {
        for k in 0..KILLS {
            println!(
                "  kill {k}: reap's event {:?} ms, announce's leave {:?} ms, gone {:.1} ms",
                reaped[k], left[k], gone[k]
            );
        }
    }
    // announce's part: from reap's event (the state records the death) to the node gone.
    let mut after_reap: Vec<f64> = gone
        .iter()
        .zip(&reaped)
        .filter_map(|(g, r)| r.map(|r| g - r))
        .collect();
    after_reap.sort_by(f64::total_cmp);
    gone.sort_by(f64::total_cmp);
    let some = |xs: &[Option<f64>]| {
        let mut v: Vec<f64> = xs.iter().flatten().copied().collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let (reaped, left) = (some(&reaped), some(&left));
    let max = gone[KILLS - 1];
    println!(
        "death: SIGKILL of a task -> its member node gone from ZooKeeper (polled every {} ms), {KILLS} kills among {INSTANCES} members (all were members {:.0} ms after the followers' start)",
        POLL.as_millis(),
        ms(all_members)
    );
    println!(
        "  median {:.1} ms, p90 {:.1} ms, max {max:.1} ms, min {:.1} ms  target < 1 s  {}",
        percentile(&gone, 0.5),
        percentile(&gone, 0.9),
        gone[0],
        verdict(max < 1000.0)
    );
    let describe = |xs: &[f64]| {
        if xs.is_empty() {
            "none seen".to_string()
        } else {
            format!(
                "median {:.1} ms, max {:.1} ms ({} of {KILLS})",
                percentile(xs, 0.5),
                xs[xs.len() - 1],
                xs.len()
            )
        }
    };
    println!(
        "  of which: kill -> reap's event {}; kill -> announce's leave line {}",
        describe(&reaped),
        describe(&left)
    );
    println!(
        "  reap's event -> member node gone: {}",
        describe(&after_reap)
    );
    println!(
        "  members left: {remaining} of {INSTANCES}; announce --follow used {on_cpu:.0} ms of CPU in all"
    );
}

// ---------------------------------------------------------------------------------------
// Processes

/// SIGTERM, and its exit within 30 s: successful (announce ends cleanly), or by the
/// signal (reap --follow leaves it at its default).
fn stop(child: &mut Child, name: &str) {
    use std::os::unix::process::ExitStatusExt;
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_timeout(child, Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success() || (name == "reap" && s.signal() == Some(15))),
        "{name} after SIGTERM: {status:?}"
    );
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if t0.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
