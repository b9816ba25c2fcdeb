//! homi: NVMe I/O queue pairs that user space and GPUs drive beside the kernel's own
//! nvme driver, on the same OS-managed controller.
//!
//! This crate talks to the `homi` kernel module through `/dev/homi`. The ioctl ABI is
//! the [`homi_uapi`] crate, which the module compiles from the same source.
//!
//! Doorbells: where the controller uses shadow doorbells (Doorbell Buffer Config) and
//! nvme-pci reserved user queues, a [`QueuePair`] rings through the shadow slots and
//! writes the MMIO register only when the event index asks ([`need_event`]);
//! [`QueuePair::doorbell_stats`] counts both.
//!
//! Files: [`Controller::map_file`] maps part of a file on one of the controller's
//! namespaces to its extents under a lease, and [`QueuePair::read_at`] and
//! [`QueuePair::write_at`] move the file's bytes at those extents; a [`FileMap`]'s
//! [`state`](FileMap::state) says when the lease broke and the map must be let go.

//!
//! ```no_run
//! use std::time::Duration;
//! use homi::{Command, Controller};
//!
//! # fn main() -> homi::Result<()> {
//! let ctrl = Controller::open("/dev/nvme0")?;
//! let mut qp = ctrl.create_qpair(64)?;
//! let buf = ctrl.alloc(4096)?;
//! let (prp1, prp2) = buf.prps(0, 4096)?;
//! let read = Command::read(1, 0, 8).with_prps(prp1, prp2);
//! // SAFETY: `buf` outlives the command, and nothing touches it until it completes.
//! unsafe { qp.execute(&read, Duration::from_secs(5))? };
//! let mut first = [0u8; 16];
//! buf.read_at(0, &mut first)?;
//! # Ok(())
//! # }
//! ```

mod blockdev;
mod buffer;
mod command;
mod controller;
mod device;
mod doorbell;
mod error;
mod filemap;
#[cfg(feature = "cuda")]
pub mod gpu;
mod mapping;
mod p2pmem;
pub(crate) mod placement;
mod prp;
pub(crate) mod queue;
pub(crate) mod sys;

pub use blockdev::{block_device_of, nvme_controller_of};
pub use buffer::{DmaBuffer, HostPages};
pub use command::{Command, Opcode, Sqe, Status, StatusType};
pub use controller::Controller;
pub use device::HomiDevice;
pub use doorbell::{need_event, Doorbell, DoorbellStats};
pub use error::{Error, MapRefusal, Result};
pub use filemap::{Extent, ExtentKind, FileMap, Lease, MapState};
pub use homi_uapi as uapi;
pub use p2pmem::{udmabuf, P2pMemory};
pub use placement::RingPlacement;
pub use prp::{prp_entries, PrpEntries, PAGE};
pub use queue::{Completion, QueueBacking, QueuePair, RawQueue, MAX_QUEUE_DEPTH};
