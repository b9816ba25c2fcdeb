//! GPU queue pairs and memory on a real controller, through homi.ko: the product path.
//!
//! - Memory ([`Gpu::alloc_dma`]): `cuMemAlloc` memory exported as a dma-buf
//!   (`cuMemGetHandleForAddressRange`) and imported by homi.ko for the controller
//!   (`REGISTER_DMABUF`, a peer-to-peer mapping under the IOMMU).
//! - Queues ([`Gpu::queue_pairs`]): created by homi.ko like CPU queues (same
//!   reservation, reset and unbind semantics, same status page), with both rings
//!   placed in GPU memory or in registered host memory. The doorbell page is mapped
//!   into the GPU with `CU_MEMHOSTREGISTER_IOMEMORY` (root only), shadow doorbell pages
//!   and the status page as ordinary host memory.
//!
//! Where verified: this path needs a machine with both an NVIDIA GPU and an NVMe
//! controller under homi.ko; the device engine it feeds is checked on GPUs against the
//! test instruments (`homi-gpucheck`), and the kernel side in the VM.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::sys;

use super::buffer::{DeviceMemory, GpuBuffer, HostMapping};
use super::queues::{GpuQueues, QueueRings};
use super::{check, Gpu};
use crate::controller::Shared;
use crate::placement::{self, RingPlacement};
use crate::queue::{destroy, Doorbells};
use crate::{Controller, DmaBuffer, Error, Result, PAGE};

/// Where the rings of GPU queue pairs live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// GPU memory exported as a dma-buf and imported by homi.ko: the controller reads
    /// SQ entries and writes completions peer to peer; the GPU polls its own memory.
    GpuMemory,
    /// Host memory registered with homi.ko and mapped into the GPU: every SQ entry and
    /// completion crosses the bus from the GPU's side.
    HostMemory,
}

/// A queue pair of a real controller, held for GPU kernels; deleted when dropped.
struct HeldQueue {
    shared: Arc<Shared>,
    qid: u16,
    _doorbells: Option<Doorbells>,
}

impl Drop for HeldQueue {
    fn drop(&mut self) {
        destroy(&self.shared, self.qid);
    }
}

/// What keeps GPU queues of a real controller alive, in the order it lets go: the
/// GPU's mappings, then the queues (deleted on the controller), then their rings.
struct Kept {
    _maps: Vec<HostMapping>,
    _queues: Vec<HeldQueue>,
    _rings: (Arc<DmaBuffer>, Option<GpuBuffer>),
}

impl Gpu {
    /// `len` bytes of GPU memory the controller reaches peer to peer (a multiple of
    /// 64 KiB is allocated; the buffer reports the rounded length).
    pub fn alloc_dma(&self, ctrl: &Controller, len: usize) -> Result<GpuBuffer> {
        let (reg, mem) = self.import(ctrl, len)?;
        let dev = mem.dev_ptr();
        let pages: Box<[u64]> = reg.page_addrs().ok_or(Error::Invalid("an import without page addresses"))?.into();
        let len = pages.len() * PAGE;
        // SAFETY: `mem` holds the memory at `dev`, and the registration maps its pages
        // for the controller at `pages`; the registration drops first.
        unsafe { GpuBuffer::from_raw(self, dev, len, pages, Box::new((reg, mem))) }
    }

    /// GPU memory and its registration with homi.ko.
    fn import(&self, ctrl: &Controller, len: usize) -> Result<(Arc<DmaBuffer>, DeviceMemory)> {
        let len = len.max(1).next_multiple_of(64 << 10);
        let mem = DeviceMemory::zeroed(self, len)?;
        let mut fd: i32 = -1;
        // SAFETY: `fd` is a valid out pointer for a dma-buf fd; the range is the whole
        // allocation.
        check("cuMemGetHandleForAddressRange", unsafe {
            sys::cuMemGetHandleForAddressRange(
                (&mut fd as *mut i32).cast(),
                mem.dev_ptr(),
                len,
                sys::CUmemRangeHandleType::CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD,
                0,
            )
        })?;
        // SAFETY: the driver returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let reg = ctrl.register_dmabuf(fd.as_fd(), 0, len)?;
        Ok((Arc::new(reg), mem))
    }

    /// `n` queue pairs of `depth` entries on `ctrl` for GPU kernels, rings placed as
    /// `placement` says, reading and writing namespace `nsid` (its block size sets
    /// `homi_read`'s unit). Each device wait gives up after `timeout`.
    pub fn queue_pairs(
        &self,
        ctrl: &Controller,
        n: usize,
        depth: u32,
        placement: Placement,
        nsid: u32,
        timeout: Duration,
    ) -> Result<GpuQueues> {
        let info = ctrl.info()?;
        let ns = info.namespaces[..info.nr_namespaces as usize]
            .iter()
            .find(|ns| ns.nsid == nsid)
            .ok_or(Error::Invalid("no such active namespace"))?;
        let shared = ctrl.shared();
        let (sq_len, cq_len) =
            ((depth as usize * 64).next_multiple_of(PAGE), (depth as usize * 16).next_multiple_of(PAGE));
        let total = n * (sq_len + cq_len);
        let (rings, ring_dev, gpu_rings) = match placement {
            Placement::GpuMemory => {
                let (reg, mem) = self.import(ctrl, total)?;
                let dev = mem.dev_ptr();
                let pages = reg.page_addrs().ok_or(Error::Invalid("an import without page addresses"))?.into();
                // SAFETY: as in `alloc_dma`; the buffer only keeps the memory alive.
                let keep = unsafe { GpuBuffer::from_raw(self, dev, mem.len(), pages, Box::new(mem))? };
                (reg, dev, Some(keep))
            }
            Placement::HostMemory => {
                let reg = Arc::new(ctrl.register(total.next_multiple_of(PAGE))?);
                (reg, 0, None)
            }
        };
        // Everything taken from here on goes into `kept` at once, so an error path lets
        // go in the same order as a drop.
        let mut kept = Kept { _maps: Vec::new(), _queues: Vec::new(), _rings: (rings.clone(), gpu_rings) };
        let maps = &mut kept._maps;
        let ring_dev = match placement {
            Placement::GpuMemory => ring_dev,
            Placement::HostMemory => {
                // SAFETY: the registration's pages live in `Kept::_rings`, which drops
                // after the mappings.
                let m = unsafe { HostMapping::new(self, rings.as_ptr(), rings.len(), 0)? };
                let d = m.dev_ptr();
                maps.push(m);
                d
            }
        };
        // SAFETY: the status page is mapped for as long as `shared`, which the held
        // queues keep.
        let status = unsafe { HostMapping::new(self, shared.status_page(), PAGE, sys::CU_MEMHOSTREGISTER_READ_ONLY)? };
        let status_dev = status.dev_ptr();
        maps.push(status);
        let mut descs = Vec::new();
        for i in 0..n {
            let (sq_off, cq_off) = ((i * (sq_len + cq_len)) as u64, (i * (sq_len + cq_len) + sq_len) as u64);
            let place = RingPlacement { sq: Some((rings.clone(), sq_off)), cq: Some((rings.clone(), cq_off)) };
            let q = placement::create(shared, depth, &place)?;
            let mut held = HeldQueue { shared: shared.clone(), qid: q.qid as u16, _doorbells: None };
            let doorbells = Doorbells::map(shared, &q)?;
            let (sq_db, cq_db) = doorbells.doorbells(shared, &q);
            held._doorbells = Some(doorbells);
            kept._queues.push(held);
            let maps = &mut kept._maps;
            let (sq_mmio, sq_shadow, sq_ei) = sq_db.addrs();
            let (_, cq_shadow, cq_ei) = cq_db.addrs();
            let page = (sq_mmio as usize & !(PAGE - 1)) as *mut u8;
            // SAFETY: the doorbell page stays mapped in the held queue, which drops
            // after the mappings.
            let db = unsafe { HostMapping::new(self, page, PAGE, sys::CU_MEMHOSTREGISTER_IOMEMORY)? };
            let db_dev = db.dev_ptr();
            maps.push(db);
            let mut shadow = None;
            if !sq_shadow.is_null() {
                let (sh, ei) = (page_of(sq_shadow as *mut u8), page_of(sq_ei as *mut u8));
                // SAFETY: as above, for the shadow and event index pages.
                let (msh, mei) = unsafe {
                    (
                        HostMapping::new(self, sh, PAGE, 0)?,
                        HostMapping::new(self, ei, PAGE, sys::CU_MEMHOSTREGISTER_READ_ONLY)?,
                    )
                };
                let on =
                    |m: &HostMapping, base: *mut u8, p: *const u32| m.dev_ptr() + (p as usize - base as usize) as u64;
                shadow =
                    Some([on(&msh, sh, sq_shadow), on(&msh, sh, cq_shadow), on(&mei, ei, sq_ei), on(&mei, ei, cq_ei)]);
                maps.extend([msh, mei]);
            }
            descs.push(QueueRings {
                qid: q.qid as u16,
                depth,
                sq: ring_dev + sq_off,
                cq: ring_dev + cq_off,
                sq_db: db_dev + (sq_mmio as usize - page as usize) as u64,
                cq_db: db_dev + (sq_mmio as usize - page as usize + shared.doorbell_stride) as u64,
                shadow,
                state: status_dev + 16 + 4 * u64::from(q.status_slot),
                mmio_doorbells: true,
                max_transfer: info.max_transfer,
            });
        }
        let prp = match placement {
            Placement::GpuMemory => self.alloc_dma(ctrl, n * depth as usize * PAGE)?,
            Placement::HostMemory => GpuBuffer::mapped_host(self, ctrl.register(n * depth as usize * PAGE)?)?,
        };
        drop(rings);
        GpuQueues::new(self, &descs, prp, ns.lba_shift, timeout, Box::new(kept))
    }
}

fn page_of(p: *mut u8) -> *mut u8 {
    (p as usize & !(PAGE - 1)) as *mut u8
}
