//! Writes a pattern through a homi queue pair, reads it back, and compares.
//!
//! ```sh
//! cargo run --release -p homi --example readwrite -- --soft   # software controller, anywhere
//! target/release/examples/readwrite /dev/nvme0               # real controller, homi.ko loaded, as root
//! ```

use std::sync::Arc;
use std::time::Duration;

use homi::{Command, Controller, QueuePair};
use homi_instruments::{SoftConfig, SoftController};

const LBA: u64 = 4096;
const LEN: usize = 128 * 1024;

fn roundtrip(qp: &mut QueuePair, out: &Arc<homi::DmaBuffer>, back: &Arc<homi::DmaBuffer>) -> homi::Result<()> {
    let data: Vec<u8> = (0..LEN).map(|i| (i * 7 + i / 4096) as u8).collect();
    out.write_at(0, &data)?;
    let blocks = (LEN / 512) as u32;
    let t = Duration::from_secs(5);
    // 128 KiB spans 32 pages: push_io builds a PRP list and keeps the buffers alive.
    qp.execute_io(Command::write(1, LBA, blocks), out, 0, LEN, t)?;
    qp.execute_io(Command::read(1, LBA, blocks), back, 0, LEN, t)?;
    let mut got = vec![0u8; LEN];
    back.read_at(0, &mut got)?;
    assert!(got == data, "read back different data");
    println!("qid {}: wrote and read back {} KiB at LBA {LBA}: identical", qp.qid(), LEN / 1024);
    Ok(())
}

fn main() -> homi::Result<()> {
    let arg = std::env::args().nth(1).unwrap_or_else(|| "/dev/nvme0".into());
    if arg == "--soft" {
        println!("software controller (a test instrument, not a device)");
        let ctrl = SoftController::new(SoftConfig::default());
        let mut qp = ctrl.create_qpair(32)?;
        return roundtrip(&mut qp, &Arc::new(ctrl.alloc(LEN)), &Arc::new(ctrl.alloc(LEN)));
    }
    let ctrl = Controller::open(&arg)?;
    let info = ctrl.info()?;
    println!("{arg}: driver uses qids 1..={}, {} spare", info.driver_io_queues, info.spare_free);
    let mut qp = ctrl.create_qpair(32)?;
    // One module-allocated buffer and one of registered process memory.
    roundtrip(&mut qp, &Arc::new(ctrl.alloc(LEN)?), &Arc::new(ctrl.register(LEN)?))
}
