//! `QueuePair::poll_at_most` against the software controller: a bound smaller than
//! what is ready leaves the rest in the completion queue, in order, for the next call.

use homi::Command;
use homi_instruments::{Fault, SoftConfig, SoftController};

#[test]
fn bounded_polls_lose_nothing_and_keep_order() {
    let ctrl = SoftController::new_inline(SoftConfig { null: true, ..SoftConfig::default() });
    let mut qp = ctrl.create_qpair(16).unwrap();
    let mut cids = Vec::new();
    for token in 100..107u64 {
        // SAFETY: a flush names no memory.
        cids.push(unsafe { qp.push(&Command::flush(1), token) }.unwrap());
    }
    qp.ring();
    assert_eq!(ctrl.serve(), 7);
    let mut got = Vec::new();
    assert_eq!(qp.poll_at_most(0, |c| got.push(c)).unwrap(), 0);
    assert_eq!(qp.in_flight(), 7);
    for want in [3, 3, 1, 0] {
        assert_eq!(qp.poll_at_most(3, |c| got.push(c)).unwrap(), want);
    }
    assert_eq!(got.iter().map(|c| c.token).collect::<Vec<_>>(), (100..107).collect::<Vec<_>>());
    assert_eq!(got.iter().map(|c| c.cid).collect::<Vec<_>>(), cids);
    assert!(got.iter().all(|c| c.status.is_success()));
    assert_eq!(qp.in_flight(), 0);
    // The ring wraps: more than a depth's worth through bounded polls.
    let mut tokens = Vec::new();
    for round in 0..5u64 {
        for i in 0..10 {
            // SAFETY: as above.
            unsafe { qp.push(&Command::flush(1), round * 10 + i) }.unwrap();
        }
        qp.ring();
        ctrl.serve();
        while qp.in_flight() > 0 {
            qp.poll_at_most(4, |c| tokens.push(c.token)).unwrap();
        }
    }
    assert_eq!(tokens, (0..50).collect::<Vec<_>>());
}

/// A completion naming a cid that is not in flight, behind two good ones: the good ones
/// are returned and handed back (CQ head doorbell rung), the error comes on the next
/// call, and the bad entry is never consumed, so it keeps failing and frees nothing.
#[test]
fn an_unknown_cid_after_good_completions_loses_none_of_them() {
    for bounded in [false, true] {
        let ctrl = SoftController::new_inline(SoftConfig { null: true, ..SoftConfig::default() });
        let mut qp = ctrl.create_qpair(16).unwrap();
        for token in [1, 2] {
            // SAFETY: a flush names no memory.
            unsafe { qp.push(&Command::flush(1), token) }.unwrap();
        }
        qp.ring();
        assert_eq!(ctrl.serve(), 2);
        ctrl.inject(Fault::Cid { cid: 9, count: 1 });
        // SAFETY: as above.
        unsafe { qp.push(&Command::flush(1), 3) }.unwrap();
        qp.ring();
        assert_eq!(ctrl.serve(), 1);
        let updates = qp.doorbell_stats().updates;
        let mut got = Vec::new();
        let mut poll = |qp: &mut homi::QueuePair| {
            if bounded {
                qp.poll_at_most(8, |c| got.push(c.token))
            } else {
                qp.poll(|c| got.push(c.token))
            }
        };
        assert_eq!(poll(&mut qp).unwrap(), 2, "the good completions first");
        assert_eq!(qp.doorbell_stats().updates, updates + 1, "their CQ entries handed back");
        assert_eq!(qp.in_flight(), 1);
        for _ in 0..2 {
            assert!(matches!(poll(&mut qp), Err(homi::Error::Invalid(_))), "then the bad entry, every time");
            assert_eq!(qp.in_flight(), 1, "and nothing freed for it");
        }
        assert_eq!(qp.doorbell_stats().updates, updates + 1);
        assert_eq!(got, vec![1, 2]);
    }
}

/// Command identifiers are 16 bits: a controller may allow 65536 entries (MQES
/// 0xFFFF), but the engine drives at most 65535, whose cids stay below 0xFFFF.
#[test]
fn depth_is_limited_to_65535() {
    assert_eq!(homi::MAX_QUEUE_DEPTH, 65535);
    let ctrl = SoftController::new_inline(SoftConfig { null: true, max_queue_entries: 65536, ..SoftConfig::default() });
    assert!(matches!(ctrl.create_qpair(65536), Err(homi::Error::Invalid(_))));
    let mut qp = ctrl.create_qpair(65535).unwrap();
    assert_eq!(qp.free_slots(), 65534);
    let mut cids = Vec::new();
    for token in 0..65534u64 {
        // SAFETY: a flush names no memory.
        cids.push(unsafe { qp.push(&Command::flush(1), token) }.unwrap());
    }
    // SAFETY: as above.
    assert!(matches!(unsafe { qp.push(&Command::flush(1), 0) }, Err(homi::Error::QueueFull)));
    cids.sort_unstable();
    cids.dedup();
    assert_eq!(cids.len(), 65534);
    assert!(cids.iter().all(|&c| c < 0xFFFF));
    qp.ring();
    ctrl.serve();
    let mut n = 0;
    while n < 65534 {
        n += qp.poll(|_| ()).unwrap();
        ctrl.serve();
    }
    assert_eq!(qp.in_flight(), 0);
}
