//! Buffers the controller reaches: module DMA memory and registered process memory.

use std::ffi::{c_int, c_void};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use homi::{DmaBuffer, PAGE};

use crate::ctrl::HomiCtrl;
use crate::error::{guard, guard_or, Failure};
use crate::{handle, put};

/// The largest homi_buf_alloc(): 4 MiB.
pub const HOMI_BUF_ALLOC_MAX: usize = 4 << 20;

const _: () = assert!(HOMI_BUF_ALLOC_MAX as u64 == homi::uapi::HOMI_ALLOC_MAX);

/// Memory the controller reaches by DMA. Opaque. Queues keep a buffer alive while a
/// command that uses it is in flight, so homi_buf_free() may come before the
/// completion; the bytes must not be touched by the CPU while a command uses them.
#[derive(Debug)]
pub struct HomiBuf {
    pub(crate) buf: Arc<DmaBuffer>,
    /// Which attachment the buffer was made through (its /dev/homi fd, which stays
    /// open while the buffer lives): a queue takes only buffers of its own.
    pub(crate) owner: i32,
}

/// Allocates `size` bytes of DMA memory from the module (a non-zero multiple of 4096,
/// at most HOMI_BUF_ALLOC_MAX), contiguous as the controller sees it, zeroed, and mapped into this
/// process. Stores the buffer in `*out` (NULL on failure).
///
/// # Safety
///
/// `c` must be NULL or a live controller handle; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn homi_buf_alloc(c: *const HomiCtrl, size: usize, out: *mut *mut HomiBuf) -> c_int {
    guard("homi_buf_alloc", || {
        // SAFETY: NULL or writable (caller).
        unsafe { put(out, "out", std::ptr::null_mut())? };
        // SAFETY: NULL or a live handle (caller).
        let c = unsafe { handle(c, "c")? };
        if size == 0 || size % PAGE != 0 || size > HOMI_BUF_ALLOC_MAX {
            return Err(Failure::invalid(format!(
                "size {size} is not a multiple of 4096 in 4096..={HOMI_BUF_ALLOC_MAX}"
            )));
        }
        let buf = c.ctrl.alloc(size)?;
        let b = HomiBuf { buf: Arc::new(buf), owner: c.ctrl.homi_fd().as_raw_fd() };
        // SAFETY: checked writable above.
        unsafe { put(out, "out", Box::into_raw(Box::new(b)))? };
        Ok(0)
    })
}

/// Registers `len` bytes of the caller's memory at `ptr` (page-aligned, a non-zero
/// multiple of 4096): the module pins the pages and maps them for the controller
/// until the buffer is released. Counts against RLIMIT_MEMLOCK. Stores the buffer in
/// `*out` (NULL on failure).
///
/// # Safety
///
/// `c` must be NULL or a live controller handle; `out` NULL or writable; `ptr` NULL
/// or the start of `len` bytes of memory mapped in this process that stay mapped
/// until the buffer is freed and every command that used it completed or its queue
/// was destroyed.
#[no_mangle]
pub unsafe extern "C" fn homi_buf_register(
    c: *const HomiCtrl,
    ptr: *mut c_void,
    len: usize,
    out: *mut *mut HomiBuf,
) -> c_int {
    guard("homi_buf_register", || {
        // SAFETY: NULL or writable (caller).
        unsafe { put(out, "out", std::ptr::null_mut())? };
        // SAFETY: NULL or a live handle (caller).
        let c = unsafe { handle(c, "c")? };
        if ptr.is_null() {
            return Err(Failure::null("ptr"));
        }
        if ptr as usize % PAGE != 0 || len == 0 || len % PAGE != 0 {
            return Err(Failure::invalid(format!(
                "{ptr:p} + {len}: registered memory must be page-aligned and a non-zero multiple of 4096 bytes"
            )));
        }
        // SAFETY: `len` bytes mapped at `ptr` that stay mapped while the buffer and its
        // commands live (caller).
        let buf = unsafe { c.ctrl.register_memory(ptr.cast(), len)? };
        let b = HomiBuf { buf: Arc::new(buf), owner: c.ctrl.homi_fd().as_raw_fd() };
        // SAFETY: checked writable above.
        unsafe { put(out, "out", Box::into_raw(Box::new(b)))? };
        Ok(0)
    })
}

/// The buffer's first byte, for the CPU to fill or read while no command uses the
/// buffer. NULL for NULL.
///
/// # Safety
///
/// `b` must be NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn homi_buf_ptr(b: *const HomiBuf) -> *mut c_void {
    guard_or("homi_buf_ptr", std::ptr::null_mut(), || {
        // SAFETY: NULL or a live buffer (caller).
        unsafe { b.as_ref() }.map_or(std::ptr::null_mut(), |b| b.buf.as_ptr().cast())
    })
}

/// The buffer's size in bytes; 0 for NULL.
///
/// # Safety
///
/// `b` must be NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn homi_buf_len(b: *const HomiBuf) -> usize {
    guard_or("homi_buf_len", 0, || {
        // SAFETY: NULL or a live buffer (caller).
        unsafe { b.as_ref() }.map_or(0, |b| b.buf.len())
    })
}

/// Releases the caller's reference. The memory is freed (unpinned, for registered
/// memory) once no in-flight command uses it: commands submitted with it keep it alive
/// until they complete, are forgotten by a rearm, or their queue is destroyed. NULL is
/// ignored.
///
/// # Safety
///
/// `b` must be NULL or a live buffer, not used by the caller afterwards.
#[no_mangle]
pub unsafe extern "C" fn homi_buf_free(b: *mut HomiBuf) {
    guard_or("homi_buf_free", (), || {
        if !b.is_null() {
            // SAFETY: a buffer from `homi_buf_alloc`/`homi_buf_register`, released
            // once (caller).
            drop(unsafe { Box::from_raw(b) });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::HomiErr;

    #[test]
    fn null_arguments() {
        let mut out = std::ptr::NonNull::<HomiBuf>::dangling().as_ptr();
        // SAFETY: NULL handles and a writable out.
        unsafe {
            assert_eq!(homi_buf_alloc(std::ptr::null(), 4096, &mut out), HomiErr::HOMI_E_NULL_ARG as c_int);
            assert!(out.is_null());
            assert_eq!(
                homi_buf_register(std::ptr::null(), std::ptr::null_mut(), 4096, &mut out),
                HomiErr::HOMI_E_NULL_ARG as c_int
            );
            assert_eq!(homi_buf_alloc(std::ptr::null(), 4096, std::ptr::null_mut()), HomiErr::HOMI_E_NULL_ARG as c_int);
            assert!(homi_buf_ptr(std::ptr::null()).is_null());
            assert_eq!(homi_buf_len(std::ptr::null()), 0);
            homi_buf_free(std::ptr::null_mut());
        }
    }
}
