//! Writing pack's decisions: a `spec` record once per job before its first `place`, then
//! the decisions in order. A million place records are most of pack's output, so they are
//! formatted by hand into the buffer: job keys, host and port names are checked on input to
//! hold nothing JSON would escape.

use std::io::Write;

use anyhow::Result;
use serde_json::{json, Map, Value};

use crate::pack::{Decision, Input, Outcome};

/// The records go into one buffer, handed on when it holds this much: a second copy of each
/// line into a writer's buffer was a tenth of writing a large run.
const CHUNK: usize = 1 << 20;

pub fn write(out: &mut impl Write, input: &Input, outcome: &Outcome) -> Result<()> {
    for line in &input.passthrough {
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
    }
    let hashes: Vec<Hex> = input.jobs.iter().map(|j| hex(j.hash)).collect();
    let mut buf = Vec::with_capacity(CHUNK + (64 << 10));
    let mut spec_sent = vec![false; input.jobs.len()];
    // Updates first: launch commits them whether or not anything is placed, and keeps the
    // spec a moving update goes to. Then what the drains decided, for people and `offer
    // drain --wait`.
    for &job in &outcome.specs_first {
        spec_once(&mut buf, input, &hashes, &mut spec_sent, job)?;
    }
    for rec in &outcome.notes {
        serde_json::to_writer(&mut buf, rec)?;
        buf.push(b'\n');
    }
    for d in &outcome.decisions {
        match d {
            Decision::Place { job, .. } => {
                spec_once(&mut buf, input, &hashes, &mut spec_sent, *job)?;
                place(&mut buf, input, outcome, &hashes, d);
            }
            Decision::Preempt {
                victim,
                incarnation,
                host,
                job,
                instance,
            } => {
                spec_once(&mut buf, input, &hashes, &mut spec_sent, *job)?;
                let rec = json!({"type":"preempt","task":victim,"incarnation":incarnation,
                                 "host":input.fleet.names[*host as usize],
                                 "for":format!("{}/{instance}", input.jobs[*job].key)});
                serde_json::to_writer(&mut buf, &rec)?;
            }
            Decision::Pending {
                job,
                instance,
                reasons,
            } => {
                pending(
                    &mut buf,
                    &input.jobs[*job].key,
                    *instance,
                    &outcome.reasons[*reasons],
                )?;
            }
            Decision::Kill {
                task,
                incarnation,
                reason,
            } => {
                serde_json::to_writer(
                    &mut buf,
                    &json!({"type":"kill","task":task,"incarnation":incarnation,"reason":reason}),
                )?;
            }
        }
        buf.push(b'\n');
        if buf.len() >= CHUNK {
            out.write_all(&buf)?;
            buf.clear();
        }
    }
    out.write_all(&buf)?;
    Ok(())
}

/// A place record, by hand: there are a million of them in a large run.
fn place(line: &mut Vec<u8>, input: &Input, outcome: &Outcome, hashes: &[Hex], d: &Decision) {
    let Decision::Place {
        job,
        instance,
        host,
        cpus,
        ports,
    } = d
    else {
        unreachable!("write calls it for places only")
    };
    let spec = &input.jobs[*job];
    let r = &spec.resources;
    line.extend_from_slice(b"{\"type\":\"place\",\"task\":\"");
    line.extend_from_slice(spec.key.as_bytes());
    line.push(b'/');
    number(line, *instance);
    line.extend_from_slice(b"\",\"job\":\"");
    line.extend_from_slice(spec.key.as_bytes());
    line.extend_from_slice(b"\",\"instance\":");
    number(line, *instance);
    line.extend_from_slice(b",\"host\":\"");
    line.extend_from_slice(input.fleet.names[*host as usize].as_bytes());
    line.extend_from_slice(b"\",\"cpus\":");
    cores(line, *cpus);
    line.extend_from_slice(b",\"ram_mb\":");
    number(line, r.ram_mb);
    line.extend_from_slice(b",\"disk_mb\":");
    number(line, r.disk_mb);
    line.extend_from_slice(b",\"gpus\":");
    number(line, r.gpus);
    line.extend_from_slice(b",\"ports\":{");
    for (i, (name, port)) in r
        .ports
        .iter()
        .zip(&outcome.ports[ports.clone()])
        .enumerate()
    {
        if i > 0 {
            line.push(b',');
        }
        line.push(b'"');
        line.extend_from_slice(name.as_bytes());
        line.extend_from_slice(b"\":");
        number(line, *port);
    }
    line.extend_from_slice(b"},\"spec\":\"");
    line.extend_from_slice(&hashes[*job]);
    line.push(b'"');
    if let Some(n) = incarnation_placed(input, &spec.key, *instance) {
        line.extend_from_slice(b",\"incarnation\":");
        number(line, n);
    }
    line.push(b'}');
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
    hashes: &[Hex],
    sent: &mut [bool],
    job: usize,
) -> Result<()> {
    if !std::mem::replace(&mut sent[job], true) {
        let spec = &input.jobs[job];
        line.extend_from_slice(b"{\"type\":\"spec\",\"job\":");
        string(line, &spec.key)?;
        line.extend_from_slice(b",\"hash\":\"");
        line.extend_from_slice(&hashes[job]);
        line.extend_from_slice(b"\",\"spec\":");
        line.extend_from_slice(spec.json.as_bytes());
        line.extend_from_slice(b"}\n");
    }
    Ok(())
}

/// A pending record: `{"type":"pending","task":...,"job":...,"instance":N,"reasons":{...}}`,
/// reasons in the order given. A hundred thousand of them follow a large run; a JSON object
/// built for each was most of their cost.
fn pending(line: &mut Vec<u8>, key: &str, instance: u32, reasons: &[(String, u32)]) -> Result<()> {
    if has_repeats(reasons) {
        // A JSON object keeps one value per name: serde_json decides which, as it always has.
        let why: Map<String, Value> = reasons.iter().map(|(r, n)| (r.clone(), json!(n))).collect();
        let rec = json!({"type":"pending","task":format!("{key}/{instance}"),"job":key,
                         "instance":instance,"reasons":why});
        serde_json::to_writer(line, &rec)?;
        return Ok(());
    }
    line.extend_from_slice(b"{\"type\":\"pending\",\"task\":\"");
    line.extend_from_slice(key.as_bytes());
    line.push(b'/');
    number(line, instance);
    line.extend_from_slice(b"\",\"job\":\"");
    line.extend_from_slice(key.as_bytes());
    line.extend_from_slice(b"\",\"instance\":");
    number(line, instance);
    line.extend_from_slice(b",\"reasons\":{");
    for (i, (reason, hosts)) in reasons.iter().enumerate() {
        if i > 0 {
            line.push(b',');
        }
        string(line, reason)?;
        line.push(b':');
        number(line, *hosts);
    }
    line.extend_from_slice(b"}}");
    Ok(())
}

/// Whether a reason is named twice (never expected: the names are counted per reason).
fn has_repeats(reasons: &[(String, u32)]) -> bool {
    reasons
        .iter()
        .enumerate()
        .any(|(i, (r, _))| reasons[..i].iter().any(|(seen, _)| seen == r))
}

/// A JSON string. Reasons may quote attribute values, which can hold anything: those that
/// need escaping go through serde_json.
fn string(line: &mut Vec<u8>, s: &str) -> Result<()> {
    if s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        serde_json::to_writer(line, s)?;
    } else {
        line.push(b'"');
        line.extend_from_slice(s.as_bytes());
        line.push(b'"');
    }
    Ok(())
}

/// A spec hash as records carry it: 16 lowercase hex digits.
type Hex = [u8; 16];

fn hex(hash: u64) -> Hex {
    let mut out = [0; 16];
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[(hash >> (60 - 4 * i)) as usize & 0xf];
    }
    out
}

/// An integer in decimal, without the formatting machinery of `write!`.
fn number(line: &mut Vec<u8>, n: impl itoa::Integer) {
    line.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Millicores as a decimal number of cores: 500 -> 0.5, 2000 -> 2, 125 -> 0.125.
fn cores(line: &mut Vec<u8>, milli: u32) {
    number(line, milli / 1000);
    let frac = milli % 1000;
    if frac != 0 {
        let digits = [frac / 100, frac / 10 % 10, frac % 10].map(|d| b'0' + d as u8);
        let zeros = digits.iter().rev().take_while(|&&d| d == b'0').count();
        line.push(b'.');
        line.extend_from_slice(&digits[..3 - zeros]);
    }
}
