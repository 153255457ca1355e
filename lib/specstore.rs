//! The job specs a cluster has run, kept by hash beside the state (`STATE.specs/HASH.json`),
//! so that a pass can place an instance again with a spec the job files no longer name: an
//! update rolling back, an instance outside a canary range.
//!
//! launch keeps every spec it starts a task with, before the task's record names it;
//! files are written whole (a temporary file, synced, renamed) and named by the hash of
//! their text, which is checked again when read, so a torn or altered file is never taken
//! for the spec. The directory is root's, mode 0700, and nothing is followed through a
//! symbolic link. Specs no record names any more are removed after a day.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};

use crate::job::{self, JobSpec};

/// How long an unnamed spec is kept: a launch keeps its specs before its commit names
/// them, and a pass may have read a record naming one that has since moved on.
const GRACE: Duration = Duration::from_secs(86_400);

pub fn dir(state: &Path) -> PathBuf {
    let mut name = state.as_os_str().to_owned();
    name.push(".specs");
    PathBuf::from(name)
}

fn file(state: &Path, hash: u64) -> PathBuf {
    dir(state).join(format!("{hash:016x}.json"))
}

/// Keeps `spec` (its compact text), durably, unless it is kept already.
pub fn keep(state: &Path, spec: &JobSpec) -> Result<()> {
    let path = file(state, spec.hash);
    if path.exists() {
        return Ok(());
    }
    let dir = dir(state);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{:016x}.{}.tmp", spec.hash, std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(spec.json.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        File::open(&dir)?.sync_all()
    };
    write().with_context(|| format!("keeping spec {:016x} in {}", spec.hash, dir.display()))
}

/// Whether a spec of `hash` is kept (read checks it is whole).
pub fn is_kept(state: &Path, hash: u64) -> bool {
    file(state, hash).exists()
}

/// The kept spec of `hash`, if it is kept and whole.
pub fn read(state: &Path, hash: u64) -> Option<JobSpec> {
    let mut text = String::new();
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(file(state, hash))
        .ok()?;
    std::io::Read::read_to_string(&mut f, &mut text).ok()?;
    let spec = job::parse_text(&text, &format!("kept spec {hash:016x}")).ok()?;
    (spec.hash == hash).then_some(spec)
}

/// Removes the specs no longer named (not in `named`) that are older than a day.
pub fn prune(state: &Path, named: &HashSet<u64>) {
    let Ok(entries) = fs::read_dir(dir(state)) else {
        return;
    };
    let now = SystemTime::now();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(hash) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|h| u64::from_str_radix(h, 16).ok())
        else {
            continue;
        };
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > GRACE);
        if old && !named.contains(&hash) {
            let _ = fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cmd: &str) -> JobSpec {
        let text = format!(
            r#"{{"job":"a/b/c","instances":1,"cmd":["{cmd}"],"resources":{{"cpus":1,"ram_mb":1}}}}"#
        );
        job::parse_text(&text, "test").unwrap()
    }

    #[test]
    fn specs_read_back_whole_and_only_old_unnamed_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (named, old, new) = (spec("x"), spec("y"), spec("z"));
        for s in [&named, &old, &new] {
            keep(&state, s).unwrap();
            assert_eq!(read(&state, s.hash).unwrap().json, s.json);
        }
        // A file altered on disk is not taken for the spec it is named after.
        let altered = file(&state, new.hash);
        fs::write(&altered, old.json.as_bytes()).unwrap();
        assert!(read(&state, new.hash).is_none());
        let day_ago = SystemTime::now() - GRACE - Duration::from_secs(60);
        for s in [&named, &old] {
            File::options()
                .write(true)
                .open(file(&state, s.hash))
                .unwrap()
                .set_modified(day_ago)
                .unwrap();
        }
        prune(&state, &HashSet::from([named.hash]));
        assert!(is_kept(&state, named.hash), "named");
        assert!(!is_kept(&state, old.hash), "old and unnamed");
        assert!(is_kept(&state, new.hash), "unnamed but young");
    }
}
