//! Protocol tests of the queue-pair engine against the software controller (a test
//! instrument: see `homi_instruments::soft`).

use std::sync::Arc;
use std::time::Duration;

use homi::{Command, DmaBuffer, Error, Status, StatusType, PAGE};
use homi_instruments::{pattern, Fault, SoftConfig, SoftController};

const T: Duration = Duration::from_secs(10);

fn buf(ctrl: &SoftController, len: usize) -> Arc<DmaBuffer> {
    Arc::new(ctrl.alloc(len))
}

/// Writes then reads back `rounds` commands at queue depth `depth - 1`, so the rings
/// wrap several times and the phase tag flips each time.
fn pipeline(cfg: SoftConfig, depth: u32, rounds: u64) {
    let ctrl = SoftController::new(cfg);
    let mut qp = ctrl.create_qpair(depth).unwrap();
    let slots = (depth - 1) as usize;
    let data = buf(&ctrl, slots * PAGE);
    let readback = buf(&ctrl, slots * PAGE);
    for pass in 0..2 {
        let (mut next, mut done) = (0u64, 0u64);
        let mut free: Vec<usize> = (0..slots).collect();
        while done < rounds {
            while next < rounds {
                let Some(slot) = free.pop() else { break };
                let lba = (next % 1024) * 8;
                let (cmd, b) = if pass == 0 {
                    data.write_at(slot * PAGE, &pattern(next, PAGE)).unwrap();
                    (Command::write(1, lba, 8), &data)
                } else {
                    (Command::read(1, lba, 8), &readback)
                };
                qp.push_io(cmd, b, slot * PAGE, PAGE, next << 16 | slot as u64).unwrap();
                next += 1;
            }
            qp.ring();
            qp.poll(|c| {
                c.ok().unwrap();
                let (i, slot) = (c.token >> 16, (c.token & 0xffff) as usize);
                if pass == 1 {
                    let mut got = vec![0u8; PAGE];
                    readback.read_at(slot * PAGE, &mut got).unwrap();
                    // LBAs repeat every 1024 commands: the last write there wins.
                    let last_writer = i % 1024 + 1024 * ((rounds - 1 - i % 1024) / 1024);
                    assert_eq!(got, pattern(last_writer, PAGE), "depth {depth}, command {i}");
                }
                free.push(slot);
                done += 1;
            })
            .unwrap();
        }
        assert_eq!(qp.in_flight(), 0);
    }
}

#[test]
fn every_depth_wraps_and_keeps_data() {
    for depth in [2, 3, 4, 7, 16, 64, 255, 256, 1024] {
        pipeline(SoftConfig::default(), depth, 3 * u64::from(depth) + 7);
    }
}

/// A controller that sleeps until an MMIO write wakes it: a doorbell the event index
/// wrongly skipped would leave commands unserved, and the pipeline would hang.
#[test]
fn shadow_doorbells_lose_no_wakeup() {
    let cfg = SoftConfig { shadow_doorbells: true, ..SoftConfig::default() };
    for depth in [2, 3, 16, 64, 1024] {
        pipeline(cfg, depth, 20 * u64::from(depth) + 7);
    }
}

/// The event index rule, step by step, against an inline controller.
#[test]
fn shadow_doorbells_write_mmio_only_when_asked() {
    let ctrl = SoftController::new_inline(SoftConfig { shadow_doorbells: true, ..SoftConfig::default() });
    let mut qp = ctrl.create_qpair(16).unwrap();
    assert!(qp.shadow_doorbells());
    let b = buf(&ctrl, PAGE);
    let read = |qp: &mut homi::QueuePair, token| qp.push_io(Command::read(1, 0, 8), &b, 0, PAGE, token).unwrap();
    let stats = |qp: &homi::QueuePair| (qp.doorbell_stats().updates, qp.doorbell_stats().mmio);

    // The controller sleeps: the first tail needs an MMIO write.
    read(&mut qp, 1);
    qp.ring();
    assert_eq!(stats(&qp), (1, 1));
    // It has not looked at the queue yet, so a second tail needs none: it reads the
    // shadow tail when it wakes.
    read(&mut qp, 2);
    qp.ring();
    assert_eq!(stats(&qp), (2, 1));
    assert_eq!(ctrl.serve(), 2, "both commands served after one MMIO write");
    // Caught up, it asked to hear of anything past tail 2.
    read(&mut qp, 3);
    qp.ring();
    assert_eq!(stats(&qp), (3, 2));
    assert_eq!(ctrl.serve(), 1);
    // Nothing rung, nothing served: the controller really sleeps.
    read(&mut qp, 4);
    assert_eq!(ctrl.serve(), 0);
    qp.ring();
    assert_eq!(ctrl.serve(), 1);
    let mut tokens = Vec::new();
    qp.poll(|c| tokens.push(c.token)).unwrap();
    assert_eq!(tokens, [1, 2, 3, 4]);
    // The CQ head goes to its shadow slot; this controller never asks for it by MMIO
    // after the first (its CQ event index stays 0).
    assert_eq!(stats(&qp), (5, 4));
    assert_eq!(ctrl.commands(), 4);
}

#[test]
fn many_commands_share_one_doorbell() {
    let ctrl = SoftController::new(SoftConfig::default());
    let mut qp = ctrl.create_qpair(128).unwrap();
    let b = buf(&ctrl, PAGE);
    for i in 0..127 {
        qp.push_io(Command::read(1, i * 8, 8), &b, 0, PAGE, i).unwrap();
    }
    assert!(matches!(qp.push_io(Command::read(1, 0, 8), &b, 0, PAGE, 0), Err(Error::QueueFull)));
    qp.ring();
    let mut seen = 0;
    while seen < 127 {
        seen += qp.poll(|c| c.ok().unwrap()).unwrap();
    }
    assert_eq!(ctrl.commands(), 127);
}

#[test]
fn prp_lists_at_the_maximum_transfer() {
    let cfg = SoftConfig::default();
    let ctrl = SoftController::new(cfg);
    let mut qp = ctrl.create_qpair(8).unwrap();
    let max = cfg.max_transfer;
    let out = buf(&ctrl, max + PAGE);
    let back = buf(&ctrl, max + PAGE);
    // Page-aligned at the maximum, and starting mid-page one page shorter.
    for (offset, len) in [(0, max), (512, max - PAGE), (2048, 3 * PAGE)] {
        let data = pattern(offset as u64, len);
        out.write_at(offset, &data).unwrap();
        let blocks = (len / 512) as u32;
        qp.execute_io(Command::write(1, 64, blocks), &out, offset, len, T).unwrap();
        qp.execute_io(Command::read(1, 64, blocks), &back, offset, len, T).unwrap();
        let mut got = vec![0u8; len];
        back.read_at(offset, &mut got).unwrap();
        assert!(got == data, "offset {offset}, {len} bytes differ after the round trip");
    }
    // One page over the maximum is refused before anything is submitted.
    assert!(matches!(qp.execute_io(Command::read(1, 0, 8), &back, 0, max + PAGE, T), Err(Error::Invalid(_))));
}

#[test]
fn injected_media_error_is_a_typed_error() {
    let ctrl = SoftController::new(SoftConfig::default());
    let mut qp = ctrl.create_qpair(4).unwrap();
    let b = buf(&ctrl, PAGE);
    ctrl.inject(Fault::Status { status: Status(Status::UNRECOVERED_READ_ERROR.0 | 1 << 14), count: 1 });
    match qp.execute_io(Command::read(1, 0, 8), &b, 0, PAGE, T) {
        Err(Error::Nvme(s)) => {
            assert_eq!(s.kind(), StatusType::Media);
            assert_eq!(s.code_only(), Status::UNRECOVERED_READ_ERROR);
            assert!(s.dnr());
        }
        other => panic!("expected a media error, got {other:?}"),
    }
    // The fault was used up: the next command succeeds.
    qp.execute_io(Command::read(1, 0, 8), &b, 0, PAGE, T).unwrap();
}

#[test]
fn controller_statuses_surface_as_typed_errors() {
    let ctrl = SoftController::new(SoftConfig { blocks: 1024, ..SoftConfig::default() });
    let mut qp = ctrl.create_qpair(4).unwrap();
    let b = buf(&ctrl, PAGE);
    let err = |r: homi::Result<homi::Completion>| match r {
        Err(Error::Nvme(s)) => s.code_only(),
        other => panic!("expected an NVMe status, got {other:?}"),
    };
    assert_eq!(err(qp.execute_io(Command::read(2, 0, 8), &b, 0, PAGE, T)), Status::INVALID_NAMESPACE);
    assert_eq!(err(qp.execute_io(Command::read(1, 1020, 8), &b, 0, PAGE, T)), Status::LBA_OUT_OF_RANGE);
    b.write_at(0, &[7u8; PAGE]).unwrap();
    qp.execute_io(Command::write(1, 0, 8), &b, 0, PAGE, T).unwrap();
    b.write_at(0, &[8u8; PAGE]).unwrap();
    assert_eq!(err(qp.execute_io(Command::compare(1, 0, 8), &b, 0, PAGE, T)), Status::COMPARE_FAILURE);
    // SAFETY: Write Zeroes and Flush carry no data.
    unsafe {
        qp.execute(&Command::write_zeroes(1, 0, 8), T).unwrap();
        qp.execute(&Command::flush(1), T).unwrap();
    }
    b.write_at(0, &[0u8; PAGE]).unwrap();
    qp.execute_io(Command::compare(1, 0, 8), &b, 0, PAGE, T).unwrap();
}

#[test]
fn a_lost_completion_times_out() {
    let ctrl = SoftController::new(SoftConfig::default());
    let mut qp = ctrl.create_qpair(4).unwrap();
    let b = buf(&ctrl, PAGE);
    ctrl.inject(Fault::Drop { count: 1 });
    let t = Duration::from_millis(200);
    assert!(matches!(qp.execute_io(Command::read(1, 0, 8), &b, 0, PAGE, t), Err(Error::Timeout(_))));
    assert_eq!(qp.in_flight(), 1, "the lost command still holds its identifier");
}

#[test]
fn reset_fails_in_flight_commands_and_rearm_recovers() {
    let ctrl = SoftController::new(SoftConfig::default());
    let mut qp = ctrl.create_qpair(16).unwrap();
    let b = buf(&ctrl, 4 * PAGE);
    b.write_at(0, &pattern(1, PAGE)).unwrap();
    qp.execute_io(Command::write(1, 8, 8), &b, 0, PAGE, T).unwrap();
    // Commands swallowed as if the reset caught them in flight.
    ctrl.inject(Fault::Drop { count: 3 });
    for i in 0..3 {
        qp.push_io(Command::read(1, 0, 8), &b, PAGE, PAGE, i).unwrap();
    }
    qp.ring();
    std::thread::sleep(Duration::from_millis(50));
    ctrl.reset();
    assert!(matches!(qp.check(), Err(Error::Reset { old: 0, new: 1 })));
    assert!(matches!(
        qp.execute_io(Command::read(1, 8, 8), &b, 0, PAGE, Duration::from_millis(100)),
        Err(Error::Reset { .. })
    ));
    qp.rearm().unwrap();
    assert_eq!(qp.in_flight(), 0);
    qp.execute_io(Command::read(1, 8, 8), &b, 2 * PAGE, PAGE, T).unwrap();
    let mut got = vec![0u8; PAGE];
    b.read_at(2 * PAGE, &mut got).unwrap();
    assert_eq!(got, pattern(1, PAGE), "data written before the reset is still there");
}

#[test]
fn bad_depths_are_refused() {
    let ctrl = SoftController::new(SoftConfig { max_queue_entries: 64, ..SoftConfig::default() });
    assert!(ctrl.create_qpair(1).is_err());
    assert!(ctrl.create_qpair(65).is_err());
    assert!(ctrl.create_qpair(64).is_ok());
}
