//! Shared by the integration tests: paths of the real binaries, commands with a timeout,
//! and child processes that run a role of this test binary (a writer to be killed, a lock
//! holder) so tests can crash or race real processes.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Every spawned command is killed after this long: a hung tool fails its test, not CI.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Path of one of formic's binaries, built by cargo for this test run; or in the directory
/// FORMIC_TEST_BIN names, to run the tests against another build (an installed one, or an
/// older one to show that a test catches what it is about).
pub fn bin(tool: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("FORMIC_TEST_BIN") {
        return PathBuf::from(dir).join(tool);
    }
    match tool {
        "offer" => PathBuf::from(env!("CARGO_BIN_EXE_offer")),
        "pack" => PathBuf::from(env!("CARGO_BIN_EXE_pack")),
        "launch" => PathBuf::from(env!("CARGO_BIN_EXE_launch")),
        "formic-supervise" => PathBuf::from(env!("CARGO_BIN_EXE_formic-supervise")),
        "reap" => PathBuf::from(env!("CARGO_BIN_EXE_reap")),
        "announce" => PathBuf::from(env!("CARGO_BIN_EXE_announce")),
        "roll" => PathBuf::from(env!("CARGO_BIN_EXE_roll")),
        "job" => PathBuf::from(env!("CARGO_BIN_EXE_job")),
        "formic-host" => PathBuf::from(env!("CARGO_BIN_EXE_formic-host")),
        other => panic!("unknown tool {other}"),
    }
}

/// A command for a formic tool with a state file and nothing inherited that could change
/// its behaviour.
pub fn tool(name: &str, state: &Path) -> Command {
    let mut c = Command::new(bin(name));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("FORMIC_STATE", state)
        .env("USER", "tester");
    c
}

/// Runs `cmd` with `input` on stdin; kills it after [`TIMEOUT`].
pub fn run(cmd: &mut Command, input: &[u8]) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawning a tool");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // Feed stdin from a thread so a tool that stops reading early cannot deadlock us.
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = wait_output(child, TIMEOUT);
    let _ = feeder.join();
    out
}

/// Spawns every command at once, each with its input (small enough for a pipe), then
/// waits for each, killing any that outlives [`TIMEOUT`].
pub fn run_all(cmds: Vec<(Command, Vec<u8>)>) -> Vec<Output> {
    let children: Vec<Child> = cmds
        .into_iter()
        .map(|(mut cmd, input)| {
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
            let mut stdin = child.stdin.take().unwrap();
            let _ = stdin.write_all(&input);
            child
        })
        .collect();
    children
        .into_iter()
        .map(|c| wait_output(c, TIMEOUT))
        .collect()
}

/// Waits for a child's output, killing it when `limit` passes.
pub fn wait_output(child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    let watchdog = std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < limit {
            if flag.load(std::sync::atomic::Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::SIGKILL,
        );
        true
    });
    let out = child.wait_with_output().expect("waiting for a tool");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(
        !watchdog.join().unwrap(),
        "command timed out after {limit:?}"
    );
    out
}

/// Exit status of a finished tool, or a panic naming the signal that killed it.
pub fn code(out: &Output) -> i32 {
    match out.status.code() {
        Some(c) => c,
        None => panic!(
            "tool died by a signal: {:?}; stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fresh directory for one test, removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("formic-test-")
        .tempdir()
        .unwrap()
}

/// What a supervisor runs, as launch would resolve it: `argv` with a PATH, as root, no
/// limits, no health check; tests change what they are about.
pub fn spec(task: &str, argv: &[&str]) -> formic::supervise::Spec {
    formic::supervise::Spec {
        incarnation: 1,
        run: 0,
        task: task.into(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("FORMIC_TASK".into(), task.into()),
        ],
        user: None,
        dynamic_ids: None,
        allow_root: true,
        grace_s: 5.0,
        log_max_bytes: 1 << 20,
        log_group: None,
        health: None,
        limits: formic::limits::Limits {
            cpus: 0,
            ram_mb: 0,
            pids: 0,
        },
    }
}

/// A host record line.
pub fn host_line(name: &str, cpus: f64, ram_mb: u64) -> String {
    format!(
        r#"{{"type":"host","name":"{name}","cpus":{cpus},"ram_mb":{ram_mb},"disk_mb":1000,"ports":[[31000,31999]],"attrs":{{"rack":"r1"}}}}"#
    )
}

/// Every file of a state (tables, journal) as bytes, to prove a tool left it untouched.
pub fn snapshot(state: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let journal = PathBuf::from(format!("{}.journal", state.display()));
    [state.to_path_buf(), journal]
        .into_iter()
        .filter(|p| p.exists())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

// --- child roles ---
//
// A test that needs a process of its own (to SIGKILL it, or to race it) re-runs this test
// binary with FORMIC_CHILD=<role>; the ignored test `child_entry` below dispatches on it.

pub const ROLE_VAR: &str = "FORMIC_CHILD";

/// A command that runs `role` in a child process of this test binary.
pub fn child(role: &str) -> Command {
    // /proc/self/exe still executes when cargo has rebuilt (replaced) the test binary
    // while the tests run; the path from current_exe() would then be gone.
    let mut c = Command::new("/proc/self/exe");
    c.args([
        "--exact",
        "common::child_entry",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ])
    .env(ROLE_VAR, role);
    c
}

#[test]
#[ignore = "entry point of child processes spawned by other tests"]
fn child_entry() {
    let role = std::env::var(ROLE_VAR).expect("run only as a child role");
    match role.as_str() {
        "torture-writer" => crate::crash::writer_child(),
        "counter-writer" => crate::concurrency::counter_child(),
        "lock-holder" => crate::concurrency::lock_holder_child(),
        "fleet-holder" => crate::fleet::holder_child(),
        other => panic!("unknown child role {other}"),
    }
    std::process::exit(0);
}

/// Task directories (those holding spec.json) below a run root.
pub fn tasks_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        if d.join("spec.json").exists() {
            out.push(d);
            continue;
        }
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

/// Whether the tests run as root.
pub fn root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Fails the calling test unless the tests run as root. What such a test is about (other
/// users, cgroups, mounts) exists only for root, and CI runs the suite as root: a test that
/// passed without looking would hide the regression it is there to catch.
pub fn require_root(what: &str) {
    assert!(
        root(),
        "this test needs root ({what}); run the suite as root, as CI does"
    );
}

/// Waits up to `limit` for `f` to give a value, looking every 10 ms; fails naming `what`.
pub fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A small tmpfs mounted on `dir` (root only), unmounted when dropped: a disk that fills.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0711"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount: {}", stderr(&out));
        Tmpfs(dir.to_path_buf())
    }

    /// Fills the filesystem until a write fails; returns the filler file.
    pub fn fill(&self) -> PathBuf {
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A line of /proc/PID/status such as `Uid:`, without its name ("" when gone).
pub fn proc_status(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

/// The ids in a line of /proc/PID/status such as `Uid:` (real, effective, saved, fs).
pub fn proc_status_ids(pid: u32, field: &str) -> Vec<u64> {
    proc_status(pid, field)
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect()
}

/// Live processes (not zombies) whose real uid is `uid`.
pub fn processes_of_uid(uid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            !proc_status(pid, "State:").starts_with('Z')
                && proc_status_ids(pid, "Uid:").first() == Some(&(uid as u64))
        })
        .collect()
}

/// Starts `formic-supervise DIR` as launch does, in a session of its own, reaped by a
/// thread; its output goes nowhere.
pub fn supervise_detached(dir: &Path) {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(bin("formic-supervise"));
    cmd.arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().expect("starting formic-supervise");
    std::thread::spawn(move || child.wait());
}

/// A pseudo-terminal: the master side and the path of the slave.
pub fn pty() -> (std::fs::File, PathBuf) {
    use nix::libc;
    use std::os::fd::FromRawFd;
    // SAFETY: plain libc calls on a descriptor this function owns; the name buffer is
    // NUL-terminated by ptsname_r on success, which the asserts check.
    unsafe {
        let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(fd >= 0, "posix_openpt");
        assert_eq!(libc::grantpt(fd), 0);
        assert_eq!(libc::unlockpt(fd), 0);
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(fd, name.as_mut_ptr(), name.len()), 0);
        let path = std::ffi::CStr::from_ptr(name.as_ptr())
            .to_string_lossy()
            .into_owned();
        (std::fs::File::from_raw_fd(fd), PathBuf::from(path))
    }
}

/// Runs `cmd` with its standard output on a terminal (stdin /dev/null, stderr a pipe);
/// returns its output with what it printed on the terminal as `stdout` (without the
/// terminal's carriage returns).
pub fn run_on_tty(cmd: &mut Command) -> Output {
    use std::io::Read;
    let (mut master, slave_path) = pty();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&slave_path)
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // Reading the master ends with EIO once the last slave descriptor is closed.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    });
    let child = cmd
        .stdin(Stdio::null())
        .stdout(slave)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `cmd` still holds our copy of the slave: replace it, so the reader sees the end.
    cmd.stdout(Stdio::null());
    let mut out = wait_output(child, TIMEOUT);
    let text = reader.join().unwrap();
    out.stdout = text.into_iter().filter(|&b| b != b'\r').collect();
    out
}

/// Runs `cmd` with its standard input on a terminal nobody types on (its other side is
/// closed once the command has started, so a read ends); returns its output.
pub fn run_with_tty_stdin(cmd: &mut Command) -> Output {
    let (master, slave_path) = pty();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&slave_path)
        .unwrap();
    cmd.stdin(slave)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawning a tool");
    std::thread::sleep(Duration::from_millis(200));
    drop(master);
    wait_output(child, TIMEOUT)
}

/// The time now, in Unix seconds, as the tools stamp it.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}
