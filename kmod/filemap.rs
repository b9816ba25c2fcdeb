// SPDX-License-Identifier: GPL-2.0

//! MAP_FILE and UNMAP_FILE: a file's byte range as LBAs of the attached controller's
//! namespaces, kept true by a lease (`lease.rs`) until the holder lets it go.
//!
//! - **Which files.** The glue (`homi_file_glue.c`) says where the file lives and
//!   refuses what homi cannot read or write at LBAs: other devices and stacks,
//!   encrypted, verity, DAX, inline, compressed or journalled data, misaligned blocks.
//! - **Order.** The lease is taken before the extents are read, so any change to the
//!   layout after that breaks it; a map whose lease broke while it was being built is
//!   refused with `EAGAIN`.
//! - **Extents.** XFS: the export operations' `map_blocks` (which writes back and drops
//!   the file's page cache first). ext4: `bmap` per block, after writing back the range;
//!   it does not tell unwritten blocks from holes, so both are reported as holes (both
//!   read as zeros).
//! - **Letting go.** A map is released by UNMAP_FILE, by close (after the file's queues
//!   are deleted; with a queue that may still exist it waits in the quarantine, as
//!   memory does), or by the fence (`lease.rs`). The release happens with `inner`
//!   released: dropping a writable map's page cache can wait for folio locks.

use core::num::NonZeroU64;
use core::ptr;
use core::sync::atomic::Ordering;

use kernel::{
    alloc::KVVec,
    bindings,
    fs::File,
    prelude::*,
    sync::{
        aref::ARef,
        Arc,
        ArcBorrow, //
    },
    uaccess::UserSlice,
};

use crate::file::FileState;
use crate::glue::{
    self,
    refuse, //
};
use crate::lease::{
    self,
    FileInfo,
    Lease,
    RawExtent,
    FILE_DELALLOC,
    FILE_HOLE,
    FILE_MAPPED,
    FILE_UNWRITTEN,
    FS_LAYOUT, //
};
use crate::uapi::*;

/// A file map an attached file holds. Dropping it lets the lease go and clears the
/// map's status slot.
pub(crate) struct MapEntry {
    pub(crate) lease: Arc<Lease>,
}

impl Drop for MapEntry {
    fn drop(&mut self) {
        self.lease.release();
        self.lease
            .holder
            .map_status
            .set(self.lease.map_slot, HOMI_MAP_NONE);
    }
}

/// Which map status slots a file uses: a bitmap, grown on demand.
#[derive(Default)]
pub(crate) struct MapSlots {
    used: KVec<u64>,
}

impl MapSlots {
    fn take(&mut self) -> Result<u32> {
        for (w, bits) in self.used.iter_mut().enumerate() {
            if *bits != u64::MAX {
                let b = bits.trailing_ones();
                *bits |= 1 << b;
                return Ok(w as u32 * 64 + b);
            }
        }
        if self.used.len() == HOMI_MAP_SLOTS / 64 {
            refuse!(
                "map_file: this file holds {} maps already\n",
                HOMI_MAP_SLOTS
            );
            return Err(ENOSPC);
        }
        self.used.push(1, GFP_KERNEL)?;
        Ok((self.used.len() as u32 - 1) * 64)
    }

    fn free(&mut self, slot: u32) {
        if let Some(bits) = self.used.get_mut(slot as usize / 64) {
            *bits &= !(1 << (slot % 64));
        }
    }
}

/// What the fence found to do, with `inner` held; done after it is released.
enum Fence {
    Nothing,
    Retry,
    Release,
}

fn round_up(x: u64, to: u64) -> Option<u64> {
    x.checked_next_multiple_of(to)
}

/// The extents of `start..end` (at most `cap` of them), and where they stop.
struct Builder<'a> {
    file: &'a File,
    info: &'a FileInfo,
    out: KVVec<HomiExtent>,
    cap: usize,
}

impl Builder<'_> {
    /// Appends `len` bytes of `kind` at device byte `addr` (of the file system's
    /// device), merged into the last extent where they continue it. `false` when the
    /// array is full.
    fn push(&mut self, pos: u64, len: u64, kind: u32, addr: u64) -> Result<bool> {
        let shift = self.info.lba_shift;
        let lba = if kind == HOMI_EXTENT_HOLE {
            0
        } else {
            (self.info.start + addr) >> shift
        };
        let blocks = len >> shift;
        if let Some(last) = self.out.last_mut() {
            let contiguous = kind == HOMI_EXTENT_HOLE || last.lba + last.blocks == lba;
            if last.kind == kind && contiguous {
                last.blocks += blocks;
                return Ok(true);
            }
        }
        if self.out.len() == self.cap {
            return Ok(false);
        }
        self.out.push(
            HomiExtent {
                file_offset: pos,
                lba,
                blocks,
                nsid: self.info.nsid,
                kind,
            },
            GFP_KERNEL,
        )?;
        Ok(true)
    }

    /// One piece at `pos` from the export operations: (kind, bytes, device address).
    fn layout_piece(&self, pos: u64, end: u64) -> Result<(u32, u64, u64)> {
        let e: RawExtent = lease::map_blocks(self.file, pos, end - pos)
            .inspect_err(|e| {
                if *e == ENXIO {
                    refuse!(
                        "map_file: the file shares blocks (reflink) or is on a realtime device\n"
                    );
                }
            })
            .map_err(|e| if e == ENXIO { ETXTBSY } else { e })?;
        if e.shared != 0 {
            refuse!("map_file: the file shares blocks with another file (reflink)\n");
            return Err(ETXTBSY);
        }
        let e_end = e.offset.checked_add(e.length).ok_or(EIO)?;
        if e.offset > pos || e_end <= pos {
            pr_err!(
                "map_file: map_blocks answered {}+{} for offset {}\n",
                e.offset,
                e.length,
                pos
            );
            return Err(EIO);
        }
        let kind = match e.kind {
            FILE_HOLE => HOMI_EXTENT_HOLE,
            FILE_MAPPED => HOMI_EXTENT_MAPPED,
            FILE_UNWRITTEN => HOMI_EXTENT_UNWRITTEN,
            FILE_DELALLOC => {
                // `map_blocks` wrote the file back first: only a racing writer, whose
                // write broke the lease, leaves one.
                return Err(EAGAIN);
            }
            _ => {
                refuse!("map_file: the file's data is inline\n");
                return Err(EINVAL);
            }
        };
        let addr = if kind == HOMI_EXTENT_HOLE {
            0
        } else {
            e.addr + (pos - e.offset)
        };
        Ok((kind, e_end.min(end) - pos, addr))
    }

    /// One piece at `pos` from `bmap`, block by block: (kind, bytes, device address).
    fn bmap_piece(&self, pos: u64, end: u64) -> Result<(u32, u64, u64)> {
        // `describe` refused a zero block size; `NonZeroU64` divides without a panic path.
        let bs = NonZeroU64::new(u64::from(self.info.block_size)).ok_or(EINVAL)?;
        let first = pos / bs;
        let phys = lease::bmap(self.file, first)?;
        let mut n = 1;
        let bs = bs.get();
        while (first + n) * bs < end {
            let p = lease::bmap(self.file, first + n)?;
            let same = if phys == 0 { p == 0 } else { p == phys + n };
            if !same {
                break;
            }
            n += 1;
        }
        let len = ((first + n) * bs).min(end) - pos;
        if phys == 0 {
            // `bmap` also answers 0 when it failed: data the file system finds there
            // must not be reported as a hole.
            if lease::next_data(self.file, pos)? < pos + len {
                pr_warn!("map_file: bmap found no block where the file has data\n");
                return Err(EIO);
            }
            Ok((HOMI_EXTENT_HOLE, len, 0))
        } else {
            Ok((HOMI_EXTENT_MAPPED, len, phys * bs + (pos - first * bs)))
        }
    }

    /// Writes `start..end` back, then fills the array from `start`, under a lease
    /// taken before: a lease that breaks meanwhile makes the extents worthless
    /// (`EAGAIN`), and its breaker should not wait for the rest. Returns where the
    /// extents stop (`end`, or less if the array filled).
    fn build(&mut self, lease: &Lease, start: u64, end: u64) -> Result<u64> {
        if end > start {
            lease::flush(self.file, start, end)?;
            if self.info.kind != FS_LAYOUT {
                // As XFS's `map_blocks` does: with no cached pages over unwritten
                // blocks, SEEK_DATA (the check of `bmap`'s holes) sees them as holes.
                // Writes are denied by now, so only clean pages go.
                let _ = lease::invalidate(self.file, start, end);
            }
        }
        let mut pos = start;
        while pos < end {
            if !lease.is_live() {
                return Err(EAGAIN);
            }
            if kernel::current!().signal_pending() {
                return Err(ERESTARTSYS);
            }
            let (kind, len, addr) = if self.info.kind == FS_LAYOUT {
                self.layout_piece(pos, end)?
            } else {
                self.bmap_piece(pos, end)?
            };
            if !self.push(pos, len, kind, addr)? {
                break;
            }
            pos += len;
        }
        Ok(pos)
    }
}

impl FileState {
    /// MAP_FILE.
    pub(crate) fn map_file(self: ArcBorrow<'_, Self>, req: &HomiMapFile) -> Result<HomiMapFile> {
        let page = bindings::PAGE_SIZE as u64;
        if req.flags & !HOMI_MAP_WRITE != 0
            || req.fd < 0
            || req.offset % page != 0
            || req.len == 0
            || req.extents == 0
            || req.capacity == 0
            || req.capacity > HOMI_MAP_MAX_EXTENTS
            || req.count != 0
            || req.id != 0
            || req.status_slot != 0
            || req.file_size != 0
            || req.block_size != 0
            || req.nsid != 0
            || req.lba_shift != 0
            || req.revoke_ms != 0
        {
            return Err(EINVAL);
        }
        let write = req.flags & HOMI_MAP_WRITE != 0;
        let file = crate::file::file_of_fd(req.fd)?;
        let mode = file.flags() & bindings::O_ACCMODE;
        if mode == bindings::O_WRONLY || (write && mode != bindings::O_RDWR) {
            refuse!(
                "map_file: the fd is not open for {}\n",
                if write {
                    "reading and writing"
                } else {
                    "reading"
                }
            );
            return Err(EBADF);
        }
        let (c, id, slot) =
            self.with_attached(|a| Ok((a.c.clone(), a.next_id(), a.map_slots.take()?)))?;
        let res = self.map_file_in(&c, file, req, write, id, slot);
        if res.is_err() {
            let _ = self.with_attached(|a| {
                a.map_slots.free(slot);
                Ok(())
            });
        }
        res
    }

    fn map_file_in(
        self: ArcBorrow<'_, Self>,
        c: &Arc<crate::registry::Controller>,
        file: ARef<File>,
        req: &HomiMapFile,
        write: bool,
        id: u32,
        slot: u32,
    ) -> Result<HomiMapFile> {
        let (info, res) = lease::describe(c.ctrl.raw_nonnull(), &file);
        if let Err(e) = res {
            refuse!(
                "map_file: a file on {} ({}) is refused: {}\n",
                lease::c_name(&info.bdev),
                lease::c_name(&info.fs),
                lease::why(&info)
            );
            return Err(e);
        }
        let layout = info.kind == FS_LAYOUT;
        if !layout && write {
            refuse!(
                "map_file: {} offers no layout leases: writable maps need XFS\n",
                lease::c_name(&info.fs)
            );
            return Err(glue::errno(bindings::EOPNOTSUPP));
        }
        if !layout && file.flags() & bindings::O_ACCMODE != bindings::O_RDONLY {
            refuse!(
                "map_file: on {}, the fd must be opened read-only\n",
                lease::c_name(&info.fs)
            );
            return Err(EINVAL);
        }
        let bs = u64::from(info.block_size);
        let file_end = round_up(info.size, bs).ok_or(EINVAL)?;
        let end = round_up(req.offset.saturating_add(req.len), bs)
            .unwrap_or(u64::MAX)
            .min(file_end)
            .max(req.offset);
        let lease = Lease::new(
            self.into(),
            file.clone(),
            id,
            slot,
            (req.offset, end),
            write,
            layout,
        )?;
        // Set before the lease exists, so that a break's REVOKED is never overwritten.
        self.map_status.set(slot, HOMI_MAP_LIVE);
        if let Err(e) = lease.take() {
            self.map_status.set(slot, HOMI_MAP_NONE);
            if e == EAGAIN {
                refuse!("map_file: the file is open for writing, or its lease is being broken\n");
            }
            return Err(e);
        }
        // From here on, dropping `entry` lets the lease go and clears the slot.
        let entry = MapEntry {
            lease: lease.clone(),
        };
        let mut b = Builder {
            file: &file,
            info: &info,
            out: KVVec::new(),
            cap: req.capacity as usize,
        };
        let stop = b.build(&lease, req.offset, end).inspect_err(|e| {
            if *e == EAGAIN {
                refuse!("map_file: the file's layout changed while it was mapped; try again\n");
            }
        })?;
        let extents = b.out;
        // Recorded before the last look at the lease: a break from here on finds the
        // map for its fence, one before is caught below.
        let mut entry = Some(entry);
        let recorded = self.with_attached(|a| {
            if a.c.ctrl.key() != c.ctrl.key() {
                return Err(ENODEV);
            }
            a.maps.reserve(1, GFP_KERNEL)?;
            if let Some(e) = entry.take() {
                // Room was reserved just above.
                a.maps.push(e, GFP_KERNEL)?;
            }
            Ok(())
        });
        // An entry not recorded is dropped here, with `inner` released.
        drop(entry);
        recorded?;
        if !lease.is_live() {
            drop(self.take_map(id));
            refuse!("map_file: the file's layout changed while it was mapped; try again\n");
            return Err(EAGAIN);
        }
        let reply = HomiMapFile {
            flags: req.flags
                | if layout {
                    HOMI_MAP_LAYOUT_LEASE
                } else {
                    HOMI_MAP_DENY_WRITE
                },
            len: stop - req.offset,
            count: extents.len() as u32,
            id,
            status_slot: slot,
            file_size: info.size,
            block_size: info.block_size,
            nsid: info.nsid,
            lba_shift: info.lba_shift,
            revoke_ms: lease::revoke_ms(),
            ..*req
        };
        // Copied with `inner` released (the copy can fault); a map whose extents did
        // not reach user space is let go at once (its slot is freed by `map_file`).
        let bytes = extents.len() * size_of::<HomiExtent>();
        let mut w = UserSlice::new(UserPtr::from_addr(req.extents as usize), bytes).writer();
        if let Err(e) = extents.iter().try_for_each(|x| w.write(x)) {
            drop(self.take_map(id));
            return Err(e);
        }
        Ok(reply)
    }

    /// Takes map `id` out of the file's table; dropped by the caller with `inner`
    /// released. Its slot stays taken.
    fn take_map(&self, id: u32) -> Result<MapEntry> {
        self.with_attached(|a| {
            let i = a.maps.iter().position(|m| m.lease.id == id).ok_or(ENOENT)?;
            a.maps.remove(i).map_err(|_| ENOENT)
        })
    }

    /// UNMAP_FILE: the holder's acknowledgement, or a plain release.
    pub(crate) fn unmap_file(&self, req: &HomiId) -> Result {
        if req.flags != 0 {
            return Err(EINVAL);
        }
        let entry = self.take_map(req.id)?;
        let slot = entry.lease.map_slot;
        // Released with `inner` released; the slot is freed only after, so no new map
        // can take it while its state is still being cleared.
        drop(entry);
        self.with_attached(|a| {
            a.map_slots.free(slot);
            Ok(())
        })
    }

    /// The fence, once the holder has had `map_revoke_ms` to acknowledge `lease`:
    /// destroys every queue pair of this file, then releases the lease. Returns whether
    /// to try again later (a queue that may still exist).
    pub(crate) fn fence_map(&self, lease: &Lease) -> bool {
        let todo = self
            .with_attached(|a| {
                let mine = a.maps.iter().any(|m| ptr::eq(&*m.lease, lease));
                if !mine || lease.state.load(Ordering::Acquire) != HOMI_MAP_REVOKED {
                    return Ok(Fence::Nothing);
                }
                if glue::log_ratelimit() {
                    pr_warn!(
                        "map {}: not acknowledged within map_revoke_ms; destroying the queue pairs of pid {}\n",
                        lease.id,
                        a.pid
                    );
                }
                self.kill_queues(a);
                // Out of memory counting them: try again too.
                if a.lives().map_or(true, |l| !l.is_empty()) {
                    return Ok(Fence::Retry);
                }
                lease.state.store(HOMI_MAP_FENCED, Ordering::Release);
                self.map_status.set(lease.map_slot, HOMI_MAP_FENCED);
                Ok(Fence::Release)
            })
            .unwrap_or(Fence::Nothing);
        match todo {
            Fence::Nothing => false,
            Fence::Retry => true,
            Fence::Release => {
                lease.release();
                false
            }
        }
    }
}
