//! Fleet benchmark: formic over OpenSSH on a fleet of 50 real hosts made on this machine
//! (network namespaces, each with its own sshd: tests/integration/netns.rs), with the
//! release binaries. Run: `scripts/bench-fleet` (root), or `cargo bench --bench fleet`.
//!
//! Sections (`cargo bench --bench fleet -- launch|pass|lost`; none named: all):
//! - `launch`: 1,000 tasks (`sleep 100000`, 20 on each host) started by one launch of
//!   1,000 place records over the 50 ssh hosts, against 1,000 started by one launch on one
//!   local host, in alternating order in the same run; timed from launch's start to its
//!   exit with `--wait 170`, so until every task is RUNNING.
//! - `pass`: a reconciliation pass with nothing to do over the converged fleet (50 hosts ×
//!   20 tasks), connections warm: one `scripts/reconcile` pass, and one bare `reap` pass,
//!   against the floor of the same run: `ssh HOST true` to all 50 hosts over formic's warm
//!   control masters, 32 at a time as formic works them; also formic's own one-step call
//!   (`ssh HOST formic-host`, an empty `stamps`) fanned out the same way. Then where a pass
//!   goes: its steps run one after another and timed, and one pass with every ssh call
//!   counted by the tool and the request that made it.
//! - `lost`: one host cut off (`Host::cut`), then reconciliation passes back to back until
//!   its instances are RUNNING elsewhere, against --lost-after plus two passes; then healed,
//!   and passes until it takes work again.
//!
//! pack spreads (`FORMIC_STRATEGY=spread`): 20 tasks on each host, and room on each for a
//! lost host's share. Beside each pass measure the bench reads the CPU it cost, on this
//! machine's side (tools, script, ssh clients and masters) and on the hosts' (their sshd
//! processes and what those waited for: sessions, shells, formic-host), and how busy the
//! two cores were: here both sides share them.
//!
//! `cargo bench --bench fleet -- profile` (named only) runs one pass under `strace -c -f`;
//! `cargo bench --bench fleet -- sweep` removes what a run killed before its end left.
//!
//! Every figure is printed as it is measured, then the medians and ratios; nothing is
//! asserted about time. Setup is checked (1,000 RUNNING, 20 on each host), so a figure
//! never stands for a run that did less. The fleet's Drop removes namespaces, sshds and
//! everything that ran in them; before it, every task is stopped through formic (`reap
//! kill`), so supervisors remove their cgroups.

#[path = "../tests/integration/common.rs"]
mod common;
#[path = "../tests/integration/netns.rs"]
mod netns;

#[path = "common/mod.rs"]
mod bench;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bench::{loadavg, median, ms, Bench, Sweep};
use formic::host::{Life, Transport};
use formic::state::State;
use formic::task::TaskState;
use formic::transport::{self, fan_out, TaskHost, PARALLEL};
use netns::{Fleet, Host};

/// Hosts in the fleet.
const HOSTS: usize = 50;
/// Tasks on each host.
const PER_HOST: usize = 20;
const TASKS: usize = HOSTS * PER_HOST;
const JOB: &str = "bench/prod/sleep";
/// --lost-after for the whole run: short, so the `lost` section takes a minute.
const LOST_AFTER: &str = "20s";
const LOST_AFTER_S: f64 = 20.0;
/// A command that runs longer than this fails the bench (a hang is not a figure).
const LIMIT: Duration = Duration::from_secs(240);
/// The `lost` section gives up after this long.
const LOST_LIMIT: Duration = Duration::from_secs(300);

fn main() {
    let Some(bench) = Bench::from_args("fleet") else {
        return;
    };
    common::require_root("network namespaces and sshd servers");
    if std::env::args().any(|a| a == "sweep") {
        sweep_leftovers();
        return;
    }
    // Tasks run as uids of their own, which must pass through the bench directory to their
    // sandboxes (a temporary directory is 0700).
    if std::env::var_os("FORMIC_BENCH_DIR").is_none() {
        fs::set_permissions(&bench.dir, fs::Permissions::from_mode(0o711)).unwrap();
    }
    let mode = fs::metadata(&bench.dir).unwrap().permissions().mode();
    assert!(
        mode & 0o001 != 0,
        "{} is mode {mode:o}: tasks (uids of their own) could not pass through it to their \
         sandboxes; chmod o+x it",
        bench.dir.display()
    );
    let rounds = bench::rounds(3);
    let passes = std::env::var("FORMIC_BENCH_PASSES")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(7usize)
        .max(1);
    println!(
        "fleet benchmark: {HOSTS} ssh hosts (network namespaces, one sshd each), {TASKS} tasks of \
         `sleep 100000` ({PER_HOST} a host), --parallel {PARALLEL}, --lost-after {LOST_AFTER}; \
         {} cores, load average {} at the start",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    println!(
        "versions: formic {}; {}",
        env!("CARGO_PKG_VERSION"),
        ssh_version()
    );
    let t = Instant::now();
    let site = Site::new(&bench.dir);
    println!(
        "fleet: {HOSTS} hosts listening and offered in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    if bench.want("launch") {
        launch_section(&site, &bench.dir, rounds);
    }
    let mut pass_ms = None;
    // Named only: strace slows what it watches.
    let profile = std::env::args().any(|a| a == "profile");
    if bench.want("pass") || bench.want("lost") || profile {
        site.converge();
    }
    if profile {
        profile_pass(&site);
    }
    if bench.want("pass") {
        pass_ms = Some(pass_section(&site, passes));
    }
    if bench.want("lost") {
        lost_section(&site, pass_ms);
    }
    println!("load average {} at the end", loadavg());
}

/// What runs killed before their Drop left (namespaces, sshds, tasks, routes): every block
/// of the test range whose holder is dead is taken and given back, as the next fleet to take
/// it would. Blocks held by live processes (tests running now) are left alone.
fn sweep_leftovers() {
    let mut swept = 0;
    for entry in fs::read_dir(netns::MARKERS).into_iter().flatten().flatten() {
        let index = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u16>().ok());
        if let Some(block) = index
            .filter(|&i| i < netns::BLOCKS)
            .and_then(netns::Block::take)
        {
            drop(block);
            swept += 1;
        }
    }
    println!("fleet: {swept} blocks of dead holders swept");
}

fn ssh_version() -> String {
    Command::new("ssh")
        .arg("-V")
        .output()
        .map_or("ssh ?".into(), |o| {
            String::from_utf8_lossy(&o.stderr).trim().to_string()
        })
}

// ---------------------------------------------------------------------------------------
// The scheduler and its fleet

/// A scheduler (this machine's root namespace: a state file, a job directory) and its
/// fleet of ssh hosts, offered to it.
struct Site {
    fleet: Fleet,
    /// Where the state, the jobs and formic's control sockets are.
    dir: PathBuf,
}

impl Site {
    fn new(bench_dir: &Path) -> Site {
        let dir = bench::fresh_dir(&bench_dir.join("fleet"));
        let site = Site {
            fleet: Fleet::new(HOSTS),
            dir,
        };
        fs::create_dir(site.jobs()).unwrap();
        let job = serde_json::json!({
            "job": JOB, "instances": TASKS, "cmd": ["sleep", "100000"],
            "resources": {"cpus": 0.01, "ram_mb": 1},
        });
        fs::write(site.jobs().join("sleep.json"), job.to_string()).unwrap();
        let records: String = site
            .fleet
            .hosts
            .iter()
            .map(|h| {
                let record = serde_json::json!({
                    "type": "host", "name": h.name, "cpus": 2, "ram_mb": 2048,
                    "ports": [[31000, 31099]], "transport": "ssh",
                    "address": h.address.to_string(), "ssh": h.ssh_target(), "root": h.root,
                });
                format!("{record}\n")
            })
            .collect();
        let out = common::run(site.tool("offer").arg("add"), records.as_bytes());
        check(&out, "offer add");
        // For the calls this process makes itself (the floor): as the tools reach hosts.
        std::env::set_var("FORMIC_SSH", site.fleet.ssh_command());
        std::env::set_var("FORMIC_REMOTE_BIN", bin_dir());
        site
    }

    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn jobs(&self) -> PathBuf {
        self.dir.join("jobs")
    }

    /// A formic tool of this build on the site's state, reaching the fleet as an operator's
    /// would, with nothing else inherited.
    fn tool(&self, name: &str) -> Command {
        let mut c = Command::new(common::bin(name));
        self.environment(&mut c);
        c
    }

    /// One pass of scripts/reconcile on the job directory.
    fn reconcile(&self) -> Command {
        let mut c = Command::new(repo().join("scripts/reconcile"));
        c.arg(self.jobs());
        self.environment(&mut c);
        c.env("FORMIC_BIN", bin_dir());
        c
    }

    fn environment(&self, c: &mut Command) {
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("USER", "bench")
            .env("FORMIC_STATE", self.state())
            .env("FORMIC_SSH", self.fleet.ssh_command())
            .env("FORMIC_REMOTE_BIN", bin_dir())
            .env("FORMIC_LOST_AFTER", LOST_AFTER)
            // The same share on every host (binpack would fill the first hosts to their
            // cpus), and room on each for a lost host's instances.
            .env("FORMIC_STRATEGY", "spread")
            .current_dir(&self.dir);
    }

    /// The state as it is now.
    fn view(&self) -> State {
        State::open(&self.state()).unwrap()
    }

    /// Each RUNNING task's id with its host's name.
    fn running(&self) -> BTreeMap<String, String> {
        let state = self.view();
        let v = state.view();
        v.tasks
            .iter()
            .filter(|(_, t)| t.state == TaskState::Running)
            .map(|(_, t)| {
                let job = &v.jobs.get(t.job).unwrap().key;
                let host = v.hosts.get(t.host).map_or("?", |h| h.name.as_str());
                (format!("{job}/{}", t.instance), host.to_string())
            })
            .collect()
    }

    fn liveness(&self, host: &str) -> Life {
        let state = self.view();
        let v = state.view();
        let slot = v.hosts.find(&host.to_string()).unwrap();
        v.hosts.get(slot).unwrap().liveness.life
    }

    /// Reconciliation passes until every task runs, PER_HOST on each host; the first pass
    /// (which places them all) is timed and printed.
    fn converge(&self) {
        let t = Instant::now();
        let mut n = 0;
        loop {
            let (wall, out) = timed(&mut self.reconcile(), None);
            n += 1;
            if n == 1 {
                println!(
                    "converge: the first reconcile pass (placing {TASKS} tasks over ssh) took {:.0} ms: {}",
                    ms(wall),
                    summary(&out)
                );
            }
            check(&out, "reconcile");
            let running = self.running();
            if running.len() == TASKS {
                let mut per_host: HashMap<&str, usize> = HashMap::new();
                for h in running.values() {
                    *per_host.entry(h).or_default() += 1;
                }
                assert!(
                    per_host.len() == HOSTS && per_host.values().all(|&k| k == PER_HOST),
                    "not {PER_HOST} on each host: {per_host:?}"
                );
                println!(
                    "converge: {TASKS} RUNNING, {PER_HOST} on each of {HOSTS} hosts, after {n} passes, {:.1} s",
                    t.elapsed().as_secs_f64()
                );
                return;
            }
            assert!(
                t.elapsed() < LIMIT,
                "not converged in {LIMIT:?}: {} RUNNING",
                running.len()
            );
        }
    }
}

impl Drop for Site {
    /// Every task stopped through formic while the hosts can be reached (so supervisors
    /// remove their cgroups); the fleet's Drop then removes whatever is left.
    fn drop(&mut self) {
        let out = common::run(self.tool("reap").args(["kill", "--job", JOB]), b"");
        if !out.status.success() {
            eprintln!("fleet: reap kill at the end: {}", common::stderr(&out));
        }
    }
}

/// The directory of this build's binaries (formic-host and formic-supervise beside them).
fn bin_dir() -> PathBuf {
    common::bin("formic-host").parent().unwrap().to_path_buf()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------
// launch: 1,000 tasks over 50 ssh hosts against 1,000 on one local host

fn launch_section(site: &Site, dir: &Path, rounds: usize) {
    let mut fleet_ms = Vec::new();
    let mut local_ms = Vec::new();
    let mut ratios = Vec::new();
    let mut kill_ms = Vec::new();
    for r in 0..rounds {
        // Alternating order: neither always goes first.
        let (mut f, mut l) = (0.0, 0.0);
        for k in 0..2 {
            if (r + k) % 2 == 0 {
                let (launch, kill) = fleet_launch(site, r);
                f = launch;
                kill_ms.push(kill);
            } else {
                l = local_launch(&dir.join(format!("local-{r}")), r);
            }
        }
        fleet_ms.push(f);
        local_ms.push(l);
        ratios.push(f / l);
    }
    let (f, l, ratio) = (median(fleet_ms), median(local_ms), median(ratios.clone()));
    println!(
        "launch {TASKS} tasks until all RUNNING: {HOSTS} ssh hosts {f:.0} ms, one local host {l:.0} ms \
         (medians of {rounds}); ssh / local {ratio:.2} (per round {})  target <= 2",
        join(&ratios, 2)
    );
    println!(
        "stop {TASKS} tasks over ssh (reap kill --job, until every one is KILLED): median {:.0} ms",
        median(kill_ms)
    );
    counted_launch(site);
}

/// One more launch over the fleet with every ssh call logged, then every task stopped.
fn counted_launch(site: &Site) {
    let work = bench::fresh_dir(&site.dir.join("launch-counted"));
    let offers = common::run(&mut site.tool("offer"), b"");
    let places = common::run(site.tool("pack").arg(site.jobs()), &offers.stdout);
    check(&places, "pack");
    fs::write(work.join("places.jsonl"), &places.stdout).unwrap();
    check(&common::run(&mut site.tool("reap"), b""), "reap (warming)");
    let (wall, out, runs) = counted(
        site,
        site.tool("launch").args(["--wait", "170"]),
        Some(&work.join("places.jsonl")),
    );
    check(&out, "launch (counted)");
    assert_eq!(count_events(&out, "RUNNING"), TASKS, "launch (counted)");
    report_calls(&format!("one launch of {TASKS} tasks"), wall, &runs);
    let out = common::run(site.tool("reap").args(["kill", "--job", JOB]), b"");
    check(&out, "reap kill");
}

/// One launch of TASKS place records over the fleet, warm (a bare reap first, as the
/// reconcile pass before a launch does); then every task stopped. Returns launch's wall
/// time and the stop's, ms.
fn fleet_launch(site: &Site, round: usize) -> (f64, f64) {
    let work = bench::fresh_dir(&site.dir.join(format!("launch-{round}")));
    let offers = common::run(&mut site.tool("offer"), b"");
    check(&offers, "offer");
    let places = common::run(site.tool("pack").arg(site.jobs()), &offers.stdout);
    check(&places, "pack");
    assert_eq!(
        count_places(&places.stdout),
        TASKS,
        "ssh: place records: {}",
        common::stderr(&places)
    );
    fs::write(work.join("places.jsonl"), &places.stdout).unwrap();
    check(&common::run(&mut site.tool("reap"), b""), "reap (warming)");
    let (wall, out) = timed(
        site.tool("launch").args(["--wait", "170"]),
        Some(&work.join("places.jsonl")),
    );
    fs::write(work.join("events.jsonl"), &out.stdout).unwrap();
    fs::write(work.join("launch.err"), &out.stderr).unwrap();
    check(&out, "launch");
    let running = count_events(&out, "RUNNING");
    let first = site.fleet.hosts.iter().find_map(|h| {
        let dir = formic::taskdir::task_dir(&h.root, &format!("{JOB}/0"));
        dir.exists().then_some(dir)
    });
    assert_eq!(
        running,
        TASKS,
        "launch over ssh: RUNNING events, after {:.0} ms; {}",
        ms(wall),
        first.map_or("no task directory".into(), |d| why_not_running(&d))
    );
    assert_eq!(site.running().len(), TASKS, "RUNNING in the state");
    let (kill, out) = timed(site.tool("reap").args(["kill", "--job", JOB]), None);
    check(&out, "reap kill");
    assert!(site.running().is_empty(), "every task stopped");
    println!(
        "launch round {round} ssh: {TASKS} tasks on {HOSTS} hosts RUNNING, launch took {:.0} ms; \
         stopping them took {:.0} ms",
        ms(wall),
        ms(kill)
    );
    (ms(wall), ms(kill))
}

/// One launch of TASKS place records on one local host (as benches/launch.rs does), in a
/// state of its own under `work`. Returns launch's wall time, ms.
fn local_launch(work: &Path, round: usize) -> f64 {
    let work = bench::fresh_dir(work);
    // Whatever happens, nothing the round started outlives it.
    let sweep = Sweep(work.clone());
    let state = work.join("state");
    let tool = |name: &str| {
        let mut c = bench::tool(name, &state, &work);
        c.env("USER", "bench");
        c
    };
    let host = r#"{"type":"host","name":"h1","cpus":64,"ram_mb":65536,"disk_mb":100000,"ports":[[31000,31999]]}"#;
    bench::pipe(tool("offer").arg("add"), host.as_bytes());
    let jobs = work.join("sleep.json");
    let job = serde_json::json!({
        "job": JOB, "instances": TASKS, "cmd": ["sleep", "100000"],
        "resources": {"cpus": 0.01, "ram_mb": 1},
    });
    fs::write(&jobs, job.to_string()).unwrap();
    let offers = bench::pipe(&mut tool("offer"), b"");
    let places = bench::pipe(tool("pack").arg(&jobs), &offers);
    assert_eq!(
        count_places(&places),
        TASKS,
        "local: place records for the offers {}",
        String::from_utf8_lossy(&offers)
    );
    fs::write(work.join("places.jsonl"), &places).unwrap();
    let (wall, out) = timed(
        tool("launch").args(["--wait", "170"]),
        Some(&work.join("places.jsonl")),
    );
    fs::write(work.join("events.jsonl"), &out.stdout).unwrap();
    fs::write(work.join("launch.err"), &out.stderr).unwrap();
    check(&out, "local launch");
    let root = formic::taskdir::host_root(&state, "h1");
    assert_eq!(
        count_events(&out, "RUNNING"),
        TASKS,
        "local launch: RUNNING events, after {:.0} ms; {}",
        ms(wall),
        why_not_running(&formic::taskdir::task_dir(&root, &format!("{JOB}/0")))
    );
    // formic's own way out, so every supervisor removes its cgroups; the sweep kills only
    // what this leaves.
    let _ = tool("reap")
        .args(["kill", "--host", "h1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    println!(
        "launch round {round} local: {TASKS} tasks on one host RUNNING, launch took {:.0} ms",
        ms(wall)
    );
    drop(sweep);
    if !bench::keep_files() {
        let _ = fs::remove_dir_all(&work);
    }
    ms(wall)
}

/// What a task's directory says when launch did not see it running: its status and the end
/// of its supervisor's log. A supervisor that cannot claim a uid of its own fails at once:
/// the range (70000-79999) is shared by every formic on the machine, and task directories
/// kept by earlier runs hold their uids.
fn why_not_running(dir: &Path) -> String {
    let status = formic::taskdir::Status::read(dir);
    let log = fs::read_to_string(dir.join("supervise.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(3).collect();
    format!(
        "{}: status {status:?}; supervise.log ends: {}",
        dir.display(),
        tail.join(" | ")
    )
}

fn count_places(records: &[u8]) -> usize {
    String::from_utf8_lossy(records)
        .lines()
        .filter(|l| l.starts_with("{\"type\":\"place\""))
        .count()
}

fn count_events(out: &Output, state: &str) -> usize {
    let needle = format!("\"state\":\"{state}\"");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"type\":\"event\"") && l.contains(&needle))
        .count()
}

// ---------------------------------------------------------------------------------------
// pass: a reconciliation pass with nothing to do, against the floor of ssh itself

/// What is measured in each round of the pass section, in this order (rotated by round).
const KINDS: [&str; 4] = [
    "reconcile pass",
    "bare reap pass",
    "floor: ssh HOST true",
    "formic-host call",
];

/// Returns the median reconcile pass, ms.
fn pass_section(site: &Site, passes: usize) -> f64 {
    let hosts: Vec<&Host> = site.fleet.hosts.iter().collect();
    // formic's own way to each host (the library's transport, as reap builds it).
    let reached: Vec<Box<dyn TaskHost>> = {
        let state = site.view();
        state
            .view()
            .hosts
            .iter()
            .filter(|(_, h)| h.transport == Transport::Ssh)
            .map(|(_, h)| transport::reach(&site.state(), h).unwrap())
            .collect()
    };
    assert_eq!(reached.len(), HOSTS);
    let before = site.running();
    let meter = Meter::new(site);
    // Per kind: wall ms, and CPU (this machine's side, the hosts' side) and the machine's
    // busy share over the same span.
    let mut walls: Vec<Vec<f64>> = vec![Vec::new(); KINDS.len()];
    let mut cpus: Vec<Vec<Used>> = vec![Vec::new(); KINDS.len()];
    let mut reconcile_own = Vec::new();
    for i in 0..passes {
        // The floor first and last would favour one side: a rotating order.
        let mut round = [0.0; KINDS.len()];
        for k in 0..KINDS.len() {
            let kind = (i + k) % KINDS.len();
            let start = meter.read();
            let wall = match kind {
                0 => {
                    let (wall, out) = timed(&mut site.reconcile(), None);
                    check(&out, "reconcile");
                    reconcile_own.push(script_ms(&summary(&out)));
                    wall
                }
                1 => {
                    let (wall, out) = timed(&mut site.tool("reap"), None);
                    check(&out, "reap");
                    wall
                }
                2 => ssh_true(site, &hosts),
                _ => {
                    let t = Instant::now();
                    let answers = fan_out(&reached, PARALLEL, |h| h.stamps(&[]));
                    let wall = t.elapsed();
                    let unreached = answers.iter().filter(|a| a.is_err()).count();
                    assert_eq!(unreached, 0, "formic-host calls that failed");
                    wall
                }
            };
            cpus[kind].push(meter.read().since(&start));
            round[kind] = ms(wall);
            walls[kind].push(ms(wall));
        }
        println!(
            "pass {i}: reconcile {:.0} ms, bare reap {:.0} ms, ssh HOST true to {HOSTS} hosts {:.0} ms, \
             ssh HOST formic-host (stamps) to {HOSTS} hosts {:.0} ms; reconcile / floor {:.1}",
            round[0],
            round[1],
            round[2],
            round[3],
            round[0] / round[2]
        );
    }
    assert_eq!(
        site.running(),
        before,
        "a pass with nothing to do changed nothing"
    );
    let med: Vec<f64> = walls.iter().map(|w| median(w.clone())).collect();
    let per_host = |x: f64| x / HOSTS as f64;
    let ratio = |a: usize, b: usize| -> f64 {
        median(walls[a].iter().zip(&walls[b]).map(|(x, y)| x / y).collect())
    };
    println!(
        "reconcile pass, nothing to do, {HOSTS} hosts x {PER_HOST} tasks, warm: median {:.0} ms \
         of {passes} (the script's own count {:.0} ms), {:.1} ms a host; target < 1000 ms",
        med[0],
        median(reconcile_own),
        per_host(med[0])
    );
    println!(
        "bare reap pass: median {:.0} ms, {:.1} ms a host",
        med[1],
        per_host(med[1])
    );
    println!(
        "floor, ssh HOST true to {HOSTS} hosts over warm masters, {PARALLEL} at a time: median {:.0} ms, \
         {:.1} ms a host",
        med[2],
        per_host(med[2])
    );
    println!(
        "formic's one-step call (ssh HOST formic-host, stamps of nothing), the same way: median {:.0} ms, \
         {:.1} ms a host",
        med[3],
        per_host(med[3])
    );
    println!(
        "ratios (medians of the per-round ratios): reconcile / floor {:.1}, reap / floor {:.1}, \
         formic-host call / floor {:.2}",
        ratio(0, 2),
        ratio(1, 2),
        ratio(3, 2)
    );
    for (kind, used) in KINDS.iter().zip(&cpus) {
        let m = |f: fn(&Used) -> f64| median(used.iter().map(f).collect());
        println!(
            "CPU of a {kind} (medians): this machine's side {:.2} s, the hosts' sshd sessions {:.2} s; \
             the 2 cores {:.0}% busy meanwhile (all processes)",
            m(|u| u.scheduler),
            m(|u| u.hosts),
            m(|u| u.busy) * 100.0
        );
    }
    steps(site, passes);
    count_calls(site);
    med[0]
}

/// CPU used over a span: by this process and the processes it waited for and the control
/// masters (this machine's side of formic: tools, scripts, ssh clients), by the hosts'
/// sshd processes and what they waited for (sessions, shells, formic-host), seconds; and
/// the share of the machine's CPU time that was busy, whoever used it.
#[derive(Clone, Copy, Debug, Default)]
struct Used {
    scheduler: f64,
    hosts: f64,
    busy: f64,
}

/// Reads the counters [`Used`] is made of.
struct Meter {
    /// The network namespaces of the fleet's hosts, by inode.
    namespaces: std::collections::HashSet<u64>,
    /// What names the fleet's ssh clients: its config's path.
    config: Vec<u8>,
    tick: f64,
    /// CPU this process spent reading the counters: not part of any span.
    overhead: std::cell::Cell<f64>,
}

/// The counters at one moment.
struct Reading {
    scheduler: f64,
    hosts: f64,
    /// /proc/stat: busy and total jiffies.
    machine: (u64, u64),
}

impl Meter {
    fn new(site: &Site) -> Meter {
        use std::os::unix::fs::MetadataExt;
        Meter {
            namespaces: site
                .fleet
                .hosts
                .iter()
                .map(|h| {
                    fs::metadata(format!("/run/netns/{}", h.name))
                        .unwrap()
                        .ino()
                })
                .collect(),
            config: site
                .fleet
                .ssh_config()
                .into_os_string()
                .into_encoded_bytes(),
            tick: nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
                .ok()
                .flatten()
                .unwrap_or(100) as f64,
            overhead: std::cell::Cell::new(0.0),
        }
    }

    fn read(&self) -> Reading {
        use nix::sys::resource::{getrusage, UsageWho};
        let secs = |who| {
            let u = getrusage(who).unwrap();
            let s = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            s(u.user_time()) + s(u.system_time())
        };
        let mut r = Reading {
            scheduler: 0.0,
            hosts: 0.0,
            machine: machine_jiffies(),
        };
        let scan = secs(UsageWho::RUSAGE_SELF);
        let me = std::process::id();
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let comm = &stat[open + 1..close];
            if comm != "sshd" && comm != "ssh" {
                continue;
            }
            // utime, stime, cutime, cstime: fields 14-17, counted here from field 3.
            let f: Vec<f64> = stat[close + 1..]
                .split_whitespace()
                .skip(11)
                .take(4)
                .map(|x| x.parse().unwrap_or(0.0))
                .collect();
            let [user, system, c_user, c_system] = f[..] else {
                continue;
            };
            if comm == "sshd" && netns::netns_of(pid).is_some_and(|i| self.namespaces.contains(&i))
            {
                r.hosts += (user + system + c_user + c_system) / self.tick;
            } else if comm == "ssh"
                && fs::read(e.path().join("cmdline"))
                    .is_ok_and(|c| c.windows(self.config.len()).any(|w| w == self.config))
            {
                // A control master (or a client still running): not waited for by anyone
                // of ours until it ends.
                r.scheduler += (user + system) / self.tick;
            }
        }
        let mine = secs(UsageWho::RUSAGE_SELF);
        self.overhead.set(self.overhead.get() + mine - scan);
        r.scheduler += mine - self.overhead.get() + secs(UsageWho::RUSAGE_CHILDREN);
        r
    }
}

impl Reading {
    fn since(&self, start: &Reading) -> Used {
        let (busy, total) = (
            self.machine.0.saturating_sub(start.machine.0),
            self.machine.1.saturating_sub(start.machine.1),
        );
        Used {
            scheduler: self.scheduler - start.scheduler,
            hosts: self.hosts - start.hosts,
            busy: busy as f64 / total.max(1) as f64,
        }
    }
}

/// The machine's busy and total CPU time (/proc/stat's first line, jiffies).
fn machine_jiffies() -> (u64, u64) {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guests are in user already).
    let total: u64 = f.iter().take(8).sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// `ssh HOST true` to every host, PARALLEL at a time (formic's own fan-out), through the
/// control masters formic's passes keep warm (its ControlPath beside the state file).
fn ssh_true(site: &Site, hosts: &[&Host]) -> Duration {
    let control = format!("ControlPath={}/ssh-%C", site.dir.display());
    let t = Instant::now();
    let outs = fan_out(hosts, PARALLEL, |h| {
        Command::new("ssh")
            .arg("-F")
            .arg(site.fleet.ssh_config())
            .args(["-o", "BatchMode=yes", "-o", "ControlMaster=auto"])
            .args(["-o", "ControlPersist=60", "-o", &control])
            .arg("--")
            .arg(h.ssh_target())
            .arg("true")
            .stdin(Stdio::null())
            .output()
    });
    let wall = t.elapsed();
    for (o, h) in outs.iter().zip(hosts) {
        let o = o.as_ref().unwrap();
        assert!(
            o.status.success(),
            "ssh {} true: {}",
            h.name,
            common::stderr(o)
        );
    }
    wall
}

/// The steps of one reconcile pass run one after another, each timed: where a pass goes.
fn steps(site: &Site, passes: usize) {
    let work = bench::fresh_dir(&site.dir.join("steps"));
    let file = |name: &str| work.join(name);
    let names = [
        "reap (collect)",
        "offer",
        "pack",
        "reap (stops)",
        "launch",
        "announce",
        "reap tasks",
    ];
    let mut each: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for _ in 0..passes {
        let mut run = |i: usize, cmd: &mut Command, input: Option<&str>, output: &str| {
            let (wall, out) = timed(cmd, input.map(file).as_deref());
            // pack exits 1 when instances stay pending: none may here.
            check(&out, names[i]);
            fs::write(file(output), &out.stdout).unwrap();
            each[i].push(ms(wall));
        };
        run(0, &mut site.tool("reap"), None, "collected");
        run(1, &mut site.tool("offer"), None, "offers");
        run(
            2,
            site.tool("pack")
                .args(["--prune", "--stats", "--state"])
                .arg(site.state())
                .arg(site.jobs()),
            Some("offers"),
            "placed",
        );
        run(
            3,
            site.tool("reap").arg("--asked-only"),
            Some("placed"),
            "reaped",
        );
        run(4, &mut site.tool("launch"), Some("reaped"), "launched");
        run(5, &mut site.tool("announce"), None, "announced");
        run(
            6,
            site.tool("reap")
                .args(["tasks", "--json", "--in", "RUNNING"]),
            None,
            "tasks",
        );
    }
    let medians: Vec<f64> = each.iter().map(|v| median(v.clone())).collect();
    let parts: Vec<String> = names
        .iter()
        .zip(&medians)
        .map(|(n, m)| format!("{n} {m:.0}"))
        .collect();
    println!(
        "a pass step by step (medians of {passes}, ms): {}; sum {:.0} ms",
        parts.join(", "),
        medians.iter().sum::<f64>()
    );
}

/// One reconcile pass with every ssh call logged: the round trips a pass makes to each
/// host, by tool and request, and when each step's calls began.
fn count_calls(site: &Site) {
    let (wall, out, runs) = counted(site, &mut site.reconcile(), None);
    check(&out, "reconcile (counted)");
    report_calls("one reconcile pass", wall, &runs);
}

/// One tool run's ssh calls, by the op of their request in the order the ops were first
/// asked: (op, calls, first call started, last call started), seconds since the run began.
type Calls = Vec<(String, usize, f64, f64)>;

/// Runs `cmd` with FORMIC_SSH wrapped so that each call is logged before it is made (the
/// calling tool's pid and name, the request's op; an empty `stamps` is reap's liveness
/// probe, `sense`): its wall time, output, and the calls of each tool run that made any,
/// in the order they first called. The wrapper (bash, before ssh) adds a few ms to each
/// call: the times are for where a run goes, not for comparison.
fn counted(
    site: &Site,
    cmd: &mut Command,
    input: Option<&Path>,
) -> (Duration, Output, Vec<(String, Calls)>) {
    let log = site.dir.join("ssh-calls.log");
    let _ = fs::remove_file(&log);
    let wrapper = site.dir.join("ssh-counted");
    let script = r#"#!/bin/bash
# Logs one line per ssh call formic makes (time, the tool's pid and name, the request's
# op), then makes the call with the request it read.
IFS= read -r request
op=${request#*\"op\":}; op=${op#\{}; op=${op#\"}; op=${op%%\"*}
case $request in *'"op":{"stamps":[]}'*) op=sense ;; esac
read -r comm < /proc/$PPID/comm
printf '%s %s %s %s\n' "$EPOCHREALTIME" "$PPID" "$comm" "$op" >> LOG
printf '%s\n' "$request" | exec ssh "$@"
"#;
    fs::write(&wrapper, script.replace("LOG", &log.display().to_string())).unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let ssh = site
        .fleet
        .ssh_command()
        .replacen("ssh", &wrapper.display().to_string(), 1);
    let began = unix_now();
    let (wall, out) = timed(cmd.env("FORMIC_SSH", ssh), input);
    let text = fs::read_to_string(&log).unwrap_or_default();
    let mut runs: Vec<(String, String, Calls)> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [at, pid, comm, op] = f[..] else {
            continue;
        };
        let at = at.parse::<f64>().unwrap_or(began) - began;
        let r = match runs.iter().position(|r| r.0 == pid) {
            Some(r) => r,
            None => {
                runs.push((pid.into(), comm.into(), Vec::new()));
                runs.len() - 1
            }
        };
        let calls = &mut runs[r].2;
        match calls.iter_mut().find(|c| c.0 == op) {
            Some(c) => {
                c.1 += 1;
                c.2 = c.2.min(at);
                c.3 = c.3.max(at);
            }
            None => calls.push((op.into(), 1, at, at)),
        }
    }
    (
        wall,
        out,
        runs.into_iter()
            .map(|(_, comm, calls)| (comm, calls))
            .collect(),
    )
}

fn report_calls(what: &str, wall: Duration, runs: &[(String, Calls)]) {
    let total: usize = runs.iter().flat_map(|r| &r.1).map(|c| c.1).sum();
    println!(
        "ssh calls in {what}: {total}, {:.1} a host (that run, logged, took {:.0} ms)",
        total as f64 / HOSTS as f64,
        ms(wall)
    );
    for (comm, calls) in runs {
        let steps: Vec<String> = calls
            .iter()
            .map(|(op, n, first, last)| {
                format!("{op} x{n} from +{:.0} to +{:.0}", first * 1e3, last * 1e3)
            })
            .collect();
        println!("  {comm}: {} (ms since the run began)", steps.join(", "));
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// `strace -c -f` of one reconcile pass with nothing to do (this machine's side only: the
/// tools, the script and the ssh clients; not the sshds): the system calls by count and
/// time.
fn profile_pass(site: &Site) {
    let file = site.dir.join("strace-reconcile.txt");
    let cmd = site.reconcile();
    let script = PathBuf::from(cmd.get_program());
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let mut strace = Command::new("strace");
    strace
        .arg("-c")
        .arg("-f")
        .arg("-o")
        .arg(&file)
        .arg(script)
        .args(args);
    // The same environment and directory as the pass.
    strace.env_clear();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            strace.env(k, v);
        }
    }
    strace.current_dir(&site.dir);
    let (wall, out) = timed(&mut strace, None);
    check(&out, "strace reconcile");
    let table = fs::read_to_string(&file).unwrap_or_default();
    println!(
        "strace -c -f of one reconcile pass (nothing to do; {:.0} ms under strace): {}",
        ms(wall),
        summary(&out)
    );
    let lines: Vec<&str> = table.lines().collect();
    for l in lines.iter().take(17).chain(lines.iter().rev().take(1)) {
        println!("  {l}");
    }
}

// ---------------------------------------------------------------------------------------
// lost: a host cut off, until its instances run elsewhere

fn lost_section(site: &Site, pass_ms: Option<f64>) {
    let running = site.running();
    let victim = {
        let name = &running[&format!("{JOB}/0")];
        site.fleet.hosts.iter().find(|h| &h.name == name).unwrap()
    };
    let moved: Vec<String> = running
        .iter()
        .filter(|(_, h)| **h == victim.name)
        .map(|(t, _)| t.clone())
        .collect();
    assert_eq!(moved.len(), PER_HOST);
    println!(
        "lost: cutting {} off ({} tasks there), then reconcile passes back to back",
        victim.name,
        moved.len()
    );
    let t0 = Instant::now();
    let cut = Cut::off(victim);
    let (mut suspect, mut down, mut elsewhere) = (None, None, None);
    let mut walls = Vec::new();
    let mut k = 0;
    while elsewhere.is_none() {
        assert!(
            t0.elapsed() < LOST_LIMIT,
            "{}'s tasks not RUNNING elsewhere within {LOST_LIMIT:?}",
            victim.name
        );
        let (wall, out) = timed(&mut site.reconcile(), None);
        check(&out, "reconcile");
        let at = t0.elapsed().as_secs_f64();
        walls.push(ms(wall));
        let life = site.liveness(&victim.name);
        if life != Life::Up && suspect.is_none() {
            suspect = Some(at);
        }
        if life == Life::Down && down.is_none() {
            down = Some(at);
        }
        let now = site.running();
        let there = moved
            .iter()
            .filter(|t| now.get(*t).is_some_and(|h| *h != victim.name))
            .count();
        if there == moved.len() {
            elsewhere = Some(at);
        }
        println!(
            "lost pass {k}: ended at +{at:.1} s, took {:.0} ms, {} {}, {there}/{} of its tasks RUNNING elsewhere; {}",
            ms(wall),
            victim.name,
            life.name(),
            moved.len(),
            summary(&out)
        );
        // What the reaps said of it: how the host was found unreachable, and when down.
        let victim_host = format!("host {} ", victim.name);
        for line in common::stderr(&out)
            .lines()
            .filter(|l| l.contains(&victim_host))
        {
            println!("  {line}");
        }
        k += 1;
    }
    let elsewhere = elsewhere.unwrap();
    let fmt = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.1} s"));
    println!(
        "lost: cut -> suspect seen after the pass ending at {}, down after {}, its {} tasks RUNNING \
         elsewhere after {elsewhere:.1} s ({k} passes; passes while cut: median {:.0} ms, longest {:.0} ms)",
        fmt(suspect),
        fmt(down),
        moved.len(),
        median(walls.clone()),
        walls.iter().copied().fold(0.0, f64::max)
    );
    match pass_ms {
        Some(p) => {
            let target = LOST_AFTER_S + 2.0 * p / 1e3;
            println!(
                "lost: cut -> RUNNING elsewhere {elsewhere:.1} s; target --lost-after + 2 passes = \
                 {LOST_AFTER_S:.0} s + 2 x {p:.0} ms = {target:.1} s; ratio {:.2}",
                elsewhere / target
            );
        }
        None => println!(
            "lost: cut -> RUNNING elsewhere {elsewhere:.1} s; target --lost-after ({LOST_AFTER_S:.0} s) + 2 passes \
             (run the pass section for the pass time)"
        ),
    }
    // Healed: passes until it takes work again, with its stale copies stopped.
    drop(cut);
    let t1 = Instant::now();
    let mut n = 0;
    loop {
        check(&timed(&mut site.reconcile(), None).1, "reconcile");
        n += 1;
        let stale = common::tasks_under(&victim.root)
            .into_iter()
            .filter(|d| formic::taskdir::supervised(d).unwrap_or(false))
            .count();
        if site.liveness(&victim.name) == Life::Up && stale == 0 {
            break;
        }
        assert!(t1.elapsed() < LOST_LIMIT, "{} not taken back", victim.name);
    }
    println!(
        "lost: healed -> {} up with its stale copies stopped after {:.1} s ({n} passes)",
        victim.name,
        t1.elapsed().as_secs_f64()
    );
}

/// A host cut off the network until this is dropped (also when the bench fails), so that
/// its tasks can be stopped through formic at the end.
struct Cut<'a>(&'a Host);

impl<'a> Cut<'a> {
    fn off(host: &'a Host) -> Cut<'a> {
        host.cut();
        Cut(host)
    }
}

impl Drop for Cut<'_> {
    fn drop(&mut self) {
        self.0.heal();
    }
}

// ---------------------------------------------------------------------------------------
// Small helpers

/// Runs `cmd` (stdin from `input`, else nothing), killing it after [`LIMIT`]; its wall time
/// from spawn to exit, and its output.
fn timed(cmd: &mut Command, input: Option<&Path>) -> (Duration, Output) {
    let stdin = match input {
        Some(p) => Stdio::from(fs::File::open(p).unwrap()),
        None => Stdio::null(),
    };
    let t = Instant::now();
    let child = cmd
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let pid = child.id();
    let (done, watch) = mpsc::channel::<()>();
    let dog = std::thread::spawn(move || {
        let late = watch.recv_timeout(LIMIT) == Err(mpsc::RecvTimeoutError::Timeout);
        if late {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::SIGKILL,
            );
        }
        late
    });
    let out = child.wait_with_output().unwrap();
    let wall = t.elapsed();
    let _ = done.send(());
    assert!(!dog.join().unwrap(), "{cmd:?} did not end within {LIMIT:?}");
    (wall, out)
}

/// Fails the bench unless the command succeeded (pack's 1, instances pending, is a failure
/// here too: every instance fits).
fn check(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {:?}: {}",
        out.status,
        common::stderr(out)
    );
}

/// The summary line scripts/reconcile prints on stderr.
fn summary(out: &Output) -> String {
    common::stderr(out)
        .lines()
        .rfind(|l| l.starts_with("reconcile:"))
        .unwrap_or("")
        .to_string()
}

/// The `N ms` the summary line ends with.
fn script_ms(summary: &str) -> f64 {
    summary
        .rsplit_once(';')
        .and_then(|(_, t)| t.trim().strip_suffix(" ms"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::NAN)
}

fn join(xs: &[f64], decimals: usize) -> String {
    xs.iter()
        .map(|x| format!("{x:.decimals$}"))
        .collect::<Vec<_>>()
        .join(" / ")
}
