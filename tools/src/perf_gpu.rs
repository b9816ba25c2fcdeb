//! `homi perf --path gpu`: reads issued by CUDA threads through homi queue pairs
//! (homi.cuh), every GPU thread one initiator with one command in flight:
//! `--qd` initiators per queue pair, `--queues` queue pairs.
//!
//! Controllers: `nvme` (a real one through homi.ko, rings placed by `--placement`),
//! or, where no NVMe exists, the test instruments of `homi-instruments`: `soft` (the
//! software controller in null mode, rings in host memory mapped into the GPU) and
//! `gpu-null` (the GPU-resident null controller, rings where `--placement` says).
//! Instruments measure the engine, never storage. `--ceiling` also measures GPU
//! stores of 64-byte SQ entries into the same placement with no controller at all.

use serde::Serialize;

use crate::perf::PerfArgs;

/// Which controller `--path gpu` drives.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GpuCtrl {
    /// A real controller through homi.ko (`--nvme`).
    #[default]
    Nvme,
    /// The software controller, null mode (a test instrument).
    Soft,
    /// The GPU-resident null controller (a test instrument).
    GpuNull,
}

/// Where `--path gpu` places the rings.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RingPlace {
    /// GPU memory.
    #[default]
    Gpu,
    /// Host memory mapped into the GPU.
    Host,
}

/// Options of `--path gpu`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct GpuOpts {
    /// `--path gpu`: the controller.
    #[arg(long, value_enum, default_value = "nvme")]
    pub controller: GpuCtrl,
    /// `--path gpu`: where the rings live.
    #[arg(long, value_enum, default_value = "gpu")]
    pub placement: RingPlace,
    /// `--path gpu`: queue pairs; GPU initiators are `--qd` x `--queues`.
    #[arg(long, default_value_t = 1)]
    pub queues: u32,
    /// `--path gpu`: also measure the SQ-entry store ceiling of the placement.
    #[arg(long)]
    pub ceiling: bool,
}

/// The result of one `--path gpu` run: its `--json` schema.
#[cfg(feature = "cuda")]
#[derive(Serialize, Debug, Clone)]
pub struct GpuReport {
    pub path: &'static str,
    pub gpu: String,
    pub controller: GpuCtrl,
    pub placement: RingPlace,
    pub bs: usize,
    pub qd: u32,
    pub queues: u32,
    /// GPU threads issuing reads, each with one in flight.
    pub initiators: u32,
    pub ios: u64,
    pub seconds: f64,
    /// Commands submitted and completed per second (round trips).
    pub iops: f64,
    pub mib_per_s: f64,
    /// Mean time per command in microseconds, by Little's law (initiators / IOPS).
    pub mean_latency_us: f64,
    /// With `--ceiling`: 64-byte SQ entries per second that GPU threads store into the
    /// same placement with no controller.
    pub store_ceiling_per_s: Option<f64>,
}

#[cfg(not(feature = "cuda"))]
pub fn main(_args: &PerfArgs) -> anyhow::Result<()> {
    anyhow::bail!("this homi was built without the `cuda` feature: rebuild with `--features cuda` for --path gpu")
}

#[cfg(feature = "cuda")]
pub fn main(args: &PerfArgs) -> anyhow::Result<()> {
    let r = run(args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "gpu {} rings in {} bs={} qd={} queues={} ({} initiators): {:.2} M commands/s, {:.1} MiB/s, mean {:.2} us{}",
            crate::bench::name(&r.controller),
            crate::bench::name(&r.placement),
            r.bs,
            r.qd,
            r.queues,
            r.initiators,
            r.iops / 1e6,
            r.mib_per_s,
            r.mean_latency_us,
            r.store_ceiling_per_s.map(|c| format!(", store ceiling {:.1} M SQEs/s", c / 1e6)).unwrap_or_default()
        );
        println!("  on {}", r.gpu);
    }
    Ok(())
}

#[cfg(feature = "cuda")]
fn validate(args: &PerfArgs) -> anyhow::Result<u32> {
    use anyhow::ensure;
    let g = &args.gpu;
    ensure!(
        args.bs >= 4096 && args.bs % 4096 == 0 && args.bs <= 1 << 20,
        "--bs must be a multiple of 4096 up to 1 MiB"
    );
    ensure!((1..=4096).contains(&args.qd), "--qd must be 1..=4096 for --path gpu, got {}", args.qd);
    ensure!((1..=1024).contains(&g.queues), "--queues must be 1..=1024, got {}", g.queues);
    ensure!(args.threads == 1, "--path gpu: GPU initiators are --qd x --queues; leave --threads at 1");
    ensure!(args.runtime > 0.0 && args.runtime <= 600.0, "--runtime must be in (0, 600]");
    ensure!(args.ios.is_none(), "--path gpu runs for --runtime; --ios is not supported");
    ensure!(
        !(g.controller == GpuCtrl::Soft && g.placement == RingPlace::Gpu),
        "the software controller runs on the host: use --placement host"
    );
    let initiators = args.qd * g.queues;
    ensure!(initiators <= 256 || initiators % 256 == 0, "--qd x --queues must be at most 256 or a multiple of 256");
    Ok(initiators)
}

#[cfg(feature = "cuda")]
pub fn run(args: &PerfArgs) -> anyhow::Result<GpuReport> {
    use std::time::Duration;

    use homi::gpu::{Gpu, Placement};
    use homi_instruments::gpu_ctrl::{GpuController, GpuCtrlConfig};
    use homi_instruments::gpu_work::{LoopShape, Workload};
    use homi_instruments::{SoftConfig, SoftController};

    let initiators = validate(args)?;
    let g = &args.gpu;
    let gpu = Gpu::new(0)?;
    let w = Workload::new(&gpu)?;
    let depth = args.qd + 1;
    let run_for = Duration::from_secs_f64(args.runtime);
    let timeout = Duration::from_secs(10);
    let mem_len = initiators as usize * args.bs;
    let counted = |qs: &homi::gpu::GpuQueues, mem: &homi::gpu::GpuBuffer, lba_shift: u32| {
        let span_blocks = (args.span >> lba_shift).max((args.bs >> lba_shift) as u64);
        let shape = LoopShape { io: args.bs as u32, threads: initiators, span_blocks };
        w.read_loop(qs, mem, shape, run_for, || Ok(()))
    };
    let (counts, took) = match g.controller {
        GpuCtrl::Nvme => {
            let ctrl = homi::Controller::open(&args.nvme)?;
            let place = if g.placement == RingPlace::Gpu { Placement::GpuMemory } else { Placement::HostMemory };
            let qs = gpu.queue_pairs(&ctrl, g.queues as usize, depth, place, args.nsid, timeout)?;
            let mem = gpu.alloc_dma(&ctrl, mem_len)?;
            let shift = ctrl.info()?.namespaces.iter().find(|n| n.nsid == args.nsid).map_or(9, |n| n.lba_shift);
            counted(&qs, &mem, shift)?
        }
        GpuCtrl::Soft => {
            let blocks = (args.span / 512).max(1 << 12);
            let ctrl = SoftController::new(SoftConfig { null: true, blocks, ..SoftConfig::default() });
            let qs = ctrl.gpu_queues(&gpu, g.queues as usize, depth, timeout)?;
            let mem = ctrl.gpu_alloc(&gpu, mem_len)?;
            counted(&qs, &mem, 9)?
        }
        GpuCtrl::GpuNull => {
            let cfg = GpuCtrlConfig { host_rings: g.placement == RingPlace::Host, ..GpuCtrlConfig::default() };
            let (mut ctrl, qs) = GpuController::start(&gpu, cfg, g.queues as usize, depth, timeout)?;
            let mem = ctrl.alloc(mem_len)?;
            let r = counted(&qs, &mem, 9);
            ctrl.stop()?;
            r?
        }
    };
    anyhow::ensure!(counts.failed == 0, "{} commands failed (first: {})", counts.failed, counts.first_failure);
    let store_ceiling_per_s = if g.ceiling {
        let entries = 4096u32;
        Some(match g.placement {
            RingPlace::Gpu => {
                let ring = homi::gpu::DeviceMemory::zeroed(&gpu, entries as usize * 64)?;
                w.store_ceiling(ring.dev_ptr(), entries, initiators, run_for)?
            }
            RingPlace::Host => {
                let pages = homi::HostPages::new(entries as usize * 64);
                // SAFETY: `pages` outlives the mapping (dropped after it below).
                let map = unsafe { homi::gpu::HostMapping::new(&gpu, pages.ptr(), pages.len(), 0)? };
                let r = w.store_ceiling(map.dev_ptr(), entries, initiators, run_for)?;
                drop(map);
                r
            }
        })
    } else {
        None
    };
    let seconds = took.as_secs_f64();
    let iops = counts.ok as f64 / seconds;
    Ok(GpuReport {
        path: "gpu",
        gpu: gpu.describe(),
        controller: g.controller,
        placement: g.placement,
        bs: args.bs,
        qd: args.qd,
        queues: g.queues,
        initiators,
        ios: counts.ok,
        seconds,
        iops,
        mib_per_s: iops * args.bs as f64 / (1 << 20) as f64,
        mean_latency_us: if iops > 0.0 { f64::from(initiators) / iops * 1e6 } else { 0.0 },
        store_ceiling_per_s,
    })
}
