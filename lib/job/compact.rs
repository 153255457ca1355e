//! A job spec read once: into its types, and at the same time into the text serde_json
//! writes back and the hash of it.
//!
//! The text and hash used to come from a `serde_json::Value` of the whole spec, kept with
//! each job, and later from a second pass over the text: for 200,000 jobs the second pass
//! was half of the reading. Here the typed read itself is watched: [`Tee`] stands between
//! serde_json's parser and the spec's `Deserialize`, and writes each value it hands over,
//! so every number and string comes out exactly as the `Value` printed it. Whatever it
//! cannot follow (an enum written as an object, bytes) it refuses, and the caller reads the
//! spec the slow way, by its `Value`.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::{fnv, FNV_START};

/// The bytes the hash reads, kept from one spec to the next by a caller that reads many.
#[derive(Default)]
pub(super) struct Feed(Vec<u8>);

/// `text` read as a `T`, with the spec in compact JSON (fields in the order written) and
/// [`super::hash`] of it. None when the text is not a `T`, or an object names a key twice
/// (a `Value` keeps one entry of the two), or the spec takes a form the pass does not
/// follow: the caller then builds the `Value` and asks it.
pub(super) fn read<'de, T: Deserialize<'de>>(
    text: &'de str,
    kept: &mut Feed,
) -> Option<(T, String, u64)> {
    let mut feed = std::mem::take(&mut kept.0);
    feed.clear();
    // An object's feed is written after its values before it takes their place: the
    // whole spec's twice, at most, and a comma more per element.
    feed.reserve(2 * text.len() + 64);
    let mut pass = Pass {
        json: Vec::with_capacity(text.len()),
        feed,
        entries: Vec::with_capacity(32),
        key: None,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let tee = Tee {
        de: &mut de,
        pass: &mut pass,
        key: false,
    };
    let read = T::deserialize(tee).and_then(|t| de.end().map(|()| t));
    let Pass {
        json, feed: fed, ..
    } = pass;
    let mut h = FNV_START;
    fnv(&mut h, &fed);
    kept.0 = fed;
    // serde_json wrote it, from a &str: it is UTF-8.
    Some((read.ok()?, String::from_utf8(json).ok()?, h))
}

/// [`read`] of any JSON: the spec's text and hash, whatever it holds.
#[cfg(test)]
pub(super) fn compact(text: &str, kept: &mut Feed) -> Option<(String, u64)> {
    read::<de::IgnoredAny>(text, kept).map(|(_, json, hash)| (json, hash))
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
    /// The key just read, for its map to take.
    key: Option<Cow<'de, str>>,
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

/// A deserializer that writes into the pass what it hands over: the values of the spec,
/// or, as `key`, a key of an object.
struct Tee<'p, 'de, D> {
    de: D,
    pass: &'p mut Pass<'de>,
    key: bool,
}

impl<'p, 'de, D> Tee<'p, 'de, D> {
    fn recording<V>(pass: &'p mut Pass<'de>, key: bool, visitor: V) -> Recording<'p, 'de, V> {
        Recording { visitor, pass, key }
    }
}

/// The `deserialize_*` methods that go straight to serde_json's, watched.
macro_rules! watched {
    ($($method:ident($($arg:ident: $ty:ty),*))*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* v: V) -> Result<V::Value, D::Error> {
            let recording = Self::recording(self.pass, self.key, v);
            self.de.$method($($arg,)* recording)
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Tee<'_, 'de, D> {
    type Error = D::Error;

    watched! {
        deserialize_any() deserialize_bool() deserialize_i8() deserialize_i16()
        deserialize_i32() deserialize_i64() deserialize_u8() deserialize_u16()
        deserialize_u32() deserialize_u64() deserialize_f32() deserialize_f64()
        deserialize_char() deserialize_str() deserialize_string() deserialize_bytes()
        deserialize_byte_buf() deserialize_option() deserialize_unit() deserialize_seq()
        deserialize_map() deserialize_identifier()
        deserialize_unit_struct(name: &'static str)
        deserialize_newtype_struct(name: &'static str)
        deserialize_tuple(len: usize)
        deserialize_tuple_struct(name: &'static str, len: usize)
        deserialize_struct(name: &'static str, fields: &'static [&'static str])
    }

    /// Skipped by serde_json without a visit, so read as anything: the feed needs it.
    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, D::Error> {
        self.deserialize_any(v)
    }

    /// Only the unit variants a string names: an enum written as an object is refused.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, D::Error> {
        let recording = Self::recording(self.pass, self.key, UnitVariant(v));
        self.de.deserialize_any(recording)
    }

    fn is_human_readable(&self) -> bool {
        self.de.is_human_readable()
    }
}

/// A visitor that writes what it is handed into the pass, then hands it on.
struct Recording<'p, 'de, V> {
    visitor: V,
    pass: &'p mut Pass<'de>,
    key: bool,
}

impl<'de, V> Recording<'_, 'de, V> {
    /// serde_json hands only strings as keys; anything else is refused, not followed.
    fn not_a_key<E: de::Error>(&self) -> Result<(), E> {
        match self.key {
            true => Err(E::custom("a key that is not a string")),
            false => Ok(()),
        }
    }

    /// A number, boolean or null.
    fn leaf<T: serde::Serialize, E: de::Error>(&mut self, v: &T) -> Result<(), E> {
        self.not_a_key()?;
        self.pass.leaf(v)
    }

    /// A string: a key is kept for its map, a value written.
    fn string<E: de::Error>(&mut self, v: Cow<'de, str>) -> Result<(), E> {
        let pass = &mut *self.pass;
        if self.key {
            pass.key = Some(v);
            return Ok(());
        }
        let start = pass.json.len();
        string(&mut pass.json, &v).map_err(E::custom)?;
        pass.feed.extend_from_slice(&pass.json[start..]);
        Ok(())
    }
}

/// The visits of a number or boolean: written, then handed on.
macro_rules! leaves {
    ($($method:ident($ty:ty))*) => {$(
        fn $method<E: de::Error>(mut self, v: $ty) -> Result<V::Value, E> {
            self.leaf(&v)?;
            self.visitor.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Recording<'_, 'de, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.visitor.expecting(f)
    }

    // A `Value` holds a number that is not finite as null, and serde_json writes such an
    // f64 as null too.
    leaves! { visit_bool(bool) visit_i64(i64) visit_u64(u64) visit_f64(f64) }

    fn visit_unit<E: de::Error>(mut self) -> Result<V::Value, E> {
        self.leaf(&())?;
        self.visitor.visit_unit()
    }

    fn visit_none<E: de::Error>(mut self) -> Result<V::Value, E> {
        self.leaf(&())?;
        self.visitor.visit_none()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        let tee = Tee {
            de: d,
            pass: self.pass,
            key: self.key,
        };
        self.visitor.visit_some(tee)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        let tee = Tee {
            de: d,
            pass: self.pass,
            key: self.key,
        };
        self.visitor.visit_newtype_struct(tee)
    }

    fn visit_borrowed_str<E: de::Error>(mut self, v: &'de str) -> Result<V::Value, E> {
        self.string(Cow::Borrowed(v))?;
        self.visitor.visit_borrowed_str(v)
    }

    fn visit_str<E: de::Error>(mut self, v: &str) -> Result<V::Value, E> {
        self.string(Cow::Owned(v.to_string()))?;
        self.visitor.visit_str(v)
    }

    fn visit_string<E: de::Error>(mut self, v: String) -> Result<V::Value, E> {
        self.string(Cow::Owned(v.clone()))?;
        self.visitor.visit_string(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.not_a_key()?;
        let pass = self.pass;
        pass.json.push(b'[');
        pass.feed.push(b'[');
        let value = self.visitor.visit_seq(Elements {
            seq,
            pass: &mut *pass,
        })?;
        close(&mut pass.json, b']');
        pass.feed.push(b']');
        Ok(value)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.not_a_key()?;
        let pass = self.pass;
        let (first, values_at) = (pass.entries.len(), pass.feed.len());
        pass.json.push(b'{');
        let value = self.visitor.visit_map(Entries {
            map,
            pass: &mut *pass,
            key: None,
        })?;
        close(&mut pass.json, b'}');
        pass.feed_object(first, values_at)?;
        Ok(value)
    }
}

/// The elements of an array, each written as it is read.
struct Elements<'p, 'de, A> {
    seq: A,
    pass: &'p mut Pass<'de>,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Elements<'_, 'de, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        let seed = Watched {
            seed,
            pass: &mut *self.pass,
            key: false,
        };
        let element = self.seq.next_element_seed(seed)?;
        if element.is_some() {
            self.pass.json.push(b',');
            self.pass.feed.push(b',');
        }
        Ok(element)
    }

    fn size_hint(&self) -> Option<usize> {
        self.seq.size_hint()
    }
}

/// The entries of an object, each written as it is read, and put in key order in the
/// feed when the object ends.
struct Entries<'p, 'de, A> {
    map: A,
    pass: &'p mut Pass<'de>,
    /// The key read, waiting for its value.
    key: Option<Cow<'de, str>>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Entries<'_, 'de, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let seed = Watched {
            seed,
            pass: &mut *self.pass,
            key: true,
        };
        let Some(read) = self.map.next_key_seed(seed)? else {
            return Ok(None);
        };
        let pass = &mut *self.pass;
        let key = pass
            .key
            .take()
            .ok_or_else(|| de::Error::custom("a key not read as a string"))?;
        string(&mut pass.json, &key).map_err(de::Error::custom)?;
        pass.json.push(b':');
        self.key = Some(key);
        Ok(Some(read))
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        let key = self
            .key
            .take()
            .ok_or_else(|| de::Error::custom("a value before its key"))?;
        let start = self.pass.feed.len();
        let seed = Watched {
            seed,
            pass: &mut *self.pass,
            key: false,
        };
        let value = self.map.next_value_seed(seed)?;
        let pass = &mut *self.pass;
        pass.json.push(b',');
        pass.entries.push((key, start..pass.feed.len()));
        Ok(value)
    }

    fn size_hint(&self) -> Option<usize> {
        self.map.size_hint()
    }
}

/// A seed whose deserializer is watched.
struct Watched<'p, 'de, T> {
    seed: T,
    pass: &'p mut Pass<'de>,
    key: bool,
}

impl<'de, T: DeserializeSeed<'de>> DeserializeSeed<'de> for Watched<'_, 'de, T> {
    type Value = T::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T::Value, D::Error> {
        self.seed.deserialize(Tee {
            de: d,
            pass: self.pass,
            key: self.key,
        })
    }
}

/// An enum's visitor, handed the string that names a unit variant as the variant.
struct UnitVariant<V>(V);

impl<'de, V: Visitor<'de>> Visitor<'de> for UnitVariant<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.0.expecting(f)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<V::Value, E> {
        self.0
            .visit_enum(de::value::BorrowedStrDeserializer::<E>::new(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<V::Value, E> {
        self.0.visit_enum(de::value::StrDeserializer::<E>::new(v))
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
