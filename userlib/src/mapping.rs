//! Shared mappings of `/dev/homi`, unmapped on drop.

use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::ptr::NonNull;

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

use crate::{Error, Result};

/// One `MAP_SHARED` mapping of part of `/dev/homi`.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; access discipline is up to its owners,
// which use volatile or atomic operations.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes at `offset` of `fd`.
    pub(crate) fn new(fd: impl AsFd, offset: u64, len: usize, writable: bool, what: &'static str) -> Result<Self> {
        let length = NonZeroUsize::new(len).ok_or(Error::Invalid("empty mapping"))?;
        let prot = if writable { ProtFlags::PROT_READ | ProtFlags::PROT_WRITE } else { ProtFlags::PROT_READ };
        let offset = i64::try_from(offset).map_err(|_| Error::Invalid("mmap offset"))?;
        // SAFETY: a new shared mapping at an address the kernel picks; nothing aliases
        // it yet.
        let ptr = unsafe { mmap(None, length, prot, MapFlags::MAP_SHARED, fd, offset) }
            .map_err(|source| Error::Mmap { what, source })?;
        Ok(Self { ptr: ptr.cast(), len })
    }

    /// The first byte.
    pub(crate) fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we own this mapping and nothing borrows it past `self`.
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}
