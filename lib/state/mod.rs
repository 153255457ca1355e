//! The state file: hosts, jobs and tasks of one cluster, shared by every tool.
//!
//! Promises (DESIGN.md): many readers and one writer at a time; a transaction is
//! all-or-nothing; a crash at any point leaves the old or the new state and never loses a
//! transaction that was reported; a commit costs what it changed, not the cluster's size; a
//! corrupt, truncated, foreign or newer file is an error (status 74) and is left as it is.
//!
//! How: the tables file (`STATE`) holds fixed-size, checksummed slots at fixed offsets and is
//! only rewritten at checkpoints. A commit appends the new images of the slots it changed to
//! the journal (`STATE.journal`) and fdatasyncs it — one sequential write and one flush,
//! whatever the size of the tables. Opening reads the tables, decodes them and replays the
//! journal over them. When the journal grows past a threshold the writer folds it into the
//! tables (checkpoint): it marks the checkpoint sequence odd, writes the dirty slots, syncs,
//! writes the next header copy, syncs, empties the journal and marks the sequence even. A
//! crash mid-checkpoint is harmless because the journal still holds every image the
//! checkpoint was writing; a slot whose checksum fails is accepted only if the journal
//! overwrites it.
//!
//! Telling a crash from damage: the sequence is twice the generation at rest, so a newest
//! header copy that fails its checksum while the sequence says it was written is damage,
//! not a torn write. Every commit is flushed before it is reported, so a crash can tear only
//! the last journal entry, one never reported. The journal's header records the last
//! commit (journal.rs says how, without a second flush), so an entry it covers that does
//! not replay whole, or a journal shorter than it says, is damage; past it, a damaged entry
//! with an intact one after it is damage too. All of these are refused rather than read as
//! an older state. A checkpoint leaves the records alone: one of an older generation than
//! the tables names what the tables already hold.
//!
//! Known limit: a reader may see a journal entry in the moment between its write and its
//! fdatasync; if the machine loses power in that moment, the entry is gone although a
//! reader saw it (the writer never reported it done).
//!
//! Readers take no lock: they note the checkpoint sequence, read, and check it did not move
//! (a seqlock); only if a checkpoint keeps getting in the way do they take the lock shared.
//! A writer refreshing its view between transactions reads the same way. Writers take
//! `STATE.lock` exclusively for the length of one transaction.
//!
//! Nothing is read or written through a mapping of the files: all of it is pread into
//! buffers of our own and pwritten from them. A reader racing a checkpoint copies bytes
//! that fail a checksum or a sequence that moved, and reads again, where decoding a shared
//! mapping would race the checkpoint's writes (undefined behaviour, not just a stale value).
//! A file cut short by someone else is a short read, status 74, not a SIGBUS; so is a full
//! disk for the writer, an error it can report.

pub mod history;
mod journal;
mod layout;
mod table;

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::mem::MaybeUninit;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::exit::{fail, Status};
use crate::fixed::{open_slot, Corrupt, Slot};
use crate::host::Host;
use crate::task::{Job, Task};
use journal::Next;
use layout::{Header, PAGE, SEQ_OFFSET};
pub use table::{Kind, Stored, Table};

/// Tuning for a state handle; the defaults suit the tools.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long a writer waits for the lock before giving up with status 75.
    pub lock_timeout: Duration,
    /// Journal size that triggers a checkpoint.
    pub checkpoint_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            lock_timeout: Duration::from_secs(30),
            checkpoint_bytes: 8 << 20,
        }
    }
}

/// The cluster as of one committed transaction.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub hosts: Table<Host>,
    pub jobs: Table<Job>,
    pub tasks: Table<Task>,
    /// The last committed transaction this view includes.
    pub txid: u64,
}

/// A record kind together with where it lives in a [`View`].
pub trait Member: Stored {
    fn table(view: &View) -> &Table<Self>;
    fn table_mut(view: &mut View) -> &mut Table<Self>;
    /// What to log so that replacing `old` in `slot` can be undone.
    fn undo(slot: u32, old: Option<Self>) -> Undo;
}

macro_rules! member {
    ($t:ty, $field:ident, $variant:ident) => {
        impl Member for $t {
            fn table(v: &View) -> &Table<Self> {
                &v.$field
            }
            fn table_mut(v: &mut View) -> &mut Table<Self> {
                &mut v.$field
            }
            fn undo(slot: u32, old: Option<Self>) -> Undo {
                Undo::$variant(slot, old)
            }
        }
    };
}

member!(Host, hosts, Host);
member!(Job, jobs, Job);
member!(Task, tasks, Task);

impl View {
    /// Decodes one slot image into its table; `Ok(false)` when the checksum fails.
    fn apply_image(&mut self, kind: Kind, slot: u32, image: &[u8]) -> Result<bool, Corrupt> {
        fn put<T: Member>(v: &mut View, slot: u32, image: &[u8]) -> Result<bool, Corrupt> {
            let value = match open_slot(image) {
                Ok(Slot::Empty) => None,
                Ok(Slot::Live { version, body }) => Some(T::decode(version, body)?),
                Err(_) => return Ok(false),
            };
            T::table_mut(v).set(slot, value);
            Ok(true)
        }
        match kind {
            Kind::Host => put::<Host>(self, slot, image),
            Kind::Job => put::<Job>(self, slot, image),
            Kind::Task => put::<Task>(self, slot, image),
        }
    }

    /// Encodes the current content of a slot (zeros when empty).
    fn image(&self, kind: Kind, slot: u32) -> Result<Vec<u8>> {
        fn enc<T: Member>(v: &View, slot: u32) -> Result<Vec<u8>> {
            let mut img = vec![0u8; T::KIND.slot_size()];
            if let Some(value) = T::table(v).get(slot) {
                value.encode(&mut img).map_err(|t| {
                    fail(
                        Status::BadInput,
                        format!(
                            "a {} record needs {} bytes; its slot holds {}",
                            T::KIND.name(),
                            t.needed,
                            t.room
                        ),
                    )
                })?;
            }
            Ok(img)
        }
        match kind {
            Kind::Host => enc::<Host>(self, slot),
            Kind::Job => enc::<Job>(self, slot),
            Kind::Task => enc::<Task>(self, slot),
        }
    }

    fn high_water(&self, kind: Kind) -> usize {
        match kind {
            Kind::Host => self.hosts.high_water(),
            Kind::Job => self.jobs.high_water(),
            Kind::Task => self.tasks.high_water(),
        }
    }
}

/// What a transaction overwrote, so an abandoned one can be put back.
pub enum Undo {
    Host(u32, Option<Host>),
    Job(u32, Option<Job>),
    Task(u32, Option<Task>),
}

impl Undo {
    fn target(&self) -> (Kind, u32) {
        match self {
            Undo::Host(s, _) => (Kind::Host, *s),
            Undo::Job(s, _) => (Kind::Job, *s),
            Undo::Task(s, _) => (Kind::Task, *s),
        }
    }

    fn revert(self, v: &mut View) {
        match self {
            Undo::Host(s, old) => {
                v.hosts.set(s, old);
            }
            Undo::Job(s, old) => {
                v.jobs.set(s, old);
            }
            Undo::Task(s, old) => {
                v.tasks.set(s, old);
            }
        }
    }
}

/// One transaction in progress: changes go straight into the view and are logged so they
/// can be reverted if the body fails or the commit cannot be made durable.
pub struct Txn<'a> {
    view: &'a mut View,
    undo: Vec<Undo>,
    now: f64,
}

impl<'a> Txn<'a> {
    pub fn view(&self) -> &View {
        self.view
    }

    /// The transaction's clock: one reading, so every record it stamps agrees.
    pub fn now(&self) -> f64 {
        self.now
    }

    /// Puts `value` (or nothing) into `slot` of its table. `slot` is an existing one or the
    /// next past the end ([`Table::next_free`]): tables have no holes that were never used.
    pub fn set<T: Member>(&mut self, slot: u32, value: Option<T>) {
        assert!(
            slot as usize <= T::table(self.view).high_water(),
            "slot {slot} is past the end of the {} table",
            T::KIND.name()
        );
        let old = T::table_mut(self.view).set(slot, value);
        self.undo.push(T::undo(slot, old));
    }

    /// Inserts or replaces the record with `value`'s key; returns its slot.
    pub fn upsert<T: Member>(&mut self, value: T) -> u32 {
        let table = T::table(self.view);
        let slot = table
            .find(&value.key())
            .unwrap_or_else(|| table.next_free());
        self.set(slot, Some(value));
        slot
    }

    pub fn remove<T: Member>(&mut self, slot: u32) {
        self.set::<T>(slot, None);
    }

    fn rollback(self) {
        for u in self.undo.into_iter().rev() {
            u.revert(self.view);
        }
    }
}

/// Adds what the transaction did to tasks to their jobs' counts (`crate::counts`), in the
/// same transaction: a transition and its count are committed together.
fn count_transitions(txn: &mut Txn) {
    let mut seen = std::collections::HashSet::new();
    let mut by_job: std::collections::BTreeMap<u32, crate::counts::Counts> = Default::default();
    for u in &txn.undo {
        let Undo::Task(slot, old) = u else { continue };
        // The first undo of a slot holds what it was before the transaction.
        if !seen.insert(*slot) {
            continue;
        }
        let Some(new) = txn.view.tasks.get(*slot) else {
            continue;
        };
        let counts = crate::counts::Counts::of_change(old.as_ref(), new);
        if !counts.is_zero() {
            by_job.entry(new.job).or_default().add(counts);
        }
    }
    for (slot, counts) in by_job {
        if let Some(job) = txn.view.jobs.get(slot) {
            let mut job = job.clone();
            job.counts.add(counts);
            txn.set(slot, Some(job));
        }
    }
}

/// An open state file.
pub struct State {
    path: PathBuf,
    tables: File,
    journal: File,
    lock: Option<File>,
    writable: bool,
    /// Set when a flush failed: what is on disk is no longer known, so this handle stops.
    poisoned: bool,
    header: Header,
    /// Whether `view` was read whole from the files, so that catching up may build on it
    /// (false until the first read, and after a catch-up that failed half-way).
    loaded: bool,
    view: View,
    journal_end: u64,
    /// Slots the journal has changed since the last checkpoint.
    dirty: BTreeSet<(Kind, u32)>,
    opts: Options,
}

fn corrupt(path: &Path, why: impl std::fmt::Display) -> anyhow::Error {
    fail(
        Status::Io,
        format!(
            "state file {} is unusable: {why}; left as it is",
            path.display()
        ),
    )
}

pub fn journal_path(path: &Path) -> PathBuf {
    suffixed(path, ".journal")
}

pub fn lock_path(path: &Path) -> PathBuf {
    suffixed(path, ".lock")
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

use crate::clock::now;

/// Files are created readable by the group and never by the world, let alone writable.
const FILE_MODE: u32 = 0o640;

impl State {
    /// Opens an existing state file for reading.
    pub fn open(path: &Path) -> Result<State> {
        Self::open_with(path, Options::default(), false)
    }

    /// Opens a state file for writing, creating it (and its directory) when missing.
    pub fn open_writer(path: &Path) -> Result<State> {
        Self::open_with(path, Options::default(), true)
    }

    pub fn open_with(path: &Path, opts: Options, writable: bool) -> Result<State> {
        let lock = if writable {
            Some(create_files(path, &opts)?)
        } else {
            OpenOptions::new().read(true).open(lock_path(path)).ok()
        };
        let tables = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|e| {
                let ctx = format!("cannot open state file {}", path.display());
                if e.kind() == io::ErrorKind::NotFound {
                    fail(
                        Status::Io,
                        format!("{ctx}: it does not exist (`offer add` creates it; see --state)"),
                    )
                } else {
                    anyhow::Error::from(e).context(ctx)
                }
            })?;
        let journal = match OpenOptions::new()
            .read(true)
            .write(writable)
            .open(journal_path(path))
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(corrupt(
                    &journal_path(path),
                    "missing: it holds what was committed since the last checkpoint",
                ))
            }
            Err(e) => {
                return Err(e).context(format!("cannot open {}", journal_path(path).display()))
            }
        };
        let mut state = State {
            path: path.to_path_buf(),
            tables,
            journal,
            lock,
            writable,
            poisoned: false,
            header: Header::new(),
            loaded: false,
            view: View::default(),
            journal_end: journal::START,
            dirty: BTreeSet::new(),
            opts,
        };
        if writable {
            state.under_shared_lock(State::load)?;
        } else {
            state.read_consistent()?;
        }
        Ok(state)
    }

    pub fn view(&self) -> &View {
        &self.view
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Brings the view up to date with what has been committed since it was read.
    pub fn refresh(&mut self) -> Result<()> {
        self.read_consistent()
    }

    /// Runs `body` as one transaction: all of its changes are committed durably, or none.
    pub fn write<R>(&mut self, body: impl FnOnce(&mut Txn) -> Result<R>) -> Result<R> {
        if !self.writable {
            return Err(fail(Status::Usage, "state opened read-only"));
        }
        if self.poisoned {
            return Err(fail(
                Status::Io,
                "an earlier flush of the state failed; not writing",
            ));
        }
        let lock = self.lock.take().expect("writers hold a lock file");
        let result = lock_file(&lock, true, self.opts.lock_timeout, &self.path)
            .and_then(|()| self.write_locked(body));
        let _ = lock.unlock();
        self.lock = Some(lock);
        result
    }

    /// Like [`State::write`], for a body that often has nothing to change (a follower's
    /// pass): the body first runs on the view brought up to date without the lock, and its
    /// changes are undone; only if it set something (or failed) is the lock taken and
    /// the body run again as a real transaction on what is committed by then. Otherwise its
    /// result from that rehearsal is returned, and no other writer waited.
    pub fn write_if_changed<R>(
        &mut self,
        mut body: impl FnMut(&mut Txn) -> Result<R>,
    ) -> Result<R> {
        // An odd sequence is a checkpoint under way, or one a crash interrupted, which only
        // a writer holding the lock finishes: until one does, every read waits it out and
        // then reads the whole file under the lock.
        if !self.writable || self.poisoned || self.read_seq()? % 2 == 1 {
            return self.write(body);
        }
        self.read_consistent()?;
        let mut txn = Txn {
            view: &mut self.view,
            undo: Vec::new(),
            now: now(),
        };
        let out = body(&mut txn);
        let changed = !txn.undo.is_empty();
        txn.rollback();
        match out {
            Ok(out) if !changed => Ok(out),
            _ => self.write(body),
        }
    }

    fn write_locked<R>(&mut self, body: impl FnOnce(&mut Txn) -> Result<R>) -> Result<R> {
        self.catch_up()?;
        if self.read_seq()? % 2 == 1 {
            self.checkpoint()
                .context("finishing an interrupted checkpoint")?;
        }
        let mut txn = Txn {
            view: &mut self.view,
            undo: Vec::new(),
            now: now(),
        };
        let out = match body(&mut txn) {
            Ok(out) => out,
            Err(e) => {
                txn.rollback();
                return Err(e);
            }
        };
        count_transitions(&mut txn);
        let changed: BTreeSet<(Kind, u32)> = txn.undo.iter().map(Undo::target).collect();
        if changed.is_empty() {
            return Ok(out);
        }
        let images = changed
            .iter()
            .map(|&(k, s)| txn.view.image(k, s).map(|img| (k, s, img)))
            .collect::<Result<Vec<_>>>();
        let images = match images {
            Ok(i) => i,
            Err(e) => {
                txn.rollback();
                return Err(e);
            }
        };
        if journal::body_len(&images) > journal::MAX_BODY {
            txn.rollback();
            return Err(fail(
                Status::BadInput,
                format!(
                    "transaction too large: over {} MiB of changed records; split it",
                    journal::MAX_BODY >> 20
                ),
            ));
        }
        // The transitions go to the history first, durably: once the journal entry makes
        // the transaction durable, they are there (a crash between leaves them to be cut).
        let lines = history::lines(&txn.undo, txn.view, txn.view.txid + 1, txn.now);
        if !lines.is_empty() {
            if let Err(e) = history::append(&self.path, txn.view.txid, &lines) {
                txn.rollback();
                self.poisoned = true;
                return Err(e).context("appending to the history; the transaction was not made");
            }
        }
        let entry = journal::encode_entry(self.header.gen, txn.view.txid + 1, &images);
        let journal = &self.journal;
        if let Err(e) = journal.write_all_at(&entry, self.journal_end) {
            txn.rollback();
            return Err(e).context("appending to the journal");
        }
        // The one flush that makes the transaction durable. If it fails, the kernel may
        // already have dropped the dirty pages and a second fsync would "succeed" without
        // writing them (Linux): never retry; report, and stop using this handle.
        if let Err(e) = journal.sync_data() {
            txn.rollback();
            self.poisoned = true;
            return Err(e)
                .context("flushing the journal failed; the transaction was not reported done");
        }
        txn.view.txid += 1;
        self.journal_end += entry.len() as u64;
        self.dirty.extend(changed);
        self.record_commit();
        if self.journal_end > self.opts.checkpoint_bytes {
            // The transaction is durable whatever happens here; a failed checkpoint is
            // finished by the next writer, so it is reported but does not undo the commit.
            if let Err(e) = self.checkpoint() {
                self.poisoned = true;
                eprintln!(
                    "formic: checkpoint of {} failed (the next writer finishes it): {e:#}",
                    self.path.display()
                );
            }
        }
        Ok(out)
    }

    /// Records in the journal's header the transaction just made durable. No flush: the
    /// next commit's fdatasync carries the record, and until then the page cache shows it to
    /// every process. The transaction is durable whether or not this works; a failure only
    /// leaves the older record in place, so it is reported, and this handle stops as after
    /// any failed write.
    fn record_commit(&mut self) {
        let (at, record) = journal::Record {
            gen: self.header.gen,
            txid: self.view.txid,
            end: self.journal_end,
        }
        .encode();
        if let Err(e) = self.journal.write_all_at(&record, at) {
            self.poisoned = true;
            eprintln!(
                "formic: recording commit {} in {} failed (it is durable all the same): {e}",
                self.view.txid,
                journal_path(&self.path).display()
            );
        }
    }

    /// Brings the view up to date so that it is consistent, without a lock: note the
    /// checkpoint sequence, catch up (replay the journal entries committed since the view
    /// was read, or read everything again if a checkpoint has folded them), and check that
    /// the sequence did not move. A catch-up that raced a checkpoint may fail (the journal
    /// cut under it) or stop early, but what it applied was committed, in order; it is
    /// tried again. Only if checkpoints keep getting in the way, or one was left half done
    /// by a crash, is the shared lock taken.
    fn read_consistent(&mut self) -> Result<()> {
        for attempt in 0..4u64 {
            let before = self.read_seq()?;
            if before % 2 == 0 && self.catch_up().is_ok() && self.read_seq()? == before {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(attempt * 5));
        }
        if self.lock.is_none() {
            return self.load();
        }
        self.under_shared_lock(|s| {
            if s.read_seq()? % 2 == 1 {
                s.load()
            } else {
                s.catch_up()
            }
        })
    }

    fn under_shared_lock(&mut self, read: impl FnOnce(&mut State) -> Result<()>) -> Result<()> {
        let lock = self.lock.take().expect("a lock file to take");
        let r =
            lock_file(&lock, false, self.opts.lock_timeout, &self.path).and_then(|()| read(self));
        let _ = lock.unlock();
        self.lock = Some(lock);
        r
    }

    fn read_seq(&self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.tables
            .read_exact_at(&mut b, SEQ_OFFSET as u64)
            .map_err(|_| corrupt(&self.path, "truncated: shorter than its header page"))?;
        Ok(u64::from_le_bytes(b))
    }

    fn read_header(&self) -> Result<Header> {
        let len = self
            .tables
            .metadata()
            .context("reading the state file's size")?
            .len();
        let mut page0 = vec![0u8; PAGE as usize];
        let n = read_up_to(&self.tables, &mut page0, 0).context("reading the state file")?;
        layout::read_header(&page0[..n], len).map_err(|c| corrupt(&self.path, c))
    }

    /// Reads tables and journal from scratch into a fresh view.
    fn load(&mut self) -> Result<()> {
        let header = self.read_header()?;
        let mut view = View::default();
        let mut torn = BTreeSet::new();
        {
            let bad = |kind: Kind, e: TableError| match e {
                TableError::Slot(slot, c) => {
                    corrupt(&self.path, format!("{} slot {slot}: {c}", kind.name()))
                }
                TableError::Short(at) => corrupt(
                    &self.path,
                    format!(
                        "truncated while being read: it ended before byte {at}, and its \
                         header needs {} bytes",
                        header.end
                    ),
                ),
                TableError::Io(e) => anyhow::Error::from(e)
                    .context(format!("reading state file {}", self.path.display())),
            };
            let (hosts, t) = decode_table::<Host>(&self.tables, header.table(Kind::Host))
                .map_err(|e| bad(Kind::Host, e))?;
            torn.extend(t.into_iter().map(|s| (Kind::Host, s)));
            let (jobs, t) = decode_table::<Job>(&self.tables, header.table(Kind::Job))
                .map_err(|e| bad(Kind::Job, e))?;
            torn.extend(t.into_iter().map(|s| (Kind::Job, s)));
            let (tasks, t) = decode_table::<Task>(&self.tables, header.table(Kind::Task))
                .map_err(|e| bad(Kind::Task, e))?;
            torn.extend(t.into_iter().map(|s| (Kind::Task, s)));
            (view.hosts, view.jobs, view.tasks) = (hosts, jobs, tasks);
        }
        view.txid = header.txid;
        let mut dirty = BTreeSet::new();
        let journal_end = self.replay(&header, &mut view, journal::START, &mut dirty, &mut torn)?;
        if let Some((kind, slot)) = torn.first() {
            return Err(corrupt(
                &self.path,
                format!("{} slot {slot}: checksum mismatch", kind.name()),
            ));
        }
        self.header = header;
        self.view = view;
        self.journal_end = journal_end;
        self.dirty = dirty;
        self.loaded = true;
        Ok(())
    }

    /// Applies journal entries from `from` onward; returns where the valid entries end.
    fn replay(
        &self,
        header: &Header,
        view: &mut View,
        from: u64,
        dirty: &mut BTreeSet<(Kind, u32)>,
        torn: &mut BTreeSet<(Kind, u32)>,
    ) -> Result<u64> {
        let journal = &self.journal;
        let jpath = journal_path(&self.path);
        let need = self.journal_need(header)?;
        // The size is read after the header: the writer writes a record only once its
        // entry is in the file, so the file is at least as long as any record read before.
        let mut len = journal
            .metadata()
            .context("reading the journal's size")?
            .len();
        if let Some(journal::Need {
            txid,
            end: Some(end),
            ..
        }) = need
        {
            if len < end {
                return Err(corrupt(
                    &jpath,
                    format!(
                        "truncated: {len} bytes, while its header records transaction {txid} \
                         as committed, ending at byte {end}"
                    ),
                ));
            }
        }
        let mut reached = need
            .as_ref()
            .is_some_and(|n| n.txid == view.txid)
            .then_some(from);
        // Read in chunks: the file may be much longer than its live entries (a checkpoint's
        // cut may not have reached the disk), and a writer catching up wants only the new ones.
        let mut pos = from;
        let mut buf = Vec::new();
        let mut at = 0usize;
        let mut want = 64 << 10;
        loop {
            if buf.len() - at < want && pos < len {
                buf.drain(..at);
                at = 0;
                let old = buf.len();
                let add = (want - old).max(64 << 10).min((len - pos) as usize);
                buf.resize(old + add, 0);
                let n = read_up_to(journal, &mut buf[old..], pos).context("reading the journal")?;
                buf.truncate(old + n);
                pos += n as u64;
                if n < add {
                    len = pos; // the file is shorter than it was a moment ago
                }
            }
            let offset = pos - (buf.len() - at) as u64;
            let next = journal::next_entry(&buf[at..], header.gen, view.txid + 1)
                .map_err(|e| corrupt(&jpath, format!("entry at byte {offset}: {e}")))?;
            let (len_, changes) = match next {
                Next::Entry { len, changes } => (len, changes),
                Next::NeedMore { len: need } if pos < len && need > buf.len() - at => {
                    want = need;
                    continue;
                }
                Next::NeedMore { .. } | Next::End => break,
            };
            for c in changes {
                // Transactions fill tables from the lowest free slot up, so an entry never
                // names a slot past the end of its table; one that does would make us
                // allocate for it.
                if c.slot as usize > view.high_water(c.kind) {
                    return Err(corrupt(
                        &jpath,
                        format!(
                            "entry {} names {} slot {} past the table's end",
                            view.txid + 1,
                            c.kind.name(),
                            c.slot
                        ),
                    ));
                }
                let ok = view.apply_image(c.kind, c.slot, c.image).map_err(|e| {
                    corrupt(
                        &jpath,
                        format!(
                            "entry {}: {} slot {}: {e}",
                            view.txid + 1,
                            c.kind.name(),
                            c.slot
                        ),
                    )
                })?;
                if !ok {
                    return Err(corrupt(
                        &jpath,
                        format!("entry {} holds a damaged image", view.txid + 1),
                    ));
                }
                dirty.insert((c.kind, c.slot));
                torn.remove(&(c.kind, c.slot));
            }
            view.txid += 1;
            at += len_;
            want = 64 << 10;
            if need.as_ref().is_some_and(|n| n.txid == view.txid) {
                reached = Some(pos - (buf.len() - at) as u64);
            }
        }
        let end = pos - (buf.len() - at) as u64;
        if end < len {
            let mut rest = vec![0u8; (len - end) as usize];
            let n = read_up_to(journal, &mut rest, end).context("reading the journal")?;
            if let Some((off, t)) = journal::later_entry(&rest[..n], header.gen, view.txid + 1) {
                return Err(corrupt(
                    &jpath,
                    format!(
                        "entry {} at byte {end} is damaged while entry {t} follows at byte {}",
                        view.txid + 1,
                        end + off as u64
                    ),
                ));
            }
        }
        if let Some(need) = need {
            need.check(view.txid, end, reached)
                .map_err(|e| corrupt(&jpath, e))?;
        }
        Ok(end)
    }

    /// Reads the journal's header: its magic, and what it records as committed over tables
    /// whose header is `tables`.
    fn journal_need(&self, tables: &Header) -> Result<Option<journal::Need>> {
        let jpath = journal_path(&self.path);
        let mut head = [0u8; journal::START as usize];
        let n = read_up_to(&self.journal, &mut head, 0).context("reading the journal")?;
        if n < head.len() {
            return Err(corrupt(&jpath, "truncated: shorter than its header"));
        }
        if &head[..8] != journal::MAGIC {
            return Err(corrupt(&jpath, "not a formic journal (bad magic)"));
        }
        journal::need(&head, tables.gen).map_err(|e| corrupt(&jpath, e))
    }

    /// Applies what was committed since this view was read, or reads everything again if a
    /// checkpoint has folded the journal it followed. A writer does this under the lock
    /// before each transaction; every refresh does it without one (see `read_consistent`).
    fn catch_up(&mut self) -> Result<()> {
        let header = self.read_header()?;
        if !self.loaded || header.gen != self.header.gen {
            return self.load(); // a checkpoint folded the journal we had been following
        }
        let mut view = std::mem::take(&mut self.view);
        let mut dirty = std::mem::take(&mut self.dirty);
        let result = self.replay(
            &header,
            &mut view,
            self.journal_end,
            &mut dirty,
            &mut BTreeSet::new(),
        );
        self.view = view;
        self.dirty = dirty;
        match result {
            Ok(end) => {
                self.journal_end = end;
                Ok(())
            }
            Err(e) => {
                // Our view may be half-updated: start again from the files, now or (if they
                // cannot be read either) at the next catch-up.
                self.loaded = false;
                let _ = self.load();
                Err(e)
            }
        }
    }

    /// Folds the journal into the tables (see the module comment for the order of writes).
    fn checkpoint(&mut self) -> Result<()> {
        let mut next = self.header.clone();
        next.gen += 1;
        next.txid = self.view.txid;
        for kind in table::KINDS {
            let need = self.view.high_water(kind);
            if !next.grow(kind, need as u64) {
                return Err(fail(
                    Status::Io,
                    format!("table {} cannot grow past {need} slots", kind.name()),
                ));
            }
            next.tables[kind as usize].used = need as u32;
        }
        let odd = layout::seq_for(next.gen) - 1;
        self.tables
            .write_all_at(&odd.to_le_bytes(), SEQ_OFFSET as u64)
            .context("marking checkpoint")?;
        let len = self.tables.metadata()?.len();
        if next.end > len {
            self.tables
                .set_len(next.end)
                .context("growing the state file")?;
        }
        for &(kind, slot) in &self.dirty {
            let image = self.view.image(kind, slot)?;
            let at = next.table(kind).slot_range(slot).start as u64;
            self.tables
                .write_all_at(&image, at)
                .context("writing the tables")?;
        }
        self.tables.sync_data().context("flushing the tables")?;
        self.tables
            .write_all_at(&next.encode(), layout::header_offset(next.gen))
            .context("writing the header")?;
        self.tables.sync_data().context("flushing the header")?;
        let journal = &self.journal;
        // Entries of the old generation are dead now. Cutting them off keeps opens from
        // reading them and leaves behind the last entry only what a crash can leave: a
        // torn tail, which `replay` can tell from damage.
        journal
            .set_len(journal::START)
            .context("emptying the journal")?;
        self.tables
            .write_all_at(&(odd + 1).to_le_bytes(), SEQ_OFFSET as u64)
            .context("ending checkpoint")?;
        self.header = next;
        self.journal_end = journal::START;
        self.dirty.clear();
        Ok(())
    }

    /// Folds the journal into the tables now (tests and benchmarks use this to measure
    /// both paths; tools leave it to the threshold).
    pub fn checkpoint_now(&mut self) -> Result<()> {
        let lock = self.lock.take().expect("writers hold a lock file");
        let r = lock_file(&lock, true, self.opts.lock_timeout, &self.path)
            .and_then(|()| self.catch_up())
            .and_then(|()| self.checkpoint());
        let _ = lock.unlock();
        self.lock = Some(lock);
        r
    }
}

/// Why a table could not be read.
enum TableError {
    /// A slot whose checksum holds decodes to nonsense.
    Slot(u32, Corrupt),
    /// The file ended before this byte: someone cut it while it was being read.
    Short(u64),
    Io(io::Error),
}

/// Bytes of slots read at a time: a block stays in the core's cache while it is decoded.
const READ_BLOCK: usize = 128 << 10;

/// Reads a table's slots with pread, a block at a time into a buffer of its own, and
/// decodes them, split across the cores when the table is large. Returns the records by
/// slot and the slots whose checksum failed (torn or damaged).
///
/// Why pread and not a mapping of the file: a checkpoint rewrites slots in place while
/// readers read without a lock (the checkpoint sequence tells them afterwards to read
/// again), and anyone may truncate the file. Decoding a shared mapping would race those
/// writes (undefined behaviour for Rust, not merely a stale value) and die of SIGBUS on a
/// page cut off; a private mapping does neither better, since its pages not yet copied
/// still follow the file. Copied out with pread, a torn slot is only bytes that fail
/// their checksum or a sequence that moved, and a cut file is a short read.
fn decode_table<T: Stored + Send>(
    file: &File,
    desc: &layout::TableDesc,
) -> Result<(Table<T>, Vec<u32>), TableError> {
    let used = desc.used as usize;
    let threads = if used < 65_536 {
        1
    } else {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8)
    };
    let chunk = used.div_ceil(threads).max(1);
    let slot_size = desc.slot_size as usize;
    let per_block = (READ_BLOCK / slot_size).max(1);
    // Each part returns its torn slots and its empty ones (the table's free list).
    type Part = Result<(Vec<u32>, Vec<u32>), TableError>;
    let decode_part = |first: usize, part: &mut [MaybeUninit<Option<T>>]| -> Part {
        let mut torn = Vec::new();
        let mut free = Vec::new();
        let mut buf = vec![0u8; per_block.min(part.len()) * slot_size];
        let mut i = 0;
        let mut fail = None;
        while i < part.len() && fail.is_none() {
            // The slots from here on that lie together in one extent, up to a block.
            let slot = (first + i) as u32;
            let start = desc.slot_range(slot).start;
            let n = (desc.run_from(slot) as usize)
                .min(per_block)
                .min(part.len() - i);
            let bytes = &mut buf[..n * slot_size];
            match read_up_to(file, bytes, start as u64) {
                Ok(got) if got == bytes.len() => {}
                Ok(got) => {
                    fail = Some(TableError::Short((start + got) as u64));
                    break;
                }
                Err(e) => {
                    fail = Some(TableError::Io(e));
                    break;
                }
            }
            for (k, image) in bytes.chunks_exact(slot_size).enumerate() {
                let slot = slot + k as u32;
                let value = match open_slot(image) {
                    Ok(Slot::Empty) => None,
                    Ok(Slot::Live { version, body }) => match T::decode(version, body) {
                        Ok(v) => Some(v),
                        Err(c) => {
                            fail = Some(TableError::Slot(slot, c));
                            break;
                        }
                    },
                    Err(_) => {
                        torn.push(slot);
                        None
                    }
                };
                if value.is_none() {
                    free.push(slot);
                }
                part[i].write(value);
                i += 1;
            }
        }
        match fail {
            None => Ok((torn, free)),
            Some(e) => {
                // Leave no element uninitialised, then report.
                part[i..].iter_mut().for_each(|rest| {
                    rest.write(None);
                });
                Err(e)
            }
        }
    };
    // Each slot is written exactly once, straight into the table's vector: a million tasks
    // are not first filled with None and then overwritten.
    let mut slots: Vec<Option<T>> = Vec::with_capacity(used);
    let spare = &mut slots.spare_capacity_mut()[..used];
    advise_huge_pages(spare);
    let results: Vec<Part> = if threads == 1 {
        vec![decode_part(0, spare)]
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = spare
                .chunks_mut(chunk)
                .enumerate()
                .map(|(n, part)| scope.spawn(move || decode_part(n * chunk, part)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("decoding thread"))
                .collect()
        })
    };
    // SAFETY: every part wrote all of its elements (on success and on error alike), and the
    // parts cover 0..used.
    unsafe { slots.set_len(used) };
    let (mut torn, mut free) = (Vec::new(), Vec::new());
    for r in results {
        let (t, f) = r?;
        torn.extend(t);
        free.extend(f);
    }
    Ok((Table::from_decoded(slots, &free), torn))
}

/// Asks for transparent huge pages under a large fresh allocation: filling a hundred
/// megabytes of tasks in 4 KiB pages costs tens of thousands of page faults.
fn advise_huge_pages<T>(mem: &mut [T]) {
    const HUGE: usize = 2 << 20;
    let (start, len) = (mem.as_mut_ptr() as usize, std::mem::size_of_val(mem));
    let first = start.next_multiple_of(HUGE);
    let end = (start + len) / HUGE * HUGE;
    if end > first {
        // SAFETY: advice only, on memory this allocation owns; failure changes nothing.
        unsafe { nix::libc::madvise(first as *mut _, end - first, nix::libc::MADV_HUGEPAGE) };
    }
}

fn read_up_to(f: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], at + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Takes the lock, waiting up to `timeout`; a lock still busy then is a temporary failure.
fn lock_file(lock: &File, exclusive: bool, timeout: Duration, path: &Path) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(200);
    loop {
        let r = if exclusive {
            lock.try_lock()
        } else {
            lock.try_lock_shared()
        };
        match r {
            Ok(()) => return Ok(()),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(TryLockError::WouldBlock) => {
                return Err(fail(
                    Status::Temporary,
                    format!(
                        "state {} is locked by another writer (waited {:?})",
                        path.display(),
                        timeout
                    ),
                ))
            }
            Err(TryLockError::Error(e)) => return Err(e).context("locking the state"),
        }
    }
}

/// Creates the directory, lock file, tables file and journal as needed; returns the lock.
fn create_files(path: &Path, opts: &Options) -> Result<File> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711) // others may pass through to run/ (task sandboxes), not list or write
            .create(dir)
            .with_context(|| format!("creating state directory {}", dir.display()))?;
    }
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(lock_path(path))
        .with_context(|| format!("opening lock file {}", lock_path(path).display()))?;
    if path.exists() && journal_path(path).exists() {
        return Ok(lock);
    }
    lock_file(&lock, true, opts.lock_timeout, path)?;
    // The journal is made first: a state file without its journal has lost the commits
    // since its last checkpoint, and must not be mistaken for a half-created one.
    let r = (|| match (path.exists(), journal_path(path).exists()) {
        (true, true) => Ok(()),
        (true, false) => Err(corrupt(
            &journal_path(path),
            "missing: it holds what was committed since the last checkpoint",
        )),
        (false, true) if fs::metadata(journal_path(path))?.len() > journal::START => Err(corrupt(
            path,
            "missing, while its journal holds transactions",
        )),
        (false, journal) => {
            if !journal {
                create_atomically(&journal_path(path), &journal::new_header())?;
            }
            create_atomically(path, &layout::new_page0())
        }
    })();
    let _ = lock.unlock();
    r.map(|()| lock)
}

/// Writes a new file under a temporary name, flushes it, and renames it into place, so a
/// crash leaves either no file or a whole one.
fn create_atomically(path: &Path, content: &[u8]) -> Result<()> {
    let tmp = suffixed(path, ".new");
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all_at(content, 0)?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("creating {}", path.display()))?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests;
