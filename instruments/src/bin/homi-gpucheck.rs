//! `homi-gpucheck`: the device engine (homi.cuh) checked on a GPU against the test
//! instruments, since the GPU machines have no NVMe and the VMs no GPU.
//!
//! - Round trips: GPU threads write `--bytes` of a pattern through homi queues, read
//!   it all back and check every word on the GPU, at several queue depths and queue
//!   counts: against the software controller with rings and data in host memory
//!   mapped into the GPU, and in GPU memory (reached with CUDA copies), each with and
//!   without shadow doorbells; and against the GPU-resident controller (rings in GPU
//!   memory).
//! - Failures surface as errors, not hangs: a controller reset (dead queues), a lost
//!   completion (timeout).
//! - File maps: GPU threads reading file offsets through a synthetic extent table
//!   (mapped, hole, unwritten, fragmented pieces) issue exactly the Reads the map
//!   gives, see zeros where it has no data, and stop once its state word turns
//!   REVOKED. No homi.ko needed: the state word is the check's own.
//!
//! Prints one line per check and `N passed, N failed, N skipped`. Without a CUDA
//! driver every check is reported skipped. `--only TEXT` runs the checks whose name
//! holds TEXT.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use homi::gpu::{DeviceFileMap, Gpu, GpuQueues, GPU_DEAD, GPU_INVALID, GPU_REVOKED, GPU_TIMEOUT};
use homi::uapi::{HOMI_MAP_FENCED, HOMI_MAP_LIVE, HOMI_MAP_REVOKED};
use homi::{Result, PAGE};
use homi_instruments::gpu_ctrl::{GpuController, GpuCtrlConfig};
use homi_instruments::gpu_file::{self, FileReader, FileReq};
use homi_instruments::gpu_work::{Counts, LoopShape, Workload};
use homi_instruments::{Fault, SoftConfig, SoftController};

#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
    skipped: usize,
}

impl Tally {
    fn check(&mut self, name: &str, r: Result<String>) {
        match r {
            Ok(detail) => {
                self.passed += 1;
                println!("ok - {name} ({detail})");
            }
            Err(e) => {
                self.failed += 1;
                println!("not ok - {name}: {e}");
            }
        }
    }
}

/// The round-trip shapes: (initiators per queue, queues, I/O bytes).
const SHAPES: [(u32, usize, u32); 4] = [(1, 1, 128 << 10), (8, 2, 8 << 10), (32, 4, 4 << 10), (1024, 8, 16 << 10)];
/// The same depths and queue counts with larger I/Os, for the software controller
/// with rings in GPU memory, whose every access is a CUDA copy.
const GPU_MEMORY_SHAPES: [(u32, usize, u32); 4] =
    [(1, 1, 128 << 10), (8, 2, 128 << 10), (32, 4, 64 << 10), (1024, 8, 128 << 10)];

fn verdict(c: Counts, bytes: u64, io: u32, t: Instant) -> Result<String> {
    let want = 2 * bytes / u64::from(io);
    if c.failed != 0 || c.mismatches != 0 || c.ok != want {
        return Err(homi::Error::Invalid(Box::leak(
            format!(
                "{} ok of {want}, {} failed (first {}), {} words mismatched",
                c.ok, c.failed, c.first_failure, c.mismatches
            )
            .into_boxed_str(),
        )));
    }
    let secs = t.elapsed().as_secs_f64();
    Ok(format!(
        "{want} commands, {} MiB each way, 0 mismatches, {:.2} s, {:.2} GB/s",
        bytes >> 20,
        secs,
        2.0 * bytes as f64 / secs / 1e9
    ))
}

fn fail(msg: String) -> homi::Error {
    homi::Error::Invalid(Box::leak(msg.into_boxed_str()))
}

fn soft_round_trip(
    gpu: &Gpu,
    w: &Workload,
    bytes: u64,
    (in_gpu, shadow): (bool, bool),
    (qd, nq, io): (u32, usize, u32),
) -> Result<String> {
    let cfg = SoftConfig { blocks: bytes / 512, shadow_doorbells: shadow, ..SoftConfig::default() };
    let ctrl = if in_gpu { SoftController::for_gpu_memory(cfg, gpu) } else { SoftController::new(cfg) };
    let qs = ctrl.gpu_queues(gpu, nq, qd + 1, Duration::from_secs(30))?;
    let mem = ctrl.gpu_alloc(gpu, bytes as usize)?;
    let t = Instant::now();
    let c = w.round_trip(&qs, &mem, bytes, io, qd * nq as u32)?;
    verdict(c, bytes, io, t)
}

fn gpu_ctrl_round_trip(gpu: &Gpu, w: &Workload, bytes: u64, (qd, nq, io): (u32, usize, u32)) -> Result<String> {
    let cfg = GpuCtrlConfig { pattern: true, blocks: bytes / 512, ..GpuCtrlConfig::default() };
    let (mut ctrl, qs) = GpuController::start(gpu, cfg, nq, qd + 1, Duration::from_secs(30))?;
    let mem = ctrl.alloc(bytes as usize)?;
    let t = Instant::now();
    let c = w.round_trip(&qs, &mem, bytes, io, qd * nq as u32);
    let stats = ctrl.stop()?;
    let c = c?;
    if stats.mismatches != 0 {
        return Err(fail(format!("the controller saw {} writes differ from the pattern", stats.mismatches)));
    }
    verdict(c, bytes, io, t)
}

/// Runs a read loop, does `act` in the middle, and expects every initiator to stop
/// with `want` rather than hang.
fn surfaces(
    w: &Workload,
    qs: &GpuQueues,
    mem: &homi::gpu::GpuBuffer,
    want: i32,
    act: impl FnOnce() -> Result<()>,
) -> Result<String> {
    let shape = LoopShape { io: 4096, threads: 64, span_blocks: 1 << 16 };
    let (c, took) = w.read_loop(qs, mem, shape, Duration::from_secs(10), || {
        std::thread::sleep(Duration::from_millis(300));
        act()
    })?;
    if c.first_failure != i64::from(want) {
        return Err(fail(format!(
            "first failure {} (want {want}); {} reads ok, {} failed",
            c.first_failure, c.ok, c.failed
        )));
    }
    if took > Duration::from_secs(8) {
        return Err(fail(format!("initiators took {took:?} to give up")));
    }
    Ok(format!("{} reads ok before, every initiator returned {want}, kernel done in {took:.2?}", c.ok))
}

/// `--compile-only`: every CUDA source compiles with NVRTC for each architecture, no
/// GPU needed.
fn compile_only(archs: &[&str]) -> Tally {
    let mut t = Tally::default();
    for arch in archs {
        for (name, src) in homi_instruments::cuda_sources() {
            let n = format!("{name} compiles with NVRTC for {arch}");
            match homi::gpu::compile_for_arch(&src, arch) {
                Err(homi::Error::Gpu(homi::gpu::GpuError::NoCuda(lib))) => {
                    t.skipped += 1;
                    println!("skip - {n}: no {lib} on this machine");
                }
                r => t.check(&n, r.map(|_| "ok".into())),
            }
        }
    }
    t
}

/// The device engine's PRP entries against the host's rule, over scattered pages,
/// every alignment class, direct and listed transfers, the largest list and ranges
/// both must refuse.
fn prp_rule(w: &Workload) -> Result<String> {
    let pages: Vec<u64> = (0..600u64).map(|i| 0x40_0000_0000 + ((i * 7919) % 600) * PAGE as u64).collect();
    let mut cases = Vec::new();
    for off in [0u64, 4, 512, 4092, 4096, 8192 + 2048, 2] {
        for len in [0u32, 4, 512, 3584, 4096, 4097, 8192, 12288, 65536, 131072, 513 * 4096, 514 * 4096] {
            cases.push((off, len));
        }
    }
    cases.extend([(599 * PAGE as u64, 4096), (599 * PAGE as u64, 8192), (600 * PAGE as u64, 4096)]);
    let got = w.prp_cases(&pages, &cases)?;
    let mut agree = 0;
    for (c, g) in cases.iter().zip(&got) {
        let want = homi::prp_entries(&pages, c.0 as usize, c.1 as usize).ok();
        if want != *g {
            return Err(fail(format!("offset {} len {}: host {want:?}, device {g:?}", c.0, c.1)));
        }
        agree += 1;
    }
    Ok(format!("{agree} cases agree, {} of them refused by both", got.iter().filter(|g| g.is_none()).count()))
}

/// The requests of the file map checks: whole map at aligned and unaligned
/// destinations, each extent, every extent boundary straddled, single blocks, the
/// last block, and four the engine must refuse. Returns them and the buffer they need.
fn file_requests(t: &homi::gpu::ExtentTable) -> (Vec<FileReq>, usize) {
    let end = t.end();
    let mut ranges = vec![(0, end, 0u64), (0, end, 512)];
    ranges.extend(t.extents().iter().map(|e| (e.file_offset, e.blocks << t.lba_shift(), 0)));
    ranges.extend(t.extents().iter().skip(1).map(|e| (e.file_offset - 1024, 2048, 0)));
    ranges.extend((0..48u64).map(|k| ((k * 69_632 + (k % 8) * 512) % end, 512, 0)));
    ranges.push((end - 4096, 4096, 0));
    // Refused: not whole blocks, past the end, a destination not 4-aligned.
    ranges.extend([(100, 512, 0), (0, 1000, 0), (end - 512, 1024, 0), (0, 512, 2)]);
    let mut dst = 0u64;
    let mut reqs = Vec::new();
    for (off, len, skew) in ranges {
        let at = dst.next_multiple_of(PAGE as u64) + skew;
        reqs.push(FileReq { off, len, dst: at });
        // A block between requests, so neighbours' writes would show.
        dst = at + len + 512;
    }
    (reqs, dst as usize)
}

/// A kernel that did not finish leaves the GPU busy, and freeing memory would wait for
/// it: report where the queues stand and end the run.
fn hung(gpu: &Gpu, qs: &GpuQueues, what: &str) -> ! {
    println!("not ok - {what}: the kernel did not finish");
    if let Ok(ds) = qs.snapshot(gpu) {
        for d in ds {
            println!(
                "# queue {}: ticket {} published {} cq_head {} error {}",
                d.qid, d.sq_ticket, d.sq_published, d.cq_head, d.error
            );
        }
    }
    std::process::exit(3)
}

/// One round of [`file_map_reads`]: `reqs` on a fresh pattern controller; the Reads
/// submitted, the results and the bytes are checked. Returns (Reads, bytes checked,
/// bytes of zeros, refused requests).
fn file_round(gpu: &Gpu, map: &DeviceFileMap, reader: &FileReader, reqs: &[FileReq]) -> Result<[u64; 4]> {
    let bytes = reqs.iter().map(|r| r.dst + r.len + 512).max().unwrap_or(PAGE as u64) as usize;
    let cfg = GpuCtrlConfig { pattern: true, blocks: 1 << 21, ..GpuCtrlConfig::default() };
    let (mut ctrl, qs) = GpuController::start(gpu, cfg, 2, 1024, Duration::from_secs(30))?;
    let mem = ctrl.alloc(bytes)?;
    mem.write_at(0, &vec![0xa5u8; mem.len()])?;
    let results = match reader.read(&qs, map, &mem, reqs) {
        Err(homi::Error::Timeout(_)) => hung(gpu, &qs, &format!("file map reads, {} threads", reqs.len())),
        r => r,
    };
    let stats = ctrl.stop()?;
    let results = results?;
    let max_transfer = qs.snapshot(gpu)?[0].max_transfer;
    let (want, valid) = gpu_file::expected_commands(map.table(), reqs, max_transfer, &mem);
    let got = gpu_file::submitted(gpu, &qs)?;
    for (i, (r, v)) in results.iter().zip(&valid).enumerate() {
        if *r != if *v { 0 } else { GPU_INVALID } {
            return Err(fail(format!("request {i} {:?} returned {r} (valid: {v})", reqs[i])));
        }
    }
    if got != want {
        let missing = want.iter().filter(|c| !got.contains(c)).count();
        let extra = got.iter().filter(|c| !want.contains(c)).count();
        return Err(fail(format!(
            "{} commands submitted, {} expected: {missing} missing, {extra} not expected; first got {:?}, want {:?}",
            got.len(),
            want.len(),
            got.first(),
            want.first()
        )));
    }
    if stats.commands != got.len() as u64 {
        return Err(fail(format!("the controller served {} of {} commands", stats.commands, got.len())));
    }
    let mut data = vec![0u8; mem.len()];
    mem.read_at(0, &mut data)?;
    let (mut zeros, mut checked) = (0u64, 0u64);
    for (r, v) in reqs.iter().zip(&valid) {
        let region = &data[r.dst as usize..(r.dst + r.len) as usize];
        if !*v {
            if region.iter().any(|&b| b != 0xa5) {
                return Err(fail(format!("refused request {r:?} wrote its destination")));
            }
            continue;
        }
        let exp = gpu_file::expected_bytes(map.table(), r.off, r.len);
        if let Some(at) = region.iter().zip(&exp).position(|(a, b)| a != b) {
            return Err(fail(format!(
                "request {r:?}: file byte {} is {:#04x}, want {:#04x}",
                r.off + at as u64,
                region[at],
                exp[at]
            )));
        }
        zeros += exp.iter().filter(|&&b| b == 0).count() as u64;
        checked += exp.len() as u64;
        let gap = &data[(r.dst + r.len) as usize..(r.dst + r.len + 512).min(mem.len() as u64) as usize];
        if gap.iter().any(|&b| b != 0xa5) {
            return Err(fail(format!("request {r:?} wrote past its destination")));
        }
    }
    Ok([got.len() as u64, checked, zeros, valid.iter().filter(|v| !**v).count() as u64])
}

/// GPU threads read through a synthetic file map against the pattern controller:
/// the Reads in the submission queues are exactly those the map gives, and every byte
/// read is the pattern's or zero where the map says so. Three rounds: one thread
/// reading the whole map, a warp of threads each reading it, and a thread per request
/// of [`file_requests`] (threads of a warp on different paths).
fn file_map_reads(gpu: &Gpu) -> Result<String> {
    let (extents, size) = gpu_file::synthetic_map(9);
    let state = Box::new(AtomicU32::new(HOMI_MAP_LIVE));
    // SAFETY: `state` is declared first, so it drops after the map; only atomics
    // touch it.
    let map = unsafe { DeviceFileMap::new(gpu, &extents, state.as_ptr(), 9, size)? };
    let reader = FileReader::new(gpu)?;
    let (reqs, _) = file_requests(map.table());
    let end = map.table().end();
    let whole: Vec<FileReq> = (0..32u64).map(|i| FileReq { off: 0, len: end, dst: i * (end + PAGE as u64) }).collect();
    let mut total = [0u64; 4];
    for round in [&whole[..1], &whole[..], &reqs[..]] {
        let r = file_round(gpu, &map, &reader, round)?;
        for (t, v) in total.iter_mut().zip(r) {
            *t += v;
        }
    }
    let [reads, checked, zeros, refused] = total;
    Ok(format!(
        "{} extents; 1, 32 and {} threads: {reads} Reads exactly as planned (nsid, LBA, blocks, PRP), {refused} \
         requests refused, {} KiB checked, {} KiB of it zeros",
        map.table().extents().len(),
        reqs.len(),
        checked >> 10,
        zeros >> 10
    ))
}

/// GPU threads read through a file map over and over, against the null controller;
/// the state word turns REVOKED: every thread must stop with HOMI_GPU_REVOKED, and
/// later calls (REVOKED, then FENCED) submit nothing.
fn file_map_revoked(gpu: &Gpu) -> Result<String> {
    let (extents, size) = gpu_file::synthetic_map(9);
    let state = Box::new(AtomicU32::new(HOMI_MAP_LIVE));
    // SAFETY: as in `file_map_reads`.
    let map = unsafe { DeviceFileMap::new(gpu, &extents, state.as_ptr(), 9, size)? };
    let reader = FileReader::new(gpu)?;
    let span = map.table().end() - (64 << 10);
    let reqs: Vec<FileReq> =
        (0..256u64).map(|i| FileReq { off: (i * 12_288) % span, len: 64 << 10, dst: i * (64 << 10) }).collect();
    let (mut ctrl, qs) = GpuController::start(gpu, GpuCtrlConfig::default(), 2, 256, Duration::from_secs(30))?;
    let mem = ctrl.alloc(256 << 16)?;
    let tickets = |qs: &GpuQueues| -> Result<u64> { Ok(qs.snapshot(gpu)?.iter().map(|d| d.sq_ticket).sum()) };
    let out = reader.read_until_revoked(&qs, &map, &mem, &reqs, 2_000_000, Duration::from_millis(300), || {
        state.store(HOMI_MAP_REVOKED, Ordering::Release)
    });
    if let Err(homi::Error::Timeout(_)) = out {
        hung(gpu, &qs, "file map revocation loop");
    }
    let r = (|| {
        let out = out?;
        if let Some((i, r)) = out.results.iter().enumerate().find(|(_, r)| **r != GPU_REVOKED) {
            return Err(fail(format!("thread {i} returned {r}, want HOMI_GPU_REVOKED ({GPU_REVOKED})")));
        }
        if let Some(i) = out.calls.iter().position(|&c| c == 0) {
            return Err(fail(format!("thread {i} read nothing while the map was live")));
        }
        let seen = out.seen_after.ok_or_else(|| fail("no GPU thread was seen refused within 5 s".into()))?;
        let after = tickets(&qs)?;
        let mut again = Vec::new();
        for s in [HOMI_MAP_REVOKED, HOMI_MAP_FENCED] {
            state.store(s, Ordering::Release);
            let t0 = Instant::now();
            while map.state() != s && t0.elapsed() < Duration::from_secs(1) {
                std::thread::sleep(Duration::from_micros(50));
            }
            match reader.read(&qs, &map, &mem, &reqs) {
                Err(homi::Error::Timeout(_)) => hung(gpu, &qs, "file map reads after the revocation"),
                r => again.extend(r?),
            }
        }
        if let Some(r) = again.iter().find(|r| **r != GPU_REVOKED) {
            return Err(fail(format!("a call on a map no longer live returned {r}")));
        }
        let last = tickets(&qs)?;
        if last != after {
            return Err(fail(format!("{} commands submitted on a map no longer live", last - after)));
        }
        Ok((out.calls.iter().sum::<u64>(), after, seen, out.done_after))
    })();
    let stats = ctrl.stop()?;
    let (calls, submitted, seen, done) = r?;
    if stats.commands != submitted {
        return Err(fail(format!("the controller served {} of {submitted} commands", stats.commands)));
    }
    Ok(format!(
        "{calls} file reads ({submitted} Reads) while live; after the flip a GPU thread was refused in {seen:.1?} \
         (host poll {:?}), all 256 threads returned HOMI_GPU_REVOKED in {done:.1?}; 512 calls on the REVOKED and \
         FENCED map submitted 0 commands",
        homi::gpu::DEFAULT_POLL
    ))
}

/// One check of the run.
#[derive(Clone, Copy)]
enum Case {
    /// A round trip through the software controller.
    Soft {
        in_gpu: bool,
        shadow: bool,
        shape: (u32, usize, u32),
    },
    /// A round trip through the GPU-resident controller.
    GpuCtrl {
        shape: (u32, usize, u32),
    },
    ResetSoft,
    ResetGpuCtrl,
    Timeout,
    PrpRule,
    FileMapReads,
    FileMapRevoked,
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for (in_gpu, shapes) in [(false, SHAPES), (true, GPU_MEMORY_SHAPES)] {
        for shadow in [false, true] {
            v.extend(shapes.map(|shape| Case::Soft { in_gpu, shadow, shape }));
        }
    }
    v.extend(SHAPES.map(|shape| Case::GpuCtrl { shape }));
    v.extend([Case::ResetSoft, Case::ResetGpuCtrl, Case::Timeout, Case::PrpRule]);
    v.extend([Case::FileMapReads, Case::FileMapRevoked]);
    v
}

fn name(c: Case) -> String {
    let shape = |(qd, nq, io): (u32, usize, u32)| format!("QD {qd} x {nq} queues, {} KiB I/Os", io >> 10);
    match c {
        Case::Soft { in_gpu, shadow, shape: sh } => format!(
            "soft controller, rings and data in {} memory, shadow doorbells {}, {}",
            if in_gpu { "GPU" } else { "host" },
            if shadow { "on" } else { "off" },
            shape(sh)
        ),
        Case::GpuCtrl { shape: sh } => format!("GPU-resident controller, rings in GPU memory, {}", shape(sh)),
        Case::ResetSoft => "a reset surfaces as HOMI_GPU_DEAD (software controller)".into(),
        Case::ResetGpuCtrl => "a reset surfaces as HOMI_GPU_DEAD (GPU-resident controller)".into(),
        Case::Timeout => "a lost completion surfaces as HOMI_GPU_TIMEOUT".into(),
        Case::PrpRule => "the device engine builds the PRP entries homi::prp_entries gives, case for case".into(),
        Case::FileMapReads => "file map: GPU threads reading file offsets issue exactly the planned Reads and read \
                               zeros in holes, unwritten extents and past the end (GPU-resident controller, pattern mode)"
            .into(),
        Case::FileMapRevoked => "file map: a state word turned REVOKED stops GPU file reads with HOMI_GPU_REVOKED, \
                                 and nothing more is submitted (GPU-resident null controller)"
            .into(),
    }
}

fn run(c: Case, gpu: &Gpu, w: &Workload, bytes: u64) -> Result<String> {
    match c {
        Case::Soft { in_gpu, shadow, shape } => soft_round_trip(gpu, w, bytes, (in_gpu, shadow), shape),
        Case::GpuCtrl { shape } => gpu_ctrl_round_trip(gpu, w, bytes, shape),
        Case::ResetSoft => {
            let ctrl = SoftController::new(SoftConfig { blocks: 1 << 16, ..SoftConfig::default() });
            let qs = ctrl.gpu_queues(gpu, 4, 64, Duration::from_secs(30))?;
            let mem = ctrl.gpu_alloc(gpu, 64 * PAGE)?;
            surfaces(w, &qs, &mem, GPU_DEAD, || {
                ctrl.reset();
                Ok(())
            })
        }
        Case::ResetGpuCtrl => {
            let (mut ctrl, qs) = GpuController::start(gpu, GpuCtrlConfig::default(), 4, 64, Duration::from_secs(30))?;
            let mem = ctrl.alloc(64 * PAGE)?;
            let r = surfaces(w, &qs, &mem, GPU_DEAD, || ctrl.kill_queues());
            ctrl.stop()?;
            r
        }
        Case::PrpRule => prp_rule(w),
        Case::FileMapReads => file_map_reads(gpu),
        Case::FileMapRevoked => file_map_revoked(gpu),
        Case::Timeout => {
            let ctrl = SoftController::new(SoftConfig { blocks: 1 << 16, ..SoftConfig::default() });
            let qs = ctrl.gpu_queues(gpu, 1, 64, Duration::from_millis(500))?;
            let mem = ctrl.gpu_alloc(gpu, 64 * PAGE)?;
            surfaces(w, &qs, &mem, GPU_TIMEOUT, || {
                ctrl.inject(Fault::Drop { count: 1 });
                Ok(())
            })
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut bytes: u64 = 1 << 30;
    let mut only: Option<String> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bytes" => bytes = args.next().and_then(|v| v.parse().ok()).expect("--bytes N"),
            "--only" => only = Some(args.next().expect("--only TEXT")),
            "--compile-only" => {
                let t = compile_only(&["sm_80", "sm_90"]);
                println!("{} passed, {} failed, {} skipped", t.passed, t.failed, t.skipped);
                std::process::exit(i32::from(t.failed > 0));
            }
            other => {
                panic!("unknown argument {other} (usage: homi-gpucheck [--bytes N] [--only TEXT] [--compile-only])")
            }
        }
    }
    let mut t = Tally::default();
    let gpu = match Gpu::new(0) {
        Ok(g) => g,
        Err(e) => {
            for c in cases() {
                t.skipped += 1;
                println!("skip - {}: {e}", name(c));
            }
            println!("{} passed, {} failed, {} skipped", t.passed, t.failed, t.skipped);
            return;
        }
    };
    println!("# {}", gpu.describe());
    let w = match Workload::new(&gpu) {
        Ok(w) => w,
        Err(e) => {
            println!("not ok - the device engine and workloads compile with NVRTC: {e}");
            println!("0 passed, 1 failed, 0 skipped");
            std::process::exit(1);
        }
    };
    t.check("the device engine and workloads compile with NVRTC", Ok(gpu.describe()));
    for c in cases() {
        if only.as_ref().is_some_and(|o| !name(c).contains(o.as_str())) {
            continue;
        }
        t.check(&name(c), run(c, &gpu, &w, bytes));
    }
    println!("{} passed, {} failed, {} skipped", t.passed, t.failed, t.skipped);
    if t.failed > 0 {
        std::process::exit(1);
    }
}
