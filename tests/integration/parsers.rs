//! Property tests for every parser of outside input but the job spec (whose rewrite brings
//! its own): offers (pack), host records (`offer add`), the records launch and reap read
//! (place, spec, kill, preempt), quota files (`pack --quota`), the files of a task's
//! directory (spec.json, status, job.json) and serverset member data.
//!
//! Each target: arbitrary bytes, JSON-ish token soup and mutated valid input never panic;
//! bad input is the documented error (for a tool, status 65 naming a line of the input, and
//! nothing changed); what round-trips (status, spec, member data) comes back equal. A
//! status or spec.json is read with every number it holds as given, or refused naming the
//! field: a number out of its field's range is never read as another. Case counts honour
//! PROPTEST_CASES; the targets that run a binary per case default to fewer.

use std::collections::BTreeMap;
use std::path::Path;

use clap::Parser;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Map, Value};

use formic::exit::{status_of, Status};
use formic::host::{Host, Maintenance, Mode, Transport};
use formic::records::Reader;
use formic::supervise::{Health, Spec};
use formic::task::{Announce, Job, Task, TaskState, MAX_PORTS};
use formic::taskdir;

use crate::common::{self, code, snapshot, stderr, stdout, tool};
use crate::fuzz::{apply_edit, config, edit, expected_lines, line_of, Edit};

// --- inputs ---

/// Random sequences of `tokens` (pieces of the records a parser reads) and a few random
/// bytes: unlike random bytes, they get past the JSON parser to the fields.
fn soup(tokens: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        8 => proptest::sample::select(tokens).prop_map(|t| t.as_bytes().to_vec()),
        2 => proptest::sample::select(JSON_TOKENS).prop_map(|t| t.as_bytes().to_vec()),
        1 => proptest::collection::vec(any::<u8>(), 1..4),
    ];
    proptest::collection::vec(token, 0..60).prop_map(|ts| ts.concat())
}

/// Pieces of any JSON: structure and awkward values.
const JSON_TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    " ",
    "\n",
    "\r\n",
    "\"",
    "\"\"",
    "0",
    "1",
    "-1",
    "0.5",
    "1e400",
    "-1e300",
    "1e300",
    "1e-9",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "null",
    "true",
    "false",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"é\"",
    "\u{0}",
];

/// Any JSON value, a few levels deep, with keys that the parsers look for among others.
fn json_value(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![
            proptest::sample::select(keys).prop_map(String::from),
            "(?s:.){0,12}"
        ]
        .prop_map(Value::from),
    ];
    let key = prop_oneof![
        4 => proptest::sample::select(keys).prop_map(String::from),
        1 => "[a-z_]{0,8}",
    ];
    leaf.prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::btree_map(key.clone(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// One change to a JSON value: a node (any depth) replaced, or taken out of its parent.
#[derive(Clone, Debug)]
enum JsonEdit {
    Replace(Index, Value),
    Remove(Index),
}

fn json_edit(keys: &'static [&'static str]) -> impl Strategy<Value = JsonEdit> {
    prop_oneof![
        3 => (any::<Index>(), json_value(keys)).prop_map(|(i, v)| JsonEdit::Replace(i, v)),
        1 => any::<Index>().prop_map(JsonEdit::Remove),
    ]
}

/// Nodes below `v` (not `v` itself).
fn descendants(v: &Value) -> usize {
    match v {
        Value::Array(a) => a.iter().map(|c| 1 + descendants(c)).sum(),
        Value::Object(o) => o.values().map(|c| 1 + descendants(c)).sum(),
        _ => 0,
    }
}

/// Applies `f` to the `k`th descendant of `v` in preorder, or to its parent and its key.
fn nth(v: &mut Value, k: &mut usize, f: &mut dyn FnMut(&mut Value, Option<&str>, usize)) -> bool {
    let keys: Vec<(Option<String>, usize)> = match v {
        Value::Array(a) => (0..a.len()).map(|i| (None, i)).collect(),
        Value::Object(o) => o.keys().map(|k| (Some(k.clone()), 0)).collect(),
        _ => return false,
    };
    for (key, i) in keys {
        if *k == 0 {
            f(v, key.as_deref(), i);
            return true;
        }
        *k -= 1;
        let child = match (&mut *v, &key) {
            (Value::Array(a), None) => &mut a[i],
            (Value::Object(o), Some(key)) => o.get_mut(key).unwrap(),
            _ => unreachable!(),
        };
        if nth(child, k, f) {
            return true;
        }
    }
    false
}

fn apply_json_edit(v: &mut Value, e: &JsonEdit) {
    let n = descendants(v);
    match e {
        JsonEdit::Replace(_, new) if n == 0 => *v = new.clone(),
        JsonEdit::Replace(i, new) => {
            nth(
                v,
                &mut i.index(n),
                &mut |parent, key, at| match (parent, key) {
                    (Value::Object(o), Some(key)) => {
                        o.insert(key.to_string(), new.clone());
                    }
                    (Value::Array(a), None) => a[at] = new.clone(),
                    _ => {}
                },
            );
        }
        JsonEdit::Remove(_) if n == 0 => {}
        JsonEdit::Remove(i) => {
            nth(
                v,
                &mut i.index(n),
                &mut |parent, key, at| match (parent, key) {
                    (Value::Object(o), Some(key)) => {
                        o.shift_remove(key);
                    }
                    (Value::Array(a), None) => {
                        a.remove(at);
                    }
                    _ => {}
                },
            );
        }
    }
}

/// JSON lines made from `values`, each line then edited as bytes.
/// `values` with each JSON edit applied to the record it picks, as lines with `edits`.
fn mutated(values: &[Value], json_edits: &[(usize, JsonEdit)], edits: &[(usize, Edit)]) -> Vec<u8> {
    let mut values = values.to_vec();
    for (which, e) in json_edits {
        let n = values.len();
        apply_json_edit(&mut values[which % n], e);
    }
    lines_of(&values, edits)
}

fn lines_of(values: &[Value], edits: &[(usize, Edit)]) -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = values
        .iter()
        .map(|v| serde_json::to_vec(v).unwrap())
        .collect();
    for (which, e) in edits {
        let n = lines.len();
        apply_edit(&mut lines[which % n], e);
    }
    lines.join(&b'\n')
}

/// A refused batch: status 65, and a message that starts with the number of a line of
/// `input` (the last bad one; the others went to stderr).
fn check_refused(e: &anyhow::Error, input: &[u8]) -> Result<(), TestCaseError> {
    let msg = format!("{e:#}");
    prop_assert_eq!(status_of(e), Status::BadInput, "{}", msg);
    let n = line_of(&msg);
    prop_assert!(n.is_some(), "no line number: {msg}");
    let lines = expected_lines(input).len() as u64;
    prop_assert!((1..=lines).contains(&n.unwrap()), "{msg} ({lines} lines)");
    Ok(())
}

/// What a tool printed when it refused its input: every line `TOOL: line N: …` (N a line
/// of the input) but a count of the ones left out, status 65, nothing on stdout.
fn check_tool_refused(
    tool: &str,
    out: &std::process::Output,
    input: &[u8],
) -> Result<(), TestCaseError> {
    let err = stderr(out);
    prop_assert_eq!(code(out), 65, "{}", err);
    prop_assert!(stdout(out).is_empty(), "{}", stdout(out));
    let lines = expected_lines(input).len() as u64;
    for l in err.lines() {
        let rest = l.strip_prefix(&format!("{tool}: "));
        prop_assert!(rest.is_some(), "{l}");
        let rest = rest.unwrap();
        if rest.starts_with("… and ") {
            continue;
        }
        let n = line_of(rest);
        prop_assert!(
            n.is_some_and(|n| (1..=lines).contains(&n)),
            "{l} ({lines} lines)"
        );
    }
    Ok(())
}

// --- offers: pack's input ---

/// pack's reading of its input (offers on stdin, and the quota file if any), as the binary
/// does it, without a state.
fn pack_read(input: &[u8], quota: Option<&Path>) -> anyhow::Result<formic::pack::Input> {
    let mut cli = formic::pack::Cli::try_parse_from(["pack"]).unwrap();
    cli.state = None;
    cli.quota = quota.map(Path::to_path_buf);
    formic::pack::read_input(&cli, input)
}

/// An offer as `offer` prints it for a host with nothing on it.
fn offer_json(h: &Host) -> Value {
    json!({
        "type": "offer",
        "host": h.name,
        "cpus": h.cpus as f64 / 1000.0,
        "ram_mb": h.ram_mb,
        "disk_mb": h.disk_mb,
        "gpus": h.gpus,
        "ports": h.ports.iter().map(|&(a, b)| [a, b]).collect::<Vec<_>>(),
        "attrs": h.attrs.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<Map<String, Value>>(),
        "cpu_factor": h.cpu_factor,
        "maintenance": h.maintenance.mode.name(),
    })
}

const OFFER_TOKENS: &[&str] = &[
    "\"type\":\"offer\"",
    "{\"type\":\"offer\",",
    "\"offer\"",
    "\"host\"",
    "\"h1\"",
    "\"cpus\"",
    "\"ram_mb\"",
    "\"disk_mb\"",
    "\"gpus\"",
    "\"ports\"",
    "\"attrs\"",
    "\"rack\"",
    "\"cpu_factor\"",
    "\"maintenance\"",
    "\"none\"",
    "\"scheduled\"",
    "\"draining\"",
    "[[31000,31999]]",
    "[[1,2],[2,3]]",
    "[[0,1]]",
];

/// Whatever the offers, pack reads them or refuses the batch naming a line; the offers it
/// reads are hosts of its fleet, one each.
fn check_offers(input: &[u8]) -> Result<(), TestCaseError> {
    match pack_read(input, None) {
        Err(e) => check_refused(&e, input),
        Ok(got) => {
            let offers = Reader::new(input)
                .filter_map(Result::ok)
                .filter(|r| r.kind() == "offer")
                .count();
            prop_assert_eq!(got.fleet.len(), offers);
            prop_assert_eq!(got.passthrough.len() + offers, {
                Reader::new(input).count()
            });
            Ok(())
        }
    }
}

/// Hosts that can be offered: `fuzz::host()` without the maintenance that takes no work.
fn offerable_host() -> impl Strategy<Value = Host> {
    crate::fuzz::host().prop_map(|mut h| {
        if !h.maintenance.mode.takes_work() {
            h.maintenance = Maintenance::none();
        }
        h
    })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn offers_on_arbitrary_bytes(input in proptest::collection::vec(any::<u8>(), 0..400)) {
        check_offers(&input)?;
    }

    #[test]
    fn offers_on_token_soup(input in soup(OFFER_TOKENS)) {
        check_offers(&input)?;
    }

    #[test]
    fn mutated_offers(
        hosts in proptest::collection::vec(offerable_host(), 1..4),
        json_edits in proptest::collection::vec((0..4usize, json_edit(OFFER_KEYS)), 0..3),
        edits in proptest::collection::vec((0..4usize, edit()), 0..3),
    ) {
        let mut values: Vec<Value> = hosts.iter().map(offer_json).collect();
        for (which, e) in &json_edits {
            let n = values.len();
            apply_json_edit(&mut values[which % n], e);
        }
        check_offers(&lines_of(&values, &edits))?;
    }

    /// An offer as `offer` prints it is taken whole.
    #[test]
    fn printed_offers_are_taken_as_they_are(h in offerable_host()) {
        let line = serde_json::to_vec(&offer_json(&h)).unwrap();
        let got = pack_read(&line, None);
        prop_assert!(got.is_ok(), "{}: {:#}", String::from_utf8_lossy(&line), got.err().unwrap());
        let f = got.unwrap().fleet;
        prop_assert_eq!(&f.names, &vec![h.name.clone()]);
        prop_assert_eq!(f.free[0].cpus, h.cpus);
        prop_assert_eq!((f.free[0].ram_mb, f.free[0].disk_mb, f.free[0].gpus), (h.ram_mb, h.disk_mb, h.gpus));
        prop_assert_eq!(&f.free_ranges(0), &h.ports);
        prop_assert_eq!(f.scheduled[0], h.maintenance.mode == Mode::Scheduled);
    }
}

const OFFER_KEYS: &[&str] = &[
    "type",
    "host",
    "cpus",
    "ram_mb",
    "disk_mb",
    "gpus",
    "ports",
    "attrs",
    "cpu_factor",
    "maintenance",
    "offer",
    "none",
];

// --- quota files: pack --quota ---

const QUOTA_TOKENS: &[&str] = &[
    "{\"role\":\"www\",",
    "\"type\":\"quota\"",
    "\"quota\"",
    "\"role\"",
    "\"www\"",
    "\"cpus\"",
    "\"ram_mb\"",
    "\"disk_mb\"",
    "64",
    "262144",
    "1e9",
    "1000000001",
];

const QUOTA_KEYS: &[&str] = &["type", "role", "cpus", "ram_mb", "disk_mb", "quota", "www"];

/// A quota file is read whole or refused with status 65, naming the file and a line.
fn check_quota(text: &[u8]) -> Result<(), TestCaseError> {
    let dir = common::tempdir();
    let path = dir.path().join("quota");
    std::fs::write(&path, text).unwrap();
    match pack_read(b"", Some(&path)) {
        Ok(got) => {
            let roles = String::from_utf8_lossy(text)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .count();
            prop_assert!(got.quota.len() <= roles);
        }
        Err(e) => {
            let msg = format!("{e:#}");
            prop_assert_eq!(status_of(&e), Status::BadInput, "{}", msg);
            let rest = msg.strip_prefix(&format!("{}: ", path.display()));
            prop_assert!(rest.is_some(), "does not name the file: {msg}");
            let rest = rest.unwrap();
            let lines = text.split(|&b| b == b'\n').count() as u64;
            let n = line_of(rest);
            prop_assert!(n.is_some_and(|n| (1..=lines).contains(&n)), "{msg}");
        }
    }
    Ok(())
}

fn quota_json() -> impl Strategy<Value = Value> {
    (
        "[a-z][a-z0-9-]{0,10}",
        any::<bool>(),
        proptest::option::of(0.0..1e9f64),
        proptest::option::of(0..=1u64 << 50),
        proptest::option::of(0..=1u64 << 60),
    )
        .prop_map(|(role, typed, cpus, ram, disk)| {
            let mut v = json!({"role": role});
            if typed {
                v["type"] = json!("quota");
            }
            for (k, x) in [
                ("cpus", cpus.map(Value::from)),
                ("ram_mb", ram.map(Value::from)),
            ]
            .into_iter()
            .chain([("disk_mb", disk.map(Value::from))])
            {
                if let Some(x) = x {
                    v[k] = x;
                }
            }
            v
        })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn quota_files_of_valid_text(text in "(?s:.){0,200}") {
        check_quota(text.as_bytes())?;
    }

    #[test]
    fn quota_files_of_token_soup(
        input in soup(QUOTA_TOKENS).prop_filter("UTF-8", |b| std::str::from_utf8(b).is_ok()),
    ) {
        check_quota(&input)?;
    }

    #[test]
    fn mutated_quota_files(
        quotas in proptest::collection::vec(quota_json(), 1..4),
        json_edits in proptest::collection::vec((0..4usize, json_edit(QUOTA_KEYS)), 0..3),
        edits in proptest::collection::vec((0..4usize, edit()), 0..3),
    ) {
        let mut values = quotas.clone();
        for (which, e) in &json_edits {
            let n = values.len();
            apply_json_edit(&mut values[which % n], e);
        }
        let text = lines_of(&values, &edits);
        prop_assume!(std::str::from_utf8(&text).is_ok());
        check_quota(&text)?;
    }

    /// Valid quota lines are read as written: the last line of a role wins.
    #[test]
    fn valid_quota_files_are_read_as_written(
        quotas in proptest::collection::vec(quota_json(), 0..5),
    ) {
        let text = lines_of(&quotas, &[]);
        let dir = common::tempdir();
        let path = dir.path().join("quota");
        std::fs::write(&path, &text).unwrap();
        let got = pack_read(b"", Some(&path));
        prop_assert!(got.is_ok(), "{:#}", got.err().unwrap());
        let mut want = BTreeMap::new();
        for q in &quotas {
            let cpus = q["cpus"].as_f64().map_or(u64::MAX, |c| formic::host::millicores(c) as u64);
            let ram = q["ram_mb"].as_u64().unwrap_or(u64::MAX);
            let disk = q["disk_mb"].as_u64().unwrap_or(u64::MAX);
            want.insert(q["role"].as_str().unwrap().to_string(), [cpus, ram, disk]);
        }
        let got: BTreeMap<String, [u64; 3]> = got
            .unwrap()
            .quota
            .into_iter()
            .map(|(role, q)| (role, [q.cpus, q.ram_mb, q.disk_mb]))
            .collect();
        prop_assert_eq!(got, want);
    }
}

/// A quota file that is not UTF-8 is a malformed file (65), like a line that is not JSON.
#[test]
fn a_quota_file_that_is_not_utf8_is_bad_input() {
    let dir = common::tempdir();
    let path = dir.path().join("quota");
    std::fs::write(&path, b"{\"role\":\"\xff\"}\n").unwrap();
    let e = pack_read(b"", Some(&path)).err().expect("refused");
    assert_eq!(status_of(&e), Status::BadInput, "{e:#}");
}

// --- kill and preempt: reap's input ---

const STOP_TOKENS: &[&str] = &[
    "{\"type\":\"kill\",",
    "{\"type\":\"preempt\",",
    "\"type\":\"kill\"",
    "\"kill\"",
    "\"preempt\"",
    "\"task\"",
    "\"a/b/c/0\"",
    "\"a/b/c/01\"",
    "\"a/b/c/+1\"",
    "\"a/b/c/4294967296\"",
    "\"a/b/.c/1\"",
    "\"a//c/1\"",
    "\"host\"",
    "\"h1\"",
    "\"for\"",
    "\"reason\"",
    "\"incarnation\"",
];

const STOP_KEYS: &[&str] = &[
    "type",
    "task",
    "host",
    "for",
    "reason",
    "incarnation",
    "kill",
];

fn check_stops(input: &[u8]) -> Result<(), TestCaseError> {
    match formic::reap::read_input(input) {
        Err(e) => check_refused(&e, input),
        Ok((stops, others)) => {
            for s in &stops {
                prop_assert!(formic::reap::parse_task_id(&s.task).is_ok(), "{:?}", s);
            }
            prop_assert_eq!(stops.len() + others.len(), Reader::new(input).count());
            Ok(())
        }
    }
}

fn task_id() -> impl Strategy<Value = String> {
    (
        "[A-Za-z0-9_-][A-Za-z0-9._-]{0,8}",
        "[A-Za-z0-9_-][A-Za-z0-9._-]{0,8}",
        "[A-Za-z0-9_-][A-Za-z0-9._-]{0,8}",
        any::<u32>(),
    )
        .prop_map(|(r, e, n, i)| format!("{r}/{e}/{n}/{i}"))
}

fn stop_json() -> impl Strategy<Value = Value> {
    (
        task_id(),
        any::<bool>(),
        "[A-Za-z0-9][A-Za-z0-9.-]{0,10}",
        proptest::option::of(1..=u32::MAX),
    )
        .prop_map(|(task, preempt, host, incarnation)| {
            let mut v = if preempt {
                json!({"type": "preempt", "task": task, "host": host, "for": "x/y/z/0"})
            } else {
                json!({"type": "kill", "task": task, "reason": "surplus instance"})
            };
            if let Some(n) = incarnation {
                v["incarnation"] = json!(n);
            }
            v
        })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn stops_on_arbitrary_bytes(input in proptest::collection::vec(any::<u8>(), 0..400)) {
        check_stops(&input)?;
    }

    #[test]
    fn stops_on_token_soup(input in soup(STOP_TOKENS)) {
        check_stops(&input)?;
    }

    #[test]
    fn mutated_stops(
        stops in proptest::collection::vec(stop_json(), 1..4),
        json_edits in proptest::collection::vec((0..4usize, json_edit(STOP_KEYS)), 0..3),
        edits in proptest::collection::vec((0..4usize, edit()), 0..3),
    ) {
        check_stops(&mutated(&stops, &json_edits, &edits))?;
    }

    /// Valid stops are read as written, in order, with the other lines passed through.
    #[test]
    fn valid_stops_are_read_as_written(
        stops in proptest::collection::vec(stop_json(), 0..5),
    ) {
        let mut values = stops.clone();
        values.push(json!({"type": "pending", "task": "a/b/c/0"}));
        let input = lines_of(&values, &[]);
        let got = formic::reap::read_input(&input[..]);
        prop_assert!(got.is_ok(), "{:#}", got.err().unwrap());
        let (got, others) = got.unwrap();
        prop_assert_eq!(others, vec![serde_json::to_string(values.last().unwrap()).unwrap()]);
        prop_assert_eq!(got.len(), stops.len());
        for (i, (s, v)) in got.iter().zip(&stops).enumerate() {
            prop_assert_eq!(s.line, i as u64 + 1);
            prop_assert_eq!(&s.task, v["task"].as_str().unwrap());
            prop_assert_eq!(s.host.as_deref(), v["host"].as_str());
            prop_assert_eq!(s.incarnation.map(u64::from), v["incarnation"].as_u64());
            let preempt = v["type"] == "preempt";
            prop_assert_eq!(s.cause == formic::reap::Cause::Preempt, preempt);
        }
    }
}

// --- place and spec: launch's input, through the binary (its reader is private) ---

const PLACE_TOKENS: &[&str] = &[
    "{\"type\":\"place\",",
    "{\"type\":\"spec\",",
    "\"type\":\"place\"",
    "\"place\"",
    "\"spec\"",
    "\"task\"",
    "\"job\"",
    "\"instance\"",
    "\"host\"",
    "\"cpus\"",
    "\"ram_mb\"",
    "\"disk_mb\"",
    "\"gpus\"",
    "\"ports\"",
    "\"incarnation\"",
    "\"hash\"",
    "\"a/b/c\"",
    "\"a/b/c/0\"",
    "\"h1\"",
    "\"0123456789abcdef\"",
    "{\"http\":31000}",
    "{\"job\":\"a/b/c\",\"instances\":1,\"cmd\":[\"true\"]}",
];

const PLACE_KEYS: &[&str] = &[
    "type",
    "task",
    "job",
    "instance",
    "host",
    "cpus",
    "ram_mb",
    "disk_mb",
    "gpus",
    "ports",
    "spec",
    "incarnation",
    "hash",
    "place",
];

fn place_json() -> impl Strategy<Value = Value> {
    (
        task_id(),
        "[A-Za-z0-9][A-Za-z0-9.-]{0,10}",
        0.0..64.0f64,
        any::<u32>(),
        "[0-9a-f]{16}",
        proptest::collection::btree_map("[a-z]{1,6}", 1..=65535u16, 0..3),
    )
        .prop_map(|(task, host, cpus, ram, hash, ports)| {
            let (job, instance) = task.rsplit_once('/').unwrap();
            json!({"type": "place", "task": task, "job": job,
                   "instance": instance.parse::<u32>().unwrap(), "host": host, "cpus": cpus,
                   "ram_mb": ram, "disk_mb": 0, "gpus": 0, "ports": ports, "spec": hash})
        })
}

/// launch exits 0 having passed every line that is not a place or spec record through,
/// or refuses the batch (65, each bad line named) and leaves the state alone.
fn check_launch(input: &[u8]) -> Result<(), TestCaseError> {
    let dir = common::tempdir();
    let state = dir.path().join("state");
    // A state with a host, so that a place record that passed would have where to go.
    let host = common::host_line("h1", 4.0, 1024) + "\n";
    let out = common::run(tool("offer", &state).arg("add"), host.as_bytes());
    prop_assert_eq!(code(&out), 0, "{}", stderr(&out));
    let before = snapshot(&state);
    let out = common::run(tool("launch", &state).args(["--wait", "0"]), input);
    let records: Vec<_> = Reader::new(input).collect();
    let bad = records.iter().any(|r| {
        r.as_ref()
            .map_or(true, |r| matches!(r.kind(), "place" | "spec"))
    });
    if code(&out) == 65 {
        check_tool_refused("launch", &out, input)?;
        prop_assert!(bad, "refused good input: {}", stderr(&out));
        prop_assert!(
            snapshot(&state) == before,
            "a refused batch changed the state"
        );
    } else {
        prop_assert_eq!(code(&out), 0, "{}", stderr(&out));
        let want: String = records.into_iter().map(|r| r.unwrap().raw + "\n").collect();
        prop_assert_eq!(stdout(&out), want);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn launch_on_arbitrary_bytes(input in proptest::collection::vec(any::<u8>(), 0..300)) {
        check_launch(&input)?;
    }

    #[test]
    fn launch_on_token_soup(input in soup(PLACE_TOKENS)) {
        check_launch(&input)?;
    }

    #[test]
    fn launch_on_mutated_places(
        places in proptest::collection::vec(place_json(), 1..4),
        json_edits in proptest::collection::vec((0..4usize, json_edit(PLACE_KEYS)), 0..3),
        edits in proptest::collection::vec((0..4usize, edit()), 0..3),
    ) {
        check_launch(&mutated(&places, &json_edits, &edits))?;
    }
}

// --- host records: offer add, through the binary ---

proptest! {
    #![proptest_config(config(64))]

    /// `offer add` takes a batch whole or refuses it (65, each bad line named), the state
    /// left as it was.
    #[test]
    fn offer_add_on_mutated_hosts(
        hosts in proptest::collection::vec(crate::fuzz::host(), 1..4),
        json_edits in proptest::collection::vec((0..4usize, json_edit(HOST_KEYS)), 0..3),
        edits in proptest::collection::vec((0..4usize, edit()), 0..3),
    ) {
        let mut values: Vec<Value> = hosts.iter().map(|h| Value::Object(h.to_json())).collect();
        for (which, e) in &json_edits {
            let n = values.len();
            apply_json_edit(&mut values[which % n], e);
        }
        let input = lines_of(&values, &edits);
        let dir = common::tempdir();
        let state = dir.path().join("state");
        let seed = common::host_line("seed", 1.0, 1) + "\n";
        let out = common::run(tool("offer", &state).arg("add"), seed.as_bytes());
        prop_assert_eq!(code(&out), 0, "{}", stderr(&out));
        let before = snapshot(&state);
        let out = common::run(tool("offer", &state).arg("add"), &input);
        match code(&out) {
            0 => {}
            65 => {
                check_tool_refused("offer", &out, &input)?;
                prop_assert!(snapshot(&state) == before, "a refused batch changed the state");
            }
            other => prop_assert!(false, "offer add exited {other}: {}", stderr(&out)),
        }
    }
}

const HOST_KEYS: &[&str] = &[
    "type",
    "name",
    "cpus",
    "ram_mb",
    "disk_mb",
    "gpus",
    "ports",
    "attrs",
    "cpu_factor",
    "transport",
    "ssh",
    "root",
    "host",
    "local",
];

// --- a task's directory: status, spec.json, job.json ---

const STATUS_KEYS: &[&str] = &[
    "task",
    "incarnation",
    "supervisor",
    "pid",
    "start",
    "pid_start",
    "state",
    "exit",
    "signal",
    "since",
    "healthy",
    "health_failures",
    "reason",
    "uid",
    "limits",
    "memory",
    "cpu",
    "pids",
    "kill",
    "cgroup",
    "log_dropped",
    "RUNNING",
];

fn applied() -> impl Strategy<Value = formic::limits::Applied> {
    let how = proptest::sample::select(&["cgroup", "rlimit", "none"][..]);
    let kill = proptest::sample::select(&["cgroup.kill", "freezer", "process group"][..]);
    (how.clone(), how.clone(), how, kill).prop_map(|(memory, cpu, pids, kill)| {
        formic::limits::Applied {
            memory,
            cpu,
            pids,
            kill,
        }
    })
}

fn finite() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("finite", |x| x.is_finite())
}

fn status() -> impl Strategy<Value = taskdir::Status> {
    (
        (
            "(?s:.){0,24}",
            proptest::option::of(any::<u32>()),
            (any::<u32>(), any::<u64>()),
            proptest::option::of((any::<u32>(), any::<u64>())),
            prop_oneof![
                proptest::sample::select(&["STARTING", "RUNNING", "FAILED", "KILLED"][..])
                    .prop_map(String::from),
                "(?s:.){0,8}"
            ],
            proptest::option::of(any::<i32>()),
            proptest::option::of(any::<i32>()),
        ),
        (
            finite(),
            proptest::option::of(any::<bool>()),
            any::<u32>(),
            proptest::option::of("(?s:.){0,24}"),
            proptest::option::of(any::<u32>()),
            proptest::option::of(applied()),
            any::<u64>(),
        ),
    )
        .prop_map(
            |(
                (task, incarnation, supervisor, pid, state, exit, signal),
                (since, healthy, health_failures, reason, uid, limits, log_dropped),
            )| taskdir::Status {
                task,
                incarnation,
                supervisor,
                pid,
                state,
                exit,
                signal,
                since,
                healthy,
                health_failures,
                reason,
                uid,
                limits,
                log_dropped,
            },
        )
}

const SPEC_KEYS: &[&str] = &[
    "task",
    "incarnation",
    "argv",
    "env",
    "user",
    "dynamic_ids",
    "allow_root",
    "grace_s",
    "log_max_bytes",
    "log_group",
    "limits",
    "cpus",
    "ram_mb",
    "pids",
    "health",
    "port",
    "path",
    "cmd",
    "interval_s",
    "timeout_s",
    "failures",
];

fn spec() -> impl Strategy<Value = Spec> {
    let text = || "(?s:.){0,16}";
    let health = (
        any::<u16>(),
        text(),
        proptest::collection::vec(text(), 0..3),
        finite(),
        finite(),
        any::<u32>(),
    )
        .prop_map(
            |(port, path, cmd, interval_s, timeout_s, failures)| Health {
                port,
                path,
                cmd,
                interval_s,
                timeout_s,
                failures,
            },
        );
    (
        (
            text(),
            any::<u32>(),
            proptest::collection::vec(text(), 1..4),
            proptest::collection::btree_map(text(), text(), 0..4),
            proptest::option::of(text()),
            proptest::option::of((any::<u32>(), any::<u32>())),
            any::<bool>(),
        ),
        (
            finite(),
            any::<u64>(),
            proptest::option::of(text()),
            proptest::option::of(health),
            (any::<u32>(), any::<u64>(), any::<u32>()),
        ),
    )
        .prop_map(
            |(
                (task, incarnation, argv, env, user, dynamic_ids, allow_root),
                (grace_s, log_max_bytes, log_group, health, (cpus, ram_mb, pids)),
            )| Spec {
                task,
                incarnation,
                // Varied with the incarnation: 0 (left out of the file) and large.
                run: u64::from(incarnation) << 24,
                argv,
                env: env.into_iter().collect(),
                user,
                dynamic_ids,
                allow_root,
                grace_s,
                log_max_bytes,
                log_group,
                health,
                limits: formic::limits::Limits { cpus, ram_mb, pids },
            },
        )
}

const JOB_KEYS: &[&str] = &[
    "service",
    "restart",
    "max_failures",
    "backoff_s",
    "max_backoff_s",
    "job",
];

/// What reap reads of job.json is a usable policy whatever the file says: backoffs finite
/// and never negative.
fn check_policy(v: &Value) -> Result<(), TestCaseError> {
    // As reap reads job.json: the typed job spec, or the defaults when it is refused.
    let p = formic::job::parse_text(&v.to_string(), "job.json")
        .map(|job| formic::reap::Policy::of(&job))
        .unwrap_or_default();
    for failures in [0, 1, 2, 30, 61, u16::MAX] {
        let b = p.backoff(failures);
        prop_assert!(
            b.is_finite() && b >= 0.0,
            "{p:?}: backoff({failures}) = {b}"
        );
    }
    Ok(())
}

/// A status file holding `v`, as reap and launch read it.
fn read_status(v: &Value) -> Result<taskdir::Status, String> {
    taskdir::Status::parse(&v.to_string())
}

/// spec.json holding `v`, as formic-supervise and reap read it.
fn read_spec(v: &Value) -> Result<Spec, String> {
    Spec::parse(&v.to_string())
}

/// A status read from `v`, if it is one, holds every number of `v` as given, and prints
/// and reads back as itself.
fn check_status(v: &Value) -> Result<(), TestCaseError> {
    if let Ok(s) = read_status(v) {
        numbers_kept(v, &s.to_json(), "")?;
        prop_assert_eq!(read_status(&s.to_json()), Ok(s));
    }
    Ok(())
}

/// A spec read from `v`, if it is one, has a program to run, holds every number of `v` as
/// given, and prints and reads back as itself.
fn check_spec(v: &Value) -> Result<(), TestCaseError> {
    if let Ok(s) = read_spec(v) {
        prop_assert!(!s.argv.is_empty());
        numbers_kept(v, &s.to_json(), "")?;
        prop_assert_eq!(read_spec(&s.to_json()), Ok(s));
    }
    Ok(())
}

/// What a field of a task directory's file holds: the numbers outside it must be refused,
/// never read as another pid, port or uid.
#[derive(Clone, Copy, Debug)]
enum Int {
    U16,
    U32,
    I32,
    U64,
}

/// The whole-number fields of a status file.
const STATUS_INTS: &[(&str, Int)] = &[
    ("incarnation", Int::U32),
    ("supervisor.pid", Int::U32),
    ("supervisor.start", Int::U64),
    ("pid", Int::U32),
    ("pid_start", Int::U64),
    ("exit", Int::I32),
    ("signal", Int::I32),
    ("health_failures", Int::U32),
    ("uid", Int::U32),
    ("log_dropped", Int::U64),
];

/// The whole-number fields of spec.json.
const SPEC_INTS: &[(&str, Int)] = &[
    ("incarnation", Int::U32),
    ("dynamic_ids[0]", Int::U32),
    ("dynamic_ids[1]", Int::U32),
    ("log_max_bytes", Int::U64),
    ("limits.cpus", Int::U32),
    ("limits.ram_mb", Int::U64),
    ("limits.pids", Int::U32),
    ("health.port", Int::U16),
    ("health.failures", Int::U32),
];

/// A number `int` cannot hold: past either end, or not whole.
fn beyond(int: Int) -> BoxedStrategy<Value> {
    let (low, high): (i64, u64) = match int {
        Int::U16 => (0, u16::MAX as u64),
        Int::U32 => (0, u32::MAX as u64),
        Int::I32 => (i32::MIN as i64, i32::MAX as u64),
        Int::U64 => (0, u64::MAX),
    };
    let mut out = vec![
        (i64::MIN..low).prop_map(Value::from).boxed(),
        (-1_000_000i64..1_000_000)
            .prop_map(|n| Value::from(n as f64 + 0.5))
            .boxed(),
    ];
    if high < u64::MAX {
        out.push((high + 1..=u64::MAX).prop_map(Value::from).boxed());
        out.push(Just(Value::from(high + 1)).boxed());
    }
    proptest::strategy::Union::new(out).boxed()
}

/// A whole-number field of `fields` and a number it cannot hold.
fn out_of_range(
    fields: &'static [(&'static str, Int)],
) -> impl Strategy<Value = (&'static str, Value)> {
    proptest::sample::select(fields).prop_flat_map(|(path, int)| (Just(path), beyond(int)))
}

/// `value` put into `v` at `path` as serde names it (`health.port`, `dynamic_ids[0]`),
/// making the objects and arrays on the way.
fn put(v: &mut Value, path: &str, value: Value) {
    let mut at = v;
    for part in path.split('.') {
        let (key, index) = match part.split_once('[') {
            Some((key, i)) => (key, Some(i.trim_end_matches(']').parse::<usize>().unwrap())),
            None => (part, None),
        };
        at = &mut at[key];
        if let Some(i) = index {
            if at.as_array().is_none_or(|a| a.len() <= i) {
                *at = json!(vec![1; i + 1]);
            }
            at = &mut at[i];
        }
    }
    *at = value;
}

/// Every number of `given` is where it was in `read` (the value read, printed again),
/// unchanged: a number that a field cannot hold, or in a place no field is, was not read.
fn numbers_kept(given: &Value, read: &Value, at: &str) -> Result<(), TestCaseError> {
    match (given, read) {
        (Value::Number(g), Value::Number(r)) => {
            let same = match g.is_f64() || r.is_f64() {
                true => g.as_f64() == r.as_f64(),
                false => g == r,
            };
            prop_assert!(same, "{at}: {g} was read as {r}");
        }
        (Value::Number(g), r) => prop_assert!(false, "{at}: {g} was read as {r}"),
        (Value::Array(g), r) => {
            for (i, g) in g.iter().enumerate() {
                numbers_kept(g, r.get(i).unwrap_or(&Value::Null), &format!("{at}[{i}]"))?;
            }
        }
        (Value::Object(g), r) => {
            for (k, g) in g {
                numbers_kept(g, r.get(k).unwrap_or(&Value::Null), &format!("{at}.{k}"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn status_from_any_json(v in json_value(STATUS_KEYS)) {
        check_status(&v)?;
    }

    #[test]
    fn status_from_mutated_status(
        s in status(),
        edits in proptest::collection::vec(json_edit(STATUS_KEYS), 1..4),
    ) {
        let mut v = s.to_json();
        for e in &edits {
            apply_json_edit(&mut v, e);
        }
        check_status(&v)?;
    }

    /// A number a field of the status cannot hold is refused, never read as another: the
    /// status file is an error naming itself and the field.
    #[test]
    fn status_with_a_number_out_of_range(
        s in status(),
        (path, bad) in out_of_range(STATUS_INTS),
    ) {
        let mut v = s.to_json();
        put(&mut v, path, bad.clone());
        let dir = common::tempdir();
        let file = dir.path().join("status");
        std::fs::write(&file, v.to_string()).unwrap();
        let got = taskdir::Status::read(dir.path()).map_err(|e| format!("{e:#}"));
        let named = format!("{}: field \"{path}\": ", file.display());
        prop_assert!(
            got.as_ref().is_err_and(|e| e.starts_with(&named)),
            "{} = {}: {:?}", path, bad, got
        );
    }

    /// A status file whatever its bytes: read, or an error, or "no status".
    #[test]
    fn status_file_of_arbitrary_bytes(bytes in soup(STATUS_KEYS)) {
        let dir = common::tempdir();
        std::fs::write(dir.path().join("status"), &bytes).unwrap();
        let _ = taskdir::Status::read(dir.path());
    }

    /// What the supervisor writes is what reap and launch read, through the file's text.
    #[test]
    fn status_round_trips(s in status()) {
        let dir = common::tempdir();
        s.write(dir.path()).unwrap();
        prop_assert_eq!(taskdir::Status::read(dir.path()).unwrap(), Some(s));
    }

    #[test]
    fn spec_from_any_json(v in json_value(SPEC_KEYS)) {
        check_spec(&v)?;
    }

    #[test]
    fn spec_from_mutated_spec(
        s in spec(),
        edits in proptest::collection::vec(json_edit(SPEC_KEYS), 1..4),
    ) {
        let mut v = s.to_json();
        for e in &edits {
            apply_json_edit(&mut v, e);
        }
        check_spec(&v)?;
    }

    /// A number a field of spec.json cannot hold is refused, never read as another, and
    /// the refusal names the field.
    #[test]
    fn spec_with_a_number_out_of_range(s in spec(), (path, bad) in out_of_range(SPEC_INTS)) {
        let mut v = s.to_json();
        put(&mut v, path, bad.clone());
        let got = read_spec(&v);
        let named = format!("field \"{path}\": ");
        prop_assert!(
            got.as_ref().is_err_and(|e| e.starts_with(&named)),
            "{} = {}: {:?}", path, bad, got
        );
    }

    /// spec.json as launch writes it is what the supervisor and reap read.
    #[test]
    fn spec_round_trips(s in spec()) {
        prop_assert_eq!(Spec::parse(&s.to_json().to_string()), Ok(s));
    }

    #[test]
    fn job_json_from_any_json(v in json_value(JOB_KEYS)) {
        check_policy(&v)?;
    }

    #[test]
    fn job_json_from_mutated_policy(
        service in any::<bool>(),
        max_failures in any::<u64>(),
        backoff in 0.0..1e6f64,
        max_backoff in 0.0..1e6f64,
        edits in proptest::collection::vec(json_edit(JOB_KEYS), 1..4),
    ) {
        let mut v = json!({"job": "a/b/c", "service": service, "restart": {
            "max_failures": max_failures, "backoff_s": backoff, "max_backoff_s": max_backoff}});
        for e in &edits {
            apply_json_edit(&mut v, e);
        }
        check_policy(&v)?;
    }
}

// --- serverset member data ---

const MEMBER_KEYS: &[&str] = &[
    "serviceEndpoint",
    "additionalEndpoints",
    "host",
    "port",
    "shard",
    "status",
    "ALIVE",
    "DEAD",
];

/// A cluster's worth of members: hosts with an address (or none), announced jobs with
/// named ports, and their running, healthy tasks.
#[derive(Clone, Debug)]
struct Fleet {
    hosts: Vec<(Option<String>, bool)>,
    jobs: Vec<(Vec<String>, u8)>,
    tasks: Vec<(Index, Index, u32, [u16; MAX_PORTS])>,
}

fn fleet() -> impl Strategy<Value = Fleet> {
    let host = (proptest::option::of("\\PC{1,30}"), any::<bool>());
    let job = (
        proptest::collection::btree_set("[A-Za-z_][A-Za-z0-9_-]{0,10}", 1..=MAX_PORTS),
        any::<u8>(),
    )
        .prop_map(|(names, p)| {
            let names: Vec<String> = names.into_iter().collect();
            let primary = p % names.len() as u8;
            (names, primary)
        });
    let ports = proptest::array::uniform8(prop_oneof![1 => Just(0u16), 4 => 1..=65535u16]);
    (
        proptest::collection::vec(host, 1..4),
        proptest::collection::vec(job, 1..4),
        proptest::collection::vec((any::<Index>(), any::<Index>(), any::<u32>(), ports), 0..8),
    )
        .prop_map(|(hosts, jobs, tasks)| Fleet { hosts, jobs, tasks })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn member_data_of_arbitrary_bytes(
        name in "(?s:.){0,12}",
        data in prop_oneof![proptest::collection::vec(any::<u8>(), 0..200), soup(MEMBER_KEYS)],
    ) {
        let _ = formic::announce::parse_member(&name, &data);
    }

    #[test]
    fn member_data_mutated(
        edits in proptest::collection::vec(json_edit(MEMBER_KEYS), 1..4),
        port in 1..=65535u16,
    ) {
        let mut v = json!({"serviceEndpoint": {"host": "h1", "port": port},
            "additionalEndpoints": {"http": {"host": "h1", "port": port}}, "shard": 3,
            "status": "ALIVE"});
        for e in &edits {
            apply_json_edit(&mut v, e);
        }
        if let Some(e) = formic::announce::parse_member("member_1", v.to_string().as_bytes()) {
            prop_assert_eq!(v["status"].as_str(), Some("ALIVE"));
            prop_assert_eq!(Some(e.host.as_str()), v["serviceEndpoint"]["host"].as_str());
            prop_assert_eq!(Some(e.port as u64), v["serviceEndpoint"]["port"].as_u64());
        }
    }

    /// The member announce writes for a task is read back, by what clients and `announce
    /// --resolve` use, as the task's endpoints.
    #[test]
    fn member_data_round_trips(f in fleet()) {
        let mut view = formic::state::View::default();
        for (i, (address, ssh)) in f.hosts.iter().enumerate() {
            view.hosts.set(i as u32, Some(Host {
                name: format!("h{i}"),
                cpus: 1000,
                ram_mb: 1,
                disk_mb: 0,
                gpus: 0,
                ports: vec![],
                attrs: address.iter().map(|a| ("address".to_string(), a.clone())).collect(),
                cpu_factor: 1.0,
                transport: if *ssh { Transport::Ssh } else { Transport::Local },
                maintenance: Maintenance::none(),
                access: Default::default(),
                liveness: Default::default(),
            }));
        }
        for (j, (names, primary)) in f.jobs.iter().enumerate() {
            view.jobs.set(j as u32, Some(Job {
                key: format!("r/e/j{j}"),
                ports: names.clone(),
                announce: Some(Announce { path: format!("/formic/j{j}"), primary: *primary }),
                rollout: Default::default(),
                runs: Default::default(),
                counts: Default::default(),
            }));
        }
        let mut expected = BTreeMap::new();
        for (slot, (h, j, instance, ports)) in f.tasks.iter().enumerate() {
            let (h, j) = (h.index(f.hosts.len()), j.index(f.jobs.len()));
            let mut t = Task::new(j as u32, *instance);
            t.host = h as u32;
            t.state = TaskState::Running;
            t.healthy = true;
            t.ports = *ports;
            view.tasks.set(slot as u32, Some(t));
            let (names, primary) = &f.jobs[j];
            if ports[*primary as usize] == 0 {
                continue; // no endpoint to announce
            }
            let address = match &f.hosts[h] {
                (Some(a), _) => a.clone(),
                (None, false) => "this-host".to_string(),
                (None, true) => format!("h{h}"),
            };
            let additional: Map<String, Value> = names
                .iter()
                .zip(ports)
                .filter(|(_, p)| **p != 0)
                .map(|(n, p)| (n.clone(), json!({"host": address, "port": p})))
                .collect();
            expected.insert(slot as u32, formic::announce::Endpoint {
                member: format!("member_{slot}"),
                shard: Some(*instance as u64),
                host: address.clone(),
                port: ports[*primary as usize],
                additional,
            });
        }
        let members = formic::announce::members(&view, "this-host");
        let got: BTreeMap<u32, formic::announce::Endpoint> = members
            .iter()
            .map(|(slot, m)| {
                let e = formic::announce::parse_member(&format!("member_{slot}"), &m.data);
                (*slot, e.unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(&m.data))))
            })
            .collect();
        prop_assert_eq!(got, expected);
    }
}

/// formic-supervise refuses a spec.json with a number out of range (a health check on
/// port 70000 would have been one on port 4464) as it refuses any spec.json that is not a
/// task spec: status 65, one line naming the file and the field, nothing started.
#[test]
fn a_port_out_of_range_in_spec_json_is_refused_by_the_supervisor() {
    let dir = common::tempdir();
    let tdir = dir.path().join("t");
    taskdir::create(&tdir).unwrap();
    let mut v = common::spec("a/b/c/0", &["sh", "-c", "echo started"]).to_json();
    v["health"] = json!({"port": 70000, "path": "/"});
    std::fs::write(tdir.join("spec.json"), v.to_string()).unwrap();
    let out = common::run(
        std::process::Command::new(common::bin("formic-supervise")).arg(&tdir),
        b"",
    );
    let tdir = std::fs::canonicalize(&tdir).unwrap();
    assert_eq!(
        (code(&out), stderr(&out)),
        (
            65,
            format!(
                "formic-supervise: {}/spec.json: field \"health.port\": invalid value: \
                 integer `70000`, expected u16\n",
                tdir.display()
            )
        )
    );
    assert!(!tdir.join("logs/1/stdout").exists(), "it ran");
}

/// spec.json's durations are the job's health block as written (launch copies
/// `interval_s` and `timeout_s` unchecked) and launch's --grace: a huge one must be an
/// error or a clamp, not a supervisor that panics (exit 101) before it supervises.
#[test]
fn a_huge_health_interval_does_not_crash_the_supervisor() {
    let dir = common::tempdir();
    let tdir = dir.path().join("t");
    taskdir::create(&tdir).unwrap();
    let mut spec = common::spec("a/b/c/0", &["true"]);
    spec.health = Some(Health {
        port: 0,
        path: "/".into(),
        cmd: vec!["true".into()],
        interval_s: 1e19,
        timeout_s: 1.0,
        failures: 3,
    });
    std::fs::write(tdir.join("spec.json"), spec.to_json().to_string()).unwrap();
    let out = common::run(
        std::process::Command::new(common::bin("formic-supervise")).arg(&tdir),
        b"",
    );
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    assert_ne!(code(&out), 101);
}
