//! What `homi bench` writes: each path at each workload summarized over its
//! repetitions (`results.json`, `results.csv`, the Markdown table `results.md`) and the
//! sweep plots (`{iops,latency}-vs-{qd,size}-RW.svg`).
//!
//! Every metric is given as the median over the repetitions with the range around it
//! (min–max in the table; quartiles too in the JSON and CSV). The ratio to io_uring
//! pairs each run with io_uring's run of the same workload and repetition, made just
//! before or after it, and summarizes those ratios.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::bench::name;
use crate::bench_grid::{size_label, Workload};
use crate::perf::{IoPath, Report, Rw};
use crate::plot::{self, Labels, Series};
use crate::stats::{pair_ratios, summarize, Summary};

/// What the spread of each summary is, as written into `results.json`.
pub const SPREAD: &str = "median over the repetitions, min-max around it (q1, q3 also given); ratio_vs_io_uring \
                          divides each run by io_uring's run of the same workload and repetition";

/// `results.json`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Results {
    pub reps: u32,
    pub runtime_s: f64,
    pub spread: String,
    pub points: Vec<PointResult>,
}

/// One path at one workload, over every repetition.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct PointResult {
    pub path: IoPath,
    pub rw: Rw,
    pub bs: usize,
    pub qd: u32,
    pub threads: u32,
    pub iops: Summary,
    pub mib_per_s: Summary,
    pub lat_mean_us: Summary,
    pub lat_p99_us: Summary,
    pub cpu_ns_per_io: Summary,
    /// `null` when io_uring did not run this workload.
    pub ratio_vs_io_uring: Option<Summary>,
    /// Every repetition's report, in the order they ran.
    pub runs: Vec<Report>,
}

impl PointResult {
    pub fn workload(&self) -> Workload {
        Workload { rw: self.rw, bs: self.bs, qd: self.qd, threads: self.threads }
    }
}

fn summary_of(runs: &[Report], f: impl Fn(&Report) -> f64) -> anyhow::Result<Summary> {
    summarize(&runs.iter().map(f).collect::<Vec<_>>()).context("no runs to summarize")
}

/// Summarizes one path's runs at workload `w`; `io_uring` are io_uring's runs of the
/// same workload, repetition by repetition.
pub fn summarize_point(
    path: IoPath,
    w: Workload,
    runs: Vec<Report>,
    io_uring: Option<&[Report]>,
) -> anyhow::Result<PointResult> {
    let iops: Vec<f64> = runs.iter().map(|r| r.iops).collect();
    let ratio = io_uring
        .and_then(|b| pair_ratios(&iops, &b.iter().map(|r| r.iops).collect::<Vec<_>>()))
        .and_then(|r| summarize(&r));
    Ok(PointResult {
        path,
        rw: w.rw,
        bs: w.bs,
        qd: w.qd,
        threads: w.threads,
        iops: summary_of(&runs, |r| r.iops)?,
        mib_per_s: summary_of(&runs, |r| r.mib_per_s)?,
        lat_mean_us: summary_of(&runs, |r| r.latency_us.mean)?,
        lat_p99_us: summary_of(&runs, |r| r.latency_us.p99)?,
        cpu_ns_per_io: summary_of(&runs, |r| r.cpu_ns_per_io)?,
        ratio_vs_io_uring: ratio,
        runs,
    })
}

/// `median (min–max)` with `prec` decimals and `unit` after each number.
fn cell(s: &Summary, prec: usize, unit: &str) -> String {
    format!("{:.prec$}{unit} ({:.prec$}–{:.prec$})", s.median, s.min, s.max)
}

/// The Markdown table: one row per path and workload, medians with their min–max.
pub fn table(r: &Results) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "| path | workload | IOPS | vs io_uring | mean lat (us) | p99 lat (us) | CPU ns/IO |");
    let _ = writeln!(t, "|---|---|---:|---:|---:|---:|---:|");
    for p in &r.points {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} |",
            name(&p.path),
            p.workload().label(),
            cell(&p.iops, 0, ""),
            p.ratio_vs_io_uring.as_ref().map_or("n/a".into(), |s| cell(s, 2, "x")),
            cell(&p.lat_mean_us, 1, ""),
            cell(&p.lat_p99_us, 1, ""),
            cell(&p.cpu_ns_per_io, 0, "")
        );
    }
    t
}

/// The CSV: one row per path and workload; each metric as median, min, max, q1, q3.
pub fn csv(r: &Results) -> String {
    const METRICS: [&str; 6] = ["iops", "mib_per_s", "lat_mean_us", "lat_p99_us", "cpu_ns_per_io", "ratio_vs_io_uring"];
    let mut s = String::from("path,rw,bs,qd,threads,reps");
    for m in METRICS {
        for part in ["median", "min", "max", "q1", "q3"] {
            let _ = write!(s, ",{m}_{part}");
        }
    }
    s.push('\n');
    for p in &r.points {
        let _ = write!(s, "{},{},{},{},{},{}", name(&p.path), name(&p.rw), p.bs, p.qd, p.threads, p.runs.len());
        let sums = [Some(p.iops), Some(p.mib_per_s), Some(p.lat_mean_us), Some(p.lat_p99_us), Some(p.cpu_ns_per_io)];
        for m in sums.iter().chain([&p.ratio_vs_io_uring]) {
            match m {
                Some(m) => {
                    let _ = write!(s, ",{:.4},{:.4},{:.4},{:.4},{:.4}", m.median, m.min, m.max, m.q1, m.q3);
                }
                None => s.push_str(",,,,,"),
            }
        }
        s.push('\n');
    }
    s
}

fn threads_label(t: u32) -> String {
    if t == 1 {
        "1 thread".into()
    } else {
        format!("{t} threads")
    }
}

/// An x axis of the plots: which points lie on it and where.
struct Axis {
    tag: &'static str,
    desc: &'static str,
    /// What the other dimensions are held at, for the title.
    what: String,
    x_of: Box<XOf>,
}

/// Where a point lies on an axis; `None` when it is off the axis.
type XOf = dyn Fn(&PointResult) -> Option<f64>;

/// A y axis of the plots.
struct Metric {
    tag: &'static str,
    name: &'static str,
    y_desc: &'static str,
    get: fn(&PointResult) -> Summary,
    scale: f64,
}

const METRICS: [Metric; 2] = [
    Metric { tag: "iops", name: "IOPS", y_desc: "IOPS (thousands)", get: |p| p.iops, scale: 1e-3 },
    Metric { tag: "latency", name: "mean latency", y_desc: "mean latency (µs)", get: |p| p.lat_mean_us, scale: 1.0 },
];

/// Draws the sweeps of `r`: for each access pattern, IOPS and mean latency against QD
/// (at the smallest size) and against I/O size (at the deepest QD), one line per path,
/// whiskers from min to max; an axis with fewer than two values gets no plot. Returns
/// the files written.
pub fn plots(r: &Results, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut rws: Vec<Rw> = Vec::new();
    for p in &r.points {
        if !rws.contains(&p.rw) {
            rws.push(p.rw);
        }
    }
    let mut paths: Vec<IoPath> = Vec::new();
    for p in &r.points {
        if !paths.contains(&p.path) {
            paths.push(p.path);
        }
    }
    let mut written = Vec::new();
    let note = format!("median of {} runs, whiskers min–max", r.reps);
    for rw in rws {
        let of_rw: Vec<&PointResult> = r.points.iter().filter(|p| p.rw == rw).collect();
        let t0 = of_rw.iter().map(|p| p.threads).min().unwrap_or(1);
        let bs0 = of_rw.iter().map(|p| p.bs).min().unwrap_or(4096);
        let qd_max = of_rw.iter().filter(|p| p.threads == t0).map(|p| p.qd).max().unwrap_or(1);
        let axes = [
            Axis {
                tag: "qd",
                desc: "commands in flight per thread (QD)",
                what: format!("{} {}, {}", size_label(bs0), name(&rw), threads_label(t0)),
                x_of: Box::new(move |p| (p.bs == bs0 && p.threads == t0).then_some(f64::from(p.qd))),
            },
            Axis {
                tag: "size",
                desc: "I/O size (KiB)",
                what: format!("{} at QD {qd_max}, {}", name(&rw), threads_label(t0)),
                x_of: Box::new(move |p| (p.qd == qd_max && p.threads == t0).then_some(p.bs as f64 / 1024.0)),
            },
        ];
        for axis in &axes {
            let x_of = &axis.x_of;
            let mut xs: Vec<f64> = of_rw.iter().filter_map(|p| x_of(p)).collect();
            xs.sort_by(f64::total_cmp);
            xs.dedup();
            if xs.len() < 2 {
                continue;
            }
            for m in &METRICS {
                let (get, scale) = (m.get, m.scale);
                let series: Vec<Series> = paths
                    .iter()
                    .map(|&path| Series {
                        label: name(&path),
                        points: of_rw
                            .iter()
                            .filter(|p| p.path == path)
                            .filter_map(|p| {
                                let s = get(p);
                                x_of(p).map(|x| plot::Point {
                                    x,
                                    y: s.median * scale,
                                    range: Some((s.min * scale, s.max * scale)),
                                })
                            })
                            .collect(),
                    })
                    .filter(|s| !s.points.is_empty())
                    .collect();
                let file = out.join(format!("{}-vs-{}-{}.svg", m.tag, axis.tag, name(&rw)));
                let title = format!("{}, {} ({note})", m.name, axis.what);
                plot::lines(&file, &Labels { title: &title, x: axis.desc, y: m.y_desc }, &series)
                    .with_context(|| format!("plot {}", file.display()))?;
                written.push(file);
            }
        }
    }
    Ok(written)
}

/// Writes `results.json`, `results.csv`, `results.md` and the plots into `out`;
/// returns the plots written.
pub fn write(r: &Results, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(r)?)?;
    std::fs::write(out.join("results.csv"), csv(r))?;
    std::fs::write(out.join("results.md"), table(r))?;
    plots(r, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perf::Latency;

    fn report(path: IoPath, w: Workload, iops: f64) -> Report {
        Report {
            path,
            rw: w.rw,
            bs: w.bs,
            qd: w.qd,
            threads: w.threads,
            ios: iops as u64,
            seconds: 1.0,
            iops,
            mib_per_s: iops * w.bs as f64 / 1048576.0,
            latency_us: Latency { mean: 1e6 / iops, p50: 1.0, p99: 2.0, p999: 3.0, max: 4.0 },
            cpu_ns_per_io: 1000.0,
            doorbells: None,
        }
    }

    /// io_uring and homi over QD 1, 8, 32 and 4k, 16k: homi twice io_uring in every
    /// repetition, while the host slows down from one repetition to the next.
    fn results() -> Results {
        let mut points = Vec::new();
        for bs in [4096, 16384] {
            for qd in [1, 8, 32] {
                let w = Workload { rw: Rw::Randread, bs, qd, threads: 1 };
                let base = f64::from(qd) * 1000.0;
                let uring: Vec<Report> = [1.0, 0.5, 0.8].iter().map(|s| report(IoPath::IoUring, w, base * s)).collect();
                let homi: Vec<Report> =
                    [1.0, 0.5, 0.8].iter().map(|s| report(IoPath::Homi, w, 2.0 * base * s)).collect();
                let u = summarize_point(IoPath::IoUring, w, uring.clone(), Some(&uring)).unwrap();
                points.push(u);
                points.push(summarize_point(IoPath::Homi, w, homi, Some(&uring)).unwrap());
            }
        }
        Results { reps: 3, runtime_s: 1.0, spread: SPREAD.into(), points }
    }

    #[test]
    fn ratios_are_per_pair_and_immune_to_drift() {
        let r = results();
        let homi = r.points.iter().find(|p| p.path == IoPath::Homi).unwrap();
        let ratio = homi.ratio_vs_io_uring.unwrap();
        assert_eq!((ratio.median, ratio.min, ratio.max), (2.0, 2.0, 2.0));
        // The IOPS themselves spread with the host.
        assert_eq!((homi.iops.median, homi.iops.min, homi.iops.max), (1600.0, 1000.0, 2000.0));
        let w = homi.workload();
        assert!(summarize_point(IoPath::Homi, w, homi.runs.clone(), None).unwrap().ratio_vs_io_uring.is_none());
    }

    #[test]
    fn table_and_csv_have_a_row_per_point_with_medians_and_ranges() {
        let r = results();
        let t = table(&r);
        assert_eq!(t.lines().count(), 2 + r.points.len());
        assert!(t.contains("| homi | randread 4k qd8 | 12800 (8000–16000) | 2.00x (2.00–2.00) |"), "{t}");
        let c = csv(&r);
        let header: Vec<&str> = c.lines().next().unwrap().split(',').collect();
        assert_eq!(header.len(), 6 + 6 * 5);
        assert_eq!(c.lines().count(), 1 + r.points.len());
        assert!(c.lines().skip(1).all(|l| l.split(',').count() == header.len()));
        let i = header.iter().position(|h| *h == "iops_median").unwrap();
        assert!(c.lines().skip(1).all(|l| l.split(',').nth(i).unwrap().parse::<f64>().unwrap() > 0.0));
    }

    #[test]
    fn json_round_trips() {
        let r = results();
        let v: Results = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(v.points.len(), r.points.len());
        assert_eq!(v.points[1].ratio_vs_io_uring, r.points[1].ratio_vs_io_uring);
    }

    #[test]
    fn plots_cover_each_axis_with_two_values_or_more() {
        let dir = std::env::temp_dir().join(format!("homi-bench-out-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = write(&results(), &dir).unwrap();
        let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(
            names,
            [
                "iops-vs-qd-randread.svg",
                "latency-vs-qd-randread.svg",
                "iops-vs-size-randread.svg",
                "latency-vs-size-randread.svg"
            ]
        );
        for f in &files {
            let svg = std::fs::read_to_string(f).unwrap();
            assert!(svg.contains("io_uring") && svg.contains("homi"), "{}", f.display());
        }
        // One workload alone spans no axis.
        let mut one = results();
        one.points.truncate(2);
        let d2 = dir.join("one");
        std::fs::create_dir_all(&d2).unwrap();
        assert!(write(&one, &d2).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
