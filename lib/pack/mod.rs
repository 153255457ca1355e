//! `pack`: the placement engine. Desired jobs (job files) + offers (stdin) + what already
//! runs (the state, when given) -> place, preempt, kill and pending records on stdout.
//!
//! Without a state it is a pure function of its inputs: the same input gives the same
//! output, byte for byte. The modules follow the data: `input` reads and checks everything
//! first, so bad input (exit 65) emits nothing; `decide` works out what is missing and
//! places it with the loop in `place` (over the `fleet`'s arrays), calling on `preempt`
//! when a production instance fits nowhere; `output` writes the records, or `explain`
//! says why one task goes where it goes. `Resources` is the amount they count in.

mod arrange;
mod decide;
mod drains;
mod explain;
mod fleet;
mod index;
mod input;
mod offer_line;
mod output;
mod place;
mod preempt;
mod refusals;
mod resources;
mod retention;
mod runs;
mod updates;

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use serde_json::json;

use crate::cli::OutputArgs;
use crate::exit::{Status, TABLE};
use crate::job;

pub use decide::{decide, Decision, Outcome};

/// Unit tests' random numbers: a fixed sequence from `seed`, each below the bound asked.
#[cfg(test)]
fn draws(mut seed: u64) -> impl FnMut(u64) -> u64 {
    move |n| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    }
}
pub use fleet::Fleet;
pub use input::{Input, Running};
pub use place::{lower_bound, Strategy};
pub use resources::Resources;

/// Decide where every instance runs
///
/// Reads offers (JSON lines, as `offer` prints them) on standard input and job specs from
/// files, and prints a `place` record for each instance it placed, `preempt` records before
/// the placements that need them, `pending` records with every reason and how many hosts
/// gave it, and `kill` records for surplus instances. Lines of other types pass through.
/// With --state it also reads what already runs and places only what is missing; without
/// it, it is a pure function of its inputs.
#[derive(Parser, Debug)]
#[command(name = "pack", version, after_help = TABLE)]
pub struct Cli {
    /// Job files (one job object, or JSON lines of jobs), or directories of *.json and
    /// *.jsonl job files
    #[arg(value_name = "JOB_FILE|DIR")]
    pub jobs: Vec<PathBuf>,
    /// Read what already runs from this state file and place only what is missing
    #[arg(long, env = "FORMIC_STATE", value_name = "PATH")]
    pub state: Option<PathBuf>,
    /// binpack: fewest hosts, least stranded capacity; spread: even load across hosts
    #[arg(
        long,
        value_enum,
        default_value = "binpack",
        env = "FORMIC_STRATEGY",
        value_name = "STRATEGY"
    )]
    pub strategy: StrategyArg,
    /// With --strategy spread: the failure domains to spread each job across, largest
    /// first (attribute names); hosts lacking one count as one domain
    #[arg(
        long,
        value_name = "ATTR,...",
        value_delimiter = ',',
        default_value = "zone,rack",
        env = "FORMIC_SPREAD_BY"
    )]
    pub spread_by: Vec<String>,
    /// With --state: kill the instances of jobs that no job file names
    #[arg(long, requires = "state")]
    pub prune: bool,
    /// An instance that fits nowhere may also stop instances of its own tier and role with
    /// a lower priority (Aurora's rule), not only production stopping preemptible work
    #[arg(long, env = "FORMIC_PREEMPT_WITHIN_TIER")]
    pub preempt_within_tier: bool,
    /// Quotas per role (JSON lines: {"role":"www","cpus":64,"ram_mb":262144,"disk_mb":0});
    /// production instances beyond their role's quota stay pending
    #[arg(long, env = "FORMIC_QUOTA", value_name = "FILE")]
    pub quota: Option<PathBuf>,
    /// Print, per host, every reason TASK (role/env/name/instance) cannot go there, or its
    /// score, instead of the decisions
    #[arg(long, value_name = "TASK", add = crate::complete::tasks())]
    pub explain: Option<String>,
    /// Only check the job files (every job spec, every field, templates and port names)
    /// and exit: 0 when all are good, 65 with one line per problem otherwise; reads no
    /// offers and no state
    #[arg(long, conflicts_with_all = ["state", "explain", "prune"])]
    pub check: bool,
    /// Print one JSON object of counts and timings on standard error
    #[arg(long)]
    pub stats: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum StrategyArg {
    Binpack,
    Spread,
}

pub fn run(cli: Cli) -> Result<Status> {
    if cli.check {
        return check(&cli.jobs);
    }
    let t0 = Instant::now();
    let mut input = read_input(&cli, crate::cli::stdin_for("pack", "offers"))?;
    let parse_ms = ms(t0);
    let strategy = match cli.strategy {
        StrategyArg::Binpack => Strategy::Binpack,
        StrategyArg::Spread => Strategy::Spread,
    };
    if strategy == Strategy::Spread {
        input.fleet.spread_by(&cli.spread_by);
    }
    let t1 = Instant::now();
    // A job whose file could not be read is not a removed job: nothing is pruned then.
    let prune = cli.prune && input.job_errors.is_empty();
    let outcome = decide(&mut input, strategy, prune, cli.preempt_within_tier);
    let place_ms = ms(t1);
    let t2 = Instant::now();
    let stdout = io::stdout();
    widen_pipe(&stdout);
    let mut out = io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let written = match &cli.explain {
        Some(task) => explain::explain(&mut out, &input, &outcome, task, cli.output.human()),
        None => output::write(&mut out, &input, &outcome),
    };
    written
        .and_then(|()| out.flush().map_err(Into::into))
        .context("writing output")?;
    let write_ms = ms(t2);
    if cli.stats {
        let stats = json!({
            "placed": outcome.placed, "pending": outcome.pending, "preempted": outcome.preempted,
            "hosts_used": outcome.hosts_used, "lower_bound": outcome.lower_bound,
            "parse_ms": parse_ms, "place_ms": place_ms, "write_ms": write_ms,
            "peak_rss_mb": peak_rss_mb(),
        });
        eprintln!("{stats}");
    }
    crate::exit::refuse_batch(
        "pack",
        &input.job_errors,
        "job files, lines or jobs",
        if cli.prune {
            "every other job was placed, and nothing was pruned"
        } else {
            "every other job was placed"
        },
    )?;
    let status = if outcome.pending > 0 {
        Status::Partial
    } else {
        Status::Done
    };
    exit_without_freeing(input, outcome);
    Ok(status)
}

/// pack returns to exit next: its input and decisions are left for the kernel to take
/// back with the rest of the process, rather than freed allocation by allocation (a
/// million of them at 100k hosts: 25 to 35 ms of wall time after the output was written).
fn exit_without_freeing(input: Input, outcome: Outcome) {
    std::mem::forget(input);
    std::mem::forget(outcome);
}

/// Reads what the command line names (offers from `stdin`): see `input::read`.
pub fn read_input(cli: &Cli, stdin: impl io::BufRead) -> Result<Input> {
    let from = input::Sources {
        jobs: &cli.jobs,
        quota: cli.quota.as_deref(),
        state: cli.state.as_deref(),
        draining: &[],
    };
    input::read(&from, stdin)
}

/// What the next pass would decide were `draining` under a drain too: pack's input read
/// from the state at `state`, the `jobs` and `offers` (JSON lines, those hosts left out),
/// and its decision (`offer drain --dry-run`).
pub fn preview_drain(
    state: &std::path::Path,
    jobs: &[PathBuf],
    draining: &[String],
    offers: &[u8],
) -> Result<(Input, Outcome)> {
    let from = input::Sources {
        jobs,
        quota: None,
        state: Some(state),
        draining,
    };
    let mut input = input::read(&from, offers)?;
    crate::exit::refuse_batch(
        "offer",
        &input.job_errors,
        "job files, lines or jobs",
        "nothing was previewed",
    )?;
    let outcome = decide(&mut input, Strategy::Binpack, false, false);
    Ok((input, outcome))
}

/// `pack --check`: the job files alone.
fn check(paths: &[PathBuf]) -> Result<Status> {
    if paths.is_empty() {
        return Err(crate::exit::fail(Status::Usage, "--check needs job files"));
    }
    let read = job::read_all(paths);
    crate::exit::refuse_batch("pack", &read.errors, "job files, lines or jobs", "checked")?;
    eprintln!("pack: {} jobs, all good", read.jobs.len());
    Ok(Status::Done)
}

/// A million records through a 64 KiB pipe is thousands of context switches; a 1 MiB pipe
/// buffer lets pack and its reader each work in long stretches. Not a pipe, or not
/// allowed: nothing changes.
fn widen_pipe(stdout: &io::Stdout) {
    use std::os::fd::AsRawFd;
    let _ = nix::fcntl::fcntl(
        stdout.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20),
    );
}

fn ms(since: Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 1e5).round() / 100.0
}

/// pack's own peak resident memory: VmHWM of /proc/self/status. (getrusage's ru_maxrss
/// keeps the high-water mark of the process image pack was exec'd from: a 6 MiB run
/// started by a large driver reported the driver's 61 MiB.)
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    (kib / 1024.0 * 10.0).round() / 10.0
}
