// SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note OR MIT

//! homi ioctl ABI, version [`ABI_MAJOR`].[`ABI_MINOR`].
//!
//! This file is compiled twice: by the kernel module (`kmod/homi_main.rs` includes it
//! with `#[path]`) and by the `homi-uapi` crate for user space. It may use `core` only.
//!
//! Compatibility rules: a change that user space built against an older minor version
//! could notice is a major bump; adding an ioctl or using a reserved field with
//! "zero means old behaviour" semantics is a minor bump. While the major version is 0,
//! as in semantic versioning, every minor bump may be incompatible, and user space
//! checks for an exact match. Structs carry explicit padding and reserved fields, all
//! of which must be zero on input: the module refuses anything else with `EINVAL`.

/// The ioctl type byte of `/dev/homi` (`0xB9` is unassigned in
/// `Documentation/userspace-api/ioctl/ioctl-number.rst`).
pub const IOCTL_TYPE: u32 = 0xB9;

/// ABI major version: bumped on incompatible changes.
pub const ABI_MAJOR: u32 = 0;
/// ABI minor version: bumped on compatible additions.
pub const ABI_MINOR: u32 = 7;

/// Name of the misc device node, under `/dev`.
pub const DEVICE_NAME: &str = "homi";

const IOC_NRBITS: u32 = 8;
const IOC_TYPEBITS: u32 = 8;
const IOC_SIZEBITS: u32 = 14;
const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = IOC_NRSHIFT + IOC_NRBITS;
const IOC_SIZESHIFT: u32 = IOC_TYPESHIFT + IOC_TYPEBITS;
const IOC_DIRSHIFT: u32 = IOC_SIZESHIFT + IOC_SIZEBITS;
const IOC_WRITE: u32 = 1;
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

/// [`HomiVersion::features`]: the module was built against an nvme-pci with user
/// queues (the `user_queues` parameter and its exported API, `qemu/patches/`), so it
/// can take reserved qids and drive queues through shadow doorbells.
pub const HOMI_FEAT_USER_QUEUES: u64 = 1 << 0;

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

/// `_IOW(0xB9, 0x01, struct homi_attach)`: binds this file to one NVMe controller.
///
/// The caller passes an fd of the controller's char device (`/dev/nvmeX`) opened
/// read-write, and must hold `CAP_SYS_RAWIO`. A file attaches once.
pub const HOMI_IOCTL_ATTACH: u32 = ioc(IOC_WRITE, 0x01, core::mem::size_of::<HomiAttach>());
/// `_IOR(0xB9, 0x02, struct homi_info)`: the attached controller, as homi sees it.
pub const HOMI_IOCTL_INFO: u32 = ioc(IOC_READ, 0x02, core::mem::size_of::<HomiInfo>());
/// `_IOWR(0xB9, 0x03, struct homi_qpair)`: reserves a spare qid and creates a polled
/// I/O queue pair on it.
pub const HOMI_IOCTL_CREATE_QPAIR: u32 = ioc(
    IOC_READ | IOC_WRITE,
    0x03,
    core::mem::size_of::<HomiQpair>(),
);
/// `_IOW(0xB9, 0x04, struct homi_id)`: deletes a queue pair (SQ, then CQ) and frees
/// its qid.
pub const HOMI_IOCTL_DESTROY_QPAIR: u32 = ioc(IOC_WRITE, 0x04, core::mem::size_of::<HomiId>());
/// `_IOWR(0xB9, 0x05, struct homi_qpair)`: recreates a queue pair that a controller
/// reset destroyed, on the same qid and rings, under the new generation.
pub const HOMI_IOCTL_REARM_QPAIR: u32 = ioc(
    IOC_READ | IOC_WRITE,
    0x05,
    core::mem::size_of::<HomiQpair>(),
);
/// `_IOWR(0xB9, 0x06, struct homi_alloc)`: allocates module-owned DMA memory,
/// physically contiguous as the controller sees it.
pub const HOMI_IOCTL_ALLOC: u32 = ioc(
    IOC_READ | IOC_WRITE,
    0x06,
    core::mem::size_of::<HomiAlloc>(),
);
/// `_IOW(0xB9, 0x07, struct homi_id)`: frees memory from [`HOMI_IOCTL_ALLOC`].
pub const HOMI_IOCTL_FREE: u32 = ioc(IOC_WRITE, 0x07, core::mem::size_of::<HomiId>());
/// `_IOWR(0xB9, 0x08, struct homi_register)`: pins user memory and maps it for the
/// controller, returning one DMA address per page.
pub const HOMI_IOCTL_REGISTER: u32 = ioc(
    IOC_READ | IOC_WRITE,
    0x08,
    core::mem::size_of::<HomiRegister>(),
);
/// `_IOW(0xB9, 0x09, struct homi_id)`: unmaps and unpins a registration.
pub const HOMI_IOCTL_UNREGISTER: u32 = ioc(IOC_WRITE, 0x09, core::mem::size_of::<HomiId>());

/// `_IOWR(0xB9, 0x0a, struct homi_list)`: every queue pair held through homi, module-wide,
/// with the process that attached it. Needs `CAP_SYS_RAWIO`; no attach needed.
pub const HOMI_IOCTL_LIST_QPAIRS: u32 =
    ioc(IOC_READ | IOC_WRITE, 0x0a, core::mem::size_of::<HomiList>());

/// Input of [`HOMI_IOCTL_ATTACH`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HomiAttach {
    /// An fd of `/dev/nvmeX`, opened read-write.
    pub nvme_fd: i32,
    /// Must be zero.
    pub flags: u32,
}

/// The most namespaces [`HomiInfo`] lists.
pub const HOMI_MAX_NAMESPACES: usize = 16;

/// One namespace in [`HomiInfo`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HomiNamespace {
    /// Namespace ID.
    pub nsid: u32,
    /// log2 of the LBA data size of the namespace's current format.
    pub lba_shift: u32,
    /// Size in logical blocks (NSZE).
    pub blocks: u64,
    /// Metadata bytes per LBA of the current format.
    pub meta_size: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

/// [`HomiInfo::flags`]: the controller is live (not resetting, not being removed).
pub const HOMI_INFO_LIVE: u32 = 1 << 0;
/// [`HomiInfo::flags`]: the controller reads doorbells from nvme-pci's shadow doorbell
/// buffer (Doorbell Buffer Config). homi queues then work only on qids nvme-pci
/// reserved ([`HOMI_INFO_USER_QUEUES`]), through their shadow slots.
pub const HOMI_INFO_SHADOW_DOORBELLS: u32 = 1 << 1;
/// [`HomiInfo::flags`]: the controller has a Controller Memory Buffer.
pub const HOMI_INFO_CMB: u32 = 1 << 2;
/// [`HomiInfo::flags`]: the controller has more namespaces than [`HomiInfo`] lists.
pub const HOMI_INFO_MORE_NAMESPACES: u32 = 1 << 3;
/// [`HomiInfo::flags`]: nvme-pci reserved user queues (`nvme.user_queues=N`); homi
/// takes qids from that range only.
pub const HOMI_INFO_USER_QUEUES: u32 = 1 << 4;

/// [`HomiInfo::flags`]: the controller's DMA goes through a translating IOMMU. Without
/// one, a queue holder can aim the controller at any physical address.
pub const HOMI_INFO_IOMMU: u32 = 1 << 5;
/// [`HomiInfo::flags`]: the doorbell page a queue of this controller maps also holds
/// the admin queue's or the kernel's I/O queues' doorbells (qids below 512 with 4-byte
/// doorbells), so a holder can ring them.
pub const HOMI_INFO_SHARED_DOORBELLS: u32 = 1 << 6;

/// Reply of [`HOMI_IOCTL_INFO`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HomiInfo {
    /// The `X` of `/dev/nvmeX`.
    pub instance: u32,
    /// `HOMI_INFO_*` bits.
    pub flags: u32,
    /// I/O queues the kernel's nvme driver uses (qids `1..=driver_io_queues`).
    pub driver_io_queues: u32,
    /// I/O queues the controller granted (Get Features, Number of Queues).
    pub granted_io_queues: u32,
    /// The lowest qid homi may reserve: the first of nvme-pci's user queues with
    /// [`HOMI_INFO_USER_QUEUES`], else `driver_io_queues + 1`.
    pub first_spare_qid: u32,
    /// Qids of that range not reserved by anyone right now.
    pub spare_free: u32,
    /// Largest queue depth (CAP.MQES + 1).
    pub max_queue_entries: u32,
    /// Doorbell stride in bytes (`4 << CAP.DSTRD`).
    pub doorbell_stride: u32,
    /// Smallest memory page size in bytes (`4096 << CAP.MPSMIN`).
    pub min_page_size: u32,
    /// Largest transfer in bytes that the driver allows (from MDTS).
    pub max_transfer: u32,
    /// The CAP register.
    pub cap: u64,
    /// Controller generation: homi's own count of resets it saw begin on this
    /// controller since it first attached to it (never the driver's writable
    /// `reset_count`).
    pub generation: u64,
    /// Pages pinned by homi registrations, module-wide.
    pub pinned_pages: u64,
    /// Bytes of DMA memory homi holds (rings and buffers), module-wide.
    pub dma_bytes: u64,
    /// Queue pairs held through homi, module-wide.
    pub qpairs: u32,
    /// Entries of `namespaces` that are filled.
    pub nr_namespaces: u32,
    /// Bytes homi keeps in quarantine, module-wide: memory that was freed, unregistered
    /// or closed while a queue that could still reach it existed on a controller. It
    /// is released once those queues are deleted or the controller is reset.
    pub quarantined_bytes: u64,
    /// Calls homi refused for bad input since it loaded, module-wide (they are logged
    /// rate-limited).
    pub refused_calls: u64,
    /// Active namespaces, lowest nsid first.
    pub namespaces: [HomiNamespace; HOMI_MAX_NAMESPACES],
}

/// [`HomiQpair::flags`] (out): the queue uses shadow doorbells.
pub const HOMI_QPAIR_SHADOW: u32 = 1 << 0;
/// [`HomiQpair::flags`] (in and out, create only): the SQ ring lives in memory the
/// caller holds, [`HomiQpair::sq_memory`] at [`HomiQpair::sq_memory_offset`], rather
/// than in module memory. Rearm keeps it there.
pub const HOMI_QPAIR_SQ_IN_MEMORY: u32 = 1 << 8;
/// [`HomiQpair::flags`] (in and out, create only): the CQ ring lives in memory the
/// caller holds, [`HomiQpair::cq_memory`] at [`HomiQpair::cq_memory_offset`].
pub const HOMI_QPAIR_CQ_IN_MEMORY: u32 = 1 << 9;

/// Input and reply of [`HOMI_IOCTL_CREATE_QPAIR`] and [`HOMI_IOCTL_REARM_QPAIR`].
///
/// Offsets are for `mmap(2)` of `/dev/homi` with `MAP_SHARED`; each mapping covers
/// exactly one ring, the doorbell page, or a shadow page.
///
/// Ring placement: by default both rings are module memory the caller maps. With
/// [`HOMI_QPAIR_SQ_IN_MEMORY`] (or `_CQ_`) the ring is placed in a buffer
/// ([`HOMI_IOCTL_ALLOC`]) or registration ([`HOMI_IOCTL_REGISTER`],
/// [`HOMI_IOCTL_REGISTER_DMABUF`]) of the same file, at a 4096-aligned offset where the
/// ring's pages are contiguous for the controller; the module zeroes nothing there and
/// maps nothing (`sq_offset` or `cq_offset` is 0). That memory cannot be freed or
/// unregistered (`EBUSY`) while the queue pair exists. A ring that does not fit, or
/// whose pages are not contiguous, is refused with `EINVAL`.
///
/// With [`HOMI_QPAIR_SHADOW`] the controller reads the queue's SQ tail and CQ head
/// from the shadow doorbell page, and the doorbell protocol of NVMe's Doorbell Buffer
/// Config applies: store the new value in the shadow slot, then read the event index
/// slot, and write the MMIO doorbell only if the value passed the event index.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HomiQpair {
    /// In: entries per queue, `2..=max_queue_entries` (create only).
    pub depth: u32,
    /// In: must be zero. Out: `HOMI_QPAIR_*` bits.
    pub flags: u32,
    /// Out (in, for rearm): the queue ID.
    pub qid: u32,
    /// Out: byte offset of this queue's SQ tail doorbell in the doorbell page; the CQ
    /// head doorbell is `doorbell_stride` further.
    pub sq_doorbell: u32,
    /// Out: bytes of the SQ mapping (`depth * 64`, page-rounded).
    pub sq_size: u64,
    /// Out: bytes of the CQ mapping (`depth * 16`, page-rounded).
    pub cq_size: u64,
    /// Out: mmap offset of the SQ ring.
    pub sq_offset: u64,
    /// Out: mmap offset of the CQ ring.
    pub cq_offset: u64,
    /// Out: mmap offset of the doorbell page (one page, uncached). Rearm hands out a
    /// new one: the old mapping stays revoked.
    pub doorbell_offset: u64,
    /// Out: the controller generation the queue lives in.
    pub generation: u64,
    /// Out, with [`HOMI_QPAIR_SHADOW`]: mmap offset of the shadow doorbell page
    /// (read-write), else 0. Rearm hands out a new one.
    pub shadow_offset: u64,
    /// Out, with [`HOMI_QPAIR_SHADOW`]: mmap offset of the event index page
    /// (read-only), else 0. Rearm hands out a new one.
    pub eventidx_offset: u64,
    /// Out, with [`HOMI_QPAIR_SHADOW`]: byte offset of the SQ tail slot in both
    /// shadow pages.
    pub shadow_sq: u32,
    /// Out, with [`HOMI_QPAIR_SHADOW`]: byte offset of the CQ head slot in both
    /// shadow pages.
    pub shadow_cq: u32,
    /// Out: this queue's slot in [`HomiStatus::queue_state`].
    pub status_slot: u32,
    /// In, with [`HOMI_QPAIR_SQ_IN_MEMORY`] (create only): the buffer or registration id
    /// that holds the SQ ring; else zero. Out: as given.
    pub sq_memory: u32,
    /// In, with [`HOMI_QPAIR_CQ_IN_MEMORY`] (create only): the buffer or registration id
    /// that holds the CQ ring; else zero. Out: as given.
    pub cq_memory: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// In, with [`HOMI_QPAIR_SQ_IN_MEMORY`]: byte offset of the SQ ring in `sq_memory`,
    /// a multiple of 4096; else zero.
    pub sq_memory_offset: u64,
    /// In, with [`HOMI_QPAIR_CQ_IN_MEMORY`]: byte offset of the CQ ring in `cq_memory`,
    /// a multiple of 4096; else zero.
    pub cq_memory_offset: u64,
}

/// Input of the ioctls that name one object.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HomiId {
    /// The qid or buffer/registration id.
    pub id: u32,
    /// Must be zero.
    pub flags: u32,
}

/// Input and reply of [`HOMI_IOCTL_ALLOC`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HomiAlloc {
    /// In: bytes, a multiple of 4096, at most [`HOMI_ALLOC_MAX`].
    pub size: u64,
    /// In: must be zero.
    pub flags: u32,
    /// Out: the buffer id, for [`HOMI_IOCTL_FREE`].
    pub id: u32,
    /// Out: mmap offset of the buffer.
    pub offset: u64,
    /// Out: the controller-visible address of the first byte; the buffer is contiguous.
    pub dma_addr: u64,
}

/// Largest single [`HOMI_IOCTL_ALLOC`].
pub const HOMI_ALLOC_MAX: u64 = 4 << 20;

/// Largest single [`HOMI_IOCTL_REGISTER`].
pub const HOMI_REGISTER_MAX: u64 = 16 << 30;

/// Input and reply of [`HOMI_IOCTL_REGISTER`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HomiRegister {
    /// In: user address, 4096-aligned.
    pub addr: u64,
    /// In: bytes, a non-zero multiple of 4096, at most [`HOMI_REGISTER_MAX`].
    pub len: u64,
    /// In: user pointer to an array of `len / 4096` u64s, filled with each page's
    /// controller-visible address.
    pub dma_addrs: u64,
    /// In: must be zero.
    pub flags: u32,
    /// Out: the registration id, for [`HOMI_IOCTL_UNREGISTER`].
    pub id: u32,
}

/// `_IOWR(0xB9, 0x0b, struct homi_register_dmabuf)`: imports a range of a dma-buf for
/// the controller (GPU memory, a udmabuf, another device's memory) and returns one DMA
/// address per page, as [`HOMI_IOCTL_REGISTER`] does. [`HOMI_IOCTL_UNREGISTER`] lets
/// it go.
///
/// The module attaches the dma-buf to the controller's own PCI device, dynamically and
/// peer-to-peer capable, pins it and maps it. It refuses with `EXDEV` a buffer the
/// exporter can only place where the controller cannot reach it (P2PDMA says the
/// topology does not allow it), and with `EINVAL` a mapping whose pages are not
/// 4096-aligned.
///
/// If the exporter still moves the buffer (`move_notify`), the module destroys every
/// queue pair of the file that could reach it, as a reset would (their status slots
/// turn [`HOMI_QUEUE_DEAD`]), and lets the mapping go after they are deleted.
pub const HOMI_IOCTL_REGISTER_DMABUF: u32 = ioc(
    IOC_READ | IOC_WRITE,
    0x0b,
    core::mem::size_of::<HomiRegisterDmabuf>(),
);

/// Input and reply of [`HOMI_IOCTL_REGISTER_DMABUF`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HomiRegisterDmabuf {
    /// In: a dma-buf fd.
    pub fd: i32,
    /// In: must be zero.
    pub flags: u32,
    /// In: byte offset into the dma-buf, a multiple of 4096.
    pub offset: u64,
    /// In: bytes, a non-zero multiple of 4096, at most [`HOMI_REGISTER_MAX`], with
    /// `offset + len` inside the dma-buf.
    pub len: u64,
    /// In: user pointer to an array of `len / 4096` u64s, filled with each page's
    /// controller-visible address.
    pub dma_addrs: u64,
    /// Out: the registration id, for [`HOMI_IOCTL_UNREGISTER`] and ring placement
    /// ([`HomiQpair::sq_memory`]).
    pub id: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

/// Input and reply of [`HOMI_IOCTL_LIST_QPAIRS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HomiList {
    /// In: user pointer to an array of `capacity` [`HomiQpairEntry`].
    pub entries: u64,
    /// In: entries the array holds.
    pub capacity: u32,
    /// Out: queue pairs that exist; only the first `capacity` are written.
    pub count: u32,
}

/// One queue pair in [`HOMI_IOCTL_LIST_QPAIRS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HomiQpairEntry {
    /// Process ID (thread-group ID) of the process that attached the file holding the
    /// queue, as that process saw it when it attached.
    pub pid: u32,
    /// The `X` of `/dev/nvmeX`.
    pub instance: u32,
    /// Queue ID.
    pub qid: u32,
    /// Entries per ring.
    pub depth: u32,
    /// `HOMI_QUEUE_LIVE` or `HOMI_QUEUE_DEAD`.
    pub state: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

/// `_IOWR(0xB9, 0x0c, struct homi_map_file)`: maps a byte range of a regular file to
/// the LBAs that hold it, under a lease that keeps the map true until it is let go.
///
/// The file's file system must live on a namespace (or a partition of one) of the
/// attached controller, directly: device-mapper, md and loop stacks are refused
/// (`EXDEV`), as are files on other devices. Also refused, each with one log line:
/// encrypted, verity, DAX, inline or otherwise unaligned data (`EINVAL`), files that
/// share blocks (XFS reflink, `ETXTBSY`), and file systems for which homi cannot keep
/// the map true (`EOPNOTSUPP`).
///
/// How the map is kept true, per file system:
/// - **XFS** (any file system with the pNFS block export operations): an in-kernel
///   layout lease. Truncate, hole punch, fallocate, reflink onto the file and every
///   write break it. Extents come from the export `map_blocks` operation, which first
///   writes back dirty pages and drops the page cache of the file.
/// - **ext4** (which breaks no layout leases outside DAX): writes to the inode are
///   denied for the life of the map, as for a running executable. Every open for
///   writing and every truncate (`O_RDONLY|O_TRUNC` included) fails with `ETXTBSY`
///   until the map goes, so nothing can change the layout; there is nothing to revoke.
///   The fd must be opened read-only (`EINVAL`), nobody may have the file open for
///   writing (`EAGAIN`), and maps are read-only ([`HOMI_MAP_WRITE`] is refused with
///   `EOPNOTSUPP`). Data journalling (`data=journal`, from the mount or the superblock's
///   defaults, or `chattr +j`) is refused (`EOPNOTSUPP`). Extents come from `bmap`,
///   which does not tell unwritten blocks from holes: both are reported as
///   [`HOMI_EXTENT_HOLE`] (both read as zeros); a hole where SEEK_DATA finds data
///   fails the call (`EIO`). Not covered: raw writes to the block device.
///
/// The fd's access mode is checked: reading needs it open for reading, and
/// [`HOMI_MAP_WRITE`] open for reading and writing (`EBADF`). On XFS, writes through
/// an existing shared writable mmap of the file do not break the lease (XFS does not
/// break layouts in the page fault path): homi then reads what is on the device.
///
/// When the lease breaks, the module sets the map's slot in [`HomiMapStatus`] to
/// [`HOMI_MAP_REVOKED`] and the file system operation waits. The holder stops issuing
/// I/O on the map, waits for what it has in flight, and acknowledges with
/// [`HOMI_IOCTL_UNMAP_FILE`]. A holder that does not acknowledge within the module
/// parameter `map_revoke_ms` loses every queue pair of this file (deleted on the
/// controller, which ends their commands, as a reset would: their status slots turn
/// [`HOMI_QUEUE_DEAD`]); the map turns [`HOMI_MAP_FENCED`] and the lease is released.
///
/// The map is a coherence contract, not a protection: a queue holder can still send
/// any command to any LBA (see the security model).
pub const HOMI_IOCTL_MAP_FILE: u32 = ioc(
    IOC_READ | IOC_WRITE,
    0x0c,
    core::mem::size_of::<HomiMapFile>(),
);
/// `_IOW(0xB9, 0x0d, struct homi_id)`: lets a file map go and releases its lease; for a
/// revoked map, this is the holder's acknowledgement that none of its I/O on the map
/// is in flight. A writable map's range is dropped from the page cache first, so the
/// kernel reads what homi wrote.
pub const HOMI_IOCTL_UNMAP_FILE: u32 = ioc(IOC_WRITE, 0x0d, core::mem::size_of::<HomiId>());

/// [`HomiMapFile::flags`] (in): the caller will write through the map. Only mapped
/// extents may be written; holes and unwritten extents never are.
pub const HOMI_MAP_WRITE: u32 = 1 << 0;
/// [`HomiMapFile::flags`] (out): the map is kept by a layout lease (XFS).
pub const HOMI_MAP_LAYOUT_LEASE: u32 = 1 << 8;
/// [`HomiMapFile::flags`] (out): the map is kept by denying writes to the file (ext4).
pub const HOMI_MAP_DENY_WRITE: u32 = 1 << 9;

/// The most extents one [`HOMI_IOCTL_MAP_FILE`] returns.
pub const HOMI_MAP_MAX_EXTENTS: u32 = 1 << 20;

/// Input and reply of [`HOMI_IOCTL_MAP_FILE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HomiMapFile {
    /// In: an fd of a regular file.
    pub fd: i32,
    /// In: [`HOMI_MAP_WRITE`] or zero. Out: also `HOMI_MAP_*_LEASE`.
    pub flags: u32,
    /// In: byte offset into the file, a multiple of 4096.
    pub offset: u64,
    /// In: bytes from `offset`, non-zero. Out: bytes the extents cover, clipped to the
    /// end of the file rounded up to its block size, and shorter where `capacity`
    /// extents did not reach further (map the rest with another call).
    pub len: u64,
    /// In: user pointer to an array of `capacity` [`HomiExtent`].
    pub extents: u64,
    /// In: entries the array holds, `1..=HOMI_MAP_MAX_EXTENTS`.
    pub capacity: u32,
    /// Out: extents written, in file order, with no gaps between them.
    pub count: u32,
    /// Out: the map id, for [`HOMI_IOCTL_UNMAP_FILE`].
    pub id: u32,
    /// Out: this map's slot in [`HomiMapStatus::map_state`].
    pub status_slot: u32,
    /// Out: the file's size in bytes when it was mapped.
    pub file_size: u64,
    /// Out: the file system's block size in bytes.
    pub block_size: u32,
    /// Out: the namespace that holds the file.
    pub nsid: u32,
    /// Out: log2 of that namespace's LBA data size.
    pub lba_shift: u32,
    /// In: zero. Out: how long, in ms, the holder has to acknowledge a revocation of
    /// this map before it is fenced (the module parameter `map_revoke_ms`).
    pub revoke_ms: u32,
}

/// [`HomiExtent::kind`]: data at `lba`.
pub const HOMI_EXTENT_MAPPED: u32 = 1;
/// [`HomiExtent::kind`]: allocated but unwritten: reads as zeros, never read from or
/// written to `lba` through homi.
pub const HOMI_EXTENT_UNWRITTEN: u32 = 2;
/// [`HomiExtent::kind`]: a hole: reads as zeros; `lba` is 0.
pub const HOMI_EXTENT_HOLE: u32 = 3;

/// One extent of a [`HOMI_IOCTL_MAP_FILE`] reply.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HomiExtent {
    /// Byte offset in the file.
    pub file_offset: u64,
    /// First LBA on the namespace, partition offset added (0 for a hole).
    pub lba: u64,
    /// Length in the namespace's logical blocks.
    pub blocks: u64,
    /// The namespace.
    pub nsid: u32,
    /// `HOMI_EXTENT_*`.
    pub kind: u32,
}

/// The mmap offset of the file's map status page ([`HomiMapStatus`], read-only, one
/// page). It can be mapped before attaching and stays valid until the file is closed.
pub const HOMI_MAP_STATUS_OFFSET: u64 = 4096;
/// Slots in [`HomiMapStatus::map_state`]: also the most file maps one file holds.
pub const HOMI_MAP_SLOTS: usize = 1024;
/// [`HomiMapStatus::map_state`]: no map in this slot.
pub const HOMI_MAP_NONE: u32 = 0;
/// [`HomiMapStatus::map_state`]: the map is true; I/O on it may go on.
pub const HOMI_MAP_LIVE: u32 = 1;
/// [`HomiMapStatus::map_state`]: the lease broke: issue no more I/O on the map, wait
/// for what is in flight, then [`HOMI_IOCTL_UNMAP_FILE`].
pub const HOMI_MAP_REVOKED: u32 = 2;
/// [`HomiMapStatus::map_state`]: the holder did not acknowledge in time: this file's
/// queue pairs were destroyed and the lease released. [`HOMI_IOCTL_UNMAP_FILE`] frees
/// the slot.
pub const HOMI_MAP_FENCED: u32 = 3;

/// The read-only map status page, written by the module before a file system
/// operation that breaks a map's lease may go on. Read it with acquire loads.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HomiMapStatus {
    /// `HOMI_MAP_*` of each of this file's maps, by [`HomiMapFile::status_slot`].
    pub map_state: [u32; HOMI_MAP_SLOTS],
}

/// The mmap offset of the file's status page ([`HomiStatus`], read-only, one page).
/// It can be mapped before attaching and stays valid until the file is closed.
pub const HOMI_STATUS_OFFSET: u64 = 0;
/// Slots in [`HomiStatus::queue_state`]: also the most queue pairs one file holds.
pub const HOMI_STATUS_SLOTS: usize = 1020;
/// [`HomiStatus::queue_state`]: no queue of this file has this qid.
pub const HOMI_QUEUE_NONE: u32 = 0;
/// [`HomiStatus::queue_state`]: the queue exists on the controller.
pub const HOMI_QUEUE_LIVE: u32 = 1;
/// [`HomiStatus::queue_state`]: a reset or unbind destroyed the queue and revoked its
/// doorbell mapping. Rearm it (after a reset) or destroy it.
pub const HOMI_QUEUE_DEAD: u32 = 2;
/// [`HomiStatus::ctrl_state`]: live.
pub const HOMI_CTRL_LIVE: u32 = 1;
/// [`HomiStatus::ctrl_state`]: resetting or otherwise not live.
pub const HOMI_CTRL_NOT_LIVE: u32 = 2;
/// [`HomiStatus::ctrl_state`]: the driver let go of the controller; the file is dead.
pub const HOMI_CTRL_GONE: u32 = 3;

/// The read-only status page, written by the module, read by user space without a
/// syscall. Fields change under the reader: read them with volatile or atomic loads.
///
/// Revocation protocol: the module updates this page *before* it revokes a mapping.
/// A revoked mapping faults in a dummy page rather than killing the process, so a
/// reader that sees an unexpected completion entry must check `generation` and
/// `ctrl_state` (with acquire ordering) before trusting it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HomiStatus {
    /// Controller generation (see [`HomiInfo::generation`]).
    pub generation: u64,
    /// `HOMI_CTRL_*`.
    pub ctrl_state: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// `HOMI_QUEUE_*` of each of this file's queues, by [`HomiQpair::status_slot`].
    pub queue_state: [u32; HOMI_STATUS_SLOTS],
}

// The structs have no implicit padding: both sides copy them as bytes.
const _: () = assert!(core::mem::size_of::<HomiVersion>() == 16);
const _: () = assert!(core::mem::size_of::<HomiAttach>() == 8);
const _: () = assert!(core::mem::size_of::<HomiNamespace>() == 24);
const _: () = assert!(core::mem::size_of::<HomiInfo>() == 96 + 24 * HOMI_MAX_NAMESPACES);
const _: () = assert!(core::mem::size_of::<HomiQpair>() == 120);
const _: () = assert!(core::mem::size_of::<HomiId>() == 8);
const _: () = assert!(core::mem::size_of::<HomiAlloc>() == 32);
const _: () = assert!(core::mem::size_of::<HomiRegister>() == 32);
const _: () = assert!(core::mem::size_of::<HomiRegisterDmabuf>() == 40);
const _: () = assert!(core::mem::size_of::<HomiStatus>() == 16 + 4 * HOMI_STATUS_SLOTS);
const _: () = assert!(core::mem::size_of::<HomiStatus>() == 4096);
const _: () = assert!(core::mem::size_of::<HomiList>() == 16);
const _: () = assert!(core::mem::size_of::<HomiQpairEntry>() == 24);
const _: () = assert!(core::mem::size_of::<HomiMapFile>() == 72);
const _: () = assert!(core::mem::size_of::<HomiExtent>() == 32);
const _: () = assert!(core::mem::size_of::<HomiMapStatus>() == 4096);
