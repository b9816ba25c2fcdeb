// SPDX-License-Identifier: GPL-2.0

//! Hand-written declarations of `homi_glue.c`, and [`Ctrl`], the safe handle to an
//! nvme-pci controller built on them.
//!
//! C header: `kmod/homi_glue.h`

use core::ffi::c_void;
use core::ptr::NonNull;

use kernel::{bindings, fs::File, prelude::*};

use crate::dma::DevRef;

/// `struct nvme_ctrl`, private to `drivers/nvme/host`: only ever behind a pointer.
#[repr(C)]
pub(crate) struct NvmeCtrl {
    _private: [u8; 0],
}

/// `struct homi_watch` of `homi_glue.c`.
#[repr(C)]
pub(crate) struct HomiWatch {
    _private: [u8; 0],
}

// Kernel structs are passed as `c_void` pointers: their bindgen types contain
// zero-sized members that the `improper_ctypes` lint rejects in `extern` blocks.
extern "C" {
    fn homi_ctrl_get(nvme_file: *mut c_void) -> *mut NvmeCtrl;
    fn homi_ctrl_put(ctrl: *mut NvmeCtrl);
    fn homi_ctrl_dma_dev(ctrl: *mut NvmeCtrl) -> *mut c_void;
    fn homi_ctrl_instance(ctrl: *mut NvmeCtrl) -> i32;
    fn homi_ctrl_io_queues(ctrl: *mut NvmeCtrl) -> u32;
    fn homi_ctrl_cap(ctrl: *mut NvmeCtrl) -> u64;
    fn homi_ctrl_oacs(ctrl: *mut NvmeCtrl) -> u16;
    fn homi_ctrl_max_hw_sectors(ctrl: *mut NvmeCtrl) -> u32;
    fn homi_ctrl_live(ctrl: *mut NvmeCtrl) -> bool;
    fn homi_ctrl_generation(ctrl: *mut NvmeCtrl) -> u64;
    fn homi_ctrl_bar_start(ctrl: *mut NvmeCtrl) -> u64;
    fn homi_ctrl_bar_len(ctrl: *mut NvmeCtrl) -> u64;
    fn homi_ctrl_cmb_size(ctrl: *mut NvmeCtrl) -> u64;
    fn homi_ctrl_admin(
        ctrl: *mut NvmeCtrl,
        sqe: *const c_void,
        buf: *mut c_void,
        len: u32,
        result: *mut u32,
    ) -> i32;
    fn homi_have_user_queues() -> bool;
    fn homi_ctrl_user_queues(
        ctrl: *mut NvmeCtrl,
        first: *mut u32,
        nr: *mut u32,
        shadow: *mut bool,
    ) -> i32;
    fn homi_user_queue_shadow(
        ctrl: *mut NvmeCtrl,
        qid: u16,
        sq_slot: *mut u32,
        cq_slot: *mut u32,
    ) -> i32;
    fn homi_mmap_shadow(vma: *mut c_void, ctrl: *mut NvmeCtrl, qid: u16, eventidx: bool) -> i32;
    pub(crate) fn homi_mmap_mmio(vma: *mut c_void, phys: u64) -> i32;
    pub(crate) fn homi_vma_revocable(vma: *mut c_void);
    pub(crate) fn homi_page_alloc() -> *mut c_void;
    pub(crate) fn homi_page_free(addr: *mut c_void);
    pub(crate) fn homi_mmap_page(vma: *mut c_void, addr: *mut c_void) -> i32;
    fn homi_watch_start(
        ctrl: *mut NvmeCtrl,
        changed: unsafe extern "C" fn(ctx: *mut c_void),
        ctx: *mut c_void,
    ) -> *mut HomiWatch;
    fn homi_watch_stop(w: *mut HomiWatch);
    pub(crate) fn homi_glue_init(unbinding: unsafe extern "C" fn(dev: *mut c_void)) -> i32;
    pub(crate) fn homi_glue_exit();
}

/// OACS bit 8: Doorbell Buffer Config. nvme-pci enables shadow doorbells whenever the
/// controller offers them, so on a stock kernel this bit means they are active.
const OACS_DBBUF: u16 = 1 << 8;

/// Whether this module was built against an nvme-pci with user queues.
pub(crate) fn have_user_queues() -> bool {
    // SAFETY: returns a constant.
    unsafe { homi_have_user_queues() }
}

/// The queues nvme-pci reserved for homi (`nvme.user_queues=N`).
#[derive(Clone, Copy)]
pub(crate) struct UserQueues {
    /// The first reserved qid.
    pub(crate) first: u32,
    /// How many; 0 if none.
    pub(crate) nr: u32,
    /// Whether the controller reads doorbells from the shadow buffer.
    pub(crate) shadow: bool,
}

/// A reserved queue's shadow slots: byte offsets in the shadow doorbell page and, the
/// same, in the event index page.
#[derive(Clone, Copy)]
pub(crate) struct ShadowSlots {
    pub(crate) sq: u32,
    pub(crate) cq: u32,
}

/// A held nvme-pci controller.
///
/// # Invariants
///
/// `ptr` came from `homi_ctrl_get`, whose device reference this object owns, so the
/// `struct nvme_ctrl` stays allocated for the life of `self`.
pub(crate) struct Ctrl {
    ptr: NonNull<NvmeCtrl>,
}

// SAFETY: the glue accessors read fields under the driver's own rules (READ_ONCE,
// atomics) or fields fixed at probe; submitting admin commands is thread-safe.
unsafe impl Send for Ctrl {}
// SAFETY: as for `Send`; no method needs exclusive access.
unsafe impl Sync for Ctrl {}

impl Ctrl {
    /// The controller behind `file`, if it is an nvme-pci controller char device.
    pub(crate) fn from_file(file: &File) -> Option<Self> {
        // SAFETY: `file` is a valid, referenced file for the duration of the call.
        let ptr = NonNull::new(unsafe { homi_ctrl_get(file.as_ptr().cast()) })?;
        // INVARIANT: `homi_ctrl_get` took a device reference that we now own.
        Some(Self { ptr })
    }

    /// Identifies the controller in module-wide tables.
    pub(crate) fn key(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    fn raw(&self) -> *mut NvmeCtrl {
        self.ptr.as_ptr()
    }

    /// The PCI device that rings and buffers are DMA-mapped against.
    pub(crate) fn dma_dev(&self) -> *mut bindings::device {
        // SAFETY: by the type invariant the controller is alive.
        unsafe { homi_ctrl_dma_dev(self.raw()).cast() }
    }

    /// A reference on [`dma_dev`](Self::dma_dev), which outlives the controller.
    pub(crate) fn dev_ref(&self) -> Result<DevRef> {
        // SAFETY: nvme-pci holds its PCI device for as long as the controller lives,
        // and by the type invariant it does.
        unsafe { DevRef::new(self.dma_dev()) }
    }

    /// The `X` of `/dev/nvmeX`.
    pub(crate) fn instance(&self) -> u32 {
        // SAFETY: by the type invariant the controller is alive.
        unsafe { homi_ctrl_instance(self.raw()) as u32 }
    }

    /// I/O queues the driver created.
    pub(crate) fn io_queues(&self) -> u32 {
        // SAFETY: by the type invariant the controller is alive.
        unsafe { homi_ctrl_io_queues(self.raw()) }
    }

    /// The CAP register, as the driver read it.
    pub(crate) fn cap(&self) -> u64 {
        // SAFETY: by the type invariant the controller is alive.
        unsafe { homi_ctrl_cap(self.raw()) }
    }

    /// Whether the controller offers shadow doorbells, which a stock nvme-pci then
    /// always turns on. With user queues, [`UserQueues::shadow`] says whether they are.
    pub(crate) fn offers_shadow_doorbells(&self) -> bool {
        // SAFETY: by the type invariant the controller is alive.
        unsafe { homi_ctrl_oacs(self.raw()) & OACS_DBBUF != 0 }
    }

    /// Bytes from one doorbell register to the next (`4 << CAP.DSTRD`).
    pub(crate) fn doorbell_stride(&self) -> u32 {
        4 << ((self.cap() >> 32) & 0xf)
    }

    /// The largest transfer the driver allows, in bytes.
    pub(crate) fn max_transfer(&self) -> u32 {
        // SAFETY: by the type invariant the controller is alive.
        unsafe { homi_ctrl_max_hw_sectors(self.raw()).saturating_mul(512) }
    }

    /// Whether the controller is live.
    pub(crate) fn live(&self) -> bool {
        // SAFETY: by the type invariant the controller is alive.
        unsafe { homi_ctrl_live(self.raw()) }
    }

    /// How many times the controller was reset.
    pub(crate) fn generation(&self) -> u64 {
        // SAFETY: by the type invariant the controller is alive.
        unsafe { homi_ctrl_generation(self.raw()) }
    }

    /// BAR0's physical address and length.
    pub(crate) fn bar(&self) -> (u64, u64) {
        // SAFETY: by the type invariant the controller is alive; BAR0 is fixed at probe.
        unsafe {
            (
                homi_ctrl_bar_start(self.raw()),
                homi_ctrl_bar_len(self.raw()),
            )
        }
    }

    /// nvme-pci's user queue reservation; `None` on a kernel without user queues.
    pub(crate) fn user_queues(&self) -> Option<UserQueues> {
        let mut uq = UserQueues {
            first: 0,
            nr: 0,
            shadow: false,
        };
        // SAFETY: by the type invariant the controller is alive; the out pointers are
        // valid for writes.
        let ret =
            unsafe { homi_ctrl_user_queues(self.raw(), &mut uq.first, &mut uq.nr, &mut uq.shadow) };
        (ret == 0).then_some(uq)
    }

    /// Zeroes reserved queue `qid`'s shadow doorbell and event index slots, before the
    /// queue is created, and says where they are.
    pub(crate) fn reset_shadow(&self, qid: u16) -> Result<ShadowSlots> {
        let mut slots = ShadowSlots { sq: 0, cq: 0 };
        // SAFETY: by the type invariant the controller is alive; the out pointers are
        // valid for writes.
        kernel::error::to_result(unsafe {
            homi_user_queue_shadow(self.raw(), qid, &mut slots.sq, &mut slots.cq)
        })?;
        Ok(slots)
    }

    /// Maps reserved queue `qid`'s shadow doorbell page, or its event index page
    /// read-only, into `vma`.
    ///
    /// # Safety
    ///
    /// `vma` is a one-page VMA being set up under the mmap lock.
    pub(crate) unsafe fn mmap_shadow(&self, vma: *mut c_void, qid: u16, eventidx: bool) -> Result {
        // SAFETY: the caller passes a VMA being set up; the controller is alive by the
        // type invariant, and nvme-pci frees the pages only on removal, before which
        // homi's unbind handler revokes every mapping.
        kernel::error::to_result(unsafe { homi_mmap_shadow(vma, self.raw(), qid, eventidx) })
    }

    /// The Controller Memory Buffer's size in bytes; 0 if it has none.
    pub(crate) fn cmb_size(&self) -> u64 {
        // SAFETY: by the type invariant the controller is alive; BAR0 is fixed at probe.
        unsafe { homi_ctrl_cmb_size(self.raw()) }
    }

    /// Runs one admin command on the driver's admin queue, with an optional data
    /// buffer, and returns completion dword 0.
    pub(crate) fn admin(&self, sqe: &[u32; 16], buf: Option<&mut [u8]>) -> Result<u32> {
        let (ptr, len) = match buf {
            Some(b) => (b.as_mut_ptr().cast(), u32::try_from(b.len())?),
            None => (core::ptr::null_mut(), 0),
        };
        let mut result = 0u32;
        // SAFETY: the controller is alive (invariant), `sqe` is 64 readable bytes, `ptr`
        // is null or `len` bytes of kmalloc'ed memory the caller lends for the call.
        let ret =
            unsafe { homi_ctrl_admin(self.raw(), sqe.as_ptr().cast(), ptr, len, &mut result) };
        match ret {
            0 => Ok(result),
            e if e < 0 => Err(Error::from_errno(e)),
            status => {
                pr_warn!(
                    "nvme{}: admin opcode {:#04x} failed: status {:#x}\n",
                    self.instance(),
                    sqe[0] & 0xff,
                    status
                );
                Err(EIO)
            }
        }
    }

    /// Starts watching controller state changes: `changed(ctx)` runs in process
    /// context after each change, until the returned watch is stopped.
    ///
    /// # Safety
    ///
    /// `ctx` must stay valid for `changed` until [`Watch`] is dropped.
    pub(crate) unsafe fn watch(
        &self,
        changed: unsafe extern "C" fn(ctx: *mut c_void),
        ctx: *mut c_void,
    ) -> Result<Watch> {
        // SAFETY: the controller is alive; the caller keeps `ctx` valid.
        let w = unsafe { homi_watch_start(self.raw(), changed, ctx) };
        Ok(Watch {
            ptr: NonNull::new(w).ok_or(ENOMEM)?,
        })
    }
}

impl Drop for Ctrl {
    fn drop(&mut self) {
        // SAFETY: we own the reference `homi_ctrl_get` took (type invariant).
        unsafe { homi_ctrl_put(self.raw()) };
    }
}

/// A controller state watch; stopping it waits for a running callback.
///
/// # Invariants
///
/// `ptr` came from `homi_watch_start` and is stopped exactly once, on drop.
pub(crate) struct Watch {
    ptr: NonNull<HomiWatch>,
}

// SAFETY: the watch is only ever stopped, which is allowed from any thread.
unsafe impl Send for Watch {}
// SAFETY: `&Watch` allows nothing.
unsafe impl Sync for Watch {}

impl Drop for Watch {
    fn drop(&mut self) {
        // SAFETY: by the type invariant the watch is live and stopped only here.
        unsafe { homi_watch_stop(self.ptr.as_ptr()) };
    }
}
