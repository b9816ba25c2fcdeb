//! A GPU-resident NVMe controller: **a test instrument, not a device.** One warp per
//! queue serves rings that live in GPU memory (`cuda/gpu_ctrl.cu`), so the device
//! engine can be measured with nothing in the way (null mode: the engine's ceiling)
//! or checked end to end (pattern mode: reads return [`PATTERN_CUH`]'s pattern and
//! writes are compared with it). Its "controller addresses" are GPU addresses.

use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::{CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use homi::gpu::{DeviceMemory, Gpu, GpuBuffer, GpuQueues, HostMapping, QueueRings};
use homi::{Error, HostPages, Result, PAGE};

/// `homi_pattern()`, the data pattern of the GPU instruments and checks.
pub const PATTERN_CUH: &str = include_str!("../cuda/homi_pattern.cuh");
const GPU_CTRL_CU: &str = include_str!("../cuda/gpu_ctrl.cu");

/// The controller's CUDA program.
pub fn source() -> String {
    with_pattern(GPU_CTRL_CU)
}

/// Source that uses `homi_pattern()`: `src` with the pattern header inlined.
pub fn with_pattern(src: &str) -> String {
    src.replace("#include \"homi_pattern.cuh\"", PATTERN_CUH)
}

/// `struct homi_gctl_queue` of `gpu_ctrl.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct CtrlQueue {
    sq: u64,
    cq: u64,
    sq_db: u64,
    cq_db: u64,
    state: u64,
    depth: u32,
    qid: u32,
    pattern: u32,
    lba_shift: u32,
    blocks: u64,
    commands: u64,
    mismatches: u64,
}

const _: () = assert!(std::mem::size_of::<CtrlQueue>() == 80);

/// Shape of a GPU-resident controller.
#[derive(Clone, Copy, Debug)]
pub struct GpuCtrlConfig {
    /// Pattern mode (data moved and checked) rather than null mode.
    pub pattern: bool,
    /// Namespace 1's size in blocks.
    pub blocks: u64,
    /// log2 of the block size.
    pub lba_shift: u32,
    /// Largest transfer in bytes.
    pub max_transfer: u32,
    /// Rings and doorbells in host memory mapped into the GPU rather than GPU memory.
    pub host_rings: bool,
}

impl Default for GpuCtrlConfig {
    fn default() -> Self {
        Self {
            pattern: false,
            blocks: 1 << 32,
            lba_shift: 9,
            max_transfer: (PAGE * (PAGE / 8 + 1)) as u32,
            host_rings: false,
        }
    }
}

/// A running GPU-resident controller and its queues' memory. Stop it with
/// [`stop`](Self::stop) before dropping the queues.
pub struct GpuController {
    gpu: Gpu,
    stream: Arc<CudaStream>,
    kill: CudaFunction,
    table: DeviceMemory,
    n: usize,
    stop: (HostMapping, HostPages),
    running: bool,
}

/// GPU-resident controller statistics, read after [`GpuController::stop`].
#[derive(Clone, Copy, Debug, Default)]
pub struct GpuCtrlStats {
    /// Commands served.
    pub commands: u64,
    /// Writes whose data differed from the pattern.
    pub mismatches: u64,
}

impl GpuController {
    /// Starts a controller with `n` queues of `depth` entries and returns it with the
    /// queues, set up for the device engine.
    pub fn start(gpu: &Gpu, cfg: GpuCtrlConfig, n: usize, depth: u32, timeout: Duration) -> Result<(Self, GpuQueues)> {
        if n == 0 || !(2..=65536).contains(&depth) {
            return Err(Error::Invalid("GPU controller: at least one queue, depth 2..=65536"));
        }
        let module = gpu.compile(&source())?;
        let serve = gpu.function(&module, "homi_gctl_serve")?;
        let kill = gpu.function(&module, "homi_gctl_kill")?;
        let (sq_len, cq_len) =
            ((depth as usize * 64).next_multiple_of(PAGE), (depth as usize * 16).next_multiple_of(PAGE));
        let per = sq_len + cq_len + PAGE;
        let rings = Rings::new(gpu, n * per, cfg.host_rings)?;
        let mut descs = Vec::with_capacity(n);
        let mut qs = Vec::with_capacity(n);
        for i in 0..n {
            let base = rings.dev + (i * per) as u64;
            let db = base + (sq_len + cq_len) as u64;
            let (sq_db, cq_db, state) = (db, db + 4, db + 8);
            qs.push(CtrlQueue {
                sq: base,
                cq: base + sq_len as u64,
                sq_db,
                cq_db,
                state,
                depth,
                qid: i as u32 + 1,
                pattern: u32::from(cfg.pattern),
                lba_shift: cfg.lba_shift,
                blocks: cfg.blocks,
                ..Default::default()
            });
            descs.push(QueueRings {
                qid: i as u16 + 1,
                depth,
                sq: base,
                cq: base + sq_len as u64,
                sq_db,
                cq_db,
                shadow: None,
                state,
                mmio_doorbells: false,
                max_transfer: cfg.max_transfer,
            });
            rings.set_live((state - rings.dev) as usize)?;
        }
        let table = DeviceMemory::zeroed(gpu, n * std::mem::size_of::<CtrlQueue>())?;
        table.write(0, &qs)?;
        let page = HostPages::new(PAGE);
        // SAFETY: `page` lives beside the mapping in `stop` and drops after it.
        let map = unsafe { HostMapping::new(gpu, page.ptr(), PAGE, 0)? };
        let stream = gpu.context().new_stream().map_err(homi::gpu::GpuError::driver("cuStreamCreate"))?;
        let warps_per_block = 4usize;
        let cfg_launch = LaunchConfig {
            grid_dim: (n.div_ceil(warps_per_block) as u32, 1, 1),
            block_dim: (32 * warps_per_block as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (tp, nq, sp) = (table.dev_ptr(), n as u32, map.dev_ptr());
        // SAFETY: the arguments match `homi_gctl_serve`'s; every pointer names memory
        // that `Self` or the returned queues keep until `stop` has waited for it.
        unsafe { stream.launch_builder(&serve).arg(&tp).arg(&nq).arg(&sp).launch(cfg_launch) }
            .map_err(homi::gpu::GpuError::driver("launch homi_gctl_serve"))?;
        let prp = identity_buffer(gpu, n * depth as usize * PAGE)?;
        let queues = GpuQueues::new(gpu, &descs, prp, cfg.lba_shift, timeout, Box::new(rings))?;
        let ctrl = Self { gpu: gpu.clone(), stream, kill, table, n, stop: (map, page), running: true };
        Ok((ctrl, queues))
    }

    /// `len` bytes of GPU memory this controller reaches (its addresses are GPU
    /// addresses).
    pub fn alloc(&self, len: usize) -> Result<GpuBuffer> {
        identity_buffer(&self.gpu, len)
    }

    /// Marks every queue destroyed, as a controller reset would: the device engine
    /// must report `HOMI_GPU_DEAD` rather than wait.
    pub fn kill_queues(&self) -> Result<()> {
        let (tp, nq) = (self.table.dev_ptr(), self.n as u32);
        let other = self.gpu.context().new_stream().map_err(homi::gpu::GpuError::driver("cuStreamCreate"))?;
        // SAFETY: the arguments match `homi_gctl_kill`'s; the table lives in `self`.
        unsafe {
            other.launch_builder(&self.kill).arg(&tp).arg(&nq).launch(LaunchConfig::for_num_elems(self.n as u32))
        }
        .map_err(homi::gpu::GpuError::driver("launch homi_gctl_kill"))?;
        other.synchronize().map_err(homi::gpu::GpuError::driver("cuStreamSynchronize"))
    }

    /// Stops serving, waits for the controller's warps, and returns its counts.
    pub fn stop(&mut self) -> Result<GpuCtrlStats> {
        if self.running {
            // SAFETY: the stop word is a live, 4-aligned word of `self.stop.1`.
            unsafe { std::ptr::write_volatile(self.stop.1.ptr().cast::<u32>(), 1) };
            self.stream.synchronize().map_err(homi::gpu::GpuError::driver("cuStreamSynchronize"))?;
            self.running = false;
        }
        let mut qs = vec![CtrlQueue::default(); self.n];
        self.table.read(0, &mut qs)?;
        Ok(GpuCtrlStats {
            commands: qs.iter().map(|q| q.commands).sum(),
            mismatches: qs.iter().map(|q| q.mismatches).sum(),
        })
    }
}

impl Drop for GpuController {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The rings and doorbells of a GPU-resident controller's queues.
struct Rings {
    dev: u64,
    mem: RingMem,
}

enum RingMem {
    Gpu(DeviceMemory),
    /// Host memory mapped into the GPU; the mapping drops before the pages.
    Host {
        _map: HostMapping,
        pages: HostPages,
    },
}

impl Rings {
    fn new(gpu: &Gpu, len: usize, host: bool) -> Result<Self> {
        if host {
            let pages = HostPages::new(len);
            // SAFETY: `pages` lives beside the mapping and drops after it.
            let map = unsafe { HostMapping::new(gpu, pages.ptr(), pages.len(), 0)? };
            Ok(Self { dev: map.dev_ptr(), mem: RingMem::Host { _map: map, pages } })
        } else {
            let mem = DeviceMemory::zeroed(gpu, len)?;
            Ok(Self { dev: mem.dev_ptr(), mem: RingMem::Gpu(mem) })
        }
    }

    /// Marks the queue whose state word is at byte `off` live.
    fn set_live(&self, off: usize) -> Result<()> {
        let live = homi::uapi::HOMI_QUEUE_LIVE;
        match &self.mem {
            RingMem::Gpu(m) => m.write(off, &[live]),
            RingMem::Host { pages: p, .. } => {
                // SAFETY: `off` is a 4-aligned word inside the pages; no kernel runs yet.
                unsafe { std::ptr::write_volatile(p.ptr().add(off).cast::<u32>(), live) };
                Ok(())
            }
        }
    }
}

/// GPU memory whose controller addresses are its GPU addresses.
pub(crate) fn identity_buffer(gpu: &Gpu, len: usize) -> Result<GpuBuffer> {
    let len = len.next_multiple_of(PAGE);
    let mem = DeviceMemory::zeroed(gpu, len)?;
    let base = mem.dev_ptr();
    let pages = (0..(len / PAGE) as u64).map(|i| base + i * PAGE as u64).collect();
    // SAFETY: `mem` holds `len` bytes at `base` and moves into the buffer.
    unsafe { GpuBuffer::from_raw(gpu, base, len, pages, Box::new(mem)) }
}
