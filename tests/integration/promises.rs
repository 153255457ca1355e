//! README promises that no other module tests: a closed standard output, launch as a
//! filter, what a launched task gets ({{host}}, "shell":true, --pass-env, FORMIC_HOST), the
//! default state paths, and scripts/reconcile's exit status.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use formic::taskdir;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::common::{self, bin, code, host_line, run, snapshot, stderr, stdout, tool};

/// A state with local hosts in a temporary directory; every supervisor started on them
/// is stopped when dropped.
struct Site {
    dir: tempfile::TempDir,
    hosts: Vec<String>,
}

impl Site {
    fn new(hosts: &[&str]) -> Site {
        let site = Site {
            dir: common::tempdir(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
        };
        let lines: String = hosts
            .iter()
            .map(|h| host_line(h, 4.0, 4096) + "\n")
            .collect();
        let out = run(tool("offer", &site.state()).arg("add"), lines.as_bytes());
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        site
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `offer | pack JOBS`: pack's records (it must place everything).
    fn pack(&self, jobs: &str) -> String {
        let file = self.path("jobs.jsonl");
        std::fs::write(&file, jobs).unwrap();
        let offers = stdout(&run(&mut tool("offer", &self.state()), b""));
        let out = run(tool("pack", &self.state()).arg(&file), offers.as_bytes());
        assert_eq!(code(&out), 0, "pack: {}", stderr(&out));
        stdout(&out)
    }

    fn sandbox(&self, host: &str, task: &str) -> PathBuf {
        taskdir::task_dir(&taskdir::host_root(&self.state(), host), task).join("sandbox")
    }
}

impl Drop for Site {
    /// Supervisors are stopped with SIGTERM (each removes its cgroups), then whatever is
    /// left by force.
    fn drop(&mut self) {
        let dirs: Vec<PathBuf> = self
            .hosts
            .iter()
            .flat_map(|h| common::tasks_under(&taskdir::host_root(&self.state(), h)))
            .collect();
        let statuses: Vec<taskdir::Status> = dirs
            .iter()
            .filter_map(|d| taskdir::Status::read(d).ok()?)
            .collect();
        for s in &statuses {
            if formic::process::same_process(s.supervisor.0, s.supervisor.1) {
                let _ = kill(Pid::from_raw(s.supervisor.0 as i32), Signal::SIGTERM);
            }
        }
        let _ = std::panic::catch_unwind(|| {
            common::wait_until("supervisors gone", Duration::from_secs(10), || {
                (!dirs.iter().any(|d| taskdir::supervised(d).unwrap_or(false))).then_some(())
            })
        });
        for s in &statuses {
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

/// `n` note records, each a line of its own, as other tools' records would come.
fn notes(n: usize) -> String {
    (0..n)
        .map(|i| format!("{{\"type\":\"note\", \"n\":{i}, \"text\":\"passed on as it came\"}}\n"))
        .collect()
}

// --- a closed standard output ---

/// Runs `cmd` with `input`, reads the first bytes of its output and closes the pipe, as
/// `| head -c 10` does; the tool must end quietly with 0. Returns what went wrong.
fn closes_quietly(what: &str, cmd: &mut Command, input: String) -> Option<String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // From a thread: a tool that stops reading must not block the test.
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 10];
    let read = out.read_exact(&mut first);
    drop(out);
    let done = common::wait_output(child, common::TIMEOUT);
    feeder.join().unwrap();
    if let Err(e) = read {
        return Some(format!("{what}: no output ({e}): {}", stderr(&done)));
    }
    if first[0] != b'{' {
        return Some(format!("{what}: not a record first: {first:?}"));
    }
    (code(&done) != 0 || !stderr(&done).is_empty())
        .then(|| format!("{what}: exit {} and said {:?}", code(&done), stderr(&done)))
}

#[test]
fn a_closed_stdout_ends_pack_reap_launch_and_announce_quietly_with_0() {
    let site = Site::new(&["h1"]);
    let state = site.state();
    // Every tool gets far more to print than a pipe holds (pack widens its pipe to 1 MiB),
    // so it is still writing when the reader goes.
    let many = notes(50_000);
    let jobs = site.path("jobs.jsonl");
    std::fs::write(
        &jobs,
        r#"{"job":"t/e/web","instances":1,"cmd":["sleep","600"],"resources":{"cpus":0.5,"ram_mb":64}}"#,
    )
    .unwrap();
    let offers = stdout(&run(&mut tool("offer", &state), b""));
    let mut wrong = Vec::new();
    wrong.extend(closes_quietly(
        "pack",
        tool("pack", &state).arg(&jobs),
        format!("{offers}{many}"),
    ));
    wrong.extend(closes_quietly(
        "reap",
        &mut tool("reap", &state),
        many.clone(),
    ));
    wrong.extend(closes_quietly(
        "launch",
        &mut tool("launch", &state),
        many.clone(),
    ));
    // announce resolve of a serverset with thousands of members.
    let serversets = site.path("serversets");
    let set = serversets.join("formic/t/e/web");
    std::fs::create_dir_all(&set).unwrap();
    for i in 0..5000u32 {
        let member = json!({"serviceEndpoint": {"host": "10.0.0.1", "port": 31000 + i % 1000},
            "additionalEndpoints": {}, "shard": i, "status": "ALIVE"});
        std::fs::write(set.join(format!("member_{i:010}")), member.to_string()).unwrap();
    }
    wrong.extend(closes_quietly(
        "announce resolve",
        tool("announce", &state).args(["resolve", "/formic/t/e/web"]),
        String::new(),
    ));
    assert!(wrong.is_empty(), "{wrong:#?}");
}

// --- launch ---

#[test]
fn launch_passes_other_records_through_unchanged() {
    let site = Site::new(&["h1"]);
    let records = site.pack(
        r#"{"job":"t/e/web","instances":2,"cmd":["sleep","600"],"resources":{"cpus":0.5,"ram_mb":64}}"#,
    );
    // Notes before, between and after pack's records, spaced unlike the tools space theirs.
    let note = |n: u32| format!(r#"{{"type":"note",  "n": {n} ,"text":"as it came"}}"#);
    let mut lines: Vec<String> = records.lines().map(String::from).collect();
    lines.insert(0, note(0));
    lines.insert(2, note(1));
    lines.push(note(2));
    let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let out = run(
        tool("launch", &site.state()).args(["--allow-root", "--wait", "10"]),
        input.as_bytes(),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let (events, others): (Vec<&str>, Vec<&str>) = text
        .lines()
        .partition(|l| l.starts_with(r#"{"type":"event""#));
    assert_eq!(
        others,
        [note(0), note(1), note(2)],
        "the other lines, byte for byte and in order; nothing else"
    );
    assert_eq!(events.len(), 2, "{text}");
    for e in events {
        let e: Value = serde_json::from_str(e).unwrap();
        assert_eq!(e["state"], "RUNNING", "{e}");
    }
}

#[test]
fn a_launched_task_gets_its_host_a_shell_if_asked_and_only_the_environment_passed() {
    let site = Site::new(&["node-7"]);
    // No shell: argv as written, with {{host}} filled in and "$FORMIC_HOST" left alone;
    // the task writes its arguments and environment into its sandbox, then stays.
    let script = "printf '%s\\n' \"$@\" > args.tmp && mv args.tmp args && \
                  env > env.tmp && mv env.tmp env && exec sleep 600";
    let plain = json!({"job": "t/e/plain", "instances": 1,
        "cmd": ["sh", "-c", script, "sh", "{{host}}", "$FORMIC_HOST", "{{task}}"],
        "resources": {"cpus": 0.5, "ram_mb": 64}});
    // "shell":true: one command line for /bin/sh, which expands the variable.
    let shell = json!({"job": "t/e/shell", "instances": 1, "shell": true,
        "cmd": ["echo", "$FORMIC_HOST-{{host}}", ">", "out.tmp", "&&", "mv", "out.tmp", "out",
                "&&", "exec", "sleep", "600"],
        "resources": {"cpus": 0.5, "ram_mb": 64}});
    let records = site.pack(&format!("{plain}\n{shell}\n"));
    let out = run(
        tool("launch", &site.state())
            .args(["--allow-root", "--wait", "10", "--pass-env", "PASSED"])
            .env("PASSED", "from launch")
            .env("HIDDEN", "not for tasks"),
        records.as_bytes(),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let read = |task: &str, file: &str| -> String {
        let path = site.sandbox("node-7", task).join(file);
        common::wait_until(
            &format!("{task} wrote {file}"),
            Duration::from_secs(20),
            || std::fs::read_to_string(&path).ok(),
        )
    };
    assert_eq!(
        read("t/e/plain/0", "args"),
        "node-7\n$FORMIC_HOST\nt/e/plain/0\n",
        "{{{{host}}}} filled in, no shell expansion by launch"
    );
    let env = read("t/e/plain/0", "env");
    let vars: Vec<&str> = env.lines().collect();
    for want in [
        "FORMIC_HOST=node-7",
        "PASSED=from launch",
        "FORMIC_TASK=t/e/plain/0",
    ] {
        assert!(vars.contains(&want), "{want} missing from {vars:?}");
    }
    for name in ["HIDDEN=", "FORMIC_STATE=", "USER="] {
        assert!(
            !vars.iter().any(|v| v.starts_with(name)),
            "{name} reached the task: {vars:?}"
        );
    }
    assert_eq!(read("t/e/shell/0", "out"), "node-7-node-7\n");
}

// --- the default state path ---

#[test]
fn the_state_defaults_to_var_lib_formic_for_root() {
    common::require_root("root's default path; a mount namespace to keep it private");
    // In a mount namespace of its own with a fresh /var/lib: the real one is not touched.
    let script = r#"
        set -u
        mount -t tmpfs -o mode=0755 tmpfs /var/lib || exit 99
        "$OFFER" hosts --json >/dev/null 2>reader.err
        echo "reader: $?"
        head -n1 reader.err
        "$OFFER" add <"$HOSTS" >/dev/null || exit 98
        test -f /var/lib/formic/state && echo "made: /var/lib/formic/state"
        "$OFFER" hosts --json
    "#;
    let dir = common::tempdir();
    std::fs::write(dir.path().join("hosts"), host_line("h1", 2.0, 1024) + "\n").unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", script])
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("OFFER", bin("offer"))
        .env("HOSTS", dir.path().join("hosts"));
    let out = run(&mut cmd, b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0], "reader: 74",
        "a reader of a missing state: {text}"
    );
    assert!(
        lines[1].contains("/var/lib/formic/state"),
        "the error names the default path: {text}"
    );
    assert_eq!(lines[2], "made: /var/lib/formic/state", "{text}");
    let host: Value = serde_json::from_str(lines[3]).unwrap();
    assert_eq!(host["name"], "h1", "{text}");
}

#[test]
fn the_state_defaults_to_xdg_state_home_then_home_for_other_users() {
    common::require_root("another user to run as");
    let dir = common::tempdir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let owned = |name: &str| {
        let p = dir.path().join(name);
        std::fs::create_dir(&p).unwrap();
        nix::unistd::chown(&p, Some(nobody.uid), Some(nobody.gid)).unwrap();
        p
    };
    // The binary where nobody may run it (the build may sit in a directory of root's).
    let offer = owned("bin").join("offer");
    std::fs::copy(bin("offer"), &offer).unwrap();
    let (xdg, home) = (owned("xdg"), owned("home"));
    let as_nobody = |xdg: Option<&Path>, args: &[&str], input: &str| -> Output {
        let mut cmd = Command::new(&offer);
        cmd.args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &home)
            .env("USER", "nobody")
            .uid(nobody.uid.as_raw())
            .gid(nobody.gid.as_raw());
        if let Some(x) = xdg {
            cmd.env("XDG_STATE_HOME", x);
        }
        run(&mut cmd, input.as_bytes())
    };
    for (xdg, state) in [
        (Some(xdg.as_path()), xdg.join("formic/state")),
        (None, home.join(".local/state/formic/state")),
    ] {
        let out = as_nobody(xdg, &["hosts", "--json"], "");
        assert_eq!(
            code(&out),
            74,
            "a reader of a missing state: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(state.to_str().unwrap()),
            "the error names {}: {}",
            state.display(),
            stderr(&out)
        );
        let out = as_nobody(xdg, &["add"], &(host_line("h1", 2.0, 1024) + "\n"));
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert!(state.is_file(), "no state at {}", state.display());
        let out = as_nobody(xdg, &["hosts", "--json"], "");
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert!(stdout(&out).contains(r#""name":"h1""#), "{}", stdout(&out));
    }
}

// --- scripts/reconcile ---

/// scripts/reconcile JOBS on this build's tools, for the site's state.
fn reconcile(site: &Site, jobs: &Path) -> Output {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/reconcile");
    let mut cmd = Command::new(script);
    cmd.arg(jobs)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("FORMIC_STATE", site.state())
        .env("FORMIC_BIN", bin("offer").parent().unwrap());
    run(&mut cmd, b"")
}

/// The summary line: the last line on stderr, starting `reconcile: `.
fn summary(out: &Output) -> String {
    let err = stderr(out);
    let last = err.lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("reconcile: "), "no summary line: {err}");
    last
}

#[test]
fn reconcile_exits_0_with_instances_pending_and_with_a_step_failing_its_status() {
    let site = Site::new(&["h1"]);
    let jobs = site.path("jobs");
    std::fs::create_dir(&jobs).unwrap();
    // Too large for the one host: pending, which is news rather than a failure.
    std::fs::write(
        jobs.join("big.json"),
        r#"{"job":"t/e/big","instances":2,"cmd":["sleep","600"],"resources":{"cpus":8,"ram_mb":64}}"#,
    )
    .unwrap();
    let out = reconcile(&site, &jobs);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stderr(&out).lines().count(),
        1,
        "one line: {}",
        stderr(&out)
    );
    let line = summary(&out);
    assert!(line.contains("0 placed, 2 pending"), "{line}");
    assert!(!line.contains("failed"), "{line}");

    // A malformed job file: pack fails (65) and so does the pass, with that status.
    std::fs::write(jobs.join("broken.json"), "{not json\n").unwrap();
    let out = reconcile(&site, &jobs);
    assert_eq!(code(&out), 65, "{}", stderr(&out));
    let line = summary(&out);
    assert!(line.contains("a step failed (status 65)"), "{line}");
    assert!(
        stderr(&out).contains("broken.json"),
        "pack's error is passed on: {}",
        stderr(&out)
    );
    std::fs::remove_file(jobs.join("broken.json")).unwrap();

    // A state the first reap cannot read: its status, and nothing placed.
    let good = std::fs::read(site.state()).unwrap();
    std::fs::write(site.state(), b"not a formic state at all, not even close").unwrap();
    let out = reconcile(&site, &jobs);
    assert_eq!(code(&out), 74, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("reap failed (status 74)"),
        "{}",
        stderr(&out)
    );
    std::fs::write(site.state(), good).unwrap();
}

#[test]
fn reconcile_skips_with_0_while_another_pass_holds_its_lock() {
    let site = Site::new(&["h1"]);
    let jobs = site.path("jobs");
    std::fs::create_dir(&jobs).unwrap();
    std::fs::write(
        jobs.join("web.json"),
        r#"{"job":"t/e/web","instances":1,"cmd":["sleep","600"],"resources":{"cpus":0.5,"ram_mb":64}}"#,
    )
    .unwrap();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(format!("{}.reconcile.lock", site.state().display()))
        .unwrap();
    lock.lock().unwrap();
    let before = snapshot(&site.state());
    let out = reconcile(&site, &jobs);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // Quiet: cron mails whatever a job prints, and an overlap needs no person.
    assert_eq!(stderr(&out), "", "a skipped pass says nothing");
    assert_eq!(
        snapshot(&site.state()),
        before,
        "the skipped pass changed the state"
    );
    assert!(
        !taskdir::host_root(&site.state(), "h1").exists(),
        "the skipped pass started something"
    );
    // Once the lock is free, the next pass acts.
    drop(lock);
    let out = reconcile(&site, &jobs);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        summary(&out).contains("1 placed, 0 pending"),
        "{}",
        stderr(&out)
    );
}

/// Placements in conflict with another pass are news for the next pass (0, counted in the
/// summary); a task launch could not start fails the pass (1). The conflicts are made
/// as another pass would make them: a launch that commits the same placements first (a
/// wrapper around the real launch, run twice on its input).
#[test]
fn reconcile_counts_conflicts_as_news_and_a_failed_start_as_a_failure() {
    let site = Site::new(&["h1"]);
    let jobs = site.path("jobs");
    std::fs::create_dir(&jobs).unwrap();
    std::fs::write(
        jobs.join("web.json"),
        r#"{"job":"t/e/web","instances":2,"cmd":["sleep","600"],"resources":{"cpus":0.5,"ram_mb":64}}"#,
    )
    .unwrap();
    let tools = site.path("bin");
    std::fs::create_dir(&tools).unwrap();
    for t in ["offer", "pack", "reap", "announce", "formic-supervise"] {
        std::os::unix::fs::symlink(bin(t), tools.join(t)).unwrap();
    }
    let wrapper = format!(
        "#!/bin/sh\nin=$(mktemp)\ncat > \"$in\"\n{launch} < \"$in\" > /dev/null\n{launch} < \"$in\"\nstatus=$?\nrm -f \"$in\"\nexit $status\n",
        launch = bin("launch").display()
    );
    std::fs::write(tools.join("launch"), wrapper).unwrap();
    std::fs::set_permissions(tools.join("launch"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/reconcile");
    let pass = |tools: &Path| {
        let mut cmd = Command::new(&script);
        cmd.arg(&jobs)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("FORMIC_STATE", site.state())
            .env("FORMIC_BIN", tools);
        run(&mut cmd, b"")
    };
    let out = pass(&tools);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let line = summary(&out);
    assert!(
        line.contains("2 placed, 0 pending, 2 in conflict, 0 stopped, 2 running"),
        "{line}"
    );
    assert!(!line.contains("failed"), "{line}");

    // A steady pass reports what runs, not what it launched; a scale-down its stops.
    let out = pass(&tools);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        summary(&out).contains("0 placed, 0 pending, 0 in conflict, 0 stopped, 2 running"),
        "{}",
        stderr(&out)
    );
    std::fs::write(
        jobs.join("web.json"),
        r#"{"job":"t/e/web","instances":1,"cmd":["sleep","600"],"resources":{"cpus":0.5,"ram_mb":64}}"#,
    )
    .unwrap();
    let out = pass(&tools);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        summary(&out).contains("1 stopped, 1 running"),
        "{}",
        stderr(&out)
    );

    // The same pass where launch finds no formic-supervise: FAILED starts, status 1.
    let out = run(
        tool("reap", &site.state()).args(["kill", "--job", "t/e/web"]),
        b"",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    std::fs::remove_file(tools.join("formic-supervise")).unwrap();
    std::fs::remove_file(tools.join("launch")).unwrap();
    std::fs::copy(bin("launch"), tools.join("launch")).unwrap();
    let out = pass(&tools);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        summary(&out).contains("a step failed (status 1)"),
        "{}",
        stderr(&out)
    );
}

/// Issue 11: tools that read standard input said nothing when it was a terminal, so a
/// person who typed `pack jobs/` alone saw nothing happen; they say what they wait for.
#[test]
fn tools_reading_stdin_from_a_terminal_say_what_they_wait_for() {
    let site = Site::new(&["h1"]);
    let jobs = site.path("web.json");
    std::fs::write(
        &jobs,
        r#"{"job":"t/e/web","instances":1,"cmd":["sleep","600"],"resources":{"cpus":0.5,"ram_mb":64}}"#,
    )
    .unwrap();
    for (name, args, what) in [
        (
            "pack",
            vec![jobs.to_str().unwrap()],
            "pack: reading offers from standard input",
        ),
        (
            "launch",
            vec![],
            "launch: reading place and spec records from standard input",
        ),
        (
            "offer",
            vec!["add"],
            "offer: reading host records from standard input",
        ),
    ] {
        let out = common::run_with_tty_stdin(tool(name, &site.state()).args(&args));
        let err = stderr(&out);
        assert!(err.starts_with(what), "{name}: {err}");
    }
    // Not on a terminal: not a word.
    let out = run(tool("pack", &site.state()).arg(&jobs), b"");
    assert!(!stderr(&out).contains("reading"), "{}", stderr(&out));
}

/// One rule for unknown names: `reap tasks --host nosuch` (0 with nothing listed before)
/// is an error, as `offer hosts nosuch` and `reap kill --host nosuch` are.
#[test]
fn an_unknown_host_or_job_is_an_error_for_every_tool() {
    let site = Site::new(&["h1"]);
    for args in [
        vec!["tasks", "--host", "nosuch"],
        vec!["tasks", "--job", "no/such/job"],
        vec!["kill", "--host", "nosuch"],
    ] {
        let out = run(tool("reap", &site.state()).args(&args), b"");
        assert_eq!(code(&out), 65, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("no"), "{}", stderr(&out));
    }
    let out = run(tool("offer", &site.state()).args(["hosts", "nosuch"]), b"");
    assert_eq!(code(&out), 65, "{}", stderr(&out));
}
