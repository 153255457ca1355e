//! What the benchmarks share: the command line and the bench directory, running formic's
//! tools, finding and killing the processes a section started, and small measures. Each
//! bench target includes this module with `mod common;` and uses part of it.

#![allow(dead_code)]

use std::cmp::Ordering;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

// ---------------------------------------------------------------------------------------
// The command line and the bench directory

/// One run of a benchmark: the sections asked for and the directory it works in.
pub struct Bench {
    sections: Vec<String>,
    /// FORMIC_BENCH_DIR (created if missing), else a temporary directory removed with this;
    /// canonical, as /proc/PID/cwd shows it.
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Bench {
    /// The run `cargo bench` asked for, or None when `--bench` is not among the arguments:
    /// test runners that list or smoke-run every target (`cargo test --all-targets`,
    /// nextest's --list) must not start a benchmark. The arguments that are not flags name
    /// the sections to run (none: all); `name` goes into the temporary directory's name.
    pub fn from_args(name: &str) -> Option<Bench> {
        if !std::env::args().any(|a| a == "--bench") {
            return None;
        }
        let sections: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with('-'))
            .collect();
        // FORMIC_BENCH_DIR keeps the files; else a temporary directory.
        let tmp = match std::env::var_os("FORMIC_BENCH_DIR") {
            Some(_) => None,
            None => Some(
                tempfile::Builder::new()
                    .prefix(&format!("formic-bench-{name}-"))
                    .tempdir()
                    .unwrap(),
            ),
        };
        let dir = std::env::var_os("FORMIC_BENCH_DIR")
            .map_or_else(|| tmp.as_ref().unwrap().path().to_path_buf(), Into::into);
        fs::create_dir_all(&dir).unwrap();
        let dir = fs::canonicalize(&dir).unwrap(); // as /proc/PID/cwd shows it
                                                   // Tasks run as uids of their own and must pass through to their sandboxes: a
                                                   // temporary directory is 0700, and launch refuses a sandbox its task cannot reach.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o711)).unwrap();
        Some(Bench {
            sections,
            dir,
            _tmp: tmp,
        })
    }

    /// Whether the command line asks for `section` (it does when it names none).
    pub fn want(&self, section: &str) -> bool {
        self.sections.is_empty() || self.sections.iter().any(|x| x == section)
    }
}

/// Rounds: FORMIC_BENCH_ROUNDS, else `default`; at least 1.
pub fn rounds(default: usize) -> usize {
    std::env::var("FORMIC_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(default)
        .max(1)
}

/// Whether the files are kept (FORMIC_BENCH_DIR is set): else each part's directory is
/// removed once it is done with.
pub fn keep_files() -> bool {
    std::env::var_os("FORMIC_BENCH_DIR").is_some()
}

/// `dir`, emptied of a kept directory's last run and created; canonical.
pub fn fresh_dir(dir: &Path) -> PathBuf {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).unwrap();
    fs::canonicalize(dir).unwrap()
}

// ---------------------------------------------------------------------------------------
// Running formic's tools and other commands

/// The path of one of formic's binaries, as this build made it.
pub fn bin(name: &str) -> &'static str {
    match name {
        "offer" => env!("CARGO_BIN_EXE_offer"),
        "pack" => env!("CARGO_BIN_EXE_pack"),
        "launch" => env!("CARGO_BIN_EXE_launch"),
        "reap" => env!("CARGO_BIN_EXE_reap"),
        "announce" => env!("CARGO_BIN_EXE_announce"),
        other => panic!("unknown tool {other}"),
    }
}

/// A command for one of formic's tools on `state`, with nothing inherited that could change
/// its behaviour, working in `work`, stdin from /dev/null.
pub fn tool(name: &str, state: &Path, work: &Path) -> Command {
    let mut c = Command::new(bin(name));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("FORMIC_STATE", state)
        .current_dir(work)
        .stdin(Stdio::null());
    c
}

/// Runs a command with `input` on stdin; its stdout, or a panic with its stderr.
pub fn pipe(cmd: &mut Command, input: &[u8]) -> Vec<u8> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Lines of a child's output, each with the moment it was read, from a thread.
pub fn lines_of(out: impl Read + Send + 'static) -> Receiver<(Instant, String)> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    rx
}

/// A command's trimmed stdout, or "?" when it cannot run.
pub fn command_output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map_or("?".into(), |o| {
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        })
}

/// An installed Debian package's version, or "?".
pub fn package_version(pkg: &str) -> String {
    let v = command_output("dpkg-query", &["-W", "-f", "${Version}", pkg]);
    if v.is_empty() {
        "?".into()
    } else {
        v
    }
}

// ---------------------------------------------------------------------------------------
// Processes: finding, measuring and killing what a section started

/// One process, from /proc.
pub struct Proc {
    pub pid: u32,
    pub comm: String,
    /// Start time in clock ticks since boot.
    pub start_ticks: u64,
    /// Time on a CPU, seconds (from schedstat: exact, where stat's ticks miss short bursts).
    pub cpu_s: f64,
}

/// Every live process (but this one) whose working directory is `dir` or below it (zombies
/// have none).
pub fn processes_under(dir: &Path) -> Vec<Proc> {
    let me = std::process::id();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        match fs::read_link(e.path().join("cwd")) {
            Ok(cwd) if cwd.starts_with(dir) => {}
            _ => continue,
        }
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // The command name (field 2) may hold spaces: count fields from the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        out.push(Proc {
            pid,
            comm: stat[open + 1..close].to_string(),
            // Field 22 (starttime), counted from field 3 here.
            start_ticks: num(19),
            cpu_s: schedstat(pid).map_or(0.0, |s| s.0 / 1e3),
        });
    }
    out
}

/// A process's time on a CPU and time runnable but waiting for one, ms.
pub fn schedstat(pid: u32) -> Option<(f64, f64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
    let mut f = text.split_whitespace().map(|x| x.parse::<f64>().ok());
    Some((f.next()?? / 1e6, f.next()?? / 1e6))
}

/// Kills every process working below its directory when dropped, also on a panic.
pub struct Sweep(pub PathBuf);

impl Drop for Sweep {
    fn drop(&mut self) {
        sweep(&self.0);
    }
}

/// Stops, then kills, every process working below `dir`, until none is left. Stopping them
/// all first means no supervisor restarts a task while the others are being killed.
pub fn sweep(dir: &Path) {
    for _ in 0..50 {
        let pids: Vec<Pid> = processes_under(dir)
            .iter()
            .map(|p| Pid::from_raw(p.pid as i32))
            .collect();
        if pids.is_empty() {
            break;
        }
        for &p in &pids {
            let _ = kill(p, Signal::SIGSTOP);
        }
        for &p in &pids {
            let _ = kill(p, Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
        reap_orphans();
    }
    reap_orphans();
}

/// Reaps every child that has ended (as subreaper, orphans are ours too).
pub fn reap_orphans() {
    while let Ok(ws) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if ws == WaitStatus::StillAlive {
            break;
        }
    }
}

/// Lets the previous measurement's writes and exits settle, so one does not pay for
/// another: sync, reap, then `pause`.
pub fn settle(pause: Duration) {
    nix::unistd::sync();
    reap_orphans();
    std::thread::sleep(pause);
}

/// The 1-minute load average, as /proc/loadavg gives it.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split(' ')
        .next()
        .unwrap_or("?")
        .to_string()
}

// ---------------------------------------------------------------------------------------
// Small measures

/// Pauses of 0-50 ms from a fixed xorshift sequence, so that kills fall at every phase of
/// a follower's polls, the same on every run.
pub struct Pauses(u64);

impl Default for Pauses {
    fn default() -> Pauses {
        Pauses(0x9E37_79B9_7F4A_7C15)
    }
}

impl Pauses {
    pub fn next_pause(&mut self) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_micros(self.0 % 50_000)
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// What a median sorts by: f64 in its total order, Duration in its own.
pub trait Sortable: Copy {
    fn order(&self, other: &Self) -> Ordering;
}

impl Sortable for f64 {
    fn order(&self, other: &Self) -> Ordering {
        self.total_cmp(other)
    }
}

impl Sortable for Duration {
    fn order(&self, other: &Self) -> Ordering {
        self.cmp(other)
    }
}

/// The middle value (of an even count, the upper of the two middle ones).
pub fn median<T: Sortable>(mut xs: Vec<T>) -> T {
    xs.sort_by(T::order);
    xs[xs.len() / 2]
}

/// The value at fraction `p` of sorted `xs` (nearest rank).
pub fn percentile(xs: &[f64], p: f64) -> f64 {
    xs[((xs.len() - 1) as f64 * p).round() as usize]
}

pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "pass"
    } else {
        "FAIL"
    }
}
