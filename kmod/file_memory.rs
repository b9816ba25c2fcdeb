// SPDX-License-Identifier: GPL-2.0

//! The memory ioctls of a file: ALLOC and FREE of module buffers, REGISTER and
//! UNREGISTER of user memory (REGISTER_DMABUF is in `dmabuf.rs`). What is let go while a queue may still reach it is
//! parked (see `memory.rs`).

use kernel::{alloc::KVVec, prelude::*, uaccess::UserSlice};

use crate::dma::{
    DevRef,
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
            a.check_room()?;
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
            a.check_not_placed(req.id)?;
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
        // Pinning and copying the addresses out can take the mmap lock, which mmap and
        // faults hold while they take `inner`: so check under `inner`, pin and copy
        // without it, and take it again to record the registration.
        let (dev, ctrl, id) = self.begin_registration()?;
        let pinned = Pinned::new(&dev, req.addr, req.len)?;
        self.record_registration(ctrl, id, Memory::Pinned(pinned))?;
        self.copy_out_addrs(id, req.dma_addrs, req.len)?;
        Ok(HomiRegister { id, ..*req })
    }

    /// The first step of REGISTER and REGISTER_DMABUF, under `inner`: room for one more
    /// object, the controller's device, its key and the new registration's id. The
    /// memory is then pinned or imported without `inner`, and recorded with
    /// [`record_registration`](Self::record_registration).
    pub(crate) fn begin_registration(&self) -> Result<(DevRef, usize, u32)> {
        self.with_attached(|a| {
            a.check_room()?;
            Ok((a.c.ctrl.dev_ref()?, a.c.ctrl.key(), a.next_id()))
        })
    }

    /// Records registration `id` (its id taken by the check before the memory was
    /// pinned or imported) in the file attached to controller `ctrl`. Recorded before
    /// any address reaches user space: once one does, commands may use it, and only
    /// UNREGISTER (or close) may let the memory go.
    pub(crate) fn record_registration(&self, ctrl: usize, id: u32, mem: Memory) -> Result {
        self.with_attached(|a| {
            // Another thread may have registered meanwhile, or the file was re-attached.
            if a.c.ctrl.key() != ctrl {
                return Err(ENODEV);
            }
            a.check_room()?;
            a.regs.reserve(1, GFP_KERNEL)?;
            // Room was reserved above.
            a.regs.push(Registration { id, mem }, GFP_KERNEL)?;
            Ok(())
        })
    }

    /// Copies registration `id`'s page addresses (`len` bytes' worth) to the user array
    /// at `to`, with `inner` released (the copy can fault). On failure the registration
    /// is let go as UNREGISTER does: some addresses may have reached user space.
    pub(crate) fn copy_out_addrs(&self, id: u32, to: u64, len: u64) -> Result {
        let pages = usize::try_from(len / PAGE_SIZE as u64)?;
        let mut w = UserSlice::new(UserPtr::from_addr(to as usize), pages * 8).writer();
        let copied = self.with_attached(|a| {
            let r = a.regs.iter().find(|r| r.id == id).ok_or(ENOENT)?;
            let mut addrs = KVVec::with_capacity(pages, GFP_KERNEL)?;
            match &r.mem {
                Memory::Pinned(p) => {
                    p.for_each_page_dma(|addr| Ok(addrs.push(addr, GFP_KERNEL)?))?
                }
                Memory::DmaBuf(d) => {
                    for addr in d.addrs() {
                        addrs.push(*addr, GFP_KERNEL)?;
                    }
                }
                Memory::Coherent(_) | Memory::FileBlocks(_) => return Err(EINVAL),
            }
            Ok(addrs)
        });
        let written = copied.and_then(|addrs| addrs.iter().try_for_each(|addr| w.write(addr)));
        if let Err(e) = written {
            let _ = self.unregister(&HomiId { id, flags: 0 });
            return Err(e);
        }
        Ok(())
    }

    pub(crate) fn unregister(&self, req: &HomiId) -> Result {
        if req.flags != 0 {
            return Err(EINVAL);
        }
        self.with_attached(|a| {
            let i = a.regs.iter().position(|r| r.id == req.id).ok_or(ENOENT)?;
            a.check_not_placed(req.id)?;
            let lives = a.prepare_park()?;
            let r = a.regs.remove(i).map_err(|_| ENOENT)?;
            a.park(r.mem, lives);
            Ok(())
        })
    }
}
