//! The on-disk layout of the state file: page 0 (magic, checkpoint sequence, two header
//! copies) followed by table extents. Only this module knows byte offsets.
//!
//! ```text
//! 0     magic "FORMICST"
//! 8     checkpoint sequence (u64): odd while a checkpoint rewrites tables in place
//! 1024  header copy for even generations    2048  header copy for odd generations
//! 4096… extents: table T's extent k holds base(T)·2^k slots of slot_size(T) bytes
//! ```
//!
//! A header names the checkpoint generation, the last transaction folded into the tables,
//! the file length in use and where each table's extents are. Extents are appended and never
//! moved, so the file grows without a rebuild and a slot's offset never changes.

use crate::fixed::Corrupt;
use crate::state::table::{Kind, KINDS};

pub const MAGIC: &[u8; 8] = b"FORMICST";
pub const FORMAT_VERSION: u32 = 1;
pub const PAGE: u64 = 4096;
pub const SEQ_OFFSET: usize = 8;
const HEADER_MAGIC: u32 = u32::from_le_bytes(*b"FHDR");
const HEADER_SIZE: usize = 1024;
pub const MAX_EXTENTS: usize = 24;

pub fn header_offset(gen: u64) -> u64 {
    HEADER_SIZE as u64 * (1 + gen % 2)
}

#[derive(Clone, Debug, PartialEq)]
pub struct TableDesc {
    pub slot_size: u32,
    pub base: u32,
    /// Slots in use in the file (high-water mark at the last checkpoint).
    pub used: u32,
    pub extents: Vec<u64>,
}

impl TableDesc {
    pub fn capacity(&self) -> u64 {
        self.base as u64 * ((1u64 << self.extents.len()) - 1)
    }

    /// Byte range of `slot`, which must be below capacity.
    pub fn slot_range(&self, slot: u32) -> std::ops::Range<usize> {
        let x = slot as u64 / self.base as u64 + 1;
        let k = 63 - x.leading_zeros() as u64; // floor(log2(x))
        let first = self.base as u64 * ((1 << k) - 1);
        let start = self.extents[k as usize] + (slot as u64 - first) * self.slot_size as u64;
        start as usize..(start + self.slot_size as u64) as usize
    }

    /// How many slots from `slot` on lie back to back in its extent (`slot` included).
    pub fn run_from(&self, slot: u32) -> u64 {
        let x = slot as u64 / self.base as u64 + 1;
        let k = 63 - x.leading_zeros() as u64;
        self.base as u64 * ((2 << k) - 1) - slot as u64
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    pub version: u32,
    pub gen: u64,
    pub txid: u64,
    /// Bytes of the file in use; anything beyond is an abandoned extent.
    pub end: u64,
    pub tables: Vec<TableDesc>,
}

impl Header {
    pub fn new() -> Header {
        Header {
            version: FORMAT_VERSION,
            gen: 0,
            txid: 0,
            end: PAGE,
            tables: KINDS
                .iter()
                .map(|k| TableDesc {
                    slot_size: k.slot_size() as u32,
                    base: k.base_slots(),
                    used: 0,
                    extents: Vec::new(),
                })
                .collect(),
        }
    }

    pub fn table(&self, kind: Kind) -> &TableDesc {
        &self.tables[kind as usize]
    }

    /// Appends extents until `kind` can hold `slots`; returns false when it cannot grow more.
    pub fn grow(&mut self, kind: Kind, slots: u64) -> bool {
        let t = &mut self.tables[kind as usize];
        while t.capacity() < slots {
            if t.extents.len() == MAX_EXTENTS {
                return false;
            }
            let bytes = ((t.base as u64) << t.extents.len()) * t.slot_size as u64;
            t.extents.push(self.end);
            self.end += bytes.div_ceil(PAGE) * PAGE;
        }
        true
    }

    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        let mut w = 0usize;
        let mut put = |bytes: &[u8]| {
            b[w..w + bytes.len()].copy_from_slice(bytes);
            w += bytes.len();
        };
        put(&HEADER_MAGIC.to_le_bytes());
        put(&self.version.to_le_bytes());
        put(&self.gen.to_le_bytes());
        put(&self.txid.to_le_bytes());
        put(&self.end.to_le_bytes());
        put(&(self.tables.len() as u32).to_le_bytes());
        for t in &self.tables {
            put(&t.slot_size.to_le_bytes());
            put(&t.base.to_le_bytes());
            put(&t.used.to_le_bytes());
            put(&(t.extents.len() as u32).to_le_bytes());
            for k in 0..MAX_EXTENTS {
                put(&t.extents.get(k).copied().unwrap_or(0).to_le_bytes());
            }
        }
        let crc = crc32c::crc32c(&b[..HEADER_SIZE - 4]);
        b[HEADER_SIZE - 4..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes one header copy. `Ok(None)` means the copy is blank or torn (not fatal while
    /// the other copy is good); an error means it is intact but unusable.
    pub fn decode(b: &[u8]) -> Result<Option<Header>, Corrupt> {
        let crc = u32::from_le_bytes(b[HEADER_SIZE - 4..HEADER_SIZE].try_into().unwrap());
        if crc32c::crc32c(&b[..HEADER_SIZE - 4]) != crc || u32_at(b, 0) != HEADER_MAGIC {
            return Ok(None);
        }
        let version = u32_at(b, 4);
        if version > FORMAT_VERSION {
            return Err(Corrupt(format!(
                "state format version {version} is newer than this formic reads ({FORMAT_VERSION}); upgrade formic"
            )));
        }
        if version != FORMAT_VERSION {
            return Err(Corrupt(format!(
                "state format version {version} is unknown"
            )));
        }
        let ntables = u32_at(b, 32) as usize;
        if ntables != KINDS.len() {
            return Err(Corrupt(format!(
                "header lists {ntables} tables, expected {}",
                KINDS.len()
            )));
        }
        let mut h = Header {
            version,
            gen: u64_at(b, 8),
            txid: u64_at(b, 16),
            end: u64_at(b, 24),
            tables: vec![],
        };
        let mut r = 36;
        for kind in KINDS {
            let (slot_size, base, used, n) = (
                u32_at(b, r),
                u32_at(b, r + 4),
                u32_at(b, r + 8),
                u32_at(b, r + 12),
            );
            r += 16;
            if slot_size as usize != kind.slot_size() || base == 0 || n as usize > MAX_EXTENTS {
                return Err(Corrupt(format!(
                    "table {} has an unexpected shape",
                    kind.name()
                )));
            }
            let extents: Vec<u64> = (0..n as usize).map(|k| u64_at(b, r + 8 * k)).collect();
            r += 8 * MAX_EXTENTS;
            let t = TableDesc {
                slot_size,
                base,
                used,
                extents,
            };
            if t.used as u64 > t.capacity() {
                return Err(Corrupt(format!(
                    "table {} uses more slots than it has",
                    kind.name()
                )));
            }
            for (k, &off) in t.extents.iter().enumerate() {
                let len = ((base as u64) << k) * slot_size as u64;
                if off % PAGE != 0 || off < PAGE || off.checked_add(len).is_none_or(|e| e > h.end) {
                    return Err(Corrupt(format!(
                        "table {} extent {k} lies outside the file",
                        kind.name()
                    )));
                }
            }
            h.tables.push(t);
        }
        Ok(Some(h))
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The checkpoint sequence at rest for generation `gen`; `seq_for(gen) - 1` while the
/// checkpoint that makes `gen` is under way.
pub fn seq_for(gen: u64) -> u64 {
    2 * gen
}

/// Finds the newest intact header in page 0 and checks it against the file's length and
/// the checkpoint sequence: a sequence ahead of the header's generation means a newer
/// header copy existed and is damaged, and falling back to the older one would lose the
/// transactions that checkpoint folded in.
pub fn read_header(page0: &[u8], file_len: u64) -> Result<Header, Corrupt> {
    if file_len < PAGE || page0.len() < PAGE as usize {
        return Err(Corrupt(format!(
            "truncated: {file_len} bytes, shorter than its header page"
        )));
    }
    if &page0[..8] != MAGIC {
        return Err(Corrupt(if page0[..8].iter().all(|&b| b == 0) {
            "its header page is zeroed".into()
        } else {
            "not a formic state file (bad magic)".into()
        }));
    }
    let a = Header::decode(&page0[HEADER_SIZE..2 * HEADER_SIZE])?;
    let b = Header::decode(&page0[2 * HEADER_SIZE..3 * HEADER_SIZE])?;
    let h = match (a, b) {
        (Some(a), Some(b)) => {
            if a.gen >= b.gen {
                a
            } else {
                b
            }
        }
        (Some(h), None) | (None, Some(h)) => h,
        (None, None) => return Err(Corrupt("both header copies are damaged".into())),
    };
    if h.end > file_len {
        return Err(Corrupt(format!(
            "truncated: header needs {} bytes, file has {file_len}",
            h.end
        )));
    }
    let seq = u64::from_le_bytes(page0[SEQ_OFFSET..SEQ_OFFSET + 8].try_into().unwrap());
    // At rest seq_for(gen); seq_for(gen) - 1 mid-checkpoint towards gen (or just after its
    // header was written); seq_for(gen) + 1 mid-checkpoint from gen.
    let expected = seq_for(h.gen);
    if seq + 1 < expected || seq > expected + 1 {
        return Err(Corrupt(format!(
            "checkpoint sequence {seq} does not match header generation {}: \
             the newest header copy is damaged",
            h.gen
        )));
    }
    Ok(h)
}

/// Page 0 of a new, empty state file.
pub fn new_page0() -> Vec<u8> {
    let mut p = vec![0u8; PAGE as usize];
    p[..8].copy_from_slice(MAGIC);
    let h = Header::new();
    let off = header_offset(h.gen) as usize;
    p[off..off + HEADER_SIZE].copy_from_slice(&h.encode());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_map_into_doubling_extents() {
        let mut h = Header::new();
        assert!(h.grow(Kind::Task, 4096 * 3));
        let t = h.table(Kind::Task);
        assert_eq!(t.extents.len(), 2);
        assert_eq!(t.slot_range(0).start as u64, t.extents[0]);
        assert_eq!(t.slot_range(4096).start as u64, t.extents[1]);
        assert_eq!(t.slot_range(4097).start as u64, t.extents[1] + 128);
        assert_eq!(t.run_from(0), 4096);
        assert_eq!(t.run_from(4095), 1);
        assert_eq!(t.run_from(4097), 8191);
        assert_eq!(h.end, PAGE + 4096 * 128 * 3);
    }

    #[test]
    fn header_round_trips_and_newest_copy_wins() {
        let mut h = Header::new();
        h.grow(Kind::Host, 300);
        h.gen = 5;
        h.txid = 42;
        let mut page = new_page0();
        page[header_offset(5) as usize..][..HEADER_SIZE].copy_from_slice(&h.encode());
        page[8..16].copy_from_slice(&seq_for(5).to_le_bytes());
        assert_eq!(read_header(&page, h.end).unwrap(), h);
        // A copy torn mid-checkpoint (sequence still odd) gives way to the older copy...
        let mut torn = page.clone();
        torn[header_offset(5) as usize + 20] ^= 1;
        torn[8..16].copy_from_slice(&(seq_for(1) - 1).to_le_bytes());
        assert_eq!(read_header(&torn, h.end).unwrap().gen, 0);
        // ...but a damaged newest copy at rest is an error, not a silent step back.
        page[header_offset(5) as usize + 20] ^= 1;
        assert!(read_header(&page, h.end)
            .unwrap_err()
            .0
            .contains("newest header copy"));
    }
}
