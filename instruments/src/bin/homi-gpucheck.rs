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
//!
//! Prints one line per check and `N passed, N failed, N skipped`. Without a CUDA
//! driver every check is reported skipped.

use std::time::{Duration, Instant};

use homi::gpu::{Gpu, GpuQueues, GPU_DEAD, GPU_TIMEOUT};
use homi::{Result, PAGE};
use homi_instruments::gpu_ctrl::{GpuController, GpuCtrlConfig};
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
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bytes" => bytes = args.next().and_then(|v| v.parse().ok()).expect("--bytes N"),
            "--compile-only" => {
                let t = compile_only(&["sm_80", "sm_90"]);
                println!("{} passed, {} failed, {} skipped", t.passed, t.failed, t.skipped);
                std::process::exit(i32::from(t.failed > 0));
            }
            other => panic!("unknown argument {other} (usage: homi-gpucheck [--bytes N] [--compile-only])"),
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
        t.check(&name(c), run(c, &gpu, &w, bytes));
    }
    println!("{} passed, {} failed, {} skipped", t.passed, t.failed, t.skipped);
    if t.failed > 0 {
        std::process::exit(1);
    }
}
