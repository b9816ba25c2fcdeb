//! `homi bench`: a matrix of `homi perf` runs on one controller, written as JSON, CSV
//! and an SVG bar chart, and printed as a table with each path's ratio to io_uring.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;

use crate::perf::{self, IoPath, PerfArgs, Report, Rw};

/// `homi bench` arguments.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Directory for results.json, results.csv and results.svg.
    #[arg(long)]
    out: PathBuf,
    /// Seconds per run.
    #[arg(long, default_value_t = 3.0)]
    runtime: f64,
    /// The controller's char device.
    #[arg(long, default_value = "/dev/nvme0")]
    nvme: PathBuf,
    /// Run the device-initiated sweeps (GPU threads; queue depth and I/O size) instead
    /// of the CPU path matrix (needs the `cuda` feature and a GPU).
    #[arg(long)]
    gpu: bool,
    /// With --gpu: the controller (see `homi perf --path gpu`).
    #[arg(long, value_enum, default_value = "nvme")]
    controller: crate::perf_gpu::GpuCtrl,
    /// With --gpu: queue pairs.
    #[arg(long, default_value_t = 128)]
    queues: u32,
}

/// The matrix: every path on 4 KiB random reads at QD 1 and 32, and random writes at
/// QD 32 (pread is synchronous: QD 1 only).
fn matrix() -> Vec<(IoPath, Rw, u32)> {
    let paths = [IoPath::Pread, IoPath::IoUring, IoPath::IoUringPoll, IoPath::Passthru, IoPath::Homi];
    let mut m = Vec::new();
    for (rw, qd) in [(Rw::Randread, 1), (Rw::Randread, 32), (Rw::Randwrite, 32)] {
        for p in paths {
            if p != IoPath::Pread || qd == 1 {
                m.push((p, rw, qd));
            }
        }
    }
    m
}

pub fn name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

pub fn main(a: &BenchArgs) -> anyhow::Result<()> {
    if a.gpu {
        return gpu(a);
    }
    std::fs::create_dir_all(&a.out)?;
    let mut reports: Vec<Report> = Vec::new();
    for (path, rw, qd) in matrix() {
        let args = PerfArgs {
            path,
            rw,
            bs: 4096,
            qd,
            threads: 1,
            runtime: a.runtime,
            ios: None,
            nvme: a.nvme.clone(),
            nsid: 1,
            span: 256 << 20,
            json: false,
            gpu: Default::default(),
        };
        eprintln!("bench: {} {} qd {qd} ...", name(&path), name(&rw));
        reports.push(perf::run(&args, false).with_context(|| format!("{} {} qd {qd}", name(&path), name(&rw)))?);
    }
    std::fs::write(a.out.join("results.json"), serde_json::to_string_pretty(&reports)?)?;

    let mut csv =
        String::from("path,rw,bs,qd,threads,iops,mib_per_s,lat_mean_us,lat_p99_us,cpu_ns_per_io,ratio_vs_io_uring\n");
    let mut table = String::new();
    writeln!(table, "| path | workload | IOPS | vs io_uring | mean lat (us) | p99 lat (us) | CPU ns/IO |")?;
    writeln!(table, "|---|---|---:|---:|---:|---:|---:|")?;
    let mut bars = Vec::new();
    for r in &reports {
        let base = reports.iter().find(|b| b.path == IoPath::IoUring && b.rw == r.rw && b.qd == r.qd);
        // pread runs at QD 1 only; compare it with io_uring at QD 1 of the same workload.
        let ratio = base.map_or(f64::NAN, |b| r.iops / b.iops);
        let workload = format!("{} 4k qd{}", name(&r.rw), r.qd);
        writeln!(
            csv,
            "{},{},{},{},{},{:.0},{:.2},{:.1},{:.1},{:.0},{:.3}",
            name(&r.path),
            name(&r.rw),
            r.bs,
            r.qd,
            r.threads,
            r.iops,
            r.mib_per_s,
            r.latency_us.mean,
            r.latency_us.p99,
            r.cpu_ns_per_io,
            ratio
        )?;
        writeln!(
            table,
            "| {} | {workload} | {:.0} | {:.2}x | {:.1} | {:.1} | {:.0} |",
            name(&r.path),
            r.iops,
            ratio,
            r.latency_us.mean,
            r.latency_us.p99,
            r.cpu_ns_per_io
        )?;
        bars.push((format!("{} {workload}", name(&r.path)), r.iops));
    }
    std::fs::write(a.out.join("results.csv"), csv)?;
    std::fs::write(a.out.join("results.svg"), svg_bars("IOPS, 4 KiB, one thread", &bars))?;
    std::fs::write(a.out.join("results.md"), &table)?;
    print!("{table}");
    Ok(())
}

#[cfg(feature = "cuda")]
fn gpu(a: &BenchArgs) -> anyhow::Result<()> {
    let base = crate::bench_gpu::base(a.runtime, a.nvme.clone());
    crate::bench_gpu::run(&base, a.controller, a.queues, &a.out)?;
    println!("wrote {}/gpu-sweep.{{json,csv}}, gpu-qd.svg, gpu-size.svg", a.out.display());
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn gpu(_a: &BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("this homi was built without the `cuda` feature: rebuild with `--features cuda` for --gpu")
}

/// A horizontal bar chart, one bar per entry.
fn svg_bars(title: &str, bars: &[(String, f64)]) -> String {
    let max = bars.iter().map(|b| b.1).fold(1.0, f64::max);
    let (left, width, row) = (260.0, 420.0, 22.0);
    let height = 40.0 + row * bars.len() as f64;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <text x=\"10\" y=\"20\" font-size=\"14\">{title}</text>\n",
        left + width + 90.0
    );
    for (i, (label, v)) in bars.iter().enumerate() {
        let y = 32.0 + row * i as f64;
        let w = width * v / max;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{label}</text><rect x=\"{left}\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\" fill=\"#4a7ab5\"/><text x=\"{}\" y=\"{}\">{v:.0}</text>",
            left - 6.0,
            y + 14.0,
            row - 6.0,
            left + w + 4.0,
            y + 14.0
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_covers_every_path_and_pread_only_at_qd1() {
        let m = matrix();
        for p in [IoPath::Pread, IoPath::IoUring, IoPath::IoUringPoll, IoPath::Passthru, IoPath::Homi] {
            assert!(m.iter().any(|x| x.0 == p));
        }
        assert!(m.iter().filter(|x| x.0 == IoPath::Pread).all(|x| x.2 == 1));
        assert_eq!(m.len(), 13);
    }

    #[test]
    fn svg_has_one_bar_per_entry() {
        let s = svg_bars("t", &[("a".into(), 1.0), ("b".into(), 2.0)]);
        assert_eq!(s.matches("<rect").count(), 2);
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
    }
}
