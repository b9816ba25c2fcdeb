//! GPU workloads over the device engine (`cuda/workload.cu`): data round trips that
//! check every byte on the GPU, and a read loop for benchmarks. Used by
//! `homi-gpucheck` and `homi perf --path gpu`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use homi::gpu::{DeviceMemory, Gpu, GpuBuffer, GpuError, GpuQueues, HostMapping};
use homi::{Error, HostPages, Result, PAGE};

use crate::gpu_ctrl::with_pattern;

const WORKLOAD_CU: &str = include_str!("../cuda/workload.cu");

/// The workloads' CUDA program.
pub fn source() -> String {
    with_pattern(WORKLOAD_CU)
}

/// What a round trip or a loop counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Commands that completed successfully.
    pub ok: u64,
    /// Commands that failed.
    pub failed: u64,
    /// The first failure: an NVMe status, or a negative `HOMI_GPU_*`.
    pub first_failure: i64,
    /// 8-byte words that differed from the pattern.
    pub mismatches: u64,
}

/// The shape of a read loop.
#[derive(Clone, Copy, Debug)]
pub struct LoopShape {
    /// Bytes per read.
    pub io: u32,
    /// GPU initiators, each with one read in flight.
    pub threads: u32,
    /// Blocks of namespace 1 the reads cycle over.
    pub span_blocks: u64,
}

/// The workload kernels, compiled for one GPU.
pub struct Workload {
    gpu: Gpu,
    stream: Arc<CudaStream>,
    fill: CudaFunction,
    verify: CudaFunction,
    transfer: CudaFunction,
    looper: CudaFunction,
    ceiling: CudaFunction,
    prp_cases: CudaFunction,
    counters: DeviceMemory,
    /// The read loop's stop word, mapped once: registering host memory while a
    /// GPU-resident controller runs could wait for it forever.
    stop: (HostMapping, HostPages),
}

/// Threads per block, and blocks, for `threads` initiators: one block up to 256,
/// else whole blocks of 256.
fn shape(threads: u32) -> Result<LaunchConfig> {
    if threads == 0 || (threads > 256 && threads % 256 != 0) {
        return Err(Error::Invalid("GPU initiators: 1..=256, or a multiple of 256"));
    }
    let block = threads.min(256);
    Ok(LaunchConfig { grid_dim: (threads / block, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 })
}

impl Workload {
    /// Compiles the kernels.
    pub fn new(gpu: &Gpu) -> Result<Self> {
        let module = gpu.compile(&source())?;
        let f = |name| gpu.function(&module, name);
        Ok(Self {
            gpu: gpu.clone(),
            stream: gpu.context().new_stream().map_err(GpuError::driver("cuStreamCreate"))?,
            fill: f("homi_fill")?,
            verify: f("homi_verify")?,
            transfer: f("homi_transfer")?,
            looper: f("homi_loop")?,
            ceiling: f("homi_store_ceiling")?,
            prp_cases: f("homi_prp_cases")?,
            counters: DeviceMemory::zeroed(gpu, 32)?,
            stop: {
                let page = HostPages::new(PAGE);
                // SAFETY: `page` lives beside the mapping and drops after it.
                (unsafe { HostMapping::new(gpu, page.ptr(), PAGE, 0)? }, page)
            },
        })
    }

    fn wait(&self, limit: Duration) -> Result<()> {
        wait_stream(&self.stream, limit, Duration::from_micros(200))
    }

    fn counts(&self) -> Result<Counts> {
        let mut c = [0u64; 4];
        self.counters.read(0, &mut c)?;
        Ok(Counts { ok: c[0], failed: c[1], first_failure: c[2] as i64, mismatches: c[3] })
    }

    /// Fills `len` bytes of `mem` with the pattern, or counts where they differ.
    fn pattern(&self, verify: bool, mem: &GpuBuffer, len: u64) -> Result<()> {
        let (base, cnt) = (mem.dev_ptr(), self.counters.dev_ptr());
        let off = 0u64;
        let cfg = LaunchConfig { grid_dim: (1024, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let mut b = self.stream.launch_builder(if verify { &self.verify } else { &self.fill });
        b.arg(&base).arg(&len).arg(&off);
        if verify {
            b.arg(&cnt);
        }
        // SAFETY: the arguments match `homi_fill`/`homi_verify`; `mem` holds `len` bytes.
        unsafe { b.launch(cfg) }.map_err(GpuError::driver("launch homi_fill/homi_verify"))?;
        self.wait(Duration::from_secs(60))
    }

    /// Writes `bytes` of the pattern from `mem` to the namespace in chunks of `io`,
    /// clears `mem`, reads it all back, and checks every word on the GPU. `threads`
    /// initiators, each with one command in flight.
    pub fn round_trip(&self, qs: &GpuQueues, mem: &GpuBuffer, bytes: u64, io: u32, threads: u32) -> Result<Counts> {
        if bytes > mem.len() as u64 || io == 0 || bytes % u64::from(io) != 0 || io as usize % PAGE != 0 {
            return Err(Error::Invalid("round trip: whole 4096-aligned chunks inside the buffer"));
        }
        let cfg = shape(threads)?;
        self.counters.write(0, &[0u64; 4])?;
        self.pattern(false, mem, bytes)?;
        for write in [1u32, 0] {
            if write == 0 {
                mem.write_at(0, &vec![0u8; bytes as usize])?;
            }
            let (qp, nq, desc, chunks, cnt) =
                (qs.device_handle(), qs.len() as u32, mem.desc(), bytes / u64::from(io), self.counters.dev_ptr());
            // SAFETY: the arguments match `homi_transfer`; the queues and `mem` outlive
            // the wait below.
            unsafe {
                self.stream
                    .launch_builder(&self.transfer)
                    .arg(&qp)
                    .arg(&nq)
                    .arg(&desc)
                    .arg(&chunks)
                    .arg(&io)
                    .arg(&write)
                    .arg(&cnt)
                    .launch(cfg)
            }
            .map_err(GpuError::driver("launch homi_transfer"))?;
            self.wait(Duration::from_secs(300))?;
        }
        self.pattern(true, mem, bytes)?;
        self.counts()
    }

    /// Reads of `l.io` bytes from `l.threads` initiators for `run_for` (each its own
    /// `io` slot of `mem`, cycling over `l.span_blocks`), or until every initiator
    /// gave up; `during` runs meanwhile. The counts and the time the kernel ran.
    pub fn read_loop(
        &self,
        qs: &GpuQueues,
        mem: &GpuBuffer,
        l: LoopShape,
        run_for: Duration,
        during: impl FnOnce() -> Result<()>,
    ) -> Result<(Counts, Duration)> {
        let LoopShape { io, threads, span_blocks } = l;
        if (mem.len() as u64) < u64::from(threads) * u64::from(io) {
            return Err(Error::Invalid("read loop: one io-sized slot per initiator"));
        }
        let cfg = shape(threads)?;
        self.counters.write(0, &[0u64; 4])?;
        let stop = self.stop.1.ptr().cast::<u32>();
        // SAFETY: a live, 4-aligned word of the stop page; no kernel reads it now.
        unsafe { std::ptr::write_volatile(stop, 0) };
        let (qp, nq, desc, max_ios, sp, cnt) =
            (qs.device_handle(), qs.len() as u32, mem.desc(), u64::MAX, self.stop.0.dev_ptr(), self.counters.dev_ptr());
        let start = Instant::now();
        // SAFETY: the arguments match `homi_loop`; everything named outlives the wait.
        unsafe {
            self.stream
                .launch_builder(&self.looper)
                .arg(&qp)
                .arg(&nq)
                .arg(&desc)
                .arg(&io)
                .arg(&span_blocks)
                .arg(&max_ios)
                .arg(&sp)
                .arg(&cnt)
                .launch(cfg)
        }
        .map_err(GpuError::driver("launch homi_loop"))?;
        let done = self.stream.record_event(None).map_err(GpuError::driver("cuEventRecord"))?;
        let outcome = during();
        while start.elapsed() < run_for && !done.is_complete() {
            std::thread::sleep(Duration::from_millis(1));
        }
        // SAFETY: as above; the kernel reads it.
        unsafe { std::ptr::write_volatile(stop, 1) };
        let waited = self.wait(Duration::from_secs(60));
        let took = start.elapsed();
        waited?;
        outcome?;
        Ok((self.counts()?, took))
    }

    /// The ceiling of SQ entry stores into `ring` (GPU address of `depth` 64-byte
    /// entries, in GPU or mapped host memory), with no controller: `threads` storers
    /// for `run_for`. Entries written per second.
    pub fn store_ceiling(&self, ring: u64, depth: u32, threads: u32, run_for: Duration) -> Result<f64> {
        let cfg = shape(threads)?;
        self.counters.write(0, &[0u64; 4])?;
        let ticket = DeviceMemory::zeroed(&self.gpu, 8)?;
        let stop = self.stop.1.ptr().cast::<u32>();
        // SAFETY: a live, 4-aligned word of the stop page; no kernel reads it now.
        unsafe { std::ptr::write_volatile(stop, 0) };
        let (tp, sp, cnt) = (ticket.dev_ptr(), self.stop.0.dev_ptr(), self.counters.dev_ptr());
        let start = Instant::now();
        // SAFETY: the arguments match `homi_store_ceiling`; `ring` holds `depth`
        // entries (caller), the rest lives past the wait.
        unsafe {
            self.stream.launch_builder(&self.ceiling).arg(&ring).arg(&depth).arg(&tp).arg(&sp).arg(&cnt).launch(cfg)
        }
        .map_err(GpuError::driver("launch homi_store_ceiling"))?;
        std::thread::sleep(run_for);
        // SAFETY: as above; the kernel reads it.
        unsafe { std::ptr::write_volatile(stop, 1) };
        self.wait(Duration::from_secs(60))?;
        let secs = start.elapsed().as_secs_f64();
        Ok(self.counts()?.ok as f64 / secs)
    }

    /// The device engine's PRP entries for each `(offset, len)` of memory whose page
    /// `i` the controller reaches at `pages[i]`: `None` where it refuses the range,
    /// else PRP1, PRP2 (0 with a list) and the list, as [`homi::prp_entries`] gives
    /// them.
    pub fn prp_cases(&self, pages: &[u64], cases: &[(u64, u32)]) -> Result<Vec<Option<homi::PrpEntries>>> {
        use homi::gpu::QueueRings;
        let n = cases.len();
        if n == 0 || n > 4096 || pages.is_empty() {
            return Err(Error::Invalid("PRP cases: 1..=4096 cases over at least one page"));
        }
        // Only the PRP list pages of the queue are used; its rings are never touched.
        let rings = QueueRings { depth: n.max(2) as u32, max_transfer: u32::MAX, ..Default::default() };
        let lists = crate::gpu_ctrl::identity_buffer(&self.gpu, n.max(2) * PAGE)?;
        let list_dma: Vec<u64> = lists.page_addrs().to_vec();
        let qs = GpuQueues::new(&self.gpu, &[rings], lists, 9, Duration::from_secs(1), Box::new(()))?;
        let backing = DeviceMemory::zeroed(&self.gpu, PAGE)?;
        // SAFETY: the engine only reads the page table and length of this buffer,
        // never its bytes; `backing` keeps a valid base address alive.
        let mem = unsafe {
            GpuBuffer::from_raw(&self.gpu, backing.dev_ptr(), pages.len() * PAGE, pages.into(), Box::new(backing))?
        };
        let offs: Vec<u64> = cases.iter().map(|c| c.0).collect();
        let lens: Vec<u32> = cases.iter().map(|c| c.1).collect();
        let (offs_d, lens_d) = (DeviceMemory::zeroed(&self.gpu, n * 8)?, DeviceMemory::zeroed(&self.gpu, n * 4)?);
        offs_d.write(0, &offs)?;
        lens_d.write(0, &lens)?;
        let out = DeviceMemory::zeroed(&self.gpu, n * 516 * 8)?;
        let (qp, desc, op, lp, nn, outp) =
            (qs.device_handle(), mem.desc(), offs_d.dev_ptr(), lens_d.dev_ptr(), n as u32, out.dev_ptr());
        // SAFETY: the arguments match `homi_prp_cases`; everything named lives past the
        // wait.
        unsafe {
            self.stream
                .launch_builder(&self.prp_cases)
                .arg(&qp)
                .arg(&desc)
                .arg(&op)
                .arg(&lp)
                .arg(&nn)
                .arg(&outp)
                .launch(LaunchConfig::for_num_elems(n as u32))
        }
        .map_err(GpuError::driver("launch homi_prp_cases"))?;
        self.wait(Duration::from_secs(30))?;
        let mut raw = vec![0u64; n * 516];
        out.read(0, &mut raw)?;
        Ok((0..n)
            .map(|i| {
                let o = &raw[i * 516..(i + 1) * 516];
                (o[0] != 0).then(|| {
                    let (p1, p2) = (o[1], o[2]);
                    let first = PAGE as u64 - p1 % PAGE as u64;
                    let len = u64::from(cases[i].1);
                    let more = if len > first { (len - first).div_ceil(PAGE as u64) as usize } else { 0 };
                    if more > 1 {
                        // A list: PRP2 must name slot i's list page.
                        let p2 = if p2 == list_dma[i] { 0 } else { u64::MAX };
                        (p1, p2, o[3..3 + more].to_vec())
                    } else {
                        (p1, p2, Vec::new())
                    }
                })
            })
            .collect())
    }
}

/// Waits for `stream`, looking every `poll`, at most `limit`: a kernel that does not
/// finish is a hang, reported as [`Error::Timeout`] (the caller should exit; the kernel
/// keeps the GPU).
pub(crate) fn wait_stream(stream: &CudaStream, limit: Duration, poll: Duration) -> Result<()> {
    let ev = stream.record_event(None).map_err(GpuError::driver("cuEventRecord"))?;
    let start = Instant::now();
    while !ev.is_complete() {
        if start.elapsed() > limit {
            return Err(Error::Timeout(limit));
        }
        std::thread::sleep(poll);
    }
    stream.synchronize().map_err(GpuError::driver("kernel"))
}
