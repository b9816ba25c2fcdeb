//! Another PCI device's peer-to-peer memory, mapped into this process.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::{Error, Result};

/// Peer-to-peer memory that a device publishes through P2PDMA (a controller's CMB,
/// say), mapped by `mmap` of its `/sys/bus/pci/devices/<dev>/p2pmem/allocate` file
/// and unmapped when dropped. Register it for a controller with
/// [`Controller::register_memory`](crate::Controller::register_memory) while it lives.
#[derive(Debug)]
pub struct P2pMemory {
    ptr: *mut u8,
    len: usize,
    _file: File,
}

// SAFETY: a mapping is plain memory; users synchronise through the rings.
unsafe impl Send for P2pMemory {}
// SAFETY: as above.
unsafe impl Sync for P2pMemory {}

impl P2pMemory {
    /// Maps `len` bytes (a multiple of 4096) from the `allocate` file.
    pub fn map(allocate: &Path, len: usize) -> Result<Self> {
        if len == 0 || len % crate::PAGE != 0 {
            return Err(Error::Invalid("peer-to-peer memory: a non-zero multiple of 4096 bytes"));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(allocate)
            .map_err(|source| Error::Open { path: allocate.into(), source })?;
        // SAFETY: a fresh shared mapping that the kernel places; nothing aliases it.
        let p = unsafe {
            nix::libc::mmap(
                std::ptr::null_mut(),
                len,
                nix::libc::PROT_READ | nix::libc::PROT_WRITE,
                nix::libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == nix::libc::MAP_FAILED {
            return Err(Error::Mmap { what: "peer-to-peer memory", source: nix::Error::last() });
        }
        Ok(Self { ptr: p.cast(), len, _file: file })
    }

    /// The first byte.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: at least a page is mapped.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl Drop for P2pMemory {
    fn drop(&mut self) {
        // SAFETY: mapped in `map`, not unmapped since.
        unsafe { nix::libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// `struct udmabuf_create` of `linux/udmabuf.h`.
#[repr(C)]
struct UdmabufCreate {
    memfd: u32,
    flags: u32,
    offset: u64,
    size: u64,
}
nix::ioctl_write_ptr!(udmabuf_create, b'u', 0x42, UdmabufCreate);
const UDMABUF_FLAGS_CLOEXEC: u32 = 1;

/// A dma-buf of `len` bytes (a multiple of 4096) of fresh, zeroed host pages: a memfd
/// sealed against shrinking, exported by the kernel's udmabuf driver
/// (`CONFIG_UDMABUF`, `/dev/udmabuf`). Host memory in the form GPU memory takes, for
/// [`Controller::register_dmabuf`](crate::Controller::register_dmabuf) where no GPU is.
pub fn udmabuf(len: usize) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    if len == 0 || len % crate::PAGE != 0 {
        return Err(Error::Invalid("udmabuf: a non-zero multiple of 4096 bytes"));
    }
    let io = |op: &'static str| move |e: nix::Error| Error::Io { op, source: e.into() };
    let memfd = nix::sys::memfd::memfd_create(c"homi-udmabuf", nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING)
        .map_err(io("memfd_create"))?;
    nix::unistd::ftruncate(&memfd, len as i64).map_err(io("ftruncate"))?;
    nix::fcntl::fcntl(&memfd, nix::fcntl::FcntlArg::F_ADD_SEALS(nix::fcntl::SealFlag::F_SEAL_SHRINK))
        .map_err(io("F_ADD_SEALS"))?;
    let dev = File::open("/dev/udmabuf").map_err(|source| Error::Open { path: "/dev/udmabuf".into(), source })?;
    let req =
        UdmabufCreate { memfd: memfd.as_raw_fd() as u32, flags: UDMABUF_FLAGS_CLOEXEC, offset: 0, size: len as u64 };
    // SAFETY: `req` is a valid request; the ioctl returns a new fd.
    let fd = unsafe { udmabuf_create(dev.as_raw_fd(), &req) }.map_err(io("UDMABUF_CREATE"))?;
    // SAFETY: the ioctl handed us this new fd, which nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}
