//! `formic-host`: the host's half of launch and reap, run on a remote host through ssh. It
//! reads one request (see `wire`) on standard input, carries it out on the host's task
//! directories exactly as launch and reap do on a local host, and prints the answers. It
//! keeps nothing running but the supervisors it starts: no agent, no daemon.

use std::io::{self, BufRead, Read, Write};

use anyhow::{Context, Result};

use super::local::Local;
use super::wire::{
    Answer, End, FoundWire, HeldWire, LogWire, LookWire, Op, Probe, Request, StartWire,
};
use super::{Prepared, Reply, TaskHost};
use crate::exit::{bad_input, Status};
use crate::supervise::Spec;

/// The host's half of launch and reap, for a scheduler that reaches this host over ssh.
///
/// Reads one request (a JSON line formic writes) on standard input, carries it out on this
/// host's task directories (start supervisors, report their status, call starts off,
/// signal, list supervisors) and prints one JSON line per answer, then a line counting
/// them. Not meant for people: give it as the forced command of the ssh key the scheduler
/// uses (`command="formic-host",restrict` in root's authorized_keys).
#[derive(clap::Parser, Debug)]
#[command(name = "formic-host", version, after_help = crate::exit::TABLE)]
pub struct Cli {}

/// The longest request read: a start of every task a host could hold, with their specs.
const MAX_REQUEST: u64 = 64 << 20;

pub fn run(_: Cli) -> Result<Status> {
    let mut line = String::new();
    io::stdin()
        .lock()
        .take(MAX_REQUEST)
        .read_line(&mut line)
        .context("reading the request")?;
    let request: Request = serde_json::from_str(&line)
        .map_err(|e| bad_input(format!("the request is not one formic sends: {e}")))?;
    if !request.root.is_absolute()
        || request
            .root
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(bad_input(format!(
            "root {} is not an absolute path without ..",
            request.root.display()
        )));
    }
    // Task ids name directories under the root: checked, so none leaves it.
    for id in task_ids(&request.op) {
        crate::reap::parse_task_id(id).map_err(bad_input)?;
    }
    // A look at everything held, or at a log, changes nothing: any scheduler may take it.
    if !matches!(request.op, Op::Inventory | Op::ReadLog(_)) {
        admit_epoch(&request.root, request.epoch)?;
    }
    let host = Local::new(request.root.clone());
    let answers = answer(&host, request.op).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = io::BufWriter::new(io::stdout().lock());
    for a in &answers {
        serde_json::to_writer(&mut out, a)?;
        out.write_all(b"\n")?;
    }
    serde_json::to_writer(&mut out, &End { end: answers.len() })?;
    out.write_all(b"\n")?;
    out.flush().context("writing the answer")?;
    Ok(Status::Done)
}

/// Refuses a scheduler older than the newest this host has seen, and remembers a newer
/// one: `ROOT/epoch`, under the lock `ROOT/epoch.lock`, so two requests at once agree.
fn admit_epoch(root: &std::path::Path, epoch: u64) -> Result<()> {
    crate::taskdir::create_root(root)?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.join("epoch.lock"))
        .context("opening epoch.lock")?;
    lock.lock().context("locking epoch.lock")?;
    let path = root.join("epoch");
    let seen = super::seen_epoch(root);
    if epoch < seen {
        return Err(crate::exit::fail(
            Status::Permission,
            format!(
                "epoch {epoch} is older than {seen}: another scheduler has taken over this host"
            ),
        ));
    }
    if epoch > seen {
        crate::taskdir::replace_file_mode(&path, format!("{epoch}\n").as_bytes(), true, 0o644)?;
    }
    Ok(())
}

/// Carries out one request on `host`.
pub fn answer(host: &dyn TaskHost, op: Op) -> Reply<Answer> {
    Ok(match op {
        Op::Start(tasks) => {
            let specs: Vec<Result<Spec, String>> = tasks
                .iter()
                .map(|t| Spec::parse(&t.spec.to_string()))
                .collect();
            let mut answers: Vec<Option<Answer>> = Vec::with_capacity(tasks.len());
            let mut prepared = Vec::new();
            for (t, spec) in tasks.iter().zip(&specs) {
                match spec {
                    Ok(spec) => {
                        answers.push(None);
                        prepared.push(Prepared {
                            task: &t.task,
                            incarnation: t.incarnation,
                            spec,
                            job: &t.job,
                        });
                    }
                    Err(e) => answers.push(Some(Answer::Start(StartWire::Failed {
                        why: format!("spec.json: {e}"),
                        exit: 126,
                    }))),
                }
            }
            let mut started = host.start(&prepared)?.into_iter();
            answers
                .into_iter()
                .map(|a| {
                    a.unwrap_or_else(|| {
                        Answer::Start(started.next().map_or(StartWire::CalledOff, |s| (&s).into()))
                    })
                })
                .collect()
        }
        Op::Reports(tasks) => host
            .reports(&pairs(&tasks))?
            .into_iter()
            .map(|s| Answer::Status(s.map(|s| s.to_json())))
            .collect(),
        Op::Stop(tasks) => host
            .stop(&pairs(&tasks))?
            .into_iter()
            .map(Answer::Done)
            .collect(),
        Op::Look(probes) => looks(host, &probes)?,
        Op::Stamps(tasks) => {
            let ids: Vec<&str> = tasks.iter().map(String::as_str).collect();
            host.stamps(&ids)?.into_iter().map(Answer::Stamp).collect()
        }
        Op::CallOff(tasks) => host
            .call_off(&pairs(&tasks))?
            .into_iter()
            .map(Answer::Done)
            .collect(),
        Op::Act(acts) => {
            let asked: Vec<(&str, &crate::reap::Act)> =
                acts.iter().map(|(t, a)| (t.as_str(), a)).collect();
            host.act(&asked)?
                .into_iter()
                .map(|r| match r {
                    Ok(hit) => Answer::Acted(hit),
                    Err(e) => Answer::Error(e),
                })
                .collect()
        }
        Op::Supervisors => found(host)?,
        Op::Survey(probes) => {
            let mut answers = found(host)?;
            answers.extend(looks(host, &probes)?);
            answers
        }
        Op::Probe => vec![Answer::Probe(host.probe()?)],
        Op::Inventory => {
            let inventory = host.inventory()?;
            std::iter::once(Answer::Epoch(inventory.epoch))
                .chain(inventory.held.iter().map(|h| Answer::Held(HeldWire::of(h))))
                .collect()
        }
        Op::ReadLog(read) => vec![match host.read_log(&read)? {
            Ok(piece) => Answer::Log(LogWire::of(&piece)),
            Err(why) => Answer::Error(why),
        }],
    })
}

fn found(host: &dyn TaskHost) -> Reply<Answer> {
    Ok(host
        .supervisors()?
        .iter()
        .map(|f| Answer::Found(FoundWire::of(f)))
        .collect())
}

/// One answer per probe: a look, or why the probe or the look failed.
fn looks(host: &dyn TaskHost, probes: &[Probe]) -> Reply<Answer> {
    let records: Vec<Result<crate::task::Task, String>> = probes.iter().map(|p| p.task()).collect();
    let asked: Vec<(&str, &crate::task::Task)> = probes
        .iter()
        .zip(&records)
        .filter_map(|(p, t)| Some((p.task.as_str(), t.as_ref().ok()?)))
        .collect();
    let mut looks = host.look(&asked)?.into_iter();
    Ok(records
        .iter()
        .map(|t| match t {
            Err(e) => Answer::Error(e.clone()),
            Ok(_) => match looks.next() {
                Some(Ok(l)) => Answer::Look(LookWire::of(&l)),
                Some(Err(e)) => Answer::Error(e),
                None => Answer::Error("no look".into()),
            },
        })
        .collect())
}

/// Every task id a request names.
fn task_ids(op: &Op) -> Vec<&str> {
    match op {
        Op::Start(t) => t.iter().map(|t| t.task.as_str()).collect(),
        Op::Reports(t) | Op::Stop(t) | Op::CallOff(t) => t.iter().map(|t| t.0.as_str()).collect(),
        Op::Look(p) | Op::Survey(p) => p.iter().map(|p| p.task.as_str()).collect(),
        Op::Stamps(t) => t.iter().map(String::as_str).collect(),
        Op::Act(a) => a.iter().map(|a| a.0.as_str()).collect(),
        Op::ReadLog(r) => vec![r.task.as_str()],
        Op::Supervisors | Op::Probe | Op::Inventory => Vec::new(),
    }
}

fn pairs(tasks: &[(String, u32)]) -> Vec<(&str, u32)> {
    tasks.iter().map(|(t, n)| (t.as_str(), *n)).collect()
}
