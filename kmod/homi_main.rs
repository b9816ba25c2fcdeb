// SPDX-License-Identifier: GPL-2.0

//! homi: Host Orchestrated Multipath I/O.
//!
//! Reserves NVMe I/O queue pairs that nvme-pci does not use, creates them through the
//! driver's own admin queue, and exports them through the misc device `/dev/homi`, so
//! user space and GPUs drive the same controller as the kernel, side by side. The
//! ioctl ABI is defined once, in `uapi/src/abi.rs`, and included here as source.
//!
//! C header: [`include/linux/miscdevice.h`](srctree/include/linux/miscdevice.h)

use kernel::{
    fs::File,
    ioctl::{
        _IOR,
        _IOW,
        _IOWR, //
    },
    miscdevice::{
        MiscDevice,
        MiscDeviceOptions,
        MiscDeviceRegistration, //
    },
    mm::virt::VmaNew,
    prelude::*,
    sync::{
        Arc,
        ArcBorrow, //
    },
    transmute::{
        AsBytes,
        FromBytes, //
    },
    uaccess::UserSlice,
};

mod admin;
mod attached;
mod dma;
mod dmabuf;
mod file;
mod file_memory;
mod file_queues;
mod filemap;
mod glue;
mod lease;
mod mapping;
mod memory;
mod placement;
mod queue;
mod registry;
mod status;

#[allow(
    unreachable_pub,
    dead_code,
    reason = "the ABI file is public API in user space; the module uses part of it"
)]
#[path = "../uapi/src/abi.rs"]
mod uapi;

use core::sync::atomic::AtomicU32;

use file::FileState;
use uapi::*;

/// Queue pairs held through homi, module-wide.
pub(crate) static QPAIRS: AtomicU32 = AtomicU32::new(0);

/// A reference on this module, held by each open file and by each quarantine package:
/// `rmmod` must wait while the controller may still write memory homi owns.
///
/// The Rust misc device leaves `file_operations.owner` unset, so the VFS pins nothing
/// while a file is open; without this, `rmmod` would succeed under open files.
/// A file's reference drops at the very end of `release`, after all teardown.
pub(crate) struct ModuleRef;

/// This module's `struct module`, wherever this kernel's `module!` puts it (`Kbuild`
/// detects which).
fn this_module() -> *mut kernel::bindings::module {
    #[cfg(homi_this_module_in_metadata)]
    let m = <HomiModule as kernel::ModuleMetadata>::THIS_MODULE.as_ptr();
    #[cfg(not(homi_this_module_in_metadata))]
    let m = THIS_MODULE.as_ptr();
    m
}

impl ModuleRef {
    pub(crate) fn get() -> Result<Self> {
        // SAFETY: `this_module()` is this module, alive while its code runs.
        if unsafe { kernel::bindings::try_module_get(this_module()) } {
            Ok(Self)
        } else {
            // The module is being unloaded.
            Err(ENODEV)
        }
    }
}

impl Drop for ModuleRef {
    fn drop(&mut self) {
        // SAFETY: taken in `get`, put once, here.
        unsafe { kernel::bindings::module_put(this_module()) };
    }
}

// SAFETY (all impls below): each type is `repr(C)` with only integer fields (and arrays
// of such types), laid out without padding (asserted by size in the ABI file), so every
// byte is initialised and every bit pattern is valid.
macro_rules! abi_bytes {
    ($($t:ty),*) => {$(
        // SAFETY: see above.
        unsafe impl AsBytes for $t {}
        // SAFETY: see above.
        unsafe impl FromBytes for $t {}
    )*};
}
abi_bytes!(
    HomiList,
    HomiQpairEntry,
    HomiVersion,
    HomiAttach,
    HomiNamespace,
    HomiInfo,
    HomiQpair,
    HomiId,
    HomiAlloc,
    HomiRegister,
    HomiRegisterDmabuf,
    HomiMapFile,
    HomiExtent
);

// The ABI file encodes ioctl numbers with its own `_IOC`; the kernel's encoder must agree,
// which also checks that each number carries its struct's size.
const _: () = {
    assert!(HOMI_IOCTL_VERSION == _IOR::<HomiVersion>(IOCTL_TYPE, 0x00));
    assert!(HOMI_IOCTL_ATTACH == _IOW::<HomiAttach>(IOCTL_TYPE, 0x01));
    assert!(HOMI_IOCTL_INFO == _IOR::<HomiInfo>(IOCTL_TYPE, 0x02));
    assert!(HOMI_IOCTL_CREATE_QPAIR == _IOWR::<HomiQpair>(IOCTL_TYPE, 0x03));
    assert!(HOMI_IOCTL_DESTROY_QPAIR == _IOW::<HomiId>(IOCTL_TYPE, 0x04));
    assert!(HOMI_IOCTL_REARM_QPAIR == _IOWR::<HomiQpair>(IOCTL_TYPE, 0x05));
    assert!(HOMI_IOCTL_ALLOC == _IOWR::<HomiAlloc>(IOCTL_TYPE, 0x06));
    assert!(HOMI_IOCTL_FREE == _IOW::<HomiId>(IOCTL_TYPE, 0x07));
    assert!(HOMI_IOCTL_REGISTER == _IOWR::<HomiRegister>(IOCTL_TYPE, 0x08));
    assert!(HOMI_IOCTL_UNREGISTER == _IOW::<HomiId>(IOCTL_TYPE, 0x09));
    assert!(HOMI_IOCTL_LIST_QPAIRS == _IOWR::<HomiList>(IOCTL_TYPE, 0x0a));
    assert!(HOMI_IOCTL_REGISTER_DMABUF == _IOWR::<HomiRegisterDmabuf>(IOCTL_TYPE, 0x0b));
    assert!(HOMI_IOCTL_MAP_FILE == _IOWR::<HomiMapFile>(IOCTL_TYPE, 0x0c));
    assert!(HOMI_IOCTL_UNMAP_FILE == _IOW::<HomiId>(IOCTL_TYPE, 0x0d));
};

module! {
    type: HomiModule,
    name: "homi",
    authors: ["The homi developers"],
    description: "NVMe I/O queue pairs for user space and GPUs beside nvme-pci",
    license: "GPL",
    params: {
        map_revoke_ms: u32 {
            default: 2000,
            description: "How long (ms, 10 to 60000) a file map's holder has to acknowledge a revocation before its queue pairs are destroyed",
        },
    },
}

/// The glue's module-wide state: the PCI bus notifier that tells homi a controller is
/// being unbound, and the fault handler of every mapping.
struct Glue;

impl Glue {
    fn init() -> Result<Self> {
        // SAFETY: both callbacks are valid for as long as the module is loaded; `drop`
        // unregisters the notifier before the module's code goes away, and no mapping
        // outlives the files, which hold module references.
        kernel::error::to_result(unsafe {
            glue::homi_glue_init(registry::unbinding, mapping::fault)
        })?;
        lease::init();
        Ok(Self)
    }
}

impl Drop for Glue {
    fn drop(&mut self) {
        // SAFETY: initialised in `init`; torn down once, here, when no file is open.
        unsafe { glue::homi_glue_exit() };
    }
}

/// Frees the module-wide state's storage when the module goes (after every file did).
struct Globals;

impl Drop for Globals {
    fn drop(&mut self) {
        registry::exit();
    }
}

#[pin_data]
struct HomiModule {
    _glue: Glue,
    #[pin]
    _miscdev: MiscDeviceRegistration<HomiDev>,
    // Last: dropped after the misc device is gone, so no file can use the globals.
    _globals: Globals,
}

impl kernel::InPlaceModule for HomiModule {
    fn init(_module: &'static ThisModule) -> impl PinInit<Self, Error> {
        // SAFETY: called once, before any file can exist.
        unsafe { registry::init() };
        pr_info!("ABI {}.{} loaded\n", ABI_MAJOR, ABI_MINOR);
        try_pin_init!(Self {
            _glue: Glue::init()?,
            _miscdev <- MiscDeviceRegistration::register(MiscDeviceOptions { name: c"homi" }),
            _globals: Globals,
        })
    }
}

/// The misc device's file operations.
struct HomiDev;

fn read_arg<T: FromBytes>(arg: usize) -> Result<T> {
    UserSlice::new(UserPtr::from_addr(arg), size_of::<T>())
        .reader()
        .read::<T>()
}

fn write_arg<T: AsBytes>(arg: usize, val: &T) -> Result<isize> {
    UserSlice::new(UserPtr::from_addr(arg), size_of::<T>())
        .writer()
        .write(val)?;
    Ok(0)
}

/// Writes the reply of a call that made an object (a queue pair, buffer or
/// registration). If the reply cannot reach user space the caller never learns the id,
/// so the object is let go at once, as its undoing call (`undo`) would.
fn write_made<T: AsBytes>(
    arg: usize,
    reply: &T,
    id: u32,
    undo: impl FnOnce(&HomiId) -> Result,
) -> Result<isize> {
    write_arg(arg, reply).inspect_err(|_| {
        let _ = undo(&HomiId { id, flags: 0 });
    })
}

#[vtable]
impl MiscDevice for HomiDev {
    type Ptr = Arc<FileState>;

    fn open(file: &File, _misc: &MiscDeviceRegistration<Self>) -> Result<Arc<FileState>> {
        FileState::new(file)
    }

    fn release(me: Arc<FileState>, _file: &File) {
        me.release();
    }

    fn mmap(me: ArcBorrow<'_, FileState>, _file: &File, vma: &VmaNew) -> Result {
        me.mmap(vma)
    }

    fn ioctl(me: ArcBorrow<'_, FileState>, _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        match cmd {
            HOMI_IOCTL_VERSION => write_arg(
                arg,
                &HomiVersion {
                    abi_major: ABI_MAJOR,
                    abi_minor: ABI_MINOR,
                    features: if glue::have_user_queues() {
                        HOMI_FEAT_USER_QUEUES
                    } else {
                        0
                    },
                },
            ),
            HOMI_IOCTL_ATTACH => me.attach(&read_arg(arg)?).map(|()| 0),
            HOMI_IOCTL_INFO => write_arg(arg, &me.info()?),
            HOMI_IOCTL_CREATE_QPAIR => {
                let q = me.create_qpair(&read_arg(arg)?)?;
                write_made(arg, &q, q.qid, |id| me.destroy_qpair(id))
            }
            HOMI_IOCTL_DESTROY_QPAIR => me.destroy_qpair(&read_arg(arg)?).map(|()| 0),
            HOMI_IOCTL_REARM_QPAIR => write_arg(arg, &me.rearm_qpair(&read_arg(arg)?)?),
            HOMI_IOCTL_ALLOC => {
                let a = me.alloc(&read_arg(arg)?)?;
                write_made(arg, &a, a.id, |id| me.free(id))
            }
            HOMI_IOCTL_FREE => me.free(&read_arg(arg)?).map(|()| 0),
            HOMI_IOCTL_REGISTER => {
                let r = me.register(&read_arg(arg)?)?;
                write_made(arg, &r, r.id, |id| me.unregister(id))
            }
            HOMI_IOCTL_UNREGISTER => me.unregister(&read_arg(arg)?).map(|()| 0),
            HOMI_IOCTL_REGISTER_DMABUF => {
                let r = me.register_dmabuf(&read_arg(arg)?)?;
                write_made(arg, &r, r.id, |id| me.unregister(id))
            }
            HOMI_IOCTL_MAP_FILE => {
                let m = me.map_file(&read_arg(arg)?)?;
                write_made(arg, &m, m.id, |id| me.unmap_file(id))
            }
            HOMI_IOCTL_UNMAP_FILE => me.unmap_file(&read_arg(arg)?).map(|()| 0),
            HOMI_IOCTL_LIST_QPAIRS => {
                let mut l: HomiList = read_arg(arg)?;
                l.count = file::list_qpairs(&l)?;
                write_arg(arg, &l)
            }
            _ => Err(ENOTTY),
        }
    }
}
