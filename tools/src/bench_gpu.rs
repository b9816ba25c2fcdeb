//! `homi bench --gpu`: the device-initiated sweeps of the AiSIO evaluation, through
//! `homi perf --path gpu`: queue-depth scaling (4 KiB reads) and I/O-size scaling
//! (QD 32 per queue), one line per ring placement, written as JSON, CSV and SVG
//! plots (plotters).
//!
//! Against `--controller gpu-null` or `soft` (test instruments) the sweep measures
//! the device engine and the bus, not storage: the null controller moves no data.

use std::fmt::Write as _;
use std::path::Path;

use crate::bench::name;
use crate::perf::{IoPath, PerfArgs, Rw};
use crate::perf_gpu::{GpuCtrl, GpuOpts, RingPlace};
use crate::plot::{lines, Labels, Series};

/// Queue depths per queue pair of the QD sweep.
pub const QDS: [u32; 6] = [1, 2, 8, 16, 32, 64];
/// I/O sizes of the size sweep.
pub const SIZES: [usize; 5] = [4096, 16384, 65536, 131072, 262144];

/// One point of a sweep.
#[derive(serde::Serialize, Debug, Clone)]
pub struct Point {
    pub sweep: &'static str,
    pub placement: RingPlace,
    pub bs: usize,
    pub qd: u32,
    pub queues: u32,
    pub commands_per_s: f64,
    pub gib_per_s: f64,
    pub mean_latency_us: f64,
}

/// The placements a controller can serve: the software controller only host memory.
fn placements(c: GpuCtrl) -> Vec<RingPlace> {
    match c {
        GpuCtrl::Soft => vec![RingPlace::Host],
        _ => vec![RingPlace::Gpu, RingPlace::Host],
    }
}

/// The arguments every sweep run starts from: 4 KiB random reads over 1 GiB of
/// namespace 1 of `nvme`, `runtime` seconds each.
pub fn base(runtime: f64, nvme: std::path::PathBuf) -> PerfArgs {
    PerfArgs {
        path: IoPath::Gpu,
        rw: Rw::Randread,
        bs: 4096,
        qd: 1,
        threads: 1,
        runtime,
        ios: None,
        nvme,
        nsid: 1,
        span: 1 << 30,
        json: false,
        gpu: GpuOpts::default(),
        file: None,
    }
}

/// The sweep's runs, as `homi perf` arguments.
pub fn grid(base: &PerfArgs, controller: GpuCtrl, queues: u32) -> Vec<(&'static str, PerfArgs)> {
    let mut runs = Vec::new();
    for placement in placements(controller) {
        let gpu = GpuOpts { controller, placement, queues, ceiling: false };
        let at = |qd: u32, bs: usize| PerfArgs {
            path: IoPath::Gpu,
            rw: Rw::Randread,
            qd,
            bs,
            threads: 1,
            ios: None,
            gpu: gpu.clone(),
            ..base.clone()
        };
        runs.extend(QDS.iter().map(|&qd| ("qd", at(qd, 4096))));
        runs.extend(SIZES.iter().map(|&bs| ("size", at(32, bs))));
    }
    runs
}

/// Runs the sweeps and writes `gpu-sweep.{json,csv}`, `gpu-qd.svg` and `gpu-size.svg`
/// into `out`.
pub fn run(base: &PerfArgs, controller: GpuCtrl, queues: u32, out: &Path) -> anyhow::Result<()> {
    use anyhow::Context;

    let runs = grid(base, controller, queues);
    let bar = indicatif::ProgressBar::new(runs.len() as u64);
    let mut points = Vec::new();
    for (sweep, args) in &runs {
        bar.set_message(format!("{} qd {} bs {}", name(&args.gpu.placement), args.qd, args.bs));
        let r = crate::perf_gpu::run(args).with_context(|| format!("{sweep} sweep, qd {} bs {}", args.qd, args.bs))?;
        points.push(Point {
            sweep,
            placement: r.placement,
            bs: r.bs,
            qd: r.qd,
            queues: r.queues,
            commands_per_s: r.iops,
            gib_per_s: r.iops * r.bs as f64 / (1u64 << 30) as f64,
            mean_latency_us: r.mean_latency_us,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    write(&points, controller, queues, out)
}

/// Writes the sweep's files.
pub fn write(points: &[Point], controller: GpuCtrl, queues: u32, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("gpu-sweep.json"), serde_json::to_string_pretty(points)?)?;
    let mut csv = String::from("sweep,placement,bs,qd,queues,commands_per_s,gib_per_s,mean_latency_us\n");
    for p in points {
        writeln!(
            csv,
            "{},{},{},{},{},{:.0},{:.3},{:.2}",
            p.sweep,
            name(&p.placement),
            p.bs,
            p.qd,
            p.queues,
            p.commands_per_s,
            p.gib_per_s,
            p.mean_latency_us
        )?;
    }
    std::fs::write(out.join("gpu-sweep.csv"), csv)?;
    let series = |sweep: &str, f: &dyn Fn(&Point) -> (f64, f64)| -> Vec<Series> {
        placements(controller)
            .into_iter()
            .map(|pl| Series {
                label: format!("rings in {} memory", name(&pl)),
                points: points.iter().filter(|p| p.sweep == sweep && p.placement == pl).map(|p| f(p).into()).collect(),
            })
            .collect()
    };
    let who = format!("{} controller, {queues} queue pairs", name(&controller));
    lines(
        &out.join("gpu-qd.svg"),
        &Labels {
            title: &format!("4 KiB reads from GPU threads, {who}"),
            x: "commands in flight per queue pair",
            y: "M commands/s",
        },
        &series("qd", &|p| (f64::from(p.qd), p.commands_per_s / 1e6)),
    )?;
    // Commands per second rather than bytes: the instruments move no data in null
    // mode, so their GiB/s would be nominal (the CSV has both).
    lines(
        &out.join("gpu-size.svg"),
        &Labels {
            title: &format!("reads from GPU threads, QD 32 per queue pair, {who}"),
            x: "I/O size (KiB)",
            y: "M commands/s",
        },
        &series("size", &|p| (p.bs as f64 / 1024.0, p.commands_per_s / 1e6)),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_sweeps_qd_and_size_per_placement() {
        let base = base(1.0, "/dev/nvme0".into());
        let g = grid(&base, GpuCtrl::GpuNull, 128);
        assert_eq!(g.len(), 2 * (QDS.len() + SIZES.len()));
        assert!(g.iter().all(|(_, a)| a.path == IoPath::Gpu && a.gpu.queues == 128));
        assert_eq!(grid(&base, GpuCtrl::Soft, 8).len(), QDS.len() + SIZES.len());
    }

    #[test]
    fn plots_are_svg_with_one_line_per_series() {
        let dir = std::env::temp_dir().join(format!("homi-plot-{}", std::process::id()));
        let pts: Vec<Point> = [RingPlace::Gpu, RingPlace::Host]
            .into_iter()
            .flat_map(|placement| {
                QDS.iter().map(move |&qd| Point {
                    sweep: "qd",
                    placement,
                    bs: 4096,
                    qd,
                    queues: 4,
                    commands_per_s: f64::from(qd) * 1e6,
                    gib_per_s: 1.0,
                    mean_latency_us: 1.0,
                })
            })
            .collect();
        write(&pts, GpuCtrl::GpuNull, 4, &dir).unwrap();
        let svg = std::fs::read_to_string(dir.join("gpu-qd.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("rings in gpu memory") && svg.contains("rings in host memory"));
        let lines = svg.matches("<polyline").count();
        assert!(lines >= 2, "one line per placement, got {lines}");
        assert!(std::fs::read_to_string(dir.join("gpu-sweep.csv")).unwrap().lines().count() == 1 + pts.len());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
