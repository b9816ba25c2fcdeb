//! How the software controller reaches "DMA" memory: rings, PRP lists and data.
//! Part of the software controller, **a test instrument**.
//!
//! By default addresses are host virtual addresses and the worker copies with the
//! CPU ([`HostMemory`]); for GPU kernels whose rings and data live in GPU memory it
//! copies through CUDA instead (`soft_gpu`), as a controller's DMA engine would.

/// The controller's view of memory: every access names an address and a length.
pub(crate) trait Memory: Send + Sync {
    /// Copies `dst.len()` bytes at `addr` into `dst`.
    fn read(&self, addr: u64, dst: &mut [u8]);
    /// Copies `src` to `addr`.
    fn write(&self, addr: u64, src: &[u8]);
    /// Posts a 16-byte completion entry at `addr`, the dword with the phase tag (the
    /// last) becoming visible no earlier than the others.
    fn post_cqe(&self, addr: u64, cqe: [u32; 4]);
    /// Whether addresses are GPU addresses (rings and data in GPU memory).
    #[cfg(feature = "cuda")]
    fn gpu(&self) -> bool {
        false
    }
    /// Zeroes `len` bytes at `addr`.
    fn zero(&self, addr: u64, len: usize) {
        let zeros = [0u8; 4096];
        let mut off = 0;
        while off < len {
            let n = (len - off).min(zeros.len());
            self.write(addr + off as u64, &zeros[..n]);
            off += n;
        }
    }
}

/// Addresses are host virtual addresses of memory the engine keeps alive while the
/// commands naming it are in flight (buffers from `SoftController::alloc`).
pub(crate) struct HostMemory;

impl Memory for HostMemory {
    fn read(&self, addr: u64, dst: &mut [u8]) {
        // SAFETY: on this controller DMA addresses are host addresses of live memory
        // (see above); the engine published the bytes before ringing.
        unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, dst.as_mut_ptr(), dst.len()) };
    }

    fn write(&self, addr: u64, src: &[u8]) {
        // SAFETY: as for `read`; the engine does not touch the range until the
        // command completes.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), addr as *mut u8, src.len()) };
    }

    fn post_cqe(&self, addr: u64, cqe: [u32; 4]) {
        let e = addr as *mut u32;
        // SAFETY: a 16-byte, 16-aligned entry of a live CQ ring; the engine reads it
        // only once the phase tag in the last dword flips, which the release store
        // publishes after the others.
        unsafe {
            for (i, dw) in cqe.iter().enumerate().take(3) {
                std::ptr::write_volatile(e.add(i), *dw);
            }
            std::sync::atomic::AtomicU32::from_ptr(e.add(3)).store(cqe[3], std::sync::atomic::Ordering::Release);
        }
    }
}
