// SPDX-License-Identifier: GPL-2.0

//! homi: Host Orchestrated Multipath I/O.
//!
//! Registers the misc device `/dev/homi`, through which user space and GPUs get NVMe
//! I/O queue pairs beside the kernel's nvme driver. The ioctl ABI is defined once, in
//! `uapi/src/abi.rs`, and included here as source.
//!
//! C header: [`include/linux/miscdevice.h`](srctree/include/linux/miscdevice.h)

use kernel::{
    fs::File,
    ioctl::_IOR,
    miscdevice::{
        MiscDevice,
        MiscDeviceOptions,
        MiscDeviceRegistration, //
    },
    prelude::*,
    transmute::AsBytes,
    uaccess::UserSlice,
};

#[allow(
    unreachable_pub,
    dead_code,
    reason = "the ABI file is public API in user space; the module uses part of it"
)]
#[path = "../uapi/src/abi.rs"]
mod uapi;

use uapi::HomiVersion;

// SAFETY: `HomiVersion` is `repr(C)` with fields of 4, 4 and 8 bytes in that order, so it
// has no padding and every byte of it is initialised.
unsafe impl AsBytes for HomiVersion {}

// The ABI file encodes ioctl numbers with its own `_IOC`; the kernel's encoder must agree,
// which also checks that each number carries its struct's size.
const _: () = assert!(uapi::HOMI_IOCTL_VERSION == _IOR::<HomiVersion>(uapi::IOCTL_TYPE, 0x00));

module! {
    type: HomiModule,
    name: "homi",
    authors: ["The homi developers"],
    description: "NVMe I/O queue pairs for user space and GPUs beside nvme-pci",
    license: "GPL",
}

#[pin_data]
struct HomiModule {
    #[pin]
    _miscdev: MiscDeviceRegistration<HomiFile>,
}

impl kernel::InPlaceModule for HomiModule {
    fn init(_module: &'static ThisModule) -> impl PinInit<Self, Error> {
        pr_info!("ABI {}.{} loaded\n", uapi::ABI_MAJOR, uapi::ABI_MINOR);
        try_pin_init!(Self {
            _miscdev <- MiscDeviceRegistration::register(MiscDeviceOptions { name: c"homi" }),
        })
    }
}

/// The state of one open file of `/dev/homi`.
struct HomiFile;

#[vtable]
impl MiscDevice for HomiFile {
    type Ptr = KBox<Self>;

    fn open(_file: &File, _misc: &MiscDeviceRegistration<Self>) -> Result<KBox<Self>> {
        Ok(KBox::new(HomiFile, GFP_KERNEL)?)
    }

    fn ioctl(_me: &HomiFile, _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        match cmd {
            uapi::HOMI_IOCTL_VERSION => {
                let reply = HomiVersion {
                    abi_major: uapi::ABI_MAJOR,
                    abi_minor: uapi::ABI_MINOR,
                    features: 0,
                };
                let mut writer =
                    UserSlice::new(UserPtr::from_addr(arg), size_of::<HomiVersion>()).writer();
                writer.write(&reply)?;
                Ok(0)
            }
            _ => Err(ENOTTY),
        }
    }
}
