//! The software controller serving GPU kernels: the rings, doorbells and state words
//! of its queues, and the data and PRP list memory, are host memory mapped into the
//! GPU (`cuMemHostRegister`). GPU stores to them cross the bus; the controller's host
//! thread serves them as it serves CPU queues. **A test instrument**, like the
//! controller itself.

use std::sync::Arc;
use std::time::Duration;

use homi::gpu::{GpuBuffer, GpuQueues, HostMapping, QueueRings};
use homi::{DmaBuffer, Result, PAGE};

use crate::soft::{Queue, Slot, SoftController};

/// What keeps a set of GPU queues of the software controller alive: the mappings
/// first (dropped first), then the queues.
struct Kept {
    _maps: Vec<HostMapping>,
    _queues: Vec<Arc<Queue>>,
}

impl SoftController {
    /// `n` queue pairs of `depth` entries for GPU kernels (see the module docs).
    /// With [`SoftConfig::shadow_doorbells`](crate::SoftConfig) the device engine
    /// rings through shadow slots and event indexes.
    pub fn gpu_queues(&self, gpu: &homi::gpu::Gpu, n: usize, depth: u32, timeout: Duration) -> Result<GpuQueues> {
        let cfg = self.config();
        let mut maps = Vec::new();
        let mut queues = Vec::new();
        let mut rings = Vec::new();
        for _ in 0..n {
            let q = self.create_queue(depth)?;
            // SAFETY: the pages belong to `q`, which `Kept` holds until after the
            // mappings are dropped.
            let map = |p: &homi::HostPages| unsafe { HostMapping::new(gpu, p.ptr(), p.len(), 0) };
            let (sq, cq, db) = (map(&q.sq)?, map(&q.cq)?, map(&q.db)?);
            let at = |s: Slot| db.dev_ptr() + 4 * s as u64;
            rings.push(QueueRings {
                qid: q.qid,
                depth,
                sq: sq.dev_ptr(),
                cq: cq.dev_ptr(),
                sq_db: at(Slot::SqTail),
                cq_db: at(Slot::CqHead),
                shadow: cfg
                    .shadow_doorbells
                    .then(|| [at(Slot::SqShadow), at(Slot::CqShadow), at(Slot::SqEventIdx), at(Slot::CqEventIdx)]),
                state: at(Slot::State),
                mmio_doorbells: false,
                max_transfer: cfg.max_transfer as u32,
            });
            maps.extend([sq, cq, db]);
            queues.push(q);
        }
        let prp = GpuBuffer::mapped_host(gpu, DmaBuffer::host(n * depth as usize * PAGE))?;
        GpuQueues::new(gpu, &rings, prp, 9, timeout, Box::new(Kept { _maps: maps, _queues: queues }))
    }

    /// `len` bytes of data memory for GPU kernels: host memory this controller
    /// reaches, mapped into the GPU.
    pub fn gpu_alloc(&self, gpu: &homi::gpu::Gpu, len: usize) -> Result<GpuBuffer> {
        GpuBuffer::mapped_host(gpu, DmaBuffer::host(len))
    }
}
