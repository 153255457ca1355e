//! launch with real supervisors on local hosts: offer | pack | launch end to end, the
//! task's world as launch resolves it, idempotence, two launches at once, a crash between
//! intent and start, and bad records.

use std::path::{Path, PathBuf};
use std::time::Duration;

use formic::state::State;
use formic::task::TaskState;
use formic::taskdir;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::common::{self, code, run, stderr, stdout, tasks_under, tool};

/// A cluster of one local host, h1, in a temporary directory.
struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    fn new() -> Cluster {
        let c = Cluster {
            dir: common::tempdir(),
        };
        let host = r#"{"type":"host","name":"h1","cpus":4,"ram_mb":4096,"disk_mb":1000,"ports":[[31000,31099]]}"#;
        let out = run(tool("offer", &c.state()).arg("add"), host.as_bytes());
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        c
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// offer | pack JOBS: pack's records, for launch.
    fn pack(&self, jobs: &str) -> String {
        let file = self.dir.path().join("jobs.jsonl");
        std::fs::write(&file, jobs).unwrap();
        let offers = stdout(&run(&mut tool("offer", &self.state()), b""));
        let out = run(tool("pack", &self.state()).arg(&file), offers.as_bytes());
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        stdout(&out)
    }

    fn launch(&self, records: &str) -> std::process::Output {
        run(
            tool("launch", &self.state()).args(["--wait", "10"]),
            records.as_bytes(),
        )
    }

    fn task_dir(&self, task: &str) -> PathBuf {
        taskdir::task_dir(&taskdir::host_root(&self.state(), "h1"), task)
    }

    fn status(&self, task: &str) -> taskdir::Status {
        taskdir::Status::read(&self.task_dir(task))
            .unwrap()
            .expect("a status")
    }
}

impl Drop for Cluster {
    /// Stops every supervisor the test started: gracefully, so each removes its cgroups,
    /// then by force whatever is left.
    fn drop(&mut self) {
        let root = taskdir::host_root(&self.state(), "h1");
        let statuses: Vec<(PathBuf, taskdir::Status)> = tasks_under(&root)
            .into_iter()
            .filter_map(|d| Some((d.clone(), taskdir::Status::read(&d).ok()??)))
            .collect();
        for (_, s) in &statuses {
            if formic::process::same_process(s.supervisor.0, s.supervisor.1) {
                let _ = kill(Pid::from_raw(s.supervisor.0 as i32), Signal::SIGTERM);
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while statuses
            .iter()
            .any(|(d, _)| taskdir::supervised(d).unwrap_or(false))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        for (_, s) in &statuses {
            if formic::process::same_process(s.supervisor.0, s.supervisor.1) {
                let _ = kill(Pid::from_raw(s.supervisor.0 as i32), Signal::SIGKILL);
            }
            if let Some((pid, start)) = s.pid {
                if formic::process::same_process(pid, start) {
                    let _ = nix::sys::signal::killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
            }
        }
    }
}

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Processes whose command line is `formic-supervise DIR`.
fn supervisors_of(dir: &Path) -> usize {
    let want = dir.to_str().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| {
            let args: Vec<&[u8]> = c.split(|&b| b == 0).collect();
            args.len() >= 2 && args[0].ends_with(b"formic-supervise") && args[1] == want.as_bytes()
        })
        .count()
}

const WEB: &str = r#"{"job":"www/prod/web","instances":2,"cmd":["sleep","{{instance}}0{{port.http}}"],"env":{"GREETING":"hi {{task}}"},"resources":{"cpus":0.5,"ram_mb":64,"ports":["http"]},"constraints":[{"attr":"host","limit":2}]}"#;

#[test]
fn offer_pack_launch_runs_each_instance_under_its_supervisor() {
    let c = Cluster::new();
    let records = c.pack(WEB);
    let out = c.launch(&records);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let events = lines(&stdout(&out));
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events
        .iter()
        .all(|e| e["type"] == "event" && e["state"] == "RUNNING" && e["host"] == "h1"));

    let state = State::open(&c.state()).unwrap();
    let v = state.view();
    let job = v.jobs.find(&"www/prod/web".to_string()).unwrap();
    for instance in 0..2u32 {
        let task = format!("www/prod/web/{instance}");
        let t = v
            .tasks
            .get(v.tasks.find(&(job, instance)).unwrap())
            .unwrap();
        let s = c.status(&task);
        assert_eq!(t.state, TaskState::Running);
        assert_eq!(
            (t.pid, t.pid_start),
            s.pid.unwrap(),
            "the state names the task's process"
        );
        assert!(formic::process::same_process(t.pid, t.pid_start));
        assert!(t.ports[0] >= 31000 && t.ports[0] <= 31099);
        // Templates filled, environment given: what the process itself sees.
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", t.pid)).unwrap();
        assert_eq!(
            cmdline,
            format!("sleep\0{instance}0{}\0", t.ports[0]).into_bytes()
        );
        let environ =
            String::from_utf8(std::fs::read(format!("/proc/{}/environ", t.pid)).unwrap()).unwrap();
        for want in [
            format!("GREETING=hi {task}"),
            format!("FORMIC_TASK={task}"),
            format!("FORMIC_INSTANCE={instance}"),
            format!("FORMIC_PORT_HTTP={}", t.ports[0]),
        ] {
            assert!(
                environ.split('\0').any(|e| e == want),
                "{want} missing from {environ:?}"
            );
        }
    }
    // The reservations show in the offers.
    let offers = lines(&stdout(&run(&mut tool("offer", &c.state()), b"")));
    assert_eq!(offers[0]["cpus"], 3.0);

    // The same records again start nothing more: each is in conflict with the incarnation
    // it created.
    let before: Vec<_> = (0..2)
        .map(|i| c.status(&format!("www/prod/web/{i}")).supervisor)
        .collect();
    let snapshot = common::snapshot(&c.state());
    let out = c.launch(&records);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let conflicts = lines(&stdout(&out));
    assert_eq!(conflicts.len(), 2, "{conflicts:?}");
    for (i, r) in conflicts.iter().enumerate() {
        assert_eq!(r["type"], "conflict", "{r}");
        assert_eq!(r["task"], format!("www/prod/web/{i}"));
        assert_eq!(r["reason"], "incarnation 1 is RUNNING on h1", "{r}");
    }
    assert_eq!(common::snapshot(&c.state()), snapshot, "nothing recorded");
    let after: Vec<_> = (0..2)
        .map(|i| c.status(&format!("www/prod/web/{i}")).supervisor)
        .collect();
    assert_eq!(before, after);
    assert_eq!(supervisors_of(&c.task_dir("www/prod/web/0")), 1);
}

/// launch on `records`, started now; its output is collected by `common::wait_output`.
fn spawn_launch(c: &Cluster, records: &str) -> std::process::Child {
    let mut cmd = tool("launch", &c.state());
    cmd.args(["--wait", "10"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    use std::io::Write;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(records.as_bytes()).unwrap();
    child
}

/// Each task's state record, by instance.
fn records_of(c: &Cluster) -> Vec<formic::task::Task> {
    let state = State::open(&c.state()).unwrap();
    let v = state.view();
    let job = v.jobs.find(&"www/prod/web".to_string()).unwrap();
    (0..2)
        .map(|i| {
            v.tasks
                .get(v.tasks.find(&(job, i)).unwrap())
                .unwrap()
                .clone()
        })
        .collect()
}

#[test]
fn launches_at_once_start_each_task_once_and_the_state_says_so() {
    for round in 0..5 {
        let c = Cluster::new();
        let records = c.pack(WEB);
        let children: Vec<_> = (0..4).map(|_| spawn_launch(&c, &records)).collect();
        let outs: Vec<_> = children
            .into_iter()
            .map(|ch| common::wait_output(ch, Duration::from_secs(60)))
            .collect();
        // Every place record is either started by exactly one launch or refused by the
        // others as a conflict, never both, never neither.
        let mut running = Vec::new();
        let mut conflicts = 0;
        for out in &outs {
            assert!([0, 1].contains(&code(out)), "{}", stderr(out));
            for r in lines(&stdout(out)) {
                match (r["type"].as_str(), r["state"].as_str()) {
                    (Some("event"), Some("RUNNING")) => running.push(r["task"].clone()),
                    (Some("conflict"), _) => conflicts += 1,
                    _ => panic!("round {round}: unexpected {r}"),
                }
            }
            assert_eq!(
                code(out) == 0,
                !stdout(out).contains("conflict"),
                "1 exactly when there were conflicts: {}",
                stdout(out)
            );
        }
        running.sort_by_key(|t| t.to_string());
        assert_eq!(
            running,
            ["www/prod/web/0", "www/prod/web/1"],
            "round {round}"
        );
        assert_eq!(conflicts, 6, "round {round}");
        // What the state says is what runs: RUNNING, with the process its one supervisor
        // reports.
        for (i, t) in records_of(&c).iter().enumerate() {
            let task = format!("www/prod/web/{i}");
            let s = c.status(&task);
            assert_eq!(t.state, TaskState::Running, "round {round}: {task}");
            assert_eq!(t.incarnation, 1, "round {round}: {task}");
            assert_eq!(s.incarnation, Some(1));
            assert_eq!(
                (t.pid, t.pid_start),
                s.pid.unwrap(),
                "round {round}: {task}"
            );
            assert_eq!(
                supervisors_of(&c.task_dir(&task)),
                1,
                "round {round}: {task}"
            );
        }
    }
}

/// Where a launch can die between recording its intent and reporting the result: after
/// what it had done last.
#[derive(Clone, Copy, Debug)]
enum DiedAfter {
    /// The intent: nothing on the host.
    Intent,
    /// Writing the task's directory, before starting its supervisor.
    Directory,
    /// Starting the supervisor, before recording what it reported.
    Start,
}

/// The identity of a process that has ended: a launch killed at some point.
fn dead_process() -> (u32, u32) {
    let mut child = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let name = formic::process::short_name(child.id());
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!formic::process::alive(name));
    name
}

/// What a launch that died at `crash` leaves for the records `records`: each task ASSIGNED
/// as incarnation 1 by a launch that is gone, and on the host what it got to do.
fn leave_a_crashed_launch(c: &Cluster, records: &str, crash: DiedAfter) {
    let launcher = dead_process();
    let places: Vec<Value> = lines(records)
        .into_iter()
        .filter(|r| r["type"] == "place")
        .collect();
    let job: Value = serde_json::from_str(WEB).unwrap();
    let mut state = State::open_writer(&c.state()).unwrap();
    state
        .write(|tx| {
            let h = tx.view().hosts.find(&"h1".to_string()).unwrap();
            let j = tx.upsert(formic::task::Job {
                announce: None,
                key: "www/prod/web".into(),
                ports: vec!["http".into()],
                rollout: Default::default(),
                runs: Default::default(),
                counts: Default::default(),
            });
            for p in &places {
                let mut t = formic::task::Task::new(j, p["instance"].as_u64().unwrap() as u32);
                t.host = h;
                t.state = TaskState::Assigned;
                t.cpus = 500;
                t.ram_mb = 64;
                t.ports[0] = p["ports"]["http"].as_u64().unwrap() as u16;
                t.since = tx.now();
                t.incarnation = 1;
                t.launcher = launcher;
                tx.upsert(t);
            }
            Ok(())
        })
        .unwrap();
    if matches!(crash, DiedAfter::Intent) {
        return;
    }
    for p in &places {
        let task = p["task"].as_str().unwrap();
        let dir = c.task_dir(task);
        taskdir::create(&dir).unwrap();
        let mut spec = common::spec(task, &["sleep", "600"]);
        spec.incarnation = 1;
        std::fs::write(dir.join("spec.json"), spec.to_json().to_string()).unwrap();
        std::fs::write(dir.join("job.json"), job.to_string()).unwrap();
        if matches!(crash, DiedAfter::Start) {
            common::supervise_detached(&dir);
            common::wait_until(
                "the supervisor reports RUNNING",
                Duration::from_secs(10),
                || {
                    taskdir::Status::read(&dir)
                        .ok()
                        .flatten()
                        .filter(|s| s.state == "RUNNING")
                },
            );
        }
    }
}

#[test]
fn a_launch_killed_at_any_point_is_repaired_by_the_next_pass_without_a_double_start() {
    for crash in [DiedAfter::Intent, DiedAfter::Directory, DiedAfter::Start] {
        let c = Cluster::new();
        let jobs = c.dir.path().join("jobs");
        std::fs::create_dir(&jobs).unwrap();
        std::fs::write(jobs.join("web.json"), WEB).unwrap();
        let records = c.pack(WEB);
        leave_a_crashed_launch(&c, &records, crash);
        let before: Vec<Option<taskdir::Status>> = (0..2)
            .map(|i| taskdir::Status::read(&c.task_dir(&format!("www/prod/web/{i}"))).unwrap())
            .collect();
        // One pass, at once: the launch is gone, so nothing waits for --start-grace.
        let out = run(&mut reconcile(&c, &jobs), b"");
        assert_eq!(code(&out), 0, "{crash:?}: {}", stderr(&out));
        for (i, t) in records_of(&c).iter().enumerate() {
            let task = format!("www/prod/web/{i}");
            let s = c.status(&task);
            assert_eq!(
                t.state,
                TaskState::Running,
                "{crash:?}: {task}: {}",
                stderr(&out)
            );
            assert_eq!((t.pid, t.pid_start), s.pid.unwrap(), "{crash:?}: {task}");
            assert_eq!(supervisors_of(&c.task_dir(&task)), 1, "{crash:?}: {task}");
            match crash {
                // The supervisor that was started is believed, and is the only one.
                DiedAfter::Start => {
                    assert_eq!(t.incarnation, 1, "{crash:?}");
                    assert_eq!(Some(s.supervisor), before[i].as_ref().map(|b| b.supervisor));
                }
                // The abandoned start was called off, and placed again.
                _ => assert_eq!(t.incarnation, 2, "{crash:?}"),
            }
        }
    }
}

#[test]
fn a_supervisor_started_after_its_start_was_called_off_runs_nothing() {
    let c = Cluster::new();
    let records = c.pack(WEB);
    leave_a_crashed_launch(&c, &records, DiedAfter::Directory);
    // reap alone: the launch is gone and no supervisor took the tasks.
    let out = run(
        tool("reap", &c.state()).stdin(std::process::Stdio::null()),
        b"",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let events = lines(&stdout(&out));
    assert_eq!(events.len(), 2, "{events:?}");
    for e in &events {
        assert_eq!(e["state"], "PENDING", "{e}");
        assert_eq!(e["reason"], "its launch ended before starting it", "{e}");
    }
    // The supervisor that launch started a moment before it died arrives now.
    let dir = c.task_dir("www/prod/web/0");
    let out = run(
        std::process::Command::new(common::bin("formic-supervise")).arg(&dir),
        b"",
    );
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    assert!(stderr(&out).contains("called off"), "{}", stderr(&out));
    assert_eq!(taskdir::Status::read(&dir).unwrap(), None, "it ran nothing");
    assert!(records_of(&c).iter().all(|t| t.state == TaskState::Pending));
}

#[test]
fn a_task_whose_supervisor_cannot_start_fails_at_once_with_the_reason() {
    let c = Cluster::new();
    let records = c.pack(WEB);
    // launch alone, with no formic-supervise beside it or on its PATH.
    let alone = c.dir.path().join("bin");
    std::fs::create_dir(&alone).unwrap();
    std::fs::copy(common::bin("launch"), alone.join("launch")).unwrap();
    let mut cmd = std::process::Command::new(alone.join("launch"));
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("FORMIC_STATE", c.state())
        .args(["--wait", "2"]);
    let out = run(&mut cmd, records.as_bytes());
    assert_eq!(code(&out), 1, "not everything started: {}", stderr(&out));
    let events = lines(&stdout(&out));
    assert_eq!(events.len(), 2, "{events:?}");
    for e in &events {
        assert_eq!(
            (e["state"].as_str(), e["exit"].as_i64()),
            (Some("FAILED"), Some(127)),
            "{e}"
        );
        let reason = e["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("formic-supervise") && reason.contains("No such file"),
            "{reason}"
        );
    }
    let state = State::open(&c.state()).unwrap();
    let v = state.view();
    assert!(v
        .tasks
        .iter()
        .all(|(_, t)| t.state == TaskState::Failed && t.cpus == 0));
}

#[test]
fn a_sandbox_its_user_cannot_reach_is_refused_and_launch_says_why() {
    common::require_root("tasks under uids of their own");
    use std::os::unix::fs::PermissionsExt;
    let c = Cluster::new();
    // The cluster's directory as `mktemp -d` makes it: root's, mode 0700.
    std::fs::set_permissions(c.dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let records = c.pack(WEB);
    let out = c.launch(&records);
    let events = lines(&stdout(&out));
    assert_eq!(events.len(), 2, "{}", stderr(&out));
    for e in &events {
        let reason = e["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("cannot reach its sandbox"), "{e}");
    }
    // reap collects them (a service: throttled before its next try), the reason in the
    // record.
    let out = run(&mut tool("reap", &c.state()), b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = run(tool("reap", &c.state()).args(["tasks", "--json"]), b"");
    let tasks = lines(&stdout(&out));
    assert_eq!(tasks.len(), 2);
    for t in tasks {
        assert_eq!(
            (
                t["state"].as_str(),
                t["reason"].as_str(),
                t["exit"].as_i64()
            ),
            (Some("THROTTLED"), Some("could not start"), Some(126)),
            "{t}"
        );
    }
}

#[test]
fn a_bad_place_record_starts_nothing_and_changes_nothing() {
    let c = Cluster::new();
    let records = c.pack(WEB);
    let before = common::snapshot(&c.state());
    let broken = [
        records.replacen(r#""instance":1"#, r#""instance":-1"#, 1),
        records.replacen(r#""host":"h1""#, r#""host":"../etc""#, 1),
        records.replacen(r#""type":"spec""#, r#""type":"note""#, 1),
        records.replacen(
            r#""task":"www/prod/web/0""#,
            r#""task":"www/prod/web/7""#,
            1,
        ),
        format!("{records}{{not json\n"),
        // Counts of runs that would go back.
        format!(
            "{records}{}\n",
            r#"{"type":"cron","job":"batch/prod/b","step":"seen","#.to_string()
                + r#""was":{"current":0,"started":0,"manual":false,"fired":0,"requested":0,"runs":3,"missed":0,"cancelled":0},"#
                + r#""runs":{"current":0,"started":0,"manual":false,"fired":0,"requested":0,"runs":2,"missed":0,"cancelled":0}}"#
        ),
    ];
    for bad in &broken {
        let out = c.launch(bad);
        assert_eq!(code(&out), 65, "{bad}\n{}", stderr(&out));
        assert!(stderr(&out).contains("line "), "{}", stderr(&out));
        assert_eq!(stdout(&out), "", "nothing emitted");
        assert_eq!(common::snapshot(&c.state()), before, "state unchanged");
        assert!(
            !taskdir::host_root(&c.state(), "h1").exists(),
            "nothing started"
        );
    }
    // A host the state does not know (removed since pack decided): a conflict, not bad
    // input, and nothing changes.
    let out = c.launch(&records.replace(r#""host":"h1""#, r#""host":"h9""#));
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let conflicts = lines(&stdout(&out));
    assert_eq!(conflicts.len(), 2, "{conflicts:?}");
    assert!(conflicts
        .iter()
        .all(|r| r["type"] == "conflict" && r["reason"] == "no host h9 in the state"));
    assert_eq!(common::snapshot(&c.state()), before);
}

/// scripts/reconcile with this build's tools.
fn reconcile(c: &Cluster, jobs: &Path) -> std::process::Command {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/reconcile");
    let mut cmd = std::process::Command::new(script);
    cmd.arg(jobs)
        .env("FORMIC_STATE", c.state())
        .env("FORMIC_BIN", common::bin("offer").parent().unwrap());
    cmd
}

#[test]
fn two_reconcile_passes_at_once_start_each_instance_once_and_converge() {
    let c = Cluster::new();
    let jobs = c.dir.path().join("jobs");
    std::fs::create_dir(&jobs).unwrap();
    std::fs::write(jobs.join("web.json"), WEB).unwrap();
    let spawn = || {
        reconcile(&c, &jobs)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let outs: Vec<_> = [a, b]
        .into_iter()
        .map(|p| common::wait_output(p, Duration::from_secs(60)))
        .collect();
    // Each pass ran (one summary line), or skipped quietly while the other held the lock.
    for out in &outs {
        assert_eq!(code(out), 0, "{}", stderr(out));
        let err = stderr(out);
        assert!(
            err.is_empty() || (err.starts_with("reconcile: ") && err.lines().count() == 1),
            "one summary line, or none: {err}"
        );
    }
    assert!(outs.iter().any(|o| !stderr(o).is_empty()), "a pass ran");
    for i in 0..2 {
        assert_eq!(
            supervisors_of(&c.task_dir(&format!("www/prod/web/{i}"))),
            1,
            "task {i}"
        );
    }
    // A further pass changes nothing: the same supervisors, nothing placed.
    let before: Vec<_> = (0..2)
        .map(|i| c.status(&format!("www/prod/web/{i}")).supervisor)
        .collect();
    let out = common::wait_output(
        reconcile(&c, &jobs)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
        Duration::from_secs(60),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("0 placed, 0 pending"),
        "{}",
        stderr(&out)
    );
    let after: Vec<_> = (0..2)
        .map(|i| c.status(&format!("www/prod/web/{i}")).supervisor)
        .collect();
    assert_eq!(before, after);
}

/// Issue 11: `launch --wait inf` panicked after recording the task and starting its
/// supervisor. Durations on the command line are checked before anything is done, and a
/// usage error of any tool is one line with status 2.
#[test]
fn durations_out_of_range_are_usage_errors_before_anything_starts() {
    let c = Cluster::new();
    let records = c.pack(WEB);
    let before = common::snapshot(&c.state());
    for args in [
        ["--wait", "inf"],
        ["--wait", "1e30"],
        ["--grace", "inf"],
        ["--grace", "NaN"],
        ["--wait", "3601"],
    ] {
        let out = run(tool("launch", &c.state()).args(args), records.as_bytes());
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        assert!(
            err.starts_with("launch: ") && err.contains(args[0]) && err.contains("0 to 3600"),
            "{err}"
        );
        assert_eq!(
            common::snapshot(&c.state()),
            before,
            "{args:?}: nothing recorded"
        );
        assert!(
            !taskdir::host_root(&c.state(), "h1").exists(),
            "nothing started"
        );
    }
    for name in [
        "offer",
        "pack",
        "launch",
        "reap",
        "announce",
        "formic-supervise",
    ] {
        let out = run(tool(name, &c.state()).arg("--no-such-option"), b"");
        assert_eq!(code(&out), 2, "{name}: {}", stderr(&out));
        assert_eq!(
            stderr(&out),
            format!("{name}: unexpected argument '--no-such-option' found (try --help)\n")
        );
    }
}

/// Issue 11: after a spec reorders or renames its ports, an instance of the earlier spec
/// was listed and announced with the new names on its old ports (admin on http's port),
/// because the job's list of port names was replaced while tasks keep ports by position.
#[test]
fn instances_of_an_earlier_spec_keep_their_port_names_when_a_spec_renames_them() {
    let c = Cluster::new();
    let v1 = r#"{"job":"www/prod/two","instances":1,"cmd":["sleep","600"],"resources":{"cpus":0.1,"ram_mb":8,"ports":["http","admin"]}}"#;
    let out = c.launch(&c.pack(v1));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let ports_of = |instance: u32| -> Value {
        let out = run(tool("reap", &c.state()).args(["tasks", "--json"]), b"");
        lines(&stdout(&out))
            .into_iter()
            .find(|t| t["task"] == format!("www/prod/two/{instance}"))
            .unwrap()["ports"]
            .clone()
    };
    let before = ports_of(0);
    assert_eq!(before.as_object().unwrap().len(), 2, "{before}");
    // v2 swaps the order and renames admin to metrics; instance 1 starts from it while
    // instance 0 stays on v1 (its update is held: `roll pause` before the change).
    let out = run(
        tool("roll", &c.state()).args(["pause", "www/prod/two"]),
        b"",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v2 = r#"{"job":"www/prod/two","instances":2,"cmd":["sleep","601"],"resources":{"cpus":0.1,"ram_mb":8,"ports":["metrics","http"]}}"#;
    let out = c.launch(&c.pack(v2));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(ports_of(0), before, "the earlier instance keeps its names");
    let new = ports_of(1);
    let names: Vec<&String> = new.as_object().unwrap().keys().collect();
    assert_eq!(names.len(), 2, "{new}");
    assert!(
        new.get("metrics").is_some() && new.get("http").is_some(),
        "{new}"
    );
    // What the new instance's process was given agrees with the listing.
    let status = c.status("www/prod/two/1");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", status.pid.unwrap().0)).unwrap();
    assert_eq!(cmdline, b"sleep\x00601\x00");
}
