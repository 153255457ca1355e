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
