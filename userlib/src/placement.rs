//! Queue pairs whose rings live in memory the caller holds (ring placement).
//!
//! With [`RingPlacement`], the module creates the SQ and/or CQ in a buffer or
//! registration of this process (module memory from [`Controller::alloc`], registered
//! process or peer-to-peer memory, an imported dma-buf) instead of its own memory. The
//! memory must be contiguous for the controller over the ring; the module refuses to
//! free or unregister it while the queue pair exists, and the queue pair keeps the
//! buffers alive. A CPU queue needs a CPU mapping of each placed ring; rings in GPU
//! memory are for queue engines on the GPU.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use homi_uapi::{HomiQpair, HOMI_QPAIR_CQ_IN_MEMORY, HOMI_QPAIR_SQ_IN_MEMORY};

use crate::controller::Shared;
use crate::mapping::Mapping;
use crate::{sys, Controller, DmaBuffer, Error, QueuePair, Result};

/// Where the rings of a new queue pair go: `None` keeps a ring in module memory.
#[derive(Clone, Debug, Default)]
pub struct RingPlacement {
    /// The SQ ring's buffer and its byte offset there (a multiple of 4096).
    pub sq: Option<(Arc<DmaBuffer>, u64)>,
    /// The CQ ring's buffer and its byte offset there (a multiple of 4096).
    pub cq: Option<(Arc<DmaBuffer>, u64)>,
}

/// The memory behind one ring of a queue pair.
#[derive(Debug)]
pub(crate) enum RingMem {
    /// Module memory, mapped from `/dev/homi`.
    Mapped(Mapping),
    /// At an offset of a buffer of the caller's.
    Placed(Arc<DmaBuffer>, u64),
}

impl RingMem {
    /// The ring's first byte for the CPU.
    pub(crate) fn ptr(&self) -> Result<*mut u8> {
        match self {
            RingMem::Mapped(m) => Ok(m.ptr()),
            RingMem::Placed(b, _) if !b.is_mapped() => {
                Err(Error::Invalid("a CPU queue needs a CPU mapping of its placed rings"))
            }
            // SAFETY: the module checked that the ring lies inside the buffer.
            RingMem::Placed(b, off) => Ok(unsafe { b.as_ptr().add(*off as usize) }),
        }
    }

    /// Zeroes a placed ring (before a rearm: the module zeroes only its own rings).
    pub(crate) fn zero(&self, len: usize) {
        if let (RingMem::Placed(..), Ok(p)) = (self, self.ptr()) {
            // SAFETY: `len` bytes of the ring, which the module checked lie inside the
            // buffer; the queue does not exist on the controller during a rearm.
            unsafe { std::ptr::write_bytes(p, 0, len) };
        }
    }
}

impl RingPlacement {
    fn request(&self, depth: u32) -> Result<HomiQpair> {
        let mut q = HomiQpair { depth, ..Default::default() };
        let id = |b: &DmaBuffer| b.id().ok_or(Error::Invalid("rings go in memory of a real controller"));
        if let Some((b, off)) = &self.sq {
            q.flags |= HOMI_QPAIR_SQ_IN_MEMORY;
            (q.sq_memory, q.sq_memory_offset) = (id(b)?, *off);
        }
        if let Some((b, off)) = &self.cq {
            q.flags |= HOMI_QPAIR_CQ_IN_MEMORY;
            (q.cq_memory, q.cq_memory_offset) = (id(b)?, *off);
        }
        Ok(q)
    }
}

/// Creates the queue pair on the controller; the raw reply, for engines that map
/// nothing on the CPU.
pub(crate) fn create(shared: &Shared, depth: u32, place: &RingPlacement) -> Result<HomiQpair> {
    let mut q = place.request(depth)?;
    // SAFETY: the fd is open and `q` is a valid, writable `HomiQpair`.
    unsafe { sys::homi_create_qpair(shared.fd().as_raw_fd(), &mut q) }.map_err(|e| match e {
        nix::Error::EOPNOTSUPP => Error::ShadowDoorbells,
        nix::Error::ENOSPC => Error::NoSpareQueues,
        nix::Error::EAGAIN => Error::NotLive,
        source => Error::Ioctl { op: "HOMI_IOCTL_CREATE_QPAIR", source },
    })?;
    Ok(q)
}

impl Controller {
    /// Reserves a spare qid and creates a queue pair of `depth` entries whose rings are
    /// placed as `place` says, driven from the CPU: each placed ring needs a CPU mapping.
    pub fn create_qpair_placed(&self, depth: u32, place: RingPlacement) -> Result<QueuePair> {
        if depth > crate::MAX_QUEUE_DEPTH {
            return Err(crate::Error::Invalid("queue depth above 65535, the engine's limit"));
        }
        // The module zeroes nothing it does not own: a CQ ring holding a former tenant's
        // entries would show their phase tags as new completions.
        for (ring, entry) in [(&place.sq, 64), (&place.cq, 16)] {
            if let Some((b, off)) = ring {
                let len = (depth as usize).saturating_mul(entry).next_multiple_of(crate::prp::PAGE);
                let fits = usize::try_from(*off).ok().and_then(|o| o.checked_add(len)).is_some_and(|e| e <= b.len());
                // Where it does not fit (or has no CPU mapping), CREATE_QPAIR refuses.
                if fits && b.is_mapped() {
                    b.write_at(*off as usize, &vec![0; len])?;
                }
            }
        }
        let q = create(self.shared(), depth, &place)?;
        QueuePair::map(self.shared().clone(), q, [place.sq, place.cq])
    }
}
