// SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note OR MIT

//! The homi ioctl ABI for user space.
//!
//! The definitions live in `src/abi.rs`, a plain `core`-only file that the kernel module
//! compiles too (`#[path]` include from `kmod/`), so the ABI is written exactly once.

#![no_std]

#[path = "abi.rs"]
mod abi;

pub use abi::*;
