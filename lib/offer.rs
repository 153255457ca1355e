//! `offer`: the host inventory. It adds, updates and removes hosts, keeps their maintenance
//! state, and prints one offer per host that may take work: its capacity left after the
//! reservations of the tasks it holds.

pub mod summary;

use std::collections::HashMap;
use std::io::{self, IsTerminal};
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use serde_json::{json, Map, Value};

use crate::cli::{self, num, OutputArgs, StateArgs};
use crate::exit::{bad_input, fail, Status, TABLE};
use crate::host::{self, check_text, cores, Access, Host, Life, Maintenance, Mode};
use crate::maintenance;
use crate::records::{self, Record, Writer};
use crate::state::{State, View};
use crate::task::{Reason, TaskState, NO_HOST};
use crate::usage::{self, Free, Usage};

/// Keep the host inventory and print what each host offers.
///
/// With no verb, prints one offer record per host that may take work: its free capacity
/// after reservations, free port ranges, attributes and cpu_factor. Draining and drained
/// hosts are not offered; hosts scheduled for maintenance are, marked so pack uses them last.
#[derive(Parser, Debug)]
#[command(name = "offer", version, after_help = TABLE)]
pub struct Cli {
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(subcommand)]
    pub verb: Option<Verb>,
}

// Every verb repeats the exit-status table in its own --help and man page: subcommands
// do not inherit `after_help`.
#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Add or update hosts from records on standard input
    ///
    /// Reads host records (JSON lines) and adds or updates them all in one transaction; an
    /// update keeps the host's maintenance state. Lines of other types pass through to
    /// standard output. One bad record fails the whole batch and changes nothing.
    #[command(after_help = TABLE)]
    Add {
        /// Register a host under NAME with its real cores, memory and disk, measured on it,
        /// instead of reading standard input: this machine, or with --ssh the host reached
        /// there (formic-host measures it)
        #[arg(long, value_name = "NAME")]
        probe: Option<String>,
        /// With --probe: reach the host over ssh at [USER@]ADDRESS[:PORT] (transport ssh)
        #[arg(long, value_name = "TARGET", requires = "probe")]
        ssh: Option<String>,
        /// With --probe: the address clients reach its tasks at
        #[arg(long, value_name = "ADDRESS", requires = "probe")]
        address: Option<String>,
        /// With --probe --ssh: the task-directory root there [default: /var/lib/formic/host]
        #[arg(long, value_name = "PATH", requires = "ssh")]
        root: Option<String>,
        /// With --probe: an attribute of the host (repeatable; a repeated `dedicated` gives
        /// the host each of its values)
        #[arg(long = "attr", value_name = "KEY=VALUE", requires = "probe")]
        attrs: Vec<String>,
        /// With --probe: the port range the host offers
        #[arg(
            long,
            value_name = "LOW-HIGH",
            default_value = "31000-31999",
            requires = "probe"
        )]
        ports: String,
    },
    /// Take over the fleet: raise this scheduler's epoch
    ///
    /// Every step formic sends to a host reached over ssh carries the scheduler's epoch
    /// (kept in STATE.epoch beside the state file); a host remembers the newest it has seen
    /// and refuses older ones (status 77). Run this on the scheduler that takes over (a
    /// standby, a state restored from a backup or rebuilt): from its first step on, the
    /// scheduler it replaces can no longer start or stop anything there. Prints the new
    /// epoch.
    #[command(after_help = TABLE)]
    TakeOver {
        /// Go past this epoch too (the one a host said it has seen)
        #[arg(long, value_name = "EPOCH", default_value_t = 0)]
        past: u64,
    },
    /// Rebuild a lost or corrupt state's tasks from the hosts
    ///
    /// The hosts' task directories are the truth about what runs. Into a state that holds
    /// the hosts (offer add < HOSTS) and no tasks, records every task a supervisor runs on
    /// them, as it runs (host, incarnation, pid, reservation, ports), and every other task
    /// directory as its last run ended (a finished batch task stays finished); where two
    /// hosts run one task, the later incarnation (reap stops the other). Takes the fleet
    /// over first (see take-over), past every epoch the hosts have seen. Every host must
    /// answer, or nothing is recorded (status 69). Jobs come from the job files: the next
    /// pass places what is missing and changes nothing else.
    #[command(after_help = TABLE)]
    Rebuild {
        #[command(flatten)]
        fan_out: crate::cli::FanOut,
    },
    /// Remove hosts from the inventory
    ///
    /// Refuses while tasks hold reservations on any of the hosts, and then removes none.
    #[command(after_help = TABLE)]
    Remove {
        /// Names of the hosts
        #[arg(required = true, value_name = "HOST", add = crate::complete::hosts())]
        hosts: Vec<String>,
        /// Remove anyway; the tasks placed there become LOST
        #[arg(long)]
        force: bool,
    },
    /// Schedule maintenance on hosts
    ///
    /// Scheduled hosts are still offered, marked so that pack uses them last. A draining or
    /// drained host is refused (undrain it first); the batch then changes nothing.
    #[command(after_help = TABLE)]
    Schedule {
        /// Names of the hosts
        #[arg(required = true, value_name = "HOST", add = crate::complete::hosts())]
        hosts: Vec<String>,
        #[command(flatten)]
        why: Why,
    },
    /// Drain hosts for maintenance
    ///
    /// Draining hosts are offered no more. Each reconciliation pass (pack with --state)
    /// stops, on draining hosts, the instances whose jobs' availability budgets (`sla`)
    /// allow it then, and places each one's replacement elsewhere in the same pass; past
    /// the drain's deadline the rest are stopped whatever the budgets say. A draining host
    /// with no tasks left is drained. Draining a draining host again replaces its drain's
    /// reason, owner and deadline.
    #[command(after_help = TABLE)]
    Drain {
        /// Names of the hosts
        #[arg(required = true, value_name = "HOST", add = crate::complete::hosts())]
        hosts: Vec<String>,
        #[command(flatten)]
        why: Why,
        /// When the rest is stopped regardless of budgets: a duration from now (`2h`,
        /// `30m`, `1d`), a time (`2026-12-24T06:00:00Z`), or `never`
        #[arg(long, value_name = "WHEN", default_value = "1d")]
        deadline: String,
        /// Change nothing: say, per instance on the hosts, whether its job's budget lets
        /// the next pass stop it now, where its replacement would go, or why it would wait
        /// (needs --jobs). Exit 0 when every instance would move now, 1 when some wait
        #[arg(long, requires = "jobs", conflicts_with = "wait")]
        dry_run: bool,
        /// The job files or directories the passes place (scripts/reconcile's JOBS)
        #[arg(long, value_name = "PATH", env = "FORMIC_JOBS")]
        jobs: Option<PathBuf>,
        /// Block until every host is drained, showing progress on a terminal. Exit 0 when
        /// drained within the deadline, 1 when drained past it (the passes stopped the rest
        /// whatever the budgets), 75 when --wait-limit passed first; with --jobs, 69 when
        /// what is left has had no room elsewhere for its replacements for 15 s (the drain
        /// goes on: its deadline stops them regardless)
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this long (status 75; the drain goes on)
        #[arg(long, value_name = "DURATION", requires = "wait")]
        wait_limit: Option<String>,
    },
    /// Say, per job with instances on hosts, whether draining them all at once is safe
    ///
    /// After Aurora's sla_probe_hosts: for each job, how many of its instances are on the
    /// hosts, how many are down now, how many would be down were the hosts drained at once
    /// against how many its budget allows, whether that is safe now, and when it would
    /// be (once its young instances have run healthy for healthy_for_s), or that waiting
    /// alone does not make it safe. Changes nothing. Exit 0 when every job is safe now,
    /// 1 when some are not.
    #[command(after_help = TABLE)]
    Probe {
        /// Names of the hosts
        #[arg(required = true, value_name = "HOST", add = crate::complete::hosts())]
        hosts: Vec<String>,
        /// The job files or directories the passes place (their `sla` blocks)
        #[arg(long, value_name = "PATH", env = "FORMIC_JOBS")]
        jobs: PathBuf,
    },
    /// End maintenance on hosts
    ///
    /// The hosts are offered again and take work. A drain or schedule someone else asked
    /// for (its owner) is ended only with --force.
    #[command(after_help = TABLE)]
    Undrain {
        /// Names of the hosts
        #[arg(required = true, value_name = "HOST", add = crate::complete::hosts())]
        hosts: Vec<String>,
        /// Who asks [default: $USER]
        #[arg(long, value_name = "WHO", env = "FORMIC_OWNER")]
        owner: Option<String>,
        /// End maintenance that another owner asked for
        #[arg(long)]
        force: bool,
    },
    /// List hosts with their capacity, free capacity, tasks, maintenance and attributes
    ///
    /// With --summary, add them up instead: a line for the cluster, then one per value of
    /// each attribute named by --by, each with its hosts (offered, by maintenance and by
    /// liveness), tasks, and capacity, reserved and free by resource (cpus in physical
    /// cores, as each host has them), and what is free on the hosts offered.
    #[command(after_help = TABLE)]
    Hosts {
        /// Only these hosts
        #[arg(value_name = "HOST", add = crate::complete::hosts())]
        hosts: Vec<String>,
        /// Add the hosts up, in all and per attribute value
        #[arg(long)]
        summary: bool,
        /// With --summary: the attributes to add up by, in this order (those no host has
        /// are left out)
        #[arg(
            long,
            value_name = "ATTR,...",
            value_delimiter = ',',
            default_value = "zone,rack",
            requires = "summary"
        )]
        by: Vec<String>,
    },
}

#[derive(clap::Args, Debug)]
pub struct Why {
    /// Why the maintenance is done
    #[arg(
        long,
        value_name = "TEXT",
        default_value = "",
        hide_default_value = true
    )]
    pub reason: String,
    /// Who asked for it [default: $USER]
    #[arg(long, value_name = "WHO", env = "FORMIC_OWNER")]
    pub owner: Option<String>,
}

pub fn run(cli: Cli) -> Result<Status> {
    let path = cli.state.path();
    match cli.verb {
        None => offers(&State::open(&path)?, &cli.output),
        Some(Verb::Hosts {
            hosts,
            summary: false,
            ..
        }) => list_hosts(&State::open(&path)?, &hosts, &cli.output),
        Some(Verb::Hosts {
            hosts,
            summary: true,
            by,
        }) => summarize_hosts(&State::open(&path)?, &hosts, &by, &cli.output),
        Some(Verb::Add {
            probe: Some(name),
            attrs,
            ports,
            ssh,
            address,
            root,
        }) => {
            let access = Access {
                address: address.unwrap_or_default(),
                ssh: ssh.clone().unwrap_or_default(),
                root: root.unwrap_or_default(),
            };
            let how = if ssh.is_some() { "ssh" } else { "local" };
            let host = probe_host(&name, &attrs, &ports, how, access, &path)?;
            add(&mut State::open_writer(&path)?, vec![(0, host)], Vec::new())
        }
        Some(Verb::Add { probe: None, .. }) => {
            let (hosts, others) = read_hosts(crate::cli::stdin_for("offer", "host records"))?;
            add(&mut State::open_writer(&path)?, hosts, others)
        }
        Some(Verb::TakeOver { past }) => {
            State::open(&path)?; // the usual message for a missing or bad state
            let epoch = crate::transport::take_over(&path, past)?;
            println!("{epoch}");
            Ok(Status::Done)
        }
        Some(Verb::Rebuild { fan_out }) => {
            let mut state = State::open_writer(&path)?;
            let r = crate::rebuild::rebuild(&mut state, &path, fan_out.parallel)?;
            for why in &r.skipped {
                eprintln!("offer: left out {why}");
            }
            eprintln!(
                "offer: rebuilt from {} hosts: {} tasks running, {} ended; epoch {}",
                r.hosts, r.running, r.ended, r.epoch
            );
            Ok(if r.skipped.is_empty() {
                Status::Done
            } else {
                Status::Partial
            })
        }
        Some(Verb::Remove { hosts, force }) => {
            remove(&mut State::open_writer(&path)?, &hosts, force)
        }
        Some(Verb::Schedule { hosts, why }) => {
            let step = Step::new(Mode::Scheduled, &why)?;
            maintain(&mut State::open_writer(&path)?, &hosts, &step, &cli.output)
        }
        Some(Verb::Drain {
            hosts,
            why,
            deadline,
            dry_run,
            jobs,
            wait,
            wait_limit,
        }) => {
            let mut step = Step::new(Mode::Draining, &why)?;
            step.deadline = maintenance::parse_deadline(&deadline, crate::clock::now())
                .map_err(|e| bad_input(format!("--deadline: {e}")))?;
            let limit = wait_limit
                .map(|w| crate::liveness::parse_duration(&w))
                .transpose()
                .map_err(|e| bad_input(format!("--wait-limit: {e}")))?;
            if dry_run {
                // A dry run never drains, whatever clap let through.
                let jobs = jobs.ok_or_else(|| fail(Status::Usage, "--dry-run needs --jobs"))?;
                let state = State::open(&path)?;
                return crate::drain::dry_run(&state, &path, &hosts, &jobs, &cli.output);
            }
            let status = maintain(&mut State::open_writer(&path)?, &hosts, &step, &cli.output)?;
            if wait {
                let jobs = jobs.as_deref();
                return crate::drain::wait(&path, &hosts, step.deadline, limit, jobs);
            }
            Ok(status)
        }
        Some(Verb::Probe { hosts, jobs }) => {
            crate::drain::probe(&State::open(&path)?, &hosts, &jobs, &cli.output)
        }
        Some(Verb::Undrain {
            hosts,
            owner,
            force,
        }) => {
            let why = Why {
                reason: String::new(),
                owner,
            };
            let mut step = Step::new(Mode::None, &why)?;
            step.force = force;
            maintain(&mut State::open_writer(&path)?, &hosts, &step, &cli.output)
        }
    }
}

/// Reads a batch of host records. Every bad line is reported; any bad line fails the whole
/// batch before anything is written.
/// Hosts with the line each came from, and the records of other types to pass through.
pub type HostBatch = (Vec<(u64, Host)>, Vec<Record>);

pub fn read_hosts(input: impl io::BufRead) -> Result<HostBatch> {
    let mut hosts = Vec::new();
    let mut others = Vec::new();
    let mut errors = Vec::new();
    let mut first_line: HashMap<String, u64> = HashMap::new();
    for item in records::Reader::new(input) {
        let rec = match item {
            Ok(rec) => rec,
            Err(e) if crate::exit::status_of(&e) == Status::BadInput => {
                errors.push(format!("{e:#}"));
                continue;
            }
            Err(e) => return Err(e),
        };
        if rec.kind() != "host" {
            others.push(rec);
            continue;
        }
        match Host::from_record(&rec) {
            Ok(h) => match first_line.get(&h.name) {
                Some(first) => errors.push(format!(
                    "line {}: host {} is already on line {first}",
                    rec.line, h.name
                )),
                None => {
                    first_line.insert(h.name.clone(), rec.line);
                    hosts.push((rec.line, h));
                }
            },
            Err(e) => errors.push(format!("line {}: {e}", rec.line)),
        }
    }
    crate::exit::refuse_batch("offer", &errors, "host records", "nothing was changed")?;
    Ok((hosts, others))
}

fn add(state: &mut State, hosts: Vec<(u64, Host)>, others: Vec<Record>) -> Result<Status> {
    let (added, updated) = state.write(|tx| {
        let (mut added, mut updated) = (0, 0);
        for (_, mut h) in hosts {
            match tx.view().hosts.find(&h.name) {
                Some(slot) => {
                    // An update replaces capacity, attributes and access; maintenance
                    // belongs to the operator's drain commands and liveness to the passes
                    // that reach the host, not to the inventory feed.
                    let was = tx.view().hosts.get(slot).unwrap();
                    h.maintenance = was.maintenance.clone();
                    h.liveness = was.liveness;
                    tx.set(slot, Some(h));
                    updated += 1;
                }
                None => {
                    tx.upsert(h);
                    added += 1;
                }
            }
        }
        Ok((added, updated))
    })?;
    let mut out = Writer::stdout();
    for rec in &others {
        out.raw(&rec.raw)?;
    }
    out.finish()?;
    if io::stderr().is_terminal() {
        eprintln!("offer: {added} hosts added, {updated} updated");
    }
    Ok(Status::Done)
}

/// Finds every named host or fails naming the first unknown one.
pub(crate) fn slots_of(view: &View, names: &[String]) -> Result<Vec<u32>> {
    names
        .iter()
        .map(|n| {
            view.hosts
                .find(n)
                .ok_or_else(|| bad_input(format!("no host named {n:?}")))
        })
        .collect()
}

fn remove(state: &mut State, names: &[String], force: bool) -> Result<Status> {
    state.write(|tx| {
        let slots = slots_of(tx.view(), names)?;
        let placed: Vec<u32> = tx
            .view()
            .tasks
            .iter()
            .filter(|(_, t)| t.host != NO_HOST && slots.contains(&t.host))
            .map(|(s, _)| s)
            .collect();
        let view = tx.view();
        let busy: Vec<&crate::task::Task> = placed
            .iter()
            .map(|&s| view.tasks.get(s).unwrap())
            .filter(|t| t.state.holds_resources())
            .collect();
        if let (Some(first), false) = (busy.first(), force) {
            // Name the host and the tasks in the way, so the operator knows what to move.
            let on_host: Vec<String> = busy
                .iter()
                .filter(|t| t.host == first.host)
                .map(|t| match view.jobs.get(t.job) {
                    Some(job) => format!("{}/{}", job.key, t.instance),
                    None => format!("instance {} of job slot {}", t.instance, t.job),
                })
                .collect();
            let shown = on_host
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            let more = match on_host.len() {
                n if n > 5 => format!(" and {} more", n - 5),
                _ => String::new(),
            };
            return Err(bad_input(format!(
                "host {} holds {} tasks ({shown}{more}); drain it first, or --force to mark \
                 them LOST",
                view.hosts.get(first.host).unwrap().name,
                on_host.len()
            )));
        }
        for slot in placed {
            let mut task = tx.view().tasks.get(slot).unwrap().clone();
            if task.state.holds_resources() {
                task.state = TaskState::Lost;
                task.reason = Reason::HostRemoved;
                task.since = tx.now();
            }
            task.host = NO_HOST; // the slot may be reused by another host
            tx.set(slot, Some(task));
        }
        for slot in slots {
            tx.remove::<Host>(slot);
        }
        Ok(())
    })?;
    Ok(Status::Done)
}

/// One maintenance step an operator asks for on a set of hosts.
struct Step {
    mode: Mode,
    reason: String,
    owner: String,
    /// A drain's deadline (Unix time), 0 for none.
    deadline: f64,
    /// Undrain: end another owner's maintenance.
    force: bool,
}

impl Step {
    fn new(mode: Mode, why: &Why) -> Result<Step> {
        check_text("--reason", &why.reason).map_err(bad_input)?;
        let owner = why.owner.clone().unwrap_or_else(operator);
        check_text("--owner", &owner).map_err(bad_input)?;
        Ok(Step {
            mode,
            reason: why.reason.clone(),
            owner,
            deadline: 0.0,
            force: false,
        })
    }
}

fn maintain(
    state: &mut State,
    names: &[String],
    step: &Step,
    output: &OutputArgs,
) -> Result<Status> {
    let mode = step.mode;
    let changed = state.write(|tx| {
        let slots = slots_of(tx.view(), names)?;
        let usage = usage::by_host(tx.view());
        let mut changed = Vec::new();
        for slot in slots {
            let mut h = tx.view().hosts.get(slot).unwrap().clone();
            let tasks = usage[slot as usize].tasks;
            maintenance::refuse_backward_step(&h, mode, tasks)?;
            if mode == Mode::None && !step.force {
                maintenance::refuse_others_maintenance(&h, &step.owner)?;
            }
            let target = maintenance::settled(mode, tasks);
            let same_mode = h.maintenance.mode == target
                || (mode == Mode::Draining && h.maintenance.mode == Mode::Drained);
            let new_reason = h.maintenance.reason != step.reason && !step.reason.is_empty();
            let new_deadline = mode == Mode::Draining && h.maintenance.deadline != step.deadline;
            if !same_mode || (mode != Mode::None && (new_reason || new_deadline)) {
                h.maintenance = match mode {
                    Mode::None => Maintenance::none(),
                    _ => Maintenance {
                        mode: target,
                        reason: step.reason.clone(),
                        owner: step.owner.clone(),
                        since: tx.now(),
                        deadline: step.deadline,
                    },
                };
                h.fits()
                    .map_err(|e| bad_input(format!("host {}: {e}", h.name)))?;
                tx.set(slot, Some(h.clone()));
            }
            changed.push((h, tasks));
        }
        Ok(changed)
    })?;
    let mut out = Writer::stdout();
    if output.human() {
        let rows: Vec<Vec<String>> = changed
            .iter()
            .map(|(h, n)| {
                vec![
                    h.name.clone(),
                    h.maintenance.mode.name().into(),
                    n.to_string(),
                    h.maintenance.reason.clone(),
                ]
            })
            .collect();
        out.text(&cli::table(
            &["HOST", "MAINTENANCE", "TASKS", "REASON"],
            &rows,
        ))?;
    } else {
        for (h, n) in &changed {
            let mut m = host::maintenance_json(&h.maintenance);
            let o = m.as_object_mut().unwrap();
            o.insert("type".into(), json!("maintenance"));
            o.insert("host".into(), json!(h.name));
            o.insert("tasks".into(), json!(n));
            let ordered: Map<String, Value> = [
                "type", "host", "state", "tasks", "reason", "owner", "since", "deadline",
            ]
            .iter()
            .filter_map(|k| o.get(*k).map(|v| (k.to_string(), v.clone())))
            .collect();
            out.record(&Value::Object(ordered))?;
        }
    }
    out.finish()?;
    Ok(Status::Done)
}

/// Who is at the keyboard: $USER, else the name of the effective user.
fn operator() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| {
            let uid = nix::unistd::geteuid();
            nix::unistd::User::from_uid(uid)
                .ok()
                .flatten()
                .map_or_else(|| uid.to_string(), |u| u.name)
        })
}

/// Hosts in name order with what they hold and what is free.
fn inventory<'a>(view: &'a View, only: &[String]) -> Result<Vec<(&'a Host, Usage, Free)>> {
    let usage = usage::by_host(view);
    let mut hosts: Vec<(u32, &Host)> = if only.is_empty() {
        view.hosts.iter().collect()
    } else {
        slots_of(view, only)?
            .into_iter()
            .map(|s| (s, view.hosts.get(s).unwrap()))
            .collect()
    };
    hosts.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    Ok(hosts
        .into_iter()
        .map(|(s, h)| {
            let used = usage[s as usize].clone();
            let free = usage::free(h, &used);
            (h, used, free)
        })
        .collect())
}

/// The maintenance state as people and pack read it: a draining host with nothing left on
/// it is drained even before a writer has recorded so.
fn shown_mode(h: &Host, used: &Usage) -> Mode {
    maintenance::settled(h.maintenance.mode, used.tasks)
}

fn offers(state: &State, output: &OutputArgs) -> Result<Status> {
    let inv = inventory(state.view(), &[])?;
    let mut out = Writer::stdout();
    // Hosts that cannot be reached are not offered: nothing placed there could start.
    let offered = inv.iter().filter(|(h, u, _)| is_offered(h, u));
    if output.human() {
        let rows: Vec<Vec<String>> = offered
            .map(|(h, u, f)| {
                vec![
                    h.name.clone(),
                    num(cores(f.cpus as u32)),
                    f.ram_mb.to_string(),
                    f.disk_mb.to_string(),
                    f.gpus.to_string(),
                    ports_text(&f.ports),
                    shown_mode(h, u).name().into(),
                    attrs_text(&h.attrs),
                ]
            })
            .collect();
        out.text(&cli::table(
            &[
                "HOST", "CPUS", "RAM_MB", "DISK_MB", "GPUS", "PORTS", "MAINT", "ATTRS",
            ],
            &rows,
        ))?;
    } else {
        for (h, u, f) in offered {
            out.record(&offer_record(h, u, f))?;
        }
    }
    out.finish()?;
    Ok(Status::Done)
}

/// Whether a host is offered: its maintenance lets it take work and it can be reached.
fn is_offered(h: &Host, u: &Usage) -> bool {
    shown_mode(h, u).takes_work() && h.liveness.life == Life::Up
}

fn offer_record(h: &Host, u: &Usage, f: &Free) -> Value {
    let mut m = Map::new();
    m.insert("type".into(), json!("offer"));
    m.insert("host".into(), json!(h.name));
    m.insert("cpus".into(), json!(cores(f.cpus as u32)));
    m.insert("ram_mb".into(), json!(f.ram_mb));
    m.insert("disk_mb".into(), json!(f.disk_mb));
    m.insert("gpus".into(), json!(f.gpus));
    m.insert("ports".into(), host::ranges_json(&f.ports));
    m.insert("attrs".into(), host::attrs_json(&h.attrs));
    m.insert("cpu_factor".into(), json!(h.cpu_factor));
    m.insert("maintenance".into(), json!(shown_mode(h, u).name()));
    Value::Object(m)
}

/// The offers `offer` prints, as JSON lines, but for the hosts `except`.
pub(crate) fn offers_but(view: &View, except: &[String]) -> Result<Vec<u8>> {
    let mut text = Vec::new();
    for (h, u, f) in inventory(view, &[])? {
        if is_offered(h, &u) && !except.contains(&h.name) {
            serde_json::to_writer(&mut text, &offer_record(h, &u, &f))?;
            text.push(b'\n');
        }
    }
    Ok(text)
}

/// Whether passes reach the host: its state, since when, its last contact and the round
/// trip then (ssh hosts; a local host is always up).
fn liveness_json(h: &Host) -> Value {
    let l = &h.liveness;
    let mut m = Map::new();
    m.insert("state".into(), json!(l.life.name()));
    if h.transport == host::Transport::Ssh {
        m.insert("since".into(), json!(l.since));
        m.insert(
            "contact".into(),
            json!((l.contact > 0.0).then_some(l.contact)),
        );
        m.insert("rtt_ms".into(), json!(l.rtt_us as f64 / 1000.0));
    }
    Value::Object(m)
}

/// The last contact with an ssh host for a person: how long ago, and the round trip.
fn contact_text(h: &Host) -> String {
    let l = &h.liveness;
    if h.transport != host::Transport::Ssh {
        return "-".into();
    }
    if l.contact <= 0.0 {
        return "never".into();
    }
    let ago = (crate::clock::now() - l.contact).max(0.0);
    format!("{ago:.0}s ago, {:.1} ms", l.rtt_us as f64 / 1000.0)
}

fn list_hosts(state: &State, only: &[String], output: &OutputArgs) -> Result<Status> {
    let inv = inventory(state.view(), only)?;
    let mut out = Writer::stdout();
    if output.human() {
        let rows: Vec<Vec<String>> = inv
            .iter()
            .map(|(h, u, f)| {
                vec![
                    h.name.clone(),
                    format!("{}/{}", num(cores(f.cpus as u32)), num(cores(h.cpus))),
                    format!("{}/{}", f.ram_mb, h.ram_mb),
                    format!("{}/{}", f.disk_mb, h.disk_mb),
                    format!("{}/{}", f.gpus, h.gpus),
                    u.tasks.to_string(),
                    shown_mode(h, u).name().into(),
                    h.liveness.life.name().into(),
                    contact_text(h),
                    attrs_text(&h.attrs),
                ]
            })
            .collect();
        let headers = [
            "HOST",
            "CPUS_FREE",
            "RAM_MB_FREE",
            "DISK_MB_FREE",
            "GPUS_FREE",
            "TASKS",
            "MAINT",
            "LIVENESS",
            "CONTACT",
            "ATTRS",
        ];
        out.text(&cli::table(&headers, &rows))?;
    } else {
        for (h, u, f) in &inv {
            let mut m = h.to_json();
            m.insert(
                "free".into(),
                json!({"cpus": cores(f.cpus as u32), "ram_mb": f.ram_mb, "disk_mb": f.disk_mb,
                       "gpus": f.gpus, "ports": host::ranges_json(&f.ports)}),
            );
            m.insert("tasks".into(), json!(u.tasks));
            let mut maint = h.maintenance.clone();
            maint.mode = shown_mode(h, u);
            m.insert("maintenance".into(), host::maintenance_json(&maint));
            m.insert("liveness".into(), liveness_json(h));
            out.record(&Value::Object(m))?;
        }
    }
    out.finish()?;
    Ok(Status::Done)
}

/// The hosts named (all when none is), summed up for the cluster and by each attribute in
/// `by` (`offer hosts --summary`).
pub fn summary(view: &View, only: &[String], by: &[String]) -> Result<Vec<summary::Scope>> {
    let inv = inventory(view, only)?;
    let counted: Vec<summary::Counted> = inv
        .iter()
        .map(|(h, u, f)| summary::Counted {
            host: h,
            usage: u,
            free: f,
            mode: shown_mode(h, u).name(),
            offered: is_offered(h, u),
        })
        .collect();
    Ok(summary::summarize(&counted, by))
}

fn summarize_hosts(
    state: &State,
    only: &[String],
    by: &[String],
    output: &OutputArgs,
) -> Result<Status> {
    let scopes = summary(state.view(), only, by)?;
    let mut out = Writer::stdout();
    if output.human() {
        let free_of = |t: &summary::Tally, i: usize, as_cores: bool| {
            let (free, whole) = t.free_of(i);
            match as_cores {
                true => format!(
                    "{}/{}",
                    num(cores(free.min(u32::MAX as u64) as u32)),
                    num(cores(whole.min(u32::MAX as u64) as u32))
                ),
                false => format!("{free}/{whole}"),
            }
        };
        let rows: Vec<Vec<String>> = scopes
            .iter()
            .map(|s| {
                let t = &s.tally;
                vec![
                    s.label(),
                    t.hosts().to_string(),
                    t.offered().to_string(),
                    t.tasks().to_string(),
                    free_of(t, 0, true),
                    free_of(t, 1, false),
                    free_of(t, 2, false),
                    free_of(t, 3, false),
                ]
            })
            .collect();
        let headers = [
            "SCOPE",
            "HOSTS",
            "OFFERED",
            "TASKS",
            "CPUS_FREE",
            "RAM_MB_FREE",
            "DISK_MB_FREE",
            "GPUS_FREE",
        ];
        out.text(&cli::table(&headers, &rows))?;
    } else {
        for scope in &scopes {
            out.record(&scope.record())?;
        }
    }
    out.finish()?;
    Ok(Status::Done)
}

fn ports_text(ranges: &[(u16, u16)]) -> String {
    let parts: Vec<String> = ranges
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

/// `k=v,…`; the values of a key with several (`dedicated`) joined by `|`.
fn attrs_text(attrs: &[(String, String)]) -> String {
    let mut parts: Vec<String> = Vec::new();
    for (i, (k, v)) in attrs.iter().enumerate() {
        match i.checked_sub(1).map(|p| &attrs[p].0) {
            Some(prev) if prev == k => {
                let last = parts.last_mut().expect("a part per key");
                last.push('|');
                last.push_str(v);
            }
            _ => parts.push(format!("{k}={v}")),
        }
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

/// A host record for `name` with what it has measured on it: this machine for a local
/// host, the far one through formic-host for an ssh host.
fn probe_host(
    name: &str,
    attrs: &[String],
    ports: &str,
    transport: &str,
    access: Access,
    state: &std::path::Path,
) -> Result<Host> {
    host::check_name(name).map_err(|e| bad_input(format!("--probe: host name {e}")))?;
    let mut fields = Map::new();
    fields.insert("type".into(), json!("host"));
    fields.insert("name".into(), json!(name));
    // Checked (and its defaults taken) the way a host record's are, before it is reached.
    fields.insert("transport".into(), json!(transport));
    for (k, v) in [
        ("address", &access.address),
        ("ssh", &access.ssh),
        ("root", &access.root),
    ] {
        if !v.is_empty() {
            fields.insert(k.into(), json!(v));
        }
    }
    let (lo, hi) = ports
        .split_once('-')
        .and_then(|(a, b)| Some((a.parse::<u16>().ok()?, b.parse::<u16>().ok()?)))
        .ok_or_else(|| bad_input(format!("--ports {ports:?}: expected LOW-HIGH")))?;
    fields.insert("ports".into(), json!([[lo, hi]]));
    let mut attr_map = Map::new();
    for a in attrs {
        let (k, v) = a
            .split_once('=')
            .ok_or_else(|| bad_input(format!("--attr {a:?}: expected KEY=VALUE")))?;
        // A repeated key gives it several values (only `dedicated` may have them).
        crate::host::add_attr(&mut attr_map, k, v);
    }
    fields.insert("attrs".into(), Value::Object(attr_map));
    let record = |fields: &Map<String, Value>| {
        let rec = Record {
            line: 0,
            raw: String::new(),
            fields: fields.clone(),
        };
        Host::from_record(&rec).map_err(|e| bad_input(format!("--probe: {e}")))
    };
    fields.insert("cpus".into(), json!(1));
    fields.insert("ram_mb".into(), json!(1));
    let skeleton = record(&fields)?;
    let measured = crate::transport::reach(state, &skeleton)?
        .probe()
        .map_err(|e| {
            fail(
                Status::Unavailable,
                format!("--probe: host {name} not reached: {e}"),
            )
        })?;
    fields.insert("cpus".into(), json!(measured.cpus));
    fields.insert("ram_mb".into(), json!(measured.ram_mb));
    fields.insert("disk_mb".into(), json!(measured.disk_mb));
    record(&fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_joins_the_values_of_a_key_with_a_bar() {
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        let attrs = [
            pair("dedicated", "db/store"),
            pair("dedicated", "www/web"),
            pair("rack", "r1"),
        ];
        assert_eq!(attrs_text(&attrs), "dedicated=db/store|www/web,rack=r1");
        assert_eq!(attrs_text(&attrs[2..]), "rack=r1");
        assert_eq!(attrs_text(&[]), "-");
    }
}
