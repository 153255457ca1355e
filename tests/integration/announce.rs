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

use formic::rundir;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::common::{self, code, run, stderr, stdout, tool};
use crate::zk::Zk;

const PATH: &str = "/formic/www/prod/hello";

/// Local hosts in a temporary directory, the tasks started on them and the followers
/// (`reap --follow`, `announce --follow`) a test runs; all stopped when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    hosts: Vec<String>,
    daemons: Vec<Child>,
}

impl Cluster {
    /// Hosts named `names`, each with 20 ports from `first_port` on (the next host the
    /// next 20), reachable at `address` when given (else at this machine's name).
    fn new(names: &[&str], first_port: u16, address: Option<&str>) -> Cluster {
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

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn path(&self, name: &str) -> PathBuf {
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

    /// `reap tasks`, by task id.
    fn tasks(&self) -> Vec<Value> {
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
        until("every task RUNNING and healthy", Duration::from_secs(30), || {
            let out = run(&mut tool("reap", &self.state()), b"");
            assert_eq!(code(&out), 0, "reap: {}", stderr(&out));
            let tasks = self.tasks();
            tasks
                .iter()
                .all(|t| t["state"] == "RUNNING" && t["healthy"] == true)
                .then_some(tasks)
        })
    }

    /// Waits until `reap --follow` has every task RUNNING and healthy in the state.
    fn healthy(&self) -> Vec<Value> {
        until("every task RUNNING and healthy", Duration::from_secs(30), || {
            let tasks = self.tasks();
            tasks
                .iter()
                .all(|t| t["state"] == "RUNNING" && t["healthy"] == true)
                .then_some(tasks)
        })
    }

    /// The output of a one-shot `announce ARGS`.
    fn announce(&self, args: &[&str]) -> Output {
        run(tool("announce", &self.state()).args(args), b"")
    }

    /// Starts a long-running tool; its output goes to NAME.out and NAME.err in the test's
    /// directory. Returns its pid.
    fn daemon(&mut self, name: &str, tool_name: &str, args: &[&str]) -> u32 {
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

    /// Task directories (those holding spec.json) of every host.
    fn task_dirs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack: Vec<PathBuf> = self
            .hosts
            .iter()
            .map(|h| rundir::host_root(&self.state(), h))
            .collect();
        while let Some(d) = stack.pop() {
            if d.join("spec.json").exists() {
                out.push(d);
                continue;
            }
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                }
            }
        }
        out
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
            if let Ok(Some(s)) = rundir::Status::read(&dir) {
                if rundir::same_process(s.supervisor.0, s.supervisor.1) {
                    let _ = kill(Pid::from_raw(s.supervisor.0 as i32), Signal::SIGKILL);
                }
                if let Some((pid, start)) = s.pid {
                    if rundir::same_process(pid, start) {
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
fn until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A web job: `instances` of python's http.server on port `http`, healthy when it answers
/// on `/`, with a second port `admin` that is only announced.
fn web(instances: u32) -> String {
    json!({
        "job": "www/prod/hello", "instances": instances,
        "cmd": ["python3", "-m", "http.server", "--bind", "127.0.0.1", "{{port.http}}"],
        "resources": {"cpus": 0.1, "ram_mb": 64, "ports": ["http", "admin"]},
        "constraints": [{"attr": "host", "limit": 1}],
        "health": {"http": "/", "port": "http", "interval_s": 0.2, "timeout_s": 1, "failures": 3},
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

/// The members in ZooKeeper at PATH, parsed, by shard; panics on a duplicate shard.
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
    let hostname = nix::unistd::gethostname()
        .unwrap()
        .into_string()
        .unwrap();
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
        plain_expected.iter().map(|l| format!("{l}\n")).collect::<String>()
    );

    // Instance 1 stopped (no announcer runs, so reap stops it at once) and a stray member
    // file: the next run removes both and says so; instance 0 stays as it was.
    let out = run(
        tool("reap", &c.state()).args(["kill", "www/prod/hello/1"]),
        b"",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(c.task("www/prod/hello/1")["state"], "KILLED");
    let stray = finagle("10.9.9.9", &json!({"ports": {"http": 1, "admin": 2}, "instance": 7}));
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
