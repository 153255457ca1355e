//! The exit-status table every formic tool shares (DESIGN.md), and the one place where an
//! error becomes a line on stderr and a status.
//!
//! Library code returns `anyhow::Error`; whoever knows what kind of failure it is attaches a
//! [`Status`] with [`fail`] or [`Context`]-style helpers. The first `Status` found walking the
//! error chain wins; an I/O error without one is classified by its kind.

use std::cell::Cell;
use std::fmt;
use std::io::{self, Write};
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
    /// An internal error: a bug, never a verdict on input (see [`exit_70_on_panic`]).
    Internal = 70,
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
  70  internal error (a bug; never caused by input)
  74  I/O error, or a corrupt, truncated, foreign or newer-version state file
  75  temporary failure (the state is locked by another writer); retry
  77  permission denied, or another scheduler has taken over (offer take-over)
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

/// Makes a panic, which is a bug and never a verdict on input, end the tool with status 70
/// (not Rust's 101) and one line on stderr. Every binary's `main` calls it first.
///
/// A panic inside [`catch_bug`] is printed the same way but left to unwind, so that the
/// code which must clean up after a bug (the supervisor kills the task it started) can.
pub fn exit_70_on_panic(tool: &'static str) {
    std::panic::set_hook(Box::new(move |info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("a panic");
        let at = info
            .location()
            .map_or(String::new(), |l| format!(" at {}:{}", l.file(), l.line()));
        // Not eprintln!: a closed stderr must not turn this panic into an abort.
        let line = one_line(&format!("{tool}: internal error (a bug): {what}{at}"));
        let _ = writeln!(io::stderr(), "{line}");
        if CATCHING.with(Cell::get) == 0 {
            std::process::exit(Status::Internal.code().into());
        }
    }));
}

thread_local! {
    /// How many [`catch_bug`] calls this thread is inside.
    static CATCHING: Cell<u32> = const { Cell::new(0) };
}

/// Runs `f`; a panic in it (a bug, already printed by the hook [`exit_70_on_panic`]
/// installs) comes back as an error with status 70 instead of ending the process, for a
/// caller that must clean up first.
pub fn catch_bug<T>(f: impl FnOnce() -> T) -> anyhow::Result<T> {
    CATCHING.with(|c| c.set(c.get() + 1));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(c.get() - 1));
    outcome.map_err(|_| fail(Status::Internal, "internal error (a bug)"))
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

    /// Runs `role` of [`panic_child`] in a child process of this test binary.
    fn panic_child_run(role: &str) -> std::process::Output {
        // /proc/self/exe: still this binary if cargo replaced it while the tests run.
        std::process::Command::new("/proc/self/exe")
            .args(["--exact", "exit::tests::panic_child", "--ignored"])
            .args(["--nocapture", "--test-threads=1", "-q"])
            .env(PANIC_ROLE, role)
            .output()
            .unwrap()
    }

    const PANIC_ROLE: &str = "FORMIC_PANIC_ROLE";

    #[test]
    #[ignore = "entry point of the child processes of the panic tests"]
    fn panic_child() {
        let Ok(role) = std::env::var(PANIC_ROLE) else {
            return;
        };
        exit_70_on_panic("tool");
        match role.as_str() {
            "uncaught" => panic!("a bug\nover two lines"),
            "caught" => {
                let e = catch_bug(|| -> u32 { panic!("a bug") }).unwrap_err();
                assert_eq!(status_of(&e), Status::Internal);
                println!("cleaned up after: {e}");
            }
            other => unreachable!("unknown role {other}"),
        }
    }

    #[test]
    fn a_panic_exits_70_with_one_line_on_stderr() {
        let out = panic_child_run("uncaught");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(70), "{stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("tool:")).collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(
            lines[0].starts_with("tool: internal error (a bug): a bug over two lines"),
            "{stderr}"
        );
    }

    #[test]
    fn a_caught_panic_leaves_its_caller_to_clean_up() {
        let out = panic_child_run("caught");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .contains("cleaned up after: internal error (a bug)"),
            "{out:?}"
        );
        assert!(
            stderr.contains("tool: internal error (a bug): a bug at "),
            "{stderr}"
        );
    }

    #[test]
    fn io_kinds_map_to_statuses() {
        let e = anyhow::Error::from(io::Error::from(io::ErrorKind::PermissionDenied));
        assert_eq!(status_of(&e), Status::Permission);
        let e = anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe)).context("stdout");
        assert!(is_broken_pipe(&e));
    }
}
