//! Health checks, run beside the supervisor's loop and never inside it, after s6's
//! s6-notifyoncheck: the check is someone else's work, and its verdict arrives as an event.
//! A command check is a child process in the task's world (its exit, reaped by the loop, is
//! the verdict); an HTTP check runs on a thread of its own and sends its verdict through a
//! pipe the loop polls. The loop keeps each check's deadline: one that has not answered by
//! its timeout has failed and is abandoned (a command is killed), so a slow check never
//! holds up a stop, a signal or the task's logs.

use std::io::{PipeReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Result;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::{world, Health, Spec};
use crate::exit::{fail, Status as Exit};
use crate::identity::Ids;
use crate::limits::Enforcer;

/// A health check under way.
pub(super) struct Check {
    deadline: Instant,
    kind: Kind,
}

enum Kind {
    /// The health command, in a session of its own (its pid is its process group).
    Command(Pid),
    /// The read end of the pipe an HTTP check's thread answers on (one byte, 1 healthy),
    /// and whether it has. The thread then reads the rest of the answer and closes the
    /// pipe: the check is over only then, so that a server that keeps its connections
    /// open never has more than one check's thread waiting on it.
    Http { pipe: PipeReader, answered: bool },
}

/// What an HTTP check's pipe says.
#[derive(Debug, PartialEq)]
pub(super) enum Answer {
    /// Its verdict: healthy or not.
    Verdict(bool),
    /// Its thread is done.
    Over,
}

impl Check {
    /// Starts the task's health check; None when it cannot even start, which is a failed
    /// check.
    pub(super) fn start(
        h: &Health,
        spec: &Spec,
        dir: &Path,
        ids: Option<Ids>,
        limits: &Enforcer,
    ) -> Option<Check> {
        let deadline = Instant::now() + h.timeout();
        let kind = if h.cmd.is_empty() {
            Kind::Http {
                pipe: http_on_a_thread(h)?,
                answered: false,
            }
        } else {
            let mut cmd = world::in_task_world(spec, dir, &h.cmd, ids, limits.for_child()).ok()?;
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
            // Not waited for here: the loop reaps it with every other child, by pid.
            let child = cmd.spawn().ok()?;
            Kind::Command(Pid::from_raw(child.id() as i32))
        };
        Some(Check { deadline, kind })
    }

    /// When the check has failed if it has not answered.
    pub(super) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether its verdict is in (what is left is the end of an HTTP check's thread).
    pub(super) fn answered(&self) -> bool {
        matches!(self.kind, Kind::Http { answered: true, .. })
    }

    /// The health command's pid, whose exit is the verdict.
    pub(super) fn pid(&self) -> Option<Pid> {
        match self.kind {
            Kind::Command(pid) => Some(pid),
            Kind::Http { .. } => None,
        }
    }

    /// The pipe an HTTP check answers on.
    pub(super) fn answer(&self) -> Option<BorrowedFd<'_>> {
        match &self.kind {
            Kind::Command(_) => None,
            Kind::Http { pipe, .. } => Some(pipe.as_fd()),
        }
    }

    /// What the HTTP check's pipe says, once it is readable. A thread that ended without
    /// a verdict hit a bug (its panic is on stderr already).
    pub(super) fn read_answer(&mut self) -> Result<Answer> {
        let Kind::Http { pipe, answered } = &mut self.kind else {
            return Ok(Answer::Over);
        };
        let mut byte = [0u8; 1];
        match pipe.read(&mut byte) {
            Ok(1) if !*answered => {
                *answered = true;
                Ok(Answer::Verdict(byte[0] == 1))
            }
            Ok(0) if *answered => Ok(Answer::Over),
            _ => Err(fail(
                Exit::Internal,
                "the HTTP health check ended without a verdict (a bug)",
            )),
        }
    }

    /// Gives the check up: a command is killed (and reaped with the orphans); a thread's
    /// verdict goes nowhere, and the thread ends by its own deadline.
    pub(super) fn abandon(self) {
        if let Kind::Command(pid) = self.kind {
            let _ = killpg(pid, Signal::SIGKILL);
        }
    }
}

/// Runs [`http_check`] on a thread; the read end of the pipe its verdict comes through.
fn http_on_a_thread(h: &Health) -> Option<PipeReader> {
    let (answer, mut tell) = std::io::pipe().ok()?;
    let (port, path, timeout) = (h.port, h.path.clone(), h.timeout());
    std::thread::Builder::new()
        .name("health".into())
        .spawn(move || {
            // A bug here is printed and ends this thread; the loop sees the pipe close.
            let _ = crate::exit::catch_bug(|| {
                http_check(port, &path, timeout, |ok| {
                    let _ = tell.write_all(&[u8::from(ok)]);
                })
            });
        })
        .ok()?;
    Some(answer)
}

/// How much of an answer a check reads before it hangs up regardless.
pub const DRAIN: usize = 256 << 10;

/// An HTTP GET of `path` on 127.0.0.1:`port`, all within `timeout`. `tell` gets the
/// verdict (a 2xx or 3xx status is healthy) as soon as the status line is in; the check
/// then reads the rest of the answer, until the server closes the connection (it is asked
/// to), [`DRAIN`] bytes or the timeout, before it hangs up itself. Hanging up on an answer
/// not yet read would reset the connection under the server, which many servers log as an
/// error.
pub fn http_check(port: u16, path: &str, timeout: Duration, tell: impl FnOnce(bool)) {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else {
        return tell(false);
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: formic-supervise\r\n\
         Connection: close\r\n\r\n"
    );
    let sent = left(deadline).is_some_and(|t| s.set_write_timeout(Some(t)).is_ok())
        && s.write_all(request.as_bytes()).is_ok();
    if !sent {
        return tell(false);
    }
    let mut tell = Some(tell);
    let mut line = Vec::new();
    let mut buf = [0u8; 8192];
    let mut read = 0;
    while read < DRAIN {
        let Some(t) = left(deadline) else { break };
        if s.set_read_timeout(Some(t)).is_err() {
            break;
        }
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        read += n;
        if tell.is_some() {
            line.extend_from_slice(&buf[..n]);
            if line.contains(&b'\n') || line.len() >= 1024 {
                if let Some(tell) = tell.take() {
                    tell(healthy_status(&line));
                }
            }
        }
    }
    if let Some(tell) = tell {
        tell(healthy_status(&line));
    }
}

/// The time left until `deadline`, if any.
fn left(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|t| !t.is_zero())
}

/// Whether an answer starts with a complete status line of a 2xx or 3xx status:
/// `HTTP/1.1 204 No Content`.
fn healthy_status(answer: &[u8]) -> bool {
    let Some(end) = answer.iter().position(|&b| b == b'\n') else {
        return false;
    };
    let line = &answer[..end];
    let Some(rest) = line.strip_prefix(b"HTTP/") else {
        return false;
    };
    let mut words = rest.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let _version = words.next();
    matches!(words.next(), Some([b'2' | b'3', b'0'..=b'9', b'0'..=b'9']))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::mpsc;

    #[test]
    fn status_lines() {
        for (answer, ok) in [
            (&b"HTTP/1.1 200 OK\r\n"[..], true),
            (b"HTTP/1.0 204 No Content\r\n\r\n", true),
            (b"HTTP/1.1 302 Found\r\nLocation: /x\r\n", true),
            (b"HTTP/1.1 404 Not Found\r\n", false),
            (b"HTTP/1.1 500 Oops\r\n", false),
            (b"HTTP/1.1 200", false), // cut before the end of the line
            (b"HTTP/1.1 2000 OK\r\n", false),
            (b"SSH-2.0-OpenSSH\r\n", false),
            (b"", false),
        ] {
            assert_eq!(
                healthy_status(answer),
                ok,
                "{:?}",
                String::from_utf8_lossy(answer)
            );
        }
    }

    /// A server for one connection: it reads the request head, answers `answer`, ends its
    /// side, and reports the request and whether the client hung up cleanly (a FIN, not
    /// the reset a client sends when it closes with part of the answer unread).
    fn serve_once(answer: Vec<u8>) -> (u16, mpsc::Receiver<(String, bool)>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let mut clean =
                s.write_all(&answer).is_ok() && s.shutdown(std::net::Shutdown::Write).is_ok();
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(_) => {
                        clean = false;
                        break;
                    }
                }
            }
            let _ = tx.send((String::from_utf8_lossy(&request).into_owned(), clean));
        });
        (port, rx)
    }

    fn check(port: u16, path: &str, timeout: Duration) -> bool {
        let mut verdict = None;
        http_check(port, path, timeout, |ok| verdict = Some(ok));
        verdict.expect("a verdict")
    }

    #[test]
    fn a_check_asks_to_close_and_reads_a_long_answer_to_its_end() {
        let body = vec![b'x'; 100 << 10];
        let mut answer =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        answer.extend_from_slice(&body);
        let (port, served) = serve_once(answer);
        assert!(check(port, "/health", Duration::from_secs(10)));
        let (request, clean) = served.recv().unwrap();
        assert!(
            request.starts_with("GET /health HTTP/1.1\r\n"),
            "{request:?}"
        );
        assert!(request.contains("\r\nConnection: close\r\n"), "{request:?}");
        assert!(clean, "the check hung up on the answer (a reset)");
    }

    #[test]
    fn the_verdict_comes_with_the_status_line_from_a_server_that_keeps_the_connection() {
        // It ignores "Connection: close": the check reads on until its timeout, but its
        // verdict does not wait for that.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let _ = s.read(&mut [0u8; 1024]);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            std::thread::sleep(Duration::from_secs(5));
        });
        let started = Instant::now();
        let mut told = None;
        http_check(port, "/", Duration::from_secs(1), |ok| {
            told = Some((ok, started.elapsed()))
        });
        let (ok, after) = told.unwrap();
        assert!(ok);
        assert!(
            after < Duration::from_millis(500),
            "verdict after {after:?}"
        );
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "read until the timeout"
        );
    }

    #[test]
    fn the_longest_timeout_is_taken() {
        let (port, _served) = serve_once(b"HTTP/1.0 204 No Content\r\n\r\n".to_vec());
        assert!(check(port, "/", crate::supervise::spec::LONGEST));
    }

    #[test]
    fn a_missing_page_and_a_silent_server_fail() {
        let (port, _served) = serve_once(b"HTTP/1.1 404 Not Found\r\n\r\n".to_vec());
        assert!(!check(port, "/", Duration::from_secs(10)));
        // Accepts, reads, never answers: failed at the timeout, not later.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let started = Instant::now();
        assert!(!check(port, "/", Duration::from_millis(300)));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "{took:?}");
        drop(listener);
        // Nothing listens.
        assert!(!check(port, "/", Duration::from_secs(1)));
    }
}
