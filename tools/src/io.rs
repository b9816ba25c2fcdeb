//! `homi read` and `homi write`: move an LBA range between a namespace and a file
//! through one homi queue pair, keeping many commands in flight.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use homi::{Command, Controller, QueuePair};

/// Arguments of `homi read` / `homi write`.
#[derive(clap::Args)]
pub struct IoArgs {
    /// The controller's char device.
    #[arg(long, default_value = "/dev/nvme0")]
    nvme: PathBuf,
    /// Namespace ID.
    #[arg(long, default_value_t = 1)]
    nsid: u32,
    /// First logical block.
    #[arg(long)]
    lba: u64,
    /// Logical blocks to move (for write: default, the whole file).
    #[arg(long)]
    blocks: Option<u64>,
    /// The file to read into or write from.
    #[arg(long)]
    file: PathBuf,
    /// Commands in flight.
    #[arg(long, default_value_t = 16)]
    qd: u32,
}

/// Bytes per command: two memory pages fit in PRP1 and PRP2 without a PRP list.
const CHUNK: usize = 8192;

/// Namespace `nsid` of the controller `info` describes (`nvme`, for the message).
pub(crate) fn find_namespace(
    info: &homi::uapi::HomiInfo,
    nvme: &std::path::Path,
    nsid: u32,
) -> anyhow::Result<homi::uapi::HomiNamespace> {
    info.namespaces[..info.nr_namespaces as usize]
        .iter()
        .find(|n| n.nsid == nsid)
        .copied()
        .with_context(|| format!("namespace {nsid} not found on {}", nvme.display()))
}

/// Fails unless `blocks` blocks from `lba` lie inside `ns`.
pub(crate) fn ensure_in_namespace(ns: &homi::uapi::HomiNamespace, lba: u64, blocks: u64) -> anyhow::Result<()> {
    ensure!(
        lba.checked_add(blocks).is_some_and(|end| end <= ns.blocks),
        "LBA range beyond the namespace ({} blocks)",
        ns.blocks
    );
    Ok(())
}

pub fn run(a: &IoArgs, write: bool) -> anyhow::Result<()> {
    ensure!((1..=1024).contains(&a.qd), "--qd must be 1..=1024");
    let ctrl = while_resetting(|| Controller::open(&a.nvme)).with_context(|| format!("attach {}", a.nvme.display()))?;
    let info = while_resetting(|| ctrl.info())?;
    let ns = find_namespace(&info, &a.nvme, a.nsid)?;
    let bs = 1u64 << ns.lba_shift;
    ensure!(CHUNK as u64 % bs == 0, "block size {bs} does not divide {CHUNK}");
    let mut data = Vec::new();
    let blocks = if write {
        File::open(&a.file)?.read_to_end(&mut data)?;
        ensure!(!data.is_empty() && data.len() as u64 % bs == 0, "file size must be a non-zero multiple of {bs}");
        let b = data.len() as u64 / bs;
        if let Some(want) = a.blocks {
            ensure!(want == b, "--blocks {want} but the file holds {b}");
        }
        b
    } else {
        a.blocks.context("--blocks is required for read")?
    };
    ensure!(blocks > 0, "nothing to move");
    ensure_in_namespace(&ns, a.lba, blocks)?;
    if !write {
        data = vec![0; (blocks * bs) as usize];
    }

    let mut qp = while_resetting(|| ctrl.create_qpair((a.qd + 1).max(2)))?;
    // One CHUNK-sized slot per command in flight.
    let buf = ctrl.alloc(CHUNK * a.qd as usize)?;
    let chunk_blocks = CHUNK as u64 / bs;
    let nchunks = blocks.div_ceil(chunk_blocks);
    let mut free_slots: Vec<usize> = (0..a.qd as usize).collect();
    // Per slot, the chunk in flight there; chunks a reset caught go to `retry`.
    let mut in_flight: Vec<Option<u64>> = vec![None; a.qd as usize];
    let mut retry: Vec<u64> = Vec::new();
    let (mut next, mut done, mut resets) = (0u64, 0u64, 0u32);
    let start = Instant::now();
    while done < nchunks {
        while !free_slots.is_empty() && (!retry.is_empty() || next < nchunks) {
            let chunk = retry.pop().unwrap_or_else(|| {
                next += 1;
                next - 1
            });
            let slot = free_slots.pop().expect("checked");
            let lba = a.lba + chunk * chunk_blocks;
            let n = chunk_blocks.min(blocks - chunk * chunk_blocks);
            let off = slot * CHUNK;
            let len = (n * bs) as usize;
            let (p1, p2) = buf.prps(off, len)?;
            let cmd = if write {
                let from = (chunk * chunk_blocks * bs) as usize;
                buf.write_at(off, &data[from..from + len])?;
                Command::write(a.nsid, lba, n as u32)
            } else {
                Command::read(a.nsid, lba, n as u32)
            };
            // SAFETY: the slot is ours until its completion; `buf` outlives the queue.
            unsafe { qp.push(&cmd.with_prps(p1, p2), chunk << 16 | slot as u64)? };
            in_flight[slot] = Some(chunk);
        }
        qp.ring();
        let mut failed = None;
        let polled = qp.poll(|c| {
            let (chunk, slot) = (c.token >> 16, (c.token & 0xffff) as usize);
            if let Err(e) = c.ok() {
                failed = Some(format!("chunk {chunk}: {e}"));
            } else if !write {
                let from = (chunk * chunk_blocks * bs) as usize;
                let len = (chunk_blocks.min(blocks - chunk * chunk_blocks) * bs) as usize;
                // Completed, so the device is done with the slot.
                let _ = buf.read_at(slot * CHUNK, &mut data[from..from + len]);
            }
            in_flight[slot] = None;
            free_slots.push(slot);
            done += 1;
        });
        // Commands a reset caught never complete: with nothing completing, ask the
        // status page (no syscall) whether the queue still lives.
        let lost = match polled {
            Ok(0) => qp.check().err(),
            Ok(_) => None,
            Err(e) => Some(e),
        };
        match lost {
            None => {}
            Some(homi::Error::Reset { .. }) => {
                resets += 1;
                ensure!(resets <= 1000, "gave up after {resets} controller resets");
                rearm(&mut qp)?;
                // The rearmed queue forgot every command: resubmit their chunks.
                for (slot, chunk) in in_flight.iter_mut().enumerate() {
                    if let Some(c) = chunk.take() {
                        retry.push(c);
                        free_slots.push(slot);
                    }
                }
            }
            Some(e) => return Err(e.into()),
        }
        if let Some(f) = failed {
            bail!("I/O failed: {f}");
        }
        if start.elapsed() > Duration::from_secs(300) {
            bail!("gave up after 300 s with {done}/{nchunks} commands done");
        }
    }
    if resets > 0 {
        eprintln!("homi: {resets} controller reset(s) during the transfer; the queue was rearmed and the I/O redone");
    }
    let secs = start.elapsed().as_secs_f64();
    if !write {
        OpenOptions::new().create(true).truncate(true).write(true).open(&a.file)?.write_all(&data)?;
    }
    eprintln!(
        "homi: {} {} blocks ({} KiB) at LBA {} of ns {} through qid {} in {:.1} ms ({} commands, QD {})",
        if write { "wrote" } else { "read" },
        blocks,
        blocks * bs / 1024,
        a.lba,
        a.nsid,
        qp.qid(),
        secs * 1e3,
        nchunks,
        a.qd
    );
    Ok(())
}

/// Recreates `qp` after a controller reset: waits (up to 60 s) until the reset has
/// disabled and re-enabled the controller and the queue can be created again.
pub fn rearm(qp: &mut QueuePair) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        match qp.rearm() {
            Ok(()) => return Ok(()),
            // Not live yet, the status page has not marked the queue dead yet, or another
            // reset aborted the recreation.
            Err(
                homi::Error::NotLive
                | homi::Error::Invalid(_)
                | homi::Error::Ioctl { source: nix::Error::EIO | nix::Error::EINTR, .. },
            ) if start.elapsed() < Duration::from_secs(60) => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(anyhow::Error::from(e).context("rearm after a controller reset")),
        }
    }
}

/// Runs `f` until it stops failing because the controller is resetting (not live, or
/// an admin command the reset aborted), for up to 60 s.
pub(crate) fn while_resetting<T>(mut f: impl FnMut() -> homi::Result<T>) -> homi::Result<T> {
    let start = Instant::now();
    loop {
        match f() {
            Err(homi::Error::NotLive | homi::Error::Ioctl { source: nix::Error::EIO | nix::Error::EINTR, .. })
                if start.elapsed() < Duration::from_secs(60) =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}
