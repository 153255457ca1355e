//! Fixed-layout little-endian encoding of state records.
//!
//! Each record lives in a slot of fixed size: a CRC32C of the rest of the slot, a live byte,
//! a layout version, then fields at fixed offsets and a tail of length-prefixed strings. The
//! decoder copies values out (it never hands out references into the buffer it reads) and checks every
//! bound, so a corrupt slot is an error, never a panic or an out-of-bounds read.

use std::fmt;

/// Bytes before the fields: crc (4), live (1), layout version (1), reserved (2).
pub const SLOT_HEADER: usize = 8;

#[derive(Debug, PartialEq, Eq)]
pub struct Corrupt(pub String);

impl fmt::Display for Corrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Does not fit: the record needs more bytes than its slot has.
#[derive(Debug, PartialEq, Eq)]
pub struct TooLarge {
    pub needed: usize,
    pub room: usize,
}

/// What a slot holds once its checksum has been verified.
pub enum Slot<'a> {
    Empty,
    Live { version: u8, body: &'a [u8] },
}

/// Verifies a slot's checksum and splits off its header. An all-zero slot is empty.
pub fn open_slot(slot: &[u8]) -> Result<Slot<'_>, Corrupt> {
    if slot.len() < SLOT_HEADER {
        return Err(Corrupt("slot shorter than its header".into()));
    }
    let stored = u32::from_le_bytes(slot[0..4].try_into().unwrap());
    if stored == 0 && slot[4] == 0 {
        return if slot.iter().all(|&b| b == 0) {
            Ok(Slot::Empty)
        } else {
            Err(Corrupt("empty slot with stray bytes".into()))
        };
    }
    if crc32c::crc32c(&slot[4..]) != stored {
        return Err(Corrupt("checksum mismatch".into()));
    }
    if slot[4] != 1 {
        return Err(Corrupt(format!("bad live byte {}", slot[4])));
    }
    Ok(Slot::Live {
        version: slot[5],
        body: &slot[SLOT_HEADER..],
    })
}

/// Writes fields into a slot's body; `seal` then stamps header and checksum.
pub struct Encoder<'a> {
    slot: &'a mut [u8],
    pos: usize,
    needed: usize,
}

impl<'a> Encoder<'a> {
    /// Starts a live record; the slot is zeroed first so unused bytes are deterministic.
    pub fn new(slot: &'a mut [u8]) -> Self {
        slot.fill(0);
        Encoder {
            slot,
            pos: SLOT_HEADER,
            needed: SLOT_HEADER,
        }
    }

    fn put(&mut self, bytes: &[u8]) {
        self.needed += bytes.len();
        if self.needed <= self.slot.len() {
            self.slot[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
            self.pos += bytes.len();
        }
    }

    pub fn u8(&mut self, v: u8) {
        self.put(&[v]);
    }
    pub fn u16(&mut self, v: u16) {
        self.put(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.put(&v.to_le_bytes());
    }
    pub fn i32(&mut self, v: i32) {
        self.put(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.put(&v.to_le_bytes());
    }
    pub fn f64(&mut self, v: f64) {
        self.put(&v.to_le_bytes());
    }
    /// A string of at most 255 bytes, length-prefixed. A longer one is not cut (that could
    /// split a character and make the slot undecodable): it makes `seal` fail.
    pub fn str8(&mut self, s: &str) {
        if s.len() > 255 {
            self.needed += self.slot.len() + 1 + s.len();
            return;
        }
        self.u8(s.len() as u8);
        self.put(s.as_bytes());
    }

    /// Whether the fields so far fit, without sealing the slot.
    pub fn fits(&self) -> Result<(), TooLarge> {
        match self.needed <= self.slot.len() {
            true => Ok(()),
            false => Err(TooLarge {
                needed: self.needed,
                room: self.slot.len(),
            }),
        }
    }

    /// Stamps the header; fails when the fields did not fit.
    pub fn seal(self, version: u8) -> Result<(), TooLarge> {
        if self.needed > self.slot.len() {
            return Err(TooLarge {
                needed: self.needed,
                room: self.slot.len(),
            });
        }
        self.slot[4] = 1;
        self.slot[5] = version;
        let crc = crc32c::crc32c(&self.slot[4..]);
        self.slot[0..4].copy_from_slice(&crc.to_le_bytes());
        Ok(())
    }
}

/// Reads fields back in the order they were written.
pub struct Decoder<'a> {
    body: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(body: &'a [u8]) -> Self {
        Decoder { body, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Corrupt> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.body.len());
        let end = end.ok_or_else(|| Corrupt("field runs past the end of its slot".into()))?;
        let bytes = &self.body[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    pub fn u8(&mut self) -> Result<u8, Corrupt> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, Corrupt> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    pub fn u32(&mut self) -> Result<u32, Corrupt> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    pub fn i32(&mut self) -> Result<i32, Corrupt> {
        Ok(i32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    pub fn u64(&mut self) -> Result<u64, Corrupt> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    pub fn f64(&mut self) -> Result<f64, Corrupt> {
        Ok(f64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    pub fn str8(&mut self) -> Result<String, Corrupt> {
        let len = self.u8()? as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| Corrupt("string is not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checksum() {
        let mut slot = [0u8; 64];
        let mut e = Encoder::new(&mut slot);
        e.u32(7);
        e.str8("rack");
        e.f64(1.5);
        e.seal(1).unwrap();
        let Slot::Live { version, body } = open_slot(&slot).unwrap() else {
            panic!("empty")
        };
        assert_eq!(version, 1);
        let mut d = Decoder::new(body);
        assert_eq!(
            (d.u32().unwrap(), d.str8().unwrap(), d.f64().unwrap()),
            (7, "rack".into(), 1.5)
        );
        slot[20] ^= 0x40;
        assert!(open_slot(&slot).is_err());
    }

    #[test]
    fn overflow_is_reported_not_truncated() {
        let mut slot = [0u8; 16];
        let mut e = Encoder::new(&mut slot);
        e.str8("a string longer than the slot");
        assert_eq!(
            e.seal(1),
            Err(TooLarge {
                needed: 38,
                room: 16
            })
        );
    }

    #[test]
    fn a_string_over_255_bytes_is_refused_not_cut() {
        let mut slot = [0u8; 4096];
        let mut e = Encoder::new(&mut slot);
        e.str8(&"é".repeat(150));
        assert!(e.seal(1).is_err());
    }

    #[test]
    fn decoder_never_reads_past_the_slot() {
        let body = [200u8, b'x'];
        assert!(Decoder::new(&body).str8().is_err());
        assert!(Decoder::new(&body[..1]).u32().is_err());
    }

    #[test]
    fn zero_slot_is_empty() {
        assert!(matches!(open_slot(&[0u8; 32]), Ok(Slot::Empty)));
        let mut z = [0u8; 32];
        z[9] = 1;
        assert!(open_slot(&z).is_err());
    }
}
