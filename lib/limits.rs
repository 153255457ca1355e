//! Resource limits of a task: what it reserved on its host, enforced by the kernel.
//!
//! Through cgroups where the host has them: cgroup v2 (`memory.max`, `cpu.max`) when
//! /sys/fs/cgroup is a v2 mount, else the v1 `memory` and `cpu` hierarchies (as on hosts of
//! the hybrid layout). Each task gets `formic/TASK-TAG` in each (TAG names the task's
//! directory, so two clusters on one host do not meet), joined by the
//! task itself between fork and exec, so it never runs a moment outside, and removed when
//! the task is over. Where no cgroup can be made (not root, no controllers), memory falls
//! back to RLIMIT_DATA, which bounds the heap and private mappings; cpu has no rlimit
//! counterpart for a rate, and is then not limited.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// What a task may use: physical millicores and MiB of memory (0: no limit).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    pub cpus: u32,
    pub ram_mb: u64,
}

const CFS_PERIOD_US: u64 = 100_000;

/// The part of the limits the task applies to itself.
pub struct InChild {
    join: Vec<std::os::fd::RawFd>,
    data_rlimit: Option<u64>,
}

impl InChild {
    /// Joins the cgroups and sets the rlimits: async-signal-safe calls only (write,
    /// setrlimit), for use between fork and exec.
    pub fn apply(&self) -> io::Result<()> {
        for &fd in &self.join {
            // "0" is the writing process itself.
            let n = unsafe { nix::libc::write(fd, b"0".as_ptr().cast(), 1) };
            if n != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some(bytes) = self.data_rlimit {
            let lim = nix::libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if unsafe { nix::libc::setrlimit(nix::libc::RLIMIT_DATA, &lim) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Limits prepared for one task.
pub struct Enforcer {
    /// cgroup.procs files the task writes itself into.
    join: Vec<File>,
    /// cgroups to remove once the task is over.
    made: Vec<PathBuf>,
    /// RLIMIT_DATA in bytes when no memory cgroup could be made.
    data_rlimit: Option<u64>,
    /// How the limits are enforced, for the status.
    pub how: String,
}

impl Enforcer {
    /// Makes the task's cgroups and writes its limits (or settles for rlimits).
    pub fn prepare(task: &str, dir: &Path, limits: Limits) -> Enforcer {
        // One name per task directory (a task id of one cluster on this host), so the
        // groups a supervisor killed without a chance to clean up are taken over by the
        // next supervisor of the task rather than left behind.
        let tag = crc32c::crc32c(dir.as_os_str().as_encoded_bytes());
        let name = format!("{}-{tag:08x}", task.replace('/', "."));
        let mut e = Enforcer {
            join: Vec::new(),
            made: Vec::new(),
            data_rlimit: None,
            how: String::new(),
        };
        if limits.cpus == 0 && limits.ram_mb == 0 {
            e.how = "none".into();
            return e;
        }
        let root = Path::new("/sys/fs/cgroup");
        let done = if root.join("cgroup.controllers").exists() {
            e.v2(root, &name, limits).map(|()| "cgroup v2".to_string())
        } else {
            e.v1(root, &name, limits).map(|()| "cgroup v1".to_string())
        };
        match done {
            Ok(how) => e.how = how,
            Err(_) => {
                e.release_dirs();
                e.join.clear();
                e.data_rlimit = (limits.ram_mb > 0).then_some(limits.ram_mb << 20);
                e.how = "rlimit".into();
            }
        }
        e
    }

    fn v2(&mut self, root: &Path, name: &str, l: Limits) -> io::Result<()> {
        let parent = root.join("formic");
        fs::create_dir_all(&parent)?;
        // The controllers must be delegated down to the task's group.
        write(&root.join("cgroup.subtree_control"), "+memory +cpu")?;
        write(&parent.join("cgroup.subtree_control"), "+memory +cpu")?;
        let dir = parent.join(name);
        take_over(&dir)?;
        self.made.push(dir.clone());
        if l.ram_mb > 0 {
            write(&dir.join("memory.max"), &(l.ram_mb << 20).to_string())?;
        }
        if l.cpus > 0 {
            write(
                &dir.join("cpu.max"),
                &format!("{} {CFS_PERIOD_US}", quota_us(l.cpus)),
            )?;
        }
        self.join.push(
            OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))?,
        );
        Ok(())
    }

    fn v1(&mut self, root: &Path, name: &str, l: Limits) -> io::Result<()> {
        if l.ram_mb > 0 {
            let dir = root.join("memory/formic").join(name);
            take_over(&dir)?;
            self.made.push(dir.clone());
            write(
                &dir.join("memory.limit_in_bytes"),
                &(l.ram_mb << 20).to_string(),
            )?;
            self.join.push(
                OpenOptions::new()
                    .write(true)
                    .open(dir.join("cgroup.procs"))?,
            );
        }
        if l.cpus > 0 {
            let dir = root.join("cpu/formic").join(name);
            take_over(&dir)?;
            self.made.push(dir.clone());
            write(&dir.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
            write(&dir.join("cpu.cfs_quota_us"), &quota_us(l.cpus).to_string())?;
            self.join.push(
                OpenOptions::new()
                    .write(true)
                    .open(dir.join("cgroup.procs"))?,
            );
        }
        Ok(())
    }

    /// What the task does between fork and exec, owned so the closure can carry it (the
    /// descriptors stay open as long as this Enforcer lives).
    pub fn for_child(&self) -> InChild {
        InChild {
            join: self.join.iter().map(|f| f.as_raw_fd()).collect(),
            data_rlimit: self.data_rlimit,
        }
    }

    /// Removes the task's cgroups; call once every process of the task is gone.
    pub fn release(mut self) {
        self.join.clear();
        self.release_dirs();
    }

    fn release_dirs(&mut self) {
        for dir in self.made.drain(..).rev() {
            // A cgroup empties a moment after its last process is reaped.
            for _ in 0..50 {
                if fs::remove_dir(&dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
    }
}

/// Makes the task's group, or takes over the one an earlier supervisor of the task left;
/// one still holding processes (a task whose supervisor was lost) is not shared.
fn take_over(dir: &Path) -> io::Result<()> {
    if dir.exists() {
        let procs = fs::read_to_string(dir.join("cgroup.procs"))?;
        if !procs.trim().is_empty() {
            return Err(io::Error::other(format!(
                "{} still holds processes",
                dir.display()
            )));
        }
        return Ok(());
    }
    fs::create_dir_all(dir)
}

fn quota_us(millicores: u32) -> u64 {
    (millicores as u64 * CFS_PERIOD_US / 1000).max(1000)
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
}
