//! Why an instance cannot go where: the reasons of pending records, and `--explain TASK`
//! (per host, why the task cannot go there, or its score).

use std::collections::HashMap;
use std::io::Write;

use anyhow::Result;
use serde_json::json;

use crate::cli;
use crate::exit::bad_input;
use crate::job::JobSpec;

use super::place::{Class, Scratch};
use super::refusals::HostSets;
use super::{Decision, Fleet, Input, Outcome, Resources};

/// Every reason the hosts give, with how many gave it (most first, then by name).
pub(super) fn reasons_for(
    fleet: &Fleet,
    sets: &mut HostSets,
    class: &Class,
    spec: &JobSpec,
) -> Vec<(String, u32)> {
    if fleet.is_empty() {
        return vec![("no offers".into(), 0)];
    }
    let counts = class.refusals(fleet, sets);
    // Two constraints on one attribute describe themselves alike: count by the text.
    let mut by_text: HashMap<String, u32> = HashMap::new();
    for (r, n) in counts {
        *by_text.entry(class.describe(spec, r)).or_default() += n;
    }
    let mut out: Vec<(String, u32)> = by_text.into_iter().collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

/// `--explain TASK`: per host, why the task cannot go there, or its score.
pub(super) fn explain(
    out: &mut impl Write,
    input: &Input,
    outcome: &Outcome,
    task: &str,
    human: bool,
) -> Result<()> {
    let (key, instance) = task
        .rsplit_once('/')
        .and_then(|(k, i)| Some((k, i.parse::<u32>().ok()?)))
        .ok_or_else(|| {
            bad_input(format!(
                "--explain {task:?}: expected role/env/name/instance"
            ))
        })?;
    let j = input
        .jobs
        .iter()
        .position(|s| s.key == key)
        .ok_or_else(|| bad_input(format!("--explain: no job {key} in the job files")))?;
    let spec = &input.jobs[j];
    if instance >= spec.instances {
        return Err(bad_input(format!(
            "--explain: job {key} has {} instances",
            spec.instances
        )));
    }
    let fleet = &input.fleet;
    // An instance that runs already is not placed, and no host is asked about it.
    let live = input
        .running
        .iter()
        .find(|r| r.job_key == key && r.instance == instance && r.state.holds_resources());
    if let Some(r) = live {
        let host = r.host.map(|h| fleet.names[h].clone());
        let note = format!("{} already; nothing to place", r.state.name());
        return explain_only(
            out,
            human,
            json!({"type":"explain","task":task,"placed":null,
            "state":r.state.name(),"host":host,"note":note}),
            &format!("{task} is {note}"),
        );
    }
    // Held back before any host was asked (quota, a restart backoff): that is the answer.
    let pending = outcome.decisions.iter().find_map(|d| match d {
        Decision::Pending {
            job,
            instance: i,
            reasons,
        } if *job == j && *i == instance => Some(&outcome.reasons[*reasons]),
        _ => None,
    });
    let held = pending.filter(|r| {
        r.iter()
            .all(|(why, _)| why == "quota" || why.starts_with("throttled"))
    });
    if let Some(reasons) = held {
        let why: Vec<&str> = reasons.iter().map(|(w, _)| w.as_str()).collect();
        let note = format!("pending: {} (no host was asked)", why.join(", "));
        return explain_only(
            out,
            human,
            json!({"type":"explain","task":task,"placed":null,
            "pending":why,"note":note}),
            &format!("{task} is {note}"),
        );
    }
    let Some(class) = &outcome.classes[j] else {
        return explain_only(
            out,
            human,
            json!({"type":"explain","task":task,"placed":null,
            "note":"not considered in this pass"}),
            &format!("{task} was not considered in this pass"),
        );
    };
    let mut scratch = Scratch::new(fleet.len());
    scratch.load(class);
    let placed_on = outcome.decisions.iter().find_map(|d| match d {
        Decision::Place {
            job,
            instance: i,
            host,
            ..
        } if *job == j && *i == instance => Some(*host as usize),
        _ => None,
    });
    let largest = fleet.largest();
    let mut rows = Vec::new();
    let mut order: Vec<usize> = (0..fleet.len()).collect();
    order.sort_by(|&a, &b| fleet.names[a].cmp(&fleet.names[b]));
    for h in order {
        let vetoes = class.vetoes(fleet, &scratch, h);
        let why = if vetoes.is_empty() {
            vec![format!("score {}", fleet_score(fleet, largest, h))]
        } else {
            vetoes.iter().map(|&r| class.describe(spec, r)).collect()
        };
        rows.push((fleet.names[h].clone(), vetoes.is_empty(), why));
    }
    for (host, mode) in &fleet.vetoed {
        rows.push((host.clone(), false, vec![format!("maintenance {mode}")]));
    }
    if human {
        if let Some(h) = placed_on {
            writeln!(
                out,
                "{task} placed on {}; as the fleet stands after placement:",
                fleet.names[h]
            )?;
        }
        let table: Vec<Vec<String>> = rows
            .into_iter()
            .map(|(h, f, w)| vec![h, if f { "yes" } else { "no" }.into(), w.join(", ")])
            .collect();
        out.write_all(cli::table(&["HOST", "FITS", "WHY"], &table).as_bytes())?;
    } else {
        let placed = placed_on.map(|h| fleet.names[h].clone());
        writeln!(
            out,
            "{}",
            json!({"type":"explain","task":task,"placed":placed})
        )?;
        for (host, fits, why) in rows {
            // `reason` is the first veto (what a pending record counts), `reasons` all.
            let rec = if fits {
                json!({"type":"explain","task":task,"host":host,"fits":true,"score":why[0].trim_start_matches("score ").parse::<f64>().unwrap_or(0.0)})
            } else {
                json!({"type":"explain","task":task,"host":host,"fits":false,"reason":why[0],"reasons":why})
            };
            writeln!(out, "{rec}")?;
        }
    }
    Ok(())
}

/// An explanation with no per-host verdicts: one record, or one line for a person.
fn explain_only(
    out: &mut impl Write,
    human: bool,
    record: serde_json::Value,
    line: &str,
) -> Result<()> {
    if human {
        writeln!(out, "{line}")?;
    } else {
        writeln!(out, "{record}")?;
    }
    Ok(())
}

/// How full a host is, from 0 (as free as the largest host) to 1 (full), by its scarcest
/// resource against the fleet's largest: binpack prefers higher scores, spread lower ones.
fn fleet_score(fleet: &Fleet, largest: Resources, h: usize) -> f64 {
    let cpu = fleet.free[h].ref_cpus as f64 / largest.cpus.max(1) as f64;
    let ram = fleet.free[h].ram_mb as f64 / largest.ram_mb.max(1) as f64;
    ((1.0 - cpu.min(ram)) * 1000.0).round() / 1000.0
}
