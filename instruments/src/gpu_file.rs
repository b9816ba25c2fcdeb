//! GPU threads reading file offsets through a [`DeviceFileMap`] (`cuda/file_read.cu`),
//! against the GPU-resident controller in pattern mode: a synthetic extent table,
//! the commands the engine put in its submission queues, and the data the pattern
//! says each byte of the file holds. Used by `homi-gpucheck`; needs no homi.ko.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{sys, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use homi::gpu::{DeviceFileMap, DeviceMemory, ExtentTable, Gpu, GpuBuffer, GpuError, GpuQueues, HostMapping};
use homi::uapi::{HomiExtent, HOMI_EXTENT_HOLE, HOMI_EXTENT_MAPPED, HOMI_EXTENT_UNWRITTEN};
use homi::{Error, HostPages, Opcode, Result, PAGE};

const FILE_READ_CU: &str = include_str!("../cuda/file_read.cu");

/// The file reading kernels' CUDA program.
pub fn source() -> String {
    FILE_READ_CU.to_string()
}

/// `struct homi_file_req` of `file_read.cu`: one thread's read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileReq {
    /// File offset.
    pub off: u64,
    /// Bytes.
    pub len: u64,
    /// Offset in the destination buffer.
    pub dst: u64,
}

/// An extent table with every kind of piece, for namespace 1 of `1 << lba_shift`-byte
/// blocks: mapped runs, a hole, an unwritten extent, 4 KiB fragments scattered over
/// the namespace, an extent longer than the largest transfer, and a last block the
/// file ends inside. Returns the extents and the file's size.
pub fn synthetic_map(lba_shift: u32) -> (Vec<HomiExtent>, u64) {
    let mut v = Vec::new();
    let mut at = 0u64;
    let mut push = |bytes: u64, lba: u64, kind: u32| {
        v.push(HomiExtent { file_offset: at, lba, blocks: bytes >> lba_shift, nsid: 1, kind });
        at += bytes;
    };
    push(64 << 10, 1000, HOMI_EXTENT_MAPPED);
    push(32 << 10, 0, HOMI_EXTENT_HOLE);
    for i in 0..16u64 {
        // Fragments in descending, scattered places, as a busy file system leaves them.
        push(4 << 10, 900_000 - i * 7_777, HOMI_EXTENT_MAPPED);
    }
    push(32 << 10, 300_000, HOMI_EXTENT_UNWRITTEN);
    push(3 << 20, 200_000, HOMI_EXTENT_MAPPED);
    push(8 << 10, 0, HOMI_EXTENT_HOLE);
    push(4 << 10, 5, HOMI_EXTENT_UNWRITTEN);
    push(12 << 10, 600_000, HOMI_EXTENT_MAPPED);
    (v, at - 1000)
}

/// `homi_pattern()` of `homi_pattern.cuh`: the 8-byte word the GPU-resident
/// controller returns at byte `off` (a multiple of 8) of namespace `nsid`.
pub fn pattern_word(nsid: u32, off: u64) -> u64 {
    let mut x = (off >> 3).wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(u64::from(nsid));
    x ^= x >> 31;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 29;
    x
}

/// The bytes a read of `len` bytes at file offset `off` must give against the
/// pattern controller: the pattern where extents are mapped, zeros in holes, unwritten
/// extents and past the file's size. Found by a walk of its own, not by `plan`.
pub fn expected_bytes(t: &ExtentTable, off: u64, len: u64) -> Vec<u8> {
    let mut out = vec![0u8; len as usize];
    for e in t.extents() {
        let e_end = e.file_offset + (e.blocks << t.lba_shift());
        if e.kind != HOMI_EXTENT_MAPPED || e_end <= off || e.file_offset >= off + len {
            continue;
        }
        let (from, to) = (e.file_offset.max(off), e_end.min(off + len).min(t.file_size().max(off)));
        let mut f = from;
        while f < to {
            let ns = (e.lba << t.lba_shift()) + (f - e.file_offset);
            let w = pattern_word(e.nsid, ns & !7).to_le_bytes();
            let n = (8 - (ns % 8)).min(to - f);
            let o = (f - off) as usize;
            out[o..o + n as usize].copy_from_slice(&w[(ns % 8) as usize..(ns % 8 + n) as usize]);
            f += n;
        }
    }
    out
}

/// One command as the engine wrote it into a submission queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SqCommand {
    /// Opcode.
    pub opcode: u8,
    /// Namespace.
    pub nsid: u32,
    /// First LBA.
    pub slba: u64,
    /// Blocks.
    pub blocks: u32,
    /// PRP entry 1 (a GPU address with the GPU-resident controller).
    pub prp1: u64,
}

/// Every command each queue of `qs` has been given since it started, read back from
/// the submission queues; refused when a queue went round its ring (older entries are
/// overwritten). Call it while no kernel uses the queues.
pub fn submitted(gpu: &Gpu, qs: &GpuQueues) -> Result<Vec<SqCommand>> {
    let mut out = Vec::new();
    for d in qs.snapshot(gpu)? {
        if d.sq_ticket > u64::from(d.depth) {
            return Err(Error::Invalid("more commands than one pass of the ring"));
        }
        let mut sq = vec![0u8; d.sq_ticket as usize * 64];
        gpu.context().bind_to_thread().map_err(GpuError::driver("cuCtxSetCurrent"))?;
        // SAFETY: the ring holds `depth` 64-byte entries at `d.sq` and lives as long as
        // `qs`; `sq` has room for the first `sq_ticket` of them.
        let r = unsafe { sys::cuMemcpyDtoH_v2(sq.as_mut_ptr().cast(), d.sq, sq.len()) };
        if r != sys::CUresult::CUDA_SUCCESS {
            return Err(Error::Gpu(GpuError::Driver { op: "cuMemcpyDtoH", source: cudarc::driver::DriverError(r) }));
        }
        let le = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        for e in sq.chunks_exact(64) {
            out.push(SqCommand {
                opcode: e[0],
                nsid: u32::from_le_bytes(e[4..8].try_into().expect("4 bytes")),
                slba: le(&e[40..48]),
                blocks: u32::from(u16::from_le_bytes([e[48], e[49]])) + 1,
                prp1: le(&e[24..32]),
            });
        }
    }
    out.sort();
    Ok(out)
}

/// The commands `reqs` must give on queues of largest transfer `max_transfer` with
/// destination buffer `mem` (GPU addresses as controller addresses), sorted; `None` for
/// a request the engine must refuse.
pub fn expected_commands(
    t: &ExtentTable,
    reqs: &[FileReq],
    max_transfer: u32,
    mem: &GpuBuffer,
) -> (Vec<SqCommand>, Vec<bool>) {
    let mut cmds = Vec::new();
    let mut valid = Vec::new();
    for r in reqs {
        match t.plan(r.off, r.len, r.dst, max_transfer) {
            Ok(pieces) => {
                valid.push(true);
                for p in pieces {
                    if let homi::gpu::PieceKind::Read { nsid, lba, blocks } = p.kind {
                        cmds.push(SqCommand {
                            opcode: Opcode::Read as u8,
                            nsid,
                            slba: lba,
                            blocks,
                            prp1: mem.dev_ptr() + p.dst_offset,
                        });
                    }
                }
            }
            Err(_) => valid.push(false),
        }
    }
    cmds.sort();
    (cmds, valid)
}

/// What a revocation loop saw.
#[derive(Clone, Debug)]
pub struct LoopOutcome {
    /// What each thread's last call returned.
    pub results: Vec<i32>,
    /// Calls each thread completed before that.
    pub calls: Vec<u64>,
    /// From the host's change of the state word until a GPU thread was refused.
    pub seen_after: Option<Duration>,
    /// From that change until every thread had returned.
    pub done_after: Duration,
}

/// The most requests one launch takes.
pub const MAX_REQUESTS: usize = 4096;

/// The file reading kernels, compiled for one GPU. Make it before starting a
/// GPU-resident controller: it registers host memory. It allocates nothing per call:
/// freeing GPU memory waits for every running kernel, the controller's included.
pub struct FileReader {
    stream: Arc<CudaStream>,
    read: CudaFunction,
    looper: CudaFunction,
    /// Requests, results and call counts of one launch.
    reqs: DeviceMemory,
    results: DeviceMemory,
    calls: DeviceMemory,
    /// The word the first refused thread sets, mapped once.
    seen: (HostMapping, HostPages),
}

fn launch_shape(n: usize) -> LaunchConfig {
    let block = 128u32;
    LaunchConfig { grid_dim: ((n as u32).div_ceil(block), 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 }
}

impl FileReader {
    /// Compiles the kernels.
    pub fn new(gpu: &Gpu) -> Result<Self> {
        let module = gpu.compile(&source())?;
        let page = HostPages::new(PAGE);
        // SAFETY: `page` lives beside the mapping and drops after it.
        let map = unsafe { HostMapping::new(gpu, page.ptr(), PAGE, 0)? };
        Ok(Self {
            stream: gpu.context().new_stream().map_err(GpuError::driver("cuStreamCreate"))?,
            read: gpu.function(&module, "homi_file_read")?,
            looper: gpu.function(&module, "homi_file_read_loop")?,
            reqs: DeviceMemory::zeroed(gpu, MAX_REQUESTS * std::mem::size_of::<FileReq>())?,
            results: DeviceMemory::zeroed(gpu, MAX_REQUESTS * 4)?,
            calls: DeviceMemory::zeroed(gpu, MAX_REQUESTS * 8)?,
            seen: (map, page),
        })
    }

    /// Copies `reqs` in and clears the results.
    fn load(&self, reqs: &[FileReq]) -> Result<()> {
        if reqs.is_empty() || reqs.len() > MAX_REQUESTS {
            return Err(Error::Invalid("file reads: 1..=MAX_REQUESTS requests"));
        }
        self.reqs.write(0, reqs)?;
        self.results.write(0, &vec![0i32; reqs.len()])?;
        self.calls.write(0, &vec![0u64; reqs.len()])
    }

    fn wait(&self, limit: Duration) -> Result<()> {
        crate::gpu_work::wait_stream(&self.stream, limit, Duration::from_micros(100))
    }

    /// One thread per request; what each returned.
    pub fn read(&self, qs: &GpuQueues, map: &DeviceFileMap, mem: &GpuBuffer, reqs: &[FileReq]) -> Result<Vec<i32>> {
        self.load(reqs)?;
        let (qp, nq, m, d, rp, n, out) = (
            qs.device_handle(),
            qs.len() as u32,
            map.desc(),
            mem.desc(),
            self.reqs.dev_ptr(),
            reqs.len() as u32,
            self.results.dev_ptr(),
        );
        // SAFETY: the arguments match `homi_file_read`; everything named outlives the
        // wait below.
        unsafe {
            self.stream
                .launch_builder(&self.read)
                .arg(&qp)
                .arg(&nq)
                .arg(&m)
                .arg(&d)
                .arg(&rp)
                .arg(&n)
                .arg(&out)
                .launch(launch_shape(reqs.len()))
        }
        .map_err(GpuError::driver("launch homi_file_read"))?;
        self.wait(Duration::from_secs(10))?;
        let mut results = vec![0i32; reqs.len()];
        self.results.read(0, &mut results)?;
        Ok(results)
    }

    /// Each thread repeats its request (at most `max_calls` times); after `warm`,
    /// `revoke` runs (it turns the map's state word from live), and the host times how
    /// long the GPU takes to be refused and to finish.
    #[allow(clippy::too_many_arguments)]
    pub fn read_until_revoked(
        &self,
        qs: &GpuQueues,
        map: &DeviceFileMap,
        mem: &GpuBuffer,
        reqs: &[FileReq],
        max_calls: u64,
        warm: Duration,
        revoke: impl FnOnce(),
    ) -> Result<LoopOutcome> {
        self.load(reqs)?;
        let seen = self.seen.1.ptr().cast::<u32>();
        // SAFETY: a live, 4-aligned word of the page; no kernel uses it now.
        unsafe { std::ptr::write_volatile(seen, 0) };
        let (qp, nq, m, d, rp, n) =
            (qs.device_handle(), qs.len() as u32, map.desc(), mem.desc(), self.reqs.dev_ptr(), reqs.len() as u32);
        let (out, cp, sp) = (self.results.dev_ptr(), self.calls.dev_ptr(), self.seen.0.dev_ptr());
        // SAFETY: the arguments match `homi_file_read_loop`; everything named outlives
        // the wait below.
        unsafe {
            self.stream
                .launch_builder(&self.looper)
                .arg(&qp)
                .arg(&nq)
                .arg(&m)
                .arg(&d)
                .arg(&rp)
                .arg(&n)
                .arg(&out)
                .arg(&cp)
                .arg(&sp)
                .arg(&max_calls)
                .launch(launch_shape(reqs.len()))
        }
        .map_err(GpuError::driver("launch homi_file_read_loop"))?;
        std::thread::sleep(warm);
        let t0 = Instant::now();
        revoke();
        let mut seen_after = None;
        while t0.elapsed() < Duration::from_secs(5) {
            // SAFETY: as above; the GPU stores to it, so read it volatile.
            if unsafe { std::ptr::read_volatile(seen) } != 0 {
                seen_after = Some(t0.elapsed());
                break;
            }
            std::hint::spin_loop();
        }
        self.wait(Duration::from_secs(10))?;
        let done_after = t0.elapsed();
        let mut results = vec![0i32; reqs.len()];
        self.results.read(0, &mut results)?;
        let mut done = vec![0u64; reqs.len()];
        self.calls.read(0, &mut done)?;
        Ok(LoopOutcome { results, calls: done, seen_after, done_after })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_synthetic_map_is_a_valid_table_ending_inside_its_last_block() {
        let (e, size) = synthetic_map(9);
        let t = ExtentTable::new(&e, 9, size).unwrap();
        assert_eq!(t.end() - size, 1000);
        assert!(e.iter().any(|e| e.kind == HOMI_EXTENT_HOLE));
        assert!(e.iter().any(|e| e.kind == HOMI_EXTENT_UNWRITTEN));
    }

    #[test]
    fn expected_bytes_follow_the_pattern_and_zeros() {
        let (e, size) = synthetic_map(9);
        let t = ExtentTable::new(&e, 9, size).unwrap();
        let b = expected_bytes(&t, 0, 8);
        assert_eq!(b, pattern_word(1, 1000 << 9).to_le_bytes());
        assert!(expected_bytes(&t, 64 << 10, 32 << 10).iter().all(|&x| x == 0));
        let tail = expected_bytes(&t, t.end() - 4096, 4096);
        assert!(tail[4096 - 1000..].iter().all(|&x| x == 0));
        assert_ne!(tail[..8], [0u8; 8]);
    }
}
