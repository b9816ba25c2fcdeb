//! The library's error type.

use std::path::PathBuf;

use crate::command::Status;
use crate::filemap::MapState;

/// Why the module refused to map a file: its errno, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapRefusal {
    /// `EXDEV`: the file lives on another block device.
    #[error(
        "it is on {device}, not on a namespace of {controller} (files on other devices and device-mapper, md or loop stacks are refused)"
    )]
    OtherDevice {
        /// The file's block device (`DEVNAME` in sysfs), or its `major:minor`.
        device: String,
        /// The attached controller, `nvmeX`.
        controller: String,
    },
    /// `ETXTBSY`: an XFS file whose blocks another file shares.
    #[error("it shares blocks with another file (reflink or dedupe); a write to either would move them (unshare it: cp --reflink=never)")]
    SharedBlocks,
    /// `EOPNOTSUPP` for a writable map.
    #[error("writable maps need XFS (ext4 maps are read-only), and a file system that homi can keep the map true on")]
    WriteUnsupported,
    /// `EOPNOTSUPP` for a read-only map.
    #[error("its file system cannot keep the map true (homi maps files on XFS, and on ext4 without data journalling)")]
    Unsupported,
    /// `EINVAL`.
    #[error("its data is encrypted, verity-protected, DAX, inline, compressed or not aligned to the namespace's blocks, or the request is malformed (an offset not a multiple of 4096; on ext4, an fd not opened read-only); the kernel log names which")]
    Unmappable,
    /// `EAGAIN`, after retries.
    #[error("it is open for writing elsewhere (ext4 maps need no writer) or its layout kept changing while being mapped; try again")]
    Busy,
    /// `EBADF`.
    #[error("not a regular file open for reading (and writing, for a writable map)")]
    BadFile,
}

/// Errors returned by this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Opening a device node failed.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The node that was opened.
        path: PathBuf,
        /// What the kernel answered.
        source: std::io::Error,
    },
    /// An ioctl on `/dev/homi` failed.
    #[error("{op} failed: {source}")]
    Ioctl {
        /// The ioctl, by name.
        op: &'static str,
        /// What the module answered.
        source: nix::Error,
    },
    /// Mapping part of `/dev/homi` failed.
    #[error("mmap of {what} failed: {source}")]
    Mmap {
        /// What was being mapped.
        what: &'static str,
        /// What the kernel answered.
        source: nix::Error,
    },
    /// The module speaks an ABI this library does not: another major version, or, while
    /// the major version is 0, another minor one.
    #[error(
        "homi module ABI {module_major}.{module_minor} is incompatible with this library's {lib_major}.{lib_minor}"
    )]
    AbiMismatch {
        /// The module's major version.
        module_major: u32,
        /// The module's minor version.
        module_minor: u32,
        /// This library's major version.
        lib_major: u32,
        /// This library's minor version.
        lib_minor: u32,
    },
    /// The memory lies where the controller cannot reach it: P2PDMA finds no
    /// peer-to-peer path between its provider and the controller (`EXDEV`).
    #[error("the controller cannot reach this memory (no peer-to-peer DMA path)")]
    Unreachable,
    /// The controller has shadow doorbells (Doorbell Buffer Config) on, which a stock
    /// nvme-pci keeps private: MMIO-only queues cannot work.
    #[error("shadow doorbells (NVMe Doorbell Buffer Config) are active on this controller; a stock kernel cannot give homi queues on it (boot QEMU with dbcs=off, or use the user-queue patch)")]
    ShadowDoorbells,
    /// Every qid the controller granted is used by the driver or already reserved.
    #[error("no spare queues: the nvme driver and homi hold every I/O queue the controller granted")]
    NoSpareQueues,
    /// The controller is resetting or otherwise not live; try again.
    #[error("the controller is not live (resetting?)")]
    NotLive,
    /// A controller reset destroyed the queue; in-flight commands are lost.
    #[error("the controller was reset (generation {old} -> {new}); rearm or recreate the queue")]
    Reset {
        /// The generation the queue lived in.
        old: u64,
        /// The controller's generation now.
        new: u64,
    },
    /// The controller left its driver; the homi file is dead.
    #[error("the controller was unbound from its driver")]
    Gone,
    /// The command completed with an error status.
    #[error("command failed: {0}")]
    Nvme(Status),
    /// No completion arrived in time.
    #[error("no completion after {0:?}")]
    Timeout(std::time::Duration),
    /// The submission queue has no free slot.
    #[error("submission queue full")]
    QueueFull,
    /// An argument does not fit what the device or the buffer allows.
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// A file-system call failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// What the kernel answered.
        source: std::io::Error,
    },
    /// The module refused to map a file ([`Controller::map_file`](crate::Controller::map_file)).
    #[error("cannot map {file}: {reason}")]
    MapRefused {
        /// The file, by path where it can be found.
        file: String,
        /// Why.
        reason: MapRefusal,
    },
    /// The file map's lease broke ([`MapState::Revoked`]: unmap it, which acknowledges,
    /// and map again) or the module fenced its holder ([`MapState::Fenced`]: this
    /// file's queue pairs are gone too).
    #[error("the file map was {state}; unmap it and map the file again")]
    MapRevoked {
        /// The map's state when the I/O was refused or finished.
        state: MapState,
    },
    /// A write would land in a hole or an unwritten extent, which homi never writes
    /// (allocating blocks is the file system's job).
    #[error("file offset {offset} is in a hole or an unwritten extent: homi writes only into mapped extents")]
    NotMapped {
        /// The first byte of the range that is not mapped.
        offset: u64,
    },
    /// The I/O range lies outside what the file map covers.
    #[error("bytes {offset}..+{len} are outside the file map")]
    OutsideMap {
        /// First byte asked for.
        offset: u64,
        /// Bytes asked for.
        len: u64,
    },
    /// A CUDA call failed (feature `cuda`).
    #[cfg(feature = "cuda")]
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
}

/// Short for `std::result::Result<T, homi::Error>`.
pub type Result<T> = std::result::Result<T, Error>;
