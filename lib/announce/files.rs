//! The file backend: a directory tree by serverset path, one file per member
//! (`ROOT/formic/www/prod/hello/member_0000000003`) holding the member's JSON, replaced
//! whole so a reader sees the old member or the new. Member files are world-readable:
//! discovery is for every client on the machine.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{parse_member, Endpoint, Held, Member, Out, Publisher};
use crate::taskdir::replace_file_mode;

const PREFIX: &str = "member_";

fn file_name(m: &Member) -> String {
    format!("{PREFIX}{:010}", m.shard)
}

fn dir_of(root: &Path, path: &str) -> PathBuf {
    // Announce paths are checked to be /PART/... of plain names: joining stays under root.
    root.join(path.trim_start_matches('/'))
}

fn file_of(root: &Path, m: &Member) -> PathBuf {
    dir_of(root, &m.path).join(file_name(m))
}

fn write(root: &Path, m: &Member) -> Result<()> {
    let dir = dir_of(root, &m.path);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    replace_file_mode(&file_of(root, m), &m.data, true, 0o644)
}

fn remove(file: &Path) -> Result<()> {
    match fs::remove_file(file) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", file.display()))
        }
        _ => Ok(()),
    }
}

/// Every member file under `root` with its contents; half-written leftovers are removed.
/// Symbolic links are never followed, so nothing outside the tree is read or removed.
fn scan(root: &Path) -> Result<BTreeMap<PathBuf, Vec<u8>>> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match fs::read_dir(&dir) {
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            r => r.with_context(|| format!("reading {}", dir.display()))?,
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
            let kind = entry.file_type()?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() && name.starts_with(PREFIX) {
                if name.contains('.') {
                    remove(&entry.path())?;
                } else {
                    let data = fs::read(entry.path())
                        .with_context(|| format!("reading {}", entry.path().display()))?;
                    found.insert(entry.path(), data);
                }
            }
        }
    }
    Ok(found)
}

/// What a member file under `root` stands for: its serverset path and name.
fn split(root: &Path, file: &Path) -> (String, String) {
    let rel = file.strip_prefix(root).unwrap_or(file);
    let name = rel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = rel.parent().unwrap_or(Path::new(""));
    (format!("/{}", dir.display()), name)
}

/// One-shot: the tree under `root` holds exactly the members in `want`.
pub fn sync(root: &Path, want: &BTreeMap<u32, Member>, out: &mut Out) -> Result<()> {
    let mut found = scan(root)?;
    for m in want.values() {
        let file = file_of(root, m);
        if found.remove(&file).as_deref() != Some(&m.data[..]) {
            write(root, m)?;
            out.join(m, &file_name(m))?;
        }
    }
    for (file, data) in found {
        remove(&file)?;
        let (path, name) = split(root, &file);
        out.stale(&path, &name, &data)?;
    }
    Ok(())
}

/// The live members of the serverset at `path`, by shard.
pub fn resolve(root: &Path, path: &str) -> Result<Vec<Endpoint>> {
    let dir = dir_of(root, path);
    let entries = match fs::read_dir(&dir) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        r => r.with_context(|| format!("reading {}", dir.display()))?,
    };
    let mut endpoints = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type()?.is_file() || !name.starts_with(PREFIX) || name.contains('.') {
            continue;
        }
        let data = match fs::read(entry.path()) {
            Err(e) if e.kind() == ErrorKind::NotFound => continue, // left meanwhile
            r => r.with_context(|| format!("reading {}", entry.path().display()))?,
        };
        match parse_member(&name, &data) {
            Some(e) => endpoints.push(e),
            None => eprintln!(
                "announce: {}: not a live serverset member; skipped",
                entry.path().display()
            ),
        }
    }
    endpoints.sort_by(|a, b| (a.shard, &a.member).cmp(&(b.shard, &b.member)));
    Ok(endpoints)
}

/// The follower's side of the file backend.
pub struct Holder {
    root: PathBuf,
    scanned: bool,
}

impl Holder {
    pub fn new(root: PathBuf) -> Holder {
        Holder {
            root,
            scanned: false,
        }
    }
}

impl Publisher for Holder {
    fn tend(&mut self, held: &mut BTreeMap<u32, Held>, want: &BTreeMap<u32, Member>) -> bool {
        if self.scanned {
            return true;
        }
        // First round: files a one-shot run left are adopted when right, removed when not.
        let found = match scan(&self.root) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("announce: {e:#}");
                return false;
            }
        };
        let by_file: HashMap<PathBuf, &Member> =
            want.values().map(|m| (file_of(&self.root, m), m)).collect();
        for (file, data) in found {
            match by_file.get(&file) {
                Some(m) if m.data == data => {
                    let node = file_name(m);
                    held.insert(
                        m.slot,
                        Held {
                            member: (*m).clone(),
                            node,
                        },
                    );
                }
                _ => {
                    if let Err(e) = remove(&file) {
                        eprintln!("announce: {e:#}");
                    }
                }
            }
        }
        self.scanned = true;
        true
    }

    fn join(&mut self, joins: &[&Member]) -> Vec<Option<String>> {
        joins
            .iter()
            .map(|m| match write(&self.root, m) {
                Ok(()) => Some(file_name(m)),
                Err(e) => {
                    eprintln!("announce: {}: {e:#}", m.task);
                    None
                }
            })
            .collect()
    }

    fn leave(&mut self, leaves: &[&Held]) -> Vec<bool> {
        leaves
            .iter()
            .map(|h| match remove(&file_of(&self.root, &h.member)) {
                Ok(()) => true,
                Err(e) => {
                    eprintln!("announce: {}: {e:#}", h.member.task);
                    false
                }
            })
            .collect()
    }

    fn close(&mut self, held: &mut BTreeMap<u32, Held>) {
        // Files outlive the follower, as a one-shot run's do; it no longer answers for them.
        held.clear();
    }
}
