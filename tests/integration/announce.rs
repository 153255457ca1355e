//! announce end to end: real hosts on this machine (`offer add`), real instances
//! (`python3 -m http.server` behind an HTTP health check) started by `offer | pack |
//! launch`, health and stops by `reap`, and serversets in files or in a real ZooKeeper
//! server (see zk.rs) that ZooKeeper's own client reads back.
//!
//! Each test has its own state, its own ZooKeeper and its own port range for its hosts
//! (466xx), so the tests run in parallel. Deadlines are generous: they bound how long a
//! convergence may take, they do not measure it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use formic::taskdir;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::common::{self, code, run, stderr, stdout, tasks_under, tool};
use crate::zk::Zk;

pub(crate) const PATH: &str = "/formic/www/prod/hello";

/// Local hosts in a temporary directory, the tasks started on them and the followers
/// (`reap --follow`, `announce --follow`) a test runs; all stopped when dropped.
pub(crate) struct Cluster {
    dir: tempfile::TempDir,
    hosts: Vec<String>,
    daemons: Vec<Child>,
}

impl Cluster {
    /// Hosts named `names`, each with 20 ports from `first_port` on (the next host the
    /// next 20), reachable at `address` when given (else at this machine's name).
    pub(crate) fn new(names: &[&str], first_port: u16, address: Option<&str>) -> Cluster {
        let c = Cluster {
            dir: common::tempdir(),
            hosts: names.iter().map(|s| s.to_string()).collect(),
            daemons: Vec::new(),
        };
        let lines: String = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let lo = first_port + 20 * i as u16;
                let mut attrs = json!({"rack": "r1"});
                if let Some(a) = address {
                    attrs["address"] = json!(a);
                }
                json!({"type": "host", "name": name, "cpus": 4, "ram_mb": 4096,
                       "disk_mb": 1000, "ports": [[lo, lo + 19]], "attrs": attrs})
                .to_string()
                    + "\n"
            })
            .collect();
        let out = run(tool("offer", &c.state()).arg("add"), lines.as_bytes());
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        c
    }

    pub(crate) fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `offer | pack JOBS | launch`: starts the job's instances; returns launch's events.
    fn deploy(&self, jobs: &str) -> Vec<Value> {
        let file = self.path("jobs.jsonl");
        std::fs::write(&file, jobs).unwrap();
        let offers = stdout(&run(&mut tool("offer", &self.state()), b""));
        let out = run(tool("pack", &self.state()).arg(&file), offers.as_bytes());
        assert_eq!(code(&out), 0, "pack: {}", stderr(&out));
        let out = run(
            tool("launch", &self.state()).args(["--allow-root", "--wait", "10", "--grace", "3"]),
            &out.stdout,
        );
        assert_eq!(code(&out), 0, "launch: {}", stderr(&out));
        lines(&stdout(&out))
    }

    /// A reconciliation pass over the deployed jobs file: offer | pack --state | reap
    /// --asked-only | launch (what stops on draining hosts, and their replacements).
    fn pass(&self) {
        let file = self.path("jobs.jsonl");
        let offers = stdout(&run(&mut tool("offer", &self.state()), b""));
        let packed = run(tool("pack", &self.state()).arg(&file), offers.as_bytes());
        assert!(code(&packed) <= 1, "pack: {}", stderr(&packed));
        let reaped = run(
            tool("reap", &self.state()).arg("--asked-only"),
            &packed.stdout,
        );
        assert_eq!(code(&reaped), 0, "reap: {}", stderr(&reaped));
        let out = run(
            tool("launch", &self.state()).args(["--allow-root", "--wait", "10", "--grace", "3"]),
            &reaped.stdout,
        );
        assert_eq!(code(&out), 0, "launch: {}", stderr(&out));
    }

    /// `reap tasks`, by task id.
    pub(crate) fn tasks(&self) -> Vec<Value> {
        let out = run(tool("reap", &self.state()).arg("tasks"), b"");
        assert_eq!(code(&out), 0, "reap tasks: {}", stderr(&out));
        lines(&stdout(&out))
    }

    fn task(&self, id: &str) -> Value {
        self.tasks()
            .into_iter()
            .find(|t| t["task"] == id)
            .unwrap_or_else(|| panic!("no task {id}"))
    }

    /// Runs reap passes until every task of the state is RUNNING and healthy.
    fn reap_until_healthy(&self) -> Vec<Value> {
        until(
            "every task RUNNING and healthy",
            Duration::from_secs(30),
            || {
                let out = run(&mut tool("reap", &self.state()), b"");
                assert_eq!(code(&out), 0, "reap: {}", stderr(&out));
                let tasks = self.tasks();
                tasks
                    .iter()
                    .all(|t| t["state"] == "RUNNING" && t["healthy"] == true)
                    .then_some(tasks)
            },
        )
    }

    /// Waits until `reap --follow` has every task RUNNING and healthy in the state.
    fn healthy(&self) -> Vec<Value> {
        until(
            "every task RUNNING and healthy",
            Duration::from_secs(30),
            || {
                let tasks = self.tasks();
                tasks
                    .iter()
                    .all(|t| t["state"] == "RUNNING" && t["healthy"] == true)
                    .then_some(tasks)
            },
        )
    }

    /// The output of a one-shot `announce ARGS`.
    fn announce(&self, args: &[&str]) -> Output {
        run(tool("announce", &self.state()).args(args), b"")
    }

    /// Starts a long-running tool; its output goes to NAME.out and NAME.err in the test's
    /// directory. Returns its pid.
    pub(crate) fn daemon(&mut self, name: &str, tool_name: &str, args: &[&str]) -> u32 {
        let child = tool(tool_name, &self.state())
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(self.path(&format!("{name}.out"))).unwrap())
            .stderr(File::create(self.path(&format!("{name}.err"))).unwrap())
            .spawn()
            .unwrap();
        let pid = child.id();
        self.daemons.push(child);
        pid
    }

    /// What a daemon printed to stderr so far, for failure messages.
    fn said(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{name}.err"))).unwrap_or_default()
    }

    fn reap_follow(&mut self) -> u32 {
        self.daemon("reap", "reap", &["--follow"])
    }

    fn announcer(&mut self, zk: &Zk, extra: &[&str]) -> u32 {
        let mut args = vec!["--zk".to_string(), zk.connect(), "--follow".to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.daemon("announce", "announce", &args)
    }

    /// Waits until the members in ZooKeeper are as `want` says; fails after 30 s (session
    /// timeouts, backoff and a loaded machine) showing what announce and the state say.
    fn members_until(
        &self,
        zk: &Zk,
        what: &str,
        want: impl Fn(&[(String, Value)]) -> bool,
    ) -> Vec<(String, Value)> {
        until_or(
            what,
            Duration::from_secs(30),
            || {
                let m = zk_members(zk);
                want(&m).then_some(m)
            },
            || {
                format!(
                    "members: {:?}\ntasks: {:?}\nannounce said:\n{}",
                    zk_members(zk),
                    self.tasks(),
                    self.said("announce")
                )
            },
        )
    }

    /// Task directories (those holding spec.json) of every host.
    fn task_dirs(&self) -> Vec<PathBuf> {
        self.hosts
            .iter()
            .flat_map(|h| tasks_under(&taskdir::host_root(&self.state(), h)))
            .collect()
    }
}

impl Drop for Cluster {
    /// Nothing a test started outlives it: followers first (SIGTERM, so an announcer
    /// closes its session), then every supervisor and its task.
    fn drop(&mut self) {
        for d in &self.daemons {
            let _ = kill(Pid::from_raw(d.id() as i32), Signal::SIGCONT);
            let _ = kill(Pid::from_raw(d.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for d in &mut self.daemons {
            while Instant::now() < deadline && matches!(d.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = d.kill();
            let _ = d.wait();
        }
        for dir in self.task_dirs() {
            if let Ok(Some(s)) = taskdir::Status::read(&dir) {
                if formic::process::same_process(s.supervisor.0, s.supervisor.1) {
                    let _ = kill(Pid::from_raw(s.supervisor.0 as i32), Signal::SIGKILL);
                }
                if let Some((pid, start)) = s.pid {
                    if formic::process::same_process(pid, start) {
                        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    }
                }
            }
        }
    }
}

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

/// Polls `f` until it gives a value; fails naming `what` after `limit`.
fn until<T>(what: &str, limit: Duration, f: impl FnMut() -> Option<T>) -> T {
    until_or(what, limit, f, String::new)
}

/// [`until`], with `context()` in the failure message.
pub(crate) fn until_or<T>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "not within {limit:?}: {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Watches for the whole of `window`, looking every 20 ms, that `holds` stays true: a
/// state that must not show even briefly (a duplicate member, a member too early) is
/// caught when it comes and goes between two looks far apart. Fails with `what` and
/// what `context` says at that moment.
fn throughout(
    what: &str,
    window: Duration,
    mut holds: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let start = Instant::now();
    while start.elapsed() < window {
        assert!(
            holds(),
            "after {:?} of {window:?}: {what}\n{}",
            start.elapsed(),
            context()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A web job: `instances` of python's http.server on port `http`, healthy when it answers
/// on `/`, with a second port `admin` that is only announced.
fn web(instances: u32) -> String {
    web_job(
        instances,
        json!([
            "python3",
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "{{port.http}}"
        ]),
        json!({"http": "/", "port": "http", "interval_s": 0.5, "timeout_s": 0.45, "failures": 3}),
    )
}

/// The web jobs of these tests: `cmd` serving on port `http` with the health check
/// `health`, a second port `admin`, one instance per host, announced under PATH. Half a
/// core: python's start under a tenth of one (0.5-0.65 s measured) raced the 0.6 s that
/// three failed checks take, and lost now and then.
fn web_job(instances: u32, cmd: Value, health: Value) -> String {
    json!({
        "job": "www/prod/hello", "instances": instances, "cmd": cmd,
        "resources": {"cpus": 0.5, "ram_mb": 64, "ports": ["http", "admin"]},
        "constraints": [{"attr": "host", "limit": 1}],
        "health": health,
        "announce": {"primary": "http", "path": PATH},
    })
    .to_string()
        + "\n"
}

/// The member a task must have, as Finagle/Aurora define it.
fn finagle(host: &str, task: &Value) -> Value {
    let http = &task["ports"]["http"];
    let admin = &task["ports"]["admin"];
    json!({
        "serviceEndpoint": {"host": host, "port": http},
        "additionalEndpoints": {
            "http": {"host": host, "port": http},
            "admin": {"host": host, "port": admin},
        },
        "shard": task["instance"],
        "status": "ALIVE",
    })
}

/// The members in ZooKeeper at PATH, parsed, sorted by shard (a duplicate shows twice).
fn zk_members(zk: &Zk) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = zk
        .members(PATH)
        .into_iter()
        .map(|(name, data)| (name, serde_json::from_slice(&data).unwrap()))
        .collect();
    out.sort_by_key(|(_, v)| v["shard"].as_u64());
    out
}

fn shards(members: &[(String, Value)]) -> Vec<u64> {
    members
        .iter()
        .map(|(_, v)| v["shard"].as_u64().unwrap())
        .collect()
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s[s.rfind(')').unwrap() + 2..].starts_with('Z'))
        .unwrap_or(false)
}

// --- the file backend ---

#[test]
fn files_hold_one_member_per_healthy_instance_and_lose_stale_ones() {
    let c = Cluster::new(&["f1", "f2"], 46000, None);
    // f2 has an address; f1 is announced under this machine's name.
    let out = run(
        tool("offer", &c.state()).arg("add"),
        json!({"type": "host", "name": "f2", "cpus": 4, "ram_mb": 4096, "disk_mb": 1000,
               "ports": [[46020, 46039]], "attrs": {"rack": "r1", "address": "127.0.0.1"}})
        .to_string()
        .as_bytes(),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    c.deploy(&web(2));
    let tasks = c.reap_until_healthy();
    assert_eq!(tasks.len(), 2);
    let hostname = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let address = |t: &Value| match t["host"].as_str().unwrap() {
        "f1" => hostname.clone(),
        "f2" => "127.0.0.1".to_string(),
        h => panic!("host {h}"),
    };
    let root = c.dir.path().join("serversets");
    let dir = root.join(PATH.trim_start_matches('/'));

    let out = c.announce(&[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let mut printed = lines(&stdout(&out));
    printed.sort_by(|a, b| a["task"].as_str().cmp(&b["task"].as_str()));
    let mut expected = Vec::new();
    for t in &tasks {
        let i = t["instance"].as_u64().unwrap();
        let member = format!("member_{i:010}");
        let data: Value =
            serde_json::from_slice(&std::fs::read(dir.join(&member)).unwrap()).unwrap();
        assert_eq!(data, finagle(&address(t), t), "{member}");
        // Exactly these fields, nothing more, in the order Finagle writes them.
        let keys: Vec<&String> = data.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["serviceEndpoint", "additionalEndpoints", "shard", "status"]
        );
        expected.push(json!({
            "type": "member", "op": "join", "task": t["task"], "path": PATH,
            "member": member, "endpoint": format!("{}:{}", address(t), t["ports"]["http"]),
        }));
    }
    expected.sort_by(|a, b| a["task"].as_str().cmp(&b["task"].as_str()));
    assert_eq!(printed, expected);
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, ["member_0000000000", "member_0000000001"]);

    // Idempotent: a second run changes and prints nothing.
    let before: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(dir.join(f)).unwrap())
        .collect();
    let out = c.announce(&[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    let after: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(dir.join(f)).unwrap())
        .collect();
    assert_eq!(before, after);

    // resolve agrees with the files, as JSON and as host:port.
    let out = c.announce(&["resolve", PATH]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let endpoints = lines(&stdout(&out));
    assert_eq!(endpoints.len(), 2, "{endpoints:?}");
    let mut plain_expected = Vec::new();
    for (e, f) in endpoints.iter().zip(&files) {
        let data: Value = serde_json::from_slice(&std::fs::read(dir.join(f)).unwrap()).unwrap();
        assert_eq!(
            *e,
            json!({"type": "endpoint", "member": f, "shard": data["shard"],
                   "host": data["serviceEndpoint"]["host"],
                   "port": data["serviceEndpoint"]["port"],
                   "additionalEndpoints": data["additionalEndpoints"]})
        );
        plain_expected.push(format!(
            "{}:{}",
            data["serviceEndpoint"]["host"].as_str().unwrap(),
            data["serviceEndpoint"]["port"]
        ));
    }
    let out = c.announce(&["resolve", PATH, "--plain"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        plain_expected
            .iter()
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    );

    // Instance 1 stopped (no announcer runs, so reap stops it at once) and a stray member
    // file: the next run removes both and says so; instance 0 stays as it was.
    let out = run(
        tool("reap", &c.state()).args(["kill", "www/prod/hello/1"]),
        b"",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(c.task("www/prod/hello/1")["state"], "KILLED");
    let stray = finagle(
        "10.9.9.9",
        &json!({"ports": {"http": 1, "admin": 2}, "instance": 7}),
    );
    std::fs::write(dir.join("member_0000000007"), stray.to_string()).unwrap();
    let out = c.announce(&[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let mut printed = lines(&stdout(&out));
    printed.sort_by(|a, b| a["member"].as_str().cmp(&b["member"].as_str()));
    assert_eq!(printed.len(), 2, "{printed:?}");
    assert!(
        printed
            .iter()
            .all(|p| p["type"] == "member" && p["op"] == "leave" && p["path"] == PATH),
        "{printed:?}"
    );
    assert_eq!(printed[0]["member"], "member_0000000001");
    assert_eq!(printed[1]["member"], "member_0000000007");
    assert_eq!(printed[1]["endpoint"], "10.9.9.9:1");
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files, ["member_0000000000"]);
    assert_eq!(std::fs::read(dir.join(&files[0])).unwrap(), before[0]);
    let out = c.announce(&["resolve", PATH, "--plain"]);
    assert_eq!(stdout(&out), format!("{}\n", plain_expected[0]));

    // A serverset nobody announces: nothing, exit 1.
    let out = c.announce(&["resolve", "/formic/www/prod/nobody"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
}

/// The member files under a serverset directory.
pub(crate) fn member_files(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .filter(|n| n.starts_with("member_") && !n.contains('.'))
        .collect();
    files.sort();
    files
}

#[test]
fn a_files_follower_keeps_members_in_step_and_leaves_before_a_graceful_stop() {
    let mut c = Cluster::new(&["h1", "h2"], 46900, Some("127.0.0.1"));
    let terms = c.path("terms");
    std::fs::create_dir(&terms).unwrap();
    c.deploy(&web_logging_sigterm(&terms, 2));
    c.reap_follow();
    let follower = c.daemon("announce", "announce", &["--follow"]);
    let dir = c.path("serversets").join(PATH.trim_start_matches('/'));
    until_or(
        "a member file for each healthy instance, both marked announced",
        Duration::from_secs(30),
        || {
            let tasks = c.tasks();
            (member_files(&dir) == ["member_0000000000", "member_0000000001"]
                && tasks.iter().all(|t| t["announced"] == true))
            .then_some(())
        },
        || format!("{:?}; announce said: {}", c.tasks(), c.said("announce")),
    );
    for t in c.tasks() {
        let file = dir.join(format!("member_{:010}", t["instance"].as_u64().unwrap()));
        let data: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        assert_eq!(data, finagle("127.0.0.1", &t));
    }

    // One follower per state file.
    let out = c.announce(&["--follow"]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("pid {follower}")),
        "{}",
        stderr(&out)
    );

    // A graceful stop: the member file goes while the process still runs, then SIGTERM.
    let pid = c.task("www/prod/hello/1")["pid"].as_u64().unwrap();
    let file = dir.join("member_0000000001");
    let watched = file.clone();
    let watcher = std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if !watched.exists() {
                return Some((now(), alive(pid)));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    });
    let out = run(
        tool("reap", &c.state()).args(["kill", "www/prod/hello/1"]),
        b"",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let (gone_at, alive_then) = watcher.join().unwrap().expect("the member file removed");
    let term_at: f64 = until("instance 1 got SIGTERM", Duration::from_secs(10), || {
        std::fs::read_to_string(terms.join("term-1"))
            .ok()?
            .parse()
            .ok()
    });
    assert!(
        alive_then && gone_at < term_at,
        "member gone at {gone_at}, SIGTERM at {term_at}"
    );
    assert_eq!(member_files(&dir), ["member_0000000000"]);

    // Stopped, the follower leaves its files (as a one-shot run does) and its marks.
    kill(Pid::from_raw(follower as i32), Signal::SIGTERM).unwrap();
    until(
        "the follower's marks cleared",
        Duration::from_secs(10),
        || {
            c.tasks()
                .iter()
                .all(|t| t["announced"] == false)
                .then_some(())
        },
    );
    assert_eq!(member_files(&dir), ["member_0000000000"]);
}

#[test]
fn files_go_where_dir_or_formic_serversets_says() {
    use std::os::unix::fs::PermissionsExt;
    let c = Cluster::new(&["v1"], 47000, Some("127.0.0.1"));
    c.deploy(&web(1));
    let task = c.reap_until_healthy().pop().unwrap();
    let member = |root: &Path| {
        root.join(PATH.trim_start_matches('/'))
            .join("member_0000000000")
    };
    let beside = c.path("serversets");
    let plain = format!("127.0.0.1:{}\n", task["ports"]["http"]);
    for (how, root) in [
        ("--dir", c.path("by-flag")),
        ("FORMIC_SERVERSETS", c.path("by-env")),
    ] {
        let with = |args: &[&str]| {
            let mut cmd = tool("announce", &c.state());
            cmd.args(args);
            if how == "--dir" {
                cmd.arg("--dir").arg(&root);
            } else {
                cmd.env("FORMIC_SERVERSETS", &root);
            }
            run(&mut cmd, b"")
        };
        let out = with(&[]);
        assert_eq!(code(&out), 0, "{how}: {}", stderr(&out));
        let file = member(&root);
        let data: Value = serde_json::from_slice(
            &std::fs::read(&file)
                .unwrap_or_else(|e| panic!("{how}: no member at {}: {e}", file.display())),
        )
        .unwrap();
        assert_eq!(data, finagle("127.0.0.1", &task), "{how}");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o444, 0o444, "{how}: readable by all: {mode:o}");
        assert!(
            !beside.exists(),
            "{how}: something was written beside the state"
        );
        // resolve reads the same place.
        let out = with(&["resolve", PATH, "--plain"]);
        assert_eq!(code(&out), 0, "{how}: {}", stderr(&out));
        assert_eq!(stdout(&out), plain, "{how}");
    }
    // Neither: serversets/ beside the state, which resolve then reads too.
    let out = c.announce(&[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(member(&beside).exists(), "the default is beside the state");
    assert_eq!(stdout(&c.announce(&["resolve", PATH, "--plain"])), plain);
}

// --- ZooKeeper ---

/// A web job whose health check passes only once the file `ready` exists in `www` (served
/// by the instances), and fails until then without getting the task killed.
fn web_ready_when(www: &Path, instances: u32) -> String {
    web_job(
        instances,
        json!([
            "python3",
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
            www,
            "{{port.http}}"
        ]),
        json!({"http": "/ready", "port": "http", "interval_s": 0.5, "timeout_s": 0.45,
               "failures": 1000}),
    )
}

// A task whose health check has never passed is not healthy, so not announced: it was once
// recorded healthy after its first failed check (failures below the threshold).
#[test]
fn zk_no_member_before_the_health_check_first_passes() {
    let zk = Zk::start();
    let mut c = Cluster::new(&["z1"], 46100, Some("127.0.0.1"));
    let www = c.path("www");
    std::fs::create_dir(&www).unwrap();
    c.deploy(&web_ready_when(&www, 1));
    c.reap_follow();
    c.announcer(&zk, &["--session-timeout", "2"]);
    let task = "www/prod/hello/0";
    // RUNNING, and the health check has run and failed several times.
    let dir = c.task_dirs().pop().unwrap();
    until(
        "three failed health checks",
        Duration::from_secs(20),
        || {
            let s = taskdir::Status::read(&dir).ok()??;
            (s.state == "RUNNING" && s.health_failures >= 3).then_some(())
        },
    );
    until("the announcer connected", Duration::from_secs(20), || {
        c.said("announce").contains("connected").then_some(())
    });
    // For many rounds of the announcer (every 50 ms) and of reap, never a member, not
    // even for a moment, and the task is not healthy.
    throughout(
        "no member for an instance whose health check never passed",
        Duration::from_millis(1500),
        || zk_members(&zk).is_empty() && c.task(task)["healthy"] == false,
        || format!("members: {:?}; task: {}", zk_members(&zk), c.task(task)),
    );
    assert_eq!(c.task(task)["state"], "RUNNING");
    // The check passes: the member appears.
    std::fs::write(www.join("ready"), "ok").unwrap();
    let members = c.members_until(&zk, "a member once healthy", |m| !m.is_empty());
    assert_eq!(shards(&members), [0]);
    assert_eq!(members[0].1, finagle("127.0.0.1", &c.task(task)));
}

/// A web job whose instances write the time they got SIGTERM to `term_dir/term-N`.
fn web_logging_sigterm(term_dir: &Path, instances: u32) -> String {
    let script = "import http.server, signal, sys, time\n\
                  def term(*_):\n    \
                      open(sys.argv[2], 'w').write(repr(time.time()))\n    \
                      sys.exit(0)\n\
                  signal.signal(signal.SIGTERM, term)\n\
                  http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])),\n    \
                      http.server.SimpleHTTPRequestHandler).serve_forever()\n";
    web_job(
        instances,
        json!([
            "python3",
            "-c",
            script,
            "{{port.http}}",
            format!("{}/term-{{{{instance}}}}", term_dir.display())
        ]),
        json!({"http": "/", "port": "http", "interval_s": 0.5, "timeout_s": 0.45, "failures": 3}),
    )
}

#[test]
fn zk_members_follow_health_failure_and_leave_before_a_graceful_stop() {
    let zk = Zk::start();
    let mut c = Cluster::new(&["z1", "z2"], 46200, Some("127.0.0.1"));
    let terms = c.path("terms");
    std::fs::create_dir(&terms).unwrap();
    c.deploy(&web_logging_sigterm(&terms, 2));
    c.reap_follow();
    c.announcer(&zk, &["--session-timeout", "2"]);
    let tasks = c.healthy();

    // Healthy and running: one member each, marked announced in the state.
    let members = c.members_until(&zk, "two members", |m| m.len() == 2);
    assert_eq!(shards(&members), [0, 1], "{}", c.said("announce"));
    for ((_, data), t) in members.iter().zip(&tasks) {
        assert_eq!(*data, finagle("127.0.0.1", t));
    }
    until(
        "both tasks marked announced",
        Duration::from_secs(10),
        || {
            c.tasks()
                .iter()
                .all(|t| t["announced"] == true)
                .then_some(())
        },
    );

    // Failure: instance 0's process is killed; its member goes, instance 1's stays.
    let pid = c.task("www/prod/hello/0")["pid"].as_u64().unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    c.members_until(&zk, "instance 0's member gone", |m| shards(m) == [1]);
    assert_ne!(c.task("www/prod/hello/0")["state"], "RUNNING");
    assert_eq!(
        zk_members(&zk)[0],
        members[1],
        "instance 1's node untouched"
    );

    // Graceful stop of instance 1: its member is gone before the process gets SIGTERM.
    let pid = c.task("www/prod/hello/1")["pid"].as_u64().unwrap();
    let watcher_zk = zk.client();
    let node = format!("{PATH}/{}", members[1].0);
    let (looking, watching) = std::sync::mpsc::channel();
    let watcher = std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            match futures::executor::block_on(watcher_zk.check_stat(&node)) {
                Ok(None) => return Some((now(), alive(pid))),
                Ok(Some(_)) => {
                    let _ = looking.send(());
                }
                Err(e) => panic!("checking {node}: {e}"),
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    });
    watching
        .recv_timeout(Duration::from_secs(10))
        .expect("the watcher saw instance 1's member");
    let asked = now();
    let out = run(
        tool("reap", &c.state()).args(["kill", "www/prod/hello/1"]),
        b"",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let (gone_at, alive_then) = watcher
        .join()
        .unwrap()
        .expect("instance 1's member removed");
    let term_file = terms.join("term-1");
    let term_at: f64 = until("instance 1 got SIGTERM", Duration::from_secs(10), || {
        std::fs::read_to_string(&term_file).ok()?.parse().ok()
    });
    assert!(alive_then, "the process had ended when its member went");
    assert!(
        asked < gone_at && gone_at < term_at,
        "reap kill at {asked}, member gone at {gone_at}, SIGTERM at {term_at}: \
         the member must leave before the stop"
    );
    assert_eq!(c.task("www/prod/hello/1")["state"], "KILLED");
    assert_eq!(zk_members(&zk), []);
    assert!(
        !terms.join("term-0").exists(),
        "instance 0 was killed, not stopped"
    );
}

#[test]
fn zk_a_drained_hosts_member_leaves_before_its_instance_is_stopped() {
    let zk = Zk::start();
    // A third host for the drained instance's replacement (one instance per host).
    let mut c = Cluster::new(&["n1", "n2", "n3"], 47100, Some("127.0.0.1"));
    let terms = c.path("terms");
    std::fs::create_dir(&terms).unwrap();
    // Available as soon as healthy: the budget (one down) lets the drain stop one.
    let mut job: Value = serde_json::from_str(&web_logging_sigterm(&terms, 2)).unwrap();
    job["sla"] = json!({"max_unavailable": 1, "healthy_for_s": 0});
    c.deploy(&format!("{job}\n"));
    c.reap_follow();
    c.announcer(&zk, &["--session-timeout", "2"]);
    c.healthy();
    let members = c.members_until(&zk, "two members", |m| m.len() == 2);
    until(
        "both tasks marked announced",
        Duration::from_secs(10),
        || {
            c.tasks()
                .iter()
                .all(|t| t["announced"] == true)
                .then_some(())
        },
    );
    let drained = c
        .tasks()
        .into_iter()
        .find(|t| t["instance"] == 0)
        .expect("instance 0");
    let drained_host = drained["host"].as_str().unwrap().to_string();
    let (instance, pid) = (
        drained["instance"].as_u64().unwrap(),
        drained["pid"].as_u64().unwrap(),
    );
    let (kept_node, kept) = members[1 - instance as usize].clone();

    // The watcher sees the member go, and whether the process still ran then.
    let watcher_zk = zk.client();
    let node = format!("{PATH}/{}", members[instance as usize].0);
    let (looking, watching) = std::sync::mpsc::channel();
    let watcher = std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            match futures::executor::block_on(watcher_zk.check_stat(&node)) {
                Ok(None) => return Some((now(), alive(pid))),
                Ok(Some(_)) => {
                    let _ = looking.send(());
                }
                Err(e) => panic!("checking {node}: {e}"),
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    });
    watching
        .recv_timeout(Duration::from_secs(10))
        .expect("the watcher saw the drained host's member");
    let out = run(
        tool("offer", &c.state()).args(["drain", &drained_host, "--reason", "test"]),
        b"",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // The pass stops the instance on the draining host, the member going first, and
    // starts its replacement on the free host.
    c.pass();
    let (gone_at, alive_then) = watcher
        .join()
        .unwrap()
        .expect("the drained instance's member removed");
    let term_file = terms.join(format!("term-{instance}"));
    let term_at: f64 = until(
        "the drained instance got SIGTERM",
        Duration::from_secs(10),
        || std::fs::read_to_string(&term_file).ok()?.parse().ok(),
    );
    assert!(
        alive_then && gone_at < term_at,
        "member gone at {gone_at}, SIGTERM at {term_at}: the member must leave first"
    );
    let old_node = &members[instance as usize].0;
    c.members_until(&zk, "the kept member and the replacement's", |m| {
        m.len() == 2
            && m.iter().any(|(n, data)| *n == kept_node && *data == kept)
            && !m.iter().any(|(n, _)| n == old_node)
    });
    let task = format!("www/prod/hello/{instance}");
    let now_on = c.task(&task)["host"].clone();
    assert!(now_on != drained_host.as_str(), "replaced on {now_on}");
}

#[test]
fn zk_members_come_back_once_after_a_forced_session_expiry() {
    let zk = Zk::start();
    let mut c = Cluster::new(&["s1", "s2", "s3"], 46300, Some("127.0.0.1"));
    c.deploy(&web(3));
    c.reap_follow();
    let announcer = c.announcer(&zk, &["--session-timeout", "1"]);
    c.healthy();
    let before = c.members_until(&zk, "three members", |m| m.len() == 3);
    assert_eq!(shards(&before), [0, 1, 2]);

    // The announcer freezes past its session timeout: the server expires the session and
    // its ephemeral members with it.
    kill(Pid::from_raw(announcer as i32), Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    c.members_until(&zk, "members gone with the expired session", |m| {
        m.is_empty()
    });
    // Expiry counts from the session's last ping, up to a third of the timeout before the
    // stop; gone much sooner would mean something else removed them.
    assert!(
        stopped.elapsed() >= Duration::from_millis(500),
        "members went {:?} after the stop, before the session could expire",
        stopped.elapsed()
    );
    std::thread::sleep(Duration::from_millis(500));
    kill(Pid::from_raw(announcer as i32), Signal::SIGCONT).unwrap();

    // It notices, opens a new session and announces every instance again: exactly once.
    // Session timeout + backoff, with room for a loaded machine.
    let after = c.members_until(&zk, "three members again", |m| m.len() >= 3);
    assert_eq!(shards(&after), [0, 1, 2], "{}", c.said("announce"));
    // Watched for longer than the announcer's rounds and retries take: a duplicate that
    // comes late, even one deleted again soon after, is seen.
    throughout(
        "the same three members, no duplicate",
        Duration::from_secs(2),
        || zk_members(&zk) == after,
        || {
            format!(
                "{:?}\nannounce said:\n{}",
                zk_members(&zk),
                c.said("announce")
            )
        },
    );
    let settled = zk_members(&zk);
    for ((old_name, old), (new_name, new)) in before.iter().zip(&settled) {
        assert_eq!(old, new, "the same member data");
        assert_ne!(old_name, new_name, "new nodes of a new session");
    }
    assert!(
        c.tasks().iter().all(|t| t["announced"] == true),
        "{:?}",
        c.tasks()
    );
}

#[test]
fn zk_down_exits_69_and_the_follower_converges_after_an_outage() {
    let mut zk = Zk::start();
    let mut c = Cluster::new(&["d1", "d2"], 46400, Some("127.0.0.1"));
    c.deploy(&web(2));
    c.reap_follow();
    c.announcer(&zk, &["--session-timeout", "2"]);
    c.healthy();
    let before = c.members_until(&zk, "two members", |m| m.len() == 2);

    zk.stop();
    let connect = zk.connect();
    for args in [
        vec!["--zk", &connect],
        vec!["resolve", PATH, "--zk", &connect],
        vec!["resolve", PATH, "--plain", "--zk", &connect],
    ] {
        let started = Instant::now();
        let out = c.announce(&args);
        assert_eq!(code(&out), 69, "announce {args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "one line: {err:?}");
        assert!(
            err.contains("unavailable") && err.contains(&connect),
            "a clear message: {err:?}"
        );
        assert_eq!(stdout(&out), "");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "gave up in {:?}",
            started.elapsed()
        );
    }

    // While ZooKeeper is down, instance 0 fails.
    let pid = c.task("www/prod/hello/0")["pid"].as_u64().unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    until(
        "instance 0 no longer running",
        Duration::from_secs(20),
        || (c.task("www/prod/hello/0")["state"] != "RUNNING").then_some(()),
    );
    std::thread::sleep(Duration::from_secs(3)); // longer than the session timeout
    zk.restart();

    // The session expired in the outage, so the member comes back under a new name: the
    // old session's node can still show for a moment after the restart, until ZooKeeper
    // expires it, and is not the member to watch.
    let after = c.members_until(&zk, "only instance 1's member after the outage", |m| {
        shards(m) == [1] && m[0].0 != before[1].0
    });
    throughout(
        "only instance 1's member: no duplicate, no late removal",
        Duration::from_secs(3),
        || zk_members(&zk) == after,
        || {
            format!(
                "{:?}\nannounce said:\n{}",
                zk_members(&zk),
                c.said("announce")
            )
        },
    );
    assert_eq!(after[0].1, before[1].1);
    assert_eq!(c.task("www/prod/hello/1")["announced"], true);
    assert_eq!(c.task("www/prod/hello/0")["announced"], false);
    // And the one-shot agrees that nothing is missing or stale.
    let out = c.announce(&["--zk", &connect]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
}

/// The data line zkCli prints for `get NODE`, among its own output.
fn cli_get(zk: &Zk, node: &str) -> String {
    let out = zk.cli(&["get", node]);
    assert_eq!(code(&out), 0, "zkCli get {node}: {}", stderr(&out));
    let text = stdout(&out);
    text.lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no data line from zkCli get {node}: {text}"))
        .to_string()
}

/// A Finagle client's reading of a member, in Python: prints host:port or fails.
const FINAGLE_CHECK: &str = r#"
import json, sys
m = json.loads(sys.stdin.read())
assert set(m) == {"serviceEndpoint", "additionalEndpoints", "shard", "status"}, m
def endpoint(e):
    assert set(e) == {"host", "port"}, e
    assert isinstance(e["host"], str) and e["host"], e
    assert isinstance(e["port"], int) and not isinstance(e["port"], bool), e
    assert 0 < e["port"] < 65536, e
    return "%s:%d" % (e["host"], e["port"])
primary = endpoint(m["serviceEndpoint"])
assert isinstance(m["additionalEndpoints"], dict), m
extra = sorted("%s=%s" % (k, endpoint(v)) for k, v in m["additionalEndpoints"].items())
assert isinstance(m["shard"], int) and m["shard"] >= 0, m
assert m["status"] == "ALIVE", m
print(primary, m["shard"], " ".join(extra))
"#;

#[test]
fn zk_members_read_by_zookeepers_own_client_are_finagle_members() {
    let zk = Zk::start();
    let mut c = Cluster::new(&["r1"], 46500, Some("127.0.0.1"));
    c.deploy(&web(1));
    c.reap_follow();
    let t = c.healthy().remove(0);
    let connect = zk.connect();

    // Without a follower, a one-shot run removes a stale member (here one that zkCli
    // wrote) and says the healthy instance is missing: only a session can hold it.
    let stale = finagle(
        "10.9.9.9",
        &json!({"ports": {"http": 1, "admin": 2}, "instance": 5}),
    );
    let out = zk.cli(&["create", "/formic"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    for p in ["/formic/www", "/formic/www/prod", PATH] {
        zk.cli(&["create", p]);
    }
    let out = zk.cli(&[
        "create",
        &format!("{PATH}/member_0000000099"),
        &stale.to_string(),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(zk.members(PATH).len(), 1);
    let out = c.announce(&["--zk", &connect]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert_eq!(
        lines(&stdout(&out)),
        [
            json!({"type": "member", "op": "leave", "task": "", "path": PATH,
                "member": "member_0000000099", "endpoint": "10.9.9.9:1"})
        ]
    );
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("missing"), "{err}");
    assert_eq!(zk.members(PATH), []);

    c.announcer(&zk, &[]);
    let members = c.members_until(&zk, "a member", |m| m.len() == 1);
    let node = format!("{PATH}/{}", members[0].0);
    let line = cli_get(&zk, &node);
    let check = run(
        Command::new("python3").args(["-c", FINAGLE_CHECK]),
        line.as_bytes(),
    );
    assert_eq!(code(&check), 0, "{line}: {}", stderr(&check));
    let (http, admin) = (&t["ports"]["http"], &t["ports"]["admin"]);
    assert_eq!(
        stdout(&check),
        format!("127.0.0.1:{http} 0 admin=127.0.0.1:{admin} http=127.0.0.1:{http}\n")
    );
    // The node is ephemeral and sequential, as Finagle's ServerSet makes them.
    let out = zk.cli(&["stat", &node]);
    let stat = stdout(&out);
    assert!(
        stat.lines()
            .any(|l| l.starts_with("ephemeralOwner = 0x") && !l.ends_with("= 0x0")),
        "{stat}"
    );
    assert!(
        members[0].0.len() == "member_".len() + 10,
        "{}",
        members[0].0
    );

    // announce resolve reads the same.
    let out = c.announce(&["resolve", PATH, "--zk", &connect]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let data: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        lines(&stdout(&out)),
        [
            json!({"type": "endpoint", "member": members[0].0, "shard": 0,
                "host": "127.0.0.1", "port": http,
                "additionalEndpoints": data["additionalEndpoints"]})
        ]
    );
    let out = c.announce(&["resolve", PATH, "--plain", "--zk", &connect]);
    assert_eq!(stdout(&out), format!("127.0.0.1:{http}\n"));
}

#[test]
fn zk_one_follower_usage_permissions_and_digest_acls() {
    let zk = Zk::start();
    let mut c = Cluster::new(&["a1"], 46600, Some("127.0.0.1"));
    let connect = zk.connect();

    // A bad --zk value is a usage error.
    for bad in ["", "/chroot-only", "127.0.0.1:notaport"] {
        let out = c.announce(&["--zk", bad]);
        assert_eq!(code(&out), 2, "--zk {bad:?}: {}", stderr(&out));
    }

    // A digest file others may read is refused, before anything else.
    let secret = c.path("zk-digest");
    std::fs::write(&secret, "formic:s3cret\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let secret_arg = secret.to_str().unwrap();
    for args in [
        vec!["--zk", &connect, "--zk-digest-file", secret_arg],
        vec!["--zk", &connect, "--zk-digest-file", secret_arg, "--follow"],
    ] {
        let out = c.announce(&args);
        assert_eq!(code(&out), 77, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
    }
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();

    c.deploy(&web(1));
    c.reap_follow();
    c.announcer(&zk, &["--zk-digest-file", secret_arg]);
    c.healthy();
    let members = c.members_until(&zk, "a member", |m| m.len() == 1);

    // A second follower on the same state: 75, and the first one's member stays.
    let out = c.announce(&["--zk", &connect, "--follow"]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("another announce --follow"),
        "{}",
        stderr(&out)
    );
    assert_eq!(zk_members(&zk), members);

    // The member's ACL: the digest user may do everything, the world may only read.
    let node = format!("{PATH}/{}", members[0].0);
    let out = zk.cli(&["getAcl", &node]);
    let acl = stdout(&out);
    let acl_lines: Vec<&str> = acl.lines().skip_while(|l| !l.starts_with('\'')).collect();
    assert_eq!(acl_lines.len(), 4, "{acl}");
    assert!(acl_lines[0].starts_with("'digest,'formic:"), "{acl}");
    assert_eq!(acl_lines[1], ": cdrwa", "{acl}");
    assert_eq!(acl_lines[2], "'world,'anyone", "{acl}");
    assert_eq!(acl_lines[3], ": r", "{acl}");
    // ... and the serverset's own node alike: nobody else adds members.
    let out = zk.cli(&["getAcl", PATH]);
    assert!(
        stdout(&out).contains("'world,'anyone\n: r\n"),
        "{}",
        stdout(&out)
    );

    // Anyone may read it; an unauthenticated client cannot delete it.
    assert!(cli_get(&zk, &node).contains("\"ALIVE\""));
    let out = zk.cli(&["delete", &node]);
    let said = stdout(&out) + &stderr(&out);
    assert!(
        said.contains("Insufficient permission") || said.contains("NoAuth"),
        "{said}"
    );
    assert_eq!(zk_members(&zk), members, "the member is still there");
}

/// Runs `cmd` for at most `limit`: its output, or None (and it killed) if it kept going.
fn within(cmd: &mut Command, limit: Duration) -> Option<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            return Some(child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

// A --zk value the ZooKeeper client cannot use is a usage error for the follower as for
// the one-shot run, not an outage to retry for ever (as it was before ab4d017).
#[test]
fn zk_bad_connect_strings_are_usage_errors_for_the_follower_too() {
    let c = Cluster::new(&["b1"], 46700, Some("127.0.0.1"));
    for bad in [
        "",
        "/chroot-only",
        "127.0.0.1:notaport",
        "127.0.0.1:2181/bad//chroot",
    ] {
        let out = c.announce(&["--zk", bad]);
        assert_eq!(code(&out), 2, "--zk {bad:?}: {}", stderr(&out));
        let out = within(
            tool("announce", &c.state()).args(["--zk", bad, "--follow"]),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| panic!("announce --zk {bad:?} --follow kept running"));
        assert_eq!(code(&out), 2, "--zk {bad:?} --follow: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("{bad:?}")),
            "names the value: {}",
            stderr(&out)
        );
    }
}

#[test]
fn zk_a_frozen_announcer_holds_a_graceful_stop_back_at_most_five_seconds() {
    let zk = Zk::start();
    let mut c = Cluster::new(&["g1"], 46800, Some("127.0.0.1"));
    let terms = c.path("terms");
    std::fs::create_dir(&terms).unwrap();
    c.deploy(&web_logging_sigterm(&terms, 1));
    c.reap_follow();
    let announcer = c.announcer(&zk, &[]);
    c.healthy();
    c.members_until(&zk, "a member", |m| m.len() == 1);
    until("the task marked announced", Duration::from_secs(10), || {
        (c.task("www/prod/hello/0")["announced"] == true).then_some(())
    });
    // The announcer cannot take the instance out of discovery; the stop still happens,
    // once reap has waited its 5 s for the leave.
    kill(Pid::from_raw(announcer as i32), Signal::SIGSTOP).unwrap();
    let asked = now();
    let out = run(
        tool("reap", &c.state()).args(["kill", "www/prod/hello/0"]),
        b"",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let term_at: f64 = until("the task got SIGTERM", Duration::from_secs(30), || {
        std::fs::read_to_string(terms.join("term-0"))
            .ok()?
            .parse()
            .ok()
    });
    let waited = term_at - asked;
    assert!(
        (4.5..15.0).contains(&waited),
        "SIGTERM {waited:.2} s after reap kill; expected the 5 s leave wait, then the stop"
    );
    kill(Pid::from_raw(announcer as i32), Signal::SIGCONT).unwrap();
    c.members_until(&zk, "the member gone once the announcer runs again", |m| {
        m.is_empty()
    });
}
