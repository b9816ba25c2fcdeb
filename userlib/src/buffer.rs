//! Memory the controller can reach: module-owned DMA buffers.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;

use homi_uapi::{HomiAlloc, HomiId};

use crate::controller::Shared;
use crate::mapping::Mapping;
use crate::{sys, Error, Result};

/// Coherent DMA memory allocated by the module and mapped into this process. It is
/// contiguous as the controller sees it: byte `i` is at [`dma_addr`](Self::dma_addr)
/// `+ i`.
#[derive(Debug)]
pub struct DmaBuffer {
    map: Mapping,
    id: u32,
    dma: u64,
    shared: Arc<Shared>,
}

impl DmaBuffer {
    pub(crate) fn alloc(shared: Arc<Shared>, size: usize) -> Result<Self> {
        let mut a = HomiAlloc {
            size: size as u64,
            ..Default::default()
        };
        // SAFETY: the fd is open and `a` is a valid, writable `HomiAlloc`.
        unsafe { sys::homi_alloc(shared.fd().as_raw_fd(), &mut a) }.map_err(|source| {
            Error::Ioctl {
                op: "HOMI_IOCTL_ALLOC",
                source,
            }
        })?;
        let map = match Mapping::new(shared.fd().as_fd(), a.offset, size, true, "DMA buffer") {
            Ok(m) => m,
            Err(e) => {
                free(&shared, a.id);
                return Err(e);
            }
        };
        Ok(Self {
            map,
            id: a.id,
            dma: a.dma_addr,
            shared,
        })
    }

    /// The controller-visible address of the first byte.
    pub fn dma_addr(&self) -> u64 {
        self.dma
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Always false: buffers are at least a page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The first byte, for callers that move data themselves.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.ptr()
    }

    /// Copies `src` into the buffer at `offset`. Call it only while no command that
    /// reads or writes that range is in flight.
    pub fn write_at(&self, offset: usize, src: &[u8]) -> Result<()> {
        let end = offset
            .checked_add(src.len())
            .ok_or(Error::Invalid("range"))?;
        if end > self.len() {
            return Err(Error::Invalid("range beyond the buffer"));
        }
        // SAFETY: the range is inside the mapping; no command touches it (caller's
        // contract), so nothing else writes it while we copy.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.map.ptr().add(offset), src.len())
        };
        Ok(())
    }

    /// Copies bytes at `offset` into `dst`. Call it only after the commands that wrote
    /// that range completed.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<()> {
        let end = offset
            .checked_add(dst.len())
            .ok_or(Error::Invalid("range"))?;
        if end > self.len() {
            return Err(Error::Invalid("range beyond the buffer"));
        }
        // SAFETY: the range is inside the mapping; the device finished writing it
        // (caller's contract).
        unsafe {
            std::ptr::copy_nonoverlapping(self.map.ptr().add(offset), dst.as_mut_ptr(), dst.len())
        };
        Ok(())
    }

    /// The PRP entries for `len` bytes at `offset` of this buffer, when they fit in
    /// PRP1 and PRP2 (at most two memory pages).
    pub fn prps(&self, offset: usize, len: usize) -> Result<(u64, u64)> {
        const PAGE: u64 = 4096;
        if len == 0 || offset.checked_add(len).is_none_or(|end| end > self.len()) {
            return Err(Error::Invalid("range beyond the buffer"));
        }
        let first = self.dma + offset as u64;
        let first_page_left = PAGE - (first % PAGE);
        if len as u64 <= first_page_left {
            return Ok((first, 0));
        }
        let second = first + first_page_left;
        if len as u64 - first_page_left <= PAGE {
            return Ok((first, second));
        }
        Err(Error::Invalid("transfer needs a PRP list"))
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
        free(&self.shared, self.id);
    }
}
