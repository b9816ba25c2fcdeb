// SPDX-License-Identifier: GPL-2.0

//! Where a queue's rings live: module memory user space maps, or memory the caller
//! holds (CREATE_QPAIR with `HOMI_QPAIR_SQ_IN_MEMORY`/`_CQ_`): a buffer (ALLOC) or
//! registration (REGISTER, REGISTER_DMABUF, peer-to-peer memory) of the same file.
//!
//! A placed ring is only an address for the controller: the module maps nothing and
//! zeroes nothing there. The memory behind it cannot be freed or unregistered (`EBUSY`)
//! while the queue pair exists; a queue whose Delete failed becomes a zombie whose
//! life keeps that memory in quarantine, as for any memory its commands could reach.

use kernel::prelude::*;

use crate::attached::Attached;
use crate::dma::{
    DevRef,
    DmaRegion, //
};
use crate::glue::refuse;
use crate::mapping::{
    take_pgoffs,
    zap,
    Backing,
    Object,
    PAGE_SIZE, //
};
use crate::memory::{
    Held,
    Memory, //
};
use crate::queue::Gate;
use crate::uapi::*;

/// One ring of a queue pair.
pub(crate) enum Ring {
    /// Module memory, mapped by user space at `pgoff`.
    Own { mem: DmaRegion, pgoff: u64 },
    /// At `offset` of buffer or registration `id` of the file, at `dma` for the
    /// controller.
    Placed {
        id: u32,
        offset: u64,
        dma: u64,
        size: usize,
    },
}

impl Ring {
    /// A ring of `bytes` (page-rounded) in fresh module memory.
    pub(crate) fn own(dev: &DevRef, bytes: usize) -> Result<Self> {
        let mem = DmaRegion::alloc(dev, bytes)?;
        Ok(Ring::Own {
            pgoff: take_pgoffs(mem.size()),
            mem,
        })
    }

    /// The controller-visible address of its first entry.
    pub(crate) fn dma(&self) -> u64 {
        match self {
            Ring::Own { mem, .. } => mem.dma(),
            Ring::Placed { dma, .. } => *dma,
        }
    }

    /// Bytes (whole pages).
    pub(crate) fn size(&self) -> usize {
        match self {
            Ring::Own { mem, .. } => mem.size(),
            Ring::Placed { size, .. } => *size,
        }
    }

    /// The mmap offset in bytes, 0 for a placed ring (the caller maps its own memory).
    pub(crate) fn mmap_offset(&self) -> u64 {
        match self {
            Ring::Own { pgoff, .. } => *pgoff << crate::mapping::PAGE_SHIFT,
            Ring::Placed { .. } => 0,
        }
    }

    /// The buffer or registration it is placed in.
    pub(crate) fn placed_in(&self) -> Option<u32> {
        self.placed_at().map(|(id, _)| id)
    }

    /// The buffer or registration it is placed in, and the offset there.
    pub(crate) fn placed_at(&self) -> Option<(u32, u64)> {
        match self {
            Ring::Own { .. } => None,
            Ring::Placed { id, offset, .. } => Some((*id, *offset)),
        }
    }

    /// Zeroes module memory before the queue is created again; a placed ring is the
    /// caller's to prepare.
    pub(crate) fn zero(&self) {
        if let Ring::Own { mem, .. } = self {
            mem.zero();
        }
    }

    /// Revokes user mappings of module memory.
    pub(crate) fn zap(&self, mapping: usize) {
        if let Ring::Own { mem, pgoff } = self {
            zap(mapping, *pgoff, mem.size());
        }
    }

    /// The object at page offset `pgoff`, if it is this ring's module memory.
    pub(crate) fn lookup(&self, pgoff: u64) -> Option<(Object, Backing, Gate)> {
        let Ring::Own { mem, pgoff: start } = self else {
            return None;
        };
        let page = mem.page(usize::try_from(pgoff.checked_sub(*start)?).ok()?)?;
        let obj = Object {
            pgoff: *start,
            bytes: mem.size(),
            writable: true,
            mmio: false,
        };
        Some((obj, Backing::Kernel(page), Gate::Always))
    }

    /// For a zombie: module memory to hold until the controller is disabled. A placed
    /// ring's memory stays with the file, held by the zombie's life.
    pub(crate) fn into_held(self) -> Option<Held> {
        match self {
            Ring::Own { mem, .. } => Some(Held::new(Memory::Coherent(mem))),
            Ring::Placed { .. } => None,
        }
    }
}

/// The placement one ring of a CREATE_QPAIR asks for: `(id, offset)`, or none.
pub(crate) type Want = Option<(u32, u64)>;

/// Validates the placement fields of a CREATE_QPAIR: a flag needs a non-zero id and a
/// 4096-aligned offset; without it both must be zero. No other flag may be set.
pub(crate) fn wanted(req: &HomiQpair) -> Result<(Want, Want)> {
    let known = HOMI_QPAIR_SQ_IN_MEMORY | HOMI_QPAIR_CQ_IN_MEMORY;
    if req.flags & !known != 0 {
        return Err(EINVAL);
    }
    let one = |flag: u32, id: u32, offset: u64| -> Result<Want> {
        if req.flags & flag == 0 {
            return if id == 0 && offset == 0 {
                Ok(None)
            } else {
                Err(EINVAL)
            };
        }
        if id == 0 || offset % PAGE_SIZE as u64 != 0 {
            refuse!("create_qpair: a placed ring needs a memory id and a 4096-aligned offset\n");
            return Err(EINVAL);
        }
        Ok(Some((id, offset)))
    };
    Ok((
        one(HOMI_QPAIR_SQ_IN_MEMORY, req.sq_memory, req.sq_memory_offset)?,
        one(HOMI_QPAIR_CQ_IN_MEMORY, req.cq_memory, req.cq_memory_offset)?,
    ))
}

impl Attached {
    /// Buffers plus registrations are limited per file.
    pub(crate) fn check_room(&self) -> Result {
        if self.buffers.len() + self.regs.len() >= crate::attached::MAX_OBJECTS_PER_FILE {
            return Err(EMFILE);
        }
        Ok(())
    }

    /// FREE and UNREGISTER refuse memory that holds a ring of an existing queue pair.
    pub(crate) fn check_not_placed(&self, id: u32) -> Result {
        if self.queues.iter().any(|q| q.placed_in(id)) {
            refuse!(
                "memory {} holds a ring of a queue pair; destroy the queue pair first\n",
                id
            );
            return Err(EBUSY);
        }
        Ok(())
    }

    /// Whether any memory a ring of a queue pair is placed in was revoked by its
    /// exporter.
    pub(crate) fn placement_revoked(&self, ids: [Option<u32>; 2]) -> bool {
        self.regs
            .iter()
            .any(|r| ids.contains(&Some(r.id)) && r.mem.revoked())
    }

    /// A ring of `bytes` (page-rounded) as `want` asks: in module memory, or placed in
    /// memory of this file where its pages are contiguous for the controller.
    pub(crate) fn ring(&self, dev: &DevRef, want: Want, bytes: usize) -> Result<Ring> {
        let Some((id, offset)) = want else {
            return Ring::own(dev, bytes);
        };
        let size = bytes.next_multiple_of(PAGE_SIZE);
        let dma = if let Some(b) = self.buffers.iter().find(|b| b.id == id) {
            let end = offset.checked_add(size as u64).ok_or(EINVAL)?;
            (end <= b.mem.size() as u64).then(|| b.mem.dma() + offset)
        } else if let Some(r) = self.regs.iter().find(|r| r.id == id) {
            r.mem.contiguous(offset, size)
        } else {
            refuse!(
                "create_qpair: no buffer or registration {} to place a ring in\n",
                id
            );
            return Err(EINVAL);
        };
        let Some(dma) = dma else {
            refuse!(
                "create_qpair: a ring of {} bytes at {:#x} of memory {} is out of range, \
                 revoked or not contiguous for the controller\n",
                size,
                offset,
                id
            );
            return Err(EINVAL);
        };
        Ok(Ring::Placed {
            id,
            offset,
            dma,
            size,
        })
    }
}
