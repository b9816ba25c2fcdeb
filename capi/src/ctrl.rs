//! Controllers: open, close, what the module reports about them, and namespaces.

use std::ffi::{c_char, c_int, CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use homi::uapi::{self, HomiInfo};
use homi::Controller;

use crate::error::{guard, guard_or, Failure};
use crate::{handle, put};

/// `homi_ctrl_info.flags`: the controller is live (not resetting, not being removed).
pub const HOMI_INFO_LIVE: u32 = 1 << 0;
/// `homi_ctrl_info.flags`: the controller reads doorbells from nvme-pci's shadow
/// doorbell buffer; homi queues then ring through their shadow slots.
pub const HOMI_INFO_SHADOW_DOORBELLS: u32 = 1 << 1;
/// `homi_ctrl_info.flags`: the controller has a Controller Memory Buffer.
pub const HOMI_INFO_CMB: u32 = 1 << 2;
/// `homi_ctrl_info.flags`: the controller has more namespaces than homi lists (16);
/// homi_ns_info() knows only the listed ones.
pub const HOMI_INFO_MORE_NAMESPACES: u32 = 1 << 3;
/// `homi_ctrl_info.flags`: nvme-pci reserved user queues for homi.
pub const HOMI_INFO_USER_QUEUES: u32 = 1 << 4;
/// `homi_ctrl_info.flags`: the controller's DMA goes through a translating IOMMU.
pub const HOMI_INFO_IOMMU: u32 = 1 << 5;
/// `homi_ctrl_info.flags`: a queue's doorbell page also holds the kernel's queues'
/// doorbells, so a queue holder could ring them.
pub const HOMI_INFO_SHARED_DOORBELLS: u32 = 1 << 6;

const _: () = {
    assert!(HOMI_INFO_LIVE == uapi::HOMI_INFO_LIVE);
    assert!(HOMI_INFO_SHADOW_DOORBELLS == uapi::HOMI_INFO_SHADOW_DOORBELLS);
    assert!(HOMI_INFO_CMB == uapi::HOMI_INFO_CMB);
    assert!(HOMI_INFO_MORE_NAMESPACES == uapi::HOMI_INFO_MORE_NAMESPACES);
    assert!(HOMI_INFO_USER_QUEUES == uapi::HOMI_INFO_USER_QUEUES);
    assert!(HOMI_INFO_IOMMU == uapi::HOMI_INFO_IOMMU);
    assert!(HOMI_INFO_SHARED_DOORBELLS == uapi::HOMI_INFO_SHARED_DOORBELLS);
};

/// The largest transfer one command may move: one PRP list page names 512 pages after
/// the first, so 2 MiB fits at any 4-byte-aligned offset.
pub(crate) const PRP_MAX_TRANSFER: u32 = 2 << 20;

/// A controller attached through /dev/homi. Opaque; may be shared by threads: every
/// function taking a `const homi_ctrl *` or creating something from it may be called
/// from several threads at once.
#[derive(Debug)]
pub struct HomiCtrl {
    pub(crate) ctrl: Controller,
    pub(crate) max_transfer: u32,
    /// Largest queue depth.
    pub(crate) max_depth: u32,
}

/// What homi_ctrl_info() reports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HomiCtrlInfo {
    /// The X of /dev/nvmeX.
    pub instance: u32,
    /// HOMI_INFO_* bits: live, shadow doorbells, CMB, IOMMU, shared doorbells, ...
    pub flags: u32,
    /// I/O queues the kernel's nvme driver uses (qids 1..driver_io_queues).
    pub driver_io_queues: u32,
    /// I/O queues the controller granted.
    pub granted_io_queues: u32,
    /// The lowest qid homi may reserve.
    pub first_spare_qid: u32,
    /// Qids homi may reserve that nobody holds right now.
    pub spare_free: u32,
    /// Queue pairs (qids) held through homi right now, module-wide.
    pub qpairs: u32,
    /// Largest queue depth (CAP.MQES + 1).
    pub max_queue_entries: u32,
    /// Largest transfer in bytes one command may move (what homi_qpair_max_transfer()
    /// reports for this controller's queues).
    pub max_transfer: u32,
    /// Active namespaces homi lists (at most 16; see HOMI_INFO_MORE_NAMESPACES).
    pub nr_namespaces: u32,
    /// Resets homi saw on this controller (homi_ctrl_generation()).
    pub generation: u64,
    /// Pages pinned by homi registrations, module-wide.
    pub pinned_pages: u64,
    /// Bytes of DMA memory homi holds (rings and buffers), module-wide.
    pub dma_bytes: u64,
    /// Bytes freed while a queue that could reach them lived, held until that queue is
    /// deleted, module-wide.
    pub quarantined_bytes: u64,
}

/// One namespace, as homi_ns_info() reports it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HomiNsInfo {
    /// Namespace ID.
    pub nsid: u32,
    /// Bytes per logical block of the current format.
    pub lba_size: u32,
    /// Size in logical blocks.
    pub nblocks: u64,
    /// Metadata bytes per logical block (0: none).
    pub meta_size: u32,
    /// log2 of lba_size.
    pub lba_shift: u32,
}

/// The largest LBA shift a read or write accepts (64 KiB blocks): with `nblocks` at
/// most 65536, `nblocks << shift` stays far inside 64 bits.
const MAX_LBA_SHIFT: u32 = 16;

/// One listed namespace, as far as the submit functions need it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ns {
    pub(crate) nsid: u32,
    /// log2 of the LBA data size.
    pub(crate) lba_shift: u32,
    /// Metadata bytes per block (0: none).
    pub(crate) meta_size: u32,
}

/// The namespaces of a controller as INFO listed them: what the submit functions check
/// lengths against. A queue takes its own copy when it is created and reads INFO again
/// on its first submission after the controller generation moved (see
/// `HomiQpair::namespaces`).
#[derive(Debug, Default)]
pub(crate) struct Namespaces {
    list: Vec<Ns>,
    /// Whether `list` names every active namespace.
    complete: bool,
    /// The controller generation (status page) read before INFO was asked.
    pub(crate) generation: u64,
}

impl Namespaces {
    pub(crate) fn from_info(i: &HomiInfo, generation: u64) -> Self {
        let n = (i.nr_namespaces as usize).min(i.namespaces.len());
        Self {
            list: i.namespaces[..n]
                .iter()
                .map(|ns| Ns { nsid: ns.nsid, lba_shift: ns.lba_shift, meta_size: ns.meta_size })
                .collect(),
            complete: i.flags & uapi::HOMI_INFO_MORE_NAMESPACES == 0,
            generation,
        }
    }

    /// A table to be read on first use: its generation matches no controller's.
    pub(crate) fn stale() -> Self {
        Self { list: Vec::new(), complete: false, generation: u64::MAX }
    }

    /// Namespaces of the given (nsid, LBA shift, metadata size), all of them.
    #[cfg(test)]
    pub(crate) fn of(list: &[(u32, u32, u32)]) -> Self {
        let list = list.iter().map(|&(nsid, lba_shift, meta_size)| Ns { nsid, lba_shift, meta_size }).collect();
        Self { list, complete: true, generation: 0 }
    }

    /// Where the controller has more namespaces than homi lists, as INFO reports.
    #[cfg(test)]
    pub(crate) fn incomplete(mut self) -> Self {
        self.complete = false;
        self
    }

    fn find(&self, nsid: u32) -> Option<&Ns> {
        self.list.iter().find(|ns| ns.nsid == nsid)
    }

    /// Checks that `nsid` may be named by a command that moves no data by LBA size
    /// (flush, write zeroes, deallocate): a listed namespace, or any nsid where the
    /// controller has more namespaces than homi lists.
    pub(crate) fn check_nsid(&self, nsid: u32) -> Result<(), Failure> {
        if self.find(nsid).is_some() || !self.complete {
            return Ok(());
        }
        Err(Failure::invalid(format!("nsid {nsid}: no such active namespace")))
    }

    /// The LBA shift of `nsid` for a read or write, whose length is checked against
    /// it. Refuses what the library cannot check or would move wrongly: an nsid homi
    /// does not list, a namespace with metadata (extended LBAs move more than `len`,
    /// separate metadata needs a metadata pointer; neither is supported), and an LBA
    /// size above 64 KiB.
    pub(crate) fn data_shift(&self, nsid: u32) -> Result<u32, Failure> {
        let Some(ns) = self.find(nsid) else {
            return Err(Failure::invalid(if self.complete {
                format!("nsid {nsid}: no such active namespace")
            } else {
                format!(
                    "nsid {nsid} is not among the 16 namespaces homi lists, so its LBA size cannot be \
                     checked: reads and writes are refused"
                )
            }));
        };
        if ns.meta_size != 0 {
            return Err(Failure::invalid(format!(
                "nsid {nsid} has {} bytes of metadata per block: reads and writes of namespaces with \
                 metadata are not supported",
                ns.meta_size
            )));
        }
        if ns.lba_shift > MAX_LBA_SHIFT {
            return Err(Failure::invalid(format!("nsid {nsid}: LBA shift {} out of range", ns.lba_shift)));
        }
        Ok(ns.lba_shift)
    }
}

/// A NUL-terminated path argument.
///
/// # Safety
///
/// `p` must be NULL or a NUL-terminated string.
pub(crate) unsafe fn path_arg<'a>(p: *const c_char, what: &str) -> Result<&'a Path, Failure> {
    if p.is_null() {
        return Err(Failure::null(what));
    }
    // SAFETY: not NULL and NUL-terminated (caller).
    Ok(Path::new(OsStr::from_bytes(unsafe { CStr::from_ptr(p) }.to_bytes())))
}

/// Attaches to the controller `nvme_char_dev` ("/dev/nvme0") through /dev/homi and
/// stores the handle in `*out` (NULL on failure). Needs CAP_SYS_RAWIO, read-write
/// access to the node, and homi.ko loaded. HOMI_E_NOT_LIVE while the controller
/// resets: try again.
///
/// # Safety
///
/// `nvme_char_dev` must be NULL or a NUL-terminated string; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn homi_ctrl_open(nvme_char_dev: *const c_char, out: *mut *mut HomiCtrl) -> c_int {
    guard("homi_ctrl_open", || {
        // SAFETY: NULL or writable (caller).
        unsafe { put(out, "out", std::ptr::null_mut())? };
        // SAFETY: NULL or NUL-terminated (caller).
        let path = unsafe { path_arg(nvme_char_dev, "nvme_char_dev")? };
        let ctrl = Controller::open(path)?;
        let info = ctrl.info()?;
        let c = HomiCtrl {
            ctrl,
            max_transfer: info.max_transfer.min(PRP_MAX_TRANSFER),
            max_depth: max_depth(info.max_queue_entries),
        };
        // SAFETY: checked writable above.
        unsafe { put(out, "out", Box::into_raw(Box::new(c)))? };
        Ok(0)
    })
}

/// The deepest queue homi_qpair_create() makes on a controller of `max_queue_entries`
/// (CAP.MQES + 1, up to 65536): the engine's command identifiers allow 65535.
pub(crate) fn max_depth(max_queue_entries: u32) -> u32 {
    max_queue_entries.min(homi::MAX_QUEUE_DEPTH)
}

/// Releases the handle. Queue pairs and buffers made from it stay usable and keep the
/// controller attached until they are released too. NULL is ignored.
///
/// # Safety
///
/// `c` must be NULL or a handle from homi_ctrl_open() not yet closed, which no other
/// thread uses during or after this call.
#[no_mangle]
pub unsafe extern "C" fn homi_ctrl_close(c: *mut HomiCtrl) {
    guard_or("homi_ctrl_close", (), || {
        if !c.is_null() {
            // SAFETY: a handle from `homi_ctrl_open`, released once (caller).
            drop(unsafe { Box::from_raw(c) });
        }
    })
}

/// Asks the module about the controller (an ioctl: not for the hot path).
///
/// # Safety
///
/// `c` must be NULL or a live handle; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn homi_ctrl_info(c: *const HomiCtrl, out: *mut HomiCtrlInfo) -> c_int {
    guard("homi_ctrl_info", || {
        // SAFETY: NULL or a live handle (caller).
        let c = unsafe { handle(c, "c")? };
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        let i = c.ctrl.info()?;
        let info = HomiCtrlInfo {
            instance: i.instance,
            flags: i.flags,
            driver_io_queues: i.driver_io_queues,
            granted_io_queues: i.granted_io_queues,
            first_spare_qid: i.first_spare_qid,
            spare_free: i.spare_free,
            qpairs: i.qpairs,
            max_queue_entries: i.max_queue_entries,
            max_transfer: i.max_transfer.min(PRP_MAX_TRANSFER),
            nr_namespaces: i.nr_namespaces,
            generation: i.generation,
            pinned_pages: i.pinned_pages,
            dma_bytes: i.dma_bytes,
            quarantined_bytes: i.quarantined_bytes,
        };
        // SAFETY: NULL checked above; writable (caller).
        unsafe { put(out, "out", info)? };
        Ok(0)
    })
}

/// Namespace `nsid` of the controller: LBA size, size in blocks, metadata size.
/// HOMI_E_INVALID if the controller has no such active namespace (or has more than
/// 16 and `nsid` is not among the first 16).
///
/// # Safety
///
/// `c` must be NULL or a live handle; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn homi_ns_info(c: *const HomiCtrl, nsid: u32, out: *mut HomiNsInfo) -> c_int {
    guard("homi_ns_info", || {
        // SAFETY: NULL or a live handle (caller).
        let c = unsafe { handle(c, "c")? };
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        let i = c.ctrl.info()?;
        let n = (i.nr_namespaces as usize).min(i.namespaces.len());
        let ns = i.namespaces[..n].iter().find(|ns| ns.nsid == nsid).ok_or_else(|| {
            let active: Vec<String> = i.namespaces[..n].iter().map(|ns| ns.nsid.to_string()).collect();
            Failure::invalid(format!(
                "nsid {nsid}: no such active namespace on /dev/nvme{} (listed: {})",
                i.instance,
                active.join(", ")
            ))
        })?;
        if ns.lba_shift >= 32 {
            return Err(Failure::invalid(format!("nsid {nsid}: LBA shift {} out of range", ns.lba_shift)));
        }
        let info = HomiNsInfo {
            nsid,
            lba_size: 1 << ns.lba_shift,
            nblocks: ns.blocks,
            meta_size: ns.meta_size,
            lba_shift: ns.lba_shift,
        };
        // SAFETY: NULL checked above; writable (caller).
        unsafe { put(out, "out", info)? };
        Ok(0)
    })
}

/// The controller generation: homi's count of resets on this controller, read from a
/// shared page without a syscall. 0 for NULL.
///
/// # Safety
///
/// `c` must be NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn homi_ctrl_generation(c: *const HomiCtrl) -> u64 {
    guard_or("homi_ctrl_generation", 0, || {
        // SAFETY: NULL or a live handle (caller).
        unsafe { c.as_ref() }.map_or(0, |c| c.ctrl.generation())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{homi_last_error, HomiErr};

    #[test]
    fn null_arguments_are_refused_with_a_message() {
        let mut out = std::ptr::NonNull::<HomiCtrl>::dangling().as_ptr();
        // SAFETY: NULL path, writable out.
        let rc = unsafe { homi_ctrl_open(std::ptr::null(), &mut out) };
        assert_eq!(rc, HomiErr::HOMI_E_NULL_ARG as c_int);
        assert!(out.is_null(), "*out is NULL after a failure");
        // SAFETY: a static message.
        let msg = unsafe { CStr::from_ptr(homi_last_error()) }.to_str().unwrap().to_owned();
        assert_eq!(msg, "homi_ctrl_open: nvme_char_dev is NULL");
        // SAFETY: NULL arguments only.
        unsafe {
            assert_eq!(homi_ctrl_open(c"/dev/nvme0".as_ptr(), std::ptr::null_mut()), HomiErr::HOMI_E_NULL_ARG as c_int);
            assert_eq!(homi_ctrl_info(std::ptr::null(), std::ptr::null_mut()), HomiErr::HOMI_E_NULL_ARG as c_int);
            assert_eq!(homi_ns_info(std::ptr::null(), 1, std::ptr::null_mut()), HomiErr::HOMI_E_NULL_ARG as c_int);
            assert_eq!(homi_ctrl_generation(std::ptr::null()), 0);
            homi_ctrl_close(std::ptr::null_mut());
        }
    }

    #[test]
    fn opening_a_missing_node_fails_with_open() {
        let mut out = std::ptr::null_mut();
        // SAFETY: a NUL-terminated path and a writable out.
        let rc = unsafe { homi_ctrl_open(c"/nonexistent/nvme9".as_ptr(), &mut out) };
        // Without homi.ko, /dev/homi itself is what cannot be opened.
        assert_eq!(rc, HomiErr::HOMI_E_OPEN as c_int);
        assert!(out.is_null());
    }

    #[test]
    fn namespace_lookup() {
        let ns = Namespaces::of(&[(1, 9, 0), (3, 12, 0), (4, 9, 8), (5, 40, 0)]);
        assert_eq!(ns.data_shift(3).unwrap(), 12);
        assert!(ns.check_nsid(3).is_ok() && ns.check_nsid(4).is_ok());
        for bad in [2, 4, 5] {
            assert_eq!(ns.data_shift(bad).unwrap_err().code, HomiErr::HOMI_E_INVALID, "nsid {bad}");
        }
        assert!(ns.data_shift(4).unwrap_err().msg.contains("metadata"));
        assert_eq!(ns.check_nsid(2).unwrap_err().code, HomiErr::HOMI_E_INVALID);
        let partial = Namespaces::of(&[(1, 9, 0)]).incomplete();
        assert!(partial.check_nsid(40).is_ok());
        let e = partial.data_shift(40).unwrap_err();
        assert!(e.msg.contains("cannot be checked"), "{}", e.msg);
    }

    #[test]
    fn depth_is_clamped_to_what_cids_allow() {
        assert_eq!(max_depth(65536), 65535);
        assert_eq!(max_depth(65535), 65535);
        assert_eq!(max_depth(1024), 1024);
    }
}
