// SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note OR MIT

//! homi ioctl ABI, version [`ABI_MAJOR`].[`ABI_MINOR`].
//!
//! This file is compiled twice: by the kernel module (`kmod/homi_main.rs` includes it
//! with `#[path]`) and by the `homi-uapi` crate for user space. It may use `core` only.
//!
//! Compatibility rules: a change that user space built against an older minor version
//! could notice is a major bump; adding an ioctl or using a reserved field with
//! "zero means old behaviour" semantics is a minor bump. Structs carry explicit
//! padding and reserved fields, all of which must be zero on input.

/// The ioctl type byte of `/dev/homi` (`0xB9` is unassigned in
/// `Documentation/userspace-api/ioctl/ioctl-number.rst`).
pub const IOCTL_TYPE: u32 = 0xB9;

/// ABI major version: bumped on incompatible changes.
pub const ABI_MAJOR: u32 = 0;
/// ABI minor version: bumped on compatible additions.
pub const ABI_MINOR: u32 = 1;

/// Name of the misc device node, under `/dev`.
pub const DEVICE_NAME: &str = "homi";

const IOC_NRBITS: u32 = 8;
const IOC_TYPEBITS: u32 = 8;
const IOC_SIZEBITS: u32 = 14;
const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = IOC_NRSHIFT + IOC_NRBITS;
const IOC_SIZESHIFT: u32 = IOC_TYPESHIFT + IOC_TYPEBITS;
const IOC_DIRSHIFT: u32 = IOC_SIZESHIFT + IOC_SIZEBITS;
const IOC_READ: u32 = 2;

/// Encodes an ioctl number the way the generic `_IOC()` macro does (x86, arm64,
/// riscv). Both sides check the result against their own encoders.
const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    assert!(size < (1 << IOC_SIZEBITS));
    (dir << IOC_DIRSHIFT)
        | (IOCTL_TYPE << IOC_TYPESHIFT)
        | (nr << IOC_NRSHIFT)
        | ((size as u32) << IOC_SIZESHIFT)
}

/// Reply of [`HOMI_IOCTL_VERSION`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HomiVersion {
    /// [`ABI_MAJOR`] of the running module.
    pub abi_major: u32,
    /// [`ABI_MINOR`] of the running module.
    pub abi_minor: u32,
    /// Feature bits (`HOMI_FEAT_*`) this module supports.
    pub features: u64,
}

/// `_IOR(0xB9, 0x00, struct homi_version)`: the module's ABI version and features.
///
/// Needs no attached controller and no capability.
pub const HOMI_IOCTL_VERSION: u32 = ioc(IOC_READ, 0x00, core::mem::size_of::<HomiVersion>());
