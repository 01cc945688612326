//! A database that cannot be opened is moved aside and reported, never deleted.

mod common;

use std::fs;
use std::path::Path;

use common::{T0, config, put, to};
use store::{ManualClock, Store};

/// Overwrites every file under `dir` with garbage.
fn scribble(dir: &Path) {
    for entry in fs::read_dir(dir).expect("list") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            scribble(&path);
        } else {
            fs::write(&path, vec![0xA5u8; 4096]).expect("scribble");
        }
    }
}

fn epoch_dirs(root: &Path) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = fs::read_dir(root.join("epochs"))
        .expect("epochs dir")
        .map(|e| e.expect("entry").path())
        .collect();
    dirs.sort();
    dirs
}

/// A closed store whose endpoint `e` holds one message.
fn store_with_one_message() -> (tempfile::TempDir, ManualClock) {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store = Store::open(config(dir.path(), &clock)).expect("open");
    let e = store.add_endpoint("e").expect("add");
    put(&store, "before", &[to(&e, 0)]);
    store.close().expect("close");
    (dir, clock)
}

#[test]
fn a_garbled_epoch_is_quarantined_and_the_rest_still_serves() {
    let (dir, clock) = store_with_one_message();
    let epochs = epoch_dirs(dir.path());
    assert_eq!(epochs.len(), 1);
    scribble(&epochs[0]);

    let store = Store::open(config(dir.path(), &clock)).expect("opens despite the damage");
    let report = store.recovery_report();
    assert_eq!(report.quarantined.len(), 1, "{report:?}");
    let q = &report.quarantined[0];
    assert_eq!(q.original, epochs[0]);
    assert!(q.moved_to.exists(), "moved aside, not deleted");
    assert!(!q.reason.is_empty());
    assert_eq!(store.stats().quarantined, 1);
    assert_eq!(store.endpoint_stats("e").map(|s| s.count), Some(0));

    let e = store.endpoint("e").expect("the endpoint survives");
    put(&store, "after", &[to(&e, 0)]);
    let mut reader = store.reader("e").expect("reader");
    assert_eq!(common::drain(&mut reader), ["after"]);
}

#[test]
fn a_garbled_meta_database_is_quarantined_and_the_store_starts_fresh() {
    let (dir, clock) = store_with_one_message();
    scribble(&dir.path().join("meta"));
    let store = Store::open(config(dir.path(), &clock)).expect("opens despite the damage");
    let report = store.recovery_report();
    assert_eq!(
        report.quarantined.len(),
        2,
        "meta and the epoch it described: {report:?}"
    );
    assert!(report.quarantined.iter().all(|q| q.moved_to.exists()));
    assert!(
        store.endpoints().is_empty(),
        "endpoints are re-added by the hub from its routes"
    );
    let e = store.add_endpoint("e").expect("add");
    put(&store, "n", &[to(&e, 0)]);
    let mut reader = store.reader("e").expect("reader");
    assert_eq!(
        common::drain(&mut reader),
        ["n"],
        "old entries of a forgotten endpoint are not resurrected"
    );
}

#[test]
fn a_store_in_use_is_refused_not_moved_aside() {
    let (dir, clock) = store_with_one_message();
    let first = Store::open(config(dir.path(), &clock)).expect("open");
    let second = Store::open(config(dir.path(), &clock));
    assert!(
        matches!(second, Err(store::OpenError::Locked { .. })),
        "{second:?}"
    );
    assert_eq!(first.endpoint_stats("e").map(|s| s.count), Some(1));
    assert!(first.recovery_report().quarantined.is_empty());
    let quarantine = dir.path().join("quarantine");
    assert_eq!(fs::read_dir(quarantine).expect("list").count(), 0);
}
