//! Launch benchmark: start 1,000 long-running trivial tasks (`sleep 100000`) until every one
//! is reported running, with formic (`offer | pack | launch`, each task under its own
//! formic-supervise) and, in the same run on the same machine, with s6 (s6-svscan over 1,000
//! service directories) and supervisord (1,000 `[program:x]` sections). Run:
//! `cargo bench --bench launch` (or scripts/bench-launch, which installs s6 and supervisor).
//!
//! What "running" means is each system's own word, read the cheapest way it offers, every
//! 10 ms, and only for the tasks not yet running:
//! - formic: the task directory's `status` says RUNNING (written by formic-supervise once
//!   the task has been exec'd); launch itself runs with --wait long enough to see them all,
//!   so its wall time also covers its final state transaction;
//! - s6: the service's `supervise/status` holds a pid (what `s6-svstat` reports as up);
//! - supervisord: its log says `success: NAME entered RUNNING state` (startsecs=0), which
//!   costs supervisord nothing extra, unlike polling `supervisorctl status`.
//!
//! After each system is up the bench checks it by other means (launch's events and the
//! state file; `s6-svstat`; `supervisorctl status`), reads from /proc when each task process
//! and each supervisor was forked, how much CPU the system used (its processes other than
//! the tasks) and how long its manager (launch, s6-svscan, supervisord) waited for a CPU,
//! and then kills every process it started.
//!
//! The `death` section times death detection: SIGKILL of a task to its event on
//! `reap --follow`'s stdout, over 100 kills among 1,000 running tasks.
//! `cargo bench --bench launch -- start|death` runs one section.
//!
//! Every process a round starts works in a directory under the bench directory (the
//! processes' cwd), so clean-up needs no pid files: it stops (SIGSTOP) every process whose
//! cwd is below that directory, so no supervisor can restart anything, then SIGKILLs them,
//! until none is left. The bench is a child subreaper, so it reaps them all. scripts/
//! bench-launch repeats that sweep in a trap in case this process itself is killed.
//!
//! Rounds (FORMIC_BENCH_ROUNDS, default 3) run the three systems in a rotating order; the
//! figures are medians over rounds, and the ratios are medians of per-round ratios.

mod common;

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{
    command_output, fresh_dir, keep_files, lines_of, loadavg, median, ms, package_version,
    percentile, pipe, processes_under, schedstat, settle, verdict, Bench, Pauses, Proc, Sweep,
};
use formic::state::State;
use formic::task::TaskState;
use formic::taskdir;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Tasks each system starts.
const TASKS: usize = 1000;
/// What each task runs.
const SLEEP: [&str; 2] = ["sleep", "100000"];
/// How often the bench looks for tasks that are running.
const POLL: Duration = Duration::from_millis(10);
/// A system that has not started every task by then has failed the round.
const LIMIT: Duration = Duration::from_secs(180);
/// formic's job: tiny instances, no ports.
const JOB: &str = "bench/prod/sleep";
/// The pause before each round, for the previous round's writes and exits to settle.
const SETTLE: Duration = Duration::from_millis(500);

fn main() {
    // FORMIC_BENCH_DIR keeps the files (state, task directories, service directories, logs).
    let Some(bench) = Bench::from_args("launch") else {
        return;
    };
    let rounds = common::rounds(3);
    let dir = bench.dir.clone();

    // Orphans (formic-supervise outlives launch; killed supervisors leave their tasks) are
    // handed to this process, which reaps them, whatever init does with orphans.
    nix::sys::prctl::set_child_subreaper(true).unwrap();

    println!(
        "launch benchmark: {} tasks of `{}` per system, {rounds} rounds, {} cores, load average {} at the start",
        TASKS,
        SLEEP.join(" "),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    println!(
        "versions: formic {}; s6 {}; supervisord {}",
        env!("CARGO_PKG_VERSION"),
        package_version("s6"),
        command_output("supervisord", &["--version"])
    );
    if bench.want("start") {
        start_section(&dir, rounds);
    }
    if bench.want("death") {
        death_section(&dir);
    }
}

// ---------------------------------------------------------------------------------------
// Starting 1,000 tasks

/// What one system did in one round; times from the moment it was started.
#[derive(Clone, Debug, Default)]
struct Round {
    /// The first and the last task reported running.
    first_up: Duration,
    all_up: Duration,
    /// launch's exit (formic only).
    exited: Option<Duration>,
    /// When the first and the last task process and supervisor were forked (from /proc,
    /// clock-tick resolution), relative to the start.
    tasks_forked: (f64, f64),
    supervisors_forked: Option<(f64, f64)>,
    /// For formic: each task's latency from its supervisor's fork to RUNNING, median and
    /// maximum, ms.
    supervisor_latency: Option<(f64, f64)>,
    /// CPU seconds used by the system's own processes (not the tasks).
    cpu_s: f64,
    /// CPU seconds of the task processes: what their supervisors did in them between fork
    /// and exec (formic: setsid, dropping privileges; s6: the run script's shell;
    /// supervisord: closing fds in Python), and sleep's own start.
    task_cpu_s: f64,
    /// The manager (launch, s6-svscan, supervisord): ms on a CPU, and ms runnable but
    /// waiting for one (/proc/PID/schedstat), until all were up.
    manager_sched: (f64, f64),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum System {
    Formic,
    S6,
    Supervisord,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Formic => "formic",
            System::S6 => "s6",
            System::Supervisord => "supervisord",
        }
    }
}

fn start_section(dir: &Path, rounds: usize) {
    let systems = [System::Formic, System::S6, System::Supervisord];
    let mut results: Vec<Vec<Round>> = vec![Vec::new(); 3];
    let mut pack_ms = Vec::new();
    for r in 0..rounds {
        for k in 0..3 {
            let i = (r + k) % 3; // a rotating order: no system always goes first
            let sys = systems[i];
            let work = fresh_dir(&dir.join(format!("{}-{r}", sys.name())));
            let round = {
                // Whatever happens in the round, nothing it started outlives it.
                let _sweep = Sweep(work.clone());
                settle(SETTLE);
                match sys {
                    System::Formic => {
                        let (round, pack) = formic_round(&work);
                        pack_ms.push(pack);
                        round
                    }
                    System::S6 => s6_round(&work),
                    System::Supervisord => supervisord_round(&work),
                }
            };
            print_round(r, sys, &round);
            results[i].push(round);
            // The rounds' files are not needed again; a kept directory keeps them.
            if !keep_files() {
                let _ = fs::remove_dir_all(&work);
            }
        }
    }
    report(&results, &pack_ms);
}

/// A local formic cluster in `work`: one host big enough for every instance, one job of
/// TASKS tiny instances of `sleep`, and pack's place records for them in a file.
struct Cluster {
    work: PathBuf,
    state: PathBuf,
    places: PathBuf,
    /// Each instance's task directory, by instance.
    dirs: Vec<PathBuf>,
    /// The time `offer | pack` took, ms.
    pack_ms: f64,
}

impl Cluster {
    fn new(work: &Path) -> Cluster {
        let state = work.join("state");
        let mut c = Cluster {
            work: work.to_path_buf(),
            places: work.join("places.jsonl"),
            dirs: Vec::new(),
            pack_ms: 0.0,
            state,
        };
        let host = r#"{"type":"host","name":"h1","cpus":64,"ram_mb":65536,"disk_mb":100000,"ports":[[31000,31999]]}"#;
        pipe(c.tool("offer").arg("add"), host.as_bytes());
        let jobs = work.join("jobs.json");
        let spec = serde_json::json!({
            "job": JOB, "instances": TASKS, "cmd": SLEEP,
            "resources": {"cpus": 0.01, "ram_mb": 1},
        });
        fs::write(&jobs, spec.to_string()).unwrap();
        let t = Instant::now();
        let offers = pipe(&mut c.tool("offer"), b"");
        let places = pipe(c.tool("pack").arg(&jobs), &offers);
        c.pack_ms = ms(t.elapsed());
        fs::write(&c.places, &places).unwrap();
        let root = taskdir::host_root(&c.state, "h1");
        c.dirs = (0..TASKS)
            .map(|i| taskdir::task_dir(&root, &format!("{JOB}/{i}")))
            .collect();
        c
    }

    /// A command for one of formic's tools on this cluster's state, with nothing inherited
    /// that could change its behaviour.
    fn tool(&self, name: &str) -> Command {
        common::tool(name, &self.state, &self.work)
    }

    /// launch on the place records: events to events.jsonl, errors to launch.err. --wait
    /// is long enough to see every task running, so launch's wall time includes that wait
    /// and its final transaction.
    fn launch(&self) -> std::process::Child {
        self.tool("launch")
            .args(["--wait", "170", "--grace", "1"])
            .stdin(fs::File::open(&self.places).unwrap())
            .stdout(fs::File::create(self.work.join("events.jsonl")).unwrap())
            .stderr(fs::File::create(self.work.join("launch.err")).unwrap())
            .spawn()
            .unwrap()
    }
}

impl Drop for Cluster {
    /// formic's own way out, after the measurement: every task stopped gracefully, so each
    /// supervisor removes its task's cgroups (the sweep that follows kills only what this
    /// leaves; cgroups left by a sweep pile up by the thousand and slow later rounds).
    fn drop(&mut self) {
        let _ = self
            .tool("reap")
            .args(["kill", "--host", "h1"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// formic: `offer | pack` first (timed apart), then launch timed until every task directory
/// reports RUNNING and until it exits.
fn formic_round(work: &Path) -> (Round, f64) {
    let c = Cluster::new(work);
    let (state, dirs) = (&c.state, &c.dirs);
    let before = children_cpu();
    let (wall0, boot0) = (SystemTime::now(), boottime());
    let t0 = Instant::now();
    let mut launch = c.launch();
    // launch's exit is looked for while the tasks come up, so a failing launch fails the
    // round at once, and its exit time is exact to a millisecond after.
    let mut exited: Option<(Duration, std::process::ExitStatus)> = None;
    let mut check_exit = |launch: &mut std::process::Child| {
        if exited.is_none() {
            if let Some(s) = launch.try_wait().unwrap() {
                let err = fs::read_to_string(work.join("launch.err")).unwrap_or_default();
                assert!(s.success(), "launch failed: {s}: {err}");
                exited = Some((t0.elapsed(), s));
            }
        }
        exited.is_some()
    };
    let mut running = each_pending(TASKS, |i| {
        match taskdir::Status::read(&dirs[i]).ok().flatten() {
            Some(s) if s.state == "RUNNING" => true,
            Some(s) if s.state != "STARTING" => panic!("formic: {} is {}", s.task, s.state),
            _ => false,
        }
    });
    let launch_pid = launch.id();
    let mut sched = (0.0, 0.0);
    let up = poll_until(t0, TASKS, || {
        if !check_exit(&mut launch) {
            sched = schedstat(launch_pid).unwrap_or(sched);
        }
        running()
    });
    while !check_exit(&mut launch) {
        sched = schedstat(launch_pid).unwrap_or(sched);
        assert!(t0.elapsed() < LIMIT, "formic: launch did not exit");
        std::thread::sleep(Duration::from_millis(1));
    }
    let launch_cpu = children_cpu() - before;
    let exited = exited.unwrap().0;

    // Checks: an event per task, every task RUNNING in the state with its pid.
    let events = fs::read_to_string(work.join("events.jsonl")).unwrap();
    let running_events = events
        .lines()
        .filter(|l| l.contains(r#""state":"RUNNING""#))
        .count();
    assert_eq!(running_events, TASKS, "launch's events: {events:.2000}");
    let s = State::open(state).unwrap();
    let in_state = s
        .view()
        .tasks
        .iter()
        .filter(|(_, t)| t.state == TaskState::Running && t.pid != 0)
        .count();
    assert_eq!(in_state, TASKS, "tasks RUNNING in the state");

    // Where the time went: supervisors' and tasks' fork times, and each task's latency from
    // its supervisor's fork to its RUNNING status.
    let statuses: Vec<taskdir::Status> = dirs
        .iter()
        .map(|d| taskdir::Status::read(d).unwrap().unwrap())
        .collect();
    let rel_ticks = |ticks: u64| ticks as f64 / clk_tck() * 1e3 - boot0 * 1e3;
    let wall_ms =
        |since: f64| (since - wall0.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()) * 1e3;
    let sup_forked: Vec<f64> = statuses.iter().map(|s| rel_ticks(s.supervisor.1)).collect();
    let task_forked: Vec<f64> = statuses
        .iter()
        .map(|s| rel_ticks(s.pid.unwrap().1))
        .collect();
    let mut latency: Vec<f64> = statuses
        .iter()
        .zip(&sup_forked)
        .map(|(s, f)| wall_ms(s.since) - f)
        .collect();
    latency.sort_by(f64::total_cmp);
    let procs = processes_under(work);
    assert_eq!(
        procs.iter().filter(|p| p.comm == "sleep").count(),
        TASKS,
        "formic: sleep processes"
    );
    let cpu_s = launch_cpu
        + procs
            .iter()
            .filter(|p| p.comm != "sleep")
            .map(|p| p.cpu_s)
            .sum::<f64>();
    let round = Round {
        first_up: up[0],
        all_up: up[TASKS - 1],
        exited: Some(exited),
        tasks_forked: span(&task_forked),
        supervisors_forked: Some(span(&sup_forked)),
        supervisor_latency: Some((latency[latency.len() / 2], latency[latency.len() - 1])),
        cpu_s,
        task_cpu_s: task_cpu(&procs),
        manager_sched: sched,
    };
    (round, c.pack_ms)
}

/// s6: TASKS service directories whose `run` execs sleep, s6-svscan over them, timed until
/// every `supervise/status` holds a pid.
fn s6_round(work: &Path) -> Round {
    let scan = work.join("scan");
    // A shell script that execs sleep. execlineb, s6's own script language, would be the
    // idiom, but on the development machine it cost 5 ms of CPU per run against 1.8 ms for
    // dash (500 runs of each, `true` as the command), so s6 gets the faster one.
    let script = format!("#!/bin/sh\nexec {}\n", SLEEP.join(" "));
    let services: Vec<PathBuf> = (0..TASKS).map(|i| scan.join(format!("s{i:04}"))).collect();
    for s in &services {
        fs::create_dir_all(s).unwrap();
        let run = s.join("run");
        fs::write(&run, &script).unwrap();
        fs::set_permissions(&run, fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::create_dir_all(scan.join(".s6-svscan")).unwrap();
    let boot0 = boottime();
    let t0 = Instant::now();
    // -c: room for more services than the default 1000.
    let svscan = Command::new("s6-svscan")
        .args(["-c", "4096"])
        .arg(&scan)
        .current_dir(&scan)
        .stdin(Stdio::null())
        .stdout(fs::File::create(work.join("s6-svscan.log")).unwrap())
        .stderr(Stdio::from(
            fs::File::create(work.join("s6-svscan.err")).unwrap(),
        ))
        .process_group(0)
        .spawn()
        .expect("starting s6-svscan (is s6 installed? scripts/bench-launch installs it)")
        .id();
    let up = poll_until(
        t0,
        TASKS,
        each_pending(TASKS, |i| s6_pid(&services[i]).is_some()),
    );
    let sched = schedstat(svscan).unwrap();

    // Check with s6's own tool that each service is up, and that each pid is sleep by now.
    for s in &services {
        let out = command_output("s6-svstat", &["-o", "up", s.to_str().unwrap()]);
        assert_eq!(out, "true", "s6-svstat {}", s.display());
    }
    let procs = processes_under(work);
    let pids: HashSet<u32> = services.iter().filter_map(|s| s6_pid(s)).collect();
    let sleeps: Vec<&Proc> = procs
        .iter()
        .filter(|p| p.comm == "sleep" && pids.contains(&p.pid))
        .collect();
    assert_eq!(sleeps.len(), TASKS, "s6: sleep processes");
    let rel = |p: &&Proc| p.start_ticks as f64 / clk_tck() * 1e3 - boot0 * 1e3;
    let supervisors: Vec<f64> = procs
        .iter()
        .filter(|p| p.comm == "s6-supervise")
        .map(|p| rel(&p))
        .collect();
    assert_eq!(supervisors.len(), TASKS, "s6: s6-supervise processes");
    Round {
        first_up: up[0],
        all_up: up[TASKS - 1],
        exited: None,
        tasks_forked: span(&sleeps.iter().map(rel).collect::<Vec<_>>()),
        supervisors_forked: Some(span(&supervisors)),
        supervisor_latency: None,
        cpu_s: system_cpu(&procs),
        task_cpu_s: task_cpu(&procs),
        manager_sched: sched,
    }
}

/// The pid in an s6 service's `supervise/status` (35 bytes: two TAI64N stamps, then the
/// pid as a big-endian u64; 0 while the service is down).
fn s6_pid(service: &Path) -> Option<u32> {
    let b = fs::read(service.join("supervise/status")).ok()?;
    let pid = u64::from_be_bytes(b.get(24..32)?.try_into().ok()?);
    (pid != 0).then_some(pid as u32)
}

/// supervisord: TASKS `[program:x]` sections (autostart, startsecs=0), timed until its log
/// says each entered RUNNING.
fn supervisord_round(work: &Path) -> Round {
    let conf = work.join("supervisord.conf");
    let sock = work.join("supervisor.sock");
    let log = work.join("supervisord.log");
    let logs = work.join("logs");
    fs::create_dir_all(&logs).unwrap();
    // supervisord's defaults otherwise. minfds in particular stays at its default (1024):
    // supervisord closes fds 3..minfds one by one in every child before exec, so raising it
    // would slow every spawn (16,384 made the round take twice as long). The process's own
    // fd limit is what lets it hold its ~3,000 pipes.
    let mut text = format!(
        "[unix_http_server]\nfile={sock}\n\n\
         [supervisord]\nlogfile={log}\npidfile={work}/supervisord.pid\nchildlogdir={logs}\n\
         nodaemon=true\n{user}\n\
         [rpcinterface:supervisor]\n\
         supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n\
         [supervisorctl]\nserverurl=unix://{sock}\n",
        sock = sock.display(),
        log = log.display(),
        work = work.display(),
        logs = logs.display(),
        // As root, say so (else supervisord complains that it did not drop privileges).
        user = if nix::unistd::geteuid().is_root() {
            "user=root\n"
        } else {
            ""
        },
    );
    for i in 0..TASKS {
        // Default logging (stdout and stderr piped into files in childlogdir), as formic's
        // supervisors pipe the tasks' output into files in their sandboxes.
        text += &format!(
            "\n[program:t{i:04}]\ncommand={}\ndirectory={}\nautostart=true\nstartsecs=0\n",
            SLEEP.join(" "),
            work.display()
        );
    }
    fs::write(&conf, text).unwrap();
    let boot0 = boottime();
    let t0 = Instant::now();
    let supervisord = Command::new("supervisord")
        .arg("-c")
        .arg(&conf)
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(work.join("supervisord.err")).unwrap())
        .process_group(0)
        .spawn()
        .expect("starting supervisord (is supervisor installed? scripts/bench-launch installs it)")
        .id();
    // The log is read as it grows; only whole lines count.
    let mut running: HashSet<String> = HashSet::new();
    let mut offset = 0u64;
    let mut partial = String::new();
    let up = poll_until(t0, TASKS, || {
        if let Ok(mut f) = fs::File::open(&log) {
            f.seek(SeekFrom::Start(offset)).unwrap();
            let mut buf = String::new();
            offset += f.read_to_string(&mut buf).unwrap() as u64;
            partial += &buf;
            let end = partial.rfind('\n').map_or(0, |e| e + 1);
            for line in partial[..end].lines() {
                // "... INFO success: t0042 entered RUNNING state, process has stayed up ..."
                if let Some(rest) = line.split(" INFO success: ").nth(1) {
                    if rest.contains(" entered RUNNING state") {
                        running.insert(rest.split(' ').next().unwrap().to_string());
                    }
                }
            }
            partial.drain(..end);
        }
        running.len()
    });
    let sched = schedstat(supervisord).unwrap();

    // Check with supervisorctl that every program is RUNNING.
    let status = Command::new("supervisorctl")
        .arg("-c")
        .arg(&conf)
        .arg("status")
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    let n = status
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("RUNNING"))
        .count();
    assert_eq!(n, TASKS, "supervisorctl status: {status:.2000}");
    let procs = processes_under(work);
    let rel = |p: &Proc| p.start_ticks as f64 / clk_tck() * 1e3 - boot0 * 1e3;
    let sleeps: Vec<f64> = procs
        .iter()
        .filter(|p| p.comm == "sleep")
        .map(rel)
        .collect();
    assert_eq!(sleeps.len(), TASKS, "supervisord: sleep processes");
    Round {
        first_up: up[0],
        all_up: up[TASKS - 1],
        exited: None,
        tasks_forked: span(&sleeps),
        supervisors_forked: None,
        supervisor_latency: None,
        cpu_s: system_cpu(&procs),
        task_cpu_s: task_cpu(&procs),
        manager_sched: sched,
    }
}

/// Calls `count_up()` every POLL until it returns `n`; returns, for each task in the order
/// they came up, the time at which the bench saw it up.
fn poll_until(t0: Instant, n: usize, mut count_up: impl FnMut() -> usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(n);
    loop {
        let now = t0.elapsed();
        let up = count_up();
        while times.len() < up {
            times.push(now);
        }
        if up >= n {
            return times;
        }
        assert!(
            t0.elapsed() < LIMIT,
            "{} of {n} tasks still not running after {LIMIT:?}",
            n - up
        );
        std::thread::sleep(POLL);
    }
}

/// A `count_up` for [`poll_until`] that asks `is_up(i)` about each task not yet up.
fn each_pending(n: usize, mut is_up: impl FnMut(usize) -> bool) -> impl FnMut() -> usize {
    let mut pending: Vec<usize> = (0..n).collect();
    move || {
        pending.retain(|&i| !is_up(i));
        n - pending.len()
    }
}

fn span(xs: &[f64]) -> (f64, f64) {
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

fn print_round(r: usize, sys: System, x: &Round) {
    let mut line = format!(
        "round {r} {:<11} first up {:>6.0} ms, all {TASKS} up {:>6.0} ms",
        sys.name(),
        ms(x.first_up),
        ms(x.all_up)
    );
    if let Some(e) = x.exited {
        line += &format!(", launch exited {:.0} ms", ms(e));
    }
    line += &format!(
        "; tasks forked {:.0}..{:.0} ms",
        x.tasks_forked.0, x.tasks_forked.1
    );
    if let Some((a, b)) = x.supervisors_forked {
        line += &format!(", supervisors forked {a:.0}..{b:.0} ms");
    }
    if let Some((m, hi)) = x.supervisor_latency {
        line += &format!(", supervisor fork to RUNNING median {m:.0} max {hi:.0} ms");
    }
    line += &format!(
        "; CPU {:.2} s, in the tasks before exec {:.2} s; manager on CPU {:.0} ms, waiting for a CPU {:.0} ms",
        x.cpu_s, x.task_cpu_s, x.manager_sched.0, x.manager_sched.1
    );
    println!("{line}");
}

fn report(results: &[Vec<Round>], pack_ms: &[f64]) {
    let [formic, s6, sd] = [&results[0], &results[1], &results[2]];
    let med = |rs: &[Round], f: &dyn Fn(&Round) -> f64| median(rs.iter().map(f).collect());
    let ratio = |other: &[Round]| {
        median(
            formic
                .iter()
                .zip(other)
                .map(|(a, b)| ms(a.all_up) / ms(b.all_up))
                .collect(),
        )
    };
    let (f_all, s_all, d_all) = (
        med(formic, &|r| ms(r.all_up)),
        med(s6, &|r| ms(r.all_up)),
        med(sd, &|r| ms(r.all_up)),
    );
    let (r_s6, r_sd) = (ratio(s6), ratio(sd));
    println!();
    println!(
        "start {TASKS} tasks until all are running (medians of {} rounds):",
        formic.len()
    );
    println!(
        "  offer | pack (before launch)            {:>8.0} ms",
        median(pack_ms.to_vec())
    );
    println!(
        "  formic: launch started -> all RUNNING   {f_all:>8.0} ms (first {:.0} ms)",
        med(formic, &|r| ms(r.first_up))
    );
    println!(
        "  formic: launch wall (exit)              {:>8.0} ms",
        med(formic, &|r| r.exited.map_or(0.0, ms))
    );
    println!(
        "  s6: s6-svscan started -> all up         {s_all:>8.0} ms (first {:.0} ms)",
        med(s6, &|r| ms(r.first_up))
    );
    println!(
        "  supervisord started -> all RUNNING      {d_all:>8.0} ms (first {:.0} ms)",
        med(sd, &|r| ms(r.first_up))
    );
    println!(
        "  CPU s (system, not tasks): formic {:.2}, s6 {:.2}, supervisord {:.2}",
        med(formic, &|r| r.cpu_s),
        med(s6, &|r| r.cpu_s),
        med(sd, &|r| r.cpu_s)
    );
    println!(
        "  CPU s (in the tasks, fork to sleep): formic {:.2}, s6 {:.2}, supervisord {:.2}",
        med(formic, &|r| r.task_cpu_s),
        med(s6, &|r| r.task_cpu_s),
        med(sd, &|r| r.task_cpu_s)
    );
    println!(
        "  manager on a CPU / waiting for one, ms: launch {:.0} / {:.0}, s6-svscan {:.0} / {:.0}, supervisord {:.0} / {:.0}",
        med(formic, &|r| r.manager_sched.0),
        med(formic, &|r| r.manager_sched.1),
        med(s6, &|r| r.manager_sched.0),
        med(s6, &|r| r.manager_sched.1),
        med(sd, &|r| r.manager_sched.0),
        med(sd, &|r| r.manager_sched.1)
    );
    println!(
        "  formic / s6          {r_s6:>6.2}  target <= 2     {}",
        verdict(r_s6 <= 2.0)
    );
    println!(
        "  formic / supervisord {r_sd:>6.2}  target < 1      {}",
        verdict(r_sd < 1.0)
    );
}

// ---------------------------------------------------------------------------------------
// Death detection

/// Tasks killed, one after another, for the death detection figure.
const KILLS: usize = 100;

/// From SIGKILL of a task to its event on `reap --follow`'s stdout: TASKS tasks launched as
/// above, `reap --follow` watching them, then KILLS tasks SIGKILLed one at a time (each after
/// a pause of 0-50 ms, so the kills fall at every phase of reap's polling), each timed until
/// reap prints an event for that task. Also split out: the supervisor's part, from the kill
/// to the `since` of the status it wrote for the task's end.
fn death_section(dir: &Path) {
    println!();
    let work = fresh_dir(&dir.join("death"));
    let _sweep = Sweep(work.clone());
    settle(SETTLE);
    let c = Cluster::new(&work);
    let status = c.launch().wait().unwrap();
    assert!(status.success(), "launch: {status}");
    for d in &c.dirs {
        assert_eq!(taskdir::Status::read(d).unwrap().unwrap().state, "RUNNING");
    }

    let mut follow = c
        .tool("reap")
        .arg("--follow")
        .stdout(Stdio::piped())
        .stderr(fs::File::create(work.join("reap.err")).unwrap())
        .spawn()
        .unwrap();
    let reap_pid = follow.id();
    // Each line of reap's output with the moment it arrived.
    let rx = lines_of(follow.stdout.take().unwrap());
    // Whatever reap says about the fleet at first is not what is measured.
    std::thread::sleep(Duration::from_millis(1500));
    while rx.try_recv().is_ok() {}
    assert!(
        follow.try_wait().unwrap().is_none(),
        "reap --follow exited: {}",
        fs::read_to_string(work.join("reap.err")).unwrap_or_default()
    );
    let on_cpu = |pid| schedstat(pid).map_or(0.0, |s| s.0 / 1e3);
    let cpu_before = (on_cpu(reap_pid), Instant::now());

    let mut detect = Vec::with_capacity(KILLS);
    let mut supervisor = Vec::with_capacity(KILLS);
    let mut states: Vec<String> = Vec::new();
    let mut pauses = Pauses::default();
    for (k, dir) in c.dirs.iter().enumerate().take(KILLS) {
        std::thread::sleep(pauses.next_pause());
        let (pid, start) = taskdir::Status::read(dir).unwrap().unwrap().pid.unwrap();
        assert!(
            formic::process::same_process(pid, start),
            "task {k} is not running"
        );
        let task = format!("{JOB}/{k}");
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let t = Instant::now();
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
        loop {
            let (at, line) = rx
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("no event for {task} from reap --follow in 10 s"));
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["type"] == "event" && v["task"] == task.as_str() {
                detect.push(ms(at.saturating_duration_since(t)));
                let state = v["state"].as_str().unwrap_or("?").to_string();
                if !states.contains(&state) {
                    states.push(state);
                }
                break;
            }
            // Other lines: later events of tasks killed before; not timed.
        }
        let s = taskdir::Status::read(dir).unwrap().unwrap();
        supervisor.push((s.since - wall.as_secs_f64()) * 1e3);
    }
    let cpu = on_cpu(reap_pid) - cpu_before.0;
    let cpu_share = cpu / cpu_before.1.elapsed().as_secs_f64();
    detect.sort_by(f64::total_cmp);
    supervisor.sort_by(f64::total_cmp);
    let med = percentile(&detect, 0.5);
    println!(
        "death detection: SIGKILL of a task -> its event on reap --follow's stdout, {KILLS} kills among {TASKS} running tasks"
    );
    println!(
        "  median {med:.1} ms, p90 {:.1} ms, max {:.1} ms, min {:.1} ms  target median < 100 ms  {}",
        percentile(&detect, 0.9),
        detect[KILLS - 1],
        detect[0],
        verdict(med < 100.0)
    );
    println!(
        "  of which the supervisor (kill -> the `since` of its final status): median {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        percentile(&supervisor, 0.5),
        percentile(&supervisor, 0.9),
        supervisor[KILLS - 1]
    );
    println!(
        "  events: {}; reap --follow used {:.0}% of a core while following {TASKS} tasks",
        states.join(", "),
        cpu_share * 100.0
    );
}

// ---------------------------------------------------------------------------------------
// Processes: finding, measuring and killing what a round started

/// CPU seconds of the task processes.
fn task_cpu(procs: &[Proc]) -> f64 {
    procs
        .iter()
        .filter(|p| p.comm == "sleep")
        .map(|p| p.cpu_s)
        .sum()
}

/// CPU seconds of a system's own processes (everything but the tasks).
fn system_cpu(procs: &[Proc]) -> f64 {
    procs
        .iter()
        .filter(|p| p.comm != "sleep")
        .map(|p| p.cpu_s)
        .sum()
}

// ---------------------------------------------------------------------------------------
// Small helpers

/// CPU time of the children this process has waited for, in seconds.
fn children_cpu() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_CHILDREN).unwrap();
    let s = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    s(u.user_time()) + s(u.system_time())
}

/// Seconds since boot, the clock /proc's start times count in.
fn boottime() -> f64 {
    let mut ts = nix::libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { nix::libc::clock_gettime(nix::libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn clk_tck() -> f64 {
    (unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) }) as f64
}
