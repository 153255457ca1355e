//! A task's control groups: what it reserved on its host, enforced by the kernel, and the
//! one handle that kills everything it started, however it started it.
//!
//! Each task gets the group `formic/NAME` (NAME: the task id and a tag of its directory,
//! so two clusters on one host do not meet) in every hierarchy the host has:
//! - cgroup v2 at /sys/fs/cgroup (`memory.max`, `cpu.max`, `pids.max`), or
//! - the v1 `memory`, `cpu`, `pids` and `freezer` hierarchies, plus the controller-less v2
//!   hierarchy of the hybrid layout (/sys/fs/cgroup/unified) where there is one.
//!
//! The task joins its groups itself, between fork and exec, so it never runs a moment
//! outside. A process cannot leave a group it has no right to write, so setsid, double
//! forks and orphans stay in it: the group, not the process tree, is what dies with the
//! task (`cgroup.kill` where a v2 group exists; else freeze, SIGKILL every member, thaw).
//! Where a group cannot be made, memory falls back to RLIMIT_DATA and the number of
//! processes to RLIMIT_NPROC (per user: exact for a task with an identity of its own); cpu
//! has no rlimit for a rate. What was applied is reported ([`Applied`]), never assumed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize};

/// What a task may use: physical millicores, MiB of memory and processes (0: no limit).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    pub cpus: u32,
    pub ram_mb: u64,
    pub pids: u32,
}

/// Processes (and threads) a task may have when its job names no `resources.pids`: room
/// for a JVM's or a Go runtime's threads, not for a fork bomb.
pub const DEFAULT_PIDS: u32 = 1024;

const CFS_PERIOD_US: u64 = 100_000;
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// How each limit is enforced for one task: "cgroup", "rlimit" or "none". Reported in the
/// task's status (see `taskdir::Status`), where a word out of its place is refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Applied {
    #[serde(deserialize_with = "enforced_by")]
    pub memory: Word,
    #[serde(deserialize_with = "enforced_by")]
    pub cpu: Word,
    #[serde(deserialize_with = "enforced_by")]
    pub pids: Word,
    /// How everything the task started is killed: "cgroup.kill", "freezer" or "process
    /// group" (the last misses what left the group: setsid, orphans).
    #[serde(deserialize_with = "killed_by")]
    pub kill: Word,
}

/// One of a few fixed words. Named, because serde's derive takes a field spelled
/// `&'static str` for text borrowed from the input, which only a `'static` input could
/// give.
pub type Word = &'static str;

fn enforced_by<'de, D: Deserializer<'de>>(d: D) -> Result<Word, D::Error> {
    one_of(d, &["cgroup", "rlimit", "none"])
}

fn killed_by<'de, D: Deserializer<'de>>(d: D) -> Result<Word, D::Error> {
    one_of(d, &["cgroup.kill", "freezer", "process group"])
}

/// The word of `words` that `d` holds.
fn one_of<'de, D: Deserializer<'de>>(d: D, words: &'static [Word]) -> Result<Word, D::Error> {
    let word = std::borrow::Cow::<str>::deserialize(d)?;
    words
        .iter()
        .find(|w| **w == word)
        .copied()
        .ok_or_else(|| serde::de::Error::unknown_variant(&word, words))
}

impl Applied {
    /// The limits asked for that are not enforced as asked, for a warning.
    pub fn weaker_than(&self, asked: Limits) -> Vec<String> {
        let mut out = Vec::new();
        for (name, asked, how) in [
            ("memory", asked.ram_mb > 0, self.memory),
            ("cpu", asked.cpus > 0, self.cpu),
            ("pids", asked.pids > 0, self.pids),
        ] {
            if asked && how != "cgroup" {
                out.push(format!("{name} by {how}"));
            }
        }
        if self.kill == "process group" {
            out.push("descendants that leave the task's process group are not killed".into());
        }
        out
    }
}

/// The name of a task's groups: one per task directory, so the groups a supervisor died
/// without removing are found by the next supervisor of the task, and by reap.
fn group_name(task: &str, dir: &Path) -> String {
    // The supervisor and reap may name the directory by different paths.
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let tag = crc32c::crc32c(dir.as_os_str().as_encoded_bytes());
    format!("{}-{tag:08x}", task.replace('/', "."))
}

/// Where the hierarchies are on this host.
struct Layout {
    /// The v2 hierarchy holding the controllers (/sys/fs/cgroup), if the host is all v2.
    v2: Option<PathBuf>,
    /// A controller-less v2 hierarchy beside v1 (the hybrid layout), for cgroup.kill.
    unified: Option<PathBuf>,
    /// The v1 root holding `memory`, `cpu`, `pids`, `freezer` (when not all v2).
    v1: Option<PathBuf>,
}

impl Layout {
    fn of_host() -> Layout {
        let root = Path::new(CGROUP_ROOT);
        if root.join("cgroup.controllers").exists() {
            return Layout {
                v2: Some(root.to_path_buf()),
                unified: None,
                v1: None,
            };
        }
        let unified = root.join("unified");
        Layout {
            v2: None,
            unified: unified
                .join("cgroup.controllers")
                .exists()
                .then_some(unified),
            v1: root.exists().then(|| root.to_path_buf()),
        }
    }

    /// Every group of the task that may hold its processes, the kill handle first.
    fn groups(&self, name: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for v2 in [&self.v2, &self.unified].into_iter().flatten() {
            out.push(v2.join("formic").join(name));
        }
        if let Some(v1) = &self.v1 {
            for c in ["freezer", "memory", "cpu", "pids"] {
                out.push(v1.join(c).join("formic").join(name));
            }
        }
        out
    }
}

/// The part of the limits the task applies to itself.
pub struct InChild {
    join: Vec<std::os::fd::RawFd>,
    data_rlimit: Option<u64>,
    nproc_rlimit: Option<u64>,
}

impl InChild {
    /// Joins the groups and sets the rlimits: async-signal-safe calls only (write,
    /// setrlimit), for use between fork and exec.
    pub fn apply(&self) -> io::Result<()> {
        for &fd in &self.join {
            // "0" is the writing process itself.
            // SAFETY: a plain write of a static buffer to a descriptor the Enforcer owns.
            let n = unsafe { nix::libc::write(fd, b"0".as_ptr().cast(), 1) };
            if n != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        for (resource, limit) in [
            (nix::libc::RLIMIT_DATA, self.data_rlimit),
            (nix::libc::RLIMIT_NPROC, self.nproc_rlimit),
        ] {
            if let Some(n) = limit {
                let lim = nix::libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                // SAFETY: setrlimit with a valid pointer to a local.
                if unsafe { nix::libc::setrlimit(resource, &lim) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}

/// Limits prepared for one task.
pub struct Enforcer {
    /// cgroup.procs files the task writes itself into.
    join: Vec<File>,
    /// Groups made for the task, removed once it is over.
    made: Vec<PathBuf>,
    data_rlimit: Option<u64>,
    nproc_rlimit: Option<u64>,
    pub applied: Applied,
}

impl Enforcer {
    /// Makes the task's groups and writes its limits, settling for rlimits where a group
    /// cannot be made. Whatever an earlier supervisor of this task directory left in them
    /// is killed first: the caller holds the task's lock, so no live supervisor owns it.
    pub fn prepare(task: &str, dir: &Path, limits: Limits) -> Enforcer {
        let name = group_name(task, dir);
        let layout = Layout::of_host();
        kill_groups(&layout, &name);
        let mut e = Enforcer {
            join: Vec::new(),
            made: Vec::new(),
            data_rlimit: None,
            nproc_rlimit: None,
            applied: Applied {
                memory: "none",
                cpu: "none",
                pids: "none",
                kill: "process group",
            },
        };
        if let Some(root) = &layout.v2 {
            e.v2(root, &name, limits);
        } else {
            if let Some(unified) = &layout.unified {
                if e.join_group(&unified.join("formic").join(&name)).is_ok() {
                    e.applied.kill = "cgroup.kill";
                }
            }
            if let Some(root) = &layout.v1 {
                e.v1(root, &name, limits);
            }
        }
        if limits.ram_mb > 0 && e.applied.memory == "none" {
            e.data_rlimit = Some(bytes(limits.ram_mb));
            e.applied.memory = "rlimit";
        }
        if limits.pids > 0 && e.applied.pids == "none" {
            e.nproc_rlimit = Some(limits.pids as u64);
            e.applied.pids = "rlimit";
        }
        e
    }

    fn v2(&mut self, root: &Path, name: &str, l: Limits) {
        let parent = root.join("formic");
        if fs::create_dir_all(&parent).is_err() {
            return;
        }
        // Each controller must be delegated down to the task's group; one the kernel
        // lacks is left out (and reported as not applied).
        for c in ["memory", "cpu", "pids"] {
            let _ = write(&root.join("cgroup.subtree_control"), &format!("+{c}"));
            let _ = write(&parent.join("cgroup.subtree_control"), &format!("+{c}"));
        }
        let dir = parent.join(name);
        if self.join_group(&dir).is_err() {
            return;
        }
        self.applied.kill = "cgroup.kill";
        if l.ram_mb > 0 && write(&dir.join("memory.max"), &bytes(l.ram_mb).to_string()).is_ok() {
            self.applied.memory = "cgroup";
        }
        let cpu_max = format!("{} {CFS_PERIOD_US}", quota_us(l.cpus));
        if l.cpus > 0 && write(&dir.join("cpu.max"), &cpu_max).is_ok() {
            self.applied.cpu = "cgroup";
        }
        if l.pids > 0 && write(&dir.join("pids.max"), &l.pids.to_string()).is_ok() {
            self.applied.pids = "cgroup";
        }
    }

    fn v1(&mut self, root: &Path, name: &str, l: Limits) {
        let group = |c: &str| root.join(c).join("formic").join(name);
        // The freezer is the kill handle only where no v2 group gives cgroup.kill.
        if self.applied.kill == "process group" && self.join_group(&group("freezer")).is_ok() {
            self.applied.kill = "freezer";
        }
        let memory = (l.ram_mb > 0).then(|| {
            let dir = group("memory");
            self.join_group(&dir)?;
            write(
                &dir.join("memory.limit_in_bytes"),
                &bytes(l.ram_mb).to_string(),
            )
        });
        if let Some(Ok(())) = memory {
            self.applied.memory = "cgroup";
        }
        let cpu = (l.cpus > 0).then(|| {
            let dir = group("cpu");
            self.join_group(&dir)?;
            write(&dir.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
            write(&dir.join("cpu.cfs_quota_us"), &quota_us(l.cpus).to_string())
        });
        if let Some(Ok(())) = cpu {
            self.applied.cpu = "cgroup";
        }
        let pids = (l.pids > 0).then(|| {
            let dir = group("pids");
            self.join_group(&dir)?;
            write(&dir.join("pids.max"), &l.pids.to_string())
        });
        if let Some(Ok(())) = pids {
            self.applied.pids = "cgroup";
        }
    }

    /// Makes (or reuses) a group and opens its cgroup.procs for the task to join.
    fn join_group(&mut self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)?;
        if !self.made.iter().any(|d| d == dir) {
            self.made.push(dir.to_path_buf());
        }
        let procs = OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))?;
        self.join.push(procs);
        Ok(())
    }

    /// What the task does between fork and exec, owned so the closure can carry it (the
    /// descriptors stay open as long as this Enforcer lives).
    pub fn for_child(&self) -> InChild {
        InChild {
            join: self.join.iter().map(|f| f.as_raw_fd()).collect(),
            data_rlimit: self.data_rlimit,
            nproc_rlimit: self.nproc_rlimit,
        }
    }

    /// Kills every process in the task's groups (it is over, or being given up); true
    /// when they are empty afterwards.
    pub fn kill_all(&self) -> bool {
        kill_in(&self.made)
    }

    /// Removes the task's groups; call once every process of the task is gone.
    pub fn release(&mut self) {
        self.join.clear();
        for dir in self.made.drain(..).rev() {
            // A group empties a moment after its last process is reaped.
            for _ in 0..50 {
                if fs::remove_dir(&dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

/// Kills whatever is left in the groups of the task in `dir`, and removes them, for a
/// supervisor that died without doing it. Only while nobody supervises the task: the
/// caller proves that by holding the task's lock. True when nothing is left.
pub fn kill_leftovers(task: &str, dir: &Path) -> bool {
    let layout = Layout::of_host();
    let name = group_name(task, dir);
    if !kill_groups(&layout, &name) {
        return false;
    }
    for group in layout.groups(&name).iter().rev() {
        let _ = fs::remove_dir(group);
    }
    true
}

fn kill_groups(layout: &Layout, name: &str) -> bool {
    let groups: Vec<PathBuf> = layout
        .groups(name)
        .into_iter()
        .filter(|g| g.exists())
        .collect();
    kill_in(&groups)
}

/// Kills every process in `groups` (one task's groups in the hierarchies of this host)
/// and waits, briefly, until they are empty.
fn kill_in(groups: &[PathBuf]) -> bool {
    if groups.iter().all(|g| members(g).is_empty()) {
        return true;
    }
    // One v2 group is enough: cgroup.kill takes its members and every process forked
    // while it works. Else freeze, so the members cannot fork while they are listed.
    let v2 = groups.iter().find(|g| g.join("cgroup.kill").exists());
    let freezer = groups.iter().find(|g| g.join("freezer.state").exists());
    match (v2, freezer) {
        (Some(g), _) => {
            let _ = write(&g.join("cgroup.kill"), "1");
        }
        (None, Some(g)) => freeze_and_kill(g),
        (None, None) => groups.iter().for_each(|g| sigkill_members(g)),
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if groups.iter().all(|g| members(g).is_empty()) {
            return true;
        }
        // Members of v1 groups without a freezer (or that raced in) are killed one by one.
        groups.iter().for_each(|g| sigkill_members(g));
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

/// The v1 way to kill a whole group: frozen members cannot fork, so the list is complete;
/// SIGKILL is delivered as soon as they thaw.
fn freeze_and_kill(group: &Path) {
    let state = group.join("freezer.state");
    if write(&state, "FROZEN").is_ok() {
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline
            && fs::read_to_string(&state).is_ok_and(|s| s.trim() == "FREEZING")
        {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    sigkill_members(group);
    let _ = write(&state, "THAWED");
}

fn sigkill_members(group: &Path) {
    for pid in members(group) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The processes in a group (none when it is gone).
pub fn members(group: &Path) -> Vec<i32> {
    fs::read_to_string(group.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The groups of the task in `dir` that exist on this host, for tests and listings.
pub fn groups_of(task: &str, dir: &Path) -> Vec<PathBuf> {
    Layout::of_host()
        .groups(&group_name(task, dir))
        .into_iter()
        .filter(|g| g.exists())
        .collect()
}

fn quota_us(millicores: u32) -> u64 {
    (millicores as u64 * CFS_PERIOD_US / 1000).max(1000)
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
}

/// Megabytes as bytes, saturating: a spec.json asking for more than a u64 holds gets the
/// most there is, never a limit wrapped round to almost nothing.
fn bytes(mb: u64) -> u64 {
    mb.saturating_mul(1 << 20)
}

#[cfg(test)]
mod tests {

    /// A memory limit of a huge spec.json saturates; it was `ram_mb << 20`, which wraps round
    /// to a tiny (or zero) memory.max.
    #[test]
    fn megabytes_as_bytes_saturate() {
        assert_eq!(bytes(1), 1 << 20);
        assert_eq!(bytes(u64::MAX >> 10), u64::MAX);
        assert_eq!(bytes(1 << 44), u64::MAX);
    }
    use super::*;

    #[test]
    fn weaker_limits_are_named() {
        let asked = Limits {
            cpus: 500,
            ram_mb: 64,
            pids: 100,
        };
        let full = Applied {
            memory: "cgroup",
            cpu: "cgroup",
            pids: "cgroup",
            kill: "cgroup.kill",
        };
        assert!(full.weaker_than(asked).is_empty());
        let weak = Applied {
            memory: "rlimit",
            cpu: "none",
            pids: "cgroup",
            kill: "process group",
        };
        let said = weak.weaker_than(asked).join("; ");
        assert!(
            said.contains("memory by rlimit") && said.contains("cpu by none"),
            "{said}"
        );
        assert!(said.contains("not killed"), "{said}");
        let text = serde_json::to_string(&weak).unwrap();
        assert_eq!(serde_json::from_str::<Applied>(&text).unwrap(), weak);
    }

    /// How a limit is enforced is one of the words for it: a kill word for memory, or a
    /// word no formic writes, is refused.
    #[test]
    fn an_applied_word_out_of_place_is_refused() {
        use serde_json::json;
        let read = |v: &serde_json::Value| Applied::deserialize(v);
        let good =
            json!({"memory": "cgroup", "cpu": "rlimit", "pids": "none", "kill": "process group"});
        assert_eq!(
            read(&good).unwrap(),
            Applied {
                memory: "cgroup",
                cpu: "rlimit",
                pids: "none",
                kill: "process group"
            }
        );
        for (field, bad) in [
            ("memory", json!("cgroup.kill")),
            ("cpu", json!("freezer")),
            ("pids", json!("lots")),
            ("kill", json!("cgroup")),
            ("kill", json!(1)),
            ("extra", json!("none")),
        ] {
            let mut v = good.clone();
            v[field] = bad.clone();
            assert!(read(&v).is_err(), "{field}: {bad}");
        }
    }

    #[test]
    fn a_v1_freezer_group_is_killed_whole_with_what_left_the_process_group() {
        let freezer = Path::new(CGROUP_ROOT).join("freezer");
        if !nix::unistd::Uid::effective().is_root() || !freezer.join("cgroup.procs").exists() {
            return; // the v1 freezer is what this host's v2-less path uses
        }
        use std::os::unix::process::CommandExt;
        let group = freezer.join(format!("formic/unit-{}", std::process::id()));
        fs::create_dir_all(&group).unwrap();
        let procs = OpenOptions::new()
            .write(true)
            .open(group.join("cgroup.procs"))
            .unwrap();
        let join = InChild {
            join: vec![procs.as_raw_fd()],
            data_rlimit: None,
            nproc_rlimit: None,
        };
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "setsid sleep 600 & (sleep 600 &); exec sleep 600"]);
        // SAFETY: apply() makes only async-signal-safe calls.
        unsafe { cmd.pre_exec(move || join.apply()) };
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while members(&group).len() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(members(&group).len(), 3, "three processes in the group");
        assert!(kill_in(std::slice::from_ref(&group)), "emptied");
        let _ = child.wait();
        assert_eq!(
            fs::read_to_string(group.join("freezer.state"))
                .unwrap()
                .trim(),
            "THAWED"
        );
        fs::remove_dir(&group).unwrap();
    }
}
