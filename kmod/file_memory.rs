// SPDX-License-Identifier: GPL-2.0

//! The memory ioctls of a file: ALLOC and FREE of module buffers, REGISTER and
//! UNREGISTER of user memory. What is let go while a queue may still reach it is
//! parked (see `memory.rs`).

use kernel::{alloc::KVVec, prelude::*, uaccess::UserSlice};

use crate::attached::{
    Attached,
    MAX_OBJECTS_PER_FILE, //
};
use crate::dma::{
    DmaRegion,
    Pinned, //
};
use crate::file::FileState;
use crate::mapping::{
    take_pgoffs,
    zap,
    PAGE_SHIFT,
    PAGE_SIZE, //
};
use crate::memory::{
    Buffer,
    Memory,
    Registration, //
};
use crate::uapi::*;

impl FileState {
    pub(crate) fn alloc(&self, req: &HomiAlloc) -> Result<HomiAlloc> {
        if req.flags != 0
            || req.id != 0
            || req.size == 0
            || req.size > HOMI_ALLOC_MAX
            || req.size % PAGE_SIZE as u64 != 0
        {
            return Err(EINVAL);
        }
        self.with_attached(|a| {
            if a.buffers.len() + a.regs.len() >= MAX_OBJECTS_PER_FILE {
                return Err(EMFILE);
            }
            a.buffers.reserve(1, GFP_KERNEL)?;
            let mem = DmaRegion::alloc(&a.c.ctrl.dev_ref()?, req.size as usize)?;
            let b = Buffer {
                id: a.next_id(),
                pgoff: take_pgoffs(mem.size()),
                mem,
            };
            let reply = HomiAlloc {
                size: req.size,
                flags: 0,
                id: b.id,
                offset: b.pgoff << PAGE_SHIFT,
                dma_addr: b.mem.dma(),
            };
            // Room was reserved above.
            a.buffers.push(b, GFP_KERNEL)?;
            Ok(reply)
        })
    }

    pub(crate) fn free(&self, req: &HomiId) -> Result {
        if req.flags != 0 {
            return Err(EINVAL);
        }
        self.with_attached(|a| {
            let i = a
                .buffers
                .iter()
                .position(|b| b.id == req.id)
                .ok_or(ENOENT)?;
            let lives = a.prepare_park()?;
            let b = a.buffers.remove(i).map_err(|_| ENOENT)?;
            zap(self.mapping, b.pgoff, b.mem.size());
            a.park(Memory::Coherent(b.mem), lives);
            Ok(())
        })
    }

    pub(crate) fn register(&self, req: &HomiRegister) -> Result<HomiRegister> {
        let page = PAGE_SIZE as u64;
        if req.flags != 0
            || req.id != 0
            || req.len == 0
            || req.len > HOMI_REGISTER_MAX
            || req.addr % page != 0
            || req.len % page != 0
        {
            return Err(EINVAL);
        }
        let pages = usize::try_from(req.len / page).map_err(|_| EINVAL)?;
        // Pinning and copying the addresses out can take the mmap lock, which mmap and
        // faults hold while they take `inner`: so check under `inner`, pin and copy
        // without it, and take it again to record the registration.
        let check = |a: &Attached| {
            if a.buffers.len() + a.regs.len() >= MAX_OBJECTS_PER_FILE {
                return Err(EMFILE);
            }
            Ok(())
        };
        let (dev, ctrl) = self.with_attached(|a| {
            check(a)?;
            Ok((a.c.ctrl.dev_ref()?, a.c.ctrl.key()))
        })?;
        let pinned = Pinned::new(&dev, req.addr, req.len)?;
        // Recorded before any address reaches user space: once one does, commands may
        // use it, and only UNREGISTER (or close) may let the pages go.
        let id = self.with_attached(|a| {
            // Another thread may have registered meanwhile, or the file was re-attached.
            if a.c.ctrl.key() != ctrl {
                return Err(ENODEV);
            }
            check(a)?;
            a.regs.reserve(1, GFP_KERNEL)?;
            let id = a.next_id();
            // Room was reserved above.
            a.regs.push(Registration { id, pinned }, GFP_KERNEL)?;
            Ok(id)
        })?;
        let mut w = UserSlice::new(UserPtr::from_addr(req.dma_addrs as usize), pages * 8).writer();
        let copied = self.with_attached(|a| {
            let r = a.regs.iter().find(|r| r.id == id).ok_or(ENOENT)?;
            let mut addrs = KVVec::with_capacity(pages, GFP_KERNEL)?;
            r.pinned
                .for_each_page_dma(|addr| Ok(addrs.push(addr, GFP_KERNEL)?))?;
            Ok(addrs)
        });
        // Copied out with `inner` released (the copy can fault).
        let written = copied.and_then(|addrs| addrs.iter().try_for_each(|addr| w.write(addr)));
        if let Err(e) = written {
            // Some addresses may have reached user space: let go as UNREGISTER does.
            let _ = self.unregister(&HomiId { id, flags: 0 });
            return Err(e);
        }
        Ok(HomiRegister { id, ..*req })
    }

    pub(crate) fn unregister(&self, req: &HomiId) -> Result {
        if req.flags != 0 {
            return Err(EINVAL);
        }
        self.with_attached(|a| {
            let i = a.regs.iter().position(|r| r.id == req.id).ok_or(ENOENT)?;
            let lives = a.prepare_park()?;
            let r = a.regs.remove(i).map_err(|_| ENOENT)?;
            a.park(Memory::Pinned(r.pinned), lives);
            Ok(())
        })
    }
}
