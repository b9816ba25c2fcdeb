//! What `homi bench` runs: the lists it was given (`--paths`, `--rw`, `--bs`, `--qd`,
//! `--threads`), checked entry by entry, and the grid of workloads they span.
//!
//! Without `--rw`, `--bs`, `--qd` or `--threads` the workloads are the fixed matrix
//! (4 KiB random reads at QD 1 and 32, random writes at QD 32, one thread); naming any
//! of them makes the workloads every combination of the lists, with random reads,
//! 4 KiB, QD 1 and one thread for the lists not named. pread is synchronous: it runs
//! at QD 1 only, so a grid with pread needs QD 1 and pread skips its other QDs.

use anyhow::{bail, ensure};

use crate::bench::name;
use crate::perf::{IoPath, Rw, MAX_BS, MAX_QD, MAX_THREADS};

/// Every CPU path, in the order the table lists them.
pub const ALL_PATHS: [IoPath; 5] =
    [IoPath::Pread, IoPath::IoUring, IoPath::IoUringPoll, IoPath::Passthru, IoPath::Homi];

/// One workload: what every path of the grid runs in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    pub rw: Rw,
    pub bs: usize,
    pub qd: u32,
    pub threads: u32,
}

impl Workload {
    /// `randread 4k qd32`, with `t2` when more than one thread.
    pub fn label(&self) -> String {
        let t = if self.threads > 1 { format!(" t{}", self.threads) } else { String::new() };
        format!("{} {} qd{}{t}", name(&self.rw), size_label(self.bs), self.qd)
    }
}

/// `512`, `4k`, `1m`.
pub fn size_label(bs: usize) -> String {
    if bs % (1 << 20) == 0 {
        format!("{}m", bs >> 20)
    } else if bs % 1024 == 0 {
        format!("{}k", bs >> 10)
    } else {
        bs.to_string()
    }
}

/// The checked grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    pub paths: Vec<IoPath>,
    pub workloads: Vec<Workload>,
}

/// The lists as given on the command line; `None` where a flag was not given.
#[derive(Debug, Default, Clone)]
pub struct Lists<'a> {
    pub paths: Option<&'a str>,
    pub rw: Option<&'a str>,
    pub bs: Option<&'a str>,
    pub qd: Option<&'a str>,
    pub threads: Option<&'a str>,
}

/// The entries of `list`, refusing an empty list, an empty entry and a repeated one
/// (by its parsed value, so `4k,4096` repeats); every refusal names the flag and the
/// entry.
fn entries<T: PartialEq>(flag: &str, list: &str, parse: impl Fn(&str) -> anyhow::Result<T>) -> anyhow::Result<Vec<T>> {
    ensure!(!list.trim().is_empty(), "{flag}: empty list");
    let mut out: Vec<(T, &str)> = Vec::new();
    for e in list.split(',').map(str::trim) {
        ensure!(!e.is_empty(), "{flag}: empty entry in {list:?}");
        let v = parse(e).map_err(|err| anyhow::anyhow!("{flag}: {err}"))?;
        if let Some((_, first)) = out.iter().find(|(x, _)| *x == v) {
            if *first == e {
                bail!("{flag}: {e:?} is given twice");
            }
            bail!("{flag}: {e:?} repeats {first:?}");
        }
        out.push((v, e));
    }
    Ok(out.into_iter().map(|(v, _)| v).collect())
}

fn parse_path(e: &str) -> anyhow::Result<IoPath> {
    let known = ALL_PATHS.map(|p| name(&p)).join(", ");
    if e == "gpu" {
        bail!("{e:?} is not a CPU path: use `homi bench --gpu` for the GPU sweeps");
    }
    ALL_PATHS.into_iter().find(|p| name(p) == e).ok_or_else(|| anyhow::anyhow!("unknown path {e:?} (known: {known})"))
}

fn parse_rw(e: &str) -> anyhow::Result<Rw> {
    let all = [Rw::Read, Rw::Write, Rw::Randread, Rw::Randwrite];
    all.into_iter()
        .find(|r| name(r) == e)
        .ok_or_else(|| anyhow::anyhow!("unknown access pattern {e:?} (known: {})", all.map(|r| name(&r)).join(", ")))
}

/// A size in bytes, with an optional `k` or `m` suffix (binary: 1k = 1024).
pub fn parse_size(e: &str) -> anyhow::Result<usize> {
    let lower = e.to_ascii_lowercase();
    let (digits, unit) = match lower.strip_suffix('k') {
        Some(d) => (d, 1usize << 10),
        None => match lower.strip_suffix('m') {
            Some(d) => (d, 1 << 20),
            None => (lower.as_str(), 1),
        },
    };
    let n: usize = digits.parse().map_err(|_| anyhow::anyhow!("{e:?} is not a size (bytes, or with k or m)"))?;
    let bs = n.checked_mul(unit).ok_or_else(|| anyhow::anyhow!("{e:?} is too large"))?;
    ensure!(bs != 0, "{e:?} is zero");
    ensure!(bs % 512 == 0, "{e:?} is not a multiple of 512 bytes");
    ensure!(bs <= MAX_BS, "{e:?} is larger than {}", size_label(MAX_BS));
    Ok(bs)
}

fn parse_count(e: &str, max: u32, what: &str) -> anyhow::Result<u32> {
    let n: u32 = e.parse().map_err(|_| anyhow::anyhow!("{e:?} is not a number"))?;
    ensure!(n != 0, "{e:?}: {what} must be at least 1");
    ensure!(n <= max, "{e:?} is more than {max} {what}");
    Ok(n)
}

fn parse_qd(e: &str) -> anyhow::Result<u32> {
    parse_count(e, MAX_QD, "commands in flight (what one queue holds)")
}

fn parse_threads(e: &str) -> anyhow::Result<u32> {
    parse_count(e, MAX_THREADS, "threads")
}

/// The matrix `homi bench` runs when no workload list is given.
fn matrix() -> Vec<Workload> {
    [(Rw::Randread, 1), (Rw::Randread, 32), (Rw::Randwrite, 32)]
        .into_iter()
        .map(|(rw, qd)| Workload { rw, bs: 4096, qd, threads: 1 })
        .collect()
}

impl Lists<'_> {
    /// Checks every list and spans the grid; nothing has run yet when this fails.
    pub fn grid(&self) -> anyhow::Result<Grid> {
        let paths = match self.paths {
            Some(l) => entries("--paths", l, parse_path)?,
            None => ALL_PATHS.to_vec(),
        };
        let rws = self.rw.map(|l| entries("--rw", l, parse_rw)).transpose()?;
        let sizes = self.bs.map(|l| entries("--bs", l, parse_size)).transpose()?;
        let qds = self.qd.map(|l| entries("--qd", l, parse_qd)).transpose()?;
        let threads = self.threads.map(|l| entries("--threads", l, parse_threads)).transpose()?;
        let workloads = if rws.is_none() && sizes.is_none() && qds.is_none() && threads.is_none() {
            matrix()
        } else {
            let mut w = Vec::new();
            for &rw in rws.as_deref().unwrap_or(&[Rw::Randread]) {
                for &bs in sizes.as_deref().unwrap_or(&[4096]) {
                    for &qd in qds.as_deref().unwrap_or(&[1]) {
                        for &threads in threads.as_deref().unwrap_or(&[1]) {
                            w.push(Workload { rw, bs, qd, threads });
                        }
                    }
                }
            }
            w
        };
        if paths.contains(&IoPath::Pread) {
            ensure!(
                workloads.iter().any(|w| w.qd == 1),
                "--paths: pread is synchronous and runs at QD 1 only, but --qd has no 1"
            );
        }
        Ok(Grid { paths, workloads })
    }
}

impl Grid {
    /// The paths that run `w`, in order: pread only at QD 1.
    pub fn paths_for(&self, w: &Workload) -> impl Iterator<Item = IoPath> + '_ {
        let qd = w.qd;
        self.paths.iter().copied().filter(move |&p| p != IoPath::Pread || qd == 1)
    }

    /// Runs per repetition.
    pub fn runs_per_rep(&self) -> usize {
        self.workloads.iter().map(|w| self.paths_for(w).count()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(l: Lists) -> String {
        format!("{:#}", l.grid().unwrap_err())
    }

    #[test]
    fn no_lists_is_the_matrix_over_every_path() {
        let g = Lists::default().grid().unwrap();
        assert_eq!(g.paths, ALL_PATHS.to_vec());
        assert_eq!(g.workloads, matrix());
        // pread at QD 1 only: 5 + 4 + 4 runs.
        assert_eq!(g.runs_per_rep(), 13);
        assert!(g.workloads.iter().all(|w| w.qd == 1 || g.paths_for(w).all(|p| p != IoPath::Pread)));
    }

    #[test]
    fn paths_alone_restrict_the_matrix() {
        let g = Lists { paths: Some("io_uring,homi"), ..Default::default() }.grid().unwrap();
        assert_eq!(g.workloads, matrix());
        assert_eq!(g.runs_per_rep(), 6);
    }

    #[test]
    fn lists_span_every_combination_in_order() {
        let g = Lists {
            paths: Some("pread,io_uring,io_uring-poll,passthru,homi"),
            rw: Some("randread,randwrite"),
            bs: Some("4k,16K,64k"),
            qd: Some("1,8,32"),
            threads: Some("1,2"),
        }
        .grid()
        .unwrap();
        assert_eq!(g.workloads.len(), 2 * 3 * 3 * 2);
        assert_eq!(g.workloads[0], Workload { rw: Rw::Randread, bs: 4096, qd: 1, threads: 1 });
        assert_eq!(g.workloads[1], Workload { rw: Rw::Randread, bs: 4096, qd: 1, threads: 2 });
        assert_eq!(g.workloads[35], Workload { rw: Rw::Randwrite, bs: 65536, qd: 32, threads: 2 });
        // pread runs in the 12 workloads at QD 1 only.
        assert_eq!(g.runs_per_rep(), 36 * 4 + 12);
    }

    #[test]
    fn unnamed_lists_take_their_defaults() {
        let g = Lists { qd: Some("1,8"), ..Default::default() }.grid().unwrap();
        assert_eq!(
            g.workloads,
            vec![
                Workload { rw: Rw::Randread, bs: 4096, qd: 1, threads: 1 },
                Workload { rw: Rw::Randread, bs: 4096, qd: 8, threads: 1 }
            ]
        );
    }

    #[test]
    fn sizes_take_k_and_m_suffixes() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("1m").unwrap(), 1 << 20);
        assert_eq!(parse_size("1536").unwrap(), 1536);
        assert_eq!(size_label(4096), "4k");
        assert_eq!(size_label(1 << 20), "1m");
        assert_eq!(size_label(1536), "1536");
    }

    #[test]
    fn bad_lists_are_refused_by_name() {
        let cases: [(Lists, &[&str]); 14] = [
            (Lists { paths: Some("io_uring,bogus"), ..Default::default() }, &["--paths", "\"bogus\"", "known:"]),
            (Lists { paths: Some("gpu"), ..Default::default() }, &["--paths", "\"gpu\"", "--gpu"]),
            (Lists { paths: Some(""), ..Default::default() }, &["--paths", "empty list"]),
            (Lists { paths: Some("homi,,io_uring"), ..Default::default() }, &["--paths", "empty entry"]),
            (
                Lists { paths: Some("homi,io_uring,homi"), ..Default::default() },
                &["--paths", "\"homi\" is given twice"],
            ),
            (Lists { rw: Some("randread,sideways"), ..Default::default() }, &["--rw", "\"sideways\""]),
            (Lists { bs: Some("4k,1000"), ..Default::default() }, &["--bs", "\"1000\"", "512"]),
            (Lists { bs: Some("0"), ..Default::default() }, &["--bs", "\"0\" is zero"]),
            (Lists { bs: Some("4k,4096"), ..Default::default() }, &["--bs", "\"4096\" repeats \"4k\""]),
            (Lists { bs: Some("2m"), ..Default::default() }, &["--bs", "\"2m\"", "larger"]),
            (Lists { bs: Some("4q"), ..Default::default() }, &["--bs", "\"4q\" is not a size"]),
            (Lists { qd: Some("1,0"), ..Default::default() }, &["--qd", "\"0\""]),
            (Lists { qd: Some("8,4096"), ..Default::default() }, &["--qd", "\"4096\"", "1023"]),
            (Lists { threads: Some("1,x"), ..Default::default() }, &["--threads", "\"x\""]),
        ];
        for (lists, want) in cases {
            let e = err(lists.clone());
            for w in want {
                assert!(e.contains(w), "{lists:?}: {e:?} lacks {w:?}");
            }
        }
    }

    #[test]
    fn pread_needs_qd_1() {
        let e = err(Lists { paths: Some("pread,homi"), qd: Some("8,32"), ..Default::default() });
        assert!(e.contains("pread") && e.contains("QD 1"), "{e}");
        assert!(Lists { paths: Some("io_uring,homi"), qd: Some("8,32"), ..Default::default() }.grid().is_ok());
    }
}
