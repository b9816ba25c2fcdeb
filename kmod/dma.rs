// SPDX-License-Identifier: GPL-2.0

//! DMA memory homi hands to user space: coherent allocations (rings, buffers, the
//! status page) and pinned user pages. All of it is mapped through the DMA API
//! against the controller's PCI device, so an IOMMU confines the controller to it.
//!
//! C headers: [`include/linux/dma-mapping.h`](srctree/include/linux/dma-mapping.h),
//! [`include/linux/mm.h`](srctree/include/linux/mm.h)

use core::ffi::c_void;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use kernel::{bindings, mm::virt::VmaNew, prelude::*, scatterlist::SGTable};

/// Bytes of coherent DMA memory homi holds, module-wide.
pub(crate) static DMA_BYTES: AtomicU64 = AtomicU64::new(0);
/// User pages homi holds pinned, module-wide.
pub(crate) static PINNED_PAGES: AtomicU64 = AtomicU64::new(0);

const PAGE_SIZE: usize = bindings::PAGE_SIZE;

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
}

// SAFETY: the region is plain memory plus a device reference; nothing is thread-bound.
unsafe impl Send for DmaRegion {}
// SAFETY: shared access only reads addresses; memory contents are accessed volatile.
unsafe impl Sync for DmaRegion {}

impl DmaRegion {
    /// Allocates `size` bytes (rounded up to pages), zeroed, contiguous as the device
    /// sees it.
    pub(crate) fn alloc(dev: &DevRef, size: usize) -> Result<Self> {
        let size = size.checked_next_multiple_of(PAGE_SIZE).ok_or(EINVAL)?;
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
        let cpu = NonNull::new(cpu).ok_or(ENOMEM)?;
        DMA_BYTES.fetch_add(size as u64, Ordering::Relaxed);
        // INVARIANT: allocated above with this device and size; we took a reference.
        Ok(Self {
            dev,
            cpu,
            dma,
            size,
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

    /// Maps the whole region into `vma`, which must be exactly as long. The VMA keeps
    /// its `vm_pgoff`, which names this region in the file's mmap offset space, so
    /// `unmap_mapping_range` finds it again.
    pub(crate) fn mmap(&self, vma: &VmaNew) -> Result {
        if vma.end() - vma.start() != self.size {
            return Err(EINVAL);
        }
        let raw = vma.as_ptr();
        // SAFETY: `raw` is the VMA being set up under the mmap lock (`VmaNew`); the
        // region is live and exactly `size` bytes. `dma_mmap_attrs` reads `vm_pgoff` as
        // an offset into the region, so it sees 0 and the file offset is put back.
        let ret = unsafe {
            let pgoff = (*raw).vm_pgoff;
            (*raw).vm_pgoff = 0;
            let ret = bindings::dma_mmap_attrs(
                self.dev.as_ptr(),
                raw,
                self.cpu.as_ptr(),
                self.dma,
                self.size,
                0,
            );
            (*raw).vm_pgoff = pgoff;
            ret
        };
        kernel::error::to_result(ret)
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
/// `pages` holds `pages.len()` pages pinned with `pin_user_pages_fast`; `sgt` was
/// built over them and mapped with `dma_map_sgtable(dev, .., DMA_BIDIRECTIONAL)`.
/// Drop undoes both, in reverse order, exactly once, before `dev` is released.
pub(crate) struct Pinned {
    dev: DevRef,
    pages: KVec<*mut bindings::page>,
    sgt: KBox<bindings::sg_table>,
}

// SAFETY: page pointers and the table are only used by drop and under the owner's lock.
unsafe impl Send for Pinned {}
// SAFETY: `&Pinned` only reads the table.
unsafe impl Sync for Pinned {}

impl Pinned {
    /// Pins `len` bytes at user address `addr` (both page-aligned) for writing and
    /// maps them for `dev`.
    pub(crate) fn new(dev: &DevRef, addr: u64, len: u64) -> Result<Self> {
        let dev = dev.clone();
        let n = usize::try_from(len / PAGE_SIZE as u64)?;
        let n_c = i32::try_from(n).map_err(|_| EINVAL)?;
        let mut pages = KVec::from_elem(core::ptr::null_mut(), n, GFP_KERNEL)?;
        // SAFETY: `pages` has room for `n` entries; the kernel checks the user range.
        let got = unsafe {
            bindings::pin_user_pages_fast(
                addr as usize,
                n_c,
                bindings::FOLL_WRITE | bindings::FOLL_LONGTERM,
                pages.as_mut_ptr(),
            )
        };
        if got != n_c {
            if got > 0 {
                // SAFETY: exactly `got` pages were pinned above.
                unsafe { bindings::unpin_user_pages(pages.as_mut_ptr(), got as usize) };
            }
            return Err(if got < 0 {
                Error::from_errno(got)
            } else {
                EFAULT
            });
        }
        let unpin = |pages: &mut KVec<*mut bindings::page>| {
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
            return Err(Error::from_errno(ret));
        }
        PINNED_PAGES.fetch_add(n as u64, Ordering::Relaxed);
        // INVARIANT: pinned, tabled, mapped and referenced above.
        Ok(Self { dev, pages, sgt })
    }

    /// Pages held.
    pub(crate) fn nr_pages(&self) -> usize {
        self.pages.len()
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
            bindings::unpin_user_pages(self.pages.as_mut_ptr(), n);
        }
        PINNED_PAGES.fetch_sub(n as u64, Ordering::Relaxed);
    }
}
