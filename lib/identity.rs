//! Who a task runs as. A job that names a `user` runs as that user; one that names none gets
//! an identity of its own, as systemd's DynamicUser does: a uid (and the gid of the same
//! number, with no supplementary groups) from a configured range that no account uses,
//! held by one task directory for as long as that directory exists. Two tasks then never
//! share a uid, so neither reads the other's files, environment (/proc/PID/environ) or
//! signals its processes.
//!
//! The claims are machine-wide, since uids are: `REGISTRY/UID` is a root-only file naming
//! the task directory that holds UID, and the task directory's root-owned `uid` file names
//! it back. A claim is made by a hard link, which exists or not, so supervisors claim in
//! parallel without a lock. A claim whose directory is gone, or names another uid, is
//! stale; stale claims are collected in bulk (under `REGISTRY/lock`), except those of a uid
//! a process still runs as.

use std::collections::HashSet;
use std::fs::{self, File};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::unistd::{Gid, Group, Uid, User};

use crate::exit::{fail, Status as Exit};

/// Where the claims live: beside the default state, root's only, kept across reboots (a
/// sandbox keeps its owner across reboots too).
pub const REGISTRY: &str = "/var/lib/formic/uids";

/// The default range: inside the block systemd leaves unused (65536-524287) and below
/// the first subordinate-uid block that useradd hands out (100000).
pub const DEFAULT_RANGE: (u32, u32) = (70000, 79999);

/// The uid, gid and supplementary groups a task runs as.
#[derive(Clone, Debug, PartialEq)]
pub struct Ids {
    pub uid: Uid,
    pub gid: Gid,
    pub groups: Vec<Gid>,
}

/// A uid range `FIRST-LAST`, as `--uid-range` takes it.
pub fn parse_range(s: &str) -> Result<(u32, u32), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not FIRST-LAST"))?;
    let a: u32 = a
        .trim()
        .parse()
        .map_err(|_| format!("{a:?} is not a uid"))?;
    let b: u32 = b
        .trim()
        .parse()
        .map_err(|_| format!("{b:?} is not a uid"))?;
    if a == 0 || a > b || b >= u32::MAX - 1 {
        return Err(format!("{s:?}: want 0 < FIRST <= LAST < 4294967294"));
    }
    Ok((a, b))
}

/// A named user's ids, with its supplementary groups.
pub fn named(name: &str) -> Result<Ids> {
    let user = User::from_name(name)
        .with_context(|| format!("looking up user {name}"))?
        .ok_or_else(|| fail(Exit::BadInput, format!("no user {name:?} on this host")))?;
    let cname = std::ffi::CString::new(user.name.clone())?;
    let groups = nix::unistd::getgrouplist(&cname, user.gid).unwrap_or_else(|_| vec![user.gid]);
    Ok(Ids {
        uid: user.uid,
        gid: user.gid,
        groups,
    })
}

/// The dynamic identity of the task in `dir`: the uid it held before if its claim still
/// stands, else a free one from `range`.
pub fn dynamic(dir: &Path, range: (u32, u32)) -> Result<Ids> {
    dynamic_in(Path::new(REGISTRY), dir, range)
}

fn dynamic_in(registry: &Path, dir: &Path, (first, last): (u32, u32)) -> Result<Ids> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(registry)
        .with_context(|| format!("creating {}", registry.display()))?;
    let held = fs::read_to_string(dir.join("uid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    let size = (last - first) as u64 + 1;
    let start = crc32c::crc32c(dir.as_os_str().as_encoded_bytes()) as u64 % size;
    let candidates = || {
        held.filter(|u| (first..=last).contains(u))
            .into_iter()
            .chain((0..size).map(move |i| first + ((start + i) % size) as u32))
    };
    // A free uid is claimed without a lock: a claim is a hard link, which exists or not.
    // Stale claims are passed over, and collected in bulk once a probe meets many (the
    // range would fill with them as task directories are removed).
    let mut stale = 0;
    for uid in candidates() {
        match claim_of(registry, uid, dir) {
            Claim::Ours => return held_by(dir, uid),
            Claim::Free if try_claim(registry, uid, dir)? => return held_by(dir, uid),
            Claim::Stale => {
                stale += 1;
                if stale == STALE_BEFORE_COLLECTING {
                    collect_stale(registry, false)?;
                }
            }
            Claim::Free | Claim::Taken => {}
        }
    }
    // The whole range is claimed: once more after a collection.
    collect_stale(registry, true)?;
    for uid in candidates() {
        match claim_of(registry, uid, dir) {
            Claim::Ours => return held_by(dir, uid),
            Claim::Free if try_claim(registry, uid, dir)? => return held_by(dir, uid),
            _ => {}
        }
    }
    Err(fail(
        Exit::Unavailable,
        format!("no free uid in {first}-{last} for {}", dir.display()),
    ))
}

/// Stale claims a probe passes before it collects them all.
const STALE_BEFORE_COLLECTING: usize = 64;

/// Removes every stale claim whose uid no process runs as (a process left by a task
/// whose directory was removed under it keeps its uid from being handed out). One
/// collector at a time, under `REGISTRY/lock`; the others go on probing, unless `wait`.
/// A claim's name is only ever made by a link that fails while it exists, so a claim read
/// stale here is still that claim when it is removed.
fn collect_stale(registry: &Path, wait: bool) -> Result<()> {
    let lock = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(registry.join("lock"))
        .with_context(|| format!("opening {}/lock", registry.display()))?;
    let patience = Duration::from_secs(if wait { 30 } else { 0 });
    if !crate::taskdir::lock_exclusive(&lock, patience) {
        return Ok(());
    }
    let running = uids_running();
    let entries =
        fs::read_dir(registry).with_context(|| format!("reading {}", registry.display()))?;
    for entry in entries.flatten() {
        let Some(uid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(owner) = fs::read_to_string(entry.path()) else {
            continue;
        };
        if is_stale(uid, Path::new(owner.trim_end_matches('\n'))) && !running.contains(&uid) {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// The real uids of every process on this host.
fn uids_running() -> HashSet<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return HashSet::new();
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            name.to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| {
            let status = fs::read_to_string(e.path().join("status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .collect()
}

/// The ids of a dynamic uid: the gid of the same number, no other group.
fn held_by(dir: &Path, uid: u32) -> Result<Ids> {
    write_uid(dir, uid)?;
    Ok(Ids {
        uid: Uid::from_raw(uid),
        gid: Gid::from_raw(uid),
        groups: vec![Gid::from_raw(uid)],
    })
}

/// Records in the task directory the uid it holds (unless it says so already).
fn write_uid(dir: &Path, uid: u32) -> Result<()> {
    let line = format!("{uid}\n");
    if fs::read_to_string(dir.join("uid")).is_ok_and(|s| s == line) {
        return Ok(());
    }
    crate::taskdir::replace_file_mode(&dir.join("uid"), line.as_bytes(), false, 0o644)
}

/// Claims a free uid for `dir`: the claim is written aside, then hard-linked to its
/// name, which fails if another supervisor claimed it first. The task directory names
/// the uid before the claim exists, so a claim never names a directory that disowns it.
/// Not flushed: after a crash a task directory may get another uid, and its sandbox and
/// logs are given to that one as the task starts.
fn try_claim(registry: &Path, uid: u32, dir: &Path) -> Result<bool> {
    write_uid(dir, uid)?;
    let aside = registry.join(format!(".claim-{}", std::process::id()));
    crate::taskdir::replace_file_mode(&aside, dir.as_os_str().as_encoded_bytes(), false, 0o600)?;
    let linked = fs::hard_link(&aside, registry.join(uid.to_string()));
    let _ = fs::remove_file(&aside);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e).with_context(|| format!("claiming uid {uid} in {}", registry.display())),
    }
}

/// What the registry says of `uid` for the task in `dir`.
enum Claim {
    /// `dir` holds it.
    Ours,
    /// No one has claimed it, and no account or group has it.
    Free,
    /// Another live task directory holds it, or an account or group has it.
    Taken,
    /// A task directory held it that is gone, or names another uid now.
    Stale,
}

fn claim_of(registry: &Path, uid: u32, dir: &Path) -> Claim {
    if User::from_uid(Uid::from_raw(uid)).ok().flatten().is_some()
        || Group::from_gid(Gid::from_raw(uid)).ok().flatten().is_some()
    {
        return Claim::Taken;
    }
    let Ok(owner) = fs::read_to_string(registry.join(uid.to_string())) else {
        return Claim::Free;
    };
    let owner = Path::new(owner.trim_end_matches('\n'));
    if owner == dir {
        Claim::Ours
    } else if is_stale(uid, owner) {
        Claim::Stale
    } else {
        Claim::Taken
    }
}

/// Whether the task directory `owner` no longer holds `uid`: it is gone, or names
/// another uid now.
fn is_stale(uid: u32, owner: &Path) -> bool {
    let names = fs::read_to_string(owner.join("uid")).ok();
    names.as_deref().map(str::trim) != Some(&uid.to_string())
}

/// The gid of the operators' group that may read every task's logs (root's when the
/// group does not exist here).
pub fn log_gid(name: Option<&str>) -> Gid {
    name.and_then(|n| Group::from_name(n).ok().flatten())
        .map_or(Gid::from_raw(0), |g| g.gid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn ranges_are_checked() {
        assert_eq!(parse_range("70000-79999"), Ok((70000, 79999)));
        for bad in ["", "7", "0-10", "10-9", "a-b", "1-4294967295"] {
            assert!(parse_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_task_directory_holds_its_own_uid_until_it_is_gone() {
        if !Uid::effective().is_root() {
            return; // claims write root-only files; the integration tests run as root
        }
        let reg = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = (0..3).map(|i| root.path().join(format!("t{i}"))).collect();
        for d in &dirs {
            fs::create_dir(d).unwrap();
        }
        // A range of two: two directories get one each, the third finds none free.
        let range = (4_000_000_000, 4_000_000_001);
        let a = dynamic_in(reg.path(), &dirs[0], range).unwrap();
        let b = dynamic_in(reg.path(), &dirs[1], range).unwrap();
        assert_ne!(a.uid, b.uid);
        assert_eq!(a.gid.as_raw(), a.uid.as_raw());
        assert_eq!(dynamic_in(reg.path(), &dirs[0], range).unwrap(), a, "kept");
        assert!(
            dynamic_in(reg.path(), &dirs[2], range).is_err(),
            "range full"
        );
        // The first directory goes: its uid is free again.
        fs::remove_dir_all(&dirs[0]).unwrap();
        assert_eq!(dynamic_in(reg.path(), &dirs[2], range).unwrap(), a);
    }
}
