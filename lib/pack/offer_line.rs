//! The fast way to read an offer line: straight into a typed struct that borrows the line's
//! strings, with no JSON tree (`serde_json::Value`, a map per line) built in between. At
//! 100k offers that tree, its allocations and its hashing were most of pack's parse time.
//!
//! It only takes what it can vouch for: a line that fails here (not an offer, an escape in
//! a string, a repeated key, a wrong type, a value out of range, a host offered twice...)
//! goes the slow way, `Fleet::add_offer`, which accepts or names the error as it always
//! did. So this path must accept nothing the slow one refuses, and add the same host: the
//! checks are the slow path's own (`crate::host`, `records::at_most`, `fleet`), and
//! `tests::fast_and_slow_agree` feeds both random lines.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::host::{self, Capacity, DEDICATED};
use crate::records::at_most;

use super::fleet::{self, Fleet, Offer};

/// Adds the offer on `line` (a line as `records::Reader::next_line` leaves it) when it is a
/// plain one; false, with the fleet unchanged, when the line must go the slow way.
pub fn try_add(fleet: &mut Fleet, line: &[u8]) -> bool {
    match parse(line).and_then(|l| check(l, fleet)) {
        Some(offer) => {
            fleet.add(offer);
            true
        }
        None => false,
    }
}

/// An offer line, its fields as `fleet::OFFER_FIELDS` names them. A field given twice or
/// not known fails the parse. Strings are borrowed, so one with an escape fails it too.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a str>,
    #[serde(borrow)]
    host: Option<&'a str>,
    cpus: Option<f64>,
    ram_mb: Option<u64>,
    disk_mb: Option<u64>,
    gpus: Option<u64>,
    /// u16: a larger bound fails the parse (the slow way names it).
    ports: Option<Vec<(u16, u16)>>,
    #[serde(borrow)]
    attrs: Option<AttrList<'a>>,
    cpu_factor: Option<f64>,
    #[serde(borrow)]
    maintenance: Option<&'a str>,
}

fn parse(line: &[u8]) -> Option<Line<'_>> {
    // The slow way names the byte that is not UTF-8.
    let text = std::str::from_utf8(line).ok()?;
    serde_json::from_str(text).ok()
}

/// The offer `line` gives, checked as `Fleet::add_offer` checks it; None for anything
/// that is not a plain offer the fleet can take.
fn check<'a>(line: Line<'a>, fleet: &Fleet) -> Option<Offer<'a>> {
    if line.kind? != "offer" {
        return None;
    }
    let name = line.host?;
    fleet.check_new_host(name).ok()?;
    let cap = Capacity {
        cpus: host::millicores(host::check_cpus(line.cpus, true).ok()?),
        ram_mb: at_most("ram_mb", line.ram_mb?, host::RAM_MB_MAX).ok()?,
        disk_mb: at_most("disk_mb", line.disk_mb.unwrap_or(0), host::DISK_MB_MAX).ok()?,
        gpus: at_most("gpus", line.gpus.unwrap_or(0), host::GPUS_MAX).ok()? as u32,
        cpu_factor: host::check_cpu_factor(line.cpu_factor).ok()?,
        ports: ports(line.ports.unwrap_or_default())?,
    };
    Some(Offer {
        name,
        cap,
        attrs: attrs(line.attrs.map_or(Vec::new(), |a| a.0))?,
        mode: fleet::maintenance(line.maintenance).ok()?,
    })
}

fn ports(ranges: Vec<(u16, u16)>) -> Option<Vec<(u16, u16)>> {
    for &(lo, hi) in &ranges {
        host::port_range(lo as u64, hi as u64).ok()?;
    }
    host::sorted_apart(ranges).ok()
}

/// More attributes than this go the slow way: the check for repeated keys is quadratic.
const MANY_ATTRS: usize = 32;

/// The attributes as `Fleet::add` takes them; None when a key repeats (the slow way keeps
/// the last value), is `host`, or a value is not allowed.
fn attrs<'a>(list: Vec<(&'a str, AttrValue<'a>)>) -> Option<Vec<(&'a str, Cow<'a, str>)>> {
    let repeats = |i: usize| list[..i].iter().any(|(k, _)| *k == list[i].0);
    if list.len() > MANY_ATTRS || (0..list.len()).any(repeats) {
        return None;
    }
    if list.iter().any(|(k, _)| *k == "host") {
        return None; // fleet::HOST_RESERVED
    }
    list.into_iter()
        .map(|(k, v)| Some((k, value(k, v)?)))
        .collect()
}

/// An attribute's value as interned: a string as it is, the values of `dedicated` checked,
/// sorted, without repeats and joined by `,` (as `host::attr_values` and `add_offer` do).
fn value<'a>(key: &str, v: AttrValue<'a>) -> Option<Cow<'a, str>> {
    let list = match v {
        AttrValue::One(s) if key != DEDICATED => return Some(Cow::Borrowed(s)),
        AttrValue::One(s) => vec![s],
        AttrValue::List(items) => {
            host::check_list(key, items.len()).ok()?;
            items
        }
    };
    let owned = list.into_iter().map(str::to_string).collect();
    Some(Cow::Owned(host::dedicated_values(owned).ok()?.join(",")))
}

/// The `attrs` object, its entries in the order given.
struct AttrList<'a>(Vec<(&'a str, AttrValue<'a>)>);

/// An attribute's value: a string, or a list of strings.
enum AttrValue<'a> {
    One(&'a str),
    List(Vec<&'a str>),
}

impl<'de: 'a, 'a> Deserialize<'de> for AttrList<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(AttrListVisitor)
    }
}

struct AttrListVisitor;

impl<'de> Visitor<'de> for AttrListVisitor {
    type Value = AttrList<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of attributes")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let mut list = Vec::with_capacity(map.size_hint().unwrap_or(2));
        while let Some(entry) = map.next_entry()? {
            list.push(entry);
        }
        Ok(AttrList(list))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for AttrValue<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(AttrValueVisitor)
    }
}

struct AttrValueVisitor;

/// Only a borrowed string (no escapes) or a list of them; anything else (null included)
/// fails the parse.
impl<'de> Visitor<'de> for AttrValueVisitor {
    type Value = AttrValue<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or a list of strings")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(AttrValue::One(s))
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
        let mut items = Vec::new();
        while let Some(s) = seq.next_element()? {
            items.push(s);
        }
        Ok(AttrValue::List(items))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use proptest::sample::{select, Index};

    use super::*;
    use crate::pack::input::{read_offers, Offers};
    use crate::records::{self, Reader};

    /// The slow way alone: how pack read offers before the fast way.
    fn slow_only(input: &[u8]) -> Offers {
        let mut offers = Offers::default();
        for item in Reader::new(input) {
            offers.add(item).unwrap();
        }
        offers
    }

    /// Line by line: when the fast way takes a line, the slow way takes it too, and the two
    /// fleets are the same after it; when it does not, the fleet is unchanged and the slow
    /// way's result is used. Returns how many lines went the fast way.
    fn line_by_line(input: &[u8]) -> usize {
        let (mut fast, mut slow) = (Fleet::default(), Fleet::default());
        let (mut reader, mut buf, mut taken) = (Reader::new(input), Vec::new(), 0);
        while let Some(Ok(n)) = reader.next_line(&mut buf) {
            let rec = records::parse_line(n, buf.clone()).ok();
            let rec = rec.filter(|r| r.kind() == "offer");
            let by_slow = rec.as_ref().map(|r| slow.add_offer(r));
            if try_add(&mut fast, &buf) {
                let line = String::from_utf8_lossy(&buf);
                assert_eq!(by_slow, Some(Ok(())), "taken fast: {line}");
                taken += 1;
            } else if let (Some(Ok(())), Some(r)) = (&by_slow, &rec) {
                fast.add_offer(r).unwrap();
            }
            assert_eq!(fast, slow, "after line {n}");
        }
        taken
    }

    fn assert_same(input: &[u8]) -> usize {
        let (new, old) = (read_offers(input).unwrap(), slow_only(input));
        assert_eq!(new.errors, old.errors);
        assert_eq!(new.passthrough, old.passthrough);
        assert_eq!(new.fleet, old.fleet);
        line_by_line(input)
    }

    /// An offer's fields, each with values the slow way takes (or the fast way must leave
    /// to it, such as escapes and repeated keys) and values it refuses.
    fn fields() -> Vec<(&'static str, Vec<String>, Vec<String>)> {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let long = format!("\"{}\"", "a".repeat(129));
        vec![
            (
                "type",
                v(&[r#""offer""#]),
                v(&[r#""host""#, r#""off\u0065r""#, "5", "null"]),
            ),
            (
                "host",
                v(&[r#""h0""#, r#""h1""#, r#""h2""#, r#""h3""#, r#""a.b-c_d:1""#]),
                [
                    vec![long],
                    v(&[
                        r#""""#,
                        r#""a b""#,
                        r#""-x""#,
                        r#""h\u0030""#,
                        "null",
                        "5",
                        r#""é""#,
                    ]),
                ]
                .concat(),
            ),
            (
                "cpus",
                v(&[
                    "96", "96.0", "1e3", "0", "0.0005", "0.0001", "4000000", "16.25", "-0",
                ]),
                v(&["-1", "4000000.5", r#""4""#, "null", "true", "1e400", "[]"]),
            ),
            (
                "ram_mb",
                v(&["65536", "0", "1099511627776"]),
                v(&[
                    "65536.0",
                    "1e3",
                    "-1",
                    "1099511627777",
                    "18446744073709551616",
                    "null",
                    r#""1""#,
                ]),
            ),
            (
                "disk_mb",
                v(&["1048576", "0", "1125899906842624", "null"]),
                v(&["1125899906842625", "1.5", "-3", "{}"]),
            ),
            (
                "gpus",
                v(&["0", "8", "65536", "null"]),
                v(&["65537", "1.0", r#""1""#]),
            ),
            (
                "ports",
                v(&[
                    "[[31000,31999]]",
                    "[]",
                    "[[5,6],[1,2]]",
                    "[[1,65535]]",
                    "null",
                    "[[7,7],[9,10],[1,3]]",
                ]),
                v(&[
                    "[[1,2],[2,3]]",
                    "[[0,1]]",
                    "[[1,65536]]",
                    "[[3,2]]",
                    "[[1,2,3]]",
                    "[[1]]",
                    "[1,2]",
                    "{}",
                    "[[1.0,2]]",
                    "[[-1,2]]",
                    "[[70000,70001]]",
                ]),
            ),
            (
                "attrs",
                v(&[
                    r#"{"rack":"r1","zone":"z0"}"#,
                    "{}",
                    "null",
                    r#"{"zone":"z,1"}"#,
                    r#"{"rack":""}"#,
                    r#"{"dedicated":["www/web","db","db"]}"#,
                    r#"{"dedicated":"*/web"}"#,
                    r#"{"zone":"z0","dedicated":["db"]}"#,
                    r#"{"rack":"r\n1"}"#,
                    r#"{"r\u0061ck":"x"}"#,
                    r#"{"rack":"a","zone":"z","rack":"b"}"#,
                    r#"{"dedicated":["b\u0062"]}"#,
                ]),
                v(&[
                    r#"{"host":"x"}"#,
                    r#"{"dedicated":"a/b/c"}"#,
                    r#"{"dedicated":[]}"#,
                    r#"{"zone":["a"]}"#,
                    r#"{"rack":1}"#,
                    r#"{"rack":null}"#,
                    "[]",
                    r#"{"dedicated":["db",5]}"#,
                    r#""rack""#,
                ]),
            ),
            (
                "cpu_factor",
                v(&["1.0", "0.8", "1.25", "1000", "1", "null", "1e-300"]),
                v(&["0", "1000.5", "-1", r#""1""#]),
            ),
            (
                "maintenance",
                v(&[
                    r#""none""#,
                    r#""scheduled""#,
                    r#""draining""#,
                    r#""drained""#,
                    "null",
                    r#""dr\u0061ined""#,
                ]),
                v(&[r#""other""#, "1", r#""None""#]),
            ),
        ]
    }

    /// An offer line: most fields given, most values good, in any order; now and then a
    /// field twice or one not known.
    fn offer() -> impl Strategy<Value = String> {
        let given: Vec<_> = fields()
            .into_iter()
            .enumerate()
            .map(|(i, (key, good, bad))| {
                let value = prop_oneof![8 => select(good), 1 => select(bad)];
                let p = if i < 4 { 0.97 } else { 0.6 };
                proptest::option::weighted(p, value.prop_map(move |v| (key.to_string(), v)))
            })
            .collect();
        let keys = vec![
            "ram",
            "Host",
            "type",
            "host",
            "cpus",
            "attrs",
            "maintenance",
        ];
        let values = vec!["1", r#""h9""#, r#""offer""#, "{}", "null", r#""draining""#];
        let extra =
            (select(keys), select(values)).prop_map(|(k, v)| (k.to_string(), v.to_string()));
        (given, proptest::option::weighted(0.1, extra))
            .prop_flat_map(|(given, extra)| {
                let pairs: Vec<_> = given.into_iter().flatten().chain(extra).collect();
                Just(pairs).prop_shuffle()
            })
            .prop_map(|pairs| {
                let body: Vec<_> = pairs.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", body.join(","))
            })
    }

    /// A line as it may come: mostly as made, else with CRLF, spaces, cut short, a byte
    /// that is not UTF-8, not an object, or blank.
    fn line() -> impl Strategy<Value = Vec<u8>> {
        (
            offer(),
            prop_oneof![12 => Just(0u8), 1 => 1..7u8],
            any::<Index>(),
        )
            .prop_map(|(l, how, at)| {
                let mut b = l.into_bytes();
                match how {
                    1 => b.push(b'\r'),
                    2 => b = [b" \t".as_slice(), &b, b" "].concat(),
                    3 => b.truncate(at.index(b.len())),
                    4 => b.insert(at.index(b.len()), 0xff),
                    5 => b = b"[1]".to_vec(),
                    6 => b.clear(),
                    _ => {}
                }
                b.push(b'\n');
                b
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn fast_and_slow_agree(lines in proptest::collection::vec(line(), 1..12)) {
            assert_same(&lines.concat());
        }
    }

    #[test]
    fn plain_offers_go_the_fast_way() {
        let lines = [
            r#"{"type":"offer","host":"h0","cpus":96.0,"ram_mb":786432,"disk_mb":1048576,"gpus":0,"ports":[[31000,31999]],"attrs":{"rack":"r0000","zone":"z0"},"cpu_factor":1.0,"maintenance":"none"}"#,
            r#"{"type":"offer","host":"h1","cpus":1,"ram_mb":1,"attrs":{"dedicated":["db","www/web","db"]}}"#,
            r#"{"type":"offer","host":"h2","cpus":1,"ram_mb":1,"maintenance":"draining"}"#,
            r#"{"host":"h3","type":"offer","ram_mb":1,"cpus":0,"ports":[[9,9],[1,2]],"maintenance":"scheduled"}"#,
        ];
        assert_eq!(assert_same(lines.join("\r\n").as_bytes()), lines.len());
    }

    #[test]
    fn the_fast_way_knows_every_offer_field() {
        let all: Vec<String> = fleet::OFFER_FIELDS
            .iter()
            .map(|f| match *f {
                "type" => r#""type":"offer""#.to_string(),
                "host" => r#""host":"h""#.to_string(),
                f => format!("\"{f}\":null"),
            })
            .collect();
        let line = format!(
            "{{{},\"cpus\":1,\"ram_mb\":1}}",
            all.join(",")
                .replace(",\"cpus\":null", "")
                .replace(",\"ram_mb\":null", "")
        );
        assert!(try_add(&mut Fleet::default(), line.as_bytes()), "{line}");
    }
}
