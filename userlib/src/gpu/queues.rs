//! Queue pairs as the GPU sees them: an array of `struct homi_queue` in GPU memory.

use std::any::Any;
use std::time::Duration;

use cudarc::driver::sys;

use super::buffer::{DeviceMemory, GpuBuffer};
use super::{check, Gpu};
use crate::{Error, Result, PAGE};

/// `struct homi_queue` of `homi.cuh`, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDesc {
    /// SQ ring.
    pub sq: u64,
    /// CQ ring.
    pub cq: u64,
    /// SQ tail doorbell.
    pub sq_db: u64,
    /// CQ head doorbell.
    pub cq_db: u64,
    /// Shadow slots, or 0.
    pub sq_shadow: u64,
    /// Shadow slots, or 0.
    pub cq_shadow: u64,
    /// Event index slots, or 0.
    pub sq_eventidx: u64,
    /// Event index slots, or 0.
    pub cq_eventidx: u64,
    /// The queue's `HOMI_QUEUE_*` word, or 0.
    pub state: u64,
    /// PRP list pages (GPU address), `depth` pages.
    pub prp_lists: u64,
    /// Per slot, the controller address of its PRP list page.
    pub prp_lists_dma: u64,
    /// Engine arrays of `depth` words each.
    pub turn: u64,
    /// See `turn`.
    pub ready: u64,
    /// See `turn`.
    pub status: u64,
    /// Entries per ring.
    pub depth: u32,
    /// Queue ID.
    pub qid: u32,
    /// `HOMI_GPU_*` flags.
    pub flags: u32,
    /// Largest transfer in bytes.
    pub max_transfer: u32,
    /// log2 of the namespace's block size.
    pub lba_shift: u32,
    /// Zero.
    pub reserved: u32,
    /// How long one wait may take, in ns.
    pub timeout_ns: u64,
    /// Engine state: next ticket.
    pub sq_ticket: u64,
    /// Engine state: tickets published.
    pub sq_published: u64,
    /// Engine state.
    pub sq_lock: u32,
    /// Engine state.
    pub cq_lock: u32,
    /// Engine state: CQ head.
    pub cq_head: u32,
    /// Engine state: phase of entries not yet reaped, inverted.
    pub cq_phase: u32,
    /// The queue's sticky error (`HOMI_GPU_*`, negative), or 0.
    pub error: i32,
    /// Zero.
    pub pad: u32,
}

const _: () = assert!(std::mem::size_of::<QueueDesc>() == 184);

/// `HOMI_GPU_MMIO_DOORBELLS`: doorbells are MMIO registers.
pub const GPU_MMIO_DOORBELLS: u32 = 1;
/// Device results (see `homi.cuh`).
pub const GPU_TIMEOUT: i32 = -1;
/// The queue was destroyed (reset, unbind) or stopped.
pub const GPU_DEAD: i32 = -2;
/// Bad arguments.
pub const GPU_INVALID: i32 = -3;
/// A completion named a command not in flight.
pub const GPU_CORRUPT: i32 = -4;
/// The file map is not live (revoked or fenced): nothing more was submitted on it.
pub const GPU_REVOKED: i32 = -5;

/// What a controller gives for one queue pair, in GPU addresses.
#[derive(Clone, Copy, Debug, Default)]
pub struct QueueRings {
    /// Queue ID.
    pub qid: u16,
    /// Entries per ring.
    pub depth: u32,
    /// SQ ring.
    pub sq: u64,
    /// CQ ring.
    pub cq: u64,
    /// SQ tail doorbell.
    pub sq_db: u64,
    /// CQ head doorbell.
    pub cq_db: u64,
    /// Shadow doorbells: SQ shadow, CQ shadow, SQ event index, CQ event index.
    pub shadow: Option<[u64; 4]>,
    /// The queue's `HOMI_QUEUE_*` word (status page slot), or 0.
    pub state: u64,
    /// Doorbells are MMIO registers (`st.mmio`), not memory words.
    pub mmio_doorbells: bool,
    /// Largest transfer in bytes.
    pub max_transfer: u32,
}

/// Queue pairs for kernels: `struct homi_queue` array at
/// [`device_handle`](Self::device_handle), plus what keeps their memory alive.
#[derive(Debug)]
pub struct GpuQueues {
    descs: DeviceMemory,
    first: Vec<QueueDesc>,
    _engine: DeviceMemory,
    _prp: GpuBuffer,
    _keep: Box<dyn Any + Send + Sync>,
}

impl GpuQueues {
    /// Prepares `rings` for the device engine: PRP list pages from `prp` (at least
    /// `depth` pages per queue, reachable by their controller), engine state zeroed.
    /// `keep` holds whatever keeps the rings and doorbells alive.
    pub fn new(
        gpu: &Gpu,
        rings: &[QueueRings],
        prp: GpuBuffer,
        lba_shift: u32,
        timeout: Duration,
        keep: Box<dyn Any + Send + Sync>,
    ) -> Result<Self> {
        let pages: usize = rings.iter().map(|r| r.depth as usize).sum();
        if rings.is_empty() || prp.len() < pages * PAGE {
            return Err(Error::Invalid("PRP list memory: one page per queue entry"));
        }
        let words: usize = rings.iter().map(|r| r.depth as usize * 3).sum();
        let engine = DeviceMemory::zeroed(gpu, words * 4)?;
        let (mut page, mut word) = (0usize, 0usize);
        let mut descs = Vec::with_capacity(rings.len());
        for r in rings {
            if r.depth < 2 || r.depth > 65536 {
                return Err(Error::Invalid("queue depth outside 2..=65536"));
            }
            let d = r.depth as usize;
            let [sq_shadow, cq_shadow, sq_eventidx, cq_eventidx] = r.shadow.unwrap_or_default();
            let at = |w: usize| engine.ptr + 4 * w as u64;
            descs.push(QueueDesc {
                sq: r.sq,
                cq: r.cq,
                sq_db: r.sq_db,
                cq_db: r.cq_db,
                sq_shadow,
                cq_shadow,
                sq_eventidx,
                cq_eventidx,
                state: r.state,
                prp_lists: prp.dev_ptr() + (page * PAGE) as u64,
                prp_lists_dma: prp.table() + 8 * page as u64,
                turn: at(word),
                ready: at(word + d),
                status: at(word + 2 * d),
                depth: r.depth,
                qid: u32::from(r.qid),
                flags: if r.mmio_doorbells { GPU_MMIO_DOORBELLS } else { 0 },
                max_transfer: r.max_transfer.min((PAGE * (PAGE / 8 + 1)) as u32),
                lba_shift,
                timeout_ns: timeout.as_nanos().min(u128::from(u64::MAX)) as u64,
                ..Default::default()
            });
            page += d;
            word += 3 * d;
        }
        let table = DeviceMemory::zeroed(gpu, descs.len() * std::mem::size_of::<QueueDesc>())?;
        table.write(0, &descs)?;
        Ok(Self { descs: table, first: descs, _engine: engine, _prp: prp, _keep: keep })
    }

    /// GPU address of the `struct homi_queue` array, for kernels.
    pub fn device_handle(&self) -> u64 {
        self.descs.ptr
    }

    /// Queue pairs in the array.
    pub fn len(&self) -> usize {
        self.first.len()
    }

    /// Always false: a set holds at least one queue pair.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The descriptors as they are now in GPU memory (engine state, errors). Read it
    /// while no kernel uses the queues.
    pub fn snapshot(&self, gpu: &Gpu) -> Result<Vec<QueueDesc>> {
        let mut out = vec![QueueDesc::default(); self.first.len()];
        gpu.bind()?;
        let bytes = std::mem::size_of_val(out.as_slice());
        // SAFETY: the table holds `len` descriptors; `out` has room for them.
        check("cuMemcpyDtoH", unsafe { sys::cuMemcpyDtoH_v2(out.as_mut_ptr().cast(), self.descs.ptr, bytes) })?;
        Ok(out)
    }

    /// Zeroes every queue's engine state, as after the queues were rearmed on zeroed
    /// rings. Call it while no kernel uses the queues.
    pub fn restart(&self) -> Result<()> {
        self.descs.write(0, &self.first)?;
        let words: usize = self.first.iter().map(|d| d.depth as usize * 3).sum();
        let first = self.first.first().map(|d| d.turn).unwrap_or_default();
        // SAFETY: the engine arrays are one allocation of `words` words from `first`.
        check("cuMemsetD8", unsafe { sys::cuMemsetD8_v2(first, 0, words * 4) })
    }
}
