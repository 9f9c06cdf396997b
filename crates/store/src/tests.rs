use super::*;
use crate::batch::verify::ChainVerifier;
use crate::batch::{Framed, seal_framed};
use gridgate_core::Identity;
use redb::TableHandle;

fn reading(i: i64) -> pb::Reading {
    pb::Reading {
        point: format!("m/p{}", i % 3),
        ts_ms: i,
        value: Some(pb::reading::Value::Number(i as f64)),
        ..Default::default()
    }
}

fn sealer(id: &Identity) -> impl Fn(u64, [u8; 32], &Framed) -> Sealed + '_ {
    move |seq, prev, rs: &Framed| seal_framed(id, "gw-1", seq, prev, 1000 + seq as i64, rs)
}

#[test]
fn readings_become_a_verifiable_chain_that_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let id = Identity::generate().unwrap();
    let s = sealer(&id);
    {
        let store = Store::open(dir.path(), "gw-1").unwrap();
        for b in 0..5 {
            let rs: Vec<_> = (b * 10..b * 10 + 10).map(reading).collect();
            let c = store.commit(&rs[..6], &[], None).unwrap();
            assert_eq!(c.closed, None);
            let c = store.commit(&rs[6..], &[], Some(&s)).unwrap();
            assert_eq!(c.closed, Some((b as u64, 10)));
        }
        store.commit(&[reading(99)], &[], None).unwrap();
    }
    let store = Store::open(dir.path(), "gw-1").unwrap();
    let st = store.stats().unwrap();
    assert_eq!((st.first_seq, st.next_seq, st.open_readings), (0, 5, 1));
    let mut v = ChainVerifier::new(id.public());
    let mut ts = vec![];
    for (seq, bytes) in store.batches_from(0, 100).unwrap() {
        let b = v.push(seq, &bytes).unwrap();
        ts.extend(b.readings.iter().map(|r| r.ts_ms));
    }
    assert_eq!(
        ts,
        (0..50).collect::<Vec<_>>(),
        "every reading once, in order"
    );
    // The open reading goes into the next batch.
    let c = store.commit(&[] as &[pb::Reading], &[], Some(&s)).unwrap();
    assert_eq!(c.closed, Some((5, 1)));
}

#[test]
fn cursors_only_move_forward_and_never_past_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let id = Identity::generate().unwrap();
    let s = sealer(&id);
    let store = Store::open(dir.path(), "gw-1").unwrap();
    for i in 0..3 {
        store.commit(&[reading(i)], &[], Some(&s)).unwrap();
    }
    assert_eq!(store.cursor("uplink").unwrap(), 0);
    assert_eq!(store.set_cursor("uplink", 2).unwrap(), 2);
    assert_eq!(store.set_cursor("uplink", 1).unwrap(), 2);
    assert_eq!(store.set_cursor("uplink", 99).unwrap(), 3);
}

#[test]
fn retention_waits_for_required_consumers_and_counts_what_the_budget_drops() {
    let dir = tempfile::tempdir().unwrap();
    let id = Identity::generate().unwrap();
    let s = sealer(&id);
    let store = Store::open(dir.path(), "gw-1").unwrap();
    for b in 0..10 {
        let rs: Vec<_> = (b * 4..b * 4 + 4).map(reading).collect();
        store.commit(&rs, &[], Some(&s)).unwrap();
    }
    let required = vec!["uplink".to_string(), "master".to_string()];
    store.set_cursor("uplink", 6).unwrap();
    store.set_cursor("master", 4).unwrap();
    let p = store.prune(&required, u64::MAX).unwrap();
    assert_eq!(
        p,
        Pruned {
            delivered: 4,
            dropped_batches: 0,
            dropped_readings: 0
        }
    );
    let st = store.stats().unwrap();
    assert_eq!(st.first_seq, 4);
    // A budget smaller than what is left drops the oldest, undelivered ones, and counts them.
    let per_batch = st.stored_bytes / 6;
    let p = store.prune(&required, per_batch * 3).unwrap();
    assert_eq!(p.delivered, 0);
    assert_eq!(p.dropped_batches, 3);
    assert_eq!(p.dropped_readings, 12);
    let st = store.stats().unwrap();
    assert_eq!(
        (st.first_seq, st.dropped_batches, st.dropped_readings),
        (7, 3, 12)
    );
    drop(store);
    // The pruned chain still verifies from its anchor, and the check on open accepts it.
    let store = Store::open(dir.path(), "gw-1").unwrap();
    let (first, anchor) = store.anchor().unwrap();
    let mut v = ChainVerifier::new(id.public()).anchor(first, Some(anchor));
    for (seq, bytes) in store.batches_from(0, 100).unwrap() {
        v.push(seq, &bytes).unwrap();
    }
    assert_eq!(v.batches, 3);
}

#[test]
fn another_gateways_store_and_a_busy_store_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), "gw-1").unwrap();
    assert!(matches!(
        Store::open(dir.path(), "gw-1"),
        Err(StoreError::Busy(_))
    ));
    drop(store);
    assert!(matches!(
        Store::open(dir.path(), "gw-2"),
        Err(StoreError::WrongGateway { .. })
    ));
}

#[test]
fn redelivered_device_readings_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), "gw-1").unwrap();
    let rs: Vec<_> = (10..15).map(reading).collect();
    let c = store.commit(&rs, &[true; 5], None).unwrap();
    assert_eq!((c.appended, c.duplicates), (5, 0));
    drop(store);
    // After a crash the broker sends the last two messages again.
    let store = Store::open(dir.path(), "gw-1").unwrap();
    let again: Vec<_> = (12..17).map(reading).collect();
    let c = store.commit(&again, &[true; 5], None).unwrap();
    assert_eq!((c.appended, c.duplicates), (2, 3));
    // Redelivered out of order (a client resending by packet id): still once each.
    let shuffled: Vec<_> = [16, 11, 17, 10, 18].into_iter().map(reading).collect();
    let c = store.commit(&shuffled, &[true; 5], None).unwrap();
    assert_eq!(
        (c.appended, c.duplicates),
        (2, 3),
        "17 and 18 are new, 16, 11 and 10 were stored"
    );
    // Polled readings (no device time) are never dropped.
    let c = store.commit(&again, &[], None).unwrap();
    assert_eq!((c.appended, c.duplicates), (5, 0));
}

#[test]
fn redeliveries_are_dropped_after_their_batches_are_pruned_and_the_store_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let id = Identity::generate().unwrap();
    let s = sealer(&id);
    let rs: Vec<_> = (0..40).map(reading).collect();
    let device_time = vec![true; rs.len()];
    {
        let store = Store::open_with(dir.path(), "gw-1", 1_000).unwrap();
        let c = store.commit(&rs, &device_time, Some(&s)).unwrap();
        assert_eq!((c.appended, c.duplicates), (40, 0));
        // Delivered and pruned: no batch holds these readings any more.
        store.set_cursor("uplink", 1).unwrap();
        store.prune(&["uplink".to_string()], 1 << 30).unwrap();
        assert_eq!(store.stats().unwrap().first_seq, 1);
    }
    // A crash, then the broker sends the same messages again, one with another value.
    let store = Store::open_with(dir.path(), "gw-1", 1_000).unwrap();
    let mut again = rs.clone();
    again[7].value = Some(pb::reading::Value::Number(-1.0));
    let c = store.commit(&again, &device_time, Some(&s)).unwrap();
    assert_eq!((c.appended, c.duplicates), (0, 40), "stored once");
    assert_eq!(c.conflicting, vec!["m/p1".to_string()], "told apart");
    // A new time of the same point is stored.
    let c = store.commit(&[reading(40)], &[true], None).unwrap();
    assert_eq!(c.appended, 1);
}

#[test]
fn the_stored_window_keeps_only_the_newest_readings() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open_with(dir.path(), "gw-1", 1_000).unwrap();
        for chunk in 0..5 {
            let rs: Vec<_> = (chunk * 500..chunk * 500 + 500).map(reading).collect();
            store.commit(&rs, &vec![true; 500], None).unwrap();
        }
    }
    let store = Store::open_with(dir.path(), "gw-1", 1_000).unwrap();
    // The oldest 1,500 fell out of the window: a redelivery of one is stored again (at
    // least once, never lost); one of the newest 1,000 is not.
    let old = store.commit(&[reading(10)], &[true], None).unwrap();
    assert_eq!(old.appended, 1);
    let new = store.commit(&[reading(2_400)], &[true], None).unwrap();
    assert_eq!(new.duplicates, 1);
    let txn = store.begin_read().unwrap();
    let window = txn.open_table(DEDUPE_GROUPS).unwrap();
    let kept: u64 = window
        .iter()
        .unwrap()
        .map(|e| recent::packed_len(e.unwrap().1.value()))
        .sum();
    // The window, and of the group it starts in what is older.
    assert_eq!(kept, 1_001);
}

/// A store whose window was kept one row a reading has it moved into packed rows on open,
/// and still knows a redelivery of any reading in it.
#[test]
fn a_window_of_rows_is_regrouped_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let rs: Vec<_> = (0..2_500).map(reading).collect();
    {
        let store = Store::open(dir.path(), "gw-1").unwrap();
        let txn = store.begin_write().unwrap();
        {
            let mut rows = txn.open_table(DEDUPE_ROWS).unwrap();
            for (i, r) in rs.iter().enumerate() {
                let f = recent::fingerprint(&r.point, r.ts_ms);
                rows.insert(i as u64 + 7, (f, r.value_hash())).unwrap();
            }
            let mut groups = txn.open_table(DEDUPE_GROUPS).unwrap();
            groups.retain(|_, _| false).unwrap();
        }
        txn.commit().unwrap();
    }
    let store = Store::open(dir.path(), "gw-1").unwrap();
    let again = store.commit(&[rs[0].clone(), rs[2_499].clone()], &[true, true], None);
    assert_eq!(again.unwrap().duplicates, 2);
    let txn = store.begin_read().unwrap();
    assert!(
        !txn.list_tables()
            .unwrap()
            .any(|t| t.name() == DEDUPE_ROWS.name()),
        "the rows are gone"
    );
    let groups = txn.open_table(DEDUPE_GROUPS).unwrap();
    let keys: Vec<u64> = groups
        .iter()
        .unwrap()
        .map(|e| e.unwrap().0.value())
        .collect();
    assert_eq!(keys, vec![7, 1_007, 2_007]);
}
