//! `cargo xtask bench`: the engine's hot path against the software controller in null
//! mode (a test instrument, inline on the benchmark thread): criterion for ns/IO,
//! callgrind for instructions/IO. Ratios and counts, never timed assertions.

use std::process::Command;

use anyhow::{bail, Context};

use crate::repo_root;

const IOS: u64 = 100_000;
const BATCH: u64 = 32;

/// Instructions per I/O: engine only (callgrind toggled to the engine's functions),
/// engine plus the inline software controller, and engine only with shadow doorbells.
fn callgrind() -> anyhow::Result<(f64, f64, f64)> {
    crate::run_checked(crate::cargo().args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "homi-instruments",
        "--example",
        "hotpath_count",
    ]))?;
    let bin = repo_root().join("target/release/examples/hotpath_count");
    let count = |toggles: &[&str], mode: &str| -> anyhow::Result<f64> {
        let out = Command::new("valgrind")
            .arg("--tool=callgrind")
            .arg("--callgrind-out-file=/dev/null")
            .args(toggles.iter().map(|t| format!("--toggle-collect={t}")))
            .arg(&bin)
            .args([IOS.to_string(), BATCH.to_string(), mode.to_string()])
            .output()
            .context("run valgrind (apt-get install valgrind)")?;
        let text = String::from_utf8_lossy(&out.stderr);
        let line = text.lines().find(|l| l.contains("Collected :")).context("no callgrind summary")?;
        let n: f64 = line.rsplit(':').next().unwrap_or("").trim().replace(',', "").parse()?;
        Ok(n / IOS as f64)
    };
    let engine = ["*engine_submit*", "*engine_reap*"];
    Ok((
        count(&engine, "mmio")?,
        count(&["*engine_submit*", "*engine_reap*", "*serve*"], "mmio")?,
        count(&engine, "shadow")?,
    ))
}

/// ns per I/O for each (group, batch), from criterion's estimates.
fn criterion() -> anyhow::Result<Vec<(&'static str, u64, f64)>> {
    crate::run_checked(crate::cargo().args([
        "bench",
        "--quiet",
        "-p",
        "homi-instruments",
        "--bench",
        "hot_path",
        "--",
        "--warm-up-time",
        "1",
        "--measurement-time",
        "3",
    ]))?;
    let mut out = Vec::new();
    for (group, batch) in
        [("hot_path", 1u64), ("hot_path", 32), ("hot_path", 128), ("engine_only", 32), ("engine_only", 128)]
    {
        let path = repo_root().join(format!("target/criterion/{group}/batch{batch}/new/estimates.json"));
        let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        // {"mean":{"confidence_interval":{...},"point_estimate":123.4,...},...}
        let mean = text.split("\"mean\"").nth(1).context("no mean")?;
        let est = mean.split("\"point_estimate\":").nth(1).context("no point estimate")?;
        let ns: f64 = est.split([',', '}']).next().unwrap_or("").trim().parse()?;
        out.push((group, batch, ns / batch as f64));
    }
    Ok(out)
}

pub fn run() -> anyhow::Result<i32> {
    let (engine, total, shadow) = callgrind()?;
    let times = criterion()?;
    if times.is_empty() {
        bail!("criterion produced no estimates");
    }
    println!();
    println!("hot path, software controller in null mode, inline (one thread):");
    println!(
        "  instructions/IO (callgrind, {IOS} I/Os, batch {BATCH}): engine {engine:.1}, engine + controller {total:.1}"
    );
    println!("  instructions/IO, engine with shadow doorbells and event index: {shadow:.1}");
    for (group, batch, ns) in times {
        let what = if group == "engine_only" { "engine alone" } else { "engine + controller" };
        println!("  ns/IO, {what} (criterion {group}, batch {batch}): {ns:.1}");
    }
    Ok(0)
}
