//! `homi bench`: `homi perf` runs over a grid of paths and workloads, repeated and
//! interleaved, summarized as JSON, CSV, a Markdown table and plots (bench_out.rs).
//!
//! Each workload runs its paths in turn, once per repetition (A B A B ...), so that
//! every path sees the same host load and each run has a partner of the other paths
//! made moments apart, which the ratio to io_uring divides by.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, ensure, Context};

use crate::bench_grid::{Grid, Lists, Workload};
use crate::bench_out::{self, Results};
use crate::perf::{self, IoPath, PerfArgs, Report};

/// `homi bench` arguments.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Directory for results.{json,csv,md} and the plots (created).
    #[arg(long)]
    out: PathBuf,
    /// Paths, comma-separated (pread, io_uring, io_uring-poll, passthru, homi).
    /// Default: all five.
    #[arg(long, conflicts_with = "gpu")]
    paths: Option<String>,
    /// Access patterns, comma-separated (read, write, randread, randwrite).
    /// Default: randread. Without --rw, --bs, --qd and --threads, the fixed matrix:
    /// 4k randread at QD 1 and 32, randwrite at QD 32, one thread.
    #[arg(long, conflicts_with = "gpu")]
    rw: Option<String>,
    /// I/O sizes, comma-separated: bytes (a multiple of 512), or with a k or m
    /// suffix (4k,16k,64k). Default: 4k.
    #[arg(long, conflicts_with = "gpu")]
    bs: Option<String>,
    /// Queue depths per thread, comma-separated (pread runs at QD 1 only).
    /// Default: 1.
    #[arg(long, conflicts_with = "gpu")]
    qd: Option<String>,
    /// Thread counts, comma-separated. Default: 1.
    #[arg(long, conflicts_with = "gpu")]
    threads: Option<String>,
    /// Repetitions of every run, interleaved across the paths; the results are
    /// medians with their min-max range.
    #[arg(long, default_value_t = 5)]
    reps: u32,
    /// Seconds per run.
    #[arg(long, default_value_t = 3.0)]
    runtime: f64,
    /// The controller's char device.
    #[arg(long, default_value = "/dev/nvme0")]
    nvme: PathBuf,
    /// Run the device-initiated sweeps (GPU threads; queue depth and I/O size) instead
    /// of the CPU paths (needs the `cuda` feature and a GPU).
    #[arg(long)]
    gpu: bool,
    /// With --gpu: the controller (see `homi perf --path gpu`).
    #[arg(long, value_enum, default_value = "nvme")]
    controller: crate::perf_gpu::GpuCtrl,
    /// With --gpu: queue pairs.
    #[arg(long, default_value_t = 128)]
    queues: u32,
}

/// The most `--reps`.
const MAX_REPS: u32 = 1000;

impl BenchArgs {
    fn lists(&self) -> Lists<'_> {
        Lists {
            paths: self.paths.as_deref(),
            rw: self.rw.as_deref(),
            bs: self.bs.as_deref(),
            qd: self.qd.as_deref(),
            threads: self.threads.as_deref(),
        }
    }

    /// The `homi perf` arguments of one run.
    fn perf_args(&self, path: IoPath, w: &Workload) -> PerfArgs {
        PerfArgs {
            path,
            rw: w.rw,
            bs: w.bs,
            qd: w.qd,
            threads: w.threads,
            runtime: self.runtime,
            ios: None,
            nvme: self.nvme.clone(),
            nsid: 1,
            span: 256 << 20,
            json: false,
            gpu: Default::default(),
            file: None,
        }
    }
}

pub fn name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// Everything that can be refused is refused here, before the first run: the lists,
/// every run's `homi perf` arguments, and (for the homi path) the controller's queue
/// and transfer limits.
fn check(a: &BenchArgs) -> anyhow::Result<Grid> {
    let grid = a.lists().grid()?;
    ensure!((1..=MAX_REPS).contains(&a.reps), "--reps must be 1..={MAX_REPS}, got {}", a.reps);
    for w in &grid.workloads {
        for p in grid.paths_for(w) {
            perf::validate(&a.perf_args(p, w)).with_context(|| format!("{} {}", name(&p), w.label()))?;
        }
    }
    // Every path finds the namespace through sysfs, and transfers whole blocks.
    let first = a.perf_args(grid.paths[0], &grid.workloads[0]);
    let shift = perf::lba_shift(&first).with_context(|| format!("--nvme {}: namespace 1", a.nvme.display()))?;
    if let Some(w) = grid.workloads.iter().find(|w| w.bs % (1 << shift) != 0) {
        bail!("--bs: \"{}\" is not a multiple of the namespace's {} B blocks", w.bs, 1 << shift);
    }
    if grid.paths.contains(&IoPath::Homi) {
        let ctrl = homi::Controller::open(&a.nvme).with_context(|| format!("attach {}", a.nvme.display()))?;
        let i = ctrl.info()?;
        for w in &grid.workloads {
            // A homi queue keeps one entry free: QD N needs N + 1.
            ensure!(
                w.qd < i.max_queue_entries,
                "--qd: \"{}\" is more than {}'s queues hold ({} entries, one kept free)",
                w.qd,
                a.nvme.display(),
                i.max_queue_entries
            );
            ensure!(
                w.bs as u64 <= u64::from(i.max_transfer),
                "--bs: \"{}\" is larger than {}'s largest transfer ({} KiB)",
                w.bs,
                a.nvme.display(),
                i.max_transfer / 1024
            );
        }
    }
    Ok(grid)
}

/// Runs the grid: per workload, `reps` rounds of every path.
fn measure(a: &BenchArgs, grid: &Grid) -> anyhow::Result<Results> {
    let total = grid.runs_per_rep() * a.reps as usize;
    let tty = std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} runs, {elapsed} (eta {eta}) {msg}")
            .expect("template"),
    );
    let mut points = Vec::new();
    for (i, w) in grid.workloads.iter().enumerate() {
        let paths: Vec<IoPath> = grid.paths_for(w).collect();
        if !tty {
            eprintln!(
                "bench: workload {}/{}: {}, {} paths x {} reps",
                i + 1,
                grid.workloads.len(),
                w.label(),
                paths.len(),
                a.reps
            );
        }
        let mut runs: Vec<Vec<Report>> = vec![Vec::new(); paths.len()];
        for rep in 0..a.reps {
            for (k, &p) in paths.iter().enumerate() {
                bar.set_message(format!("{} {} rep {}/{}", w.label(), name(&p), rep + 1, a.reps));
                let r = perf::run(&a.perf_args(p, w), false)
                    .with_context(|| format!("{} {} repetition {}", name(&p), w.label(), rep + 1))?;
                runs[k].push(r);
                bar.inc(1);
            }
        }
        let base = paths.iter().position(|&p| p == IoPath::IoUring).map(|k| runs[k].clone());
        for (p, r) in paths.into_iter().zip(runs) {
            points.push(bench_out::summarize_point(p, *w, r, base.as_deref())?);
        }
    }
    bar.finish_and_clear();
    Ok(Results { reps: a.reps, runtime_s: a.runtime, spread: bench_out::SPREAD.into(), points })
}

pub fn main(a: &BenchArgs) -> anyhow::Result<()> {
    if a.gpu {
        return gpu(a);
    }
    let grid = check(a)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("create {}", a.out.display()))?;
    let results = measure(a, &grid)?;
    let plots = bench_out::write(&results, &a.out)?;
    print!("{}", bench_out::table(&results));
    println!(
        "\n{} runs of {} s: median over {} repetitions, (min–max); written to {}/results.{{json,csv,md}}",
        grid.runs_per_rep() * a.reps as usize,
        a.runtime,
        a.reps,
        a.out.display()
    );
    for p in plots {
        println!("plot: {}", p.display());
    }
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn args(extra: &[&str]) -> BenchArgs {
        let mut v = vec!["bench", "--out", "/nonexistent/out", "--nvme", "/nonexistent/nvme0"];
        v.extend_from_slice(extra);
        Cli::try_parse_from(v).unwrap().bench
    }

    #[test]
    fn defaults_are_the_matrix_five_times() {
        let a = args(&[]);
        assert_eq!(a.reps, 5);
        let g = a.lists().grid().unwrap();
        assert_eq!(g.runs_per_rep(), 13);
    }

    #[test]
    fn refusals_come_before_anything_touches_a_device_or_the_output() {
        // The device does not exist, so reaching the controller would fail otherwise.
        for (extra, want) in [
            (&["--paths", "io_uring,nope"][..], "nope"),
            (&["--qd", "1,0"][..], "\"0\""),
            (&["--bs", "4k,1000"][..], "1000"),
            (&["--reps", "0"][..], "--reps"),
            (&["--runtime", "0", "--paths", "io_uring"][..], "--runtime"),
        ] {
            let e = format!("{:#}", check(&args(extra)).unwrap_err());
            assert!(e.contains(want), "{extra:?}: {e}");
        }
        assert!(!std::path::Path::new("/nonexistent/out").exists());
    }

    #[test]
    fn lists_conflict_with_gpu() {
        assert!(Cli::try_parse_from(["bench", "--out", "x", "--gpu", "--qd", "1"]).is_err());
    }
}
