//! A controller attached through `/dev/homi`.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use homi_uapi::*;

use crate::buffer::DmaBuffer;
use crate::device::HomiDevice;
use crate::mapping::Mapping;
use crate::queue::QueuePair;
use crate::{sys, Error, Result};

/// State shared by a controller handle and everything made from it.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) dev: HomiDevice,
    status: Mapping,
    pub(crate) doorbell_stride: usize,
    pub(crate) max_transfer: usize,
    /// The controller's instance (`nvmeX`).
    pub(crate) instance: u32,
    /// The map status page, mapped on the first file map.
    map_status: OnceLock<Mapping>,
    _nvme: File,
}

impl Shared {
    pub(crate) fn fd(&self) -> &File {
        self.dev.file()
    }

    /// The status page's first byte (read-only, mapped for the life of `self`).
    #[cfg(feature = "cuda")]
    pub(crate) fn status_page(&self) -> *mut u8 {
        self.status.ptr()
    }

    /// The controller generation, from the status page.
    pub(crate) fn generation(&self) -> u64 {
        // SAFETY: the status page is mapped for the life of `self` and the offset is
        // that of the 8-aligned generation field; the module writes it atomically.
        unsafe { AtomicU64::from_ptr(self.status.ptr().cast()) }.load(Ordering::Acquire)
    }

    /// `HOMI_CTRL_*`, from the status page.
    pub(crate) fn ctrl_state(&self) -> u32 {
        // SAFETY: as for `generation`, at the 4-aligned `ctrl_state` field.
        unsafe { AtomicU32::from_ptr(self.status.ptr().add(8).cast()) }.load(Ordering::Acquire)
    }

    /// `HOMI_QUEUE_*` of the queue in status `slot`, from the status page.
    pub(crate) fn queue_state(&self, slot: u32) -> u32 {
        let slot = slot as usize;
        if slot >= HOMI_STATUS_SLOTS {
            return HOMI_QUEUE_NONE;
        }
        // SAFETY: as for `generation`, at the 4-aligned `slot`, inside the page.
        unsafe { AtomicU32::from_ptr(self.status.ptr().add(16 + 4 * slot).cast()) }.load(Ordering::Acquire)
    }

    /// The map status page's first byte (read-only, mapped for the life of `self`).
    pub(crate) fn map_status_page(&self) -> Result<*const u8> {
        if let Some(m) = self.map_status.get() {
            return Ok(m.ptr());
        }
        let m = Mapping::new(self.fd().as_fd(), HOMI_MAP_STATUS_OFFSET, 4096, false, "map status page")?;
        // Two threads may race to map it; the loser's mapping is dropped.
        let _ = self.map_status.set(m);
        Ok(self.map_status.get().expect("set above").ptr())
    }

    /// Fails if the controller was reset since `generation` or left its driver.
    pub(crate) fn check(&self, generation: u64) -> Result<()> {
        if self.ctrl_state() == HOMI_CTRL_GONE {
            return Err(Error::Gone);
        }
        let now = self.generation();
        if now != generation {
            return Err(Error::Reset { old: generation, new: now });
        }
        Ok(())
    }
}

/// An NVMe controller that the kernel's nvme driver owns, attached through homi.
///
/// Cloning is cheap; queue pairs and buffers keep the attachment alive.
#[derive(Clone, Debug)]
pub struct Controller {
    shared: Arc<Shared>,
}

impl Controller {
    /// Attaches to the controller `/dev/nvmeX` at `nvme` through `/dev/homi`.
    ///
    /// Needs `CAP_SYS_RAWIO` and read-write access to `nvme`. While the controller
    /// resets, fails with [`Error::NotLive`]: try again.
    pub fn open(nvme: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(HomiDevice::open()?, nvme.as_ref())
    }

    /// Attaches through an already open homi device.
    pub fn open_with(dev: HomiDevice, nvme: &Path) -> Result<Self> {
        let nvme_file =
            OpenOptions::new().read(true).write(true).open(nvme).map_err(|source| match source.raw_os_error() {
                // nvme's char device refuses opens while the controller is not live.
                Some(nix::libc::EWOULDBLOCK) => Error::NotLive,
                _ => Error::Open { path: nvme.to_owned(), source },
            })?;
        let req = HomiAttach { nvme_fd: nvme_file.as_raw_fd(), flags: 0 };
        // SAFETY: the fd is open and `req` is a valid `HomiAttach`.
        unsafe { sys::homi_attach(dev.file().as_raw_fd(), &req) }
            .map_err(|source| Error::Ioctl { op: "HOMI_IOCTL_ATTACH", source })?;
        let status = Mapping::new(dev.file().as_fd(), HOMI_STATUS_OFFSET, 4096, false, "status page")?;
        let info = info(&dev)?;
        tracing::debug!(nvme = %nvme.display(), spare = info.spare_free, "attached");
        let doorbell_stride = info.doorbell_stride as usize;
        let max_transfer = info.max_transfer as usize;
        let shared = Shared {
            dev,
            status,
            doorbell_stride,
            max_transfer,
            instance: info.instance,
            map_status: OnceLock::new(),
            _nvme: nvme_file,
        };
        Ok(Self { shared: Arc::new(shared) })
    }

    /// Asks the module about the controller (admin commands: Get Features, Identify).
    pub fn info(&self) -> Result<HomiInfo> {
        info(&self.shared.dev)
    }

    /// The controller generation, bumped on every reset (read from the status page,
    /// without a syscall).
    pub fn generation(&self) -> u64 {
        self.shared.generation()
    }

    /// `HOMI_CTRL_*` from the status page.
    pub fn state(&self) -> u32 {
        self.shared.ctrl_state()
    }

    /// Reserves a spare qid and creates a queue pair of `depth` entries on it
    /// (2..=[`MAX_QUEUE_DEPTH`](crate::MAX_QUEUE_DEPTH), and at most CAP.MQES + 1).
    pub fn create_qpair(&self, depth: u32) -> Result<QueuePair> {
        if depth > crate::MAX_QUEUE_DEPTH {
            return Err(Error::Invalid("queue depth above 65535, the engine's limit"));
        }
        let mut q = HomiQpair { depth, ..Default::default() };
        // SAFETY: the fd is open and `q` is a valid, writable `HomiQpair`.
        unsafe { sys::homi_create_qpair(self.shared.fd().as_raw_fd(), &mut q) }.map_err(|e| match e {
            nix::Error::EOPNOTSUPP => Error::ShadowDoorbells,
            nix::Error::ENOSPC => Error::NoSpareQueues,
            nix::Error::EAGAIN => Error::NotLive,
            source => Error::Ioctl { op: "HOMI_IOCTL_CREATE_QPAIR", source },
        })?;
        QueuePair::map(self.shared.clone(), q, [None, None])
    }

    /// Allocates `size` bytes of module-owned DMA memory (a multiple of 4096, at most
    /// 4 MiB), contiguous as the controller sees it.
    pub fn alloc(&self, size: usize) -> Result<DmaBuffer> {
        DmaBuffer::alloc(self.shared.clone(), size)
    }

    /// Allocates `size` bytes of process memory (a multiple of 4096) and registers it:
    /// pinned, and mapped for the controller page by page through the DMA API. The
    /// pages stay pinned until the buffer is dropped.
    pub fn register(&self, size: usize) -> Result<DmaBuffer> {
        DmaBuffer::register(self.shared.clone(), size)
    }

    /// Imports `len` bytes at `offset` of the dma-buf `fd` (GPU memory, a udmabuf,
    /// another device's memory) for the controller: the module attaches it to the
    /// controller's PCI device, pins and maps it, and returns one address per page.
    /// The buffer has no CPU pointer ([`DmaBuffer::is_mapped`] is false); see
    /// [`register_dmabuf_mapped`](Self::register_dmabuf_mapped). No `RLIMIT_MEMLOCK`
    /// charge: it is not process memory. Fails with [`Error::Unreachable`] where the
    /// exporter cannot place it for the controller.
    pub fn register_dmabuf(&self, fd: BorrowedFd<'_>, offset: u64, len: usize) -> Result<DmaBuffer> {
        DmaBuffer::import(self.shared.clone(), fd, offset, len, false)
    }

    /// As [`register_dmabuf`](Self::register_dmabuf), and maps the range for the CPU
    /// through the dma-buf's own mmap (which udmabuf and system heap buffers support).
    pub fn register_dmabuf_mapped(&self, fd: BorrowedFd<'_>, offset: u64, len: usize) -> Result<DmaBuffer> {
        DmaBuffer::import(self.shared.clone(), fd, offset, len, true)
    }

    /// Registers `len` bytes of memory this process already has mapped at `ptr`
    /// (page-aligned): process memory, or peer-to-peer memory such as another device's
    /// BAR published through P2PDMA (`/sys/bus/pci/devices/*/p2pmem/allocate`). Fails
    /// with [`Error::Unreachable`] where the controller cannot reach it.
    ///
    /// # Safety
    ///
    /// The memory must stay mapped for as long as the returned buffer lives.
    pub unsafe fn register_memory(&self, ptr: *mut u8, len: usize) -> Result<DmaBuffer> {
        // SAFETY: the caller's contract.
        unsafe { DmaBuffer::register_at(self.shared.clone(), ptr, len, None) }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The raw `/dev/homi` file, for ioctls this crate does not wrap.
    pub fn homi_fd(&self) -> &File {
        self.shared.fd()
    }
}

fn info(dev: &HomiDevice) -> Result<HomiInfo> {
    let mut info = HomiInfo::default();
    // SAFETY: the fd is open and `info` is writable and of the ioctl's type.
    unsafe { sys::homi_info(dev.file().as_raw_fd(), &mut info) }
        .map_err(|source| Error::Ioctl { op: "HOMI_IOCTL_INFO", source })?;
    Ok(info)
}
