//! Many writers at once, and the lock not leaking into children.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use formic::state::{Options, State};
use formic::task::{Job, Task, TaskState};

use crate::common;

const WRITERS: u32 = 8;
const TXNS: u32 = 500;

/// Child role: commit TXNS transactions, each adding one task of this writer's job.
pub fn counter_child() {
    let path = PathBuf::from(std::env::var("FORMIC_TEST_STATE").unwrap());
    let me: u32 = std::env::var("FORMIC_TEST_WRITER")
        .unwrap()
        .parse()
        .unwrap();
    let mut state = State::open_writer(&path).unwrap();
    for i in 0..TXNS {
        state
            .write(|tx| {
                let key = format!("conc/test/w{me}");
                let job = tx.view().jobs.find(&key).unwrap_or_else(|| {
                    tx.upsert(Job {
                        announce: None,
                        key,
                        ports: vec![],
                        rollout: Default::default(),
                        runs: Default::default(),
                        counts: Default::default(),
                    })
                });
                let mut t = Task::new(job, i);
                t.state = TaskState::Pending;
                tx.upsert(t);
                Ok(())
            })
            .unwrap();
    }
}

#[test]
fn eight_writers_commit_exactly_four_thousand() {
    let dir = common::tempdir();
    let path = dir.path().join("state");
    State::open_writer(&path).unwrap();
    let children: Vec<_> = (0..WRITERS)
        .map(|w| {
            common::child("counter-writer")
                .env("FORMIC_TEST_STATE", &path)
                .env("FORMIC_TEST_WRITER", w.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = common::wait_output(c, Duration::from_secs(600));
        assert!(
            out.status.success(),
            "a writer failed: {}",
            common::stderr(&out)
        );
    }
    let state = State::open(&path).unwrap();
    let v = state.view();
    assert_eq!(v.txid, (WRITERS * TXNS) as u64, "committed transactions");
    assert_eq!(
        v.tasks.len(),
        (WRITERS * TXNS) as usize,
        "tasks in the state"
    );
    for w in 0..WRITERS {
        let job = v
            .jobs
            .find(&format!("conc/test/w{w}"))
            .expect("each writer's job");
        for i in 0..TXNS {
            assert!(
                v.tasks.find(&(job, i)).is_some(),
                "task {i} of writer {w} was lost"
            );
        }
    }
}

/// Child role: inside a transaction (lock held), start `sleep`, print its pid, and wait for
/// a line on stdin before committing.
pub fn lock_holder_child() {
    let path = PathBuf::from(std::env::var("FORMIC_TEST_STATE").unwrap());
    let mut state = State::open_writer(&path).unwrap();
    state
        .write(|tx| {
            let sleeper = std::process::Command::new("sleep")
                .arg("60")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            println!("sleeper {}", sleeper.id());
            std::io::stdout().flush()?;
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            tx.upsert(Job {
                announce: None,
                key: "lock/test/held".into(),
                ports: vec![],
                rollout: Default::default(),
                runs: Default::default(),
                counts: Default::default(),
            });
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_child_of_a_writer_does_not_inherit_the_lock() {
    let dir = common::tempdir();
    let path = dir.path().join("state");
    let mut holder = common::child("lock-holder")
        .env("FORMIC_TEST_STATE", &path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
    let sleeper: i32 = loop {
        let line = lines.next().expect("holder printed its sleeper").unwrap();
        if let Some(pid) = line.strip_prefix("sleeper ") {
            break pid.parse().unwrap();
        }
    };
    let kill_sleeper = || {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(sleeper),
            nix::sys::signal::SIGKILL,
        );
    };

    // While the holder is inside its transaction, the lock is really held...
    let quick = Options {
        lock_timeout: Duration::from_millis(300),
        ..Options::default()
    };
    // (open_with itself reads under the lock, so either step may be the one refused;
    // only the documented busy error counts, not any failure to open)
    let refused = match State::open_with(&path, quick.clone(), true) {
        Err(e) => e,
        Ok(mut other) => other
            .write(|_| Ok(()))
            .expect_err("a second writer got the lock while it was held"),
    };
    assert_eq!(
        formic::exit::status_of(&refused),
        formic::exit::Status::Temporary,
        "refused, but not as a busy lock (exit 75): {refused:#}"
    );
    assert!(
        format!("{refused:#}").contains("locked by another writer"),
        "{refused:#}"
    );

    // ...and the sleeper it started holds no descriptor of the state's files.
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{sleeper}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    if fds
        .iter()
        .any(|f| f.starts_with(dir.path().to_str().unwrap()))
    {
        kill_sleeper();
        panic!("the child inherited state descriptors: {fds:?}");
    }

    // Once the holder is gone, the lock is free although its child still runs.
    writeln!(holder.stdin.take().unwrap()).unwrap();
    let status = holder.wait().unwrap();
    assert!(status.success());
    let alive = std::path::Path::new(&format!("/proc/{sleeper}")).exists();
    let mut state = State::open_with(&path, quick, true).unwrap();
    let r = state.write(|tx| {
        tx.upsert(Job {
            announce: None,
            key: "lock/test/after".into(),
            ports: vec![],
            rollout: Default::default(),
            runs: Default::default(),
            counts: Default::default(),
        });
        Ok(())
    });
    kill_sleeper();
    assert!(alive, "the sleeper should still have been running");
    r.expect("the lock was free once its holder exited");
    assert_eq!(state.view().jobs.len(), 2);
}

/// An idle `reap --follow` (one task, running and healthy) only reads: over a few
/// seconds, another writer finds the lock free every time it tries, and the state's files
/// do not change. Then the follower still does its job: a killed task is reported.
#[test]
fn an_idle_reap_follow_leaves_the_lock_alone() {
    use formic::taskdir;
    use std::fs::TryLockError;
    use std::time::Instant;

    let dir = common::tempdir();
    let state = dir.path().join("state");
    let host = common::host_line("h1", 4.0, 4096) + "\n";
    let out = common::run(common::tool("offer", &state).arg("add"), host.as_bytes());
    assert_eq!(common::code(&out), 0, "{}", common::stderr(&out));

    // Start a task as launch does: recorded ASSIGNED, its supervisor started, RUNNING.
    let task = "idle/test/sleeper/0";
    let mut s = State::open_writer(&state).unwrap();
    let slot = s
        .write(|tx| {
            let job = tx.upsert(Job {
                announce: None,
                key: "idle/test/sleeper".into(),
                ports: vec![],
                rollout: Default::default(),
                runs: Default::default(),
                counts: Default::default(),
            });
            let mut t = Task::new(job, 0);
            t.incarnation = 1;
            t.launcher = formic::process::short_name(std::process::id());
            t.host = tx.view().hosts.find(&"h1".to_string()).unwrap();
            t.state = TaskState::Assigned;
            t.cpus = 500;
            t.ram_mb = 64;
            t.since = tx.now();
            Ok(tx.upsert(t))
        })
        .unwrap();
    let tdir = taskdir::task_dir(&taskdir::host_root(&state, "h1"), task);
    taskdir::create(&tdir).unwrap();
    let spec = common::spec(task, &["sleep", "600"]);
    std::fs::write(tdir.join("spec.json"), spec.to_json().to_string()).unwrap();
    let job = serde_json::json!({"job": "idle/test/sleeper", "service": true});
    std::fs::write(tdir.join("job.json"), job.to_string()).unwrap();
    common::supervise_detached(&tdir);
    let running = common::wait_until("the task running", Duration::from_secs(10), || {
        taskdir::Status::read(&tdir)
            .ok()
            .flatten()
            .filter(|st| st.state == "RUNNING")
    });
    let (pid, start) = running.pid.unwrap();
    // Whatever happens below, the task and its supervisor end with the test.
    struct Cleanup(taskdir::Status);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            use nix::sys::signal::{kill, Signal};
            use nix::unistd::Pid;
            let (sup, sup_start) = self.0.supervisor;
            if formic::process::same_process(sup, sup_start) {
                let _ = kill(Pid::from_raw(sup as i32), Signal::SIGKILL);
            }
            if let Some((pid, start)) = self.0.pid {
                if formic::process::same_process(pid, start) {
                    let _ = nix::sys::signal::killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
            }
        }
    }
    let _cleanup = Cleanup(running);
    s.write(|tx| {
        let mut t = tx.view().tasks.get(slot).unwrap().clone();
        t.state = TaskState::Running;
        (t.pid, t.pid_start) = (pid, start);
        t.since = tx.now();
        tx.set(slot, Some(t));
        Ok(())
    })
    .unwrap();

    let mut follow = common::tool("reap", &state)
        .arg("--follow")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Reaper(std::process::Child);
    impl Drop for Reaper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let events = BufReader::new(follow.stdout.take().unwrap());
    let follow = Reaper(follow);
    // Its first pass records the task healthy (a commit); from then on it is idle.
    common::wait_until(
        "reap --follow's first pass",
        Duration::from_secs(10),
        || {
            s.refresh().unwrap();
            s.view().tasks.get(slot).unwrap().healthy.then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(200));
    let files = common::snapshot(&state);

    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(formic::state::lock_path(&state))
        .unwrap();
    let (mut tries, mut busy) = (0u64, 0u64);
    let begin = Instant::now();
    while begin.elapsed() < Duration::from_secs(3) {
        match lock.try_lock() {
            Ok(()) => lock.unlock().unwrap(),
            Err(TryLockError::WouldBlock) => busy += 1,
            Err(TryLockError::Error(e)) => panic!("locking: {e}"),
        }
        tries += 1;
    }
    assert_eq!(
        busy, 0,
        "the lock was busy {busy} times out of {tries} while reap --follow was idle"
    );
    assert!(
        common::snapshot(&state) == files,
        "an idle reap --follow changed the state's files"
    );

    // Still following: a killed task is reported.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in events.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("reap --follow reports the killed task");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["task"] == task && v["state"] == "FAILED" {
            break;
        }
    }
    drop(follow);
}
