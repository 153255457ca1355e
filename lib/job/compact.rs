//! A job spec's text as serde_json writes it back, and its hash, in one pass over the text.
//!
//! Both used to come from a `serde_json::Value` of the whole spec, kept with each job: a
//! map per object, a string per key, which for 200,000 jobs was most of pack's memory and a
//! third of its reading. The pass here feeds serde_json's own parser into serde_json's own
//! writer, so every number and string comes out exactly as the `Value` printed it.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::{fnv, FNV_START};

/// The bytes the hash reads, kept from one spec to the next by a caller that reads many.
#[derive(Default)]
pub(super) struct Feed(Vec<u8>);

/// The spec in compact JSON (fields in the order written) and [`super::hash`] of it.
/// None when the text is not JSON, or an object names a key twice: a `Value` keeps one
/// entry of the two, so the caller builds the `Value` and asks it.
pub(super) fn compact(text: &str, kept: &mut Feed) -> Option<(String, u64)> {
    let mut feed = std::mem::take(&mut kept.0);
    feed.clear();
    // An object's feed is written after its values before it takes their place: the
    // whole spec's twice, at most, and a comma more per element.
    feed.reserve(2 * text.len() + 64);
    let mut pass = Pass {
        json: Vec::with_capacity(text.len()),
        feed,
        entries: Vec::with_capacity(32),
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let read = Node(&mut pass).deserialize(&mut de).and_then(|()| de.end());
    let Pass {
        json, feed: fed, ..
    } = pass;
    let mut h = FNV_START;
    fnv(&mut h, &fed);
    kept.0 = fed;
    read.ok()?;
    // serde_json wrote it, from a &str: it is UTF-8.
    Some((String::from_utf8(json).ok()?, h))
}

/// What the pass writes. One of each for the whole spec: an allocation per object was
/// most of the pass's cost.
struct Pass<'de> {
    /// The compact text.
    json: Vec<u8>,
    /// The bytes [`super::hash`] reads: the same text, but each object's entries in key
    /// order, and a comma after every element.
    feed: Vec<u8>,
    /// The entries of the objects being read, the innermost last: each key, and where in
    /// `feed` its value is.
    entries: Vec<(Cow<'de, str>, Range<usize>)>,
}

impl Pass<'_> {
    /// A number, boolean or null: what the hash reads of it is its compact text.
    fn leaf<T: serde::Serialize, E: de::Error>(&mut self, v: &T) -> Result<(), E> {
        let start = self.json.len();
        serde_json::to_writer(&mut self.json, v).map_err(E::custom)?;
        self.feed.extend_from_slice(&self.json[start..]);
        Ok(())
    }

    /// Puts an object's entries, from `first` on, in key order in the feed, where their
    /// values were fed in the order written (from `values_at` on).
    fn feed_object<E: de::Error>(&mut self, first: usize, values_at: usize) -> Result<(), E> {
        let Pass { feed, entries, .. } = self;
        let entries = &mut entries[first..];
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        if entries.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(E::custom("a key given twice"));
        }
        // Written after the values, then moved over them.
        let end = feed.len();
        feed.push(b'{');
        for (key, value) in entries.iter() {
            feed.extend_from_slice(key.as_bytes());
            feed.push(b':');
            feed.extend_from_within(value.clone());
            feed.push(b',');
        }
        feed.push(b'}');
        let len = feed.len() - end;
        feed.copy_within(end.., values_at);
        feed.truncate(values_at + len);
        self.entries.truncate(first);
        Ok(())
    }
}

/// A JSON string as serde_json writes it: only text that needs escaping goes through it.
fn string(json: &mut Vec<u8>, s: &str) -> serde_json::Result<()> {
    if s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        return serde_json::to_writer(json, s);
    }
    json.push(b'"');
    json.extend_from_slice(s.as_bytes());
    json.push(b'"');
    Ok(())
}

/// One value of the spec, written into the pass.
struct Node<'p, 'de>(&'p mut Pass<'de>);

impl<'de> DeserializeSeed<'de> for Node<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.0.leaf(&v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.0.leaf(&v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.0.leaf(&v)
    }

    /// A `Value` holds a number that is not finite as null, and serde_json writes such an
    /// f64 as null too.
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.0.leaf(&v)
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.leaf(&())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        let pass = self.0;
        let start = pass.json.len();
        string(&mut pass.json, v).map_err(E::custom)?;
        pass.feed.extend_from_slice(&pass.json[start..]);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let pass = self.0;
        pass.json.push(b'[');
        pass.feed.push(b'[');
        while seq.next_element_seed(Node(&mut *pass))?.is_some() {
            pass.json.push(b',');
            pass.feed.push(b',');
        }
        close(&mut pass.json, b']');
        pass.feed.push(b']');
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let pass = self.0;
        let (first, values_at) = (pass.entries.len(), pass.feed.len());
        pass.json.push(b'{');
        while let Some(key) = map.next_key_seed(Key)? {
            string(&mut pass.json, &key).map_err(de::Error::custom)?;
            pass.json.push(b':');
            let start = pass.feed.len();
            map.next_value_seed(Node(&mut *pass))?;
            pass.json.push(b',');
            pass.entries.push((key, start..pass.feed.len()));
        }
        close(&mut pass.json, b'}');
        pass.feed_object(first, values_at)
    }
}

/// Ends an array or object whose every element was followed by a comma: the last one's
/// comma becomes the bracket.
fn close(json: &mut Vec<u8>, bracket: u8) {
    if json.last() == Some(&b',') {
        json.pop();
    }
    json.push(bracket);
}

/// An object's key, borrowed from the text when it holds no escape.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }
}
