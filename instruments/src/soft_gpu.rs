//! The software controller serving GPU kernels. **A test instrument**, like the
//! controller itself. Two ring placements:
//! - host memory (`SoftController::new`): rings, doorbells, PRP lists and data are
//!   host memory mapped into the GPU (`cuMemHostRegister`); GPU stores cross the bus
//!   and the worker thread reads them with the CPU;
//! - GPU memory (`SoftController::for_gpu_memory`): rings, PRP lists and data live in
//!   GPU memory and the worker reaches them with CUDA copies, as a controller's DMA
//!   engine reaches GPU memory peer to peer; doorbells and the queue state word stay
//!   host memory mapped into the GPU (a real controller's doorbells are registers).

use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::sys;
use homi::gpu::{DeviceMemory, Gpu, GpuBuffer, GpuQueues, HostMapping, QueueRings};
use homi::{DmaBuffer, Result, PAGE};

use crate::gpu_ctrl::identity_buffer;
use crate::soft::{Queue, Slot, SoftConfig, SoftController};
use crate::soft_memory::Memory;

/// GPU memory reached with CUDA copies on the worker thread.
struct CudaMemory {
    gpu: Gpu,
}

impl CudaMemory {
    fn copy(&self, what: &str, r: sys::CUresult) {
        // A failed copy is a broken instrument, not a command error: stop loudly.
        assert!(r == sys::CUresult::CUDA_SUCCESS, "software controller: {what} failed: {r:?}");
    }
}

impl Memory for CudaMemory {
    fn read(&self, addr: u64, dst: &mut [u8]) {
        let _ = self.gpu.context().bind_to_thread();
        // SAFETY: `addr` names GPU memory the engine keeps alive while the command (or
        // queue) is live; `dst` is writable.
        self.copy("cuMemcpyDtoH", unsafe { sys::cuMemcpyDtoH_v2(dst.as_mut_ptr().cast(), addr, dst.len()) });
    }

    fn write(&self, addr: u64, src: &[u8]) {
        let _ = self.gpu.context().bind_to_thread();
        // SAFETY: as for `read`; the engine does not touch the range until the command
        // completes.
        self.copy("cuMemcpyHtoD", unsafe { sys::cuMemcpyHtoD_v2(addr, src.as_ptr().cast(), src.len()) });
    }

    fn post_cqe(&self, addr: u64, cqe: [u32; 4]) {
        // One 16-byte copy: the engine reads only the last dword (command id, phase
        // tag, status), which a single aligned transfer writes whole.
        let _ = self.gpu.context().bind_to_thread();
        // SAFETY: a 16-byte entry of a live CQ ring in GPU memory.
        self.copy("cuMemcpyHtoD", unsafe { sys::cuMemcpyHtoD_v2(addr, cqe.as_ptr().cast(), 16) });
    }

    fn gpu(&self) -> bool {
        true
    }
}

/// What keeps a set of GPU queues of the software controller alive: the mappings
/// first (dropped first), then the queues.
struct Kept {
    _maps: Vec<HostMapping>,
    _queues: Vec<Arc<Queue>>,
}

impl SoftController {
    /// A controller whose rings, PRP lists and data live in GPU memory (see the module
    /// docs), with its worker thread.
    pub fn for_gpu_memory(cfg: SoftConfig, gpu: &Gpu) -> Self {
        Self::with_memory(cfg, Box::new(CudaMemory { gpu: gpu.clone() }))
    }

    /// `n` queue pairs of `depth` entries for GPU kernels, rings placed as the
    /// controller was made (see the module docs). With
    /// [`SoftConfig::shadow_doorbells`] the device engine rings through shadow slots
    /// and event indexes.
    pub fn gpu_queues(&self, gpu: &Gpu, n: usize, depth: u32, timeout: Duration) -> Result<GpuQueues> {
        let cfg = self.config();
        let in_gpu = self.inner.mem.gpu();
        let mut kept = Kept { _maps: Vec::new(), _queues: Vec::new() };
        let mut rings = Vec::new();
        let (sq_len, cq_len) = (depth as usize * 64, depth as usize * 16);
        for _ in 0..n {
            // Each queue's rings: (controller address, GPU address) of SQ and CQ.
            let (q, sq, cq) = if in_gpu {
                let (s, c) = (DeviceMemory::zeroed(gpu, sq_len)?, DeviceMemory::zeroed(gpu, cq_len)?);
                let (sp, cp) = (s.dev_ptr(), c.dev_ptr());
                (self.create_queue(depth, (sp, cp), Box::new((s, c)))?, sp, cp)
            } else {
                let (s, c) = (homi::HostPages::new(sq_len), homi::HostPages::new(cq_len));
                // SAFETY: the pages belong to the queue, which `Kept` holds until
                // after the mappings are dropped.
                let (ms, mc) = unsafe {
                    (HostMapping::new(gpu, s.ptr(), s.len(), 0)?, HostMapping::new(gpu, c.ptr(), c.len(), 0)?)
                };
                let (sp, cp) = (ms.dev_ptr(), mc.dev_ptr());
                kept._maps.extend([ms, mc]);
                let at = (s.ptr() as u64, c.ptr() as u64);
                (self.create_queue(depth, at, Box::new((s, c)))?, sp, cp)
            };
            // SAFETY: the doorbell page belongs to `q`, held by `Kept` as above.
            let db = unsafe { HostMapping::new(gpu, q.db.ptr(), q.db.len(), 0)? };
            let at = |s: Slot| db.dev_ptr() + 4 * s as u64;
            rings.push(QueueRings {
                qid: q.qid,
                depth,
                sq,
                cq,
                sq_db: at(Slot::SqTail),
                cq_db: at(Slot::CqHead),
                shadow: cfg
                    .shadow_doorbells
                    .then(|| [at(Slot::SqShadow), at(Slot::CqShadow), at(Slot::SqEventIdx), at(Slot::CqEventIdx)]),
                state: at(Slot::State),
                mmio_doorbells: false,
                max_transfer: cfg.max_transfer as u32,
            });
            kept._maps.push(db);
            kept._queues.push(q);
        }
        let prp = self.gpu_alloc(gpu, n * depth as usize * PAGE)?;
        GpuQueues::new(gpu, &rings, prp, 9, timeout, Box::new(kept))
    }

    /// `len` bytes of data memory for GPU kernels that this controller reaches: GPU
    /// memory, or host memory mapped into the GPU, as the controller was made.
    pub fn gpu_alloc(&self, gpu: &Gpu, len: usize) -> Result<GpuBuffer> {
        if self.inner.mem.gpu() {
            identity_buffer(gpu, len)
        } else {
            GpuBuffer::mapped_host(gpu, DmaBuffer::host(len))
        }
    }
}
