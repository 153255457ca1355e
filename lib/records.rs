//! Records on pipes: one JSON object per line, each with a "type".
//!
//! A tool reads every line, acts on the types it knows and passes the others through
//! unchanged (the original bytes, not a re-serialisation), so tools compose as filters.
//! Lines are bounded: a line longer than [`MAX_LINE`] is consumed without being stored and
//! reported as bad input, so one huge line cannot exhaust memory.

use std::io::{self, BufRead, Write};

use anyhow::{Context, Result};
use serde_json::{Map, Value};

use crate::exit::bad_input;

/// The longest line a tool accepts. A host or job record is a few hundred bytes; a megabyte
/// leaves room for large attribute sets while keeping a malicious line from costing much.
pub const MAX_LINE: usize = 1 << 20;

/// One parsed input line.
#[derive(Debug, Clone)]
pub struct Record {
    /// 1-based line number in the input, for error messages.
    pub line: u64,
    /// The line as it came, without its newline: what pass-through writes back.
    pub raw: String,
    pub fields: Map<String, Value>,
}

impl Record {
    pub fn kind(&self) -> &str {
        self.fields
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    pub fn get(&self) -> Fields<'_> {
        Fields(&self.fields)
    }
}

/// Reads records from a byte stream. Each item is one line: a record, or a bad-input error
/// naming the line; after a bad line the reader goes on with the next one, so a tool can
/// report every bad line of a batch at once. An I/O error ends the iteration.
pub struct Reader<R> {
    input: R,
    line: u64,
    max_line: usize,
    failed: bool,
}

impl<R: BufRead> Reader<R> {
    pub fn new(input: R) -> Self {
        Reader {
            input,
            line: 0,
            max_line: MAX_LINE,
            failed: false,
        }
    }

    pub fn with_max_line(mut self, max: usize) -> Self {
        self.max_line = max;
        self
    }

    /// Reads one line into `buf` (without the newline). Returns false at end of input, and
    /// `Err(None)` when the line exceeded the bound (its bytes were consumed and dropped).
    fn read_line(&mut self, buf: &mut Vec<u8>) -> io::Result<Result<bool, usize>> {
        let mut too_long = false;
        let mut total = 0usize;
        loop {
            let chunk = match self.input.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                return Ok(if too_long { Err(total) } else { Ok(total > 0) });
            }
            // memchr: a line at a time, byte by byte, was a tenth of pack's offer reading.
            let (part, done) = match memchr::memchr(b'\n', chunk) {
                Some(i) => (&chunk[..i], i + 1),
                None => (chunk, chunk.len()),
            };
            total += part.len();
            if total > self.max_line {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(part);
            }
            let ended = done != part.len();
            self.input.consume(done);
            if ended {
                return Ok(if too_long { Err(total) } else { Ok(true) });
            }
        }
    }
}

impl<R: BufRead> Reader<R> {
    /// The next line that is not blank, into `buf` (without its newline or a trailing `\r`),
    /// with its number; None at the end of input. The caller keeps one buffer for every
    /// line and may try a cheaper parse before [`parse_line`].
    pub fn next_line(&mut self, buf: &mut Vec<u8>) -> Option<Result<u64>> {
        loop {
            if self.failed {
                return None;
            }
            buf.clear();
            let outcome = match self.read_line(buf) {
                Ok(o) => o,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(anyhow::Error::from(e).context("reading input")));
                }
            };
            self.line += 1;
            let line = self.line;
            match outcome {
                Ok(false) => return None,
                Err(len) => {
                    return Some(Err(bad_input(format!(
                        "line {line}: longer than {} bytes ({len} bytes); not read",
                        self.max_line
                    ))))
                }
                Ok(true) => {}
            }
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                continue; // blank lines separate nothing and mean nothing
            }
            return Some(Ok(line));
        }
    }
}

impl<R: BufRead> Iterator for Reader<R> {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        let mut buf = Vec::new();
        Some(match self.next_line(&mut buf)? {
            Ok(line) => parse_line(line, buf),
            Err(e) => Err(e),
        })
    }
}

/// Line `line` (as `next_line` left it) as a record, or a bad-input error naming the line.
pub fn parse_line(line: u64, buf: Vec<u8>) -> Result<Record> {
    let raw = String::from_utf8(buf).map_err(|e| {
        bad_input(format!(
            "line {line}: not UTF-8 (byte {})",
            e.utf8_error().valid_up_to() + 1
        ))
    })?;
    let value: Value = serde_json::from_str(&raw).map_err(|e| {
        let why = e.to_string();
        let why = why
            .rsplit_once(" at line ")
            .map_or(why.as_str(), |(w, _)| w);
        bad_input(format!(
            "line {line}: not valid JSON at column {}: {why}",
            e.column()
        ))
    })?;
    let Value::Object(fields) = value else {
        return Err(bad_input(format!("line {line}: expected a JSON object")));
    };
    match fields.get("type") {
        Some(Value::String(_)) => Ok(Record { line, raw, fields }),
        Some(_) => Err(bad_input(format!(
            "line {line}: field \"type\" must be a string"
        ))),
        None => Err(bad_input(format!("line {line}: no \"type\" field"))),
    }
}

/// Typed access to a record's fields; each error names the field.
#[derive(Clone, Copy)]
pub struct Fields<'a>(pub &'a Map<String, Value>);

impl<'a> Fields<'a> {
    pub fn has(&self, name: &str) -> bool {
        self.0.get(name).is_some_and(|v| !v.is_null())
    }

    pub fn str(&self, name: &str) -> Result<Option<&'a str>, String> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(format!(
                "field \"{name}\": expected a string, got {}",
                show(v)
            )),
        }
    }

    /// A finite number.
    pub fn f64(&self, name: &str) -> Result<Option<f64>, String> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(x) if x.is_finite() => Ok(Some(x)),
                _ => Err(format!("field \"{name}\": {n} is out of range")),
            },
            Some(v) => Err(format!(
                "field \"{name}\": expected a number, got {}",
                show(v)
            )),
        }
    }

    /// A whole number from 0 to `max`.
    pub fn count(&self, name: &str, max: u64) -> Result<Option<u64>, String> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(x) => at_most(name, x, max).map(Some),
                None => Err(format!(
                    "field \"{name}\": expected a whole number ≥ 0, got {n}"
                )),
            },
            Some(v) => Err(format!(
                "field \"{name}\": expected a whole number, got {}",
                show(v)
            )),
        }
    }

    pub fn array(&self, name: &str) -> Result<Option<&'a Vec<Value>>, String> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(format!(
                "field \"{name}\": expected an array, got {}",
                show(v)
            )),
        }
    }

    pub fn object(&self, name: &str) -> Result<Option<&'a Map<String, Value>>, String> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o)),
            Some(v) => Err(format!(
                "field \"{name}\": expected an object, got {}",
                show(v)
            )),
        }
    }

    /// Rejects any field not in `known`: a typo such as "ram" for "ram_mb" must not be
    /// silently ignored when it would change where work lands.
    pub fn only(&self, known: &[&str]) -> Result<(), String> {
        match self.0.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(format!(
                "unknown field \"{k}\" (known: {})",
                known.join(", ")
            )),
            None => Ok(()),
        }
    }
}

/// Whole number `x` of field `name` when it is at most `max`.
pub fn at_most(name: &str, x: u64, max: u64) -> Result<u64, String> {
    if x <= max {
        Ok(x)
    } else {
        Err(format!("field \"{name}\": {x} is larger than {max}"))
    }
}

/// A short rendering of a JSON value for an error message.
pub fn show(v: &Value) -> String {
    let s = match v {
        Value::String(_) => format!("string {v}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
        other => other.to_string(),
    };
    if s.len() > 40 {
        format!("{}…", &s[..s.floor_char_boundary(40)])
    } else {
        s
    }
}

/// Writes records, one per line, to a buffered sink.
pub struct Writer<W: Write> {
    out: io::BufWriter<W>,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Self {
        Writer {
            out: io::BufWriter::with_capacity(1 << 16, out),
        }
    }

    pub fn record(&mut self, value: &Value) -> Result<()> {
        // serde_json wraps the writer's io::Error and hides it from the error chain; turn
        // it back into the io::Error so a closed stdout is still seen as a broken pipe.
        serde_json::to_writer(&mut self.out, value)
            .map_err(io::Error::from)
            .context("writing output")?;
        self.out.write_all(b"\n").context("writing output")
    }

    /// Writes a line as it came in (pass-through).
    pub fn raw(&mut self, line: &str) -> Result<()> {
        self.out
            .write_all(line.as_bytes())
            .context("writing output")?;
        self.out.write_all(b"\n").context("writing output")
    }

    pub fn text(&mut self, text: &str) -> Result<()> {
        self.out
            .write_all(text.as_bytes())
            .context("writing output")
    }

    /// Hands what is buffered to the sink, for output that must be seen as it happens.
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().context("writing output")
    }

    pub fn finish(mut self) -> Result<()> {
        self.out.flush().context("writing output")
    }
}

impl Writer<io::Stdout> {
    pub fn stdout() -> Self {
        Writer::new(io::stdout())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(input: &str, max: usize) -> Vec<std::result::Result<Record, String>> {
        Reader::new(input.as_bytes())
            .with_max_line(max)
            .map(|r| r.map_err(|e| e.to_string()))
            .collect()
    }

    #[test]
    fn lines_are_numbered_and_blank_lines_skipped() {
        let got = read("{\"type\":\"a\"}\n\n{\"type\":\"b\",\"x\":1}\r\n", 100);
        assert_eq!(got.len(), 2);
        let b = got[1].as_ref().unwrap();
        assert_eq!(
            (b.line, b.kind(), b.raw.as_str()),
            (3, "b", "{\"type\":\"b\",\"x\":1}")
        );
    }

    #[test]
    fn long_line_is_an_error_and_reading_goes_on() {
        let long = format!("{{\"type\":\"{}\"}}", "x".repeat(50));
        let got = read(&format!("{long}\n{{\"type\":\"ok\"}}\n"), 20);
        assert!(got[0]
            .as_ref()
            .unwrap_err()
            .starts_with("line 1: longer than 20 bytes"));
        assert_eq!(got[1].as_ref().unwrap().line, 2);
    }

    #[test]
    fn malformed_lines_name_their_line() {
        let got = read(
            "{\"type\":\"a\"}\n[1]\n{\"type\":3}\n{\"x\":1}\n{bad\n\"\0\"\n",
            100,
        );
        let errs: Vec<_> = got
            .iter()
            .skip(1)
            .map(|r| r.as_ref().unwrap_err().clone())
            .collect();
        assert!(errs[0].starts_with("line 2: expected a JSON object"));
        assert!(errs[1].starts_with("line 3: field \"type\""));
        assert!(errs[2].starts_with("line 4: no \"type\""));
        assert!(errs[3].starts_with("line 5: not valid JSON at column 2"));
        assert!(errs[4].starts_with("line 6: not valid JSON"), "{}", errs[4]);
    }

    #[test]
    fn last_line_without_newline_is_read() {
        let got = read("{\"type\":\"a\"}", 100);
        assert_eq!(got.len(), 1);
        assert!(got[0].is_ok());
    }
}
