//! `homi bench` end to end: a 3 x 3 grid of queue depths and I/O sizes on io_uring and
//! homi, repeated, whose JSON, CSV and plots must hold every point; and lists it must
//! refuse, by name, before running anything.

use std::path::{Path, PathBuf};
use std::process::Command as Proc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};

use crate::harness::Harness;
use crate::kmod;

const PATHS: [&str; 2] = ["io_uring", "homi"];
const QDS: [u64; 3] = [1, 8, 32];
const SIZES: [(&str, u64); 3] = [("4k", 4096), ("16k", 16384), ("64k", 65536)];
const REPS: u64 = 2;
const PLOTS: [&str; 4] = [
    "iops-vs-qd-randread.svg",
    "latency-vs-qd-randread.svg",
    "iops-vs-size-randread.svg",
    "latency-vs-size-randread.svg",
];

/// The suite.
pub fn bench(kmod_path: &Path, h: &mut Harness) -> anyhow::Result<()> {
    let loaded_here = !kmod::loaded("homi");
    if loaded_here {
        kmod::load(kmod_path, "").context("load homi.ko")?;
    }
    let homi = std::env::current_exe()?.with_file_name("homi");
    let out = PathBuf::from(std::env::var_os("HOMI_OUT").unwrap_or_else(|| "/tmp".into())).join("bench-suite");
    let _ = std::fs::remove_dir_all(&out);
    let grid = out.join("grid");
    let ran = h.check("bench: a 3 x 3 grid of QDs and sizes on io_uring and homi, 2 repetitions, completes", || {
        let sizes = SIZES.map(|s| s.0).join(",");
        let qds = QDS.map(|q| q.to_string()).join(",");
        let o = Proc::new(&homi)
            .args(["bench", "--paths", &PATHS.join(","), "--rw", "randread", "--bs", &sizes, "--qd", &qds])
            .args(["--reps", &REPS.to_string(), "--runtime", "0.3", "--out"])
            .arg(&grid)
            .output()?;
        ensure!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        Ok(())
    });
    if ran {
        h.check("bench: results.json holds every grid point, each repetition with I/O", || check_json(&grid));
        h.check("bench: results.csv has a row per grid point with non-zero median IOPS", || check_csv(&grid));
        h.check("bench: results.md has a row per grid point", || {
            let md = std::fs::read_to_string(grid.join("results.md"))?;
            ensure!(md.lines().count() == 2 + PATHS.len() * QDS.len() * SIZES.len(), "table:\n{md}");
            Ok(())
        });
        h.check("bench: IOPS and latency plots against QD and size, one line per path", || check_plots(&grid));
    }
    let refusals: [(&str, &[&str], &str); 8] = [
        ("an unknown path", &["--paths", "io_uring,warp"], "warp"),
        ("an unknown access pattern", &["--rw", "randread,sideways"], "sideways"),
        ("a size that is not a multiple of 512", &["--bs", "4k,1000"], "1000"),
        ("a zero size", &["--bs", "0"], "\"0\""),
        ("QD 0", &["--qd", "0,8"], "\"0\""),
        ("a QD larger than a queue holds", &["--qd", "8,70000"], "70000"),
        ("a repeated entry", &["--qd", "8,32,8"], "\"8\" is given twice"),
        ("an empty list", &["--paths", ""], "empty list"),
    ];
    for (what, args, named) in refusals {
        h.check(&format!("bench: {what} is refused by name before anything runs"), || {
            let dir = out.join("refused");
            let start = Instant::now();
            // A run that went ahead would take 30 s at least.
            let o = Proc::new(&homi).args(["bench", "--runtime", "30", "--out"]).arg(&dir).args(args).output()?;
            let err = String::from_utf8_lossy(&o.stderr);
            ensure!(!o.status.success(), "exit status {}; stderr: {err}", o.status);
            ensure!(err.contains(named), "the message does not name {named:?}: {err}");
            ensure!(!dir.exists(), "{} was created: something ran", dir.display());
            ensure!(start.elapsed() < Duration::from_secs(20), "took {:?}", start.elapsed());
            Ok(())
        });
    }
    if loaded_here {
        kmod::unload("homi").context("unload homi.ko")?;
    }
    Ok(())
}

/// Every (path, QD, size) of the grid, once.
fn grid_points() -> Vec<(&'static str, u64, u64)> {
    let mut v = Vec::new();
    for p in PATHS {
        for q in QDS {
            for (_, bs) in SIZES {
                v.push((p, q, bs));
            }
        }
    }
    v
}

fn check_json(dir: &Path) -> anyhow::Result<()> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("results.json"))?)?;
    let points = v["points"].as_array().context("no points array")?;
    ensure!(points.len() == grid_points().len(), "{} points, expected {}", points.len(), grid_points().len());
    for (path, qd, bs) in grid_points() {
        let p = points
            .iter()
            .find(|p| p["path"] == path && p["qd"] == qd && p["bs"] == bs && p["rw"] == "randread")
            .with_context(|| format!("no point for {path} qd {qd} bs {bs}"))?;
        let median = p["iops"]["median"].as_f64().unwrap_or(0.0);
        ensure!(median > 0.0, "{path} qd {qd} bs {bs}: median IOPS {median}");
        let runs = p["runs"].as_array().context("no runs")?;
        ensure!(runs.len() as u64 == REPS, "{path} qd {qd} bs {bs}: {} runs", runs.len());
        ensure!(
            runs.iter().all(|r| r["iops"].as_f64().unwrap_or(0.0) > 0.0 && r["ios"].as_u64().unwrap_or(0) > 0),
            "{path} qd {qd} bs {bs}: a run without I/O"
        );
        let ratio = &p["ratio_vs_io_uring"];
        ensure!(ratio["median"].as_f64().unwrap_or(0.0) > 0.0, "{path} qd {qd} bs {bs}: ratio {ratio}");
        ensure!(ratio["n"] == REPS, "{path} qd {qd} bs {bs}: ratio over {} pairs", ratio["n"]);
    }
    Ok(())
}

fn check_csv(dir: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(dir.join("results.csv"))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().context("empty CSV")?.split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).with_context(|| format!("no column {name}"));
    let (cp, cq, cb, ci) = (col("path")?, col("qd")?, col("bs")?, col("iops_median")?);
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    ensure!(rows.len() == grid_points().len(), "{} rows", rows.len());
    for (path, qd, bs) in grid_points() {
        let r = rows
            .iter()
            .find(|r| r[cp] == path && r[cq] == qd.to_string() && r[cb] == bs.to_string())
            .with_context(|| format!("no row for {path} qd {qd} bs {bs}"))?;
        ensure!(r.len() == header.len(), "a short row: {r:?}");
        let iops: f64 = r[ci].parse().with_context(|| format!("iops_median {:?}", r[ci]))?;
        ensure!(iops > 0.0, "{path} qd {qd} bs {bs}: {iops} IOPS");
    }
    Ok(())
}

fn check_plots(dir: &Path) -> anyhow::Result<()> {
    for f in PLOTS {
        let svg = std::fs::read_to_string(dir.join(f)).with_context(|| format!("read {f}"))?;
        ensure!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{f} is not a whole SVG");
        for p in PATHS {
            ensure!(svg.contains(&format!("\n{p}\n</text>")), "{f} has no legend entry {p}");
        }
        // Per path: its line and its legend sample, plus a whisker per point.
        let lines = svg.matches("<polyline").count();
        ensure!(lines >= PATHS.len() * (2 + 3), "{f}: {lines} lines");
    }
    Ok(())
}
