//! Reading pack's input: offers from standard input, jobs from their files, quotas, and
//! what the state says runs (from the paths given, whatever named them). Everything is read
//! and checked before anything is decided, so bad input emits no record.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::cron::Runs;
use crate::exit::{bad_input, status_of, Status};
use crate::job::{self, JobSpec};
use crate::records::{self, Record};
use crate::rollout::Rollout;
use crate::state::{State, View};
use crate::task::{TaskState, NO_HOST};

use super::{offer_line, Fleet, Resources};

/// Everything pack read, checked.
pub struct Input {
    pub fleet: Fleet,
    pub jobs: Vec<JobSpec>,
    pub passthrough: Vec<String>,
    pub running: Vec<Running>,
    /// Per role; gpus are not limited (u64::MAX).
    pub quota: HashMap<String, Resources>,
    pub now: f64,
    /// `running` was read from a state: placements name the incarnation they create, so
    /// launch can tell whether the view they were decided on still holds.
    pub from_state: bool,
    /// Job files, lines or jobs that could not be read (their jobs are not placed).
    pub job_errors: Vec<String>,
    /// The state file read (its kept specs are beside it), and each job's rollout in it.
    pub state_path: Option<PathBuf>,
    pub rollouts: HashMap<String, Rollout>,
    /// Each batch or cron job's runs in the state, where it has any.
    pub runs: HashMap<String, Runs>,
}

/// A task the state says exists, with what pack needs of it.
pub struct Running {
    pub task: String,
    pub job_key: String,
    pub instance: u32,
    pub state: TaskState,
    pub not_before: f64,
    /// Offered host, if the task's host is offered.
    pub host: Option<usize>,
    /// Attribute values of its host, by name (for limits on hosts not offered).
    pub attrs: Vec<(String, String)>,
    /// Physical millicores, as its host was charged.
    pub cpus: u32,
    pub ram_mb: u64,
    pub disk_mb: u64,
    pub gpus: u32,
    pub ports: Vec<u16>,
    /// Failures so far (reap counts them for the restart policy).
    pub failures: u16,
    pub incarnation: u32,
    /// The hash of the spec it was placed with, whether it passes its health check, since
    /// when it is in its state and since when healthy (what updates and budgets need), and
    /// whether an update stopped it.
    pub spec: u64,
    pub healthy: bool,
    pub since: f64,
    pub healthy_since: f64,
    pub replaced: bool,
    /// Its host is draining: the drain's deadline (0 when none).
    pub drain: Option<f64>,
    /// The run of its batch or cron job (`cron::Runs`).
    pub run: u64,
}

impl Running {
    /// What the task holds on its host (cpus in physical millicores).
    pub fn held(&self) -> Resources {
        Resources {
            cpus: self.cpus as u64,
            ram_mb: self.ram_mb,
            disk_mb: self.disk_mb,
            gpus: self.gpus as u64,
        }
    }
}

/// Where pack's input comes from, besides the offers on standard input.
pub struct Sources<'a> {
    /// Job files, or directories of them.
    pub jobs: &'a [PathBuf],
    pub quota: Option<&'a Path>,
    pub state: Option<&'a Path>,
    /// Hosts whose tasks are read as under a drain (no deadline) though the state does
    /// not say so: what `offer drain --dry-run` asks about.
    pub draining: &'a [String],
}

/// Reads offers from `stdin`, jobs from their files, and the state if given. Every problem
/// is reported; any problem fails the whole run before a record is written.
pub fn read(from: &Sources, stdin: impl io::BufRead) -> Result<Input> {
    // Job files and offers are read at once, on the two cores pack is given at the least:
    // neither needs the other, and at 100k hosts each is hundreds of milliseconds.
    let (read_jobs, offers) = std::thread::scope(|s| {
        let jobs = s.spawn(|| job::read_all(from.jobs));
        let offers = read_offers(stdin);
        (jobs.join(), offers)
    });
    let job::Read {
        jobs,
        errors: job_errors,
    } = read_jobs.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    let Offers {
        fleet,
        passthrough,
        errors,
    } = offers?;
    crate::exit::refuse_batch("pack", &errors, "offers", "nothing was placed")?;
    let quota = match from.quota {
        Some(path) => read_quota(path)?,
        None => HashMap::new(),
    };
    let (running, rollouts, runs) = match from.state {
        Some(path) => {
            let state = State::open(path)?;
            let view = state.view();
            let rollouts = view
                .jobs
                .iter()
                .map(|(_, j)| (j.key.clone(), j.rollout.clone()))
                .collect();
            let runs = view
                .jobs
                .iter()
                .filter(|(_, j)| j.runs != Runs::default())
                .map(|(_, j)| (j.key.clone(), j.runs.clone()))
                .collect();
            (running(view, &fleet, from.draining), rollouts, runs)
        }
        None => (Vec::new(), HashMap::new(), HashMap::new()),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    Ok(Input {
        fleet,
        jobs,
        passthrough,
        running,
        quota,
        now,
        from_state: from.state.is_some(),
        job_errors,
        state_path: from.state.map(Path::to_path_buf),
        rollouts,
        runs,
    })
}

/// What standard input held: the offers, the lines of other types (passed through as they
/// came) and an error for each bad line.
#[derive(Default)]
pub(super) struct Offers {
    pub fleet: Fleet,
    pub passthrough: Vec<String>,
    pub errors: Vec<String>,
}

/// Reads the offers on `stdin`. An I/O error ends it; bad lines are counted in `errors`.
pub(super) fn read_offers(stdin: impl io::BufRead) -> Result<Offers> {
    let mut offers = Offers::default();
    let mut reader = records::Reader::new(stdin);
    // One buffer for every line: most lines are plain offers, and the fast way adds them
    // from it, with no allocation for the line and no JSON tree.
    let mut buf = Vec::new();
    while let Some(line) = reader.next_line(&mut buf) {
        let item = match line {
            Ok(_) if offer_line::try_add(&mut offers.fleet, &buf) => continue,
            Ok(n) => records::parse_line(n, std::mem::take(&mut buf)),
            Err(e) => Err(e),
        };
        offers.add(item)?;
    }
    Ok(offers)
}

impl Offers {
    /// Takes one line the slow way: a record of another type passes through, an offer
    /// goes to `Fleet::add_offer`, a bad line's error is kept.
    pub(super) fn add(&mut self, item: Result<Record>) -> Result<()> {
        let rec = match item {
            Ok(r) => r,
            Err(e) if status_of(&e) == Status::BadInput => {
                self.errors.push(format!("{e:#}"));
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if rec.kind() != "offer" {
            self.passthrough.push(rec.raw);
        } else if let Err(e) = self.fleet.add_offer(&rec) {
            self.errors.push(format!("line {}: {e}", rec.line));
        }
        Ok(())
    }
}

/// A quota file: one object per line, `{"role":"www","cpus":64,"ram_mb":262144,
/// "disk_mb":0}` (a "type" of "quota" is allowed). A resource left out is not limited.
fn read_quota(path: &Path) -> Result<HashMap<String, Resources>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading quota file {}", path.display()))?;
    // Not text is bad input, named where it goes wrong (not an I/O error).
    let text = String::from_utf8(bytes).map_err(|e| {
        bad_input(format!(
            "quota file {}: not UTF-8 text (byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })?;
    let mut quota = HashMap::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let parsed = (|| -> Result<_, String> {
            let value: serde_json::Value =
                serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
            let fields = value.as_object().ok_or("expected a JSON object")?;
            let f = records::Fields(fields);
            f.only(&["type", "role", "cpus", "ram_mb", "disk_mb"])?;
            if f.str("type")?.is_some_and(|t| t != "quota") {
                return Err("field \"type\": expected \"quota\"".into());
            }
            let role = f
                .str("role")?
                .ok_or("field \"role\" is missing")?
                .to_string();
            let cpus = match f.f64("cpus")? {
                Some(c) if (0.0..=1e9).contains(&c) => crate::host::millicores(c) as u64,
                Some(c) => return Err(format!("field \"cpus\": {c} is out of range")),
                None => u64::MAX,
            };
            let quota = Resources {
                cpus,
                ram_mb: f.count("ram_mb", 1 << 50)?.unwrap_or(u64::MAX),
                disk_mb: f.count("disk_mb", 1 << 60)?.unwrap_or(u64::MAX),
                gpus: u64::MAX,
            };
            Ok((role, quota))
        })();
        let (role, q) =
            parsed.map_err(|e| bad_input(format!("{}: line {}: {e}", path.display(), i + 1)))?;
        quota.insert(role, q);
    }
    Ok(quota)
}

/// The tasks of the state that pack must know of: all but the finished ones.
fn running(view: &View, fleet: &Fleet, draining: &[String]) -> Vec<Running> {
    let mut out = Vec::new();
    for (_, t) in view.tasks.iter() {
        let Some(job) = view.jobs.get(t.job) else {
            continue;
        };
        let host = (t.host != NO_HOST)
            .then(|| view.hosts.get(t.host))
            .flatten();
        out.push(Running {
            task: format!("{}/{}", job.key, t.instance),
            job_key: job.key.clone(),
            instance: t.instance,
            state: t.state,
            not_before: t.not_before,
            host: host.and_then(|h| fleet.by_name.get(&h.name).map(|&i| i as usize)),
            attrs: host.map(|h| h.attrs.clone()).unwrap_or_default(),
            cpus: t.cpus,
            ram_mb: t.ram_mb,
            disk_mb: t.disk_mb,
            gpus: t.gpus,
            ports: t.ports.iter().copied().filter(|&p| p != 0).collect(),
            failures: t.failures,
            incarnation: t.incarnation,
            spec: t.spec,
            healthy: t.healthy,
            since: t.since,
            healthy_since: t.healthy_since,
            replaced: t.reason == crate::task::Reason::Replaced,
            run: t.run,
            drain: host.and_then(|h| match h.maintenance.mode {
                crate::host::Mode::Draining => Some(h.maintenance.deadline),
                _ if draining.contains(&h.name) => Some(0.0),
                _ => None,
            }),
        });
    }
    out.sort_by(|a, b| a.job_key.cmp(&b.job_key).then(a.instance.cmp(&b.instance)));
    out
}
