//! homi: NVMe I/O queue pairs that user space and GPUs drive beside the kernel's own
//! nvme driver, on the same OS-managed controller.
//!
//! This crate talks to the `homi` kernel module through `/dev/homi`. The ioctl ABI is
//! the [`homi_uapi`] crate, which the module compiles from the same source.

mod device;
mod error;
pub(crate) mod sys;

pub use device::HomiDevice;
pub use error::{Error, Result};
pub use homi_uapi as uapi;
