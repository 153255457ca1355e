//! The exit-status table every formic tool shares (DESIGN.md), and the one place where an
//! error becomes a line on stderr and a status.
//!
//! Library code returns `anyhow::Error`; whoever knows what kind of failure it is attaches a
//! [`Status`] with [`fail`] or [`Context`]-style helpers. The first `Status` found walking the
//! error chain wins; an I/O error without one is classified by its kind.

use std::fmt;
use std::io;
use std::process::ExitCode;

/// What a tool's exit status tells the caller. The numbers are sysexits(3) where one fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Everything asked for was done.
    Done = 0,
    /// Done, but not everything (some hosts failed, some instances pending).
    Partial = 1,
    /// The command line was wrong.
    Usage = 2,
    /// An input record or file was malformed; nothing was changed.
    BadInput = 65,
    /// A service the tool needs (ZooKeeper, a remote host) did not answer.
    Unavailable = 69,
    /// An I/O error, or a state file that is corrupt, truncated, foreign or newer.
    Io = 74,
    /// Temporary: the state is locked by another writer; try again.
    Temporary = 75,
    /// Not permitted.
    Permission = 77,
}

/// The table printed at the end of every `--help` and in every man page.
pub const TABLE: &str = "\
Exit status:
  0   done
  1   done, but not everything (some hosts or records were skipped)
  2   usage error
  65  bad input (a malformed record or file; nothing was changed)
  69  a needed service is unavailable
  74  I/O error, or a corrupt, truncated, foreign or newer-version state file
  75  temporary failure (the state is locked by another writer); retry
  77  permission denied
A closed standard output (as with `| head`) ends the tool quietly with status 0.";

impl Status {
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// An error that knows which exit status it deserves.
#[derive(Debug)]
pub struct Failure {
    pub status: Status,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// Builds an error carrying `status`.
pub fn fail(status: Status, message: impl Into<String>) -> anyhow::Error {
    Failure {
        status,
        message: message.into(),
    }
    .into()
}

/// Bad input: `fail(Status::BadInput, …)`, the most common kind.
pub fn bad_input(message: impl Into<String>) -> anyhow::Error {
    fail(Status::BadInput, message)
}

/// Refuses a batch with bad parts: prints every error but the last (up to a hundred) as
/// `tool: error` lines, and returns the last, with the count and `consequence`, as the
/// run's bad-input error. One line per bad record; nothing of the batch is acted on.
pub fn refuse_batch(
    tool: &str,
    errors: &[String],
    what: &str,
    consequence: &str,
) -> anyhow::Result<()> {
    let Some((last, rest)) = errors.split_last() else {
        return Ok(());
    };
    for e in rest.iter().take(99) {
        eprintln!("{tool}: {e}");
    }
    if rest.len() > 99 {
        eprintln!("{tool}: … and {} more", rest.len() - 99);
    }
    Err(bad_input(format!(
        "{last} ({} bad {what}; {consequence})",
        errors.len()
    )))
}

/// The exit status an error deserves: the first [`Failure`] in its chain, else the kind of
/// the first I/O error, else an I/O failure.
pub fn status_of(err: &anyhow::Error) -> Status {
    for cause in err.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return f.status;
        }
        if let Some(e) = cause.downcast_ref::<io::Error>() {
            return match e.kind() {
                io::ErrorKind::PermissionDenied => Status::Permission,
                io::ErrorKind::WouldBlock => Status::Temporary,
                _ => Status::Io,
            };
        }
    }
    Status::Io
}

/// True when the error is only that our reader went away (`| head`): not an error at all.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Runs a tool's body and turns its outcome into an exit status, printing `tool: why` on
/// failure. Every binary's `main` is this one call.
pub fn run(tool: &str, body: impl FnOnce() -> anyhow::Result<Status>) -> ExitCode {
    // Rust ignores SIGPIPE, so a write to a closed pipe is an EPIPE error we can see and
    // treat as a quiet end rather than dying by signal halfway through a record.
    match body() {
        Ok(status) => ExitCode::from(status.code()),
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            let status = status_of(&err);
            eprintln!("{tool}: {}", one_line(&format!("{err:#}")));
            ExitCode::from(status.code())
        }
    }
}

/// Errors are one line on stderr, whatever a cause put in its message.
fn one_line(s: &str) -> String {
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn status_is_found_through_context() {
        let e = Err::<(), _>(bad_input("line 3: no name"))
            .context("reading hosts")
            .unwrap_err();
        assert_eq!(status_of(&e), Status::BadInput);
        assert_eq!(format!("{e:#}"), "reading hosts: line 3: no name");
    }

    #[test]
    fn io_kinds_map_to_statuses() {
        let e = anyhow::Error::from(io::Error::from(io::ErrorKind::PermissionDenied));
        assert_eq!(status_of(&e), Status::Permission);
        let e = anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe)).context("stdout");
        assert!(is_broken_pipe(&e));
    }
}
