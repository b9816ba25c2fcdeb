// SPDX-License-Identifier: GPL-2.0

//! DMA memory homi hands to user space: coherent allocations (rings, buffers) and
//! pinned user pages. All of it is mapped through the DMA API against the controller's
//! PCI device, and charged to the owning process's `pinned_vm` against its
//! `RLIMIT_MEMLOCK`, as RDMA does.
//!
//! C headers: [`include/linux/dma-mapping.h`](srctree/include/linux/dma-mapping.h),
//! [`include/linux/mm.h`](srctree/include/linux/mm.h)

use core::ffi::c_void;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use kernel::{alloc::KVVec, bindings, prelude::*, scatterlist::SGTable};

use crate::glue::{self, refuse};

/// Bytes of coherent DMA memory homi holds, module-wide.
pub(crate) static DMA_BYTES: AtomicU64 = AtomicU64::new(0);
/// User pages homi holds pinned, module-wide.
pub(crate) static PINNED_PAGES: AtomicU64 = AtomicU64::new(0);
/// The most coherent DMA memory homi holds at once, module-wide, whatever the
/// processes' limits: it comes from the kernel's contiguous allocations.
const MAX_DMA_BYTES: u64 = 1 << 30;

const PAGE_SIZE: usize = bindings::PAGE_SIZE;

/// Pages charged to a process's `mm->pinned_vm`, uncharged on drop (possibly after
/// the process exited: the `mm_struct` is kept with `mmgrab`).
///
/// # Invariants
///
/// `mm` is a grabbed `mm_struct` whose `pinned_vm` this object raised by `pages`.
pub(crate) struct MmCharge {
    mm: NonNull<c_void>,
    pages: usize,
}

// SAFETY: the mm is refcounted and its counter atomic; nothing is thread-bound.
unsafe impl Send for MmCharge {}
// SAFETY: `&MmCharge` allows nothing.
unsafe impl Sync for MmCharge {}

impl MmCharge {
    /// Charges `bytes` (rounded up to pages) to the calling process; `ENOMEM` past its
    /// `RLIMIT_MEMLOCK` unless it has `CAP_IPC_LOCK`.
    pub(crate) fn new(bytes: usize) -> Result<Self> {
        let pages = bytes.div_ceil(PAGE_SIZE);
        // SAFETY: called from an ioctl, in the calling process's context.
        let mm = NonNull::new(unsafe { glue::homi_mm_get() }).ok_or(EINVAL)?;
        // SAFETY: `mm` is grabbed above.
        let ret = unsafe { glue::homi_mm_charge(mm.as_ptr(), pages) };
        if ret != 0 {
            // SAFETY: grabbed above, dropped once.
            unsafe { glue::homi_mm_put(mm.as_ptr()) };
            refuse!("{} pages more would pass RLIMIT_MEMLOCK\n", pages);
            return Err(Error::from_errno(ret));
        }
        // INVARIANT: grabbed and charged above.
        Ok(Self { mm, pages })
    }
}

impl Drop for MmCharge {
    fn drop(&mut self) {
        // SAFETY: by the type invariant the mm is grabbed and charged; both undone once.
        unsafe {
            glue::homi_mm_uncharge(self.mm.as_ptr(), self.pages);
            glue::homi_mm_put(self.mm.as_ptr());
        }
    }
}

/// A reference on a device (`get_device`), dropped with `put_device`.
///
/// # Invariants
///
/// `ptr` is a device on which this object holds one reference.
pub(crate) struct DevRef {
    ptr: NonNull<bindings::device>,
}

// SAFETY: device references may be taken and dropped from any thread.
unsafe impl Send for DevRef {}
// SAFETY: `&DevRef` only yields the pointer.
unsafe impl Sync for DevRef {}

impl DevRef {
    /// Takes a reference on `dev`.
    ///
    /// # Safety
    ///
    /// `dev` must be a live device for the duration of the call.
    pub(crate) unsafe fn new(dev: *mut bindings::device) -> Result<Self> {
        let ptr = NonNull::new(dev).ok_or(ENODEV)?;
        // SAFETY: the caller guarantees `dev` is live.
        unsafe { bindings::get_device(ptr.as_ptr()) };
        // INVARIANT: we took the reference just now.
        Ok(Self { ptr })
    }

    pub(crate) fn as_ptr(&self) -> *mut bindings::device {
        self.ptr.as_ptr()
    }
}

impl Clone for DevRef {
    fn clone(&self) -> Self {
        // SAFETY: `self` holds a reference, so the device is live.
        unsafe { Self::new(self.as_ptr()) }.expect("a held device is not null")
    }
}

impl Drop for DevRef {
    fn drop(&mut self) {
        // SAFETY: we hold this reference (type invariant) and drop it once.
        unsafe { bindings::put_device(self.ptr.as_ptr()) };
    }
}

/// Coherent DMA memory of the controller's device.
///
/// # Invariants
///
/// `cpu` and `dma` came from `dma_alloc_attrs(dev, size, ..)`, which is freed exactly
/// once, on drop, while `dev` still holds its device reference.
pub(crate) struct DmaRegion {
    dev: DevRef,
    cpu: NonNull<c_void>,
    dma: u64,
    size: usize,
    _charge: MmCharge,
}

// SAFETY: the region is plain memory plus a device reference; nothing is thread-bound.
unsafe impl Send for DmaRegion {}
// SAFETY: shared access only reads addresses; memory contents are accessed volatile.
unsafe impl Sync for DmaRegion {}

impl DmaRegion {
    /// Allocates `size` bytes (rounded up to pages), zeroed, contiguous as the device
    /// sees it.
    /// The memory is charged to the calling process.
    pub(crate) fn alloc(dev: &DevRef, size: usize) -> Result<Self> {
        let size = size.checked_next_multiple_of(PAGE_SIZE).ok_or(EINVAL)?;
        // Counted before allocating, so concurrent callers cannot pass the cap together.
        if DMA_BYTES.fetch_add(size as u64, Ordering::Relaxed) + size as u64 > MAX_DMA_BYTES {
            DMA_BYTES.fetch_sub(size as u64, Ordering::Relaxed);
            refuse!(
                "module-wide DMA memory limit ({} MiB) reached\n",
                MAX_DMA_BYTES >> 20
            );
            return Err(ENOMEM);
        }
        let uncount = || DMA_BYTES.fetch_sub(size as u64, Ordering::Relaxed);
        let charge = MmCharge::new(size).inspect_err(|_| {
            uncount();
        })?;
        let dev = dev.clone();
        let mut dma: bindings::dma_addr_t = 0;
        // SAFETY: `dev` is a live device (we hold a reference); the flags ask for
        // zeroed memory.
        let cpu = unsafe {
            bindings::dma_alloc_attrs(
                dev.as_ptr(),
                size,
                &mut dma,
                bindings::GFP_KERNEL | bindings::__GFP_ZERO,
                0,
            )
        };
        let Some(cpu) = NonNull::new(cpu) else {
            uncount();
            return Err(ENOMEM);
        };
        // INVARIANT: allocated above with this device and size; we took a reference.
        Ok(Self {
            dev,
            cpu,
            dma,
            size,
            _charge: charge,
        })
    }

    /// The device-visible address of the first byte.
    pub(crate) fn dma(&self) -> u64 {
        self.dma
    }

    /// Size in bytes (whole pages).
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// Kernel pointer to the first byte. The memory is shared with the device and
    /// user space: access it with volatile or atomic operations only.
    pub(crate) fn cpu(&self) -> *mut u8 {
        self.cpu.as_ptr().cast()
    }

    /// Zeroes the region (rings before a queue is recreated).
    pub(crate) fn zero(&self) {
        // SAFETY: `cpu` points to `size` bytes we own (type invariant).
        unsafe { core::ptr::write_bytes(self.cpu(), 0, self.size) };
    }

    /// The kernel address of page `index`, for a user mapping's fault handler.
    pub(crate) fn page(&self, index: usize) -> Option<*mut c_void> {
        (index < self.size / PAGE_SIZE)
            // SAFETY: inside the region (checked), which we own.
            .then(|| unsafe { self.cpu().add(index * PAGE_SIZE) }.cast())
    }
}

impl Drop for DmaRegion {
    fn drop(&mut self) {
        // SAFETY: allocated by `dma_alloc_attrs` with these arguments, freed only here
        // (type invariant); user mappings were zapped by the owner before dropping.
        unsafe {
            bindings::dma_free_attrs(self.dev.as_ptr(), self.size, self.cpu.as_ptr(), self.dma, 0)
        };
        DMA_BYTES.fetch_sub(self.size as u64, Ordering::Relaxed);
    }
}

/// User pages pinned for DMA and mapped for the controller.
///
/// # Invariants
///
/// `pages` holds `pages.len()` pages pinned with `pin_user_pages_fast` (with
/// `FOLL_PCI_P2PDMA` if `p2p`); `sgt` was
/// built over them and mapped with `dma_map_sgtable(dev, .., DMA_BIDIRECTIONAL)`.
/// Drop undoes both, in reverse order, exactly once, before `dev` is released. The
/// pages are charged to the pinning process by `_charge`.
pub(crate) struct Pinned {
    dev: DevRef,
    pages: KVVec<*mut bindings::page>,
    sgt: KBox<bindings::sg_table>,
    /// The pages are peer-to-peer memory, pinned with `FOLL_PCI_P2PDMA`.
    p2p: bool,
    _charge: MmCharge,
}

// SAFETY: page pointers and the table are only used by drop and under the owner's lock.
unsafe impl Send for Pinned {}
// SAFETY: `&Pinned` only reads the table.
unsafe impl Sync for Pinned {}

impl Pinned {
    /// Pins `len` bytes at user address `addr` (both page-aligned) for writing and
    /// maps them for `dev`, charging them to the calling process. Refuses memory the
    /// controller would reach only through a bounce buffer.
    pub(crate) fn new(dev: &DevRef, addr: u64, len: u64) -> Result<Self> {
        let dev = dev.clone();
        let n = usize::try_from(len / PAGE_SIZE as u64)?;
        let n_c = i32::try_from(n).map_err(|_| EINVAL)?;
        let charge = MmCharge::new(n * PAGE_SIZE)?;
        // The page array can be large (a 1 GiB registration is 2 MiB of pointers).
        let mut pages = KVVec::from_elem(core::ptr::null_mut(), n, GFP_KERNEL)?;
        // Host memory is pinned long-term (migrated out of movable zones first). Peer-to-peer
        // memory (another device's BAR published through P2PDMA, e.g. an NVMe CMB) refuses
        // that (its pgmap must stay removable) and needs `FOLL_PCI_P2PDMA`: tried second.
        let mut p2p = false;
        let mut got = 0;
        for flags in [
            bindings::FOLL_WRITE | bindings::FOLL_LONGTERM,
            bindings::FOLL_WRITE | bindings::FOLL_PCI_P2PDMA,
        ] {
            // SAFETY: `pages` has room for `n` entries; the kernel checks the user range.
            got = unsafe {
                bindings::pin_user_pages_fast(addr as usize, n_c, flags, pages.as_mut_ptr())
            };
            if got == n_c {
                p2p = flags & bindings::FOLL_PCI_P2PDMA != 0;
                break;
            }
            if got > 0 {
                // SAFETY: exactly `got` pages were pinned above.
                unsafe { bindings::unpin_user_pages(pages.as_mut_ptr(), got as usize) };
            }
        }
        if got != n_c {
            return Err(if got < 0 {
                Error::from_errno(got)
            } else {
                EFAULT
            });
        }
        let unpin = |pages: &mut KVVec<*mut bindings::page>| {
            // SAFETY: all `n` pages were pinned above and are not yet unpinned.
            unsafe { bindings::unpin_user_pages(pages.as_mut_ptr(), n) };
        };
        // SAFETY: an all-zero `sg_table` is the empty table the allocator expects.
        let mut sgt = match KBox::new(
            unsafe { core::mem::zeroed::<bindings::sg_table>() },
            GFP_KERNEL,
        ) {
            Ok(s) => s,
            Err(e) => {
                unpin(&mut pages);
                return Err(e.into());
            }
        };
        // SAFETY: `sgt` is an empty table, `pages` holds `n` pinned pages.
        let ret = unsafe {
            bindings::sg_alloc_table_from_pages_segment(
                &mut *sgt,
                pages.as_mut_ptr(),
                n as u32,
                0,
                len as usize,
                u32::MAX,
                bindings::GFP_KERNEL,
            )
        };
        if ret != 0 {
            unpin(&mut pages);
            return Err(Error::from_errno(ret));
        }
        // SAFETY: `sgt` was filled above; `dev` is live (the caller holds the controller).
        let ret = unsafe {
            bindings::dma_map_sgtable(
                dev.as_ptr(),
                &mut *sgt,
                bindings::dma_data_direction_DMA_BIDIRECTIONAL,
                0,
            )
        };
        if ret != 0 {
            // SAFETY: the table was allocated above and is not mapped.
            unsafe { bindings::sg_free_table(&mut *sgt) };
            unpin(&mut pages);
            if ret == -(bindings::EREMOTEIO as i32) {
                refuse!(
                    "register: peer-to-peer memory the controller cannot reach (P2PDMA finds \
                     no path between the provider and the controller); refused\n"
                );
                return Err(glue::errno(bindings::EXDEV));
            }
            return Err(Error::from_errno(ret));
        }
        PINNED_PAGES.fetch_add(n as u64, Ordering::Relaxed);
        // INVARIANT: pinned, tabled, mapped and referenced above.
        let me = Self {
            dev,
            pages,
            sgt,
            p2p,
            _charge: charge,
        };
        // The controller writes this memory with no sync call in between: a mapping
        // that needs one (a swiotlb bounce buffer, a non-coherent device) would lose
        // its writes. Dropping `me` undoes everything above.
        let mut bounces = false;
        me.for_each_segment(|addr, _| {
            // SAFETY: `dev` is live (we hold a reference); any address may be asked.
            bounces |= unsafe { glue::homi_dma_needs_sync(me.dev.as_ptr().cast(), addr) };
        });
        if bounces {
            refuse!("register: DMA to this memory would need syncs (swiotlb bounce buffering?); refused\n");
            return Err(glue::errno(bindings::EOPNOTSUPP));
        }
        Ok(me)
    }

    fn for_each_segment(&self, mut f: impl FnMut(u64, u64)) {
        // SAFETY: `sgt` is a mapped table that lives as long as `self`.
        let table = unsafe { SGTable::from_raw(core::ptr::from_ref(&*self.sgt).cast_mut()) };
        for sg in table.iter() {
            f(sg.dma_address(), sg.dma_len());
        }
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.pages.len() * PAGE_SIZE
    }

    /// Calls `f` with each page's device-visible address, in order.
    pub(crate) fn for_each_page_dma(&self, mut f: impl FnMut(u64) -> Result) -> Result {
        // SAFETY: `sgt` is a mapped table that lives as long as `self`.
        let table = unsafe { SGTable::from_raw(core::ptr::from_ref(&*self.sgt).cast_mut()) };
        let mut left = self.pages.len();
        for sg in table.iter() {
            let (mut addr, mut len) = (sg.dma_address(), sg.dma_len());
            while len > 0 && left > 0 {
                f(addr)?;
                addr += PAGE_SIZE as u64;
                len = len.saturating_sub(PAGE_SIZE as u64);
                left -= 1;
            }
        }
        if left != 0 {
            return Err(EIO);
        }
        Ok(())
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let n = self.pages.len();
        // SAFETY: by the type invariant the table is mapped for `dev`, allocated, and
        // the pages pinned; each is undone once, in reverse order.
        unsafe {
            bindings::dma_unmap_sgtable(
                self.dev.as_ptr(),
                &mut *self.sgt,
                bindings::dma_data_direction_DMA_BIDIRECTIONAL,
                0,
            );
            bindings::sg_free_table(&mut *self.sgt);
            if self.p2p {
                // Device memory: nothing to write back.
                bindings::unpin_user_pages(self.pages.as_mut_ptr(), n);
            } else {
                // The controller may have written any page: mark them dirty, so the page
                // cache or swap does not drop what it wrote.
                bindings::unpin_user_pages_dirty_lock(self.pages.as_mut_ptr(), n, true);
            }
        }
        PINNED_PAGES.fetch_sub(n as u64, Ordering::Relaxed);
    }
}
