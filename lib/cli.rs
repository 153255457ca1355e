//! What every tool's command line shares: where the state is, how output looks, and the
//! parse-then-run `main` each binary calls.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::exit::{self, Status};

/// Standard input, saying on stderr what the tool waits for when it is a terminal (a
/// person who typed `pack jobs/` alone would otherwise see nothing happen).
pub fn stdin_for(tool: &str, what: &str) -> std::io::StdinLock<'static> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("{tool}: reading {what} from standard input (end with Ctrl-D)");
    }
    stdin.lock()
}

/// A number of seconds from 0 to an hour: a duration given on a command line (inf, NaN
/// and 1e30 are refused here, not found out later by a panic).
pub fn up_to_an_hour(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(s) if (0.0..=3600.0).contains(&s) => Ok(s),
        _ => Err(format!(
            "{text:?} is not a number of seconds from 0 to 3600"
        )),
    }
}

/// How many hosts a tool works at once (each host one ssh session at a time, well under
/// sshd's MaxSessions of 10).
#[derive(clap::Args, Debug, Clone)]
pub struct FanOut {
    /// Hosts worked at once
    #[arg(
        long,
        env = "FORMIC_PARALLEL",
        value_name = "N",
        default_value_t = crate::transport::PARALLEL,
        value_parser = clap::builder::TypedValueParser::map(
            clap::value_parser!(u16).range(1..=1024),
            usize::from
        ),
        global = true
    )]
    pub parallel: usize,
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct StateArgs {
    /// The cluster's state file [default: /var/lib/formic/state for root,
    /// else $XDG_STATE_HOME/formic/state or ~/.local/state/formic/state]
    #[arg(long, env = "FORMIC_STATE", value_name = "PATH", global = true)]
    pub state: Option<PathBuf>,
}

impl StateArgs {
    pub fn path(&self) -> PathBuf {
        if let Some(p) = &self.state {
            return p.clone();
        }
        if nix::unistd::geteuid().is_root() {
            return PathBuf::from("/var/lib/formic/state");
        }
        let base = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("formic/state")
    }
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct OutputArgs {
    /// Print JSON lines even when standard output is a terminal (they are the default when
    /// it is not)
    #[arg(long, global = true)]
    pub json: bool,
}

impl OutputArgs {
    /// Whether to print a table for a person rather than records for a program.
    pub fn human(&self) -> bool {
        !self.json && std::io::stdout().is_terminal()
    }

    /// Prints `records` to standard output: for a person, a table with `headers` of a
    /// `row` each; else one JSON line each.
    pub fn print(
        &self,
        headers: &[&str],
        records: &[serde_json::Value],
        row: impl Fn(&serde_json::Value) -> Vec<String>,
    ) -> anyhow::Result<()> {
        let mut out = crate::records::Writer::stdout();
        if self.human() {
            let rows: Vec<Vec<String>> = records.iter().map(row).collect();
            out.raw(table(headers, &rows).trim_end())?;
        } else {
            for r in records {
                out.record(r)?;
            }
        }
        out.finish()
    }
}

/// Aligns rows into columns under their headers.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            l.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// A binary's whole `main`: parse the command line, run the tool, and map the outcome to
/// the shared exit-status table. A usage error is one line, `TOOL: what is wrong (try
/// --help)`, with status 2, like every other error of the tools.
pub fn main<C: Parser>(tool: &str, run: fn(C) -> anyhow::Result<Status>) -> ExitCode {
    // Asked by a shell for completions (see `complete`): answers, and exits.
    clap_complete::CompleteEnv::with_factory(C::command)
        .var(crate::complete::VAR)
        .complete();
    let cli = match C::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version: to stdout, status 0
        Err(e) => {
            eprintln!("{tool}: {} (try --help)", usage_error(&e.to_string()));
            return ExitCode::from(Status::Usage as u8);
        }
    };
    exit::run(tool, || run(cli))
}

/// Clap's rendering of a usage error on one line: its first paragraph without the
/// `error: `, where the lines after the first (the missing arguments, one per line) are
/// joined with commas, so that the line names everything that is wrong.
fn usage_error(rendered: &str) -> String {
    let mut paragraph = rendered.lines().take_while(|l| !l.trim().is_empty());
    let first = paragraph.next().unwrap_or_default();
    let mut line = first
        .strip_prefix("error: ")
        .unwrap_or(first)
        .trim_end()
        .to_owned();
    for (i, more) in paragraph.enumerate() {
        line.push_str(if i == 0 { " " } else { ", " });
        line.push_str(more.trim());
    }
    line
}

/// Formats a number the way people read capacity: no trailing ".0".
pub fn num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{}", (x * 1000.0).round() / 1000.0)
    }
}
