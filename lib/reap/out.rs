//! reap's events: one record per committed transition, or a line for a person.

use std::io::{self, Write};

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};

use super::decide::Event;

/// Events go to standard output as records, or as lines for a person on a terminal.
pub(super) struct Out {
    pub(super) human: bool,
    pub(super) out: io::BufWriter<io::Stdout>,
}

impl Out {
    pub(super) fn event(&mut self, task: &str, host: &str, e: &Event, ts: f64) -> Result<()> {
        let line = if self.human {
            let mut l = format!(
                "{}  {:<10}  {}  on {}",
                clock(ts),
                e.state.name(),
                task,
                host
            );
            if let Some(x) = e.exit {
                l.push_str(&format!("  exit {x}"));
            }
            if let Some(r) = e.words() {
                l.push_str(&format!("  ({r})"));
            }
            if let Some(nb) = e.not_before {
                l.push_str(&format!("  until {}", clock(nb)));
            }
            l
        } else {
            let mut m = Map::new();
            m.insert("type".into(), json!("event"));
            m.insert("task".into(), json!(task));
            m.insert("host".into(), json!(host));
            m.insert("state".into(), json!(e.state.name()));
            m.insert("exit".into(), json!(e.exit));
            m.insert("ts".into(), json!(ts));
            if let Some(r) = e.words() {
                m.insert("reason".into(), json!(r));
            }
            if let Some(nb) = e.not_before {
                m.insert("not_before".into(), json!(nb));
            }
            Value::Object(m).to_string()
        };
        self.line(&line)
    }

    pub(super) fn line(&mut self, line: &str) -> Result<()> {
        self.out
            .write_all(line.as_bytes())
            .and_then(|()| self.out.write_all(b"\n"))
            .context("writing output")
    }

    pub(super) fn flush(&mut self) -> Result<()> {
        self.out.flush().context("writing output")
    }
}

/// Time of day, UTC, to the millisecond.
fn clock(ts: f64) -> String {
    let ms = (ts * 1000.0).round() as u64;
    let s = ms / 1000 % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        ms % 1000
    )
}
