//! Randomized verification of many queue pairs at once.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use homi::{Command, Controller, DmaBuffer};

use crate::common::*;
use crate::harness::Harness;
use crate::kmod;

/// Randomized verification: 4 threads, each with 4 queue pairs on its own LBA region,
/// random depths, queue depths 1..=depth-1 and transfer sizes up to 64 KiB (PRP lists
/// included); every read is checked against what that thread last wrote, then every
/// written block is checked once more through the kernel's O_DIRECT view.
pub fn stress(kmod_path: &Path, h: &mut Harness) -> anyhow::Result<()> {
    if !kmod::loaded("homi") {
        kmod::load(kmod_path, "").context("load homi.ko")?;
    }
    const THREADS: u64 = 4;
    const QPAIRS: usize = 4;
    const REGION: u64 = 16384; // blocks per thread (8 MiB)
    const BASE: u64 = 65536;
    const MAX_BLOCKS: u64 = 128; // 64 KiB
    h.check("stress: 4 threads x 4 queue pairs, random QD and sizes, 0 mismatches vs the kernel", || {
        let ctrl = Controller::open(NVME)?;
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let ctrl = ctrl.clone();
                std::thread::spawn(move || -> anyhow::Result<(u64, Vec<Option<u64>>)> {
                    let mut rng = Rng(0x5eed ^ (t + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                    let start = BASE + t * REGION;
                    let mut shadow: Vec<Option<u64>> = vec![None; REGION as usize];
                    let mut qps = Vec::new();
                    for _ in 0..QPAIRS {
                        let depth = 2 + rng.below(255) as u32;
                        qps.push(ctrl.create_qpair(depth)?);
                    }
                    let mut ios = 0u64;
                    let deadline = Instant::now() + Duration::from_secs(4);
                    while Instant::now() < deadline {
                        let qp = &mut qps[rng.below(QPAIRS as u64) as usize];
                        let qd = 1 + rng.below(u64::from(qp.depth() - 1)) as usize;
                        // Distinct ranges within one batch, so a read's expected data is fixed.
                        let mut batch: Vec<(bool, u64, u64, Arc<DmaBuffer>)> = Vec::new();
                        for _ in 0..qd {
                            let blocks = 1 + rng.below(MAX_BLOCKS);
                            let lba = rng.below(REGION - blocks);
                            if batch.iter().any(|(_, l, b, _)| lba < l + b && *l < lba + blocks) {
                                continue;
                            }
                            let write = rng.below(2) == 0;
                            let len = (blocks * 512) as usize;
                            let buf = Arc::new(ctrl.alloc(len.next_multiple_of(4096))?);
                            if write {
                                buf.write_at(0, &pattern(rng.next(), len))?;
                            }
                            let cmd = if write {
                                Command::write(1, start + lba, blocks as u32)
                            } else {
                                Command::read(1, start + lba, blocks as u32)
                            };
                            qp.push_io(cmd, &buf, 0, len, batch.len() as u64)?;
                            batch.push((write, lba, blocks, buf));
                        }
                        qp.ring();
                        let mut done = 0;
                        let deadline = Instant::now() + TIMEOUT;
                        while done < batch.len() {
                            let mut failed = None;
                            done += qp.poll(|c| {
                                if let Err(e) = c.ok() {
                                    failed = Some(e);
                                }
                            })?;
                            if let Some(e) = failed {
                                bail!("I/O failed: {e}");
                            }
                            ensure!(Instant::now() < deadline, "completions stopped coming");
                        }
                        for (write, lba, blocks, buf) in &batch {
                            let mut data = vec![0u8; (*blocks * 512) as usize];
                            buf.read_at(0, &mut data)?;
                            for (i, block) in data.chunks(512).enumerate() {
                                let slot = &mut shadow[*lba as usize + i];
                                if *write {
                                    *slot = Some(fnv(block));
                                } else if let Some(want) = *slot {
                                    ensure!(
                                        fnv(block) == want,
                                        "thread {t}: block {} read back different",
                                        start + lba + i as u64
                                    );
                                }
                            }
                        }
                        ios += batch.len() as u64;
                    }
                    Ok((ios, shadow))
                })
            })
            .collect();
        let mut total = 0;
        let mut checked = 0;
        for (t, w) in workers.into_iter().enumerate() {
            let (ios, shadow) = w.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
            total += ios;
            // The kernel's view of every block this thread wrote, its region in one read.
            let start = BASE + t as u64 * REGION;
            let region = kernel_read(start, (REGION * 512) as usize)?;
            for (i, (sum, block)) in shadow.iter().zip(region.chunks(512)).enumerate() {
                if let Some(sum) = sum {
                    ensure!(
                        fnv(block) == *sum,
                        "block {}: the kernel reads other data than homi wrote",
                        start + i as u64
                    );
                    checked += 1;
                }
            }
        }
        ensure!(total > 0 && checked > 0, "nothing was exercised");
        println!("# stress: {total} commands, {checked} written blocks checked through the kernel");
        Ok(())
    });
    Ok(())
}
