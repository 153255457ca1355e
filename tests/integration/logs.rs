//! `job logs`: each run of a task on a host has its own logs, read by task id (the current
//! run, an incarnation, or a batch job's run), followed while the run writes. Over ssh in
//! fleet_ssh.rs.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::announce::Cluster;
use crate::common::{code, run, stderr, stdout, tool, wait_until};
use crate::rollout::pass;

fn logs(c: &Cluster, args: &[&str]) -> (i32, String, String) {
    let out = run(tool("job", &c.state()).arg("logs").args(args), b"");
    (code(&out), stdout(&out), stderr(&out))
}

fn task(c: &Cluster, id: &str) -> Value {
    c.tasks()
        .into_iter()
        .find(|t| t["task"] == id)
        .unwrap_or(Value::Null)
}

/// Passes until the task has ended in `state`.
fn passes_until_ended(c: &Cluster, jobs: &std::path::Path, id: &str, incarnation: u64) {
    wait_until(
        &format!("{id} #{incarnation} to finish"),
        Duration::from_secs(30),
        || {
            pass(c, jobs);
            let t = task(c, id);
            (t["state"] == "FINISHED" && t["incarnation"] == incarnation).then_some(())
        },
    );
}

#[test]
fn each_run_of_a_task_has_its_own_logs_by_incarnation_or_by_run() {
    let c = Cluster::new(&["h1"], 36360, None);
    let key = "batch/prod/say";
    let id = "batch/prod/say/0";
    let jobs = c.path("jobs.jsonl");
    let spec = json!({"job": key, "instances": 1, "service": false,
                      "cmd": ["sh", "-c", "echo out $(date +%s%N); echo err $$ >&2"],
                      "resources": {"cpus": 0.1, "ram_mb": 16}});
    std::fs::write(&jobs, spec.to_string() + "\n").unwrap();
    passes_until_ended(&c, &jobs, id, 1);
    let (status, first, said) = logs(&c, &[id]);
    assert_eq!(status, 0, "{said}");
    assert!(
        first.starts_with("out ") && first.lines().count() == 1,
        "{first:?}"
    );
    // The batch job again, by hand: its next run writes logs of its own.
    let out = run(tool("job", &c.state()).args(["run", key]), b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    passes_until_ended(&c, &jobs, id, 2);
    let second = logs(&c, &[id]).1;
    assert!(
        second.starts_with("out ") && second.lines().count() == 1,
        "{second:?}"
    );
    assert_ne!(first, second);
    assert_eq!(logs(&c, &[id, "--incarnation", "1"]).1, first);
    assert_eq!(logs(&c, &[id, "--incarnation", "2"]).1, second);
    // By a batch job's run: 0 for its first, then the number `job runs` shows.
    let run_number = task(&c, id)["run"].as_u64().unwrap().to_string();
    assert_eq!(logs(&c, &[id, "--run", "0"]).1, first);
    assert_eq!(logs(&c, &[id, "--run", &run_number]).1, second);
    let errs = logs(&c, &[id, "--stderr", "--incarnation", "1"]).1;
    assert!(
        errs.starts_with("err ") && errs.lines().count() == 1,
        "{errs:?}"
    );
    // On the host: a directory per run.
    let dir = formic::taskdir::task_dir(&formic::taskdir::host_root(&c.state(), "h1"), id);
    let runs: Vec<u32> = formic::runlogs::runs(&dir)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(runs, [1, 2]);
    // What is not there is an error that says so, with status 65.
    for (args, says) in [
        (vec![id, "--incarnation", "7"], "no incarnation 7"),
        (
            vec!["batch/prod/nope/0"],
            "no task batch/prod/nope/0 has been placed",
        ),
        (vec!["batch/prod/say"], "is not role/env/name/instance"),
    ] {
        let (status, out, said) = logs(&c, &args);
        assert_eq!((status, out.as_str()), (65, ""), "{args:?}: {said}");
        assert!(said.contains(says), "{args:?}: {said}");
    }
}

#[test]
fn follow_prints_what_the_run_writes_until_it_ends() {
    let c = Cluster::new(&["h1"], 36380, None);
    let id = "www/prod/tick/0";
    let jobs = c.path("jobs.jsonl");
    let spec = json!({"job": "www/prod/tick", "instances": 1,
                      "cmd": ["sh", "-c", "for i in 1 2 3 4 5; do echo tick $i; sleep 0.4; done"],
                      "resources": {"cpus": 0.1, "ram_mb": 16}});
    std::fs::write(&jobs, spec.to_string() + "\n").unwrap();
    pass(&c, &jobs);
    let started = Instant::now();
    let (status, out, said) = logs(&c, &[id, "-f"]);
    assert_eq!(status, 0, "{said}");
    assert_eq!(out, "tick 1\ntick 2\ntick 3\ntick 4\ntick 5\n");
    // It waited for the run to write, and ended with it.
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
}

/// A task a supervisor from before per-run logs still serves writes `logs/stdout` and
/// `logs/stderr` for its run: `job logs` reads those for that run (and for it alone).
#[test]
fn the_run_of_an_older_supervisor_is_read_from_its_shared_logs() {
    let c = Cluster::new(&["h1"], 36400, None);
    let id = "www/prod/old/0";
    let jobs = c.path("jobs.jsonl");
    let spec = json!({"job": "www/prod/old", "instances": 1,
                      "cmd": ["sh", "-c", "i=0; while :; do i=$((i+1)); echo line $i; echo e$i >&2; sleep 0.2; done"],
                      "resources": {"cpus": 0.1, "ram_mb": 16}});
    std::fs::write(&jobs, spec.to_string() + "\n").unwrap();
    pass(&c, &jobs);
    let dir = formic::taskdir::task_dir(&formic::taskdir::host_root(&c.state(), "h1"), id);
    let run = formic::runlogs::run_dir(&dir, 1);
    wait_until("the first line", Duration::from_secs(10), || {
        let out = std::fs::read_to_string(run.join("stdout")).unwrap_or_default();
        out.contains("line 2").then_some(())
    });
    // The layout an older supervisor writes: the files it holds open, moved to where it
    // had them.
    let logs_dir = formic::runlogs::logs_dir(&dir);
    for stream in ["stdout", "stderr"] {
        std::fs::rename(run.join(stream), logs_dir.join(stream)).unwrap();
    }
    std::fs::remove_dir_all(&run).unwrap();
    let (status, out, said) = logs(&c, &[id]);
    assert_eq!(status, 0, "{said}");
    assert!(out.starts_with("line 1\nline 2\n"), "{out:?}");
    wait_until(
        "lines written after the move",
        Duration::from_secs(10),
        || {
            let now = logs(&c, &[id]).1;
            (now.lines().count() > out.lines().count() + 1).then_some(())
        },
    );
    assert!(logs(&c, &[id, "--stderr"]).1.starts_with("e1\ne2\n"));
    // An earlier run has no logs there: the shared files are the live run's alone.
    let (status, _, said) = logs(&c, &[id, "--incarnation", "0"]);
    assert_eq!(status, 65, "{said}");
}

/// A crash-looping task waits out its backoff with no host: its last run's logs are still
/// read, from the host the history says it ran on.
#[test]
fn a_throttled_task_shows_the_logs_of_the_run_that_failed() {
    let c = Cluster::new(&["h1"], 36420, None);
    let id = "www/prod/crash/0";
    let jobs = c.path("jobs.jsonl");
    let spec = json!({"job": "www/prod/crash", "instances": 1,
                      "cmd": ["sh", "-c", "echo boom; echo why >&2; exit 3"],
                      "resources": {"cpus": 0.1, "ram_mb": 16}});
    std::fs::write(&jobs, spec.to_string() + "\n").unwrap();
    let t = wait_until(
        "the task to wait out a backoff",
        Duration::from_secs(30),
        || {
            pass(&c, &jobs);
            let t = task(&c, id);
            (t["state"] == "THROTTLED").then_some(t)
        },
    );
    assert!(t["host"].is_null(), "{t}");
    let (status, out, said) = logs(&c, &[id]);
    assert_eq!((status, out.as_str()), (0, "boom\n"), "{said}");
    let n = t["incarnation"].to_string();
    assert_eq!(logs(&c, &[id, "--stderr", "--incarnation", &n]).1, "why\n");
}
