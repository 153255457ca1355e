//! The per-task supervisor with real processes: exit statuses, stops with a grace period,
//! orphans, the task's world (environment, descriptors, user), health checks, one
//! supervisor per task.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use formic::supervise::{Health, Spec};
use formic::taskdir::{self, Status};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::common::{self, bin};

use crate::common::spec;

/// A task directory with `spec` written, under a fresh temporary root.
fn task(spec: &Spec) -> (tempfile::TempDir, PathBuf) {
    let root = common::tempdir();
    let dir = taskdir::task_dir(root.path(), &spec.task);
    taskdir::create(&dir).unwrap();
    std::fs::write(dir.join("spec.json"), spec.to_json().to_string()).unwrap();
    (root, dir)
}

fn supervise(dir: &Path) -> Child {
    Command::new(bin("formic-supervise"))
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the status satisfies `want`, or fails after `limit`.
fn wait_for(dir: &Path, limit: Duration, want: impl Fn(&Status) -> bool) -> Status {
    let start = Instant::now();
    loop {
        if let Ok(Some(s)) = Status::read(dir) {
            if want(&s) {
                return s;
            }
        }
        assert!(
            start.elapsed() < limit,
            "status never got there: {:?}",
            Status::read(dir)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn finished(s: &Status) -> bool {
    matches!(s.state.as_str(), "FINISHED" | "FAILED" | "KILLED")
}

fn alive(pid: u32) -> bool {
    // A zombie is not alive: read its state.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s[s.rfind(')').unwrap() + 2..].starts_with('Z'))
        .unwrap_or(false)
}

fn wait_exit(child: Child) -> i32 {
    let out = common::wait_output(child, Duration::from_secs(30));
    common::code(&out)
}

#[test]
fn exit_statuses_and_output_are_recorded() {
    let (_root, dir) = task(&spec(
        "t/e/ok/0",
        &["sh", "-c", "echo out; echo err >&2; exit 0"],
    ));
    assert_eq!(wait_exit(supervise(&dir)), 0);
    let s = Status::read(&dir).unwrap().unwrap();
    assert_eq!((s.state.as_str(), s.exit), ("FINISHED", Some(0)));
    assert_eq!(
        std::fs::read_to_string(dir.join("logs/1/stdout")).unwrap(),
        "out\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("logs/1/stderr")).unwrap(),
        "err\n"
    );

    let (_root, dir) = task(&spec("t/e/bad/0", &["sh", "-c", "exit 3"]));
    assert_eq!(wait_exit(supervise(&dir)), 0);
    let s = Status::read(&dir).unwrap().unwrap();
    assert_eq!((s.state.as_str(), s.exit), ("FAILED", Some(3)));
    assert!(
        !taskdir::supervised(&dir).unwrap(),
        "the lock is released at the end"
    );
}

#[test]
fn logs_are_bounded_and_rotated_once() {
    // Far more output than the bound on both streams, at full speed (the supervisor reads
    // it in chunks larger than the smallest bound).
    let seq = "seq 1 200000";
    for max in [4096u64, 65536] {
        let mut s = spec(
            &format!("t/e/chatty{max}/0"),
            &["sh", "-c", &format!("{seq}; {seq} >&2")],
        );
        s.log_max_bytes = max;
        let (_root, dir) = task(&s);
        assert_eq!(wait_exit(supervise(&dir)), 0);
        assert_eq!(Status::read(&dir).unwrap().unwrap().state, "FINISHED");
        let all: String = (1..=200000).map(|i| format!("{i}\n")).collect();
        let mut names: Vec<String> = std::fs::read_dir(dir.join("logs/1"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["stderr", "stderr.1", "stdout", "stdout.1"],
            "bound {max}: one old generation of each, no more"
        );
        for log in ["stdout", "stderr"] {
            let now = std::fs::read_to_string(dir.join("logs/1").join(log)).unwrap();
            let old = std::fs::read_to_string(dir.join("logs/1").join(format!("{log}.1"))).unwrap();
            for (name, text) in [(log.to_string(), &now), (format!("{log}.1"), &old)] {
                assert!(
                    text.len() as u64 <= max,
                    "bound {max}: {name} holds {} bytes",
                    text.len()
                );
            }
            // The two generations are the last of the output, in order and whole, and
            // the rotation kept at least a bound's worth of it.
            let kept = format!("{old}{now}");
            assert!(
                all.ends_with(&kept),
                "bound {max}: {log} is not the output's tail"
            );
            assert!(
                kept.len() as u64 >= max,
                "bound {max}: only {} bytes of {log} kept",
                kept.len()
            );
        }
    }
}

#[test]
fn a_stop_sends_sigterm_to_the_group_then_sigkill_after_the_grace_period() {
    // A well-behaved task ends on SIGTERM.
    let (_root, dir) = task(&spec("t/e/term/0", &["sleep", "60"]));
    let sup = supervise(&dir);
    let running = wait_for(&dir, Duration::from_secs(10), |s| s.state == "RUNNING");
    kill(Pid::from_raw(sup.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(wait_exit(sup), 0);
    let s = Status::read(&dir).unwrap().unwrap();
    assert_eq!((s.state.as_str(), s.signal), ("KILLED", Some(15)));
    assert!(!alive(running.pid.unwrap().0));

    // One that ignores SIGTERM is SIGKILLed once the grace period is over, not before.
    let mut stubborn = spec(
        "t/e/stubborn/0",
        &[
            "sh",
            "-c",
            "trap '' TERM; touch trapped; while :; do sleep 0.05; done",
        ],
    );
    stubborn.grace_s = 0.6;
    let (_root, dir) = task(&stubborn);
    let sup = supervise(&dir);
    wait_for(&dir, Duration::from_secs(10), |s| s.state == "RUNNING");
    common::wait_until("the task set its trap", Duration::from_secs(10), || {
        dir.join("sandbox/trapped").exists().then_some(())
    });
    let asked = Instant::now();
    kill(Pid::from_raw(sup.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(wait_exit(sup), 0);
    let took = asked.elapsed();
    let s = Status::read(&dir).unwrap().unwrap();
    assert_eq!((s.state.as_str(), s.signal), ("KILLED", Some(9)));
    assert!(
        took >= Duration::from_millis(550),
        "SIGKILL came after {took:?}, before the grace period"
    );
}

#[test]
fn nothing_the_task_started_outlives_it() {
    // A child in the task's group, and one that escaped into a session of its own.
    let script = "sleep 600 & echo $! > group.pid; setsid sleep 600 & echo $! > escaped.pid; sleep 0.2; exit 0";
    let (_root, dir) = task(&spec("t/e/orphans/0", &["sh", "-c", script]));
    assert_eq!(wait_exit(supervise(&dir)), 0);
    for file in ["group.pid", "escaped.pid"] {
        let pid: u32 = std::fs::read_to_string(dir.join("sandbox").join(file))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(!alive(pid), "{file}: process {pid} outlived its task");
    }
    assert_eq!(Status::read(&dir).unwrap().unwrap().state, "FINISHED");
}

#[test]
fn the_task_sees_only_its_environment_fds_0_to_2_and_its_user() {
    // It writes in its sandbox as that user, then waits to be looked at.
    let mut s = spec(
        "t/e/world/0",
        &["sh", "-c", "echo mine > file && exec sleep 30"],
    );
    s.user = Some("nobody".into());
    s.allow_root = false;
    let (_root, dir) = task(&s);
    let sup = supervise(&dir);
    let running = wait_for(&dir, Duration::from_secs(10), |s| s.state == "RUNNING");
    let pid = running.pid.unwrap().0;
    // Looked at once the shell has become `sleep` (its environment is then final).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep")) {
        assert!(Instant::now() < deadline, "the task never became sleep");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Its descriptors once the dynamic loader is done: just after the exec, ld.so holds the
    // libraries it maps open on fd 3 for a moment. A descriptor that leaked stays.
    let fds_now = || -> Vec<u32> {
        let mut fds: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|e| {
                e.unwrap()
                    .file_name()
                    .into_string()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        fds.sort();
        fds
    };
    let mut fds = fds_now();
    while fds != [0, 1, 2] && Instant::now() < deadline + Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
        fds = fds_now();
    }
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    kill(Pid::from_raw(sup.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(wait_exit(sup), 0);

    assert_eq!(fds, [0, 1, 2], "descriptors reaching the task");
    let mut env: Vec<&str> = environ
        .split(|&b| b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| std::str::from_utf8(v).unwrap())
        .collect();
    env.sort();
    // What the spec gives, and PWD (its sandbox, set with the working directory): nothing
    // of the supervisor's or the test's own environment.
    let pwd = format!("PWD={}", dir.join("sandbox").display());
    assert_eq!(
        env,
        [
            "FORMIC_TASK=t/e/world/0",
            "PATH=/usr/bin:/bin",
            pwd.as_str()
        ]
    );
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let line = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .to_string()
    };
    let ids = |l: String| {
        l.split_whitespace()
            .skip(1)
            .map(|x| x.parse::<u32>().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(line("Uid:")),
        vec![nobody.uid.as_raw(); 4],
        "real, effective, saved and fs uid"
    );
    assert_eq!(ids(line("Gid:")), vec![nobody.gid.as_raw(); 4]);
    assert!(
        !ids(line("Groups:")).contains(&0),
        "root's groups were dropped: {}",
        line("Groups:")
    );
}

#[test]
fn the_sandbox_belongs_to_the_task_user() {
    let mut s = spec("t/e/writer/0", &["sh", "-c", "echo mine > file"]);
    s.user = Some("nobody".into());
    s.allow_root = false;
    let (_root, dir) = task(&s);
    assert_eq!(wait_exit(supervise(&dir)), 0);
    assert_eq!(Status::read(&dir).unwrap().unwrap().state, "FINISHED");
    use std::os::unix::fs::MetadataExt;
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let meta = std::fs::metadata(dir.join("sandbox/file")).unwrap();
    assert_eq!(meta.uid(), nobody.uid.as_raw());
}

#[test]
fn root_is_refused_unless_allowed() {
    common::require_root("as another user there is no root to refuse");
    let mut s = spec("t/e/root/0", &["true"]);
    s.allow_root = false;
    let (_root, dir) = task(&s);
    assert_eq!(wait_exit(supervise(&dir)), 77);
    assert_eq!(Status::read(&dir).unwrap().unwrap().state, "FAILED");
}

#[test]
fn one_supervisor_per_task() {
    let (_root, dir) = task(&spec("t/e/once/0", &["sleep", "30"]));
    let first = supervise(&dir);
    wait_for(&dir, Duration::from_secs(10), |s| s.state == "RUNNING");
    assert!(taskdir::supervised(&dir).unwrap());
    assert_eq!(
        wait_exit(supervise(&dir)),
        75,
        "a second supervisor must give up"
    );
    kill(Pid::from_raw(first.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(wait_exit(first), 0);
}

#[test]
fn a_killed_supervisor_releases_the_task_lock() {
    let (_root, dir) = task(&spec("t/e/lost/0", &["sleep", "30"]));
    let mut sup = supervise(&dir);
    let running = wait_for(&dir, Duration::from_secs(10), |s| s.state == "RUNNING");
    sup.kill().unwrap();
    sup.wait().unwrap();
    assert!(
        !taskdir::supervised(&dir).unwrap(),
        "the kernel drops the lock of a dead supervisor"
    );
    // The status still says RUNNING: a supervisor gone without a final word is what reap
    // calls LOST. Clean up the task it left.
    let (pid, start) = running.pid.unwrap();
    assert!(!finished(&Status::read(&dir).unwrap().unwrap()));
    assert!(formic::process::same_process(pid, start));
    let _ = nix::sys::signal::killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
}

/// A port on 127.0.0.1 that nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A task serving its sandbox with Python's http.server on 127.0.0.1:`port`.
fn web_server(task: &str, port: u16) -> Spec {
    let port = port.to_string();
    let argv = ["python3", "-m", "http.server", "--bind", "127.0.0.1", &port];
    spec(task, &argv)
}

/// An HTTP health check of `path` on `port`, every `interval_s`, given `timeout_s`,
/// unhealthy after `failures` in a row.
fn http_check(port: u16, path: &str, interval_s: f64, timeout_s: f64, failures: u32) -> Health {
    Health {
        port,
        path: path.into(),
        cmd: vec![],
        interval_s,
        timeout_s,
        failures,
    }
}

#[test]
fn health_follows_an_http_check() {
    let port = free_port();
    let mut s = web_server("t/e/web/0", port);
    s.health = Some(http_check(port, "/", 0.2, 1.0, 2));
    let (_root, dir) = task(&s);
    let sup = supervise(&dir);
    let healthy = wait_for(&dir, Duration::from_secs(20), |s| s.healthy == Some(true));
    assert_eq!(healthy.health_failures, 0);
    kill(Pid::from_raw(sup.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(wait_exit(sup), 0);

    // Nothing listens: unhealthy after `failures` checks in a row.
    let mut s = spec("t/e/deaf/0", &["sleep", "30"]);
    s.health = Some(http_check(port, "/", 0.1, 0.2, 2));
    let (_root, dir) = task(&s);
    let sup = supervise(&dir);
    let sick = wait_for(&dir, Duration::from_secs(10), |s| s.healthy == Some(false));
    assert!(sick.health_failures >= 2);
    kill(Pid::from_raw(sup.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(wait_exit(sup), 0);
}

/// A server that answers 302 (to /gone) on /moved and 404 on everything else.
const REDIRECTING: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(302 if self.path == "/moved" else 404)
        if self.path == "/moved":
            self.send_header("Location", "/gone")
        self.end_headers()
    def log_message(self, *_):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

#[test]
fn a_redirect_is_healthy_and_a_missing_page_is_not() {
    // README: 2xx and 3xx are healthy. The redirect leads to a 404, so a check that
    // followed it, or took only 2xx, would call the first task unhealthy.
    for (name, path, healthy) in [("moved", "/moved", true), ("gone", "/gone", false)] {
        let port = free_port();
        let mut s = spec(
            &format!("t/e/{name}/0"),
            &["python3", "-c", REDIRECTING, &port.to_string()],
        );
        s.health = Some(http_check(port, path, 0.1, 1.0, 2));
        let (_root, dir) = task(&s);
        let sup = supervise(&dir);
        // Judged once the server answers: a passing check, or three more failures in a row
        // (checks fail while the server is not yet listening, so count from then).
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{name}: the server never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let before = Status::read(&dir).unwrap().unwrap().health_failures;
        let judged = wait_for(&dir, Duration::from_secs(20), |s| {
            s.healthy == Some(true) || s.health_failures >= before + 3
        });
        kill(Pid::from_raw(sup.id() as i32), Signal::SIGTERM).unwrap();
        assert_eq!(wait_exit(sup), 0);
        assert_eq!(judged.healthy, Some(healthy), "{name} ({path}): {judged:?}");
    }
}

#[test]
fn the_task_runs_in_cgroups_holding_it_to_its_reservation() {
    let mut s = spec("t/e/limited/0", &["sleep", "30"]);
    s.limits = formic::limits::Limits {
        cpus: 250,
        ram_mb: 64,
        pids: 0,
    };
    let (_root, dir) = task(&s);
    let sup = supervise(&dir);
    let running = wait_for(&dir, Duration::from_secs(10), |s| s.state == "RUNNING");
    let pid = running.pid.unwrap().0;
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let v1 = !Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let writable = nix::unistd::Uid::effective().is_root();
    let limits: Vec<String> = if !writable {
        Vec::new() // no cgroups to make: the rlimit fallback applies
    } else if v1 {
        let path = |ctl: &str| {
            let line = cgroups
                .lines()
                .find(|l| l.split(':').nth(1) == Some(ctl))
                .unwrap();
            PathBuf::from(format!(
                "/sys/fs/cgroup/{ctl}{}",
                line.rsplit(':').next().unwrap()
            ))
        };
        vec![
            std::fs::read_to_string(path("memory").join("memory.limit_in_bytes")).unwrap(),
            std::fs::read_to_string(path("cpu").join("cpu.cfs_quota_us")).unwrap(),
            path("memory").display().to_string(),
        ]
    } else {
        let line = cgroups.lines().find(|l| l.starts_with("0::")).unwrap();
        let p = PathBuf::from(format!("/sys/fs/cgroup{}", &line[3..]));
        vec![
            std::fs::read_to_string(p.join("memory.max")).unwrap(),
            std::fs::read_to_string(p.join("cpu.max")).unwrap(),
            p.display().to_string(),
        ]
    };
    let limits_rlimit = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    kill(Pid::from_raw(sup.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(wait_exit(sup), 0);
    if !writable {
        // README (Containment): without root there are no cgroups to make, and memory is
        // held by RLIMIT_DATA instead. That fallback is what this run can check.
        eprintln!("not root: checking the RLIMIT_DATA fallback, not the task's cgroups");
        let data = limits_rlimit
            .lines()
            .find(|l| l.starts_with("Max data size"))
            .unwrap();
        assert!(data.contains(&(64u64 << 20).to_string()), "{data}");
        return;
    }
    assert_eq!(limits[0].trim(), (64u64 << 20).to_string(), "memory limit");
    if v1 {
        assert_eq!(
            limits[1].trim(),
            "25000",
            "a quarter core per 100 ms period"
        );
    } else {
        assert_eq!(limits[1].trim(), "25000 100000");
    }
    assert!(
        limits[2].contains("formic/t.e.limited.0-"),
        "the task's own cgroup: {}",
        limits[2]
    );
    assert!(
        !Path::new(&limits[2]).exists(),
        "the cgroup is removed once the task is over"
    );
}

/// A health check by a shell command, every `interval_s`, unhealthy after `failures` in a
/// row, each given a second.
fn shell_check(script: &str, interval_s: f64, failures: u32) -> Health {
    Health {
        port: 0,
        path: String::new(),
        cmd: vec!["sh".into(), "-c".into(), script.into()],
        interval_s,
        timeout_s: 1.0,
        failures,
    }
}

#[test]
fn health_follows_a_command_run_as_the_task_user() {
    // Healthy while a file is in the sandbox; the check runs there, as nobody.
    let check = |task: &str, script: &str| {
        let mut s = spec(task, &["sh", "-c", script]);
        s.user = Some("nobody".into());
        s.allow_root = false;
        s.health = Some(shell_check(
            "test -f ready && test \"$(id -u)\" != 0",
            0.1,
            2,
        ));
        s
    };
    let (_root, dir) = task(&check("t/e/ready/0", "touch ready; exec sleep 30"));
    let sup = supervise(&dir);
    wait_for(&dir, Duration::from_secs(10), |s| s.healthy == Some(true));
    kill(Pid::from_raw(sup.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(wait_exit(sup), 0);

    let (_root, dir) = task(&check("t/e/unready/0", "exec sleep 30"));
    let sup = supervise(&dir);
    let sick = wait_for(&dir, Duration::from_secs(10), |s| s.healthy == Some(false));
    assert!(sick.health_failures >= 2);
    kill(Pid::from_raw(sup.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(wait_exit(sup), 0);
}

#[test]
fn a_new_supervisor_takes_over_the_cgroups_a_killed_one_left() {
    common::require_root("cgroups to make");
    let mut s = spec("t/e/again/0", &["sleep", "30"]);
    s.limits = formic::limits::Limits {
        cpus: 100,
        ram_mb: 32,
        pids: 0,
    };
    let (_root, dir) = task(&s);
    let mut sup = supervise(&dir);
    let running = wait_for(&dir, Duration::from_secs(10), |s| s.state == "RUNNING");
    let group = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let first = group(running.pid.unwrap().0);
    // Killed without a chance to clean up; its task goes too (as reap would see to).
    sup.kill().unwrap();
    sup.wait().unwrap();
    let _ = nix::sys::signal::killpg(
        Pid::from_raw(running.pid.unwrap().0 as i32),
        Signal::SIGKILL,
    );
    common::wait_until("the old task gone", Duration::from_secs(10), || {
        (!alive(running.pid.unwrap().0)).then_some(())
    });
    let sup = supervise(&dir);
    let again = wait_for(&dir, Duration::from_secs(10), |s| {
        s.state == "RUNNING" && s.pid != running.pid
    });
    assert_eq!(
        group(again.pid.unwrap().0),
        first,
        "the same groups, taken over"
    );
    kill(Pid::from_raw(sup.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(wait_exit(sup), 0);
    let memory = first
        .lines()
        .find(|l| l.split(':').nth(1) == Some("memory"))
        .map(|l| l.rsplit(':').next().unwrap().to_string());
    if let Some(path) = memory {
        assert!(
            !Path::new(&format!("/sys/fs/cgroup/memory{path}")).exists(),
            "removed at the end"
        );
    }
}

// --- containment: the task is hostile ---

/// A task of its own identity (a dynamic uid, as launch gives a job that names no user).
fn own_identity(mut s: Spec) -> Spec {
    s.user = None;
    s.allow_root = false;
    s.dynamic_ids = Some(formic::identity::DEFAULT_RANGE);
    s.log_group = Some("adm".into());
    s
}

/// Paths a task's root directory shares with the world: a task of its own uid must pass
/// through them (its logs are read by path too).
fn passable(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o711)).unwrap();
}

#[test]
fn a_task_cannot_make_the_supervisor_write_through_its_links() {
    common::require_root("a task of its own uid");
    // Root's files that the task would like its output appended to, and a path where it
    // would like a root-owned file made.
    let secret_dir = common::tempdir();
    let secret = secret_dir.path().join("shadow");
    std::fs::write(&secret, "root's own\n").unwrap();
    let made = secret_dir.path().join("cron.d-x");
    // Links in the sandbox under every name the logs ever had (and their rotations), links
    // attempted where the logs are now, then output enough for several rotations, twice:
    // the second run in the same directory (a restart) opens the logs again.
    let script = format!(
        "for n in stdout stderr stdout.1 stderr.1; do ln -s {secret} $n; done; \
         ln -s {made} ../logs/1/stdout 2>/dev/null; ln -s {made} ../logs/1/stdout.1 2>/dev/null; \
         i=0; while [ $i -lt 300 ]; do echo '* * * * * root hostile line'; echo err >&2; i=$((i+1)); done",
        secret = secret.display(),
        made = made.display()
    );
    let mut s = own_identity(spec("t/e/links/0", &["sh", "-c", &script]));
    s.log_max_bytes = 4096;
    let (root, dir) = task(&s);
    passable(root.path());
    for _ in 0..2 {
        assert_eq!(wait_exit(supervise(&dir)), 0);
        let st = Status::read(&dir).unwrap().unwrap();
        assert_eq!(st.state, "FINISHED", "{st:?}");
    }
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "root's own\n");
    assert!(!made.exists(), "a file was made where the task pointed");
    // The output is where the supervisor keeps it, beside the sandbox.
    let out = std::fs::read_to_string(dir.join("logs/1/stdout")).unwrap();
    assert!(out.contains("hostile line"), "{out:?}");
    assert!(dir.join("logs/1/stdout.1").exists(), "rotated");
}

#[test]
fn logs_and_sandbox_belong_to_the_task_and_the_operators_alone() {
    common::require_root("a task of its own uid");
    use std::os::unix::fs::MetadataExt;
    let s = own_identity(spec(
        "t/e/own/0",
        &["sh", "-c", "echo secret; echo mine > file"],
    ));
    let (root, dir) = task(&s);
    passable(root.path());
    assert_eq!(wait_exit(supervise(&dir)), 0);
    let st = Status::read(&dir).unwrap().unwrap();
    assert_eq!(st.state, "FINISHED", "{st:?}");
    let uid = st.uid.expect("the status names the task's uid");
    let (first, last) = formic::identity::DEFAULT_RANGE;
    assert!((first..=last).contains(&uid), "uid {uid} from the range");
    let adm = nix::unistd::Group::from_name("adm")
        .unwrap()
        .map_or(0, |g| g.gid.as_raw());
    for (path, mode, gid) in [
        ("sandbox", 0o700, uid),
        ("sandbox/file", 0o644, uid),
        ("logs/1/stdout", 0o640, adm),
    ] {
        let m = std::fs::metadata(dir.join(path)).unwrap();
        assert_eq!(
            (m.uid(), m.mode() & 0o7777, m.gid()),
            (uid, mode, gid),
            "{path}: owner, mode, group"
        );
    }
    for at in ["logs", "logs/1"] {
        let logs = std::fs::metadata(dir.join(at)).unwrap();
        assert_eq!(
            (logs.uid(), logs.mode() & 0o7777),
            (0, 0o711),
            "{at}/ is root's"
        );
    }
    // The same directory keeps its uid; another task gets another.
    assert_eq!(wait_exit(supervise(&dir)), 0);
    assert_eq!(Status::read(&dir).unwrap().unwrap().uid, Some(uid));
    let (root2, other) = task(&own_identity(spec("t/e/other/0", &["true"])));
    passable(root2.path());
    assert_eq!(wait_exit(supervise(&other)), 0);
    let them = Status::read(&other).unwrap().unwrap().uid.unwrap();
    assert_ne!(them, uid, "two tasks, two uids");
}

#[test]
fn the_task_has_no_privileges_to_gain_and_its_health_command_runs_beside_it() {
    common::require_root("a task of its own uid, capabilities to drop");
    let mut s = own_identity(spec("t/e/nnp/0", &["sleep", "30"]));
    s.limits.pids = 64;
    // The check records who and where it runs, then passes.
    s.health = Some(shell_check(
        "id -u > check.uid; cat /proc/self/cgroup > check.cgroup",
        0.1,
        3,
    ));
    let (root, dir) = task(&s);
    passable(root.path());
    let sup = supervise(&dir);
    let st = wait_for(&dir, Duration::from_secs(10), |s| s.healthy == Some(true));
    let pid = st.pid.unwrap().0;
    let seen = |f: &str| common::proc_status(pid, f);
    let (nnp, bnd, eff) = (seen("NoNewPrivs:"), seen("CapBnd:"), seen("CapEff:"));
    let task_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    kill(Pid::from_raw(sup.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(wait_exit(sup), 0);
    assert_eq!(nnp, "1", "no new privileges");
    assert_eq!(bnd, "0000000000000000", "no capability can be gained");
    assert_eq!(eff, "0000000000000000", "no capability held");
    let check_uid = std::fs::read_to_string(dir.join("sandbox/check.uid")).unwrap();
    assert_eq!(
        check_uid.trim(),
        st.uid.unwrap().to_string(),
        "the check's user"
    );
    let check_cgroup = std::fs::read_to_string(dir.join("sandbox/check.cgroup")).unwrap();
    assert_eq!(
        check_cgroup, task_cgroup,
        "the check runs in the task's cgroups"
    );
    let limits = st.limits.expect("the status says how limits are enforced");
    assert_eq!(limits.pids, "cgroup");
    assert_ne!(limits.kill, "process group", "{limits:?}");
}

#[test]
fn a_fork_bomb_stays_inside_its_pids_limit() {
    common::require_root("a task of its own uid in a pids cgroup");
    // Forks until it cannot, says how far it got, and stays.
    let script = r#"
import os, time
n = 0
while n < 200:
    try:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
    except OSError:
        break
    n += 1
print("started", n, flush=True)
time.sleep(30)
"#;
    let mut s = own_identity(spec("t/e/bomb/0", &["python3", "-c", script]));
    s.limits.pids = 16;
    let (root, dir) = task(&s);
    passable(root.path());
    let sup = supervise(&dir);
    let st = wait_for(&dir, Duration::from_secs(10), |s| s.state == "RUNNING");
    let uid = st.uid.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(dir.join("logs/1/stdout")).is_ok_and(|o| o.contains("started")) {
        assert!(Instant::now() < deadline, "the bomb never finished forking");
        std::thread::sleep(Duration::from_millis(20));
    }
    let count = common::processes_of_uid(uid).len();
    kill(Pid::from_raw(sup.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(wait_exit(sup), 0);
    assert!(
        (2..=16).contains(&count),
        "{count} processes under a limit of 16"
    );
    assert!(
        common::processes_of_uid(uid).is_empty(),
        "all gone with the task"
    );
}

/// A directory with a disk of 1 MB mounted at `disk/` in it (root only).
fn small_disk() -> (tempfile::TempDir, common::Tmpfs) {
    common::require_root("a small disk to mount, a task of its own uid");
    let base = common::tempdir();
    let disk = common::Tmpfs::mount(&base.path().join("disk"), "1m");
    (base, disk)
}

/// The task directory of `spec` on the disk mounted at `base/disk`.
fn task_on(base: &tempfile::TempDir, spec: &Spec) -> PathBuf {
    passable(base.path());
    let dir = taskdir::task_dir(&base.path().join("disk"), &spec.task);
    taskdir::create(&dir).unwrap();
    std::fs::write(dir.join("spec.json"), spec.to_json().to_string()).unwrap();
    dir
}

#[test]
fn a_supervisor_that_gives_up_first_kills_everything_it_started() {
    // The task's directory on a small disk; a check that fails writes the status each
    // time, and the status cannot be written once the disk is full.
    let (base, disk) = small_disk();
    let mut s = own_identity(spec(
        "t/e/full/0",
        &[
            "sh",
            "-c",
            "setsid sleep 600 & echo $! > escaped.pid; sleep 600 & exec sleep 600",
        ],
    ));
    s.health = Some(shell_check("false", 0.2, 1000));
    let dir = task_on(&base, &s);
    let sup = supervise(&dir);
    let st = wait_for(&dir, Duration::from_secs(10), |s| s.health_failures >= 1);
    let uid = st.uid.unwrap();
    let escaped = dir.join("sandbox/escaped.pid");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&escaped).is_ok_and(|p| p.ends_with('\n')) {
        assert!(
            Instant::now() < deadline,
            "the task never wrote its child's pid"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(common::processes_of_uid(uid).len(), 3);
    disk.fill();
    let code = wait_exit(sup);
    assert_ne!(code, 0, "the supervisor gave up");
    assert!(
        common::processes_of_uid(uid).is_empty(),
        "processes left running unsupervised: {:?}",
        common::processes_of_uid(uid)
    );
    assert!(!taskdir::supervised(&dir).unwrap());
}

#[test]
fn a_full_disk_drops_log_lines_and_supervision_goes_on() {
    let (base, disk) = small_disk();
    // Once the supervisor has said it runs (a status it cannot write on a full disk makes
    // it give up, as the test above shows), it fills the disk itself, talks while it is
    // full (more than a pipe holds, so the supervisor has read most of it once it is
    // done), waits for room, then says bye.
    let script = "while [ ! -e go ]; do sleep 0.01; done; \
                  head -c 4M /dev/zero > fill 2>/dev/null; yes lost | head -c 300000; \
                  touch talked; while [ -e fill ]; do sleep 0.05; done; echo bye";
    let s = own_identity(spec("t/e/enospc/0", &["sh", "-c", script]));
    let dir = task_on(&base, &s);
    let sup = supervise(&dir);
    wait_for(&dir, Duration::from_secs(30), |s| s.state == "RUNNING");
    std::fs::write(dir.join("sandbox/go"), "").unwrap();
    // Generous: on a loaded machine the task's 300 KB, each write refused by the full
    // disk, took over 10 s in CI; this waits for progress, it times nothing.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.join("sandbox/talked").exists() {
        assert!(Instant::now() < deadline, "the task never filled the disk");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        taskdir::supervised(&dir).unwrap(),
        "the supervisor lives on"
    );
    std::fs::remove_file(dir.join("sandbox/fill")).unwrap();
    assert_eq!(wait_exit(sup), 0);
    let st = Status::read(&dir).unwrap().unwrap();
    assert_eq!(st.state, "FINISHED", "{st:?}");
    assert!(st.log_dropped > 0, "dropped bytes are counted: {st:?}");
    let out = std::fs::read_to_string(dir.join("logs/1/stdout")).unwrap();
    let df = Command::new("df")
        .arg(base.path().join("disk"))
        .output()
        .unwrap();
    let ls = Command::new("ls")
        .args(["-laR"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.ends_with("bye\n"),
        "{out:?} {st:?} {} {}",
        common::stdout(&df),
        common::stdout(&ls)
    );
    drop(disk);
}

#[test]
fn a_command_that_cannot_be_run_fails_with_127_and_says_why() {
    for (name, argv) in [("missing", "/nonexistent/binary"), ("empty", "")] {
        let (_root, dir) = task(&spec(&format!("t/e/{name}/0"), &[argv]));
        let code = wait_exit(supervise(&dir));
        assert_ne!(code, 0);
        let st = Status::read(&dir).unwrap().unwrap();
        assert_eq!(
            (st.state.as_str(), st.exit, st.pid),
            ("FAILED", Some(127), None),
            "{st:?}"
        );
        let reason = st.reason.unwrap_or_default();
        assert!(reason.contains("No such file or directory"), "{reason}");
        let log = std::fs::read_to_string(dir.join("logs/1/stderr")).unwrap();
        assert!(log.contains("No such file or directory"), "{log}");
    }
}

// --- health checks: they never hold the supervisor up, and cost what they should ---

/// A server that takes every request, says so (`asked` in its working directory) and
/// answers none of them for a minute.
const SILENT: &str = r#"
import http.server, sys, time
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        open("asked", "w").close()
        time.sleep(60)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

#[test]
fn a_stop_during_a_slow_health_check_signals_the_task_at_once() {
    // Checks that take far longer than the grace period: a command, and an HTTP server
    // that never answers. The stop must not wait for either.
    let port = free_port();
    let slow_command = {
        let mut s = spec("t/e/slowcmd/0", &["sleep", "60"]);
        let mut h = shell_check("touch asked; exec sleep 60", 0.1, 3);
        h.timeout_s = 20.0;
        s.health = Some(h);
        s
    };
    let slow_http = {
        let mut s = spec(
            "t/e/slowhttp/0",
            &["python3", "-c", SILENT, &port.to_string()],
        );
        s.health = Some(http_check(port, "/", 0.1, 20.0, 3));
        s
    };
    for s in [slow_command, slow_http] {
        let (_root, dir) = task(&s);
        let sup = supervise(&dir);
        common::wait_until("a check under way", Duration::from_secs(20), || {
            dir.join("sandbox/asked").exists().then_some(())
        });
        let asked = Instant::now();
        kill(Pid::from_raw(sup.id() as i32), Signal::SIGTERM).unwrap();
        let st = wait_for(&dir, Duration::from_secs(30), finished);
        let took = asked.elapsed();
        assert_eq!(wait_exit(sup), 0);
        assert_eq!(
            (st.state.as_str(), st.signal),
            ("KILLED", Some(15)),
            "{}: the task got SIGTERM, not SIGKILL: {st:?}",
            s.task
        );
        assert!(
            took < Duration::from_secs(3),
            "{}: stopped {took:?} after it was asked, not at once",
            s.task
        );
    }
}

/// Counts the times a task's status is replaced (renamed into place), by inotify.
struct StatusWrites(std::os::fd::OwnedFd);

impl StatusWrites {
    fn watch(dir: &Path) -> StatusWrites {
        use nix::libc;
        use std::os::fd::FromRawFd;
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: plain system calls; the descriptor is owned from here on.
        unsafe {
            let fd = libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC);
            assert!(fd >= 0, "inotify_init1");
            let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
            let wd = libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), libc::IN_MOVED_TO);
            assert!(wd >= 0, "inotify_add_watch");
            StatusWrites(fd)
        }
    }

    /// Replacements of `status` since the last call.
    fn take(&self) -> usize {
        use nix::libc;
        let mut n = 0;
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: reads into a buffer of the size given.
            let got = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if got <= 0 {
                return n;
            }
            let mut at = 0;
            let head = std::mem::size_of::<libc::inotify_event>();
            while at + head <= got as usize {
                // SAFETY: the kernel wrote whole events; read_unaligned copes with the
                // buffer's alignment.
                let ev: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
                let name = &buf[at + head..at + head + ev.len as usize];
                if name.split(|&b| b == 0).next() == Some(b"status") {
                    n += 1;
                }
                at += head + ev.len as usize;
            }
        }
    }
}

#[test]
fn health_checks_at_interval_zero_are_spaced_and_do_not_rewrite_the_status_each_time() {
    // A check that always fails, asked for as often as possible; each one leaves a line.
    let mut s = spec("t/e/spin/0", &["sleep", "60"]);
    s.health = Some(shell_check("echo >> checks; exit 1", 0.0, 3));
    let (_root, dir) = task(&s);
    let checks =
        || std::fs::read_to_string(dir.join("sandbox/checks")).map_or(0, |c| c.lines().count());
    let started = Instant::now();
    let sup = supervise(&dir);
    common::wait_until("six checks", Duration::from_secs(20), || {
        (checks() >= 6).then_some(())
    });
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "six checks within {took:?}: not spaced by the 0.1 s floor"
    );
    // Unhealthy now or soon; from then on a failure changes only the count, and the
    // status is replaced at most once a second for that.
    wait_for(&dir, Duration::from_secs(10), |s| s.healthy == Some(false));
    let writes = StatusWrites::watch(&dir);
    let (from, at) = (checks(), Instant::now());
    common::wait_until("twenty more checks", Duration::from_secs(20), || {
        (checks() >= from + 20).then_some(())
    });
    let (n, window) = (writes.take(), at.elapsed());
    kill(Pid::from_raw(sup.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(wait_exit(sup), 0);
    assert!(
        n as f64 <= window.as_secs_f64().ceil() + 1.0,
        "the status was replaced {n} times in {window:?} of failing checks"
    );
    assert!(n >= 1, "the count of failures is still written");
}

#[test]
fn huge_durations_in_the_spec_are_taken_without_a_panic() {
    // 1e30 s does not fit a Duration; each must still mean "practically never".
    let huge = 1e30;
    for field in ["interval_s", "timeout_s", "grace_s"] {
        let mut s = spec(&format!("t/e/huge{}/0", &field[..4]), &["sleep", "60"]);
        let mut h = shell_check("exit 0", 0.1, 3);
        match field {
            "interval_s" => h.interval_s = huge,
            "timeout_s" => h.timeout_s = huge,
            _ => s.grace_s = huge,
        }
        s.health = Some(h);
        let (_root, dir) = task(&s);
        let sup = supervise(&dir);
        // A check with a huge timeout has passed; with a huge interval none comes.
        wait_for(&dir, Duration::from_secs(10), |s| {
            s.state == "RUNNING" && (field == "interval_s" || s.healthy == Some(true))
        });
        kill(Pid::from_raw(sup.id() as i32), Signal::SIGTERM).unwrap();
        let out = common::wait_output(sup, Duration::from_secs(30));
        let st = Status::read(&dir).unwrap().unwrap();
        assert_eq!(
            (common::code(&out), st.state.as_str(), st.signal),
            (0, "KILLED", Some(15)),
            "{field} {huge}: {}; {st:?}",
            common::stderr(&out)
        );
    }
}

#[test]
fn an_http_check_reads_the_answer_before_it_hangs_up() {
    // Python's http.server logs each request on stderr, and a traceback for each client
    // that hung up on its answer (a connection reset).
    let port = free_port();
    let mut s = web_server("t/e/polite/0", port);
    s.health = Some(http_check(port, "/", 0.1, 2.0, 3));
    let (_root, dir) = task(&s);
    let sup = supervise(&dir);
    let log = || std::fs::read_to_string(dir.join("logs/1/stderr")).unwrap_or_default();
    common::wait_until("forty checks answered", Duration::from_secs(30), || {
        let answered = log()
            .lines()
            .filter(|l| l.contains("\"GET / HTTP/1.") && l.contains("\" 200 "))
            .count();
        (answered >= 40).then_some(())
    });
    kill(Pid::from_raw(sup.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(wait_exit(sup), 0);
    let log = log();
    assert!(
        !log.contains("Traceback") && !log.contains("Error"),
        "the server saw checks hang up on it:\n{log}"
    );
}

#[test]
fn a_sandbox_the_task_user_cannot_reach_is_refused_with_the_reason() {
    common::require_root("a task of its own uid");
    use std::os::unix::fs::PermissionsExt;
    // A directory as `mktemp -d` makes it (0700, root's) above the task's directory.
    let s = own_identity(spec("t/e/hidden/0", &["sh", "-c", "echo started"]));
    let (root, dir) = task(&s);
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let code = wait_exit(supervise(&dir));
    assert_ne!(code, 0);
    let st = Status::read(&dir).unwrap().unwrap();
    assert_eq!((st.state.as_str(), st.pid), ("FAILED", None), "{st:?}");
    let reason = st.reason.unwrap_or_default();
    let uid = st.uid.expect("the uid it would have run as");
    let want = format!(
        "the task's user {uid} cannot reach its sandbox: {} is mode 0700",
        root.path().display()
    );
    assert!(reason.contains(&want), "{reason:?} does not say {want:?}");
    let out = std::fs::read_to_string(dir.join("logs/1/stdout")).unwrap_or_default();
    assert_eq!(out, "", "the task must not have run");
}

#[test]
fn a_spec_the_supervisor_cannot_honour_is_refused_before_anything_starts() {
    // An upside-down uid range (its size overflowed: a panic), and a health path that
    // would split the request line.
    let mut backwards = spec("t/e/backwards/0", &["sh", "-c", "echo started"]);
    backwards.allow_root = false;
    backwards.dynamic_ids = Some((79999, 70000));
    let mut split = spec("t/e/split/0", &["sh", "-c", "echo started"]);
    split.health = Some(http_check(
        free_port(),
        "/ HTTP/1.0\r\nHost: x",
        1.0,
        1.0,
        3,
    ));
    for (s, why) in [
        (backwards, "uid range 79999-70000"),
        (split, "not an HTTP request path"),
    ] {
        let (_root, dir) = task(&s);
        let out = common::wait_output(supervise(&dir), Duration::from_secs(30));
        let st = Status::read(&dir).unwrap().unwrap();
        assert_eq!(
            (common::code(&out), st.state.as_str(), st.pid),
            (65, "FAILED", None),
            "{}: {}; {st:?}",
            s.task,
            common::stderr(&out)
        );
        let reason = st.reason.unwrap_or_default();
        assert!(reason.contains(why), "{}: {reason}", s.task);
        assert!(!dir.join("logs/1/stdout").exists(), "{}: it ran", s.task);
    }
}
