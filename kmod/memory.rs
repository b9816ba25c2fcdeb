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

/// Bytes in quarantine, module-wide (INFO's `quarantined_bytes`).
pub(crate) static QUARANTINED: AtomicU64 = AtomicU64::new(0);

/// A buffer from ALLOC: coherent memory user space maps.
pub(crate) struct Buffer {
    pub(crate) id: u32,
    pub(crate) mem: DmaRegion,
    pub(crate) pgoff: u64,
}

/// A registration from REGISTER: pinned user pages.
pub(crate) struct Registration {
    pub(crate) id: u32,
    pub(crate) pinned: Pinned,
}

/// Memory the controller may reach.
pub(crate) enum Memory {
    /// Coherent memory: a buffer or a ring.
    Coherent(DmaRegion),
    /// Pinned user pages.
    Pinned(Pinned),
}

impl Memory {
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Memory::Coherent(m) => m.size(),
            Memory::Pinned(p) => p.bytes(),
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
