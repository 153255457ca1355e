//! `reap`: stops what must stop and collects what ended. It owns every transition of a task
//! after launch has started it: from what each task's directory on its host says (the
//! supervisor's `status`, and whether its `lock` is held) it records RUNNING, FINISHED,
//! FAILED, KILLED or LOST, frees reservations, and applies the restart policy of the job
//! (`job.json`): a service that ended is missing and the next pack places it again, unless
//! it failed after a brief run, when it is THROTTLED with exponential backoff; a batch task
//! that finished stays finished, one that failed is retried until `max_failures`.
//!
//! Stops are graceful and survive a crash of reap: the stop is recorded first (KILLING,
//! DRAINING or PREEMPTING, with the time in `since`), then the supervisor gets SIGTERM and
//! stops its task (SIGTERM to the group, SIGKILL after the grace period). Every pass resumes
//! stops left half-done, and one whose supervisor has not reported KILLED by `since` plus the
//! grace period and a margin is finished with SIGKILL to the supervisor and the task's group. A process is
//! only ever signalled when its pid and start time both match, so a reused pid is never hit.
//!
//! Promises: one transaction per pass, all or nothing; an event is printed only for a
//! transition that was committed; bad records on stdin change nothing (status 65).

mod decide;
mod engine;
mod input;
mod list;
mod out;
mod sense;
mod strays;

use std::io::{self, IsTerminal};
use std::time::Duration;

use anyhow::Result;
use clap::{ArgGroup, Parser, Subcommand};

use crate::cli::{OutputArgs, StateArgs};
use crate::exit::{fail, Status, TABLE};
use crate::state::State;
use crate::task::TaskState;
use engine::Reaper;

pub use decide::{decide, Act, Event, Facts, Plan, Policy, Seen};
pub use input::{parse_task_id, read_input, Cause, StopRecord};

/// Stop what must stop, collect what ended, apply the restart policy, list tasks.
///
/// With no verb, one pass: reads `kill` and `preempt` records on standard input (unless it
/// is a terminal) and stops those tasks gracefully (a `kill` record with the reason `drain`
/// or `drain deadline`, from pack, stops a task of a draining host); stops tasks failing
/// their health checks; collects every task of a local host whose supervisor
/// reported an end (FINISHED, FAILED with its exit status, KILLED) or died without a word
/// (LOST, and its process group is killed); frees their reservations; and applies each
/// job's restart policy. A task left ASSIGNED by a launch that has ended, and that no
/// supervisor took, goes back to PENDING at once (after --start-grace while its launch
/// lives). A supervisor found in a local host's task directories that runs an incarnation
/// the state does not run there is stopped. A kill or preempt record for an incarnation
/// that has since been replaced stops nothing. Prints one event record per transition, then
/// passes every other input line (place records, ...) through unchanged, once the stops are
/// complete. In a script whose standard input is not meant for reap, give it </dev/null.
///
/// Restart policy, from the job spec the task was launched with: a service (the default)
/// that ended is missing, and the next pack places it again; one that failed or exited
/// after a run shorter than --min-run is THROTTLED for restart.backoff_s × 2^(failures-1)
/// seconds (default 1, at most restart.max_backoff_s, default 300) before pack may place it.
/// A batch task (service false) that finished stays FINISHED; one that failed is retried,
/// with the same backoff after a brief run, until it has failed restart.max_failures times
/// (default 1). A run of at least --min-run that did not fail its health check resets the
/// failure count. LOST and KILLED are not failures of the task.
///
/// Stops: the stop is recorded (KILLING, DRAINING or PREEMPTING), then the supervisor gets
/// SIGTERM and stops its task (SIGTERM to its process group, SIGKILL after the task's grace
/// period) and reports KILLED. A supervisor that has not reported 3 seconds after the grace
/// period is SIGKILLed with the task's process group. A process is signalled only while its
/// pid and start time both match, never a reused pid.
#[derive(Parser, Debug)]
#[command(name = "reap", version, after_help = TABLE)]
pub struct Cli {
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Stay running: collect and stop continuously and print events as they happen (task
    /// directories are polled every 50 ms; standard input is not read)
    #[arg(long)]
    pub follow: bool,
    /// Stop only the tasks asked for on standard input, reaching only their hosts: the survey of every host (liveness, strays, what ended)
    /// is left to the reap that ran before pack in the same pass (scripts/reconcile's second
    /// reap)
    #[arg(long, conflicts_with = "follow")]
    pub asked_only: bool,
    #[command(flatten)]
    pub timing: Timing,
    #[command(flatten)]
    pub fan_out: crate::cli::FanOut,
    #[command(subcommand)]
    pub verb: Option<Verb>,
}

/// The clocks of the restart policy.
#[derive(clap::Args, Debug, Clone)]
pub struct Timing {
    /// Seconds a task may stay ASSIGNED (or STARTING) with no supervisor, while the launch
    /// that recorded it lives, before reap gives up on its start: ASSIGNED goes back to
    /// PENDING, STARTING becomes LOST
    #[arg(
        long,
        env = "FORMIC_START_GRACE",
        value_name = "SECS",
        default_value_t = 30.0,
        global = true
    )]
    pub start_grace: f64,
    /// A failed run shorter than this many seconds makes the task THROTTLED (its next start
    /// waits backoff_s × 2^(failures-1), at most max_backoff_s); a longer healthy run resets
    /// the failure count
    #[arg(
        long,
        env = "FORMIC_MIN_RUN",
        value_name = "SECS",
        default_value_t = 60.0,
        global = true
    )]
    pub min_run: f64,
    /// An ssh host that passes cannot reach for this long (90s, 5m, ...) is down: its
    /// tasks are LOST and placed elsewhere (a pass declares at most a tenth of the hosts
    /// down, and none when it cannot reach most of them)
    #[arg(
        long,
        env = "FORMIC_LOST_AFTER",
        value_name = "DURATION",
        default_value = "5m",
        value_parser = crate::liveness::parse_duration,
        global = true
    )]
    pub lost_after: f64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            start_grace: 30.0,
            min_run: 60.0,
            lost_after: crate::liveness::LOST_AFTER_S,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Stop tasks gracefully
    ///
    /// Records the stop (KILLING), sends SIGTERM to each task's supervisor, which sends
    /// SIGTERM to the task's process group and SIGKILL after the task's grace period, waits
    /// for the supervisors to report KILLED, and records it; their reservations are freed.
    /// A task that a running `announce --follow` holds in a serverset is signalled once it
    /// has left it (after 5 s at most).
    /// Like every pass it also collects whatever else ended. A service's instance that was
    /// killed is missing, so the next pack places it again: to remove instances, change the
    /// job files.
    #[command(
        after_help = TABLE,
        group(ArgGroup::new("what").required(true).multiple(true).args(["tasks", "job", "host"]))
    )]
    Kill {
        /// Tasks to stop (role/env/name/instance)
        #[arg(value_name = "TASK", add = crate::complete::tasks())]
        tasks: Vec<String>,
        /// Stop every instance of this job (role/env/name; repeatable)
        #[arg(long, value_name = "JOB", add = crate::complete::jobs())]
        job: Vec<String>,
        /// Stop every task on this host (repeatable)
        #[arg(long, value_name = "HOST", add = crate::complete::hosts())]
        host: Vec<String>,
    },
    /// List tasks with their host, state, pid, ports, health, failure count, last exit
    /// status and the reason for their state
    ///
    /// Reads the state only; it collects nothing.
    #[command(after_help = TABLE)]
    Tasks {
        /// Only the instances of this job (role/env/name; repeatable)
        #[arg(long, value_name = "JOB", add = crate::complete::jobs())]
        job: Vec<String>,
        /// Only tasks on this host (repeatable)
        #[arg(long, value_name = "HOST", add = crate::complete::hosts())]
        host: Vec<String>,
        /// Only tasks in these states (RUNNING, THROTTLED, ...; comma-separated)
        #[arg(long = "in", value_name = "STATE,...", value_delimiter = ',', value_parser = parse_state)]
        states: Vec<TaskState>,
    },
}

fn parse_state(s: &str) -> Result<TaskState, String> {
    TaskState::from_name(&s.to_ascii_uppercase()).ok_or_else(|| {
        format!("{s:?} is not a task state (PENDING, THROTTLED, ASSIGNED, STARTING, RUNNING, KILLING, FINISHED, FAILED, KILLED, LOST, DRAINING, PREEMPTING)")
    })
}

/// How long reap waits past a task's grace period for its supervisor to report the stop
/// before it SIGKILLs the supervisor and the task's group itself. The supervisor needs
/// milliseconds after its own SIGKILL; the margin covers a loaded machine.
pub const STOP_MARGIN_S: f64 = 3.0;
/// The longest a graceful stop waits for the announcer to take the instance out of
/// discovery before it signals the task anyway.
pub const LEAVE_WAIT_S: f64 = 5.0;
/// How often task directories are looked at while waiting for stops and with --follow.
pub const POLL: Duration = Duration::from_millis(50);

pub fn run(cli: Cli) -> Result<Status> {
    let path = cli.state.path();
    let human = cli.output.human();
    if (cli.follow || cli.asked_only) && cli.verb.is_some() {
        return Err(fail(
            Status::Usage,
            "--follow and --asked-only are not for a verb",
        ));
    }
    check_timing(&cli.timing)?;
    match cli.verb {
        Some(Verb::Tasks { job, host, states }) => {
            list::list(&State::open(&path)?, &job, &host, &states, &cli.output)
        }
        Some(Verb::Kill { tasks, job, host }) => {
            let mut reaper = Reaper::open(&path, cli.timing, human, cli.fan_out.parallel)?;
            let requests = input::named(reaper.view(), &tasks, &job, &host)?;
            reaper.once(requests, &[], true)
        }
        None if cli.follow => {
            Reaper::open(&path, cli.timing, human, cli.fan_out.parallel)?.follow()
        }
        None => {
            let stdin = io::stdin();
            let (stops, passthrough) = if stdin.is_terminal() {
                (Vec::new(), Vec::new())
            } else {
                read_input(stdin.lock())?
            };
            let mut reaper = Reaper::open(&path, cli.timing, human, cli.fan_out.parallel)?;
            let requests = input::requested(reaper.view(), &stops);
            reaper.once(requests, &passthrough, !cli.asked_only)
        }
    }
}

fn check_timing(t: &Timing) -> Result<()> {
    for (name, v) in [("--start-grace", t.start_grace), ("--min-run", t.min_run)] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(fail(
                Status::Usage,
                format!("{name}: {v} is not a number of seconds ≥ 0"),
            ));
        }
    }
    Ok(())
}
