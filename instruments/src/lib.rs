//! Test instruments for homi: controllers that serve homi's ring layout without an
//! NVMe device, so the engines can be tested and measured where none exists.
//!
//! **None of this is a device.** Results measured against these instruments measure
//! the engines, never storage.
//!
//! - [`soft`]: a software controller, a host thread serving queues in host memory.

pub mod soft;

pub use soft::{Fault, SoftConfig, SoftController};
