//! `offer` as an operator uses it: the real binary on a real state file in a temporary
//! directory. Adding, updating and listing hosts; maintenance; removal with and without
//! tasks placed; exit statuses; and a corpus of malformed host records, each of which must
//! fail the whole batch with a message naming its line and leave the state byte for byte.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use formic::state::State;
use formic::task::{Job, Task, TaskState, NO_HOST};

use crate::common::{self, code, host_line, run, snapshot, stderr, stdout, tool};

// --- helpers ---

fn state_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("state")
}

/// Runs `offer ARGS` with `input` on stdin.
fn offer(state: &Path, args: &[&str], input: &[u8]) -> Output {
    run(tool("offer", state).args(args), input)
}

/// Runs `offer ARGS` and insists it succeeded; returns its stdout.
fn offer_ok(state: &Path, args: &[&str], input: &[u8]) -> String {
    let out = offer(state, args, input);
    assert_eq!(
        code(&out),
        0,
        "offer {args:?} failed: {}",
        stderr(&out).trim()
    );
    stdout(&out)
}

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// `offer hosts --json`, one JSON value per host, in name order.
fn hosts(state: &Path) -> Vec<Value> {
    lines(&offer_ok(state, &["hosts", "--json"], b""))
}

fn host(state: &Path, name: &str) -> Value {
    hosts(state)
        .into_iter()
        .find(|h| h["name"] == name)
        .unwrap_or_else(|| panic!("no host {name} in `offer hosts`"))
}

/// `offer` (the offers), one JSON value per offered host.
fn offers(state: &Path) -> Vec<Value> {
    lines(&offer_ok(state, &["--json"], b""))
}

fn offered_names(state: &Path) -> Vec<String> {
    offers(state)
        .iter()
        .map(|o| o["host"].as_str().unwrap().to_string())
        .collect()
}

fn add_hosts(state: &Path, names: &[&str]) {
    let input: String = names
        .iter()
        .map(|n| host_line(n, 16.0, 65536) + "\n")
        .collect();
    offer_ok(state, &["add"], input.as_bytes());
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Places one task of job www/prod/hello on `host` through the library, as launch would.
fn place_task(state: &Path, host: &str, instance: u32, st: TaskState, port: u16) {
    let mut s = State::open_writer(state).unwrap();
    s.write(|tx| {
        let job = tx.upsert(Job {
            announce: None,
            key: "www/prod/hello".into(),
            ports: vec!["http".into()],
            rollout: Default::default(),
            runs: Default::default(),
            counts: Default::default(),
        });
        let host_slot = tx
            .view()
            .hosts
            .find(&host.to_string())
            .expect("host exists");
        let mut t = Task::new(job, instance);
        t.host = host_slot;
        t.state = st;
        t.cpus = 500;
        t.ram_mb = 1024;
        t.disk_mb = 100;
        t.gpus = 1;
        t.ports[0] = port;
        tx.upsert(t);
        Ok(())
    })
    .unwrap();
}

fn set_task_state(state: &Path, instance: u32, st: TaskState) {
    let mut s = State::open_writer(state).unwrap();
    s.write(|tx| {
        let (slot, t) = tx
            .view()
            .tasks
            .iter()
            .find(|(_, t)| t.instance == instance)
            .map(|(s, t)| (s, t.clone()))
            .unwrap();
        let mut t = t;
        t.state = st;
        tx.set(slot, Some(t));
        Ok(())
    })
    .unwrap();
}

// --- add, update, list ---

const H1: &str = r#"{"type":"host","name":"h1","cpus":16,"ram_mb":65536,"disk_mb":500000,"gpus":2,"ports":[[32000,32999],[31000,31099]],"attrs":{"zone":"z1","rack":"r1"},"cpu_factor":1.5,"transport":"ssh"}"#;

#[test]
fn add_then_list_shows_capacity_attrs_ports_and_cpu_factor() {
    let dir = common::tempdir();
    let state = state_in(&dir);
    // Other record types pass through unchanged and in order, odd spacing, unicode and
    // key order included: a later tool in the pipe reads them as they were written.
    let others = [
        r#"{"type":"job","job":"www/prod/hello", "instances" : 3}"#,
        r#"{ "type" : "note", "text":"café ☕", "n":1.50}"#,
        r#"{"z":1,"type":"place","a":[1,2,{"b":null}]}"#,
    ];
    let input = format!(
        "{}\n{H1}\n{}\n{}\n{}\n",
        others[0],
        others[1],
        host_line("h2", 2.5, 4096),
        others[2]
    );
    let out = offer_ok(&state, &["add"], input.as_bytes());
    assert_eq!(
        out,
        format!("{}\n{}\n{}\n", others[0], others[1], others[2])
    );

    let all = hosts(&state);
    assert_eq!(all.len(), 2);
    let h1 = &all[0];
    assert_eq!(h1["name"], "h1");
    assert_eq!(h1["cpus"], 16.0);
    assert_eq!(h1["ram_mb"], 65536);
    assert_eq!(h1["disk_mb"], 500000);
    assert_eq!(h1["gpus"], 2);
    assert_eq!(h1["ports"], json!([[31000, 31099], [32000, 32999]]));
    assert_eq!(h1["attrs"], json!({"rack":"r1","zone":"z1"}));
    assert_eq!(h1["cpu_factor"], 1.5);
    assert_eq!(h1["transport"], "ssh");
    assert_eq!(h1["tasks"], 0);
    assert_eq!(h1["maintenance"], json!({"state":"none"}));
    assert_eq!(
        h1["free"],
        json!({"cpus":16.0,"ram_mb":65536,"disk_mb":500000,"gpus":2,
               "ports":[[31000,31099],[32000,32999]]})
    );
    let h2 = &all[1];
    assert_eq!(
        (h2["name"].as_str(), h2["cpus"].as_f64()),
        (Some("h2"), Some(2.5))
    );
    assert_eq!(h2["cpu_factor"], 1.0, "cpu_factor defaults to 1");
    assert_eq!(h2["transport"], "local", "transport defaults to local");
    assert_eq!(h2["gpus"], 0);

    let offers = offers(&state);
    assert_eq!(
        offers[0],
        json!({"type":"offer","host":"h1","cpus":16.0,"ram_mb":65536,"disk_mb":500000,
               "gpus":2,"ports":[[31000,31099],[32000,32999]],
               "attrs":{"rack":"r1","zone":"z1"},"cpu_factor":1.5,"maintenance":"none"})
    );
    assert_eq!(offers[1]["host"], "h2");
    assert_eq!(offers[1]["cpus"], 2.5);
    assert_eq!(offers[1]["ram_mb"], 4096);
    assert_eq!(offers.len(), 2);

    // `offer hosts NAME` lists only that host.
    let only = lines(&offer_ok(&state, &["hosts", "--json", "h2"], b""));
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["name"], "h2");
}

/// A host dedicated to several roles or jobs keeps its list: `offer hosts` and the offers
/// give it back as a list, and pack reads it from them.
#[test]
fn a_host_dedicated_to_a_list_keeps_it_and_offers_carry_it() {
    let dir = common::tempdir();
    let state = state_in(&dir);
    let line = r#"{"type":"host","name":"d1","cpus":8,"ram_mb":4096,"attrs":{"dedicated":["www/web","db/store","www/web"],"rack":"r1"}}"#;
    offer_ok(&state, &["add"], format!("{line}\n").as_bytes());
    // Sorted, each value once.
    let want = json!({"dedicated": ["db/store", "www/web"], "rack": "r1"});
    assert_eq!(host(&state, "d1")["attrs"], want);
    assert_eq!(offers(&state)[0]["attrs"], want);
    // pack reads the list from the offers: the job db/store goes there, www/api does not.
    let jobs = dir.path().join("jobs.jsonl");
    let job = |key: &str| {
        json!({"job": key, "instances": 1, "cmd": ["sleep", "1"],
               "resources": {"cpus": 1, "ram_mb": 10}})
        .to_string()
    };
    std::fs::write(
        &jobs,
        format!("{}\n{}\n", job("db/prod/store"), job("www/prod/api")),
    )
    .unwrap();
    let out = run(
        Command::new(common::bin("pack")).arg(&jobs),
        offer_ok(&state, &["--json"], b"").as_bytes(),
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let recs = lines(&stdout(&out));
    let placed: Vec<&Value> = recs.iter().filter(|r| r["type"] == "place").collect();
    assert_eq!(placed.len(), 1, "{recs:?}");
    assert_eq!(
        (&placed[0]["job"], &placed[0]["host"]),
        (&json!("db/prod/store"), &json!("d1"))
    );
    let pending: Vec<&Value> = recs.iter().filter(|r| r["type"] == "pending").collect();
    assert_eq!(pending[0]["job"], "www/prod/api", "{recs:?}");
    assert_eq!(pending[0]["reasons"], json!({"dedicated": 1}), "{recs:?}");
    // A single value stays a string.
    let line =
        r#"{"type":"host","name":"d1","cpus":8,"ram_mb":4096,"attrs":{"dedicated":"*/batch"}}"#;
    offer_ok(&state, &["add"], format!("{line}\n").as_bytes());
    assert_eq!(offers(&state)[0]["attrs"], json!({"dedicated": "*/batch"}));
}

#[test]
fn update_replaces_capacity_and_keeps_maintenance() {
    let dir = common::tempdir();
    let state = state_in(&dir);
    add_hosts(&state, &["h1", "h2"]);
    offer_ok(&state, &["schedule", "h1", "--reason", "disk swap"], b"");
    let before = host(&state, "h1")["maintenance"].clone();
    assert_eq!(before["state"], "scheduled");

    let update = r#"{"type":"host","name":"h1","cpus":8,"ram_mb":1024,"ports":[[40000,40010]],"attrs":{"rack":"r7"},"cpu_factor":0.5}"#;
    offer_ok(&state, &["add"], format!("{update}\n").as_bytes());
    let h1 = host(&state, "h1");
    assert_eq!(h1["cpus"], 8.0);
    assert_eq!(h1["ram_mb"], 1024);
    assert_eq!(h1["disk_mb"], 0);
    assert_eq!(h1["ports"], json!([[40000, 40010]]));
    assert_eq!(
        h1["attrs"],
        json!({"rack":"r7"}),
        "attributes are replaced, not merged"
    );
    assert_eq!(h1["cpu_factor"], 0.5);
    assert_eq!(
        h1["maintenance"], before,
        "an inventory update keeps maintenance"
    );
    assert_eq!(hosts(&state).len(), 2, "an update adds no host");
    let o = offers(&state);
    assert_eq!(o[0]["host"], "h1");
    assert_eq!(o[0]["cpus"], 8.0);
    assert_eq!(o[0]["maintenance"], "scheduled");

    // A drained host stays drained (and not offered) through an update.
    offer_ok(&state, &["drain", "h1"], b"");
    offer_ok(&state, &["add"], format!("{update}\n").as_bytes());
    assert_eq!(host(&state, "h1")["maintenance"]["state"], "drained");
    assert_eq!(offered_names(&state), ["h2"]);
}

#[test]
fn probe_registers_this_machine() {
    let dir = common::tempdir();
    let state = state_in(&dir);
    offer_ok(
        &state,
        &[
            "add",
            "--probe",
            "me.local",
            "--attr",
            "rack=r9",
            "--ports",
            "32000-32100",
        ],
        b"",
    );
    let nproc = Command::new("nproc").output().expect("running nproc");
    let cores: f64 = String::from_utf8_lossy(&nproc.stdout)
        .trim()
        .parse()
        .unwrap();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    let h = host(&state, "me.local");
    assert_eq!(h["cpus"], cores);
    assert_eq!(h["ram_mb"], kb / 1024);
    assert!(h["disk_mb"].as_u64().unwrap() > 0, "{h}");
    assert_eq!(h["attrs"], json!({"rack":"r9"}));
    assert_eq!(h["ports"], json!([[32000, 32100]]));
    assert_eq!(h["transport"], "local");

    let snap = snapshot(&state);
    for args in [
        &["add", "--probe", "bad name"][..],
        &["add", "--probe", "p2", "--ports", "32000"],
        &["add", "--probe", "p2", "--attr", "noequals"],
    ] {
        let out = offer(&state, args, b"");
        assert_eq!(code(&out), 65, "{args:?}: {}", stderr(&out));
        assert_eq!(snapshot(&state), snap, "{args:?} changed the state");
    }
}

// --- maintenance ---

#[test]
fn schedule_drain_undrain() {
    let dir = common::tempdir();
    let state = state_in(&dir);
    add_hosts(&state, &["h1", "h2"]);

    let t0 = unix_now();
    let out = offer_ok(&state, &["schedule", "h1", "--reason", "kernel 6.9"], b"");
    let t1 = unix_now();
    let rec = &lines(&out)[0];
    assert_eq!(rec["type"], "maintenance");
    assert_eq!(rec["host"], "h1");
    assert_eq!(rec["state"], "scheduled");
    let o = offers(&state);
    assert_eq!(o.len(), 2, "a scheduled host is still offered");
    assert_eq!(
        (o[0]["host"].as_str(), o[0]["maintenance"].as_str()),
        (Some("h1"), Some("scheduled"))
    );
    assert_eq!(o[1]["maintenance"], "none");
    let m = &host(&state, "h1")["maintenance"];
    assert_eq!(m["state"], "scheduled");
    assert_eq!(m["reason"], "kernel 6.9");
    assert_eq!(m["owner"], "tester", "owner defaults to $USER");
    let since = m["since"].as_f64().unwrap();
    assert!(
        t0 - 1.0 <= since && since <= t1 + 1.0,
        "since {since} not in [{t0}, {t1}]"
    );

    let out = offer_ok(
        &state,
        &["drain", "h1", "--reason", "rma", "--owner", "alice"],
        b"",
    );
    assert_eq!(
        lines(&out)[0]["state"],
        "drained",
        "a drain with no tasks is complete"
    );
    assert_eq!(
        offered_names(&state),
        ["h2"],
        "a drained host is not offered"
    );
    let m = &host(&state, "h1")["maintenance"];
    assert_eq!(m["state"], "drained");
    assert_eq!(
        (m["reason"].as_str(), m["owner"].as_str()),
        (Some("rma"), Some("alice"))
    );

    // A drain keeps its deadline: a duration from now, a time, or never.
    let t = unix_now();
    let out = offer_ok(
        &state,
        &["drain", "h1", "--owner", "alice", "--deadline", "2h"],
        b"",
    );
    let deadline = lines(&out)[0]["deadline"].as_f64();
    assert!(
        deadline.is_some_and(|d| (d - t - 7_200.0).abs() < 60.0),
        "{out:?}"
    );
    for (when, want) in [
        ("never", None),
        ("2026-01-01T00:00:00Z", Some(1_767_225_600.0)),
    ] {
        let out = offer_ok(
            &state,
            &["drain", "h1", "--owner", "alice", "--deadline", when],
            b"",
        );
        assert_eq!(lines(&out)[0]["deadline"].as_f64(), want, "{when}");
    }
    let out = run(
        tool("offer", &state).args(["drain", "h1", "--deadline", "soon"]),
        b"",
    );
    assert_eq!(code(&out), 65, "{}", stderr(&out));
    assert!(stderr(&out).contains("--deadline"), "{}", stderr(&out));

    // FORMIC_OWNER stands in for --owner (cron sets it once).
    let out = run(
        tool("offer", &state)
            .args(["drain", "h2", "--reason", "cron"])
            .env("FORMIC_OWNER", "robot"),
        b"",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(host(&state, "h2")["maintenance"]["owner"], "robot");
    assert!(offers(&state).is_empty());

    // A dry run without the job files is a usage error, and drains nothing.
    let out = run(
        tool("offer", &state).args(["drain", "h1", "h2", "--dry-run"]),
        b"",
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert_eq!(
        host(&state, "h2")["maintenance"]["owner"],
        "robot",
        "unchanged"
    );

    // A drain is ended by its owner, or with --force; a refusal changes nothing.
    let out = run(tool("offer", &state).args(["undrain", "h1", "h2"]), b"");
    assert_eq!(code(&out), 77, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("h1") && err.contains("alice") && err.contains("--force"),
        "{err}"
    );
    assert!(offers(&state).is_empty(), "nothing undrained");
    offer_ok(&state, &["undrain", "h1", "--owner", "alice"], b"");
    offer_ok(&state, &["undrain", "h2", "--force"], b"");
    let o = offers(&state);
    assert_eq!(o.len(), 2);
    assert!(o.iter().all(|o| o["maintenance"] == "none"), "{o:?}");
    assert_eq!(host(&state, "h1")["maintenance"], json!({"state":"none"}));
}

#[test]
fn maintenance_of_an_unknown_host_changes_nothing() {
    let dir = common::tempdir();
    let state = state_in(&dir);
    add_hosts(&state, &["h1", "h2"]);
    offer_ok(&state, &["schedule", "h2"], b"");
    let snap = snapshot(&state);
    for verb in ["schedule", "drain", "undrain"] {
        // The known host is named first: it must not be changed either.
        let out = offer(&state, &[verb, "h1", "nope", "h2"], b"");
        assert_eq!(code(&out), 65, "{verb}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("\"nope\""),
            "{verb}: {}",
            stderr(&out)
        );
        assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
        assert!(stdout(&out).is_empty(), "{verb} printed {}", stdout(&out));
        assert_eq!(snapshot(&state), snap, "{verb} changed the state");
    }
    assert_eq!(host(&state, "h1")["maintenance"]["state"], "none");
    assert_eq!(host(&state, "h2")["maintenance"]["state"], "scheduled");
}

#[test]
fn maintenance_text_that_cannot_be_stored_is_refused_and_the_state_stays_usable() {
    let dir = common::tempdir();
    let state = state_in(&dir);
    add_hosts(&state, &["h1"]);
    let snap = snapshot(&state);
    let long_utf8 = "é".repeat(150); // 300 bytes
    let long_ascii = "x".repeat(300);
    for args in [
        vec!["drain", "h1", "--reason", long_utf8.as_str()],
        vec!["schedule", "h1", "--reason", long_ascii.as_str()],
        vec!["drain", "h1", "--owner", long_utf8.as_str()],
        vec!["drain", "h1", "--reason", "two\nlines"],
    ] {
        let out = offer(&state, &args, b"");
        assert_eq!(code(&out), 65, "{args:?}: {}", stderr(&out));
        assert_eq!(snapshot(&state), snap, "{args:?} changed the state");
        // Whatever happened, the state must still open.
        assert_eq!(host(&state, "h1")["maintenance"]["state"], "none");
    }
    // A long text that fits is kept whole, not cut.
    let fits = "ü".repeat(100);
    offer_ok(&state, &["drain", "h1", "--reason", &fits], b"");
    assert_eq!(host(&state, "h1")["maintenance"]["reason"], fits.as_str());
}

// --- remove ---

#[test]
fn remove_is_all_or_nothing() {
    let dir = common::tempdir();
    let state = state_in(&dir);
    add_hosts(&state, &["h1", "h2", "h3"]);
    let snap = snapshot(&state);
    let out = offer(&state, &["remove", "h1", "nope", "h3"], b"");
    assert_eq!(code(&out), 65, "{}", stderr(&out));
    assert!(stderr(&out).contains("\"nope\""), "{}", stderr(&out));
    assert_eq!(snapshot(&state), snap, "a failed remove changed the state");

    offer_ok(&state, &["remove", "h1", "h3"], b"");
    let names: Vec<_> = hosts(&state).iter().map(|h| h["name"].clone()).collect();
    assert_eq!(names, [json!("h2")]);
    assert_eq!(offered_names(&state), ["h2"]);
    // The name can be added again.
    add_hosts(&state, &["h1"]);
    assert_eq!(offered_names(&state), ["h1", "h2"]);
}

#[test]
fn remove_refuses_while_tasks_hold_reservations_and_force_loses_them() {
    let dir = common::tempdir();
    let state = state_in(&dir);
    add_hosts(&state, &["h1", "h2"]);
    place_task(&state, "h1", 0, TaskState::Running, 31005);
    let snap = snapshot(&state);

    let out = offer(&state, &["remove", "h1"], b"");
    let err = stderr(&out);
    assert_eq!(code(&out), 65, "{err}");
    assert!(err.contains("h1"), "the message names the host: {err}");
    assert!(
        err.contains("www/prod/hello/0"),
        "the message names the task: {err}"
    );
    assert!(
        err.contains("--force"),
        "the message says how to go on: {err}"
    );
    assert_eq!(snapshot(&state), snap, "a refused remove changed the state");

    // Naming a free host alongside changes nothing either.
    let out = offer(&state, &["remove", "h2", "h1"], b"");
    assert_eq!(code(&out), 65, "{}", stderr(&out));
    assert_eq!(snapshot(&state), snap);

    offer_ok(&state, &["remove", "--force", "h1"], b"");
    assert_eq!(offered_names(&state), ["h2"]);
    let s = State::open(&state).unwrap();
    let tasks: Vec<_> = s.view().tasks.iter().map(|(_, t)| t.clone()).collect();
    assert_eq!(tasks.len(), 1, "the task record is kept");
    assert_eq!(tasks[0].state, TaskState::Lost);
    assert_eq!(tasks[0].host, NO_HOST);
    // The task no longer weighs on the host that takes its old slot.
    add_hosts(&state, &["h3"]);
    let h3 = host(&state, "h3");
    assert_eq!(
        (h3["tasks"].as_u64(), h3["free"]["cpus"].as_f64()),
        (Some(0), Some(16.0))
    );
}

#[test]
fn offers_subtract_reservations() {
    let dir = common::tempdir();
    let state = state_in(&dir);
    let h = r#"{"type":"host","name":"h1","cpus":16,"ram_mb":65536,"disk_mb":1000,"gpus":2,"ports":[[31000,31999]]}"#;
    offer_ok(&state, &["add"], format!("{h}\n").as_bytes());
    place_task(&state, "h1", 0, TaskState::Running, 31005);
    // A finished task holds nothing.
    place_task(&state, "h1", 1, TaskState::Finished, 31006);

    let o = offers(&state);
    assert_eq!(o.len(), 1);
    assert_eq!(o[0]["cpus"], 15.5);
    assert_eq!(o[0]["ram_mb"], 65536 - 1024);
    assert_eq!(o[0]["disk_mb"], 900);
    assert_eq!(o[0]["gpus"], 1);
    assert_eq!(o[0]["ports"], json!([[31000, 31004], [31006, 31999]]));
    let h1 = host(&state, "h1");
    assert_eq!(h1["tasks"], 1);
    assert_eq!(h1["cpus"], 16.0, "capacity is unchanged");
    assert_eq!(h1["free"]["cpus"], 15.5);
    assert_eq!(h1["free"]["ports"], json!([[31000, 31004], [31006, 31999]]));

    // The reservation is freed when the task ends.
    set_task_state(&state, 0, TaskState::Killed);
    let o = offers(&state);
    assert_eq!(
        (o[0]["cpus"].as_f64(), &o[0]["ports"]),
        (Some(16.0), &json!([[31000, 31999]]))
    );
}

/// `offer hosts --summary` adds up what `offer hosts` lists, for the cluster and per value
/// of each attribute asked: capacity, reserved (held by live tasks) and free, hosts offered
/// or not, and what the hosts offered have free.
#[test]
fn a_summary_adds_up_the_hosts_in_all_and_by_zone_and_rack() {
    let dir = common::tempdir();
    let state = state_in(&dir);
    let host = |name: &str, cpus: u32, gpus: u32, attrs: &str| {
        format!(
            r#"{{"type":"host","name":"{name}","cpus":{cpus},"ram_mb":{},"disk_mb":1000,"gpus":{gpus},"ports":[[31000,31999]],"attrs":{{{attrs}}}}}"#,
            cpus * 4096
        ) + "\n"
    };
    let input = host("h1", 16, 2, r#""zone":"z1","rack":"r1""#)
        + &host("h2", 32, 0, r#""zone":"z1","rack":"r2""#)
        + &host("h3", 8, 0, r#""zone":"z2""#);
    offer_ok(&state, &["add"], input.as_bytes());
    place_task(&state, "h1", 0, TaskState::Running, 31005);
    place_task(&state, "h1", 1, TaskState::Finished, 31006);
    offer_ok(&state, &["drain", "h3", "--reason", "disk"], b"");

    let summary = lines(&offer_ok(&state, &["hosts", "--summary"], b""));
    let scopes: Vec<(Value, Value)> = summary
        .iter()
        .map(|l| (l["attr"].clone(), l["value"].clone()))
        .collect();
    assert_eq!(
        scopes,
        [
            (Value::Null, Value::Null),
            (json!("zone"), json!("z1")),
            (json!("zone"), json!("z2")),
            (json!("rack"), json!("r1")),
            (json!("rack"), json!("r2")),
            (json!("rack"), Value::Null),
        ],
        "the cluster, then zones, then racks; hosts without a rack last"
    );
    let cluster = &summary[0];
    assert_eq!(
        (&cluster["hosts"], &cluster["offered"], &cluster["tasks"]),
        (&json!(3), &json!(2), &json!(1))
    );
    assert_eq!(cluster["maintenance"], json!({"none": 2, "drained": 1}));
    assert_eq!(cluster["liveness"], json!({"up": 3}));
    // The one live task holds 0.5 cores, 1 GiB, 100 MB of disk and a GPU on h1.
    assert_eq!(
        cluster["capacity"],
        json!({"cpus": 56.0, "ram_mb": 56 * 4096, "disk_mb": 3000, "gpus": 2})
    );
    assert_eq!(
        cluster["reserved"],
        json!({"cpus": 0.5, "ram_mb": 1024, "disk_mb": 100, "gpus": 1})
    );
    assert_eq!(
        cluster["free"],
        json!({"cpus": 55.5, "ram_mb": 56 * 4096 - 1024, "disk_mb": 2900, "gpus": 1})
    );
    // h3 is drained: not offered, and its room is not the next pass's.
    assert_eq!(
        cluster["offered_free"],
        json!({"cpus": 47.5, "ram_mb": 48 * 4096 - 1024, "disk_mb": 1900, "gpus": 1})
    );
    // Each attribute's values add up to the cluster, and agree with `offer hosts`.
    let listed = hosts(&state);
    for attr in ["zone", "rack"] {
        let of_attr: Vec<&Value> = summary.iter().filter(|l| l["attr"] == attr).collect();
        let sum = |field: &str, r: &str| -> f64 {
            of_attr.iter().map(|l| l[field][r].as_f64().unwrap()).sum()
        };
        for r in ["cpus", "ram_mb", "disk_mb", "gpus"] {
            for field in ["capacity", "reserved", "free", "offered_free"] {
                assert_eq!(
                    sum(field, r),
                    cluster[field][r].as_f64().unwrap(),
                    "{attr} {field} {r}"
                );
            }
            let free: f64 = listed.iter().map(|h| h["free"][r].as_f64().unwrap()).sum();
            assert_eq!(free, cluster["free"][r].as_f64().unwrap(), "{r}");
        }
    }
    let z1 = &summary[1];
    assert_eq!((&z1["hosts"], &z1["offered"]), (&json!(2), &json!(2)));
    assert_eq!(z1["free"]["cpus"], 47.5);

    // Only the hosts named, by the attributes asked (none has `row`); --by needs --summary.
    let only = lines(&offer_ok(
        &state,
        &["hosts", "--summary", "--by", "row,zone", "h2", "h3"],
        b"",
    ));
    assert_eq!(only.len(), 3, "{only:?}");
    assert_eq!(only[0]["hosts"], 2);
    assert_eq!(only[0]["capacity"]["cpus"], 40.0);
    assert_eq!(
        (&only[1]["attr"], &only[2]["value"]),
        (&json!("zone"), &json!("z2"))
    );
    assert_eq!(code(&offer(&state, &["hosts", "--by", "zone"], b"")), 2);
}

#[test]
fn drain_with_a_running_task_is_draining_until_it_ends() {
    let dir = common::tempdir();
    let state = state_in(&dir);
    add_hosts(&state, &["h1", "h2"]);
    place_task(&state, "h1", 0, TaskState::Running, 31005);
    let out = offer_ok(&state, &["drain", "h1", "--reason", "rma"], b"");
    let rec = &lines(&out)[0];
    assert_eq!(
        (rec["state"].as_str(), rec["tasks"].as_u64()),
        (Some("draining"), Some(1))
    );
    assert_eq!(
        offered_names(&state),
        ["h2"],
        "a draining host is not offered"
    );
    let h1 = host(&state, "h1");
    assert_eq!(h1["maintenance"]["state"], "draining");
    assert_eq!(h1["tasks"], 1);

    // Once its last task ends, the host shows as drained, even before a writer records it.
    set_task_state(&state, 0, TaskState::Killed);
    assert_eq!(host(&state, "h1")["maintenance"]["state"], "drained");
    assert_eq!(offered_names(&state), ["h2"]);
}

#[test]
fn schedule_refuses_a_draining_or_drained_host_and_changes_nothing() {
    // Scheduling is the first step of a maintenance; a draining or drained host is past it.
    // `offer schedule` used to set such a host back to scheduled, so it was offered again
    // and its drain ended without anyone saying so. A drain ends only when asked to
    // (`offer undrain`), as with Aurora's end_maintenance or Nomad's `node drain -disable`.
    let dir = common::tempdir();
    let state = state_in(&dir);
    add_hosts(&state, &["h1", "h2", "h3"]);
    place_task(&state, "h2", 0, TaskState::Running, 31005);
    offer_ok(&state, &["drain", "h1", "h2", "--reason", "rma"], b"");
    let snap = snapshot(&state);
    for (named, mode) in [("h1", "drained"), ("h2", "draining")] {
        // h3 could be scheduled, but the batch is all or nothing.
        let out = offer(
            &state,
            &["schedule", "h3", named, "--reason", "kernel"],
            b"",
        );
        let err = stderr(&out);
        assert_eq!(code(&out), 65, "schedule {named}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("offer: "), "{err}");
        for want in [named, mode, "offer undrain"] {
            assert!(err.contains(want), "want {want:?} in: {err}");
        }
        assert!(stdout(&out).is_empty(), "{}", stdout(&out));
        assert_eq!(snapshot(&state), snap, "schedule {named} changed the state");
    }
    assert_eq!(offered_names(&state), ["h3"]);
    assert_eq!(host(&state, "h3")["maintenance"]["state"], "none");
    // Once its drain is ended, the host can be scheduled.
    offer_ok(&state, &["undrain", "h1"], b"");
    offer_ok(&state, &["schedule", "h1", "--reason", "kernel"], b"");
    assert_eq!(host(&state, "h1")["maintenance"]["state"], "scheduled");
}

// --- exit statuses and files ---

#[test]
fn usage_errors_exit_2() {
    let dir = common::tempdir();
    let state = state_in(&dir);
    // One line that names what is wrong: the unknown word, or every missing argument.
    for (args, names) in [
        (&["frobnicate"][..], &["'frobnicate'"][..]),
        (&["remove"], &["<HOST>"]),
        (&["drain"], &["<HOST>"]),
        (&["schedule"], &["<HOST>"]),
        (&["add", "--attr", "rack=r1"], &["--probe <NAME>"]),
        (&["hosts", "--no-such-flag"], &["'--no-such-flag'"]),
    ] {
        let out = offer(&state, args, b"");
        let err = stderr(&out);
        assert_eq!(code(&out), 2, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        for name in names {
            assert!(err.contains(name), "{args:?} does not name {name}: {err}");
        }
        assert!(stdout(&out).is_empty());
    }
    assert!(!state.exists(), "a usage error created the state");
    // --help is not an error, and it documents the exit statuses.
    let out = offer(&state, &["--help"], b"");
    assert_eq!(code(&out), 0);
    assert!(stdout(&out).contains("74  I/O error"), "{}", stdout(&out));
}

#[test]
fn reading_a_missing_state_is_an_io_error_naming_it() {
    let dir = common::tempdir();
    let state = dir.path().join("nowhere/state");
    for args in [&["hosts"][..], &[]] {
        let out = offer(&state, args, b"");
        assert_eq!(code(&out), 74, "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(&state.display().to_string()), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(stdout(&out).is_empty());
    }
    assert!(
        !dir.path().join("nowhere").exists(),
        "a reader created files"
    );
}

#[test]
fn closed_stdout_ends_quietly() {
    let dir = common::tempdir();
    let state = state_in(&dir);
    // Far more output than a pipe holds, so the tool is still writing when we close it.
    let input: String = (0..2000)
        .map(|i| host_line(&format!("h{i:04}"), 4.0, 1024) + "\n")
        .collect();
    offer_ok(&state, &["add"], input.as_bytes());
    let passthrough = r#"{"type":"note","text":"pass me along, please"}"#.to_string() + "\n";
    let notes = passthrough.repeat(5000);
    for (args, stdin) in [
        (&[][..], &b""[..]),
        (&["hosts"][..], &b""[..]),
        (&["add"][..], notes.as_bytes()),
    ] {
        let mut cmd = tool("offer", &state);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut stdin_pipe = child.stdin.take().unwrap();
        let input = stdin.to_vec();
        let feeder = std::thread::spawn(move || {
            let _ = stdin_pipe.write_all(&input);
        });
        let mut out = child.stdout.take().unwrap();
        let mut first = [0u8; 10];
        out.read_exact(&mut first).unwrap();
        assert_eq!(&first[..1], b"{");
        drop(out); // `| head -c 10`
        let done = common::wait_output(child, common::TIMEOUT);
        feeder.join().unwrap();
        assert_eq!(code(&done), 0, "offer {args:?}: {}", stderr(&done));
        assert!(
            stderr(&done).is_empty(),
            "offer {args:?} printed: {}",
            stderr(&done)
        );
    }
}

/// Runs offer with its stdout on a terminal; returns what it printed there.
fn offer_on_tty(state: &Path, args: &[&str]) -> String {
    let out = common::run_on_tty(tool("offer", state).args(args));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    stdout(&out)
}

#[test]
fn json_flag_forces_records_on_a_terminal() {
    let dir = common::tempdir();
    let state = state_in(&dir);
    add_hosts(&state, &["h1"]);
    let table = offer_on_tty(&state, &[]);
    assert!(
        table.starts_with("HOST"),
        "a terminal gets a table: {table:?}"
    );
    assert!(table.contains("h1"), "{table:?}");
    let table = offer_on_tty(&state, &["hosts"]);
    assert!(table.starts_with("HOST"), "{table:?}");
    for args in [&["--json"][..], &["hosts", "--json"]] {
        let text = offer_on_tty(&state, args);
        let recs = lines(&text);
        assert_eq!(recs.len(), 1, "{text:?}");
        assert!(
            recs[0]["type"] == "offer" || recs[0]["type"] == "host",
            "{text:?}"
        );
    }
}

#[test]
fn state_files_are_not_world_accessible() {
    let dir = common::tempdir();
    let state = dir.path().join("a/b/state");
    // With no umask at all, only the modes the tool asks for remain.
    let mut cmd = tool("offer", &state);
    cmd.arg("add");
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::stat::umask(nix::sys::stat::Mode::empty());
            Ok(())
        });
    }
    let out = run(
        &mut cmd,
        format!("{}\n", host_line("h1", 1.0, 1)).as_bytes(),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    for suffix in ["", ".journal", ".lock", ".history"] {
        let p = PathBuf::from(format!("{}{suffix}", state.display()));
        assert_eq!(mode(&p), 0o640, "{}", p.display());
    }
    // Directories may be passed through (a task running as another user reaches its
    // sandbox under run/ beside the state) but not listed or written by others.
    for d in [dir.path().join("a"), dir.path().join("a/b")] {
        assert_eq!(mode(&d), 0o711, "{}", d.display());
    }
    let names: Vec<_> = std::fs::read_dir(dir.path().join("a/b"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 4, "stray files: {names:?}");
}

// --- bad input ---

/// A state holding h1 and h2, and its bytes.
fn seeded(dir: &tempfile::TempDir) -> (PathBuf, Vec<(PathBuf, Vec<u8>)>) {
    let state = state_in(dir);
    add_hosts(&state, &["h1", "h2"]);
    offer_ok(&state, &["drain", "h2"], b"");
    let snap = snapshot(&state);
    (state, snap)
}

fn host_with(fields: &str) -> String {
    format!(r#"{{"type":"host","name":"bad","cpus":4,"ram_mb":1024,{fields}}}"#)
}

#[rustfmt::skip]
fn bad_corpus() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let h = |fields: &str| host_with(fields).into_bytes();
    let attrs = |n: usize, len: usize| {
        let kv: Vec<String> = (0..n)
            .map(|i| format!(r#""k{i}":"{}""#, "v".repeat(len)))
            .collect();
        format!(r#""attrs":{{{}}}"#, kv.join(","))
    };
    let many_ranges: Vec<String> = (0..17)
        .map(|i| format!("[{},{}]", 1000 + 10 * i, 1005 + 10 * i))
        .collect();
    let s = |x: &str| x.as_bytes().to_vec();
    vec![
        ("bad JSON", s(r#"{"type":"host","name":"bad","#), "not valid JSON"),
        ("trailing garbage", s(r#"{"type":"host","name":"bad"} x"#), "not valid JSON"),
        ("single quotes", s("{'type':'host'}"), "not valid JSON"),
        ("array", s(r#"[{"type":"host"}]"#), "expected a JSON object"),
        ("string", s(r#""host""#), "expected a JSON object"),
        ("number", s("42"), "expected a JSON object"),
        ("null", s("null"), "expected a JSON object"),
        ("missing type", s(r#"{"name":"bad","cpus":1,"ram_mb":1}"#), "no \"type\""),
        ("type not a string", s(r#"{"type":7,"name":"bad"}"#), "\"type\" must be a string"),
        ("missing name", s(r#"{"type":"host","cpus":1,"ram_mb":1}"#), "\"name\" is missing"),
        ("missing cpus", s(r#"{"type":"host","name":"bad","ram_mb":1}"#), "\"cpus\" is missing"),
        ("missing ram_mb", s(r#"{"type":"host","name":"bad","cpus":1}"#), "\"ram_mb\" is missing"),
        ("name a number", s(r#"{"type":"host","name":7,"cpus":1,"ram_mb":1}"#), "\"name\""),
        ("name an array", s(r#"{"type":"host","name":["a"],"cpus":1,"ram_mb":1}"#), "\"name\""),
        ("cpus a string", s(r#"{"type":"host","name":"bad","cpus":"16","ram_mb":1}"#), "\"cpus\""),
        ("cpus a bool", s(r#"{"type":"host","name":"bad","cpus":true,"ram_mb":1}"#), "\"cpus\""),
        ("ram_mb a string", s(r#"{"type":"host","name":"bad","cpus":1,"ram_mb":"1024"}"#), "\"ram_mb\""),
        ("ram_mb fractional", s(r#"{"type":"host","name":"bad","cpus":1,"ram_mb":1.5}"#), "\"ram_mb\""),
        ("disk_mb a string", h(r#""disk_mb":"big""#), "\"disk_mb\""),
        ("disk_mb an object", h(r#""disk_mb":{}"#), "\"disk_mb\""),
        ("gpus a bool", h(r#""gpus":true"#), "\"gpus\""),
        ("gpus fractional", h(r#""gpus":0.5"#), "\"gpus\""),
        ("ports a string", h(r#""ports":"31000-31999""#), "\"ports\""),
        ("ports flat", h(r#""ports":[31000,31999]"#), "\"ports\""),
        ("ports one bound", h(r#""ports":[[31000]]"#), "\"ports\""),
        ("ports three bounds", h(r#""ports":[[1,2,3]]"#), "\"ports\""),
        ("ports strings", h(r#""ports":[["1","2"]]"#), "\"ports\""),
        ("ports fractional", h(r#""ports":[[1.5,20]]"#), "\"ports\""),
        ("attrs an array", h(r#""attrs":["rack"]"#), "\"attrs\""),
        ("attr value a number", h(r#""attrs":{"rack":1}"#), "\"attrs\""),
        ("attr value null", h(r#""attrs":{"rack":null}"#), "\"attrs\""),
        ("cpu_factor a string", h(r#""cpu_factor":"fast""#), "\"cpu_factor\""),
        ("transport a number", h(r#""transport":1"#), "\"transport\""),
        ("transport unknown", h(r#""transport":"tcp""#), "\"transport\""),
        ("negative cpus", s(r#"{"type":"host","name":"bad","cpus":-1,"ram_mb":1}"#), "\"cpus\""),
        ("negative ram_mb", s(r#"{"type":"host","name":"bad","cpus":1,"ram_mb":-1}"#), "\"ram_mb\""),
        ("negative disk_mb", h(r#""disk_mb":-5"#), "\"disk_mb\""),
        ("negative gpus", h(r#""gpus":-1"#), "\"gpus\""),
        ("negative cpu_factor", h(r#""cpu_factor":-1"#), "\"cpu_factor\""),
        ("zero cpu_factor", h(r#""cpu_factor":0"#), "\"cpu_factor\""),
        ("huge cpu_factor", h(r#""cpu_factor":1e300"#), "\"cpu_factor\""),
        ("cpus 0", s(r#"{"type":"host","name":"bad","cpus":0,"ram_mb":1}"#), "\"cpus\""),
        ("cpus below a millicore", s(r#"{"type":"host","name":"bad","cpus":0.0001,"ram_mb":1}"#), "\"cpus\""),
        ("cpus too many", s(r#"{"type":"host","name":"bad","cpus":1e7,"ram_mb":1}"#), "\"cpus\""),
        ("cpus 1e400", s(r#"{"type":"host","name":"bad","cpus":1e400,"ram_mb":1}"#), "line 3"),
        ("ram_mb 1e400", s(r#"{"type":"host","name":"bad","cpus":1,"ram_mb":1e400}"#), "line 3"),
        ("ram_mb past u64", s(r#"{"type":"host","name":"bad","cpus":1,"ram_mb":18446744073709551616}"#), "line 3"),
        ("ram_mb too large", s(r#"{"type":"host","name":"bad","cpus":1,"ram_mb":2199023255553}"#), "\"ram_mb\""),
        ("gpus too many", h(r#""gpus":70000"#), "\"gpus\""),
        ("overlapping ports", h(r#""ports":[[31000,31999],[31500,32500]]"#), "overlaps"),
        ("touching ports", h(r#""ports":[[100,200],[200,300]]"#), "overlaps"),
        ("port 0", h(r#""ports":[[0,100]]"#), "1–65535"),
        ("port 70000", h(r#""ports":[[31000,70000]]"#), "1–65535"),
        ("reversed ports", h(r#""ports":[[200,100]]"#), "1–65535"),
        ("17 port ranges", h(&format!(r#""ports":[{}]"#, many_ranges.join(","))), "at most 16"),
        ("duplicate name in batch", s(&host_line("new1", 1.0, 1)), "already on line 1"),
        ("raw NUL in a string", b"{\"type\":\"host\",\"name\":\"a\0b\",\"cpus\":1,\"ram_mb\":1}".to_vec(), "not valid JSON"),
        ("raw NUL outside strings", b"{\"type\":\"host\",\0\"name\":\"ab\",\"cpus\":1,\"ram_mb\":1}".to_vec(), "not valid JSON"),
        ("escaped NUL in name", s(r#"{"type":"host","name":"a\u0000b","cpus":1,"ram_mb":1}"#), "\"name\""),
        ("invalid UTF-8", b"{\"type\":\"host\",\"name\":\"caf\xe9\",\"cpus\":1,\"ram_mb\":1}".to_vec(), "not UTF-8"),
        ("overlong UTF-8", b"{\"type\":\"host\",\"name\":\"a\xc0\xafb\",\"cpus\":1,\"ram_mb\":1}".to_vec(), "not UTF-8"),
        ("lone surrogate escape", s(r#"{"type":"host","name":"a\ud800","cpus":1,"ram_mb":1}"#), "line 3"),
        ("unknown field", s(r#"{"type":"host","name":"bad","cpus":1,"ram":1024}"#), "unknown field \"ram\""),
        ("33 attrs", h(&attrs(33, 1)), "at most 32"),
        ("attr value 129 bytes", h(&attrs(1, 129)), "128 bytes"),
        ("attrs past the slot", h(&attrs(8, 100)), "a host record holds"),
        ("attr key too long", h(&format!(r#""attrs":{{"{}":"v"}}"#, "k".repeat(65))), "\"attrs\""),
        ("attr key empty", h(r#""attrs":{"":"v"}"#), "\"attrs\""),
        ("attr key with a space", h(r#""attrs":{"a b":"v"}"#), "\"attrs\""),
        ("attr key host", h(r#""attrs":{"host":"x"}"#), "reserved"),
        ("attr value with a control character", h(r#""attrs":{"rack":"r\u0007"}"#), "\"attrs\""),
        ("a list on an attribute but dedicated", h(r#""attrs":{"rack":["r1","r2"]}"#), "rack: a list of values is allowed only for \"dedicated\""),
        ("dedicated an empty list", h(r#""attrs":{"dedicated":[]}"#), "dedicated: an empty list"),
        ("dedicated empty", h(r#""attrs":{"dedicated":""}"#), "is not ROLE, ROLE/NAME or */NAME"),
        ("dedicated with two slashes", h(r#""attrs":{"dedicated":"www/prod/web"}"#), "is not ROLE, ROLE/NAME or */NAME"),
        ("dedicated without a role", h(r#""attrs":{"dedicated":["db","/web"]}"#), "is not ROLE, ROLE/NAME or */NAME"),
        ("dedicated without a name", h(r#""attrs":{"dedicated":"www/"}"#), "is not ROLE, ROLE/NAME or */NAME"),
        ("dedicated a number in a list", h(r#""attrs":{"dedicated":["db",1]}"#), "dedicated: expected strings"),
        ("empty name", s(r#"{"type":"host","name":"","cpus":1,"ram_mb":1}"#), "is empty"),
        ("name with a space", s(r#"{"type":"host","name":"a b","cpus":1,"ram_mb":1}"#), "\"name\""),
        ("name with a slash", s(r#"{"type":"host","name":"../etc","cpus":1,"ram_mb":1}"#), "\"name\""),
        ("name like a flag", s(r#"{"type":"host","name":"-rf","cpus":1,"ram_mb":1}"#), "\"name\""),
        ("name 129 bytes", s(&format!(r#"{{"type":"host","name":"{}","cpus":1,"ram_mb":1}}"#, "n".repeat(129))), "\"name\""),
        ("name with a newline escape", s(r#"{"type":"host","name":"a\nb","cpus":1,"ram_mb":1}"#), "\"name\""),
    ]
}

/// The batch around a bad line: a valid new host, a line of another type, the bad line
/// (line 3), another valid host.
fn batch(bad: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(host_line("new1", 8.0, 2048).as_bytes());
    b.extend_from_slice(b"\n{\"type\":\"job\",\"job\":\"www/prod/hello\"}\n");
    b.extend_from_slice(bad);
    b.extend_from_slice(b"\n");
    b.extend_from_slice(host_line("new2", 8.0, 2048).as_bytes());
    b.extend_from_slice(b"\n");
    b
}

#[test]
fn every_malformed_host_record_fails_the_whole_batch() {
    let dir = common::tempdir();
    let (state, snap) = seeded(&dir);
    let mut failures = Vec::new();
    for (what, bad, want) in bad_corpus() {
        let out = offer(&state, &["add"], &batch(&bad));
        let err = stderr(&out);
        let problem = if code(&out) != 65 {
            Some(format!("exit {}", code(&out)))
        } else if err.lines().count() != 1 {
            Some("not one line on stderr".into())
        } else if !err.starts_with("offer: line 3: ") {
            Some("stderr does not start with `offer: line 3: `".into())
        } else if !err.contains(want) {
            Some(format!("stderr lacks {want:?}"))
        } else if !out.stdout.is_empty() {
            Some(format!("stdout not empty: {}", stdout(&out)))
        } else if snapshot(&state) != snap {
            Some("the state changed".into())
        } else {
            None
        };
        if let Some(p) = problem {
            failures.push(format!("{what}: {p}; stderr: {}", err.trim()));
            if snapshot(&state) != snap {
                break; // later cases would compare against a changed state
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    // And the state is intact: the two hosts, h2 still drained, nothing new.
    let all = hosts(&state);
    assert_eq!(all.len(), 2);
    assert_eq!(all[1]["maintenance"]["state"], "drained");
}

#[test]
fn every_bad_line_of_a_batch_is_reported_on_its_own_line() {
    let dir = common::tempdir();
    let (state, snap) = seeded(&dir);
    // Blank lines and CRLF endings count as lines: the numbers must match an editor's.
    let input = format!(
        "{}\n{}\n\n{}\r\n{}\n[]\n{}\n",
        host_line("new1", 1.0, 1),
        host_with(r#""cpus":0"#).replace(r#""cpus":4,"#, ""),
        host_with(r#""gpus":-1"#),
        host_line("new2", 1.0, 1),
        host_line("new1", 1.0, 1),
    );
    let out = offer(&state, &["add"], input.as_bytes());
    assert_eq!(code(&out), 65, "{}", stderr(&out));
    let err = stderr(&out);
    let got: Vec<&str> = err.lines().collect();
    assert_eq!(got.len(), 4, "{err}");
    for (line, n) in got.iter().zip([2, 4, 6, 7]) {
        assert!(line.starts_with(&format!("offer: line {n}: ")), "{err}");
    }
    assert!(
        got[3].ends_with("(4 bad host records; nothing was changed)"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    assert_eq!(snapshot(&state), snap);
}

/// Peak resident memory of a running process, in KiB.
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[test]
fn a_hundred_mebibyte_line_is_rejected_without_being_held() {
    let dir = common::tempdir();
    let (state, snap) = seeded(&dir);
    let mut cmd = tool("offer", &state);
    cmd.arg("add")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    // Streamed: neither this test nor the tool should need 100 MiB at once.
    let writer = std::thread::spawn(move || {
        let mut w = || -> std::io::Result<()> {
            stdin.write_all(host_line("new1", 1.0, 1).as_bytes())?;
            stdin.write_all(b"\n{\"type\":\"host\",\"name\":\"")?;
            let chunk = vec![b'a'; 1 << 20];
            for _ in 0..100 {
                stdin.write_all(&chunk)?;
            }
            stdin.write_all(b"\",\"cpus\":1,\"ram_mb\":1}\n")?;
            stdin.write_all(host_line("new2", 1.0, 1).as_bytes())?;
            stdin.write_all(b"\n")?;
            stdin.flush()
        };
        let r = w();
        // The whole line has been read once the tool waits for the end of its input:
        // measure its peak memory then, before closing stdin lets it exit.
        let peak = r.as_ref().ok().map(|()| peak_rss_kb(pid));
        drop(stdin);
        (r, peak)
    });
    let out = common::wait_output(child, common::TIMEOUT);
    let (written, peak) = writer.join().unwrap();
    written.expect("the tool stopped reading its input");
    let err = stderr(&out);
    assert_eq!(code(&out), 65, "{err}");
    assert!(err.starts_with("offer: line 2: "), "{err}");
    assert!(err.contains("longer than"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(out.stdout.is_empty());
    assert_eq!(snapshot(&state), snap);
    let peak = peak.unwrap();
    assert!(
        peak < 48 * 1024,
        "offer held {peak} KiB while reading a 100 MiB line"
    );
}
