//! Cron jobs and the runs of batch jobs, end to end: real tasks on local hosts, passes of
//! `reap; offer | pack --state --prune JOBS | reap --asked-only | launch` in a loop (two
//! loops at once, with no lock between them), and `job run` / `job runs`.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::announce::Cluster;
use crate::common::{code, run, snapshot, stderr, stdout, tool};
use crate::rollout::pass;

/// A job of `instances` running `cmd`, with `extra` fields (its cron block, ...).
fn job(key: &str, instances: u32, cmd: &[&str], extra: Value) -> String {
    let mut j = json!({
        "job": key, "instances": instances, "cmd": cmd,
        "resources": {"cpus": 0.1, "ram_mb": 16},
    });
    for (k, v) in extra.as_object().unwrap() {
        j[k] = v.clone();
    }
    j.to_string() + "\n"
}

fn write_jobs(c: &Cluster, jobs: &[String]) -> std::path::PathBuf {
    let file = c.path("jobs.jsonl");
    std::fs::write(&file, jobs.concat()).unwrap();
    file
}

/// `job runs --json KEY`.
fn runs(c: &Cluster, key: &str) -> Value {
    let out = run(tool("job", &c.state()).args(["runs", "--json", key]), b"");
    assert_eq!(code(&out), 0, "job runs: {}", stderr(&out));
    serde_json::from_str(stdout(&out).trim()).unwrap()
}

fn tasks_of(c: &Cluster, key: &str) -> Vec<Value> {
    c.tasks().into_iter().filter(|t| t["job"] == key).collect()
}

/// Passes back to back until `end`; the `cron` events launch printed.
fn passes_until(c: &Cluster, jobs: &Path, end: Instant) -> Vec<Value> {
    let mut events = Vec::new();
    while Instant::now() < end {
        let out = pass(c, jobs);
        events.extend(out.into_iter().filter(|e| e.get("cron").is_some()));
        std::thread::sleep(Duration::from_millis(100));
    }
    events
}

/// Scheduled times of an every-`step`-seconds schedule in (after, upto].
fn times_between(after: u64, upto: u64, step: u64) -> u64 {
    upto / step - after / step
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("{v} is not a count"))
}

#[test]
fn a_schedule_by_the_second_starts_each_run_on_time_and_once_with_two_pass_loops() {
    let c = Cluster::new(&["h1", "h2"], 36100, None);
    let key = "batch/prod/tick";
    let jobs = write_jobs(
        &c,
        &[job(
            key,
            2,
            &["true"],
            json!({"cron": {"schedule": "*/2 * * * * *", "starting_deadline_s": 60}}),
        )],
    );
    // The first pass reads the schedule: times before it are not the job's to run.
    pass(&c, &jobs);
    let seen = runs(&c, key);
    assert_eq!((n(&seen["runs"]), &seen["instances"]), (0, &json!([])));
    // With the job files, the schedule and when it is next due.
    let out = run(
        tool("job", &c.state())
            .args(["runs", "--json", "--jobs"])
            .arg(&jobs)
            .arg(key),
        b"",
    );
    assert_eq!(code(&out), 0, "job runs: {}", stderr(&out));
    let with: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let now = crate::common::now();
    let next = n(&with["next_scheduled"]);
    assert_eq!(with["schedule"], "*/2 * * * * *", "{with}");
    assert!(
        next.is_multiple_of(2) && (now - 1.0..=now + 2.0).contains(&(next as f64)),
        "{with}"
    );
    let first = n(&seen["last_scheduled"]);
    // Two loops of passes at once, for 11 seconds: about five scheduled times.
    let end = Instant::now() + Duration::from_secs(11);
    let mut events: Vec<Value> = std::thread::scope(|s| {
        let loops: Vec<_> = (0..2)
            .map(|_| s.spawn(|| passes_until(&c, &jobs, end)))
            .collect();
        loops.into_iter().flat_map(|l| l.join().unwrap()).collect()
    });
    // One more pass, alone: the last run's instances are placed if a loop left them (and
    // a run due meanwhile starts).
    let last = pass(&c, &jobs);
    events.extend(last.into_iter().filter(|e| e.get("cron").is_some()));
    let r = runs(&c, key);
    let (started, missed) = (n(&r["runs"]), n(&r["missed"]));
    let last = n(&r["last_scheduled"]);
    assert!(started >= 3, "at least three runs in 11 s: {r}");
    assert_eq!(
        started + missed + n(&r["cancelled"]),
        times_between(first, last, 2),
        "every scheduled time started, or was missed: {r}"
    );
    // Each run started once: by one loop's launch, never by both.
    let mut numbers: Vec<u64> = events
        .iter()
        .filter(|e| e["cron"] == "started")
        .map(|e| n(&e["run"]))
        .collect();
    numbers.sort();
    let count = numbers.len();
    numbers.dedup();
    assert_eq!(count, numbers.len(), "a run started twice: {events:?}");
    assert_eq!(count as u64, started, "{events:?}");
    for e in events.iter().filter(|e| e["cron"] == "started") {
        // On time: within a pass or two of the second it was due.
        let late = e["ts"].as_f64().unwrap() - n(&e["run"]) as f64;
        assert!((0.0..3.0).contains(&late), "run started {late} s late: {e}");
        assert_eq!(e["run"].as_u64().unwrap() % 2, 0, "{e}");
    }
    // Each run placed each instance once: an instance's incarnations are the runs.
    for t in tasks_of(&c, key) {
        assert_eq!(n(&t["incarnation"]), started, "{t}");
        assert_eq!(t["run"], r["run"], "{t}");
    }
}

#[test]
fn kill_existing_stops_the_last_run_and_cancel_new_lets_it_go_on() {
    let c = Cluster::new(&["h1"], 36140, None);
    let every = |collision: &str| {
        json!({"cron": {"schedule": "*/2 * * * * *", "collision": collision,
                        "starting_deadline_s": 60}})
    };
    let jobs = write_jobs(
        &c,
        &[
            job(
                "batch/prod/kill",
                1,
                &["sleep", "600"],
                every("kill_existing"),
            ),
            job("batch/prod/keep", 1, &["sleep", "600"], every("cancel_new")),
        ],
    );
    pass(&c, &jobs);
    passes_until(&c, &jobs, Instant::now() + Duration::from_secs(7));
    let kill = runs(&c, "batch/prod/kill");
    assert!(n(&kill["runs"]) >= 2, "{kill}");
    assert_eq!(n(&kill["cancelled"]), 0, "{kill}");
    let [t] = &tasks_of(&c, "batch/prod/kill")[..] else {
        panic!("one instance")
    };
    // Every new run stopped the last one's instance and placed its own.
    assert_eq!(n(&t["incarnation"]), n(&kill["runs"]), "{t}");
    assert_eq!((&t["run"], &t["state"]), (&kill["run"], &json!("RUNNING")));

    let keep = runs(&c, "batch/prod/keep");
    assert_eq!(n(&keep["runs"]), 1, "{keep}");
    assert!(n(&keep["cancelled"]) >= 2, "{keep}");
    let [t] = &tasks_of(&c, "batch/prod/keep")[..] else {
        panic!("one instance")
    };
    assert_eq!((n(&t["incarnation"]), &t["state"]), (1, &json!("RUNNING")));
    assert_eq!(t["run"], keep["run"]);
}

#[test]
fn a_missed_window_starts_one_run_and_one_past_its_deadline_none() {
    let c = Cluster::new(&["h1"], 36160, None);
    let every = |deadline: u32| json!({"cron": {"schedule": "*/2 * * * * *", "starting_deadline_s": deadline}});
    let jobs = write_jobs(
        &c,
        &[
            job("batch/prod/late", 1, &["true"], every(60)),
            // A deadline of 0: no pass comes on the very second.
            job("batch/prod/never", 1, &["true"], every(0)),
        ],
    );
    pass(&c, &jobs);
    let seen = n(&runs(&c, "batch/prod/late")["last_scheduled"]);
    // No pass for seven seconds: three or four scheduled times go by.
    std::thread::sleep(Duration::from_secs(7));
    pass(&c, &jobs);
    let late = runs(&c, "batch/prod/late");
    let due = times_between(seen, n(&late["last_scheduled"]), 2);
    assert!(due >= 3, "{late}");
    assert_eq!(n(&late["runs"]), 1, "one run for the window: {late}");
    assert_eq!(n(&late["missed"]), due - 1, "{late}");
    assert_eq!(
        late["run"], late["last_scheduled"],
        "the latest time ran: {late}"
    );
    let [t] = &tasks_of(&c, "batch/prod/late")[..] else {
        panic!("one instance")
    };
    assert_eq!(n(&t["incarnation"]), 1);

    let never = runs(&c, "batch/prod/never");
    assert_eq!(n(&never["runs"]), 0, "{never}");
    assert!(n(&never["missed"]) >= 3, "{never}");
    assert!(tasks_of(&c, "batch/prod/never").is_empty());
}

#[test]
fn a_finished_batch_job_runs_again_by_hand_under_its_own_name() {
    let c = Cluster::new(&["h1"], 36180, None);
    let key = "batch/prod/once";
    let jobs = write_jobs(
        &c,
        &[
            job(key, 2, &["sh", "-c", "exit 3"], json!({"service": false})),
            job("www/prod/web", 1, &["sleep", "600"], json!({})),
            // Due once a year: it runs only when asked.
            job(
                "batch/prod/yearly",
                1,
                &["true"],
                json!({"cron": {"schedule": "0 0 1 1 *"}}),
            ),
        ],
    );
    let ended = |c: &Cluster| {
        crate::common::wait_until("the batch job over", Duration::from_secs(20), || {
            pass(c, &jobs);
            let t = tasks_of(c, key);
            t.iter().all(|t| t["state"] == "FAILED").then_some(t)
        })
    };
    let first = ended(&c);
    assert!(first.iter().all(|t| t["run"] == 0 && t["exit"] == 3));
    // Over: further passes place nothing.
    pass(&c, &jobs);
    assert_eq!(tasks_of(&c, key), first);

    // Asked for twice before a pass, in two different seconds: one run, the first asked.
    let asked: Vec<Value> = (0..2)
        .map(|i| {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(1100));
            }
            let out = run(tool("job", &c.state()).args(["run", key]), b"");
            assert_eq!(code(&out), 0, "{}", stderr(&out));
            serde_json::from_str(stdout(&out).trim()).unwrap()
        })
        .collect();
    assert_eq!(asked[0]["requested"], asked[1]["requested"]);
    let again = ended(&c);
    let r = runs(&c, key);
    assert_eq!(
        (&r["run"], &r["manual"]),
        (&asked[0]["requested"], &json!(true))
    );
    assert_eq!(n(&r["runs"]), 1);
    for t in &again {
        assert_eq!((n(&t["incarnation"]), &t["run"]), (2, &r["run"]), "{t}");
    }
    assert_eq!(r["instances"].as_array().unwrap().len(), 2, "{r}");
    // The run before, from the history: when, and how each instance ended where.
    let out = run(
        tool("job", &c.state()).args(["runs", "--json", "--last", "3", key]),
        b"",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let with_last: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let [before] = &with_last["last"].as_array().unwrap()[..] else {
        panic!("one run before: {with_last}")
    };
    assert_eq!(before["run"], 0);
    assert!(before["started"].as_f64().unwrap() <= before["ended"].as_f64().unwrap());
    assert!(before["ended"].as_f64().unwrap() <= r["started"].as_f64().unwrap());
    assert_eq!(
        before["instances"],
        json!([{"instance":0,"host":"h1","state":"FAILED","exit":3},
               {"instance":1,"host":"h1","state":"FAILED","exit":3}])
    );

    // A cron job asked for by hand runs now, whatever its schedule.
    let out = run(
        tool("job", &c.state()).args(["run", "batch/prod/yearly"]),
        b"",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    pass(&c, &jobs);
    let yearly = runs(&c, "batch/prod/yearly");
    assert_eq!((n(&yearly["runs"]), &yearly["manual"]), (1, &json!(true)));
    assert_eq!(tasks_of(&c, "batch/prod/yearly").len(), 1);

    // A service has no runs, and a job the state lacks none either; nor, when the job
    // files are named, a job no longer in them: 65, nothing changed.
    let only_web = c.path("only-web.jsonl");
    let web_line = std::fs::read_to_string(&jobs)
        .unwrap()
        .lines()
        .find(|l| l.contains("www/prod/web"))
        .map(|l| format!("{l}\n"))
        .unwrap();
    std::fs::write(&only_web, web_line).unwrap();
    let only_web = only_web.to_str().unwrap();
    let before = snapshot(&c.state());
    for (what, key, files) in [
        ("is a service", "www/prod/web", None),
        ("is a service", "www/prod/web", Some(only_web)),
        ("no job", "www/prod/nope", None),
        (
            "removed from the job files",
            "batch/prod/yearly",
            Some(only_web),
        ),
    ] {
        let mut cmd = tool("job", &c.state());
        cmd.args(["run", key]);
        if let Some(files) = files {
            cmd.args(["--jobs", files]);
        }
        let out = run(&mut cmd, b"");
        assert_eq!(code(&out), 65, "{key}: {}", stderr(&out));
        assert!(stderr(&out).contains(what), "{}", stderr(&out));
    }
    assert_eq!(snapshot(&c.state()), before);
}

#[test]
fn a_rebuilt_state_keeps_the_run_that_goes_on() {
    let c = Cluster::new(&["h1"], 36200, None);
    let key = "batch/prod/nightly";
    let jobs = write_jobs(
        &c,
        &[job(
            key,
            1,
            &["sleep", "600"],
            json!({"cron": {"schedule": "0 0 1 1 *"}}),
        )],
    );
    pass(&c, &jobs);
    let out = run(tool("job", &c.state()).args(["run", key]), b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    pass(&c, &jobs);
    let before = runs(&c, key);
    let [t] = &tasks_of(&c, key)[..] else {
        panic!("one instance")
    };
    assert_eq!(
        (&t["run"], &t["state"]),
        (&before["run"], &json!("RUNNING"))
    );
    // The state lost, and the specs kept beside it: the hosts again, and the tasks (and
    // the specs they run) from their directories.
    for name in ["state", "state.journal", "state.epoch"] {
        let _ = std::fs::remove_file(c.path(name));
    }
    let spec = u64::from_str_radix(t["spec"].as_str().unwrap(), 16).unwrap();
    assert!(formic::specstore::is_kept(&c.state(), spec));
    std::fs::remove_dir_all(formic::specstore::dir(&c.state())).unwrap();
    let host = json!({"type": "host", "name": "h1", "cpus": 4, "ram_mb": 4096,
                      "disk_mb": 1000, "ports": [[36200, 36219]], "attrs": {"rack": "r1"}});
    let out = run(
        tool("offer", &c.state()).arg("add"),
        (host.to_string() + "\n").as_bytes(),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = run(tool("offer", &c.state()).arg("rebuild"), b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let after = runs(&c, key);
    assert_eq!(after["run"], before["run"], "{after}");
    let kept = formic::specstore::read(&c.state(), spec).expect("the spec kept again");
    assert_eq!(kept.key, key);
    // A pass neither stops the run going nor starts another.
    pass(&c, &jobs);
    let [again] = &tasks_of(&c, key)[..] else {
        panic!("one instance")
    };
    assert_eq!(
        (&again["run"], &again["state"], &again["incarnation"]),
        (&t["run"], &json!("RUNNING"), &t["incarnation"])
    );
}

// --- the history ---

/// `job history --json [ARGS]`: its lines.
pub(crate) fn history(c: &Cluster, args: &[&str]) -> Vec<Value> {
    let out = run(
        tool("job", &c.state())
            .args(["history", "--json"])
            .args(args),
        b"",
    );
    assert_eq!(code(&out), 0, "job history: {}", stderr(&out));
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// (task, from, to) of a task's lines, in order.
fn moves<'a>(lines: &'a [Value], task: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["task"] == task).collect()
}

#[test]
fn every_transition_is_in_the_history_once_in_order_with_its_reason() {
    let c = Cluster::new(&["h1", "h2"], 36220, None);
    let jobs = write_jobs(
        &c,
        &[
            // Up as soon as it runs: the drain may move it at once.
            job(
                "www/prod/web",
                1,
                &["sleep", "600"],
                json!({"sla": {"max_unavailable": 1, "healthy_for_s": 0}}),
            ),
            job(
                "batch/prod/once",
                1,
                &["sh", "-c", "exit 3"],
                json!({"service": false}),
            ),
        ],
    );
    // A follower from the start: it sees what the others see.
    let follower = tool("job", &c.state())
        .args(["history", "--json", "--follow", "www/prod/web"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    pass(&c, &jobs);
    crate::common::wait_until("the batch task over", Duration::from_secs(20), || {
        pass(&c, &jobs);
        (tasks_of(&c, "batch/prod/once")[0]["state"] == "FAILED").then_some(())
    });
    let web = &tasks_of(&c, "www/prod/web")[0];
    let first_host = web["host"].as_str().unwrap().to_string();
    let out = run(
        tool("offer", &c.state()).args(["drain", &first_host, "--reason", "disk swap"]),
        b"",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    crate::common::wait_until("web moved", Duration::from_secs(20), || {
        pass(&c, &jobs);
        let t = &tasks_of(&c, "www/prod/web")[0];
        (t["state"] == "RUNNING" && t["host"] != first_host.as_str()).then_some(())
    });

    let all = history(&c, &[]);
    // Transaction ids only grow, and each line says who made it.
    assert!(all.windows(2).all(|w| n(&w[0]["txid"]) <= n(&w[1]["txid"])));
    assert!(all
        .iter()
        .all(|l| l["by"].is_string() && l["user"].is_string()));
    // Each task's lines chain: every one starts where the one before ended, so none is
    // missing or there twice.
    for task in ["www/prod/web/0", "batch/prod/once/0"] {
        let m = moves(&all, task);
        assert!(m[0]["from"].is_null(), "{task} is new: {:?}", m[0]);
        for w in m.windows(2) {
            assert_eq!(w[0]["to"], w[1]["from"], "{task}: {w:?}");
        }
    }
    let once = moves(&all, "batch/prod/once/0");
    let last = once.last().unwrap();
    assert_eq!((&last["to"], &last["exit"]), (&json!("FAILED"), &json!(3)));
    assert_eq!(last["by"], "reap", "{last}");
    assert_eq!(once[0]["to"], "ASSIGNED");
    assert_eq!(once[0]["by"], "launch");
    // The web instance: placed, drained with its reason, placed again on the other host.
    let web = moves(&all, "www/prod/web/0");
    let states: Vec<&str> = web.iter().map(|l| l["to"].as_str().unwrap()).collect();
    assert!(
        web.iter().any(|l| l["healthy"] == true),
        "its health: {states:?}"
    );
    let drained = web.iter().position(|l| l["to"] == "DRAINING").unwrap();
    assert_eq!(web[drained]["host"], first_host.as_str());
    assert!(web[drained]["reason"].is_string(), "{}", web[drained]);
    let again = web[drained..]
        .iter()
        .find(|l| l["to"] == "ASSIGNED")
        .unwrap();
    assert_ne!(again["host"], first_host.as_str(), "{states:?}");
    assert_eq!(n(&again["incarnation"]), 2);
    // The host's drain, with its reason, before the instance's.
    let host = all
        .iter()
        .find(|l| l["host"] == first_host.as_str() && l["maintenance"] == "draining")
        .unwrap();
    assert_eq!(host["reason"], "disk swap");
    assert!(n(&host["txid"]) < n(&web[drained]["txid"]));

    // Filters: a job's tasks, a time range.
    assert_eq!(
        history(&c, &["www/prod/web"])
            .iter()
            .filter(|l| l["task"].is_string())
            .count(),
        web.len()
    );
    assert!(history(&c, &["--since", "1h", "batch/prod/once/0"]).len() == once.len());
    assert!(history(&c, &["--until", "1h"]).is_empty());
    // The follower printed the web instance's lines as they were made (it reads five
    // times a second, and writes out what it read each time).
    std::thread::sleep(Duration::from_millis(800));
    let pid = nix::unistd::Pid::from_raw(follower.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = follower.wait_with_output().unwrap();
    let followed: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(followed, history(&c, &["www/prod/web"]));
}

// --- job status ---

#[test]
fn job_status_says_what_runs_and_what_stays_pending_and_why() {
    let c = Cluster::new(&["h1"], 36240, None);
    let jobs = write_jobs(
        &c,
        &[
            job(
                "www/prod/web",
                2,
                &["sleep", "600"],
                json!({"resources": {"cpus": 0.1, "ram_mb": 16, "ports": ["http"]},
                       "announce": {"primary": "http", "path": "/formic/www/prod/web"}}),
            ),
            // More cpus than the host has: pending.
            job(
                "www/prod/big",
                1,
                &["sleep", "600"],
                json!({"resources": {"cpus": 8, "ram_mb": 16}}),
            ),
        ],
    );
    pass(&c, &jobs);
    // A survey: running, with no health check to fail, the instances are healthy.
    let out = run(&mut tool("reap", &c.state()), b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let status = |args: &[&str]| -> Vec<Value> {
        let jobs = jobs.to_str().unwrap();
        let out = run(
            tool("job", &c.state())
                .args(["status", "--json", "--jobs", jobs])
                .args(args),
            b"",
        );
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        stdout(&out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let all = status(&[]);
    let web = all.iter().find(|s| s["job"] == "www/prod/web").unwrap();
    assert_eq!(
        (
            &web["desired"],
            &web["running"],
            &web["placing"],
            &web["pending"]
        ),
        (&json!(2), &json!(2), &json!(0), &json!(0)),
        "{web}"
    );
    assert_eq!(web["specs"][web["spec"].as_str().unwrap()], 2, "{web}");
    let instances = web["instances"].as_array().unwrap();
    assert!(instances
        .iter()
        .all(|i| i["host"] == "h1" && i["uptime_s"].is_number()));
    // The serverset's members: each instance's endpoint, as announce publishes them.
    let ports: Vec<String> = tasks_of(&c, "www/prod/web")
        .iter()
        .map(|t| format!(":{}", t["ports"]["http"]))
        .collect();
    assert_eq!(web["serverset"], "/formic/www/prod/web", "{web}");
    let members = web["members"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{web}");
    for (m, port) in members.iter().zip(&ports) {
        assert!(m.as_str().unwrap().ends_with(port.as_str()), "{m} {port}");
    }
    let big = all.iter().find(|s| s["job"] == "www/prod/big").unwrap();
    assert_eq!(
        (&big["running"], &big["pending"]),
        (&json!(0), &json!(1)),
        "{big}"
    );
    assert_eq!(big["why_pending"], json!({"insufficient cpus": 1}), "{big}");
    // An instance killed is one the next pass places.
    let out = run(
        tool("reap", &c.state()).args(["kill", "www/prod/web/1"]),
        b"",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let web = &status(&["www/prod/web"])[0];
    assert_eq!(
        (&web["running"], &web["placing"]),
        (&json!(1), &json!(1)),
        "{web}"
    );
    assert_eq!(web["members"].as_array().unwrap().len(), 1, "{web}");
    let out = run(
        tool("job", &c.state()).args(["status", "--jobs", jobs.to_str().unwrap(), "www/prod/nope"]),
        b"",
    );
    assert_eq!(code(&out), 65, "{}", stderr(&out));
}
