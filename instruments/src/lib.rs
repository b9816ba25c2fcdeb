//! Test instruments for homi: controllers that serve homi's ring layout without an
//! NVMe device, so the engines can be tested and measured where none exists.
//!
//! **None of this is a device.** Results measured against these instruments measure
//! the engines, never storage.
//!
//! - [`soft`]: a software controller, a host thread serving queues in host memory
//!   (for CPU queue pairs, and for GPU kernels through host memory mapped into the
//!   GPU: `soft_gpu`, feature `cuda`);
//! - `gpu_ctrl` (feature `cuda`): a GPU-resident controller, one warp per queue
//!   serving rings in GPU memory, in null mode (the device engine's ceiling) or
//!   pattern mode (data checked);
//! - `gpu_file` (feature `cuda`): GPU threads reading file offsets through a file map
//!   against the GPU-resident controller, with the commands and data they must give.

#[cfg(feature = "cuda")]
pub mod gpu_ctrl;
#[cfg(feature = "cuda")]
pub mod gpu_file;
#[cfg(feature = "cuda")]
pub mod gpu_work;
pub mod soft;
#[cfg(feature = "cuda")]
pub mod soft_gpu;
mod soft_memory;

pub use soft::{Fault, SoftConfig, SoftController};

/// A deterministic byte pattern for `len` bytes, different for each `seed`: what the
/// host checks write and expect back (an xorshift stream).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Every CUDA program of the instruments and the device engine, as compiled at run
/// time, by name: for checks that they build.
#[cfg(feature = "cuda")]
pub fn cuda_sources() -> Vec<(&'static str, String)> {
    vec![
        ("cuda/gpu_ctrl.cu", gpu_ctrl::source()),
        ("cuda/workload.cu (with homi.cuh)", gpu_work::source()),
        ("cuda/file_read.cu (with homi.cuh)", gpu_file::source()),
    ]
}
