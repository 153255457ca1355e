//! Drains end to end (issue 15): real instances on four local hosts, passes run in a loop
//! as scripts/reconcile runs them, `announce --follow` keeping the serversets, and a client
//! per service that resolves its serverset with `announce resolve` and asks every member
//! throughout.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::announce::{until_or, Cluster};
use crate::common::{code, run, stderr, stdout, tool};
use crate::rollout::{get, pass, passes_until_or, versions};

/// A service of `instances` python http.servers, healthy when they answer, at most two
/// per host, announced at /formic/www/prod/NAME, with `sla` as its budget.
fn service(name: &str, instances: u32, sla: Value) -> String {
    versioned(name, instances, sla, "1", json!({}))
}

/// `service`, with `V` in its environment and `update` as its update block.
fn versioned(name: &str, instances: u32, sla: Value, version: &str, update: Value) -> String {
    json!({
        "job": format!("www/prod/{name}"), "instances": instances,
        "cmd": ["python3", "-m", "http.server", "--bind", "127.0.0.1", "{{port.http}}"],
        "env": {"V": version},
        "update": update,
        "resources": {"cpus": 0.25, "ram_mb": 64, "ports": ["http", "admin"]},
        "constraints": [{"attr": "host", "limit": 2}],
        "health": {"http": "/", "port": "http", "interval_s": 0.5, "timeout_s": 0.45,
                   "failures": 3},
        "announce": {"primary": "http", "path": format!("/formic/www/prod/{name}")},
        "sla": sla,
    })
    .to_string()
        + "\n"
}

/// What a client saw of one service: the fewest members at once, the requests that
/// failed while their member was still announced, and how many it made.
#[derive(Clone, Debug, Default)]
struct Seen {
    fewest: usize,
    failed: Vec<String>,
    asked: usize,
}

/// A client of one service: resolves its serverset (`announce resolve --plain`) and asks
/// each member for `/`, again and again.
struct Client {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn resolve(state: &Path, path: &str) -> Vec<String> {
    let out = run(
        tool("announce", state).args(["resolve", path, "--plain"]),
        b"",
    );
    assert!(code(&out) <= 1, "announce resolve: {}", stderr(&out));
    stdout(&out).lines().map(str::to_string).collect()
}

impl Client {
    fn start(state: PathBuf, path: String) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen {
            fewest: usize::MAX,
            ..Seen::default()
        }));
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let members = resolve(&state, &path);
                {
                    let mut s = seen2.lock().unwrap();
                    s.fewest = s.fewest.min(members.len());
                }
                for m in &members {
                    let port: u64 = m.rsplit(':').next().unwrap().parse().unwrap();
                    let answered = get(port);
                    let mut s = seen2.lock().unwrap();
                    s.asked += 1;
                    if let Err(e) = answered {
                        // Only a member still announced after the failure counts.
                        if resolve(&state, &path).contains(m) {
                            s.failed.push(format!("{m}: {e}"));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Client {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.seen.lock().unwrap().clone()
    }
}

/// Each host's maintenance state, by name.
fn maintenance(c: &Cluster) -> std::collections::BTreeMap<String, String> {
    let out = run(tool("offer", &c.state()).args(["hosts", "--json"]), b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|h| {
            let state = h["maintenance"]["state"].as_str().unwrap().to_string();
            (h["name"].as_str().unwrap().to_string(), state)
        })
        .collect()
}

/// Passes every 300 ms until `done`; fails after `limit` with the tasks.
fn passes_until(c: &Cluster, jobs: &Path, limit: Duration, done: impl Fn(&Cluster) -> bool) {
    passes_until_or(c, jobs, limit, done, || format!("{:?}", maintenance(c)));
}

/// The state of `job`'s update (`roll status`).
fn update_state(c: &Cluster, job: &str) -> String {
    let out = run(
        tool("roll", &c.state()).args(["status", "--json", job]),
        b"",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let status: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    status["update"]["state"]
        .as_str()
        .unwrap_or("none")
        .to_string()
}

/// Every task RUNNING, healthy and announced, `n` of them.
fn all_up(c: &Cluster, n: usize) -> bool {
    let tasks = c.tasks();
    tasks.len() == n
        && tasks
            .iter()
            .all(|t| t["state"] == "RUNNING" && t["healthy"] == true && t["announced"] == true)
}

/// Three services with budgets of 1, 2 and 50%, on four hosts; two hosts drained in one
/// call. No service ever has more instances out of its serverset than its budget allows,
/// no request to an announced member fails, both hosts end drained, and every instance
/// ends healthy on the other two.
#[test]
fn a_drain_of_two_hosts_keeps_every_service_within_its_budget() {
    crate::common::require_root("tasks under uids of their own");
    let mut c = Cluster::new(&["h1", "h2", "h3", "h4"], 47500, Some("127.0.0.1"));
    let jobs = c.path("jobs");
    std::fs::create_dir(&jobs).unwrap();
    let services = [
        ("one", 3, json!({"max_unavailable": 1, "healthy_for_s": 2})),
        ("two", 4, json!({"max_unavailable": 2, "healthy_for_s": 2})),
        (
            "half",
            4,
            json!({"min_healthy_percent": 50, "healthy_for_s": 2}),
        ),
    ];
    let text: String = services
        .iter()
        .map(|(name, n, sla)| service(name, *n, sla.clone()))
        .collect();
    std::fs::write(jobs.join("web.jsonl"), text).unwrap();
    c.daemon("announce", "announce", &["--follow"]);
    passes_until(&c, &jobs, Duration::from_secs(60), |c| all_up(c, 11));

    // The two hosts holding the most instances.
    let mut held: Vec<(usize, String)> = ["h1", "h2", "h3", "h4"]
        .iter()
        .map(|h| {
            let n = c.tasks().iter().filter(|t| t["host"] == *h).count();
            (n, h.to_string())
        })
        .collect();
    held.sort();
    let drained: Vec<String> = held[2..].iter().map(|(_, h)| h.clone()).collect();
    assert!(held[2].0 >= 2, "the drained hosts hold instances: {held:?}");

    std::thread::sleep(Duration::from_secs(2)); // every instance available

    // The dry run: per instance there, stop now (and where its replacement goes) or wait
    // (and why); nothing changes.
    let out = run(
        tool("offer", &c.state())
            .args(["drain", "--dry-run", "--json", "--jobs"])
            .arg(&jobs)
            .args(&drained),
        b"",
    );
    assert_eq!(code(&out), 1, "some must wait: {}", stderr(&out));
    let rows: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), held[2].0 + held[3].0, "{rows:?}");
    for r in &rows {
        if r["stop"] == true {
            let to = r["to"].as_str().unwrap_or_default().to_string();
            assert!(!to.is_empty() && !drained.contains(&to), "{r}");
        } else {
            assert!(r["why"].as_str().unwrap().contains("budget"), "{r}");
        }
    }
    assert!(rows.iter().any(|r| r["stop"] == true), "{rows:?}");
    assert!(drained.iter().all(|h| maintenance(&c)[h] == "none"));
    // The probe: per job, how many would go down were both drained at once, against its
    // budget; not safe, and waiting does not make it so.
    let out = run(
        tool("offer", &c.state())
            .args(["probe", "--json", "--jobs"])
            .arg(&jobs)
            .args(&drained),
        b"",
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let probes: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let on: u64 = probes.iter().map(|p| p["on_hosts"].as_u64().unwrap()).sum();
    assert_eq!(on as usize, rows.len(), "{probes:?}");
    for p in &probes {
        let (after, max) = (p["down_after"].as_u64(), p["max_down"].as_u64());
        assert_eq!(p["down"], 0, "{p}");
        assert_eq!(p["safe"], after <= max, "{p}");
        assert!(p["safe"] == true || p["safe_in_s"].is_null(), "{p}");
    }
    assert!(probes.iter().any(|p| p["safe"] == false), "{probes:?}");

    let clients: Vec<Client> = services
        .iter()
        .map(|(name, _, _)| Client::start(c.state(), format!("/formic/www/prod/{name}")))
        .collect();
    // Drained with --wait, as a maintenance script would: it returns once both are empty.
    let waiting = tool("offer", &c.state())
        .args(["drain", "--reason", "kernel", "--owner", "ops", "--wait"])
        .args(&drained)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    passes_until(&c, &jobs, Duration::from_secs(180), |c| {
        let m = maintenance(c);
        drained
            .iter()
            .all(|h| m.get(h).is_some_and(|m| m == "drained"))
            && all_up(c, 11)
    });
    let waited = waiting.wait_with_output().unwrap();
    assert_eq!(code(&waited), 0, "{}", stderr(&waited));
    assert!(
        stderr(&waited).contains("drained after"),
        "{}",
        stderr(&waited)
    );
    // The clients watch a little longer: every replacement stays.
    std::thread::sleep(Duration::from_secs(1));
    for ((name, n, _), client) in services.iter().zip(clients) {
        let seen = client.finish();
        let budget = match *name {
            "one" => 1,
            "two" => 2,
            _ => 2,
        };
        assert!(
            seen.asked > 50,
            "{name}: the client asked {} times",
            seen.asked
        );
        assert!(
            seen.failed.is_empty(),
            "{name}: failed requests: {:?}",
            seen.failed
        );
        assert!(
            seen.fewest >= (n - budget) as usize,
            "{name}: at one moment only {} of {n} members were announced",
            seen.fewest
        );
    }
    for t in c.tasks() {
        let host = t["host"].as_str().unwrap().to_string();
        assert!(!drained.contains(&host), "{} still on {host}", t["task"]);
    }
}

/// A drain, a rolling update and a failure in one job at once: one budget counts them all.
/// With one instance down by a kill -9, nothing else is taken down until its replacement
/// serves; then the drain and the update's batches (of 2, held to the budget's 1) take one
/// instance at a time, and the job ends on the new spec with the host drained.
#[test]
fn a_drain_an_update_and_a_failure_share_one_budget() {
    crate::common::require_root("tasks under uids of their own");
    let mut c = Cluster::new(&["h1", "h2", "h3"], 47600, Some("127.0.0.1"));
    let jobs = c.path("jobs");
    std::fs::create_dir(&jobs).unwrap();
    let sla = json!({"max_unavailable": 1, "healthy_for_s": 2});
    let update = json!({"batch_size": 2, "watch_s": 1});
    let write = |version: &str| {
        let text = versioned("web", 4, sla.clone(), version, update.clone());
        std::fs::write(jobs.join("web.json"), text).unwrap();
    };
    write("1");
    c.daemon("announce", "announce", &["--follow"]);
    passes_until(&c, &jobs, Duration::from_secs(60), |c| all_up(c, 4));
    std::thread::sleep(Duration::from_secs(2)); // every instance available

    let client = Client::start(c.state(), "/formic/www/prod/web".into());
    let tasks = c.tasks();
    let drained = tasks[0]["host"].as_str().unwrap().to_string();
    let failed = tasks
        .iter()
        .find(|t| t["host"] != drained.as_str())
        .unwrap();
    let failed_port = failed["ports"]["http"].as_u64().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(failed["pid"].as_u64().unwrap() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // The failure is known before the drain and the update start (else a pass could take
    // one down in the moment before reap hears of it: a failure, not a budget broken).
    let failed_task = failed["task"].clone();
    let failed_pid = failed["pid"].clone();
    until_or(
        "the kill -9 collected",
        Duration::from_secs(10),
        || {
            run(&mut tool("reap", &c.state()), b"");
            let t = c.tasks().into_iter().find(|t| t["task"] == failed_task)?;
            (t["pid"] != failed_pid || t["state"] != "RUNNING").then_some(())
        },
        || format!("{:?}", c.tasks()),
    );
    write("2");
    let out = run(tool("offer", &c.state()).args(["drain", &drained]), b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    passes_until(&c, &jobs, Duration::from_secs(180), |c| {
        maintenance(c)[&drained] == "drained"
            && update_state(c, "www/prod/web") == "ROLLED_FORWARD"
            && all_up(c, 4)
    });
    let seen = client.finish();
    // The killed instance's requests may fail until its member leaves: a failure, not a
    // stop formic chose.
    let failed_requests: Vec<&String> = seen
        .failed
        .iter()
        .filter(|f| !f.contains(&format!(":{failed_port}:")))
        .collect();
    assert!(
        failed_requests.is_empty(),
        "failed requests: {failed_requests:?}"
    );
    assert!(
        seen.fewest >= 3,
        "at one moment only {} of 4 were announced",
        seen.fewest
    );
    assert_eq!(
        versions(&c),
        (0..4).map(|i| (i, "2".to_string())).collect(),
        "every instance runs the new spec"
    );
    assert!(c.tasks().iter().all(|t| t["host"] != drained.as_str()));
}

/// Runs `cmd` on `input` and SIGKILLs it after `after`; returns what it wrote by then.
fn killed_after(mut cmd: std::process::Command, input: &[u8], after: Duration) -> Vec<u8> {
    use std::io::{Read, Write};
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    std::thread::sleep(after);
    let _ = child.kill();
    let _ = child.wait();
    let _ = feeder.join();
    reader.join().unwrap()
}

/// A pass whose step `victim` (0 reap, 1 offer, 2 pack, 3 reap --asked-only, 4 launch)
/// is killed with SIGKILL `after` its start; the steps after it get what it wrote.
fn pass_with_a_kill(c: &Cluster, jobs: &Path, victim: usize, after: Duration) {
    let steps: [(&str, &[&str]); 5] = [
        ("reap", &[]),
        ("offer", &[]),
        ("pack", &["--prune"]),
        ("reap", &["--asked-only"]),
        ("launch", &["--allow-root", "--wait", "5", "--grace", "3"]),
    ];
    let mut carried = Vec::new();
    for (i, (name, args)) in steps.iter().enumerate() {
        let mut cmd = tool(name, &c.state());
        cmd.args(*args);
        if *name == "pack" {
            cmd.arg(jobs);
        }
        let input = if i <= 1 { Vec::new() } else { carried.clone() };
        let out = if i == victim {
            killed_after(cmd, &input, after)
        } else {
            run(&mut cmd, &input).stdout
        };
        if i >= 1 {
            carried = out;
        }
    }
}

/// Every process of `pattern`'s command line still running.
fn processes(pattern: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(pattern)
            })
        })
        .collect()
}

/// kill -9 of any tool at any point of a drain: later passes carry it on, and nothing is
/// lost or left behind: the host ends drained, every instance runs once, healthy,
/// elsewhere, and no process of a stopped instance survives.
#[test]
fn a_drain_survives_kill_9_of_any_tool_at_any_point() {
    crate::common::require_root("tasks under uids of their own");
    let mut c = Cluster::new(&["k1", "k2", "k3"], 47700, Some("127.0.0.1"));
    let jobs = c.path("jobs");
    std::fs::create_dir(&jobs).unwrap();
    let sla = json!({"max_unavailable": 1, "healthy_for_s": 1});
    std::fs::write(jobs.join("web.json"), service("nine", 4, sla)).unwrap();
    c.daemon("announce", "announce", &["--follow"]);
    passes_until(&c, &jobs, Duration::from_secs(60), |c| all_up(c, 4));
    std::thread::sleep(Duration::from_secs(1));
    let drained = c.tasks()[0]["host"].as_str().unwrap().to_string();
    let out = run(tool("offer", &c.state()).args(["drain", &drained]), b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // A fixed sequence of victims and moments, so a failure can be run again.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..15 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let (victim, after) = ((seed % 5) as usize, Duration::from_millis(seed % 400));
        pass_with_a_kill(&c, &jobs, victim, after);
    }
    passes_until(&c, &jobs, Duration::from_secs(120), |c| {
        maintenance(c)[&drained] == "drained" && all_up(c, 4)
    });
    let tasks = c.tasks();
    assert!(
        tasks.iter().all(|t| t["host"] != drained.as_str()),
        "{tasks:?}"
    );
    // One http.server per instance on this cluster's ports, and no other.
    let ports: Vec<String> = tasks
        .iter()
        .map(|t| t["ports"]["http"].as_u64().unwrap().to_string())
        .collect();
    let servers: usize = (47700..47760)
        .map(|p| processes(&format!("http.server --bind 127.0.0.1 {p}")).len())
        .sum();
    assert_eq!(servers, 4, "one server per instance ({ports:?})");
}

/// A drain that cannot be met (no other host may take the instances): the passes stop
/// nothing, `--wait` says so and names the job (69), and the deadline then forces the
/// stops and says so in each task's reason.
#[test]
fn a_drain_with_no_room_waits_says_why_and_its_deadline_forces_it() {
    crate::common::require_root("tasks under uids of their own");
    let mut c = Cluster::new(&["n1", "n2"], 47800, Some("127.0.0.1"));
    let jobs = c.path("jobs");
    std::fs::create_dir(&jobs).unwrap();
    let sla = json!({"max_unavailable": 1, "healthy_for_s": 0});
    std::fs::write(jobs.join("web.json"), service("full", 4, sla)).unwrap();
    c.daemon("announce", "announce", &["--follow"]);
    passes_until(&c, &jobs, Duration::from_secs(60), |c| all_up(c, 4));
    let waiting = tool("offer", &c.state())
        .args(["drain", "n1", "--deadline", "25s", "--wait", "--jobs"])
        .arg(&jobs)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let waited = std::sync::Mutex::new(Some(waiting));
    let mut exited = None;
    until_or(
        "--wait to give up for want of room",
        Duration::from_secs(60),
        || {
            pass(&c, &jobs);
            std::thread::sleep(Duration::from_millis(300));
            let mut child = waited.lock().unwrap();
            if child.as_mut()?.try_wait().unwrap().is_some() {
                exited = Some(child.take().unwrap().wait_with_output().unwrap());
            }
            exited.as_ref().map(|_| ())
        },
        || format!("{:?}", c.tasks()),
    );
    let exited = exited.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "before the deadline"
    );
    assert_eq!(code(&exited), 69, "{}", stderr(&exited));
    let err = stderr(&exited);
    assert!(
        err.contains("no room") && err.contains("www/prod/full"),
        "{err}"
    );
    assert_eq!(
        c.tasks().iter().filter(|t| t["host"] == "n1").count(),
        2,
        "nothing stopped"
    );
    // Past the deadline the rest is stopped, and each task says why.
    passes_until(&c, &jobs, Duration::from_secs(60), |c| {
        maintenance(c)["n1"] == "drained"
    });
    let forced: Vec<Value> = c
        .tasks()
        .into_iter()
        .filter(|t| t["reason"] == "host drain past its deadline")
        .collect();
    assert_eq!(forced.len(), 2, "{:?}", c.tasks());
}

/// A service whose every instance crash-loops (never healthy, exits after a second) does
/// not hold a drain back: the host ends drained long before the deadline. (That stopping
/// an instance that does not serve costs nothing is pack_cli's
/// `instances_already_broken_do_not_block_a_drain`.)
#[test]
fn a_crash_looping_service_does_not_block_a_drain() {
    crate::common::require_root("tasks under uids of their own");
    let c = Cluster::new(&["c1", "c2"], 47900, Some("127.0.0.1"));
    let jobs = c.path("jobs");
    std::fs::create_dir(&jobs).unwrap();
    let broken = json!({
        "job": "www/prod/loop", "instances": 2,
        "cmd": ["python3", "-c", "import time; time.sleep(1)"],
        "resources": {"cpus": 0.25, "ram_mb": 64, "ports": ["http"]},
        "health": {"http": "/", "port": "http", "interval_s": 0.5, "timeout_s": 0.45,
                   "failures": 3},
        "restart": {"backoff_s": 0.5, "max_backoff_s": 1},
        "sla": {"max_unavailable": 1},
    });
    std::fs::write(jobs.join("loop.json"), format!("{broken}\n")).unwrap();
    let on_c1 = |c: &Cluster| {
        c.tasks()
            .iter()
            .filter(|t| t["host"] == "c1" && t["state"] == "RUNNING")
            .count()
    };
    passes_until(&c, &jobs, Duration::from_secs(60), |c| on_c1(c) > 0);
    let out = run(
        tool("offer", &c.state()).args(["drain", "c1", "--deadline", "10m"]),
        b"",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    passes_until(&c, &jobs, Duration::from_secs(60), |c| {
        maintenance(c)["c1"] == "drained"
    });
    assert!(c
        .tasks()
        .iter()
        .all(|t| t["host"] != "c1" || t["state"] != "RUNNING"));
}
