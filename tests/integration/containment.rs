//! Tasks are hostile: a job that attacks its host and its neighbours, run by the real
//! pipeline as root next to a victim, with its supervisors killed and its disk full. What a
//! task can touch is its sandbox; everything it starts dies with it. Root only (CI is root).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use formic::taskdir;
use serde_json::Value;

use crate::common::{self, code, run, stderr, stdout, tool, Tmpfs};

/// A local cluster of one host whose run directory is a small disk of its own.
struct Cluster {
    dir: tempfile::TempDir,
    disk: Option<Tmpfs>,
    uids: Vec<u32>,
}

impl Cluster {
    fn new(disk_size: &str) -> Cluster {
        let dir = common::tempdir();
        // Tasks of their own uid pass through on the way to their sandboxes.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let disk = Tmpfs::mount(&dir.path().join("run"), disk_size);
        let c = Cluster {
            dir,
            disk: Some(disk),
            uids: Vec::new(),
        };
        let host = r#"{"type":"host","name":"h1","cpus":8,"ram_mb":8192,"disk_mb":1000,"ports":[[31000,31099]]}"#;
        let out = run(tool("offer", &c.state()).arg("add"), host.as_bytes());
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        c
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn task_dir(&self, task: &str) -> PathBuf {
        taskdir::task_dir(&taskdir::host_root(&self.state(), "h1"), task)
    }

    /// One reconciliation pass (scripts/reconcile) over `jobs`; its status is 0, or 1
    /// when `may_fail` (a launch on a full disk fails).
    fn pass(&self, jobs: &str, may_fail: bool) -> String {
        let file = self.dir.path().join("jobs.jsonl");
        std::fs::write(&file, jobs).unwrap();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/reconcile");
        let mut cmd = Command::new(script);
        cmd.arg(&file)
            .env("FORMIC_STATE", self.state())
            .env("FORMIC_BIN", common::bin("offer").parent().unwrap());
        let out = run(&mut cmd, b"");
        let ok = code(&out) == 0 || (may_fail && code(&out) == 1);
        assert!(ok, "reconcile: {}", stderr(&out));
        stderr(&out)
    }

    /// The uid a task runs as, once its supervisor reports it; remembered for cleanup.
    fn uid_of(&mut self, task: &str) -> u32 {
        let dir = self.task_dir(task);
        let uid = wait(Duration::from_secs(10), || {
            taskdir::Status::read(&dir)
                .ok()
                .flatten()
                .filter(|s| s.state == "RUNNING")
                .and_then(|s| s.uid)
        })
        .unwrap_or_else(|| panic!("{task} never ran: {:?}", taskdir::Status::read(&dir)));
        self.uids.push(uid);
        uid
    }

    fn reap(&self, args: &[&str]) -> String {
        let out = run(tool("reap", &self.state()).args(args), b"");
        assert!(
            matches!(code(&out), 0 | 1),
            "reap {args:?}: {}",
            stderr(&out)
        );
        stdout(&out)
    }
}

impl Drop for Cluster {
    /// Whatever the test asserted: nothing it started lives on, and the disk goes.
    fn drop(&mut self) {
        for pass in 0..2 {
            // The tasks' uids, and whatever works in the cluster's directory.
            let mut pids: Vec<u32> = self
                .uids
                .iter()
                .flat_map(|&uid| common::processes_of_uid(uid))
                .collect();
            for e in std::fs::read_dir("/proc").unwrap().flatten() {
                let here = std::fs::read_link(e.path().join("cwd"))
                    .is_ok_and(|d| d.starts_with(self.dir.path()));
                if let (true, Some(pid)) =
                    (here, e.file_name().to_str().and_then(|n| n.parse().ok()))
                {
                    pids.push(pid);
                }
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = Command::new(common::bin("reap"))
                .args(["kill", "--host", "h1"])
                .env("FORMIC_STATE", self.state())
                .output();
            if pass == 0 {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        drop(self.disk.take());
    }
}

/// Polls `f` until it gives something, or `limit` passes.
fn wait<T>(limit: Duration, f: impl Fn() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Files outside every sandbox whose bytes must not change, and paths where nothing may
/// appear: a root-only file in a root-only directory, and a file that does not exist yet.
struct Targets {
    _dir: tempfile::TempDir,
    secret: PathBuf,
    absent: PathBuf,
    watched: Vec<(PathBuf, Vec<u8>)>,
}

impl Targets {
    fn new() -> Targets {
        let dir = common::tempdir();
        let secret = dir.path().join("root-only");
        std::fs::write(&secret, "root's\n").unwrap();
        let absent = dir.path().join("made-by-the-task");
        let watched = ["/etc/passwd", "/etc/group", "/etc/shadow"]
            .into_iter()
            .chain([secret.to_str().unwrap()])
            .filter_map(|p| Some((PathBuf::from(p), std::fs::read(p).ok()?)))
            .collect();
        Targets {
            _dir: dir,
            secret,
            absent,
            watched,
        }
    }

    fn unchanged(&self) {
        for (path, bytes) in &self.watched {
            assert_eq!(
                &std::fs::read(path).unwrap(),
                bytes,
                "{} changed",
                path.display()
            );
        }
        assert!(!self.absent.exists(), "{} was made", self.absent.display());
    }
}

fn json_string(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// What the hostile task tries, in its own words (sh): redirect its logs, link root's
/// files, read and write its neighbour, take its secrets from /proc, scatter children that
/// leave its process group, fill the disk, and fork as far as it can.
fn hostile_script(victim: &Path, t: &Targets) -> String {
    let (secret, absent, victim) = (t.secret.display(), t.absent.display(), victim.display());
    format!(
        r#"for n in stdout stderr stdout.1 stderr.1; do ln -s {secret} $n; done
ln -s {absent} ../logs/1/stdout 2>/dev/null; ln -s {absent} ../logs/2 2>/dev/null; ln {secret} hardlink 2>/dev/null; ln /etc/shadow shadow 2>/dev/null
cat {victim}/sandbox/creds {victim}/logs/1/stdout {victim}/spec.json {victim}/job.json >> loot 2>/dev/null
echo pwned > {victim}/sandbox/pwned 2>/dev/null
for p in /proc/[0-9]*; do cat $p/environ >> loot 2>/dev/null; done
for p in /proc/[0-9]*; do [ ${{p#/proc/}} = $$ ] || kill -9 ${{p#/proc/}} 2>/dev/null; done
setsid sleep 600 &
(sleep 600 &)
(i=0; while [ $i -lt 500 ]; do sleep 600 & i=$((i+1)); done) 2>/dev/null
head -c 64M /dev/zero > fill 2>/dev/null
i=0; while [ $i -lt 50 ]; do echo '* * * * * root hostile'; i=$((i+1)); done
touch done
exec sleep 600
"#
    )
}

#[test]
fn a_hostile_task_touches_only_its_sandbox_and_dies_whole() {
    common::require_root("tasks of their own uids, cgroups, a disk to fill");
    let mut c = Cluster::new("16m");
    let targets = Targets::new();
    let victim_dir = c.task_dir("www/prod/victim/0");
    let victim = r#"{"job":"www/prod/victim","instances":1,"cmd":["sh","-c","echo DB_PASSWORD=$DB_PASSWORD; umask 077; echo hunter2-creds > creds; exec sleep 600"],"env":{"DB_PASSWORD":"hunter2-secret"},"resources":{"cpus":0.5,"ram_mb":64}}"#;
    let hostile = format!(
        r#"{{"job":"evil/prod/hostile","instances":1,"cmd":["sh","-c",{}],"resources":{{"cpus":0.5,"ram_mb":256,"pids":64}}}}"#,
        json_string(&hostile_script(&victim_dir, &targets))
    );
    let jobs = format!("{victim}\n{hostile}\n");
    c.pass(&jobs, false);
    let victim_uid = c.uid_of("www/prod/victim/0");
    let hostile_uid = c.uid_of("evil/prod/hostile/0");
    assert_ne!(victim_uid, hostile_uid, "each task has its own uid");
    let hostile_dir = c.task_dir("evil/prod/hostile/0");
    let done = wait(Duration::from_secs(30), || {
        hostile_dir.join("sandbox/done").exists().then_some(())
    });
    assert!(done.is_some(), "the hostile task never finished its attack");

    // It read nothing of its neighbour's, wrote nothing outside its sandbox, killed nothing
    // of anyone else's, and its fork bomb stayed within its limit.
    let loot = std::fs::read_to_string(hostile_dir.join("sandbox/loot")).unwrap_or_default();
    assert!(!loot.contains("hunter2"), "the victim's secrets were read");
    assert!(!victim_dir.join("sandbox/pwned").exists());
    targets.unchanged();
    let victim_log = std::fs::read_to_string(victim_dir.join("logs/1/stdout")).unwrap();
    assert_eq!(
        victim_log, "DB_PASSWORD=hunter2-secret\n",
        "the victim's own log only"
    );
    assert_eq!(
        common::processes_of_uid(victim_uid).len(),
        1,
        "the victim still runs"
    );
    let hostile_procs = common::processes_of_uid(hostile_uid).len();
    assert!(
        hostile_procs <= 64,
        "{hostile_procs} processes under a limit of 64"
    );

    // Supervisors killed (the disk is full): nothing of either task may survive the next
    // pass and `reap kill`.
    for task in ["www/prod/victim/0", "evil/prod/hostile/0"] {
        let s = taskdir::Status::read(&c.task_dir(task)).unwrap().unwrap();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(s.supervisor.0 as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    c.pass(&jobs, true);
    c.reap(&["kill", "--job", "evil/prod/hostile"]);
    c.reap(&["kill", "--job", "www/prod/victim"]);
    for uid in [victim_uid, hostile_uid] {
        let left = wait(Duration::from_secs(5), || {
            common::processes_of_uid(uid).is_empty().then_some(())
        });
        assert!(
            left.is_some(),
            "uid {uid} still runs {:?}",
            common::processes_of_uid(uid)
        );
    }
    targets.unchanged();
}

/// Processes of `task` in this cluster: their environment names the task and their
/// working directory is its sandbox (the job is not hostile).
fn processes_of_task(c: &Cluster, task: &str) -> usize {
    let want = format!("FORMIC_TASK={task}");
    let sandbox = c.task_dir(task).join("sandbox");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path().join("cwd")).is_ok_and(|d| d == sandbox))
        .filter_map(|e| std::fs::read(e.path().join("environ")).ok())
        .filter(|env| env.split(|&b| b == 0).any(|v| v == want.as_bytes()))
        .count()
}

#[test]
fn a_nearly_full_disk_never_leaves_a_task_running_twice_or_unsupervised() {
    common::require_root("a small disk to mount");
    let c = Cluster::new("2m");
    // 48 KB left: enough for some of a task's files, not for all of them.
    let filler = c.disk.as_ref().unwrap().fill();
    let len = std::fs::metadata(&filler).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(len.saturating_sub(48 << 10))
        .unwrap();
    let jobs = r#"{"job":"t/e/crowd","instances":4,"cmd":["sleep","600"],"resources":{"cpus":0.1,"ram_mb":16}}"#;
    for _ in 0..4 {
        c.pass(jobs, true);
        for i in 0..4 {
            let task = format!("t/e/crowd/{i}");
            let n = processes_of_task(&c, &task);
            assert!(n <= 1, "{task} runs {n} times");
            // A supervisor lets go of its lock only once it has killed what it started.
            let watched = taskdir::supervised(&c.task_dir(&task)).unwrap_or(false);
            assert!(n == 0 || watched, "{task} runs unsupervised");
        }
    }
    c.reap(&["kill", "--job", "t/e/crowd"]);
    let gone = wait(Duration::from_secs(5), || {
        (0..4)
            .all(|i| processes_of_task(&c, &format!("t/e/crowd/{i}")) == 0)
            .then_some(())
    });
    assert!(gone.is_some(), "tasks survive reap kill");
}
