//! `homi`: the command-line tool for homi queues.

mod bench;
#[cfg(feature = "cuda")]
mod bench_gpu;
mod bench_grid;
mod bench_out;
mod file;
mod import;
mod io;
mod perf;
mod perf_file;
mod perf_gpu;
mod plot;
mod stats;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use homi::uapi::*;
use homi::{Controller, HomiDevice};
use serde::Serialize;

#[derive(Parser)]
#[command(name = "homi", version, about = "NVMe queue pairs beside the kernel's nvme driver")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct Target {
    /// The controller's char device.
    #[arg(long, default_value = "/dev/nvme0")]
    nvme: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the loaded module's ABI version and this tool's.
    Version,
    /// Describe the controller: namespaces, the driver's queues, spare qids.
    Info {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Which process holds which queue pair, module-wide.
    Queues {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Read an LBA range through a homi queue into a file.
    Read(io::IoArgs),
    /// Write a file to an LBA range through a homi queue.
    Write(io::IoArgs),
    /// Read an LBA range through a homi queue into a udmabuf or another device's CMB
    /// (optionally with the rings there too), and copy what landed into a file.
    ReadInto(import::ReadIntoArgs),
    /// Run one I/O workload through one path (pread, io_uring, io_uring-poll,
    /// passthru, homi) and report IOPS, bandwidth, latency and CPU time per I/O.
    Perf(perf::PerfArgs),
    /// Print a file's extents as homi maps them: file offset, length, kind, namespace,
    /// LBA, under a header with the device, the lease, the file and block sizes.
    Map(file::MapArgs),
    /// Write a file's bytes to stdout, read through a homi queue pair at its extents
    /// (remapping when the map is revoked); or, with --loop-secs, read it over and over
    /// and report revocations.
    Cat(file::CatArgs),
    /// Write into a file's mapped extents through a homi queue pair and a writable map
    /// (XFS only), then unmap, which drops the range from the page cache.
    WriteFile(file::WriteFileArgs),
    /// Run perf over a grid of paths, access patterns, sizes, queue depths and
    /// threads, repeated and interleaved (default: every path on a fixed matrix), or
    /// (--gpu) the device-initiated sweeps; write JSON, CSV, a table and SVG plots.
    Bench(bench::BenchArgs),
}

/// `homi info --json`: one object, fields named as below.
#[derive(Serialize)]
struct InfoJson {
    controller: String,
    instance: u32,
    live: bool,
    shadow_doorbells: bool,
    user_queues: bool,
    driver_io_queues: u32,
    granted_io_queues: u32,
    first_spare_qid: u32,
    spare_free: u32,
    max_queue_entries: u32,
    doorbell_stride: u32,
    min_page_size: u32,
    max_transfer: u32,
    generation: u64,
    qpairs_held: u32,
    pinned_pages: u64,
    dma_bytes: u64,
    quarantined_bytes: u64,
    refused_calls: u64,
    iommu: bool,
    shared_doorbells: bool,
    namespaces: Vec<NsJson>,
}

#[derive(Serialize)]
struct NsJson {
    nsid: u32,
    block_size: u64,
    blocks: u64,
    bytes: u64,
}

fn info(target: &Target, json: bool) -> anyhow::Result<()> {
    let ctrl = Controller::open(&target.nvme).with_context(|| format!("attach {}", target.nvme.display()))?;
    let i = ctrl.info()?;
    let out = InfoJson {
        controller: target.nvme.display().to_string(),
        instance: i.instance,
        live: i.flags & HOMI_INFO_LIVE != 0,
        shadow_doorbells: i.flags & HOMI_INFO_SHADOW_DOORBELLS != 0,
        user_queues: i.flags & HOMI_INFO_USER_QUEUES != 0,
        driver_io_queues: i.driver_io_queues,
        granted_io_queues: i.granted_io_queues,
        first_spare_qid: i.first_spare_qid,
        spare_free: i.spare_free,
        max_queue_entries: i.max_queue_entries,
        doorbell_stride: i.doorbell_stride,
        min_page_size: i.min_page_size,
        max_transfer: i.max_transfer,
        generation: i.generation,
        qpairs_held: i.qpairs,
        pinned_pages: i.pinned_pages,
        dma_bytes: i.dma_bytes,
        quarantined_bytes: i.quarantined_bytes,
        refused_calls: i.refused_calls,
        iommu: i.flags & HOMI_INFO_IOMMU != 0,
        shared_doorbells: i.flags & HOMI_INFO_SHARED_DOORBELLS != 0,
        namespaces: i.namespaces[..i.nr_namespaces as usize]
            .iter()
            .map(|n| NsJson {
                nsid: n.nsid,
                block_size: 1 << n.lba_shift,
                blocks: n.blocks,
                bytes: n.blocks << n.lba_shift,
            })
            .collect(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("{} (nvme{}): {}", out.controller, out.instance, if out.live { "live" } else { "not live" });
    if out.user_queues {
        println!(
            "  queues: driver uses qids 1..={}, controller granted {}, nvme-pci reserved qids from {} for homi \
             ({} free)",
            out.driver_io_queues, out.granted_io_queues, out.first_spare_qid, out.spare_free
        );
    } else {
        println!(
            "  queues: driver uses qids 1..={}, controller granted {}, spare qids {}..={} ({} free)",
            out.driver_io_queues, out.granted_io_queues, out.first_spare_qid, out.granted_io_queues, out.spare_free
        );
    }
    println!(
        "  limits: {} entries per queue, doorbell stride {} B, page {} B, max transfer {} KiB",
        out.max_queue_entries,
        out.doorbell_stride,
        out.min_page_size,
        out.max_transfer / 1024
    );
    match (out.shadow_doorbells, out.user_queues) {
        (true, true) => println!("  shadow doorbells: ON; homi queues ring them with event index"),
        (true, false) => {
            println!("  shadow doorbells: ON; homi queues need nvme-pci user queues (qemu/patches, nvme.user_queues=N)")
        }
        (false, _) => {}
    }
    println!(
        "  homi holds: {} queue pairs, {} pinned pages, {} KiB DMA memory, {} KiB in quarantine; generation {}",
        out.qpairs_held,
        out.pinned_pages,
        out.dma_bytes / 1024,
        out.quarantined_bytes / 1024,
        out.generation
    );
    println!(
        "  trust: {}; {}; {} calls refused since load",
        if out.iommu {
            "DMA translated by an IOMMU (holders still reach nvme-pci's whole DMA domain)"
        } else {
            "no IOMMU: holders can reach all memory"
        },
        if out.shared_doorbells {
            "doorbell page shared with the kernel's queues"
        } else {
            "doorbell pages hold homi queues only"
        },
        out.refused_calls
    );
    for n in &out.namespaces {
        println!("  ns {}: {} blocks of {} B ({} MiB)", n.nsid, n.blocks, n.block_size, n.bytes >> 20);
    }
    Ok(())
}

/// One row of `homi queues --json`.
#[derive(Serialize)]
struct QueueJson {
    pid: u32,
    command: String,
    controller: String,
    qid: u32,
    depth: u32,
    state: &'static str,
}

fn queues(json: bool) -> anyhow::Result<()> {
    let dev = HomiDevice::open().context("open /dev/homi (is homi.ko loaded?)")?;
    let rows: Vec<QueueJson> = dev
        .list_qpairs()?
        .into_iter()
        .map(|e| QueueJson {
            pid: e.pid,
            command: std::fs::read_to_string(format!("/proc/{}/comm", e.pid))
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            controller: format!("nvme{}", e.instance),
            qid: e.qid,
            depth: e.depth,
            state: if e.state == HOMI_QUEUE_LIVE { "live" } else { "dead" },
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no homi queue pairs");
    }
    for r in rows {
        println!("{:>7} {:<16} {} qid {:>4} depth {:>5} {}", r.pid, r.command, r.controller, r.qid, r.depth, r.state);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Version => {
            let dev = HomiDevice::open().context("open /dev/homi (is homi.ko loaded?)")?;
            let v = dev.version()?;
            println!(
                "module ABI {}.{} (features {:#x}); library ABI {}.{}; homi {}",
                v.abi_major,
                v.abi_minor,
                v.features,
                ABI_MAJOR,
                ABI_MINOR,
                env!("CARGO_PKG_VERSION")
            );
            Ok(())
        }
        Cmd::Info { target, json } => info(&target, json),
        Cmd::Queues { json } => queues(json),
        Cmd::Read(a) => io::run(&a, false),
        Cmd::Write(a) => io::run(&a, true),
        Cmd::ReadInto(a) => import::run(&a),
        Cmd::Perf(a) => perf::main(&a),
        Cmd::Bench(a) => bench::main(&a),
        Cmd::Map(a) => file::map(&a),
        Cmd::Cat(a) => file::cat(&a),
        Cmd::WriteFile(a) => file::write_file(&a),
    }
}
