//! Writing pack's decisions: a `spec` record once per job before its first `place`, then
//! the decisions in order. A million place records are most of pack's output, so they are
//! formatted by hand into the buffer: job keys, host and port names are checked on input to
//! hold nothing JSON would escape.

use std::io::Write;

use anyhow::Result;
use serde_json::{json, Map, Value};

use crate::pack::{Decision, Input, Outcome};

pub fn write(out: &mut impl Write, input: &Input, outcome: &Outcome) -> Result<()> {
    for line in &input.passthrough {
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
    }
    let hashes: Vec<String> = input
        .jobs
        .iter()
        .map(|j| format!("{:016x}", j.hash))
        .collect();
    let mut line = Vec::with_capacity(512);
    let mut spec_sent = vec![false; input.jobs.len()];
    for d in &outcome.decisions {
        line.clear();
        match d {
            Decision::Place {
                job,
                instance,
                host,
                cpus,
                ports,
            } => {
                let spec = &input.jobs[*job];
                spec_once(&mut line, input, &hashes, &mut spec_sent, *job)?;
                let r = &spec.resources;
                line.extend_from_slice(b"{\"type\":\"place\",\"task\":\"");
                line.extend_from_slice(spec.key.as_bytes());
                write!(
                    line,
                    "/{instance}\",\"job\":\"{}\",\"instance\":{instance},\"host\":\"",
                    spec.key
                )?;
                line.extend_from_slice(input.fleet.names[*host as usize].as_bytes());
                line.extend_from_slice(b"\",\"cpus\":");
                cores(&mut line, *cpus);
                write!(
                    line,
                    ",\"ram_mb\":{},\"disk_mb\":{},\"gpus\":{},\"ports\":{{",
                    r.ram_mb, r.disk_mb, r.gpus
                )?;
                for (i, (name, port)) in r
                    .ports
                    .iter()
                    .zip(&outcome.ports[ports.clone()])
                    .enumerate()
                {
                    if i > 0 {
                        line.push(b',');
                    }
                    write!(line, "\"{name}\":{port}")?;
                }
                write!(line, "}},\"spec\":\"{}\"", hashes[*job])?;
                if let Some(n) = incarnation_placed(input, &spec.key, *instance) {
                    write!(line, ",\"incarnation\":{n}")?;
                }
                line.push(b'}');
            }
            Decision::Preempt {
                victim,
                incarnation,
                host,
                job,
                instance,
            } => {
                spec_once(&mut line, input, &hashes, &mut spec_sent, *job)?;
                let rec = json!({"type":"preempt","task":victim,"incarnation":incarnation,
                                 "host":input.fleet.names[*host as usize],
                                 "for":format!("{}/{instance}", input.jobs[*job].key)});
                serde_json::to_writer(&mut line, &rec)?;
            }
            Decision::Pending {
                job,
                instance,
                reasons,
            } => {
                let key = &input.jobs[*job].key;
                let why: Map<String, Value> = outcome.reasons[*reasons]
                    .iter()
                    .map(|(r, n)| (r.clone(), json!(n)))
                    .collect();
                let rec = json!({"type":"pending","task":format!("{key}/{instance}"),"job":key,
                                 "instance":instance,"reasons":why});
                serde_json::to_writer(&mut line, &rec)?;
            }
            Decision::Kill {
                task,
                incarnation,
                reason,
            } => {
                serde_json::to_writer(
                    &mut line,
                    &json!({"type":"kill","task":task,"incarnation":incarnation,"reason":reason}),
                )?;
            }
        }
        line.push(b'\n');
        out.write_all(&line)?;
    }
    Ok(())
}

/// The incarnation a placement of `key`/`instance` creates: the one after the task's
/// current one (the state's tasks are sorted by job and instance). None when pack read no
/// state: then launch checks only that the task has no live incarnation.
fn incarnation_placed(input: &Input, key: &str, instance: u32) -> Option<u32> {
    if !input.from_state {
        return None;
    }
    let found = input
        .running
        .binary_search_by(|r| (r.job_key.as_str(), r.instance).cmp(&(key, instance)));
    Some(found.map_or(1, |i| input.running[i].incarnation.saturating_add(1)))
}

/// launch starts what is placed: it needs each job's spec once, before the job's first
/// preempt or place record, and finds it by the hash the job is placed from.
fn spec_once(
    line: &mut Vec<u8>,
    input: &Input,
    hashes: &[String],
    sent: &mut [bool],
    job: usize,
) -> Result<()> {
    if !std::mem::replace(&mut sent[job], true) {
        let spec = &input.jobs[job];
        let rec = json!({"type":"spec","job":spec.key,"hash":hashes[job],"spec":Value::Object(spec.raw.clone())});
        serde_json::to_writer(&mut *line, &rec)?;
        line.push(b'\n');
    }
    Ok(())
}

/// Millicores as a decimal number of cores: 500 -> 0.5, 2000 -> 2, 125 -> 0.125.
fn cores(line: &mut Vec<u8>, milli: u32) {
    let _ = write!(line, "{}", milli / 1000);
    let frac = milli % 1000;
    if frac != 0 {
        let digits = format!("{frac:03}");
        line.push(b'.');
        line.extend_from_slice(digits.trim_end_matches('0').as_bytes());
    }
}
