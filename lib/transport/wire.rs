//! What crosses to a remote host and back: one request line on the host-side command's
//! standard input, one answer line per task asked about on its standard output, then a
//! last line that counts them, so that an answer cut short (a connection dropped halfway)
//! is never taken for a whole one.
//!
//! ```text
//! → {"root":"/var/lib/formic/host","epoch":0,"op":{"look":[{"task":"www/prod/web/0",...}]}}
//! ← {"seen":"alive","status":{...},"facts":{...}}
//! ← {"end":1}
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Found, Held, Look, Measured, Start};
use crate::job::Restart;
use crate::reap::{Act, Facts, Policy, Seen};
use crate::task::{Task, TaskState};
use crate::taskdir::Status;

/// One step for one host.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// The host's task-directory root.
    pub root: PathBuf,
    /// The scheduler's epoch: a host that has seen a later one refuses the request.
    #[serde(default)]
    pub epoch: u64,
    pub op: Op,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    Start(Vec<StartTask>),
    Reports(Vec<(String, u32)>),
    Stop(Vec<(String, u32)>),
    Look(Vec<Probe>),
    Stamps(Vec<String>),
    CallOff(Vec<(String, u32)>),
    Act(Vec<(String, Act)>),
    Supervisors,
    /// Supervisors, then looks.
    Survey(Vec<Probe>),
    Probe,
    Inventory,
    ReadLog(super::LogRead),
}

/// A start: the task's spec.json and job.json as JSON.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartTask {
    pub task: String,
    pub incarnation: u32,
    pub spec: Value,
    pub job: String,
}

/// What a look needs of a task's record.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub task: String,
    pub incarnation: u32,
    pub state: String,
    pub since: f64,
    pub pid_start: u64,
}

impl Probe {
    pub fn of(task: &str, t: &Task) -> Probe {
        Probe {
            task: task.to_string(),
            incarnation: t.incarnation,
            state: t.state.name().to_string(),
            since: t.since,
            pid_start: t.pid_start,
        }
    }

    /// The record as far as a look reads it.
    pub fn task(&self) -> Result<Task, String> {
        let mut t = Task::new(0, 0);
        t.incarnation = self.incarnation;
        t.state = TaskState::from_name(&self.state)
            .ok_or_else(|| format!("{:?} is not a task state", self.state))?;
        t.since = self.since;
        t.pid_start = self.pid_start;
        Ok(t)
    }
}

/// [`Facts`] as a remote host reads them for a decision: all at once.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactsWire {
    pub service: bool,
    pub max_failures: u64,
    pub backoff_s: f64,
    pub max_backoff_s: f64,
    pub grace_s: f64,
    pub health_check: bool,
    pub started: Option<f64>,
}

impl FactsWire {
    pub fn of(f: &Facts) -> FactsWire {
        let (policy, grace_s, health_check) = f.resolved();
        FactsWire {
            service: policy.service,
            max_failures: policy.restart.max_failures,
            backoff_s: policy.restart.backoff_s,
            max_backoff_s: policy.restart.max_backoff_s,
            grace_s,
            health_check,
            started: f.started,
        }
    }

    pub fn facts(&self) -> Facts {
        let policy = Policy {
            service: self.service,
            restart: Restart {
                max_failures: self.max_failures,
                backoff_s: self.backoff_s,
                max_backoff_s: self.max_backoff_s,
            },
        };
        Facts::fixed(policy, self.grace_s, self.health_check, self.started)
    }
}

/// One answer line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Answer {
    Start(StartWire),
    Status(Option<Value>),
    Done(bool),
    Look(LookWire),
    Stamp(Option<(u64, i64, i64, u64)>),
    Acted(bool),
    Found(FoundWire),
    Probe(Measured),
    /// The first line of an inventory.
    Epoch(u64),
    Held(HeldWire),
    Log(LogWire),
    Error(String),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StartWire {
    Started,
    CalledOff,
    Busy(String),
    Failed { why: String, exit: i32 },
}

impl From<&Start> for StartWire {
    fn from(s: &Start) -> StartWire {
        match s {
            Start::Started => StartWire::Started,
            Start::CalledOff => StartWire::CalledOff,
            Start::Busy(why) => StartWire::Busy(why.clone()),
            Start::Failed { why, exit } => StartWire::Failed {
                why: why.clone(),
                exit: *exit,
            },
            // The host side never answers this of itself.
            Start::Unreached(why) | Start::Superseded(why) => StartWire::Busy(why.clone()),
        }
    }
}

impl From<StartWire> for Start {
    fn from(s: StartWire) -> Start {
        match s {
            StartWire::Started => Start::Started,
            StartWire::CalledOff => Start::CalledOff,
            StartWire::Busy(why) => Start::Busy(why),
            StartWire::Failed { why, exit } => Start::Failed { why, exit },
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookWire {
    /// alive, ended or gone.
    pub seen: String,
    pub status: Option<Value>,
    pub facts: FactsWire,
}

impl LookWire {
    pub fn of(l: &Look) -> LookWire {
        let (seen, status) = match &l.seen {
            Seen::Alive(s) => ("alive", s.as_ref()),
            Seen::Ended(s) => ("ended", Some(s)),
            Seen::Gone(s) => ("gone", s.as_ref()),
        };
        LookWire {
            seen: seen.into(),
            status: status.map(Status::to_json),
            facts: FactsWire::of(&l.facts),
        }
    }

    pub fn look(self) -> Result<Look, String> {
        let status = self.status.map(|v| status(&v)).transpose()?;
        let seen = match (self.seen.as_str(), status) {
            ("alive", s) => Seen::Alive(s),
            ("ended", Some(s)) => Seen::Ended(s),
            ("gone", s) => Seen::Gone(s),
            (other, _) => return Err(format!("{other:?} is not what a look sees")),
        };
        Ok(Look {
            seen,
            facts: self.facts.facts(),
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FoundWire {
    pub task: String,
    pub status: Value,
    pub facts: FactsWire,
}

impl FoundWire {
    pub fn of(f: &Found) -> FoundWire {
        FoundWire {
            task: f.task.clone(),
            status: f.status.to_json(),
            facts: FactsWire::of(&f.facts),
        }
    }

    pub fn found(self) -> Result<Found, String> {
        Ok(Found {
            task: self.task,
            status: status(&self.status)?,
            facts: self.facts.facts(),
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldWire {
    pub task: String,
    pub fence: u32,
    pub supervised: bool,
    pub status: Option<Value>,
    pub spec: Option<Value>,
    pub job: Option<String>,
}

impl HeldWire {
    pub fn of(h: &Held) -> HeldWire {
        HeldWire {
            task: h.task.clone(),
            fence: h.fence,
            supervised: h.supervised,
            status: h.status.as_ref().map(Status::to_json),
            spec: h.spec.as_ref().map(crate::supervise::Spec::to_json),
            job: h.job.clone(),
        }
    }

    pub fn held(self) -> Result<Held, String> {
        Ok(Held {
            task: self.task,
            fence: self.fence,
            supervised: self.supervised,
            status: self.status.map(|v| status(&v)).transpose()?,
            spec: self
                .spec
                .map(|v| crate::supervise::Spec::parse(&v.to_string()))
                .transpose()?,
            job: self.job,
        })
    }
}

/// A piece of a log: its bytes in base64 (a task's output need not be UTF-8).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogWire {
    pub bytes: String,
    pub next: Option<crate::runlogs::Position>,
    pub more: bool,
    pub skipped: bool,
    pub live: bool,
}

impl LogWire {
    pub fn of(p: &crate::runlogs::Piece) -> LogWire {
        use base64::Engine;
        LogWire {
            bytes: base64::engine::general_purpose::STANDARD.encode(&p.bytes),
            next: p.next,
            more: p.more,
            skipped: p.skipped,
            live: p.live,
        }
    }

    pub fn piece(self) -> Result<crate::runlogs::Piece, String> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&self.bytes)
            .map_err(|e| format!("a log piece that is not base64: {e}"))?;
        Ok(crate::runlogs::Piece {
            bytes,
            next: self.next,
            more: self.more,
            skipped: self.skipped,
            live: self.live,
        })
    }
}

/// A status as its file would hold it.
pub fn status(v: &Value) -> Result<Status, String> {
    Status::parse(&v.to_string())
}

/// The last line of an answer: how many lines came before it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct End {
    pub end: usize,
}
