//! The library's error type.

use std::path::PathBuf;

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
    /// The module speaks an ABI major version this library does not.
    #[error("homi module ABI {module_major}.{module_minor} is incompatible with this library's {lib_major}.x")]
    AbiMismatch {
        /// The module's major version.
        module_major: u32,
        /// The module's minor version.
        module_minor: u32,
        /// This library's major version.
        lib_major: u32,
    },
}

/// Short for `std::result::Result<T, homi::Error>`.
pub type Result<T> = std::result::Result<T, Error>;
