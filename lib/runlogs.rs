//! The logs of each run of a task on a host: `DIR/logs/N/` for incarnation N, holding
//! `stdout` and `stderr` and the one older generation of each (`.1`, see
//! `supervise::log`). A restart or a batch job's next run starts a new directory, so each
//! run's output stays apart; a task directory keeps the last `KEPT` runs' logs.
//!
//! `logs/` and every `logs/N/` are root's: the task cannot make a name the supervisor or a
//! reader opens there point anywhere else. Readers take a log in pieces from a position
//! (which file, and an offset), the same whether the host is this machine or one
//! reached over ssh, and follow it across a rotation.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// How many runs' logs a task directory keeps: the current run's and those before it.
pub const KEPT: u32 = 5;

/// The most a piece of a log holds: a reader asks again for more.
pub const PIECE: u64 = 1 << 20;

/// `DIR/logs/`.
pub fn logs_dir(dir: &Path) -> PathBuf {
    dir.join("logs")
}

/// `DIR/logs/N/`: the logs of incarnation N.
pub fn run_dir(dir: &Path, incarnation: u32) -> PathBuf {
    logs_dir(dir).join(incarnation.to_string())
}

/// Makes `logs/` and `logs/N/` (root's, passable by all so that the task's user and the
/// operators' group reach their files by path, listable by root alone), and removes the
/// logs of runs before the last `KEPT`; returns the run's directory.
pub fn make_run_dir(dir: &Path, incarnation: u32) -> Result<PathBuf> {
    let logs = logs_dir(dir);
    let run = run_dir(dir, incarnation);
    for d in [&logs, &run] {
        match fs::DirBuilder::new().mode(0o711).create(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", d.display())),
        }
    }
    // The last KEPT runs this host had, whichever incarnations ran elsewhere between.
    let all = runs(dir);
    for (_, old) in &all[..all.len().saturating_sub(KEPT as usize)] {
        // Best effort: old logs left behind are never a reason not to start the run.
        let _ = fs::remove_dir_all(old);
    }
    Ok(run)
}

/// The runs whose logs the task directory holds, by incarnation.
pub fn runs(dir: &Path) -> Vec<(u32, PathBuf)> {
    let mut out: Vec<(u32, PathBuf)> = crate::taskdir::subdirs(&logs_dir(dir))
        .into_iter()
        .filter_map(|(name, path)| Some((name.parse().ok()?, path)))
        .collect();
    out.sort();
    out
}

/// Which of a task's outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Where a reader is in a log: the file (its identity, which a rotation keeps) and the
/// offset. Identity 0 is the start of a current file not made yet (the supervisor makes it
/// at the first write after a rotation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    pub file: u64,
    pub offset: u64,
}

/// A piece of a log, and where the next one starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    pub bytes: Vec<u8>,
    /// Where to read on from (None: the run has no such log yet).
    pub next: Option<Position>,
    /// More is there now: ask again before waiting.
    pub more: bool,
    /// What was written between the position and the oldest byte kept had been rotated
    /// away: the piece starts after a gap.
    pub skipped: bool,
    /// The run's supervisor is at work: the log may grow.
    pub live: bool,
}

/// A log file, opened without following a link, if it is there and a regular file: the
/// file, its identity and its length. The identity is the inode with the time the file
/// was made: a file made after a rotation removed another may reuse the inode at once.
fn open(path: &Path) -> Result<Option<(File, u64, u64)>> {
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        // A link where a log should be: not the log, and never followed.
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let m = f.metadata()?;
    if !m.is_file() {
        return Ok(None);
    }
    let made = m
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    let identity = (m.ino() ^ made.rotate_left(32)).max(1);
    Ok(Some((f, identity, m.len())))
}

/// The piece of run `incarnation`'s `stream` from `from` on (the oldest byte kept when
/// None), at most `PIECE` bytes. Err when the task directory keeps no logs of that run.
pub fn read(dir: &Path, incarnation: u32, stream: Stream, from: Option<Position>) -> Result<Piece> {
    let last = crate::taskdir::fence(dir)? == incarnation;
    let live = last && crate::taskdir::supervised(dir)?;
    let run = match run_dir(dir, incarnation) {
        run if run.is_dir() => run,
        // The last run, started by a supervisor from before per-run logs: it wrote
        // `logs/stdout` for whichever run it served, and this is the one.
        _ if last && logs_dir(dir).join(stream.name()).is_file() => logs_dir(dir),
        _ => anyhow::bail!(
            "no logs of run {incarnation} in {} (a directory keeps the last {KEPT} runs')",
            dir.display()
        ),
    };
    let current = open(&run.join(stream.name()))?;
    let older = open(&run.join(format!("{}.1", stream.name())))?;
    let mut piece = Piece {
        bytes: Vec::new(),
        next: None,
        more: false,
        skipped: false,
        live,
    };
    // The file to read and from where: the position's file if it is still kept (and no
    // shorter than the position: else it is another), else the oldest kept, after a gap.
    let same = |f: &Option<(File, u64, u64)>, p: Position| {
        f.as_ref().is_some_and(|f| f.1 == p.file && f.2 >= p.offset)
    };
    let (file, offset, is_older) = match (from, &older, &current) {
        (Some(p), _, Some(c)) if same(&current, p) => (c, p.offset, false),
        (Some(p), Some(o), _) if same(&older, p) => (o, p.offset, true),
        (from, Some(o), _) => {
            piece.skipped = from.is_some();
            (o, 0, true)
        }
        (from, None, Some(c)) => {
            piece.skipped = from.is_some();
            (c, 0, false)
        }
        (from, None, None) => {
            piece.skipped = from.is_some();
            return Ok(piece);
        }
    };
    let (f, identity, len) = file;
    piece.bytes = read_at(f, offset, (len - offset).min(PIECE))
        .with_context(|| format!("reading the {} of run {incarnation}", stream.name()))?;
    let end = offset + piece.bytes.len() as u64;
    piece.more = end < *len;
    piece.next = Some(Position {
        file: *identity,
        offset: end,
    });
    if is_older && !piece.more {
        // The older file is read: the current one is next, from its start. Until there
        // is one, the reader stays at the older file's end, so that a file rotated in
        // meanwhile is seen for another and read after a gap, not passed over.
        if let Some(c) = &current {
            piece.more = true;
            piece.next = Some(Position {
                file: c.1,
                offset: 0,
            });
        }
    }
    Ok(piece)
}

/// Up to `n` bytes of `f` from `offset`: fewer when the file was cut short meanwhile (the
/// task owns its logs, and may truncate them).
fn read_at(f: &File, offset: u64, n: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = vec![0; n as usize];
    let mut got = 0;
    while got < bytes.len() {
        match f.read_at(&mut bytes[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    bytes.truncate(got);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(dir: &Path, n: u32, from: Option<Position>) -> (Vec<u8>, Option<Position>, bool) {
        let (mut out, mut at, mut skipped) = (Vec::new(), from, false);
        loop {
            let p = read(dir, n, Stream::Stdout, at).unwrap();
            out.extend(&p.bytes);
            skipped |= p.skipped;
            at = p.next;
            if !p.more {
                return (out, at, skipped);
            }
        }
    }

    #[test]
    fn a_run_reads_from_its_older_file_on_and_follows_a_rotation() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        let run = make_run_dir(dir, 3).unwrap();
        assert_eq!(all(dir, 3, None), (Vec::new(), None, false));
        fs::write(run.join("stdout.1"), "a\n").unwrap();
        fs::write(run.join("stdout"), "b\n").unwrap();
        let (text, at, skipped) = all(dir, 3, None);
        assert_eq!((text.as_slice(), skipped), (&b"a\nb\n"[..], false));
        // Appended: only the new bytes. Rotated: the rest of the old file, then the new one.
        std::io::Write::write_all(
            &mut fs::OpenOptions::new()
                .append(true)
                .open(run.join("stdout"))
                .unwrap(),
            b"c\n",
        )
        .unwrap();
        let (text, at, _) = all(dir, 3, at);
        assert_eq!(text, b"c\n");
        fs::rename(run.join("stdout"), run.join("stdout.1")).unwrap();
        fs::write(run.join("stdout"), "d\n").unwrap();
        let (text, at, skipped) = all(dir, 3, at);
        assert_eq!((text.as_slice(), skipped), (&b"d\n"[..], false));
        // Rotated twice while away: what is kept, after a gap.
        fs::rename(run.join("stdout"), run.join("stdout.1")).unwrap();
        fs::write(run.join("stdout"), "e\n").unwrap();
        fs::rename(run.join("stdout"), run.join("stdout.1")).unwrap();
        fs::write(run.join("stdout"), "f\n").unwrap();
        let (text, at, skipped) = all(dir, 3, at);
        assert_eq!((text.as_slice(), skipped), (&b"e\nf\n"[..], true));
        assert!(read(dir, 2, Stream::Stdout, None).is_err(), "no run 2");
        // Read up to a rotation, before the next file is made: a file rotated in while
        // the reader was away is read, after a gap, not passed over.
        fs::rename(run.join("stdout"), run.join("stdout.1")).unwrap();
        let (text, at, _) = all(dir, 3, at);
        assert_eq!(text, b"");
        fs::write(run.join("stdout"), "g\n").unwrap();
        fs::rename(run.join("stdout"), run.join("stdout.1")).unwrap();
        fs::write(run.join("stdout"), "h\n").unwrap();
        let (text, _, skipped) = all(dir, 3, at);
        assert_eq!((text.as_slice(), skipped), (&b"g\nh\n"[..], true));
    }

    #[test]
    fn the_last_runs_are_kept_and_a_link_is_not_a_log() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        for n in 1..=7 {
            make_run_dir(dir, n).unwrap();
        }
        let kept: Vec<u32> = runs(dir).into_iter().map(|(n, _)| n).collect();
        assert_eq!(kept, [3, 4, 5, 6, 7]);
        // The last five this host had, however far apart: runs 8 to 19 ran elsewhere.
        make_run_dir(dir, 20).unwrap();
        make_run_dir(dir, 30).unwrap();
        let kept: Vec<u32> = runs(dir).into_iter().map(|(n, _)| n).collect();
        assert_eq!(kept, [5, 6, 7, 20, 30]);
        std::os::unix::fs::symlink("/etc/passwd", run_dir(dir, 7).join("stdout")).unwrap();
        let p = read(dir, 7, Stream::Stdout, None).unwrap();
        assert_eq!((p.bytes.len(), p.next), (0, None));
    }
}
