//! Hosts reached with the OpenSSH client: each step is one `ssh HOST formic-host` with the
//! request on its standard input. Connections are shared (ControlMaster, the socket beside
//! the state file), so a step on a warm host costs one round trip.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::wire::{Answer, End, FoundWire, LookWire, Op, Probe, Request, StartTask};
use super::{
    Found, Inventory, Look, Measured, Prepared, Reply, Stamp, Start, Survey, TaskHost, Unreached,
};
use crate::reap::Act;
use crate::task::Task;
use crate::taskdir::Status;

/// How long one step may take on one host, connection included.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// A host reached over ssh.
pub struct Ssh {
    /// The ssh command and the options formic adds, up to the destination.
    argv: Vec<String>,
    /// `[user@]address`.
    destination: String,
    /// The command run there.
    remote: String,
    root: PathBuf,
    timeout: Duration,
    /// This scheduler's epoch, sent with every step.
    epoch: u64,
}

impl Ssh {
    /// `ssh_command` is FORMIC_SSH split on whitespace (`ssh -F /etc/formic/ssh_config`);
    /// `target` is `[user@]address[:port]`; `control_dir` holds the shared connections;
    /// `remote_bin` is the directory of the formic binaries there (else found on its PATH).
    pub fn new(
        ssh_command: &str,
        target: &str,
        root: PathBuf,
        control_dir: &Path,
        remote_bin: Option<&str>,
        epoch: u64,
    ) -> Ssh {
        let mut argv: Vec<String> = ssh_command.split_whitespace().map(String::from).collect();
        if argv.is_empty() {
            argv.push("ssh".into());
        }
        let (destination, port) = split_port(target);
        for (k, v) in [
            // Never a prompt: a host that wants a password or an unknown key is unreached.
            ("BatchMode", "yes".to_string()),
            ("StrictHostKeyChecking", "yes".to_string()),
            ("ConnectTimeout", "5".to_string()),
            ("ServerAliveInterval", "5".to_string()),
            ("ServerAliveCountMax", "2".to_string()),
            ("ControlMaster", "auto".to_string()),
            ("ControlPersist", "60".to_string()),
            (
                "ControlPath",
                control_dir.join("ssh-%C").to_string_lossy().into_owned(),
            ),
        ] {
            argv.push("-o".into());
            argv.push(format!("{k}={v}"));
        }
        if let Some(p) = port {
            argv.push("-p".into());
            argv.push(p.to_string());
        }
        let remote = match remote_bin {
            Some(dir) => shell_quote(&format!("{}/formic-host", dir.trim_end_matches('/'))),
            None => "formic-host".to_string(),
        };
        Ssh {
            argv,
            destination: destination.to_string(),
            remote,
            root,
            timeout: STEP_TIMEOUT,
            epoch,
        }
    }

    /// One step: the request in, the answers out, every answer accounted for.
    fn call(&self, op: Op) -> Reply<Answer> {
        let request = Request {
            root: self.root.clone(),
            epoch: self.epoch,
            op,
        };
        let mut line = serde_json::to_vec(&request).map_err(|e| Unreached::new(e.to_string()))?;
        line.push(b'\n');
        let mut child = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .arg("--")
            .arg(&self.destination)
            .arg(&self.remote)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Unreached::new(format!("starting {}: {e}", self.argv[0])))?;
        let mut stdin = child.stdin.take().expect("piped");
        let writer = std::thread::spawn(move || stdin.write_all(&line));
        let mut stdout = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            stdout.read_to_string(&mut text).map(|_| text)
        });
        let mut stderr = child.stderr.take().expect("piped");
        let complaints = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let _ = writer.join();
        let text = reader.join().ok().and_then(Result::ok).unwrap_or_default();
        let complaint = complaints.join().unwrap_or_default();
        let said = complaint.lines().last().unwrap_or("").trim().to_string();
        match status.map(|s| s.code()) {
            None => {
                return Err(Unreached::new(format!(
                    "no answer within {} s",
                    self.timeout.as_secs()
                )))
            }
            Some(Some(255)) if said.is_empty() => return Err(Unreached::new("ssh exited 255")),
            Some(Some(255)) => return Err(Unreached::new(said)),
            // formic-host refused a scheduler of an older epoch (see `transport::epoch`).
            Some(Some(77)) => {
                return Err(Unreached {
                    why: said,
                    superseded: true,
                })
            }
            Some(Some(0)) => {}
            Some(code) => {
                return Err(Unreached::new(format!(
                    "formic-host failed (exit {}): {said}",
                    code.map_or("by a signal".into(), |c| c.to_string())
                )))
            }
        }
        parse_answers(&text).map_err(Unreached::new)
    }
}

/// The answer lines, checked against the count on the last one.
fn parse_answers(text: &str) -> Result<Vec<Answer>, String> {
    let mut lines: Vec<&str> = text.lines().collect();
    let last = lines.pop().ok_or("an empty answer")?;
    let end: End = serde_json::from_str(last).map_err(|_| "an answer cut short")?;
    if end.end != lines.len() {
        return Err(format!(
            "an answer of {} lines where {} were counted",
            lines.len(),
            end.end
        ));
    }
    lines
        .iter()
        .map(|l| serde_json::from_str(l).map_err(|e| format!("an answer line: {e}")))
        .collect()
}

/// `[user@]address[:port]` → (`[user@]address`, port).
fn split_port(target: &str) -> (&str, Option<u16>) {
    match target.rsplit_once(':') {
        Some((dest, port)) if !dest.contains(':') => match port.parse() {
            Ok(p) => (dest, Some(p)),
            Err(_) => (target, None),
        },
        _ => (target, None),
    }
}

/// `s` as one word for the remote shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The answers to a step that asked about `n` things, each as `f` makes it out.
fn each<T>(answers: Vec<Answer>, n: usize, f: impl Fn(Answer) -> Option<T>) -> Reply<T> {
    if answers.len() != n {
        return Err(Unreached::new(format!(
            "{} answers to {n} questions",
            answers.len()
        )));
    }
    answers
        .into_iter()
        .map(|a| f(a).ok_or_else(|| Unreached::new("an answer of the wrong kind")))
        .collect()
}

impl TaskHost for Ssh {
    fn start(&self, tasks: &[Prepared]) -> Reply<Start> {
        let op = Op::Start(
            tasks
                .iter()
                .map(|p| StartTask {
                    task: p.task.to_string(),
                    incarnation: p.incarnation,
                    spec: p.spec.to_json(),
                    job: p.job.to_string(),
                })
                .collect(),
        );
        each(self.call(op)?, tasks.len(), |a| match a {
            Answer::Start(s) => Some(s.into()),
            _ => None,
        })
    }

    fn reports(&self, tasks: &[(&str, u32)]) -> Reply<Option<Status>> {
        each(
            self.call(Op::Reports(owned(tasks)))?,
            tasks.len(),
            |a| match a {
                Answer::Status(s) => Some(s.and_then(|v| super::wire::status(&v).ok())),
                _ => None,
            },
        )
    }

    fn stop(&self, tasks: &[(&str, u32)]) -> Reply<bool> {
        each(self.call(Op::Stop(owned(tasks)))?, tasks.len(), done)
    }

    fn look(&self, tasks: &[(&str, &Task)]) -> Reply<Result<Look, String>> {
        let probes = tasks.iter().map(|(id, t)| Probe::of(id, t)).collect();
        each(self.call(Op::Look(probes))?, tasks.len(), look)
    }

    fn survey(&self, tasks: &[(&str, &Task)]) -> Result<Survey, Unreached> {
        let probes = tasks.iter().map(|(id, t)| Probe::of(id, t)).collect();
        let mut answers = self.call(Op::Survey(probes))?;
        // The supervisors first, then one look per task.
        let supervisors = answers
            .len()
            .checked_sub(tasks.len())
            .ok_or_else(|| Unreached::new("a survey with fewer looks than tasks"))?;
        let looks = answers.split_off(supervisors);
        Ok(Survey {
            found: each(answers, supervisors, |a| match a {
                Answer::Found(f) => FoundWire::found(f).ok(),
                _ => None,
            })?,
            looks: each(looks, tasks.len(), look)?,
        })
    }

    fn stamps(&self, tasks: &[&str]) -> Reply<Option<Stamp>> {
        let ids = tasks.iter().map(|t| t.to_string()).collect();
        each(self.call(Op::Stamps(ids))?, tasks.len(), |a| match a {
            Answer::Stamp(s) => Some(s),
            _ => None,
        })
    }

    fn call_off(&self, tasks: &[(&str, u32)]) -> Reply<bool> {
        each(self.call(Op::CallOff(owned(tasks)))?, tasks.len(), done)
    }

    fn act(&self, acts: &[(&str, &Act)]) -> Reply<Result<bool, String>> {
        let op = Op::Act(
            acts.iter()
                .map(|(t, a)| (t.to_string(), (*a).clone()))
                .collect(),
        );
        each(self.call(op)?, acts.len(), |a| match a {
            Answer::Acted(hit) => Some(Ok(hit)),
            Answer::Error(e) => Some(Err(e)),
            _ => None,
        })
    }

    fn supervisors(&self) -> Reply<Found> {
        let answers = self.call(Op::Supervisors)?;
        let n = answers.len();
        each(answers, n, |a| match a {
            Answer::Found(f) => FoundWire::found(f).ok(),
            _ => None,
        })
    }

    fn probe(&self) -> Result<Measured, Unreached> {
        let mut m = each(self.call(Op::Probe)?, 1, |a| match a {
            Answer::Probe(m) => Some(m),
            _ => None,
        })?;
        Ok(m.remove(0))
    }

    fn inventory(&self) -> Result<Inventory, Unreached> {
        let mut answers = self.call(Op::Inventory)?.into_iter();
        let Some(Answer::Epoch(epoch)) = answers.next() else {
            return Err(Unreached::new("an inventory without the host's epoch"));
        };
        let n = answers.len();
        let held = each(answers.collect(), n, |a| match a {
            Answer::Held(h) => h.held().ok(),
            _ => None,
        })?;
        Ok(Inventory { epoch, held })
    }

    fn read_log(
        &self,
        read: &super::LogRead,
    ) -> Result<Result<crate::runlogs::Piece, String>, Unreached> {
        let mut one = each(self.call(Op::ReadLog(read.clone()))?, 1, |a| match a {
            Answer::Log(l) => Some(l.piece()),
            Answer::Error(e) => Some(Err(e)),
            _ => None,
        })?;
        Ok(one.remove(0))
    }
}

fn owned(tasks: &[(&str, u32)]) -> Vec<(String, u32)> {
    tasks.iter().map(|(t, n)| (t.to_string(), *n)).collect()
}

fn look(a: Answer) -> Option<Result<Look, String>> {
    match a {
        Answer::Look(l) => Some(LookWire::look(l)),
        Answer::Error(e) => Some(Err(e)),
        _ => None,
    }
}

fn done(a: Answer) -> Option<bool> {
    match a {
        Answer::Done(b) => Some(b),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_into_destination_and_port() {
        assert_eq!(split_port("h1"), ("h1", None));
        assert_eq!(
            split_port("root@198.18.0.2:2222"),
            ("root@198.18.0.2", Some(2222))
        );
        assert_eq!(split_port("root@h1"), ("root@h1", None));
        assert_eq!(split_port("h1:x"), ("h1:x", None));
    }

    #[test]
    fn an_answer_cut_short_is_not_taken_for_a_whole_one() {
        assert!(parse_answers("").is_err());
        assert!(parse_answers("{\"done\":true}\n").is_err());
        assert!(parse_answers("{\"done\":true}\n{\"end\":2}\n").is_err());
        assert_eq!(
            parse_answers("{\"done\":true}\n{\"end\":1}\n")
                .unwrap()
                .len(),
            1
        );
    }
}
