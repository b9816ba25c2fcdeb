// SPDX-License-Identifier: GPL-2.0

//! Memory the controller may reach on a file's behalf (module buffers, pinned user
//! pages, rings) and the quarantine that keeps it alive until nothing can reach it.
//!
//! The lifetime rule: nothing the controller may still reach is freed, unpinned or
//! unmapped before every queue that could reach it is deleted on the controller, or the
//! controller was disabled since that queue was created. Memory that user space lets go
//! of earlier (FREE, UNREGISTER, a queue whose Delete failed, a file closed with such a
//! queue) waits in quarantine: [`Waiting`] inside the file while it is open, a
//! [`Package`](crate::registry::Package) of the controller after it closed.

use core::sync::atomic::{
    AtomicU64,
    Ordering, //
};

use kernel::prelude::*;

use crate::dma::{
    DmaRegion,
    Pinned, //
};
use crate::dmabuf::Imported;
use crate::filemap::MapEntry;
use crate::mapping::PAGE_SIZE;

/// Bytes in quarantine, module-wide (INFO's `quarantined_bytes`).
pub(crate) static QUARANTINED: AtomicU64 = AtomicU64::new(0);

/// A buffer from ALLOC: coherent memory user space maps.
pub(crate) struct Buffer {
    pub(crate) id: u32,
    pub(crate) mem: DmaRegion,
    pub(crate) pgoff: u64,
}

/// A registration: pinned user pages (REGISTER, host or peer-to-peer memory) or an
/// imported dma-buf (REGISTER_DMABUF).
pub(crate) struct Registration {
    pub(crate) id: u32,
    pub(crate) mem: Memory,
}

/// Memory the controller may reach.
pub(crate) enum Memory {
    /// Coherent memory: a buffer or a ring.
    Coherent(DmaRegion),
    /// Pinned user pages.
    Pinned(Pinned),
    /// A range of a dma-buf, attached, pinned and mapped.
    DmaBuf(Imported),
    /// A file map: the file's blocks, which the file system keeps for the file until
    /// the map's lease goes. No bytes of homi's own.
    FileBlocks(
        #[expect(dead_code, reason = "held for its drop, which releases the lease")] MapEntry,
    ),
}

impl Memory {
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Memory::Coherent(m) => m.size(),
            Memory::Pinned(p) => p.bytes(),
            Memory::DmaBuf(d) => d.bytes(),
            Memory::FileBlocks(_) => 0,
        }
    }

    /// The controller-visible address of `len` bytes at `offset`, if they lie inside and
    /// are contiguous for the controller (where a ring can be placed).
    pub(crate) fn contiguous(&self, offset: u64, len: usize) -> Option<u64> {
        let end = offset.checked_add(len as u64)?;
        if end > self.bytes() as u64 || offset % PAGE_SIZE as u64 != 0 || len == 0 {
            return None;
        }
        let first = usize::try_from(offset).ok()? / PAGE_SIZE;
        let n = len.div_ceil(PAGE_SIZE);
        let (mut i, mut base, mut ok) = (0usize, None, true);
        // Fed each page's address in order; stops (with an error) past the ring's last.
        let mut check = |a: u64| -> Result {
            if i >= first {
                let b = *base.get_or_insert(a);
                if a != b + ((i - first) * PAGE_SIZE) as u64 {
                    ok = false;
                    return Err(EINVAL);
                }
            }
            i += 1;
            if i >= first + n {
                return Err(EAGAIN);
            }
            Ok(())
        };
        match self {
            Memory::Coherent(m) => return Some(m.dma() + offset),
            Memory::Pinned(p) => {
                let _ = p.for_each_page_dma(&mut check);
            }
            Memory::DmaBuf(d) if !d.revoked() => {
                let _ = d.addrs().iter().try_for_each(|a| check(*a));
            }
            Memory::DmaBuf(_) | Memory::FileBlocks(_) => return None,
        }
        (ok && i >= first + n).then_some(base).flatten()
    }

    /// Whether the exporter revoked it (a dma-buf moved despite its pin).
    pub(crate) fn revoked(&self) -> bool {
        matches!(self, Memory::DmaBuf(d) if d.revoked())
    }

    /// After a revocation, lets a dma-buf's mapping go (no queue may reach it).
    pub(crate) fn unmap_revoked(&self) {
        if let Memory::DmaBuf(d) = self {
            d.unmap();
        }
    }
}

/// Memory in quarantine: counted in [`QUARANTINED`] for as long as it is held, and
/// freed (unmapped, unpinned) when dropped.
pub(crate) struct Held {
    mem: Memory,
}

impl Held {
    pub(crate) fn new(mem: Memory) -> Self {
        QUARANTINED.fetch_add(mem.bytes() as u64, Ordering::Relaxed);
        Self { mem }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        QUARANTINED.fetch_sub(self.mem.bytes() as u64, Ordering::Relaxed);
    }
}

/// Memory a file let go of while queues that could reach it may still exist on the
/// controller: held until none of those queue lives is left.
pub(crate) struct Waiting {
    pub(crate) held: Held,
    /// The lives ([`QueuePair::life`](crate::queue::QueuePair)) it waits for.
    pub(crate) lives: KVec<u64>,
}

impl Waiting {
    /// Whether every life it waits for is over, given the lives still going.
    pub(crate) fn releasable(&self, going: &[u64]) -> bool {
        !self.lives.iter().any(|l| going.contains(l))
    }
}
