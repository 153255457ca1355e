//! A table of one kind of record, as held in memory: slots indexed like the file's, a free
//! list for reuse, and a key index built only when someone looks a key up (reading a million
//! tasks to list them should not pay for hashing them).

use std::cell::OnceCell;
use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

use crate::fixed::{Corrupt, TooLarge};
use crate::host::{self, Host};
use crate::task::{self, Job, Task};

/// The record kinds the state file holds, in table order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Host = 0,
    Job = 1,
    Task = 2,
}

pub const KINDS: [Kind; 3] = [Kind::Host, Kind::Job, Kind::Task];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Host => "hosts",
            Kind::Job => "jobs",
            Kind::Task => "tasks",
        }
    }

    pub fn slot_size(self) -> usize {
        match self {
            Kind::Host => host::SLOT_SIZE,
            Kind::Job => task::JOB_SLOT_SIZE,
            Kind::Task => task::TASK_SLOT_SIZE,
        }
    }

    /// Slots in a table's first extent; each further extent doubles the table.
    pub fn base_slots(self) -> u32 {
        match self {
            Kind::Host | Kind::Job => 256,
            Kind::Task => 4096,
        }
    }

    pub fn from_u8(v: u8) -> Option<Kind> {
        KINDS.get(v as usize).copied()
    }
}

/// A record the state file stores.
pub trait Stored: Clone + Sized {
    const KIND: Kind;
    type Key: Clone + Eq + Hash;
    fn key(&self) -> Self::Key;
    fn encode(&self, slot: &mut [u8]) -> Result<(), TooLarge>;
    fn decode(version: u8, body: &[u8]) -> Result<Self, Corrupt>;
}

impl Stored for Host {
    const KIND: Kind = Kind::Host;
    type Key = String;
    fn key(&self) -> String {
        self.name.clone()
    }
    fn encode(&self, slot: &mut [u8]) -> Result<(), TooLarge> {
        Host::encode(self, slot)
    }
    fn decode(version: u8, body: &[u8]) -> Result<Self, Corrupt> {
        Host::decode(version, body)
    }
}

impl Stored for Job {
    const KIND: Kind = Kind::Job;
    type Key = String;
    fn key(&self) -> String {
        self.key.clone()
    }
    fn encode(&self, slot: &mut [u8]) -> Result<(), TooLarge> {
        Job::encode(self, slot)
    }
    fn decode(version: u8, body: &[u8]) -> Result<Self, Corrupt> {
        Job::decode(version, body)
    }
}

impl Stored for Task {
    const KIND: Kind = Kind::Task;
    type Key = (u32, u32);
    fn key(&self) -> (u32, u32) {
        (self.job, self.instance)
    }
    fn encode(&self, slot: &mut [u8]) -> Result<(), TooLarge> {
        Task::encode(self, slot)
    }
    fn decode(version: u8, body: &[u8]) -> Result<Self, Corrupt> {
        Task::decode(version, body)
    }
}

#[derive(Clone, Debug)]
pub struct Table<T: Stored> {
    slots: Vec<Option<T>>,
    free: BTreeSet<u32>,
    live: usize,
    index: OnceCell<HashMap<T::Key, u32>>,
}

impl<T: Stored> Default for Table<T> {
    fn default() -> Self {
        Table {
            slots: Vec::new(),
            free: BTreeSet::new(),
            live: 0,
            index: OnceCell::new(),
        }
    }
}

impl<T: Stored> Table<T> {
    /// A table from records by slot, as decoded from the file, and its empty slots.
    pub fn from_decoded(slots: Vec<Option<T>>, empty: &[u32]) -> Self {
        let free: BTreeSet<u32> = empty.iter().copied().collect();
        let live = slots.len() - free.len();
        Table {
            slots,
            free,
            live,
            index: OnceCell::new(),
        }
    }

    /// Number of live records.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// One past the highest slot ever used: how far the file's table must reach.
    pub fn high_water(&self) -> usize {
        self.slots.len()
    }

    pub fn get(&self, slot: u32) -> Option<&T> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    /// Live records with their slots, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|v| (i as u32, v)))
    }

    pub fn find(&self, key: &T::Key) -> Option<u32> {
        let index = self
            .index
            .get_or_init(|| self.iter().map(|(i, v)| (v.key(), i)).collect());
        index.get(key).copied()
    }

    /// The slot a new record would take: the lowest free one, else a new one at the end.
    pub fn next_free(&self) -> u32 {
        self.free
            .first()
            .copied()
            .unwrap_or(self.slots.len() as u32)
    }

    /// Puts `value` (or nothing) into `slot`, returning what was there.
    pub fn set(&mut self, slot: u32, value: Option<T>) -> Option<T> {
        let i = slot as usize;
        if i >= self.slots.len() {
            for s in self.slots.len() as u32..slot {
                self.free.insert(s);
            }
            self.slots.resize(i + 1, None);
        }
        if let Some(index) = self.index.get_mut() {
            if let Some(old) = &self.slots[i] {
                index.remove(&old.key());
            }
            if let Some(new) = &value {
                index.insert(new.key(), slot);
            }
        }
        match &value {
            Some(_) => self.free.remove(&slot),
            None => self.free.insert(slot),
        };
        let old = std::mem::replace(&mut self.slots[i], value);
        self.live = self.live + usize::from(self.slots[i].is_some()) - usize::from(old.is_some());
        old
    }
}
