//! `QueuePair::poll_at_most` against the software controller: a bound smaller than
//! what is ready leaves the rest in the completion queue, in order, for the next call.

use homi::Command;
use homi_instruments::{SoftConfig, SoftController};

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
