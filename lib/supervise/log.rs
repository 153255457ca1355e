//! A task's output, copied from its pipes into size-bounded logs in `DIR/logs/N/`.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdout};

use nix::unistd::{Gid, Uid};

/// Opens a log for appending, never through a symbolic link.
pub(super) fn append_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

pub(super) enum Source {
    Out(ChildStdout),
    Err(ChildStderr),
}

/// A task's output pipe copied into a log file of its run, in `DIR/logs/N/`, rotated at a
/// size bound. The file belongs to the task's user and the operators' group (0640). What
/// cannot be written (a full disk) is counted and dropped: a log is never a reason to stop
/// supervising.
pub(super) struct Log {
    source: Source,
    path: PathBuf,
    owner: (Uid, Gid),
    file: Option<File>,
    written: u64,
    max: u64,
    /// Bytes that could not be written.
    pub(super) dropped: u64,
}

impl Log {
    pub(super) fn new(source: Source, path: PathBuf, max: u64, owner: (Uid, Gid)) -> Log {
        let written = fs::symlink_metadata(&path).map_or(0, |m| m.len());
        Log {
            source,
            path,
            owner,
            file: None,
            written,
            max: max.max(4096),
            dropped: 0,
        }
    }

    pub(super) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match &self.source {
            Source::Out(p) => p.as_fd(),
            Source::Err(p) => p.as_fd(),
        }
    }

    /// Copies what is there; false at end of file, or when nothing more can be read.
    pub(super) fn pump(&mut self) -> bool {
        let mut buf = [0u8; 16384];
        let n = match &mut self.source {
            Source::Out(p) => p.read(&mut buf),
            Source::Err(p) => p.read(&mut buf),
        };
        match n {
            Ok(0) => false,
            Ok(n) => {
                self.append(&buf[..n]);
                true
            }
            Err(e) => e.kind() == std::io::ErrorKind::Interrupted,
        }
    }

    /// Appends `bytes`, rotating whenever the log reaches its bound: a read larger than
    /// the bound (it may be up to 16 KiB, the bound as little as 4 KiB) is split across
    /// files rather than making one larger than promised.
    fn append(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.written >= self.max {
                self.rotate();
            }
            let room = (self.max - self.written).min(bytes.len() as u64) as usize;
            let (now, rest) = bytes.split_at(room);
            self.write(now);
            bytes = rest;
        }
    }

    /// The current log becomes the one old generation (`.1`), replacing the one before.
    fn rotate(&mut self) {
        self.file = None;
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        let _ = fs::rename(&self.path, old);
        self.written = 0;
    }

    fn write(&mut self, bytes: &[u8]) {
        let n = bytes.len() as u64;
        if self.file.is_none() {
            self.file = self.open().ok();
        }
        match self.file.as_mut().map(|f| f.write_all(bytes)) {
            Some(Ok(())) => self.written += n,
            Some(Err(_)) | None => {
                self.dropped += n;
                self.file = None; // opened afresh for the next output
            }
        }
    }

    fn open(&self) -> std::io::Result<File> {
        let f = append_private(&self.path)?;
        nix::unistd::fchown(f.as_raw_fd(), Some(self.owner.0), Some(self.owner.1))?;
        nix::sys::stat::fchmod(
            f.as_raw_fd(),
            nix::sys::stat::Mode::from_bits_truncate(0o640),
        )?;
        Ok(f)
    }

    /// Copies what is left once the writers are gone, without blocking.
    pub(super) fn pump_until_eof(&mut self) {
        let fd = self.fd().as_raw_fd();
        if let Ok(flags) = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL) {
            let flags =
                nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
            let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags));
        }
        while self.pump() {}
    }
}
