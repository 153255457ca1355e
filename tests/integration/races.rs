//! Many passes at once on one state (Omega's shared state): pipelines that decide on their
//! own snapshots, race to commit, and lose to each other. Whatever the interleaving, the
//! state accounts for every supervisor that runs, no task runs twice and no port is held
//! twice; a supervisor the state does not know is stopped by the next reap.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use formic::state::State;
use formic::task::TaskState;
use formic::taskdir;
use serde_json::Value;

use crate::common::{self, code, run, stderr, stdout, tool};

/// Local hosts h1..hN, each with ports of its own (they share this machine's network),
/// and a jobs directory.
struct Cluster {
    dir: tempfile::TempDir,
    hosts: usize,
}

impl Cluster {
    fn new(hosts: usize) -> Cluster {
        let c = Cluster {
            dir: common::tempdir(),
            hosts,
        };
        let lines: String = (1..=hosts)
            .map(|i| {
                let base = 31000 + 100 * i;
                format!(
                    "{{\"type\":\"host\",\"name\":\"h{i}\",\"cpus\":4,\"ram_mb\":4096,\"disk_mb\":1000,\"ports\":[[{base},{}]]}}\n",
                    base + 99
                )
            })
            .collect();
        let out = run(tool("offer", &c.state()).arg("add"), lines.as_bytes());
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        std::fs::create_dir(c.jobs()).unwrap();
        c
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn jobs(&self) -> PathBuf {
        self.dir.path().join("jobs")
    }

    /// `offer | pack --state S --prune --strategy STRATEGY jobs/ | reap | launch`, started.
    fn pipeline(&self, strategy: &str) -> std::process::Child {
        let bin = common::bin("offer");
        let bin = bin.parent().unwrap().display();
        let script = format!(
            "{bin}/offer | {bin}/pack --state \"$FORMIC_STATE\" --prune --strategy {strategy} {} \
             | {bin}/reap | {bin}/launch --wait 10",
            self.jobs().display()
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("FORMIC_STATE", self.state())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().unwrap()
    }

    fn reap(&self, args: &[&str]) -> std::process::Output {
        run(tool("reap", &self.state()).args(args), b"")
    }
}

impl Drop for Cluster {
    /// Whatever the test asserted: every supervisor and task it started goes, gracefully
    /// first (so each removes its cgroups), then by force.
    fn drop(&mut self) {
        let mut kill = Command::new(common::bin("reap"));
        kill.arg("kill").env("FORMIC_STATE", self.state());
        for i in 1..=self.hosts {
            kill.args(["--host", &format!("h{i}")]);
        }
        let _ = kill.output();
        for (_, _, s) in supervisors(&self.state()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(s.supervisor.0 as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            if let Some((pid, start)) = s.pid {
                if formic::process::same_process(pid, start) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}

/// Every live supervisor under the local hosts' run roots: host, directory, status.
fn supervisors(state: &Path) -> Vec<(String, PathBuf, taskdir::Status)> {
    let mut out = Vec::new();
    for (host, root) in taskdir::subdirs(&taskdir::run_root(state)) {
        for (_, dir) in taskdir::task_dirs(&root) {
            if !taskdir::supervised(&dir).unwrap_or(false) {
                continue;
            }
            // A supervisor reports before launch reports it: all launches have ended.
            let status = taskdir::Status::read(&dir).unwrap().expect("a status");
            if formic::process::same_process(status.supervisor.0, status.supervisor.1) {
                out.push((host.clone(), dir, status));
            }
        }
    }
    out
}

/// The state's live incarnations: task id -> (host, incarnation, ports).
fn live(state: &Path) -> BTreeMap<String, (String, u32, Vec<u16>)> {
    let state = State::open(state).unwrap();
    let v = state.view();
    v.tasks
        .iter()
        .filter(|(_, t)| t.state.holds_resources())
        .map(|(_, t)| {
            let key = &v.jobs.get(t.job).unwrap().key;
            let host = v.hosts.get(t.host).unwrap().name.clone();
            let ports = t.ports.iter().copied().filter(|&p| p != 0).collect();
            (
                format!("{key}/{}", t.instance),
                (host, t.incarnation, ports),
            )
        })
        .collect()
}

/// The promises: every live supervisor is one the state runs on its host, no task has two,
/// and no port is held twice on a host (the hosts' ranges are disjoint, so not at all).
fn check_accounted(c: &Cluster, round: usize) {
    let live = live(&c.state());
    let mut per_task: HashMap<String, usize> = HashMap::new();
    for (host, dir, s) in supervisors(&c.state()) {
        *per_task.entry(s.task.clone()).or_default() += 1;
        let known = live.get(&s.task);
        // (A supervisor older than incarnations reports none: then its host must agree.)
        assert_eq!(
            known.map(|k| (k.0.as_str(), s.incarnation.map(|_| k.1))),
            Some((host.as_str(), s.incarnation)),
            "round {round}: {} in {} runs unknown to the state (state: {known:?})",
            s.task,
            dir.display()
        );
    }
    assert!(
        per_task.values().all(|&n| n == 1),
        "round {round}: {per_task:?}"
    );
    let mut ports: Vec<u16> = live.values().flat_map(|k| k.2.clone()).collect();
    let n = ports.len();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), n, "round {round}: a port held twice: {live:?}");
}

/// The issue's reproduction, made harder: a 3-instance web service, one per host, on four
/// hosts, two of which carry other load; each round kills two instances, then eight whole
/// pipelines run at once, binpack (which prefers the loaded hosts) and spread (the empty
/// ones) alternating, so they place the same instance on different hosts. Before the fix
/// (release binaries of 9be1ead, FORMIC_TEST_BIN), passes started second copies of
/// instances on other hosts, unknown to the state: 7 supervisors where 5 belong.
#[test]
fn concurrent_pipelines_never_start_a_task_the_state_does_not_run() {
    let c = Cluster::new(4);
    let web = r#"{"job":"www/prod/web","instances":3,"cmd":["python3","-m","http.server","--bind","127.0.0.1","{{port.http}}"],"resources":{"cpus":0.25,"ram_mb":64,"ports":["http"]},"constraints":[{"attr":"host","limit":1}]}"#;
    std::fs::write(c.jobs().join("web.json"), web).unwrap();
    let load = r#"{"job":"fill/prod/load","instances":2,"cmd":["sleep","600"],"resources":{"cpus":2.5,"ram_mb":64},"constraints":[{"attr":"host","limit":1}]}"#;
    std::fs::write(c.jobs().join("load.json"), load).unwrap();
    let mut conflicts = 0;
    for round in 0..20 {
        if round > 0 {
            let victims = [
                format!("www/prod/web/{}", round % 3),
                format!("www/prod/web/{}", (round + 1) % 3),
            ];
            let out = c.reap(&["kill", &victims[0], &victims[1]]);
            assert!([0, 1].contains(&code(&out)), "{}", stderr(&out));
        }
        let children: Vec<_> = (0..8)
            .map(|i| c.pipeline(if i % 2 == 0 { "binpack" } else { "spread" }))
            .collect();
        for child in children {
            let out = common::wait_output(child, Duration::from_secs(60));
            assert!(
                [0, 1].contains(&code(&out)),
                "round {round}: {}",
                stderr(&out)
            );
            for line in stdout(&out).lines() {
                let r: Value = serde_json::from_str(line).unwrap();
                if r["type"] == "conflict" {
                    conflicts += 1;
                }
                assert_ne!(r["state"], "FAILED", "round {round}: {r}");
            }
        }
        check_accounted(&c, round);
    }
    assert!(conflicts > 0, "the pipelines raced");
    // The cluster converges: one more pass (reap first, as scripts/reconcile does) leaves
    // all three running, each on a host of its own.
    let out = c.reap(&[]);
    assert!([0, 1].contains(&code(&out)), "{}", stderr(&out));
    let out = common::wait_output(c.pipeline("binpack"), Duration::from_secs(60));
    assert!([0, 1].contains(&code(&out)), "{}", stderr(&out));
    let out = c.reap(&[]);
    assert!([0, 1].contains(&code(&out)), "{}", stderr(&out));
    let live = live(&c.state());
    assert_eq!(live.len(), 5, "{live:?}");
    let mut hosts: Vec<&String> = live
        .iter()
        .filter(|(id, _)| id.starts_with("www/"))
        .map(|(_, k)| &k.0)
        .collect();
    hosts.sort();
    hosts.dedup();
    assert_eq!(hosts.len(), 3, "{live:?}");
    let state = State::open(&c.state()).unwrap();
    assert!(state
        .view()
        .tasks
        .iter()
        .filter(|(_, t)| t.state.holds_resources())
        .all(|(_, t)| t.state == TaskState::Running));
    check_accounted(&c, 20);
}

/// A supervisor the state does not run (here: started by hand beside the state's own
/// copy, as the ghost tasks of the issue were) is stopped by the next reap, with an event,
/// and the state's task is left alone.
#[test]
fn reap_stops_a_supervisor_the_state_does_not_know() {
    let c = Cluster::new(2);
    let web = r#"{"job":"www/prod/web","instances":1,"cmd":["sleep","600"],"resources":{"cpus":0.25,"ram_mb":64}}"#;
    std::fs::write(c.jobs().join("web.json"), web).unwrap();
    let out = common::wait_output(c.pipeline("binpack"), Duration::from_secs(60));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let (host, _, mine) = supervisors(&c.state()).pop().expect("one supervisor");
    let other = if host == "h1" { "h2" } else { "h1" };
    // The ghost: the same task, prepared as launch would, on the other host.
    let dir = taskdir::task_dir(&taskdir::host_root(&c.state(), other), "www/prod/web/0");
    taskdir::create(&dir).unwrap();
    let mut spec = common::spec("www/prod/web/0", &["sleep", "600"]);
    spec.incarnation = 1;
    std::fs::write(dir.join("spec.json"), spec.to_json().to_string()).unwrap();
    let mut cmd = Command::new(common::bin("formic-supervise"));
    cmd.arg(&dir).stdin(Stdio::null());
    let mut ghost = cmd.spawn().unwrap();
    let ghost_task = common::wait_until("the ghost runs", Duration::from_secs(10), || {
        taskdir::Status::read(&dir)
            .ok()
            .flatten()
            .filter(|s| s.state == "RUNNING")
    })
    .pid
    .unwrap();

    let out = c.reap(&[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let events: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["task"], "www/prod/web/0");
    assert_eq!(events[0]["host"], other);
    assert_eq!(events[0]["state"], "KILLING");
    assert_eq!(
        events[0]["reason"],
        format!("the state does not run incarnation 1 on {other}")
    );
    // The ghost stops (its supervisor reports KILLED and exits), the state's copy runs on.
    let status = common::wait_until(
        "the ghost's supervisor exits",
        Duration::from_secs(20),
        || ghost.try_wait().unwrap(),
    );
    assert!(status.success(), "{status:?}");
    assert_eq!(
        taskdir::Status::read(&dir).unwrap().unwrap().state,
        "KILLED"
    );
    assert!(!formic::process::same_process(ghost_task.0, ghost_task.1));
    let now = supervisors(&c.state());
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].2.supervisor, mine.supervisor);
    let live = live(&c.state());
    assert_eq!(live["www/prod/web/0"].0, host);
    // Nothing more to say on the next pass.
    let out = c.reap(&[]);
    assert_eq!(
        (code(&out), stdout(&out)),
        (0, String::new()),
        "{}",
        stderr(&out)
    );
}

/// Four launches of the same placements at once, and reaps racing them: every task ends
/// RUNNING in the state with the process its one supervisor reports. Before the fix, a
/// later launch recorded the intent again, reap then ignored the older RUNNING status, and
/// under load some tasks stayed ASSIGNED for good (never announced).
#[test]
fn launches_and_reaps_at_once_leave_every_task_running_in_the_state() {
    let c = Cluster::new(1);
    let job = r#"{"job":"www/prod/web","instances":60,"cmd":["sleep","600"],"resources":{"cpus":0.01,"ram_mb":8}}"#;
    std::fs::write(c.jobs().join("web.json"), job).unwrap();
    let offers = stdout(&run(&mut tool("offer", &c.state()), b""));
    let out = run(
        tool("pack", &c.state())
            .args(["--state"])
            .arg(c.state())
            .arg(c.jobs()),
        offers.as_bytes(),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let records = stdout(&out);
    let launches: Vec<_> = (0..4)
        .map(|_| {
            let mut cmd = tool("launch", &c.state());
            cmd.args(["--wait", "0.2"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = cmd.spawn().unwrap();
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(records.as_bytes()).unwrap();
            child
        })
        .collect();
    let reaps: Vec<_> = (0..2)
        .map(|_| {
            tool("reap", &c.state())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in launches.into_iter().chain(reaps) {
        let out = common::wait_output(child, Duration::from_secs(60));
        assert!([0, 1].contains(&code(&out)), "{}", stderr(&out));
    }
    // launch waited only 0.2 s: what it left STARTING, a reap pass takes to RUNNING once
    // its supervisor has said so (on a loaded machine, a moment later).
    let started = std::time::Instant::now();
    loop {
        let out = c.reap(&[]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let state = State::open(&c.state()).unwrap();
        let starting = state
            .view()
            .tasks
            .iter()
            .any(|(_, t)| t.state == TaskState::Starting);
        if !starting || started.elapsed() > Duration::from_secs(10) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let state = State::open(&c.state()).unwrap();
    let v = state.view();
    let tasks: Vec<_> = v.tasks.iter().map(|(_, t)| t.clone()).collect();
    assert_eq!(tasks.len(), 60);
    let supervisors = supervisors(&c.state());
    assert_eq!(supervisors.len(), 60);
    for t in &tasks {
        let id = format!("www/prod/web/{}", t.instance);
        let (_, _, s) = supervisors.iter().find(|s| s.2.task == id).unwrap();
        assert_eq!(t.state, TaskState::Running, "{id}");
        assert_eq!(t.incarnation, 1, "{id}");
        assert_eq!((t.pid, t.pid_start), s.pid.unwrap(), "{id}");
    }
}

/// A kill decided on an incarnation that has since been replaced is a no-op: it does not
/// stop the incarnation that replaced it.
#[test]
fn a_kill_of_an_incarnation_already_gone_stops_nothing() {
    let c = Cluster::new(1);
    let job = r#"{"job":"www/prod/web","instances":1,"cmd":["sleep","600"],"resources":{"cpus":0.25,"ram_mb":64}}"#;
    std::fs::write(c.jobs().join("web.json"), job).unwrap();
    let pass = || {
        let out = common::wait_output(c.pipeline("binpack"), Duration::from_secs(60));
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    };
    pass();
    // Incarnation 1 is killed and replaced by incarnation 2.
    let out = c.reap(&["kill", "www/prod/web/0"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    pass();
    assert_eq!(live(&c.state())["www/prod/web/0"].1, 2);
    // pack's kill of incarnation 1, decided before the replacement, arrives late.
    let late =
        r#"{"type":"kill","task":"www/prod/web/0","incarnation":1,"reason":"surplus instance"}"#;
    let out = run(&mut tool("reap", &c.state()), late.as_bytes());
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "", "nothing stopped");
    assert!(
        stderr(&out).contains("incarnation 1 of www/prod/web/0 is gone"),
        "{}",
        stderr(&out)
    );
    assert_eq!(live(&c.state())["www/prod/web/0"].1, 2);
    // The same kill for incarnation 2 stops it.
    let now = late.replace("\"incarnation\":1", "\"incarnation\":2");
    let out = run(&mut tool("reap", &c.state()), now.as_bytes());
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("\"KILLED\""), "{}", stdout(&out));
    assert!(live(&c.state()).is_empty());
}
