//! An open `/dev/homi`.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use homi_uapi::{HomiVersion, ABI_MAJOR, ABI_MINOR};

use crate::{sys, Error, Result};

/// An open file of the homi misc device.
#[derive(Debug)]
pub struct HomiDevice {
    fd: File,
}

impl HomiDevice {
    /// The default device node.
    pub fn default_path() -> PathBuf {
        Path::new("/dev").join(homi_uapi::DEVICE_NAME)
    }

    /// Opens `/dev/homi` and checks that the module speaks a compatible ABI.
    pub fn open() -> Result<Self> {
        Self::open_path(&Self::default_path())
    }

    /// Opens the homi device at `path` and checks the module's ABI version.
    pub fn open_path(path: &Path) -> Result<Self> {
        let fd = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| Error::Open { path: path.to_owned(), source })?;
        let dev = Self { fd };
        let v = dev.version()?;
        // Before 1.0 every minor version may be incompatible (see the ABI's rules).
        if v.abi_major != ABI_MAJOR || (ABI_MAJOR == 0 && v.abi_minor != ABI_MINOR) {
            return Err(Error::AbiMismatch {
                module_major: v.abi_major,
                module_minor: v.abi_minor,
                lib_major: ABI_MAJOR,
                lib_minor: ABI_MINOR,
            });
        }
        tracing::debug!(abi_major = v.abi_major, abi_minor = v.abi_minor, "opened {}", path.display());
        Ok(dev)
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.fd
    }

    /// Every queue pair held through homi, module-wide, with the process that holds it.
    /// Needs `CAP_SYS_RAWIO`.
    pub fn list_qpairs(&self) -> Result<Vec<homi_uapi::HomiQpairEntry>> {
        let mut entries = Vec::new();
        loop {
            let mut l =
                homi_uapi::HomiList { entries: entries.as_mut_ptr() as u64, capacity: entries.len() as u32, count: 0 };
            // SAFETY: the fd is open; `l` names `capacity` writable entries.
            unsafe { crate::sys::homi_list_qpairs(self.fd.as_raw_fd(), &mut l) }
                .map_err(|source| Error::Ioctl { op: "HOMI_IOCTL_LIST_QPAIRS", source })?;
            if (l.count as usize) <= entries.len() {
                entries.truncate(l.count as usize);
                return Ok(entries);
            }
            // More appeared than there was room for: grow and ask again.
            entries.resize(l.count as usize + 8, homi_uapi::HomiQpairEntry::default());
        }
    }

    /// Asks the module for its ABI version and feature bits.
    pub fn version(&self) -> Result<HomiVersion> {
        let mut v = HomiVersion::default();
        // SAFETY: the fd is open for the life of `self`, and `v` is a valid, writable
        // `HomiVersion`, which is what this ioctl writes.
        unsafe { sys::homi_version(self.fd.as_raw_fd(), &mut v) }
            .map_err(|source| Error::Ioctl { op: "HOMI_IOCTL_VERSION", source })?;
        Ok(v)
    }
}
