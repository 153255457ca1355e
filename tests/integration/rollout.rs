//! Rolling updates end to end: real instances (python's http.server behind an HTTP health
//! check) on local hosts, passes of `reap; offer | pack --state --prune JOBS | reap
//! --asked-only | launch` run in a loop while `announce --follow` keeps the serverset files,
//! and a client that reads the serverset and asks every member throughout.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::announce::{member_files, until_or, Cluster, PATH};
use crate::common::{code, run, stderr, stdout, tool};

/// The job of these tests: `instances` of python's http.server answering on `http`,
/// healthy when it answers, announced, with `V` in its environment and `update` as its
/// update block.
fn web(instances: u32, version: &str, update: Value) -> String {
    json!({
        "job": "www/prod/hello", "instances": instances,
        "cmd": ["python3", "-m", "http.server", "--bind", "127.0.0.1", "{{port.http}}"],
        "env": {"V": version},
        "resources": {"cpus": 0.5, "ram_mb": 64, "ports": ["http", "admin"]},
        "health": {"http": "/", "port": "http", "interval_s": 0.5, "timeout_s": 0.45,
                   "failures": 3},
        "announce": {"primary": "http", "path": PATH},
        "update": update,
    })
    .to_string()
        + "\n"
}

/// A pass's first steps: `reap` (collect, survey), then `offer | pack --state --prune
/// JOBS`; returns pack's records.
fn decided(c: &Cluster, jobs: &Path) -> Vec<u8> {
    let out = run(&mut tool("reap", &c.state()), b"");
    assert!(code(&out) <= 1, "reap: {}", stderr(&out));
    let offers = run(&mut tool("offer", &c.state()), b"");
    let packed = run(
        tool("pack", &c.state()).args(["--prune"]).arg(jobs),
        &offers.stdout,
    );
    assert!(code(&packed) <= 1, "pack: {}", stderr(&packed));
    packed.stdout
}

/// One reconciliation pass as scripts/reconcile runs it, without its announce (the
/// follower keeps the files). Returns what the last step printed.
pub(crate) fn pass(c: &Cluster, jobs: &Path) -> Vec<Value> {
    let packed = decided(c, jobs);
    let stopped = run(tool("reap", &c.state()).arg("--asked-only"), &packed);
    assert!(
        code(&stopped) <= 1,
        "reap --asked-only: {}",
        stderr(&stopped)
    );
    let launched = run(
        tool("launch", &c.state()).args(["--allow-root", "--wait", "5", "--grace", "3"]),
        &stopped.stdout,
    );
    assert!(code(&launched) <= 1, "launch: {}", stderr(&launched));
    stdout(&launched)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `roll status --json JOB`.
fn roll_status(c: &Cluster) -> Value {
    let out = run(
        tool("roll", &c.state()).args(["status", "--json", "www/prod/hello"]),
        b"",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    serde_json::from_str(stdout(&out).trim()).unwrap()
}

fn update_state(c: &Cluster) -> String {
    roll_status(c)["update"]["state"]
        .as_str()
        .unwrap_or("none")
        .to_string()
}

/// Runs passes every 300 ms until `done` says so; fails after `limit` with the job's
/// update and tasks.
fn passes_until(c: &Cluster, jobs: &Path, limit: Duration, done: impl FnMut(&Cluster) -> bool) {
    passes_until_or(c, jobs, limit, done, || roll_status(c).to_string());
}

/// Runs passes every 300 ms until `done` says so; fails after `limit` with `context` and
/// the tasks.
pub(crate) fn passes_until_or(
    c: &Cluster,
    jobs: &Path,
    limit: Duration,
    mut done: impl FnMut(&Cluster) -> bool,
    context: impl Fn() -> String,
) {
    until_or(
        "the passes to end as expected",
        limit,
        || {
            pass(c, jobs);
            std::thread::sleep(Duration::from_millis(300));
            done(c).then_some(())
        },
        || format!("{}\n{:?}", context(), c.tasks()),
    );
}

/// The value of V in each running instance's environment, by instance.
pub(crate) fn versions(c: &Cluster) -> BTreeMap<u64, String> {
    c.tasks()
        .iter()
        .filter(|t| t["state"] == "RUNNING")
        .map(|t| {
            let pid = t["pid"].as_u64().unwrap();
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let v = environ
                .split(|&b| b == 0)
                .find_map(|kv| kv.strip_prefix(b"V="))
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            (t["instance"].as_u64().unwrap(), v)
        })
        .collect()
}

/// A client: reads the serverset's member files every 10 ms and asks each member for `/`.
/// Counts the fewest members seen at once, and the requests that failed while their
/// member was still announced (its file still there after the failure).
struct Client {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<(usize, Vec<String>, usize)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    fn start(dir: &Path) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new((usize::MAX, Vec::new(), 0)));
        let (dir, stop2, seen2) = (dir.to_path_buf(), stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let members = member_files(&dir);
                let mut s = seen2.lock().unwrap();
                s.0 = s.0.min(members.len());
                drop(s);
                for m in &members {
                    let file = dir.join(m);
                    let Ok(data) = std::fs::read(&file) else {
                        continue; // left between the listing and the read
                    };
                    let member: Value = serde_json::from_slice(&data).unwrap();
                    let port = member["serviceEndpoint"]["port"].as_u64().unwrap();
                    let answered = get(port);
                    let mut s = seen2.lock().unwrap();
                    s.2 += 1;
                    if let Err(e) = answered {
                        if file.exists() {
                            s.1.push(format!("{m} (port {port}): {e}"));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Client {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// (fewest members seen at once, failed requests to announced members, requests).
    fn finish(mut self) -> (usize, Vec<String>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.seen.lock().unwrap().clone()
    }
}

/// GET / on 127.0.0.1:PORT; Ok when the answer is 200.
pub(crate) fn get(port: u64) -> Result<(), String> {
    use std::io::{Read, Write};
    let addr = format!("127.0.0.1:{port}");
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).map_err(|e| e.to_string())?;
    match answer.starts_with(b"HTTP/1.0 200") {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&answer[..answer.len().min(40)]).into()),
    }
}

/// Five instances on two hosts, the announce follower running, every instance healthy
/// and announced. Returns the cluster and its jobs directory.
fn deployed(first_port: u16, update: Value) -> (Cluster, std::path::PathBuf) {
    let mut c = Cluster::new(&["h1", "h2"], first_port, Some("127.0.0.1"));
    let jobs = c.path("jobs");
    std::fs::create_dir(&jobs).unwrap();
    std::fs::write(jobs.join("web.json"), web(5, "1", update)).unwrap();
    c.daemon("announce", "announce", &["--follow"]);
    let dir = c.path("serversets").join(PATH.trim_start_matches('/'));
    passes_until(&c, &jobs, Duration::from_secs(60), |c| {
        member_files(&dir).len() == 5
            && c.tasks()
                .iter()
                .all(|t| t["state"] == "RUNNING" && t["announced"] == true)
    });
    (c, jobs)
}

#[test]
fn an_update_replaces_two_at_a_time_and_clients_never_reach_a_stopping_instance() {
    crate::common::require_root("tasks under uids of their own");
    let update = json!({"batch_size": 2, "watch_s": 1});
    let (c, jobs) = deployed(47100, update.clone());
    let before: Vec<Value> = c.tasks();
    let dir = c.path("serversets").join(PATH.trim_start_matches('/'));
    let client = Client::start(&dir);
    std::fs::write(jobs.join("web.json"), web(5, "2", update)).unwrap();
    passes_until(&c, &jobs, Duration::from_secs(120), |c| {
        update_state(c) == "ROLLED_FORWARD" && member_files(&dir).len() == 5
    });
    let (fewest, failed, asked) = client.finish();
    assert!(asked > 100, "the client asked {asked} times");
    assert!(
        failed.is_empty(),
        "requests to announced members failed: {failed:?}"
    );
    assert!(
        fewest >= 3,
        "at one moment only {fewest} members were announced"
    );
    assert_eq!(
        versions(&c),
        (0..5).map(|i| (i, "2".to_string())).collect(),
        "every instance runs the new environment"
    );
    // Update affinity: each instance stayed on its host.
    let host =
        |ts: &[Value], i: u64| ts.iter().find(|t| t["instance"] == i).unwrap()["host"].clone();
    let after = c.tasks();
    for i in 0..5 {
        assert_eq!(host(&before, i), host(&after, i), "instance {i} moved");
    }
    let status = roll_status(&c);
    assert_eq!(status["stable"], status["update"]["to"], "{status}");
    let u = &status["update"];
    assert_eq!(
        (&u["desired"], &u["done"], &u["pending"]),
        (&json!(5), &json!(5), &json!(0)),
        "{status}"
    );
    assert_eq!(status["healthy"][u["to"].as_str().unwrap()], 5, "{status}");
    // Each instance's version, in reap tasks.
    assert!(
        c.tasks().iter().all(|t| t["spec"] == u["to"]),
        "{:?}",
        c.tasks()
    );
}

#[test]
fn a_new_spec_that_fails_its_checks_rolls_back_and_is_not_tried_again() {
    crate::common::require_root("tasks under uids of their own");
    // A slow start that fails a check once (a loaded machine) is tolerated; the broken spec
    // fails every time.
    let update = json!({"batch_size": 2, "watch_s": 1, "progress_deadline_s": 60,
                        "max_per_instance_failures": 1});
    let (c, jobs) = deployed(47200, update.clone());
    let running = roll_status(&c)["running"].clone();
    let old_spec = running.as_object().unwrap().keys().next().unwrap().clone();
    // The new spec serves nothing on its port: its checks fail.
    let broken = web(5, "2", update.clone()).replace(
        r#"["python3","-m","http.server","--bind","127.0.0.1","{{port.http}}"]"#,
        r#"["python3","-c","import time; time.sleep(600)"]"#,
    );
    assert_ne!(broken, web(5, "2", update.clone()));
    std::fs::write(jobs.join("web.json"), &broken).unwrap();
    passes_until(&c, &jobs, Duration::from_secs(120), |c| {
        update_state(c) == "ROLLED_BACK"
            && c.tasks()
                .iter()
                .all(|t| t["state"] == "RUNNING" && t["healthy"] == true)
    });
    let status = roll_status(&c);
    assert_eq!(status["update"]["from"], old_spec, "{status}");
    assert_eq!(status["stable"], old_spec, "{status}");
    assert_eq!(status["running"].as_object().unwrap().len(), 1, "{status}");
    assert_eq!(versions(&c).values().filter(|v| *v == "1").count(), 5);
    // Later passes leave it there: the failed spec is not tried again.
    for _ in 0..3 {
        pass(&c, &jobs);
    }
    assert_eq!(update_state(&c), "ROLLED_BACK");
    assert_eq!(versions(&c).values().filter(|v| *v == "1").count(), 5);
    // A new change of the job file starts a new update.
    std::fs::write(jobs.join("web.json"), web(5, "3", update)).unwrap();
    passes_until(&c, &jobs, Duration::from_secs(120), |c| {
        update_state(c) == "ROLLED_FORWARD"
    });
    assert_eq!(versions(&c).values().filter(|v| *v == "3").count(), 5);
}

#[test]
fn the_progress_deadline_fails_an_update_that_cannot_be_placed() {
    crate::common::require_root("tasks under uids of their own");
    let update = json!({"batch_size": 1, "watch_s": 0, "progress_deadline_s": 4});
    let (c, jobs) = deployed(47300, update.clone());
    // More cpus than any host has: the new spec can never be placed. A budget that lets 4
    // of 5 go down leaves the batch size alone to hold the update to one at a time.
    let mut huge: Value = serde_json::from_str(&web(5, "2", update)).unwrap();
    huge["resources"]["cpus"] = json!(64);
    huge["sla"] = json!({"max_unavailable": 4, "healthy_for_s": 0});
    std::fs::write(jobs.join("web.json"), huge.to_string()).unwrap();
    let started = Instant::now();
    let (mut stalled, mut most_pending) = (None, 0);
    passes_until(&c, &jobs, Duration::from_secs(60), |c| {
        let status = roll_status(c);
        if status["update"]["state"] == "ROLLING_FORWARD" {
            let pending = status["update"]["pending"].as_u64().unwrap();
            most_pending = most_pending.max(pending);
            if pending == 1 {
                stalled = Some(status);
            }
        }
        update_state(c) == "ROLLED_BACK"
            && c.tasks().iter().filter(|t| t["state"] == "RUNNING").count() == 5
    });
    assert!(started.elapsed() >= Duration::from_secs(4));
    assert_eq!(
        most_pending, 1,
        "a replacement that could not be placed let the next batch start"
    );
    let stalled = stalled.expect("roll status showed the instance that could not be placed");
    assert_eq!(stalled["update"]["desired"], 5, "{stalled}");
    assert_eq!(
        stalled["update"]["why"], "waiting for instance 0 to be placed",
        "{stalled}"
    );
    let status = roll_status(&c);
    assert!(
        status["update"]["why"]
            .as_str()
            .unwrap()
            .contains("progress_deadline_s"),
        "{status}"
    );
}

#[test]
fn pause_resume_canary_and_abort() {
    crate::common::require_root("tasks under uids of their own");
    let update = json!({"batch_size": 5, "watch_s": 0});
    let (c, jobs) = deployed(47400, update.clone());
    let roll = |args: &[&str]| {
        let out = run(tool("roll", &c.state()).args(args), b"");
        (code(&out), stdout(&out), stderr(&out))
    };
    // Held before the change: the update waits, paused.
    assert_eq!(roll(&["pause", "www/prod/hello"]).0, 0);
    std::fs::write(jobs.join("web.json"), web(5, "2", update.clone())).unwrap();
    for _ in 0..3 {
        pass(&c, &jobs);
    }
    assert_eq!(update_state(&c), "ROLL_FORWARD_PAUSED");
    assert_eq!(versions(&c).values().filter(|v| *v == "1").count(), 5);
    // A canary on instances 1-2.
    let (status, out, err) = roll(&["start", "www/prod/hello", "--instances", "1-2"]);
    assert_eq!(status, 0, "{err}");
    assert!(out.contains("ROLLING_FORWARD"), "{out}");
    passes_until(&c, &jobs, Duration::from_secs(60), |c| {
        update_state(c) == "ROLLED_FORWARD"
    });
    let v = versions(&c);
    assert_eq!(
        v.values().map(String::as_str).collect::<Vec<_>>(),
        ["1", "2", "2", "1", "1"],
        "{v:?}"
    );
    // Widened to every instance, and aborted before a pass moved it: it stays as it is.
    assert_eq!(roll(&["start", "www/prod/hello"]).0, 0);
    assert_eq!(roll(&["abort", "www/prod/hello"]).0, 0);
    for _ in 0..3 {
        pass(&c, &jobs);
    }
    assert_eq!(update_state(&c), "ABORTED");
    assert_eq!(versions(&c).len(), 5);
    // Nothing to abort now: bad input, and nothing changes.
    let before = crate::common::snapshot(&c.state());
    let (status, _, err) = roll(&["abort", "www/prod/hello"]);
    assert_eq!((status, err.lines().count()), (65, 1), "{err}");
    assert_eq!(crate::common::snapshot(&c.state()), before);
    let (status, _, err) = roll(&["pause", "no/such/job"]);
    assert_eq!(status, 65, "{err}");
    assert!(err.contains("no job no/such/job"), "{err}");
    // A pass does not undo the abort, and the members are all there.
    let dir = c.path("serversets").join(PATH.trim_start_matches('/'));
    until_or(
        "five members",
        Duration::from_secs(30),
        || (member_files(&dir).len() == 5).then_some(()),
        String::new,
    );
}

/// One pass whose `victim` step (`collect` for the first reap, `reap` for `reap
/// --asked-only`, or `launch`) is killed with SIGKILL `after` its start, as a crash would
/// leave it.
fn crashing_pass(c: &Cluster, jobs: &Path, victim: &str, after: Duration) {
    use std::io::Write;
    let step = |name: &str, cmd: &mut std::process::Command, input: &[u8]| -> Vec<u8> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        if name == victim {
            std::thread::sleep(after);
            let _ = child.kill();
        }
        child.wait_with_output().unwrap().stdout
    };
    step("collect", &mut tool("reap", &c.state()), b"");
    let offers = run(&mut tool("offer", &c.state()), b"");
    let packed = run(
        tool("pack", &c.state()).args(["--prune"]).arg(jobs),
        &offers.stdout,
    )
    .stdout;
    let stopped = step(
        "reap",
        tool("reap", &c.state()).arg("--asked-only"),
        &packed,
    );
    step(
        "launch",
        tool("launch", &c.state()).args(["--allow-root", "--wait", "5", "--grace", "3"]),
        &stopped,
    );
}

#[test]
fn a_pass_killed_at_any_step_of_an_update_loses_nothing_and_starts_nothing_twice() {
    crate::common::require_root("tasks under uids of their own");
    let update = json!({"batch_size": 2, "watch_s": 0});
    let (c, jobs) = deployed(47500, update.clone());
    std::fs::write(jobs.join("web.json"), web(5, "2", update)).unwrap();
    let delays = [0, 5, 20, 50, 100, 200, 400];
    let mut n = 0;
    passes_until(&c, &jobs, Duration::from_secs(180), |c| {
        // Between the clean passes of passes_until, one killed at a different moment: the
        // reap that collects, the reap that stops what pack asked, or launch.
        let victim = ["launch", "reap", "collect"][n % 3];
        crashing_pass(
            c,
            &jobs,
            victim,
            Duration::from_millis(delays[n % delays.len()]),
        );
        n += 1;
        update_state(c) == "ROLLED_FORWARD"
            && c.tasks()
                .iter()
                .all(|t| t["state"] == "RUNNING" && t["healthy"] == true)
    });
    assert!(n >= 2, "the update took {n} crashed passes");
    assert_eq!(
        versions(&c),
        (0..5).map(|i| (i, "2".to_string())).collect(),
        "every instance on the new spec"
    );
    // One process per instance: nothing was started twice.
    let ports: Vec<String> = c
        .tasks()
        .iter()
        .map(|t| t["ports"]["http"].to_string())
        .collect();
    let servers = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|cmd| {
            let text = String::from_utf8_lossy(cmd).replace('\0', " ");
            text.contains("http.server") && (47500..47540).any(|p| text.contains(&p.to_string()))
        })
        .count();
    assert_eq!(
        servers, 5,
        "web servers running on the test's ports ({ports:?})"
    );
}
