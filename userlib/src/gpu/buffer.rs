//! Memory both a GPU and a controller reach, with the table the device engine builds
//! PRPs from.

use std::any::Any;

use cudarc::driver::sys;

use super::{check, Gpu};
use crate::{DmaBuffer, Error, Result, PAGE};

/// GPU memory from `cuMemAlloc`, freed when dropped.
#[derive(Debug)]
pub struct DeviceMemory {
    pub(crate) ptr: sys::CUdeviceptr,
    pub(crate) len: usize,
    gpu: Gpu,
}

impl DeviceMemory {
    /// `len` zeroed bytes.
    pub fn zeroed(gpu: &Gpu, len: usize) -> Result<Self> {
        gpu.bind()?;
        let mut ptr = 0;
        // SAFETY: `ptr` is a valid out pointer; the context is current.
        check("cuMemAlloc", unsafe { sys::cuMemAlloc_v2(&mut ptr, len.max(1)) })?;
        let a = Self { ptr, len, gpu: gpu.clone() };
        // SAFETY: `len` bytes were just allocated at `ptr`.
        check("cuMemsetD8", unsafe { sys::cuMemsetD8_v2(ptr, 0, len.max(1)) })?;
        Ok(a)
    }

    /// Copies `src` to byte `offset`.
    pub fn write<T: Copy>(&self, offset: usize, src: &[T]) -> Result<()> {
        copy_to_device(&self.gpu, self.ptr + offset as u64, self.len.saturating_sub(offset), src)
    }

    /// Copies from byte `offset` into `dst`.
    pub fn read<T: Copy>(&self, offset: usize, dst: &mut [T]) -> Result<()> {
        let bytes = std::mem::size_of_val(dst);
        if offset.checked_add(bytes).is_none_or(|end| end > self.len) {
            return Err(Error::Invalid("copy beyond the GPU allocation"));
        }
        self.gpu.bind()?;
        // SAFETY: the range is inside the allocation (checked); `dst` is writable.
        check("cuMemcpyDtoH", unsafe { sys::cuMemcpyDtoH_v2(dst.as_mut_ptr().cast(), self.ptr + offset as u64, bytes) })
    }

    /// The GPU address of the first byte.
    pub fn dev_ptr(&self) -> u64 {
        self.ptr
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the allocation is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for DeviceMemory {
    fn drop(&mut self) {
        let _ = self.gpu.bind();
        // SAFETY: allocated by `cuMemAlloc` in `zeroed`, freed once.
        let _ = unsafe { sys::cuMemFree_v2(self.ptr) };
    }
}

/// Copies `src` to GPU address `dst`, which has room for `room` bytes.
pub(crate) fn copy_to_device<T: Copy>(gpu: &Gpu, dst: u64, room: usize, src: &[T]) -> Result<()> {
    let bytes = std::mem::size_of_val(src);
    if bytes > room {
        return Err(Error::Invalid("copy beyond the GPU allocation"));
    }
    gpu.bind()?;
    // SAFETY: `bytes` readable bytes at `src`; `dst` has room (checked).
    check("cuMemcpyHtoD", unsafe { sys::cuMemcpyHtoD_v2(dst, src.as_ptr().cast(), bytes) })
}

/// Host memory registered with CUDA (mapped into the GPU), unregistered when dropped.
#[derive(Debug)]
pub struct HostMapping {
    ptr: *mut u8,
    dev: u64,
    gpu: Gpu,
}

// SAFETY: a registration is a handle; the memory belongs to its owner.
unsafe impl Send for HostMapping {}
// SAFETY: as above.
unsafe impl Sync for HostMapping {}

impl HostMapping {
    /// Registers `len` bytes at `ptr` (page-aligned) with `flags`
    /// (`CU_MEMHOSTREGISTER_*`, e.g. IOMEMORY for an MMIO page; DEVICEMAP is added).
    ///
    /// # Safety
    ///
    /// The memory must stay mapped until the registration is dropped.
    pub unsafe fn new(gpu: &Gpu, ptr: *mut u8, len: usize, flags: u32) -> Result<Self> {
        gpu.bind()?;
        let flags = flags | sys::CU_MEMHOSTREGISTER_DEVICEMAP | sys::CU_MEMHOSTREGISTER_PORTABLE;
        // SAFETY: the caller keeps `len` bytes at `ptr` mapped.
        check("cuMemHostRegister", unsafe { sys::cuMemHostRegister_v2(ptr.cast(), len, flags) })?;
        let mut reg = Self { ptr, dev: 0, gpu: gpu.clone() };
        // SAFETY: `ptr` was just registered; `dev` is a valid out pointer. On failure
        // `reg` unregisters it.
        check("cuMemHostGetDevicePointer", unsafe { sys::cuMemHostGetDevicePointer_v2(&mut reg.dev, ptr.cast(), 0) })?;
        Ok(reg)
    }

    /// The GPU address of the first byte.
    pub fn dev_ptr(&self) -> u64 {
        self.dev
    }
}

impl Drop for HostMapping {
    fn drop(&mut self) {
        let _ = self.gpu.bind();
        // SAFETY: registered in `new`, unregistered once.
        let _ = unsafe { sys::cuMemHostUnregister(self.ptr.cast()) };
    }
}

/// `struct homi_dma` of `homi.cuh`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct DmaDesc {
    base: u64,
    pages: u64,
    len: u64,
}

/// Memory both the GPU and a controller reach: `len` bytes at GPU address
/// [`dev_ptr`](Self::dev_ptr), whose 4096-byte page `i` the controller reaches at
/// [`page_addrs`](Self::page_addrs)`[i]`. Kernels name it by
/// [`desc`](Self::desc), a `const struct homi_dma *`.
#[derive(Debug)]
pub struct GpuBuffer {
    dev: u64,
    len: usize,
    pages: Box<[u64]>,
    /// The page table and the `homi_dma` descriptor, in GPU memory.
    table: DeviceMemory,
    gpu: Gpu,
    _keep: Box<dyn Any + Send + Sync>,
}

impl GpuBuffer {
    /// Describes memory that something else owns.
    ///
    /// # Safety
    ///
    /// `len` bytes at GPU address `dev` must stay valid, and page `i` reachable by the
    /// controller at `pages[i]`, until `keep` is dropped; `pages` holds one address
    /// per 4096 bytes of `len`.
    pub unsafe fn from_raw(
        gpu: &Gpu,
        dev: u64,
        len: usize,
        pages: Box<[u64]>,
        keep: Box<dyn Any + Send + Sync>,
    ) -> Result<Self> {
        if len == 0 || len % PAGE != 0 || pages.len() != len / PAGE {
            return Err(Error::Invalid("GPU buffer: one address per 4096-byte page"));
        }
        let table = DeviceMemory::zeroed(gpu, pages.len() * 8 + std::mem::size_of::<DmaDesc>())?;
        table.write(0, &pages)?;
        let desc = DmaDesc { base: dev, pages: table.ptr, len: len as u64 };
        table.write(pages.len() * 8, &[desc])?;
        Ok(Self { dev, len, pages, table, gpu: gpu.clone(), _keep: keep })
    }

    /// Host memory the controller already reaches (a [`DmaBuffer`]), mapped into the
    /// GPU with `cuMemHostRegister`: GPU stores to it cross the bus to the host.
    pub fn mapped_host(gpu: &Gpu, buf: DmaBuffer) -> Result<Self> {
        if buf.as_ptr().is_null() {
            return Err(Error::Invalid("the buffer has no mapping in this process"));
        }
        let n = buf.len() / PAGE;
        let pages: Box<[u64]> = match buf.page_addrs() {
            Some(p) => p[..n].into(),
            None => (0..n as u64).map(|i| buf.dma_addr() + i * PAGE as u64).collect(),
        };
        // SAFETY: `buf` owns the memory and moves into the buffer's keep, which drops
        // after the registration (tuple fields drop in order).
        let reg = unsafe { HostMapping::new(gpu, buf.as_ptr(), n * PAGE, 0)? };
        let dev = reg.dev;
        // SAFETY: the registration maps the buffer at `dev`; the pages are the
        // buffer's own addresses; both live in `keep`.
        unsafe { Self::from_raw(gpu, dev, n * PAGE, pages, Box::new((reg, buf))) }
    }

    /// The GPU address of the first byte.
    pub fn dev_ptr(&self) -> u64 {
        self.dev
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: buffers are at least a page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The controller address of each 4096-byte page.
    pub fn page_addrs(&self) -> &[u64] {
        &self.pages
    }

    /// GPU address of the buffer's `struct homi_dma`, for kernels.
    pub fn desc(&self) -> u64 {
        self.table.ptr + (self.pages.len() * 8) as u64
    }

    /// GPU address of the page table (`pages` of `struct homi_dma`).
    pub(crate) fn table(&self) -> u64 {
        self.table.ptr
    }

    /// Copies `src` to byte `offset` of the buffer.
    pub fn write_at(&self, offset: usize, src: &[u8]) -> Result<()> {
        copy_to_device(&self.gpu, self.dev + offset as u64, self.len.saturating_sub(offset), src)
    }

    /// Copies bytes at `offset` into `dst`.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<()> {
        if offset.checked_add(dst.len()).is_none_or(|end| end > self.len) {
            return Err(Error::Invalid("range beyond the GPU buffer"));
        }
        self.gpu.bind()?;
        // SAFETY: the range is inside the buffer (checked); `dst` is writable.
        check("cuMemcpyDtoH", unsafe {
            sys::cuMemcpyDtoH_v2(dst.as_mut_ptr().cast(), self.dev + offset as u64, dst.len())
        })
    }
}
