//! Runs the engine's hot path a fixed number of times against the inline software
//! controller (null mode), for instruction counting:
//!
//! ```sh
//! valgrind --tool=callgrind --toggle-collect='*engine_submit*' --toggle-collect='*engine_reap*' \
//!     target/release/examples/hotpath_count 100000 32
//! ```
//!
//! `engine_submit` and `engine_reap` hold only engine code (push, ring, poll), so the
//! toggled count is the engine's instructions; divide by the I/O count. Without the
//! toggles, the count includes the software controller too. A third argument,
//! `shadow`, makes the controller use shadow doorbells with event index.

use std::hint::black_box;

use homi::{Command, QueuePair};
use homi_instruments::{SoftConfig, SoftController};

#[inline(never)]
fn engine_submit(qp: &mut QueuePair, cmd: &Command, batch: u64) {
    for i in 0..batch {
        // SAFETY: the buffer outlives every command; null mode never touches it.
        unsafe { qp.push(black_box(cmd), i) }.expect("push");
    }
    qp.ring();
}

#[inline(never)]
fn engine_reap(qp: &mut QueuePair) -> usize {
    qp.poll(|c| _ = black_box(c)).expect("poll")
}

fn main() {
    let mut args = std::env::args().skip(1);
    let ios: u64 = args.next().map_or(100_000, |a| a.parse().expect("I/O count"));
    let batch: u64 = args.next().map_or(32, |a| a.parse().expect("batch"));
    let shadow_doorbells = args.next().is_some_and(|a| a == "shadow");
    let ctrl = SoftController::new_inline(SoftConfig { null: true, shadow_doorbells, ..SoftConfig::default() });
    let mut qp = ctrl.create_qpair(1024).expect("queue pair");
    let buf = ctrl.alloc(4096);
    let cmd = Command::read(1, 0, 8).with_prps(buf.dma_addr(), 0);
    let mut done = 0;
    while done < ios {
        engine_submit(&mut qp, &cmd, batch);
        ctrl.serve();
        let mut n = 0;
        while n < batch as usize {
            n += engine_reap(&mut qp);
        }
        done += batch;
    }
    println!("{done} I/Os in batches of {batch}");
}
