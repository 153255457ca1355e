//! The write-ahead journal beside the state file (`STATE.journal`).
//!
//! A commit appends one entry holding the full new image of every slot it changed, then
//! fdatasyncs: that is the moment a transaction is durable and may be reported. Entries carry
//! the checkpoint generation and a transaction id that must follow on from the previous one,
//! so after a checkpoint the journal is reused from the top without being cleared: stale
//! entries of an older generation, or a torn last entry, simply end the replay.
//!
//! ```text
//! 0   magic "FORMICJ1", then zeros to 64
//! 64… entries: magic u32 "FJEN" | body length u32 | gen u64 | txid u64 | count u32 | crc u32
//!     body: count × (kind u8, 3 zero bytes, slot u32, image of the kind's slot size)
//! ```

use crate::state::table::Kind;

pub const MAGIC: &[u8; 8] = b"FORMICJ1";
pub const START: u64 = 64;
const ENTRY_MAGIC: u32 = u32::from_le_bytes(*b"FJEN");
const ENTRY_HEADER: usize = 32;
/// A single transaction may not exceed this (a million host records fit).
pub const MAX_BODY: usize = 1 << 30;

/// Bytes a transaction's entry body takes.
pub fn body_len(changes: &[(Kind, u32, Vec<u8>)]) -> usize {
    changes.iter().map(|(_, _, img)| 8 + img.len()).sum()
}

pub fn new_header() -> [u8; START as usize] {
    let mut h = [0u8; START as usize];
    h[..8].copy_from_slice(MAGIC);
    h
}

/// One changed slot: its new image (all zeros for a deleted record).
pub struct Change<'a> {
    pub kind: Kind,
    pub slot: u32,
    pub image: &'a [u8],
}

/// Builds the bytes of one journal entry.
pub fn encode_entry(gen: u64, txid: u64, changes: &[(Kind, u32, Vec<u8>)]) -> Vec<u8> {
    let body_len = body_len(changes);
    assert!(
        body_len <= MAX_BODY,
        "callers check the size of a transaction"
    );
    let mut e = Vec::with_capacity(ENTRY_HEADER + body_len);
    e.extend_from_slice(&ENTRY_MAGIC.to_le_bytes());
    e.extend_from_slice(&(body_len as u32).to_le_bytes());
    e.extend_from_slice(&gen.to_le_bytes());
    e.extend_from_slice(&txid.to_le_bytes());
    e.extend_from_slice(&(changes.len() as u32).to_le_bytes());
    e.extend_from_slice(&[0; 4]);
    for (kind, slot, img) in changes {
        e.extend_from_slice(&[*kind as u8, 0, 0, 0]);
        e.extend_from_slice(&slot.to_le_bytes());
        e.extend_from_slice(img);
    }
    let mut crc = crc32c::crc32c(&e[..28]);
    crc = crc32c::crc32c_append(crc, &e[ENTRY_HEADER..]);
    e[28..32].copy_from_slice(&crc.to_le_bytes());
    e
}

/// Where reading the journal stopped.
pub enum Next<'a> {
    /// A valid entry; `len` bytes long.
    Entry {
        len: usize,
        changes: Vec<Change<'a>>,
    },
    /// An entry header that looks right, whose body runs past the bytes given: read at
    /// least `len` bytes from the entry's start and ask again.
    NeedMore { len: usize },
    /// No further entry of this generation: a clean end, a torn tail, or a stale entry.
    End,
}

/// Parses the entry at the start of `bytes` if it is the one expected next.
pub fn next_entry(bytes: &[u8], gen: u64, txid: u64) -> Result<Next<'_>, String> {
    if bytes.len() < ENTRY_HEADER {
        return Ok(Next::End);
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let body_len = u32_at(4) as usize;
    if u32_at(0) != ENTRY_MAGIC || u64_at(8) != gen || u64_at(16) != txid || body_len > MAX_BODY {
        return Ok(Next::End);
    }
    let Some(body) = bytes.get(ENTRY_HEADER..ENTRY_HEADER + body_len) else {
        return Ok(Next::NeedMore {
            len: ENTRY_HEADER + body_len,
        });
    };
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[..28]), body);
    if crc != u32_at(28) {
        return Ok(Next::End);
    }
    // From here the entry is intact: anything inconsistent inside it is corruption.
    let count = u32_at(24) as usize;
    let mut changes = Vec::with_capacity(count.min(body_len / 8));
    let mut at = 0usize;
    for _ in 0..count {
        let head = body
            .get(at..at + 8)
            .ok_or("entry shorter than its change count")?;
        let kind =
            Kind::from_u8(head[0]).ok_or_else(|| format!("entry names table {}", head[0]))?;
        let slot = u32::from_le_bytes(head[4..8].try_into().unwrap());
        let image = body
            .get(at + 8..at + 8 + kind.slot_size())
            .ok_or("entry shorter than its images")?;
        changes.push(Change { kind, slot, image });
        at += 8 + kind.slot_size();
    }
    if at != body_len {
        return Err("entry longer than its changes".into());
    }
    Ok(Next::Entry {
        len: ENTRY_HEADER + body_len,
        changes,
    })
}

/// Looks past a damaged entry at the start of `bytes` for an intact entry of generation
/// `gen` numbered `txid` or later. A crash can only tear the last entry written, so finding
/// one means the journal was damaged in the middle, not torn at its end. Entries start at
/// multiples of 8 (all slot sizes are), so only those offsets are tried.
pub fn later_entry(bytes: &[u8], gen: u64, txid: u64) -> Option<(usize, u64)> {
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    (8..bytes.len().saturating_sub(ENTRY_HEADER - 1))
        .step_by(8)
        .find_map(|at| {
            let magic = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
            let t = u64_at(at + 16);
            if magic != ENTRY_MAGIC || u64_at(at + 8) != gen || t < txid {
                return None;
            }
            matches!(next_entry(&bytes[at..], gen, t), Ok(Next::Entry { .. })).then_some((at, t))
        })
}
