//! The history beside the state (`STATE.history`): every transition of a task, job or
//! host, one JSON line each, written by the transaction that makes it, whichever tool that
//! is (a pass's reap, pack's proposals committed by launch, offer's drains, `job run`).
//!
//! Each line starts with the id of the transaction that made it. A writer, holding the
//! state's lock, appends its transaction's lines and fdatasyncs them before it appends its
//! journal entry: a transition reported done is in the history. A crash between the two
//! leaves lines of a transaction that never committed at the end of the file; the next
//! writer (alone at the end of the file, under the lock) cuts them off before it appends,
//! and a reader skips lines past the transaction its view of the state has.
//!
//! When the file passes `ROTATE_BYTES` it becomes `STATE.history.1` (the older ones moving
//! up to `.GENERATIONS`, the oldest dropped) before the next append, so what is kept is
//! bounded by size: at 64 MiB a generation and four of them, about a million transitions.
//! Readers read the generations oldest first.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::{json, Map, Value};

use super::{Undo, View};
use crate::host::Host;
use crate::task::{Job, Task};

/// The size past which the history is rotated, and how many old generations are kept.
pub const ROTATE_BYTES: u64 = 64 << 20;
pub const GENERATIONS: u32 = 4;

/// `STATE.history`, or its generation `n` (`STATE.history.N`) when n > 0.
pub fn path(state: &Path, n: u32) -> PathBuf {
    let mut s = state.as_os_str().to_owned();
    s.push(".history");
    if n > 0 {
        s.push(format!(".{n}"));
    }
    PathBuf::from(s)
}

/// Appends `lines` (whole lines of transaction `committed + 1`), durably, after cutting
/// off any lines of transactions after `committed` that a crash left. The caller holds the
/// state's write lock.
pub fn append(state: &Path, committed: u64, lines: &[u8]) -> io::Result<()> {
    append_rotating_past(state, committed, lines, ROTATE_BYTES)
}

fn append_rotating_past(
    state: &Path,
    committed: u64,
    lines: &[u8],
    rotate_bytes: u64,
) -> io::Result<()> {
    let (mut f, mut created) = open_current(state)?;
    // Cut first, rotate after: lines of an uncommitted transaction left in a rotated
    // generation would stop every reader there for good.
    let mut end = committed_end(&f, committed)?;
    if end < f.metadata()?.len() {
        f.set_len(end)?;
    }
    if end > rotate_bytes {
        rotate(state)?;
        (f, created) = open_current(state)?;
        end = 0;
    }
    f.write_all_at(lines, end)?;
    f.sync_data()?;
    if created {
        // The new name must last as long as the lines in it.
        let current = path(state, 0);
        File::open(current.parent().unwrap_or(Path::new(".")))?.sync_all()?;
    }
    Ok(())
}

/// The newest generation, opened to append (made if missing: then `true`).
fn open_current(state: &Path) -> io::Result<(File, bool)> {
    let current = path(state, 0);
    let created = !current.exists();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o640)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&current)?;
    Ok((f, created))
}

/// Moves each generation up one, the current file becoming generation 1.
fn rotate(state: &Path) -> io::Result<()> {
    for n in (0..GENERATIONS).rev() {
        let from = path(state, n);
        if from.exists() {
            fs::rename(&from, path(state, n + 1))?;
        }
    }
    Ok(())
}

/// The transaction id a history line starts with (`{"txid":N,`).
pub fn txid_of(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"txid\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// Where the history ends once the lines of uncommitted transactions (after `committed`),
/// and a torn last line, are cut off: they form its tail, as transaction ids only grow.
fn committed_end(f: &File, committed: u64) -> io::Result<u64> {
    const CHUNK: u64 = 64 << 10;
    let mut end = f.metadata()?.len();
    let mut buf = Vec::new();
    loop {
        if end == 0 {
            return Ok(0);
        }
        // The last line: from after the newline before `end - 1`.
        let mut from = end;
        let line_start = loop {
            let start = from.saturating_sub(CHUNK);
            buf.resize((end - start) as usize, 0);
            f.read_exact_at(&mut buf, start)?;
            let before_last = &buf[..buf.len() - 1];
            match before_last.iter().rposition(|&b| b == b'\n') {
                Some(i) => break start + i as u64 + 1,
                None if start == 0 => break 0,
                None => from = start,
            }
        };
        let line = &buf[(line_start - end.saturating_sub(buf.len() as u64)) as usize..];
        let whole = line.last() == Some(&b'\n');
        match txid_of(line) {
            Some(t) if whole && t <= committed => return Ok(end),
            _ => end = line_start,
        }
    }
}

/// Who makes the transitions this process writes: its program and its user (the one sudo
/// ran it for, if any; else the account of its uid, not $USER, which anyone may set).
fn actor() -> &'static (String, String) {
    static ACTOR: OnceLock<(String, String)> = OnceLock::new();
    ACTOR.get_or_init(|| {
        let program = std::env::args_os()
            .next()
            .map(PathBuf::from)
            .and_then(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let uid = nix::unistd::getuid();
        let user = std::env::var("SUDO_USER")
            .ok()
            .filter(|u| !u.is_empty())
            .or_else(|| Some(nix::unistd::User::from_uid(uid).ok()??.name))
            .unwrap_or_else(|| format!("uid {uid}"));
        (program, user)
    })
}

/// The history lines of a transaction: one per task, job or host whose record it changed
/// in a way a person asks about (a task's state, incarnation, host or health; a job's
/// update or runs; a host's maintenance or liveness), in the order first changed.
pub fn lines(undo: &[Undo], view: &View, txid: u64, now: f64) -> Vec<u8> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for u in undo {
        if !seen.insert(u.target()) {
            continue; // the first undo of a slot holds what it was before the transaction
        }
        let fields = match u {
            Undo::Task(slot, old) => task(view, old.as_ref(), view.tasks.get(*slot)),
            Undo::Job(slot, old) => job(old.as_ref(), view.jobs.get(*slot)),
            Undo::Host(slot, old) => host(old.as_ref(), view.hosts.get(*slot)),
        };
        let Some(fields) = fields else { continue };
        let (by, user) = actor();
        let mut line = Map::new();
        line.insert("txid".into(), json!(txid));
        line.insert("ts".into(), json!(now));
        line.extend(fields);
        line.insert("by".into(), json!(by));
        line.insert("user".into(), json!(user));
        // A map of JSON values always serializes.
        serde_json::to_writer(&mut out, &line).expect("a JSON map");
        out.push(b'\n');
    }
    out
}

fn task(view: &View, old: Option<&Task>, new: Option<&Task>) -> Option<Map<String, Value>> {
    let t = new.or(old)?;
    let moved = match (old, new) {
        (Some(a), Some(b)) => {
            a.state != b.state
                || a.incarnation != b.incarnation
                || a.host != b.host
                || a.healthy != b.healthy
        }
        _ => true,
    };
    if !moved {
        return None;
    }
    let key = view.jobs.get(t.job).map_or("?", |j| j.key.as_str());
    let mut m = Map::new();
    m.insert("task".into(), json!(format!("{key}/{}", t.instance)));
    m.insert("incarnation".into(), json!(t.incarnation));
    if t.run != 0 {
        m.insert("run".into(), json!(t.run));
    }
    let host = view.hosts.get(t.host).map(|h| h.name.clone());
    m.insert("host".into(), json!(host));
    m.insert("from".into(), json!(old.map(|o| o.state.name())));
    m.insert(
        "to".into(),
        json!(new.map_or("REMOVED", |n| n.state.name())),
    );
    // Whether it passes its health check: a change alone is a line too (a task stopped
    // for failing its checks says so before it says KILLING).
    m.insert("healthy".into(), json!(new.map(|n| n.healthy)));
    let reason = new.filter(|n| n.reason != crate::task::Reason::None);
    m.insert("reason".into(), json!(reason.map(|n| n.reason.text())));
    m.insert("exit".into(), json!(new.and_then(Task::exit_status)));
    Some(m)
}

fn job(old: Option<&Job>, new: Option<&Job>) -> Option<Map<String, Value>> {
    let j = new.or(old)?;
    let mut m = Map::new();
    m.insert("job".into(), json!(j.key));
    let (Some(a), Some(b)) = (old, new) else {
        m.insert(
            "to".into(),
            json!(if new.is_some() { "FILED" } else { "REMOVED" }),
        );
        return Some(m);
    };
    let phase = |j: &Job| j.rollout.update.as_ref().map(|u| u.phase.name());
    if phase(a) != phase(b) {
        let u = b.rollout.update.as_ref();
        m.insert("update".into(), json!(phase(b)));
        m.insert("from".into(), json!(phase(a)));
        m.insert("to".into(), json!(phase(b)));
        if let Some(u) = u {
            m.insert("spec_from".into(), json!(crate::rollout::hash_text(u.from)));
            m.insert("spec_to".into(), json!(crate::rollout::hash_text(u.to)));
            if u.why != crate::rollout::Why::None {
                m.insert("reason".into(), json!(u.why.words()));
            }
        }
        return Some(m);
    }
    let (ra, rb) = (&a.runs, &b.runs);
    let what = if rb.current != ra.current {
        "started"
    } else if rb.missed != ra.missed {
        "missed"
    } else if rb.cancelled != ra.cancelled {
        "cancelled"
    } else if rb.requested != ra.requested && rb.requested != 0 {
        "requested"
    } else {
        return None;
    };
    m.insert("cron".into(), json!(what));
    m.insert("run".into(), json!(rb.current));
    m.insert("manual".into(), json!(rb.manual));
    m.insert("missed".into(), json!(rb.missed - ra.missed.min(rb.missed)));
    m.insert(
        "cancelled".into(),
        json!(rb.cancelled - ra.cancelled.min(rb.cancelled)),
    );
    if what == "requested" {
        m.insert("requested".into(), json!(rb.requested));
    }
    Some(m)
}

fn host(old: Option<&Host>, new: Option<&Host>) -> Option<Map<String, Value>> {
    let h = new.or(old)?;
    let mut m = Map::new();
    m.insert("host".into(), json!(h.name));
    let (Some(a), Some(b)) = (old, new) else {
        m.insert(
            "to".into(),
            json!(if new.is_some() { "ADDED" } else { "REMOVED" }),
        );
        return Some(m);
    };
    if a.maintenance.mode != b.maintenance.mode {
        m.insert("maintenance".into(), json!(b.maintenance.mode.name()));
        m.insert("from".into(), json!(a.maintenance.mode.name()));
        m.insert("to".into(), json!(b.maintenance.mode.name()));
        if !b.maintenance.reason.is_empty() {
            m.insert("reason".into(), json!(b.maintenance.reason));
        }
        return Some(m);
    }
    if a.liveness.life != b.liveness.life {
        m.insert("liveness".into(), json!(b.liveness.life.name()));
        m.insert("from".into(), json!(a.liveness.life.name()));
        m.insert("to".into(), json!(b.liveness.life.name()));
        return Some(m);
    }
    None
}

/// Reads the history as it grows, oldest generation first, handing each line of a
/// committed transaction to the caller; `follow` then waits for more, across rotations.
pub struct Reader {
    state: PathBuf,
    /// The generation being read (the oldest first, 0 last) and where in it.
    generation: u32,
    file: Option<File>,
    offset: u64,
}

impl Reader {
    pub fn new(state: &Path) -> Reader {
        Reader {
            state: state.to_path_buf(),
            generation: GENERATIONS,
            file: None,
            offset: 0,
        }
    }

    /// Hands `each` every whole line of a transaction up to `committed` not handed yet,
    /// in order; stops at the first line of a later one (it may be in flight, or left by a
    /// crash and about to be cut off), or at the end of the history.
    pub fn read(&mut self, committed: u64, mut each: impl FnMut(&[u8])) -> io::Result<()> {
        loop {
            if self.file.is_none() {
                match self.open_next()? {
                    true => {}
                    false => return Ok(()),
                }
            }
            let f = self.file.as_ref().expect("opened");
            let mut chunk = vec![0; 1 << 16];
            let n = f.read_at(&mut chunk, self.offset)?;
            if n == 0 {
                // The end of a file: on to the one after it, found by where this one is
                // now (a rotation while it was read moved every name up one). The newest
                // ends the history; one dropped as the oldest is followed by the oldest.
                match self.generation_now()? {
                    Some(0) => return Ok(()),
                    now => self.generation = now.unwrap_or(GENERATIONS + 1) - 1,
                }
                self.file = None;
                self.offset = 0;
                continue;
            }
            let mut start = 0;
            while let Some(i) = chunk[start..n].iter().position(|&b| b == b'\n') {
                let line = &chunk[start..start + i];
                if txid_of(line).is_some_and(|t| t > committed) {
                    // Not committed (yet): read again from here next time.
                    self.offset += start as u64;
                    return Ok(());
                }
                each(line);
                start += i + 1;
            }
            if start == 0 {
                // A line longer than the chunk is none the history writes; a torn one is
                // the end until a writer cuts it off.
                return Ok(());
            }
            // A line not yet whole is read again from its start next time.
            self.offset += start as u64;
        }
    }

    /// Opens the generation to read next (skipping missing ones); false when there is none.
    fn open_next(&mut self) -> io::Result<bool> {
        loop {
            match OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(path(&self.state, self.generation))
            {
                Ok(f) => {
                    self.file = Some(f);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if self.generation == 0 {
                        return Ok(false);
                    }
                    self.generation -= 1;
                    self.offset = 0;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The generation the open file is now (None: dropped as the oldest).
    fn generation_now(&self) -> io::Result<Option<u32>> {
        use std::os::unix::fs::MetadataExt;
        let open = match &self.file {
            Some(f) => f.metadata()?,
            None => return Ok(None),
        };
        Ok((0..=GENERATIONS).find(|&n| {
            fs::symlink_metadata(path(&self.state, n))
                .is_ok_and(|m| (m.dev(), m.ino()) == (open.dev(), open.ino()))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(txids: &[u64]) -> Vec<u8> {
        txids
            .iter()
            .flat_map(|t| format!("{{\"txid\":{t},\"ts\":1}}\n").into_bytes())
            .collect()
    }

    fn read_all(state: &Path, committed: u64) -> Vec<u64> {
        let mut seen = Vec::new();
        Reader::new(state)
            .read(committed, |l| seen.push(txid_of(l).unwrap()))
            .unwrap();
        seen
    }

    #[test]
    fn lines_a_crash_left_past_the_commit_are_cut_and_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        append(&state, 0, &lines_of(&[1, 1])).unwrap();
        append(&state, 1, &lines_of(&[2])).unwrap();
        // Transaction 3 wrote its lines, one of them torn, and never committed.
        let mut orphans = lines_of(&[3, 3]);
        orphans.extend_from_slice(b"{\"txid\":3,\"ts");
        append(&state, 2, &orphans).unwrap();
        assert_eq!(read_all(&state, 2), [1, 1, 2], "a reader stops at them");
        // The next writer, at transaction 3 again, cuts them off first.
        append(&state, 2, &lines_of(&[3])).unwrap();
        assert_eq!(read_all(&state, 3), [1, 1, 2, 3]);
        let text = fs::read_to_string(path(&state, 0)).unwrap();
        assert_eq!(text.lines().count(), 4, "{text}");
    }

    /// A crash's lines at the end of a file due to rotate are cut before it rotates: left
    /// in an older generation, they would stop every reader there.
    #[test]
    fn lines_a_crash_left_are_cut_before_the_file_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        append(&state, 0, &lines_of(&[1])).unwrap();
        append(&state, 1, &lines_of(&[2, 2])).unwrap(); // never committed
        append_rotating_past(&state, 1, &lines_of(&[2]), 1).unwrap();
        let older = fs::read_to_string(path(&state, 1)).unwrap();
        assert_eq!(older.lines().count(), 1, "{older}");
        assert_eq!(read_all(&state, 2), [1, 2]);
        append(&state, 2, &lines_of(&[3])).unwrap();
        assert_eq!(read_all(&state, 3), [1, 2, 3]);
    }

    /// A rotation while a reader is in an older generation moves the names under it: the
    /// file after the one it read is found where it went, not by its old name.
    #[test]
    fn a_rotation_while_an_older_generation_is_read_skips_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        append(&state, 0, &lines_of(&[1])).unwrap();
        rotate(&state).unwrap();
        append(&state, 1, &lines_of(&[2])).unwrap();
        let mut seen = Vec::new();
        Reader::new(&state)
            .read(3, |l| {
                let t = txid_of(l).unwrap();
                if t == 1 {
                    rotate(&state).unwrap();
                    append(&state, 2, &lines_of(&[3])).unwrap();
                }
                seen.push(t);
            })
            .unwrap();
        assert_eq!(seen, [1, 2, 3]);
    }

    #[test]
    fn a_reader_goes_on_across_rotations_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        append(&state, 0, &lines_of(&[1])).unwrap();
        let mut reader = Reader::new(&state);
        let mut seen = Vec::new();
        reader.read(1, |l| seen.push(txid_of(l).unwrap())).unwrap();
        // Rotated under the reader, twice over: what was left of the file it read, then
        // the new ones.
        append(&state, 1, &lines_of(&[2])).unwrap();
        rotate(&state).unwrap();
        append(&state, 2, &lines_of(&[3])).unwrap();
        reader.read(3, |l| seen.push(txid_of(l).unwrap())).unwrap();
        assert_eq!(seen, [1, 2, 3]);
        for n in 0..GENERATIONS + 2 {
            rotate(&state).unwrap();
            append(&state, 4 + n as u64 - 1, &lines_of(&[4 + n as u64])).unwrap();
        }
        assert!(
            !path(&state, GENERATIONS + 1).exists(),
            "the oldest are dropped"
        );
        let kept = read_all(&state, 100);
        assert_eq!(kept.len(), GENERATIONS as usize + 1);
        assert!(kept.windows(2).all(|w| w[0] < w[1]), "{kept:?}");
    }
}
