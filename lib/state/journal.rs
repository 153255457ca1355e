//! The write-ahead journal beside the state file (`STATE.journal`).
//!
//! A commit appends one entry holding the full new image of every slot it changed, then
//! fdatasyncs: that is the moment a transaction is durable and may be reported. Entries carry
//! the checkpoint generation and a transaction id that must follow on from the previous one.
//! A checkpoint cuts the journal back to its header; if a crash keeps the cut from reaching
//! the disk, the entries left behind are of an older generation and simply end the replay.
//!
//! The header records what was committed, so that damage to committed entries, or a journal
//! cut short, is told from the one thing a crash can leave: a torn entry at the very end.
//! After an entry's fdatasync the writer writes a commit record (generation, transaction id,
//! where its entry ends) into the header, and does not flush it: the next commit's fdatasync
//! carries it to the disk. Written only once the entry it names is durable, a record never
//! claims more than the disk holds; at rest (no power cut since) it names the last commit.
//! On opening, every entry up to the record must replay whole and end where it says.
//!
//! There are two records, for even and odd transaction ids, rather than one: a power cut
//! may tear the record being written (it is not flushed), and a single record torn would
//! leave nothing to check against, or refuse a state that a crash left intact. With two,
//! the other one still names the transaction before, and a torn record says more: it was
//! being written, so the transaction after the intact one is durable and must be whole. An
//! intact record that is not the newest is never being written, so if it is the damaged one,
//! that requirement fails and the state is refused, as damage should be. Both damaged is
//! never a crash (only one record is unflushed at a time). A journal whose records are both
//! zero was written before records existed and is read by the old rule alone (the tail
//! may be torn, nothing after damage may be intact); its first commit writes a record.
//!
//! Limit: after a power cut the record on disk may be one commit behind the last reported
//! one (its record was not flushed yet); damage to that commit's entry on top of the power
//! cut reads as the torn tail a crash leaves.
//!
//! ```text
//! 0   magic "FORMICJ1"
//! 8   record of the newest even txid   36  record of the newest odd txid
//!     each: gen u64 | txid u64 | end u64 | crc32c u32 of the 24 bytes before it
//! 64… entries: magic u32 "FJEN" | body length u32 | gen u64 | txid u64 | count u32 | crc u32
//!     body: count × (kind u8, 3 zero bytes, slot u32, image of the kind's slot size)
//! ```
//!
//! Formic before the records ignores the bytes after the magic, so it still reads these
//! journals, by its own rule.

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

/// The header of a new journal, which records transaction 0 of generation 0: the state of a
/// new tables file. With one record intact from the start, a power cut that tears the
/// record of transaction 1 is told from damage like any other.
pub fn new_header() -> [u8; START as usize] {
    let mut h = [0u8; START as usize];
    h[..8].copy_from_slice(MAGIC);
    let (at, rec) = Record {
        gen: 0,
        txid: 0,
        end: START,
    }
    .encode();
    h[at as usize..at as usize + RECORD_LEN].copy_from_slice(&rec);
    h
}

/// Where the record of an even and of an odd transaction id lies.
const RECORD_AT: [usize; 2] = [8, 36];
const RECORD_LEN: usize = 28;

/// A commit record: transaction `txid` of generation `gen` is durable; its entry ends at
/// byte `end`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Record {
    pub gen: u64,
    pub txid: u64,
    pub end: u64,
}

impl Record {
    /// Where the record goes in the journal, and its bytes.
    pub fn encode(&self) -> (u64, [u8; RECORD_LEN]) {
        let mut b = [0u8; RECORD_LEN];
        b[..8].copy_from_slice(&self.gen.to_le_bytes());
        b[8..16].copy_from_slice(&self.txid.to_le_bytes());
        b[16..24].copy_from_slice(&self.end.to_le_bytes());
        let crc = crc32c::crc32c(&b[..24]);
        b[24..].copy_from_slice(&crc.to_le_bytes());
        (RECORD_AT[(self.txid % 2) as usize] as u64, b)
    }
}

enum Slot {
    Blank,
    Damaged,
    Intact(Record),
}

/// Reads the record at `RECORD_AT[parity]`; one in the wrong place is as bad as a bad crc.
fn read_slot(header: &[u8], parity: usize) -> Slot {
    let b = &header[RECORD_AT[parity]..RECORD_AT[parity] + RECORD_LEN];
    if b.iter().all(|&x| x == 0) {
        return Slot::Blank;
    }
    let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let crc = u32::from_le_bytes(b[24..].try_into().unwrap());
    let rec = Record {
        gen: u64_at(0),
        txid: u64_at(8),
        end: u64_at(16),
    };
    if crc != crc32c::crc32c(&b[..24]) || rec.txid % 2 != parity as u64 || rec.end < START {
        return Slot::Damaged;
    }
    Slot::Intact(rec)
}

/// What the header says was committed.
#[derive(Debug, PartialEq)]
pub enum Committed {
    /// No record: a journal from before records existed.
    Unknown,
    /// The newest record, intact.
    Known(Record),
    /// The newest record is torn: transactions up to this one are durable (see the module
    /// comment), but where the last one ends is not known.
    AtLeast(u64),
}

/// Reads the two records of a journal header (`START` bytes).
pub fn committed(header: &[u8]) -> Result<Committed, String> {
    Ok(match (read_slot(header, 0), read_slot(header, 1)) {
        (Slot::Intact(a), Slot::Intact(b)) => Committed::Known(if a.txid > b.txid { a } else { b }),
        (Slot::Intact(r), Slot::Blank) | (Slot::Blank, Slot::Intact(r)) => Committed::Known(r),
        (Slot::Intact(r), Slot::Damaged) | (Slot::Damaged, Slot::Intact(r)) => {
            Committed::AtLeast(r.txid.saturating_add(1))
        }
        // The only record ever written is damaged: it was the first after an upgrade, torn,
        // or it is damage; which, and what it named, cannot be told, so the old rule reads on.
        (Slot::Blank, _) | (_, Slot::Blank) => Committed::Unknown,
        (Slot::Damaged, Slot::Damaged) => {
            return Err("both commit records in its header are damaged".into())
        }
    })
}

/// One changed slot: its new image (all zeros for a deleted record).
pub struct Change<'a> {
    pub kind: Kind,
    pub slot: u32,
    pub image: &'a [u8],
}

/// What a replay of the journal must reach for no committed transaction to be lost.
#[derive(Debug, PartialEq)]
pub struct Need {
    pub txid: u64,
    /// Where that transaction's entry ends, when the record names it in the generation
    /// being replayed (a record of an older one was folded into the tables since).
    pub end: Option<u64>,
    /// The newest record is torn, so `txid` is inferred from the other one.
    pub inferred: bool,
}

impl Need {
    /// Checks a replay that stopped at byte `stop` after transaction `last`, having passed
    /// the end of transaction `self.txid` at byte `reached` (None if it started past it).
    pub fn check(&self, last: u64, stop: u64, reached: Option<u64>) -> Result<(), String> {
        if last < self.txid {
            let next = last + 1;
            return Err(if self.inferred {
                format!(
                    "a commit record in its header is damaged and entry {next} at byte {stop} \
                     is damaged or missing: a crash tears that record only once transaction \
                     {} is committed",
                    self.txid
                )
            } else {
                format!(
                    "entry {next} at byte {stop} is damaged or missing, while its header \
                     records transactions up to {} as committed",
                    self.txid
                )
            });
        }
        match (self.end, reached) {
            (Some(want), Some(got)) if want != got => Err(format!(
                "transaction {} ends at byte {got}, while its header records it ending at \
                 byte {want}",
                self.txid
            )),
            _ => Ok(()),
        }
    }
}

/// What the journal whose header is `header` must hold over tables of generation `gen`;
/// None for a journal without records.
pub fn need(header: &[u8], gen: u64) -> Result<Option<Need>, String> {
    Ok(match committed(header)? {
        Committed::Unknown => None,
        Committed::AtLeast(txid) => Some(Need {
            txid,
            end: None,
            inferred: true,
        }),
        Committed::Known(r) if r.gen > gen => {
            return Err(format!(
                "its header records transaction {} of checkpoint generation {}, newer than \
                 the tables' generation {gen}: the tables lost a checkpoint",
                r.txid, r.gen
            ))
        }
        Committed::Known(r) => Some(Need {
            txid: r.txid,
            end: (r.gen == gen).then_some(r.end),
            inferred: false,
        }),
    })
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
