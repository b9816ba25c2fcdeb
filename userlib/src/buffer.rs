//! Memory the controller can reach: module-owned DMA buffers, registered process
//! memory, and imported dma-bufs.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Arc;

use homi_uapi::{HomiAlloc, HomiId, HomiRegister, HomiRegisterDmabuf};

use crate::controller::Shared;
use crate::mapping::Mapping;
use crate::{sys, Error, Result};

/// Memory the controller can reach, contiguous as it sees it: byte `i` is at
/// [`dma_addr`](Self::dma_addr) `+ i`.
///
/// On a real controller it is coherent DMA memory allocated by the module and mapped
/// into this process, or process memory pinned and mapped for the controller
/// ([`Controller::register`](crate::Controller::register), whose pages need not be
/// contiguous: see [`page_addrs`](Self::page_addrs)), or a range of an imported
/// dma-buf ([`Controller::register_dmabuf`](crate::Controller::register_dmabuf)), which
/// has a CPU pointer only if the caller asked to map it; on the software controller,
/// page-aligned host memory whose "DMA address" is its virtual address.
#[derive(Debug)]
pub struct DmaBuffer {
    ptr: *mut u8,
    len: usize,
    dma: u64,
    /// Per-page device addresses of registered memory; `None` when contiguous.
    pages: Option<Box<[u64]>>,
    owner: Owner,
}

#[derive(Debug)]
enum Owner {
    Module {
        _map: Mapping,
        id: u32,
        shared: Arc<Shared>,
    },
    /// Process memory: allocated here, or the caller's (`None`, kept mapped by it).
    Registered {
        id: u32,
        shared: Arc<Shared>,
        _mem: Option<HostPages>,
    },
    /// A dma-buf range, with the CPU mapping of it if one was asked for.
    Imported {
        id: u32,
        shared: Arc<Shared>,
        _map: Option<Mapping>,
    },
    Host {
        _mem: HostPages,
    },
    External {
        _keep: Box<dyn std::any::Any + Send + Sync>,
    },
}

// SAFETY: the buffer is plain memory owned by `owner`; access goes through raw pointers
// under the caller's rules.
unsafe impl Send for DmaBuffer {}
// SAFETY: `&DmaBuffer` methods copy through raw pointers under the caller's contract.
unsafe impl Sync for DmaBuffer {}

/// Zeroed, page-aligned host memory, freed when dropped.
#[derive(Debug)]
pub struct HostPages {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: plain heap memory.
unsafe impl Send for HostPages {}
// SAFETY: plain heap memory; users synchronise through the rings.
unsafe impl Sync for HostPages {}

impl HostPages {
    /// At least `len` bytes, rounded up to whole pages.
    pub fn new(len: usize) -> Self {
        let len = len.max(1).next_multiple_of(crate::prp::PAGE);
        let layout = std::alloc::Layout::from_size_align(len, crate::prp::PAGE).expect("page layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = std::ptr::NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Self { ptr, len }
    }

    /// The first byte.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Bytes held (whole pages).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: at least a page is held.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Zeroes every byte. Call it only while nothing else uses the memory.
    pub fn zero(&self) {
        // SAFETY: `len` bytes owned by `self`.
        unsafe { std::ptr::write_bytes(self.ptr(), 0, self.len) };
    }
}

impl Drop for HostPages {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, crate::prp::PAGE).expect("page layout");
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
    }
}

impl DmaBuffer {
    pub(crate) fn alloc(shared: Arc<Shared>, size: usize) -> Result<Self> {
        let mut a = HomiAlloc { size: size as u64, ..Default::default() };
        // SAFETY: the fd is open and `a` is a valid, writable `HomiAlloc`.
        unsafe { sys::homi_alloc(shared.fd().as_raw_fd(), &mut a) }
            .map_err(|source| Error::Ioctl { op: "HOMI_IOCTL_ALLOC", source })?;
        let map = match Mapping::new(shared.fd().as_fd(), a.offset, size, true, "DMA buffer") {
            Ok(m) => m,
            Err(e) => {
                free(&shared, a.id);
                return Err(e);
            }
        };
        Ok(Self {
            ptr: map.ptr(),
            len: size,
            dma: a.dma_addr,
            pages: None,
            owner: Owner::Module { _map: map, id: a.id, shared },
        })
    }

    /// Host memory whose "DMA address" is its virtual address: memory for controllers
    /// that run in this process (test instruments).
    pub fn host(size: usize) -> Self {
        let mem = HostPages::new(size);
        Self { ptr: mem.ptr(), len: size, dma: mem.ptr() as u64, pages: None, owner: Owner::Host { _mem: mem } }
    }

    /// Memory that something else owns and keeps alive in `keep`: `len` bytes at `ptr`
    /// (null where this process cannot address it), at controller address `dma`, or
    /// at the per-page addresses `pages` when not contiguous.
    ///
    /// # Safety
    ///
    /// `keep` must keep the memory alive and reachable at those addresses until it is
    /// dropped; `pages` (if any) must hold one address per 4096 bytes of `len`.
    pub unsafe fn from_raw(
        ptr: *mut u8,
        len: usize,
        dma: u64,
        pages: Option<Box<[u64]>>,
        keep: Box<dyn std::any::Any + Send + Sync>,
    ) -> Self {
        Self { ptr, len, dma, pages, owner: Owner::External { _keep: keep } }
    }

    /// Allocates `size` bytes of page-aligned process memory and registers it: the
    /// module pins the pages and maps them for the controller through the DMA API.
    pub(crate) fn register(shared: Arc<Shared>, size: usize) -> Result<Self> {
        let mem = HostPages::new(size);
        // SAFETY: `mem` is `size` bytes of process memory that lives in the buffer.
        unsafe { Self::register_at(shared, mem.ptr(), size, Some(mem)) }
    }

    /// Registers `size` bytes at `ptr`, kept by `mem` if given.
    ///
    /// # Safety
    ///
    /// `ptr` must be the start of `size` bytes of mapped process memory that stays
    /// mapped for as long as the returned buffer lives.
    pub(crate) unsafe fn register_at(
        shared: Arc<Shared>,
        ptr: *mut u8,
        size: usize,
        mem: Option<HostPages>,
    ) -> Result<Self> {
        if size == 0 || size % crate::prp::PAGE != 0 || ptr as usize % crate::prp::PAGE != 0 {
            return Err(Error::Invalid("registered memory must be page-aligned and a non-zero multiple of 4096 bytes"));
        }
        let mut pages = vec![0u64; size / crate::prp::PAGE].into_boxed_slice();
        let mut r =
            HomiRegister { addr: ptr as u64, len: size as u64, dma_addrs: pages.as_mut_ptr() as u64, flags: 0, id: 0 };
        // SAFETY: the fd is open; `r` names `size` bytes of mapped memory (caller) and
        // room for one address per page.
        unsafe { sys::homi_register(shared.fd().as_raw_fd(), &mut r) }.map_err(|source| match source {
            nix::Error::EXDEV => Error::Unreachable,
            source => Error::Ioctl { op: "HOMI_IOCTL_REGISTER", source },
        })?;
        Ok(Self {
            ptr,
            len: size,
            dma: pages[0],
            pages: Some(pages),
            owner: Owner::Registered { id: r.id, shared, _mem: mem },
        })
    }

    /// Imports `len` bytes at `offset` of the dma-buf `fd`, mapping them for the CPU too
    /// if `map` (the exporter must support mmap, as udmabuf does).
    pub(crate) fn import(shared: Arc<Shared>, fd: BorrowedFd<'_>, offset: u64, len: usize, map: bool) -> Result<Self> {
        if len == 0 || len % crate::prp::PAGE != 0 || offset % crate::prp::PAGE as u64 != 0 {
            return Err(Error::Invalid("a dma-buf range must be page-aligned and a non-zero multiple of 4096 bytes"));
        }
        let cpu = if map { Some(Mapping::new(fd, offset, len, true, "dma-buf")?) } else { None };
        let mut pages = vec![0u64; len / crate::prp::PAGE].into_boxed_slice();
        let mut r = HomiRegisterDmabuf {
            fd: fd.as_raw_fd(),
            offset,
            len: len as u64,
            dma_addrs: pages.as_mut_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: the fd is open; `r` has room for one address per page.
        unsafe { sys::homi_register_dmabuf(shared.fd().as_raw_fd(), &mut r) }.map_err(|source| match source {
            nix::Error::EXDEV => Error::Unreachable,
            source => Error::Ioctl { op: "HOMI_IOCTL_REGISTER_DMABUF", source },
        })?;
        let ptr = cpu.as_ref().map_or(std::ptr::null_mut(), Mapping::ptr);
        Ok(Self { ptr, len, dma: pages[0], pages: Some(pages), owner: Owner::Imported { id: r.id, shared, _map: cpu } })
    }

    /// The module's id of this buffer or registration (`sq_memory`/`cq_memory` of
    /// ring placement through the raw ABI); `None` for memory the module does not hold.
    pub fn id(&self) -> Option<u32> {
        match &self.owner {
            Owner::Module { id, .. } | Owner::Registered { id, .. } | Owner::Imported { id, .. } => Some(*id),
            Owner::Host { .. } | Owner::External { .. } => None,
        }
    }

    /// The device address of each page, for registered memory (`None` when the
    /// buffer is contiguous and [`dma_addr`](Self::dma_addr) names it all).
    pub fn page_addrs(&self) -> Option<&[u64]> {
        self.pages.as_deref()
    }

    pub(crate) fn layout(&self) -> crate::prp::Layout<'_> {
        match &self.pages {
            Some(p) => crate::prp::Layout::Pages(p),
            None => crate::prp::Layout::Contiguous(self.dma),
        }
    }

    /// The controller-visible address of the first byte (of the first page, for
    /// registered memory).
    pub fn dma_addr(&self) -> u64 {
        self.dma
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: buffers are at least a page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The first byte, for callers that move data themselves; null for a dma-buf
    /// imported without a CPU mapping (GPU memory).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Whether the buffer has a CPU mapping ([`as_ptr`](Self::as_ptr) is not null).
    pub fn is_mapped(&self) -> bool {
        !self.ptr.is_null()
    }

    /// Copies `src` into the buffer at `offset`. Call it only while no command that
    /// reads or writes that range is in flight.
    pub fn write_at(&self, offset: usize, src: &[u8]) -> Result<()> {
        let end = offset.checked_add(src.len()).ok_or(Error::Invalid("range"))?;
        if end > self.len() {
            return Err(Error::Invalid("range beyond the buffer"));
        }
        if !self.is_mapped() {
            return Err(Error::Invalid("the buffer has no CPU mapping"));
        }
        // SAFETY: the range is inside the mapping; no command touches it (caller's
        // contract), so nothing else writes it while we copy.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(offset), src.len()) };
        Ok(())
    }

    /// Copies bytes at `offset` into `dst`. Call it only after the commands that wrote
    /// that range completed.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<()> {
        let end = offset.checked_add(dst.len()).ok_or(Error::Invalid("range"))?;
        if end > self.len() {
            return Err(Error::Invalid("range beyond the buffer"));
        }
        if !self.is_mapped() {
            return Err(Error::Invalid("the buffer has no CPU mapping"));
        }
        // SAFETY: the range is inside the mapping; the device finished writing it
        // (caller's contract).
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(offset), dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// The PRP entries for `len` bytes at `offset` of this buffer, when they fit in
    /// PRP1 and PRP2 (at most two memory pages); longer transfers go through
    /// [`QueuePair::push_io`](crate::QueuePair::push_io), which builds PRP lists.
    pub fn prps(&self, offset: usize, len: usize) -> Result<(u64, u64)> {
        match crate::prp::span(self.layout(), self.len, offset, len)? {
            crate::prp::Prps::Direct(a, b) => Ok((a, b)),
            crate::prp::Prps::List { .. } => Err(Error::Invalid("transfer needs a PRP list")),
        }
    }
}

fn free(shared: &Shared, id: u32) {
    let req = HomiId { id, flags: 0 };
    // SAFETY: the fd is open and `req` is a valid `HomiId`.
    if let Err(e) = unsafe { sys::homi_free(shared.fd().as_raw_fd(), &req) } {
        tracing::warn!(id, error = %e, "HOMI_IOCTL_FREE failed");
    }
}

impl Drop for DmaBuffer {
    fn drop(&mut self) {
        match &self.owner {
            Owner::Module { id, shared, .. } => free(shared, *id),
            Owner::Registered { id, shared, .. } | Owner::Imported { id, shared, .. } => {
                let req = HomiId { id: *id, flags: 0 };
                // SAFETY: the fd is open and `req` is a valid `HomiId`. The pages are
                // unpinned (the dma-buf let go) before `_mem` or `_map` goes (fields drop
                // after this).
                if let Err(e) = unsafe { sys::homi_unregister(shared.fd().as_raw_fd(), &req) } {
                    tracing::warn!(id, error = %e, "HOMI_IOCTL_UNREGISTER failed");
                }
            }
            Owner::Host { .. } | Owner::External { .. } => {}
        }
    }
}
