//! Unit tests of the state file's transactions; the crash, corruption and concurrency
//! tests run real processes in tests/integration.

use super::*;
use crate::host::{Maintenance, Transport};

fn host(name: &str, cpus: u32) -> Host {
    Host {
        name: name.into(),
        cpus,
        ram_mb: 1024,
        disk_mb: 0,
        gpus: 0,
        ports: vec![],
        attrs: vec![],
        cpu_factor: 1.0,
        transport: Transport::Local,
        maintenance: Maintenance::none(),
        access: Default::default(),
        liveness: Default::default(),
    }
}

fn names(state: &State) -> Vec<String> {
    let mut v: Vec<String> = state
        .view()
        .hosts
        .iter()
        .map(|(_, h)| h.name.clone())
        .collect();
    v.sort();
    v
}

#[test]
fn a_failed_body_changes_nothing_in_memory_or_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let mut s = State::open_writer(&path).unwrap();
    s.write(|tx| {
        tx.upsert(host("a", 1000));
        Ok(())
    })
    .unwrap();
    let before = (
        std::fs::read(&path).unwrap(),
        std::fs::read(journal_path(&path)).unwrap(),
    );
    let r = s.write(|tx| {
        tx.upsert(host("b", 1000));
        let a = tx.view().hosts.find(&"a".to_string()).unwrap();
        tx.remove::<Host>(a);
        Err::<(), _>(anyhow::anyhow!("changed my mind"))
    });
    assert!(r.is_err());
    assert_eq!(names(&s), ["a"]);
    assert_eq!(
        s.view().hosts.find(&"b".to_string()),
        None,
        "index reverted too"
    );
    assert_eq!(
        before,
        (
            std::fs::read(&path).unwrap(),
            std::fs::read(journal_path(&path)).unwrap()
        )
    );
}

#[test]
fn commits_survive_reopen_with_and_without_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    // A tiny threshold checkpoints after every commit; tables grow through several extents.
    let opts = Options {
        checkpoint_bytes: 1,
        ..Options::default()
    };
    let mut s = State::open_with(&path, opts, true).unwrap();
    for i in 0..700u32 {
        s.write(|tx| {
            tx.upsert(host(&format!("h{i:03}"), 1000 + i));
            Ok(())
        })
        .unwrap();
    }
    s.write(|tx| {
        let slot = tx.view().hosts.find(&"h005".to_string()).unwrap();
        tx.remove::<Host>(slot);
        Ok(())
    })
    .unwrap();
    let r = State::open(&path).unwrap();
    assert_eq!(r.view().txid, 701);
    assert_eq!(r.view().hosts.len(), 699);
    assert_eq!(
        r.view()
            .hosts
            .get(r.view().hosts.find(&"h699".to_string()).unwrap())
            .unwrap()
            .cpus,
        1699
    );
    assert_eq!(r.view().hosts.find(&"h005".to_string()), None);
    // The freed slot is reused first.
    s.write(|tx| {
        assert_eq!(tx.upsert(host("new", 1)), 5);
        Ok(())
    })
    .unwrap();
}

#[test]
fn a_writer_sees_what_another_committed_before_it_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let mut one = State::open_writer(&path).unwrap();
    let mut two = State::open_writer(&path).unwrap();
    one.write(|tx| {
        tx.upsert(host("from-one", 1));
        Ok(())
    })
    .unwrap();
    two.write(|tx| {
        assert!(tx.view().hosts.find(&"from-one".to_string()).is_some());
        tx.upsert(host("from-two", 1));
        Ok(())
    })
    .unwrap();
    one.checkpoint_now().unwrap(); // folds two's commit, which one had not yet read
    two.write(|tx| {
        tx.upsert(host("after-checkpoint", 1));
        Ok(())
    })
    .unwrap();
    let mut reader = State::open(&path).unwrap();
    assert_eq!(names(&reader), ["after-checkpoint", "from-one", "from-two"]);
    one.write(|tx| {
        tx.upsert(host("last", 1));
        Ok(())
    })
    .unwrap();
    reader.refresh().unwrap();
    assert_eq!(reader.view().txid, 4);
    assert_eq!(names(&reader).len(), 4);
}

#[test]
fn an_empty_transaction_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let mut s = State::open_writer(&path).unwrap();
    let len = std::fs::metadata(journal_path(&path)).unwrap().len();
    s.write(|_| Ok(())).unwrap();
    assert_eq!(s.view().txid, 0);
    assert_eq!(std::fs::metadata(journal_path(&path)).unwrap().len(), len);
}

#[test]
fn a_reader_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    State::open_writer(&path).unwrap();
    let mut r = State::open(&path).unwrap();
    assert_eq!(
        crate::exit::status_of(&r.write(|_| Ok(())).unwrap_err()),
        Status::Usage
    );
}

/// A writer that follows (refreshes between its own commits) sees every commit of another
/// writer, whether its journal was replayed or a checkpoint folded it meanwhile.
#[test]
fn a_following_writer_sees_each_commit_through_journal_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    for checkpoint_bytes in [1, 8 << 20] {
        let opts = Options {
            checkpoint_bytes,
            ..Options::default()
        };
        let mut a = State::open_with(&path, opts.clone(), true).unwrap();
        let mut b = State::open_with(&path, opts, true).unwrap();
        for i in 0..20 {
            let name = format!("{checkpoint_bytes}-{i}");
            a.write(|tx| {
                tx.upsert(host(&name, 1000 + i));
                Ok(())
            })
            .unwrap();
            b.refresh().unwrap();
            assert_eq!(names(&b), names(&a), "after {name}");
            assert_eq!(b.view().txid, a.view().txid);
            // And b's own commit lands on top of what it has caught up with.
            b.write(|tx| {
                let slot = tx.view().hosts.find(&name).unwrap();
                let mut h = tx.view().hosts.get(slot).unwrap().clone();
                h.cpus += 1;
                tx.set(slot, Some(h));
                Ok(())
            })
            .unwrap();
            a.refresh().unwrap();
            let slot = a.view().hosts.find(&name).unwrap();
            assert_eq!(a.view().hosts.get(slot).unwrap().cpus, 1001 + i);
        }
    }
}

/// Flips one byte of the journal in place.
fn flip_journal_byte(path: &Path, at: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(journal_path(path))
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x01], at).unwrap();
}

fn add_host(s: &mut State, name: &str) {
    s.write(|tx| {
        tx.upsert(host(name, 1000));
        Ok(())
    })
    .unwrap();
}

/// A journal written before commits were recorded (zeros after the magic) still opens by
/// the old rule, and is protected from its first commit on: before the records, a damaged
/// last entry was dropped as a torn write, here (h4) and always.
#[test]
fn a_journal_without_records_opens_and_is_recorded_from_its_next_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let mut s = State::open_writer(&path).unwrap();
    for name in ["h1", "h2", "h3"] {
        add_host(&mut s, name);
    }
    drop(s);
    let jpath = journal_path(&path);
    let mut old = std::fs::read(&jpath).unwrap();
    old[8..64].fill(0);
    std::fs::write(&jpath, &old).unwrap();
    assert_eq!(names(&State::open(&path).unwrap()), ["h1", "h2", "h3"]);

    let mut s = State::open_writer(&path).unwrap();
    add_host(&mut s, "h4");
    let end = std::fs::metadata(&jpath).unwrap().len();
    flip_journal_byte(&path, end - 10);
    let e = State::open(&path)
        .err()
        .expect("a damaged entry 4 is refused");
    assert_eq!(crate::exit::status_of(&e), Status::Io, "{e:#}");
    assert!(format!("{e:#}").contains("up to 4 as committed"), "{e:#}");
}

/// What the two commit records say, record by record: blank, intact, damaged (a bad crc,
/// or an intact record in the place of the other parity).
#[test]
fn commit_records_say_what_must_be_replayed() {
    use journal::{committed, new_header, Committed, Record};
    let put = |h: &mut [u8], r: Record| {
        let (at, b) = r.encode();
        h[at as usize..at as usize + b.len()].copy_from_slice(&b);
    };
    let rec = |txid| Record {
        gen: 3,
        txid,
        end: 64 + 100 * txid,
    };
    let mut blank = new_header();
    blank[8..].fill(0);
    assert_eq!(committed(&blank), Ok(Committed::Unknown));
    assert_eq!(
        committed(&new_header()),
        Ok(Committed::Known(Record {
            gen: 0,
            txid: 0,
            end: 64
        }))
    );
    let mut one = blank;
    put(&mut one, rec(7));
    assert_eq!(committed(&one), Ok(Committed::Known(rec(7))));
    let mut two = one;
    put(&mut two, rec(8));
    assert_eq!(committed(&two), Ok(Committed::Known(rec(8))));
    put(&mut two, rec(9));
    put(&mut two, rec(10)); // each record overwrites the one two before it
    assert_eq!(committed(&two), Ok(Committed::Known(rec(10))));

    // The newest torn: the one before it names 9, so 10 was durable when it was written.
    let mut torn = two;
    torn[8 + 3] ^= 0x40;
    assert_eq!(committed(&torn), Ok(Committed::AtLeast(10)));
    // The older damaged reads the same way, and is refused since 11 is not there.
    let mut older = two;
    older[36 + 20] ^= 0x40;
    assert_eq!(committed(&older), Ok(Committed::AtLeast(11)));
    // An even record in the odd place is damage, not a record.
    let mut misplaced = two;
    misplaced.copy_within(8..36, 36);
    assert_eq!(committed(&misplaced), Ok(Committed::AtLeast(11)));
    // The only record ever written, damaged: nothing can be told from it.
    one[36] ^= 1;
    assert_eq!(committed(&one), Ok(Committed::Unknown));
    let mut both = torn;
    both[36] ^= 1;
    assert!(committed(&both).unwrap_err().contains("both"));
}

/// Lock-free readers opening and refreshing while a writer commits and checkpoints: the
/// record a reader reads never claims more than the journal it then reads holds, and a
/// checkpoint in between is caught by the checkpoint sequence, so no open fails and no
/// view is torn or goes back. Commits rewrite records the checkpoints are rewriting in
/// place (commit i adds host i and changes host i/2), so a view that mixed two moments
/// would show a host with the wrong value. A writer's refresh reads the same way.
#[test]
fn readers_racing_commits_and_checkpoints_never_see_damage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let opts = Options {
        checkpoint_bytes: 8 << 10,
        ..Options::default()
    };
    let mut w = State::open_with(&path, opts.clone(), true).unwrap();
    // The readers open before the writer starts: 400 commits can be over before a reader
    // opened after them has looked once (a full test run saw 0 views).
    let mut follower = State::open(&path).unwrap();
    let mut writing_follower = State::open_with(&path, opts, true).unwrap();
    let writer = std::thread::spawn(move || {
        for i in 0..400u32 {
            w.write(|tx| {
                tx.upsert(host(&format!("h{i:03}"), 1000 + i));
                let older = tx.view().hosts.find(&format!("h{:03}", i / 2)).unwrap();
                let mut h = tx.view().hosts.get(older).unwrap().clone();
                h.cpus = 1000 + i;
                tx.set(older, Some(h));
                Ok(())
            })
            .unwrap();
        }
    });
    // After t commits, host j holds the last of commits j, 2j and 2j+1 made.
    let check = |s: &State, who: &str| {
        let t = s.view().txid as u32;
        let mut got: Vec<(String, u32)> = s
            .view()
            .hosts
            .iter()
            .map(|(_, h)| (h.name.clone(), h.cpus))
            .collect();
        got.sort();
        let want: Vec<(String, u32)> = (0..t)
            .map(|j| {
                let last = [2 * j + 1, 2 * j, j].into_iter().find(|&c| c < t).unwrap();
                (format!("h{j:03}"), 1000 + last)
            })
            .collect();
        assert_eq!(got, want, "{who}'s view of transaction {t}");
    };
    let (mut last, mut last_w, mut views) = (0, 0, 0);
    while !writer.is_finished() {
        let fresh = State::open(&path).unwrap_or_else(|e| panic!("open: {e:#}"));
        check(&fresh, "a new reader");
        follower
            .refresh()
            .unwrap_or_else(|e| panic!("refresh: {e:#}"));
        check(&follower, "a reader that refreshes");
        writing_follower
            .refresh()
            .unwrap_or_else(|e| panic!("a writer's refresh: {e:#}"));
        check(&writing_follower, "a writer that refreshes");
        assert!(follower.view().txid >= last, "the follower went back");
        assert!(
            writing_follower.view().txid >= last_w,
            "the writer went back"
        );
        (last, last_w) = (follower.view().txid, writing_follower.view().txid);
        views += 1;
    }
    writer.join().unwrap();
    assert!(
        views > 10,
        "only {views} views were read while the writer wrote"
    );
    follower.refresh().unwrap();
    assert_eq!(follower.view().txid, 400);
    check(&follower, "the follower at the end");
}

/// A state holding `tasks` tasks of one job, checkpointed into the tables.
fn big_state(path: &Path, tasks: u32) {
    let mut s = State::open_writer(path).unwrap();
    s.write(|tx| {
        let job = tx.upsert(Job {
            announce: None,
            key: "big/test/job".into(),
            ports: vec![],
            rollout: Default::default(),
            runs: Default::default(),
            counts: Default::default(),
        });
        for i in 0..tasks {
            tx.upsert(Task::new(job, i));
        }
        Ok(())
    })
    .unwrap();
    s.checkpoint_now().unwrap();
}

/// Someone else truncates the tables file (to half its length, then puts the bytes back,
/// over and over) while readers open and refresh it: each read either gives the whole
/// state or fails with status 74 saying the file is truncated. Nothing dies of SIGBUS, as
/// a reader that decoded a shared mapping of the file would when a page it reads is cut.
#[test]
fn a_file_truncated_under_its_readers_is_an_error_not_a_crash() {
    const TASKS: u32 = 60_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    big_state(&path, TASKS);
    let len = std::fs::metadata(&path).unwrap().len();
    let cut = len / 2 / PAGE * PAGE;
    let tail = std::fs::read(&path).unwrap()[cut as usize..].to_vec();
    let mut follower = State::open(&path).unwrap();
    let mut writer = State::open_writer(&path).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cutter = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            let mut rounds = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.set_len(cut).unwrap();
                std::thread::sleep(Duration::from_micros(500));
                f.write_all_at(&tail, cut).unwrap();
                rounds += 1;
                // Whole for a varying while, so that some reads start and end in it.
                std::thread::sleep(Duration::from_millis(3 * (rounds % 8) as u64));
            }
            rounds
        })
    };
    let (mut whole, mut refused) = (0, 0);
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline || whole == 0 || refused == 0 {
        assert!(
            Instant::now() < deadline + Duration::from_secs(30),
            "{whole} whole reads, {refused} refused"
        );
        // A fresh reader, a reader's refresh and a writer's full reload (a writer reads
        // the tables again when a checkpoint has folded the journal it followed).
        let reads = [
            State::open(&path).map(|s| s.view().tasks.len()),
            follower.load().map(|()| follower.view().tasks.len()),
            writer.load().map(|()| writer.view().tasks.len()),
        ];
        for r in reads {
            match r {
                Ok(n) => {
                    assert_eq!(n, TASKS as usize, "a whole read sees every task");
                    whole += 1;
                }
                Err(e) => {
                    assert_eq!(crate::exit::status_of(&e), Status::Io, "{e:#}");
                    assert!(format!("{e:#}").contains("truncated"), "{e:#}");
                    refused += 1;
                }
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = cutter.join().unwrap();
    eprintln!("{whole} whole reads and {refused} refused over {rounds} cuts");
}

/// A body that sets nothing runs without the lock (here held by someone else), on the view
/// as committed now; one that sets something waits for the lock like any transaction, and
/// its rehearsal leaves the view as it was.
#[test]
fn write_if_changed_takes_the_lock_only_to_change_something() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let opts = Options {
        lock_timeout: Duration::from_millis(200),
        ..Options::default()
    };
    let mut s = State::open_with(&path, opts, true).unwrap();
    let mut other = State::open_writer(&path).unwrap();
    add_host(&mut other, "a");
    let held = File::open(lock_path(&path)).unwrap();
    held.lock().unwrap();
    let seen = s
        .write_if_changed(|tx| Ok(names_in(tx.view())))
        .unwrap_or_else(|e| panic!("no change, yet: {e:#}"));
    assert_eq!(seen, ["a"], "the body saw what was committed");
    let e = s
        .write_if_changed(|tx| {
            tx.upsert(host("c", 1));
            Ok(())
        })
        .expect_err("a change waits for the lock");
    assert_eq!(crate::exit::status_of(&e), Status::Temporary, "{e:#}");
    assert_eq!(names(&s), ["a"], "a refused change is undone");
    held.unlock().unwrap();
    s.write_if_changed(|tx| {
        tx.upsert(host("c", 1));
        Ok(())
    })
    .unwrap();
    assert_eq!(names(&State::open(&path).unwrap()), ["a", "c"]);
}

fn names_in(view: &View) -> Vec<String> {
    let mut v: Vec<String> = view.hosts.iter().map(|(_, h)| h.name.clone()).collect();
    v.sort();
    v
}

/// A checkpoint a crash interrupted (the sequence left odd) is finished by the next writer
/// that looks, even one with nothing to change: a follower that only rehearsed would leave
/// every later read to wait out the odd sequence and read the whole file under the lock.
#[test]
fn write_if_changed_finishes_an_interrupted_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let mut s = State::open_writer(&path).unwrap();
    add_host(&mut s, "a");
    let seq = s.read_seq().unwrap();
    assert_eq!(seq % 2, 0);
    // The first write of a checkpoint, and then the crash.
    s.tables
        .write_all_at(&(seq + 1).to_le_bytes(), SEQ_OFFSET as u64)
        .unwrap();
    let names_seen = s.write_if_changed(|tx| Ok(names_in(tx.view()))).unwrap();
    assert_eq!(names_seen, ["a"]);
    assert_eq!(
        s.read_seq().unwrap(),
        seq + 2,
        "the checkpoint was finished"
    );
    assert_eq!(names(&State::open(&path).unwrap()), ["a"]);
}
