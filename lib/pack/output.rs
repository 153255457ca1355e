//! Writing pack's decisions: a `spec` record once per job before its first `place`, then
//! the decisions in order. A million place records are most of pack's output, so they are
//! formatted by hand into the buffer: job keys, host and port names are checked on input to
//! hold nothing JSON would escape.

use std::io::Write;

use anyhow::Result;
use serde_json::{json, Map, Value};

use crate::pack::{Decision, Input, Outcome};

/// Decisions formatted as one piece of the output: two threads format pieces in turn
/// while the main thread writes them in order. A million place records took a quarter of
/// a large run to format on one thread.
const PIECE: usize = 8192;

pub fn write(out: &mut impl Write, input: &Input, outcome: &Outcome) -> Result<()> {
    for line in &input.passthrough {
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
    }
    let hashes: Vec<Hex> = input.jobs.iter().map(|j| hex(j.hash)).collect();
    let mut spec_sent = vec![false; input.jobs.len()];
    // Updates first: launch commits them whether or not anything is placed, and keeps the
    // spec a moving update goes to. Then what the drains decided, for people and `offer
    // drain --wait`.
    let mut head = Vec::new();
    for &job in &outcome.specs_first {
        if !std::mem::replace(&mut spec_sent[job], true) {
            spec_record(&mut head, input, &hashes, job)?;
        }
    }
    for rec in &outcome.notes {
        serde_json::to_writer(&mut head, rec)?;
        head.push(b'\n');
    }
    out.write_all(&head)?;
    // launch needs each job's spec once, before the job's first preempt or place record.
    let spec_first: Vec<bool> = outcome
        .decisions
        .iter()
        .map(|d| match d {
            Decision::Place { job, .. } | Decision::Preempt { job, .. } => {
                !std::mem::replace(&mut spec_sent[*job], true)
            }
            _ => false,
        })
        .collect();
    let pieces = Pieces {
        input,
        outcome,
        hashes: &hashes,
        spec_first: &spec_first,
    };
    let count = outcome.decisions.len().div_ceil(PIECE);
    if count <= 1 {
        out.write_all(&pieces.format(0)?)?;
        return Ok(());
    }
    std::thread::scope(|s| {
        // A bounded channel per thread, each taking every other piece: the main thread
        // reads them back in order, and neither runs more than two pieces ahead.
        let channels: Vec<_> = (0..2)
            .map(|first| {
                let (tx, rx) = std::sync::mpsc::sync_channel(2);
                let pieces = &pieces;
                s.spawn(move || {
                    for k in (first..count).step_by(2) {
                        if tx.send(pieces.format(k)).is_err() {
                            break; // the writer gave up
                        }
                    }
                });
                rx
            })
            .collect();
        for k in 0..count {
            let piece = channels[k % 2]
                .recv()
                .map_err(|_| anyhow::anyhow!("a thread formatting the output ended early"))??;
            out.write_all(&piece)?;
        }
        Ok(())
    })
}

/// What formatting a piece of the decisions reads.
struct Pieces<'a> {
    input: &'a Input,
    outcome: &'a Outcome,
    hashes: &'a [Hex],
    /// Per decision: its job's spec record goes before it.
    spec_first: &'a [bool],
}

impl Pieces<'_> {
    /// The records of decisions `k * PIECE ..`, each on its line.
    fn format(&self, k: usize) -> Result<Vec<u8>> {
        let (input, outcome) = (self.input, self.outcome);
        let all = &outcome.decisions;
        let range = k * PIECE..((k + 1) * PIECE).min(all.len());
        let mut buf = Vec::with_capacity(range.len() * 256);
        for (d, &spec_first) in all[range.clone()].iter().zip(&self.spec_first[range]) {
            if spec_first {
                let (Decision::Place { job, .. } | Decision::Preempt { job, .. }) = d else {
                    unreachable!("only places and preempts carry a spec")
                };
                spec_record(&mut buf, input, self.hashes, *job)?;
            }
            match d {
                Decision::Place { .. } => place(&mut buf, input, outcome, self.hashes, d),
                Decision::Preempt {
                    victim,
                    incarnation,
                    host,
                    job,
                    instance,
                } => {
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
        }
        Ok(buf)
    }
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
    if let Some(&run) = (!outcome.run_of.is_empty())
        .then(|| outcome.run_of.get(&spec.key))
        .flatten()
    {
        line.extend_from_slice(b",\"run\":");
        number(line, run);
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

/// A job's `spec` record: what launch starts its instances from, found by the hash the
/// job is placed from.
fn spec_record(line: &mut Vec<u8>, input: &Input, hashes: &[Hex], job: usize) -> Result<()> {
    let spec = &input.jobs[job];
    line.extend_from_slice(b"{\"type\":\"spec\",\"job\":");
    string(line, &spec.key)?;
    line.extend_from_slice(b",\"hash\":\"");
    line.extend_from_slice(&hashes[job]);
    line.extend_from_slice(b"\",\"spec\":");
    line.extend_from_slice(spec.json.as_bytes());
    line.extend_from_slice(b"}\n");
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
