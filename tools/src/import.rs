//! `homi read-into`: read an LBA range through a homi queue straight into memory the
//! caller brings, a udmabuf (imported with REGISTER_DMABUF) or another device's CMB
//! (peer-to-peer memory registered with REGISTER), optionally with the queue's rings
//! placed in that memory too, then copy what landed there into a file. Comparing that
//! file with the kernel's view of the same blocks is the caller's check.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use homi::{Command, Controller, DmaBuffer, RingPlacement};

/// Where the data lands.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum Memory {
    /// A udmabuf: memfd pages exported as a dma-buf, imported with REGISTER_DMABUF.
    Udmabuf,
    /// Another PCI device's peer-to-peer memory (an NVMe CMB published through
    /// P2PDMA), registered with REGISTER.
    Cmb,
}

/// Arguments of `homi read-into`.
#[derive(clap::Args)]
pub struct ReadIntoArgs {
    /// The memory the controller writes.
    #[arg(long, value_enum)]
    into: Memory,
    /// The controller's char device.
    #[arg(long, default_value = "/dev/nvme0")]
    nvme: PathBuf,
    /// Namespace ID.
    #[arg(long, default_value_t = 1)]
    nsid: u32,
    /// First logical block.
    #[arg(long)]
    lba: u64,
    /// Logical blocks to read (at most 4 MiB).
    #[arg(long)]
    blocks: u64,
    /// Where to copy what landed in the memory.
    #[arg(long)]
    file: PathBuf,
    /// Place the queue's SQ and CQ rings in the same memory, after the data.
    #[arg(long)]
    rings_in_memory: bool,
    /// The PCI device whose p2pmem to use for `--into cmb` (e.g. 0000:03:00.0);
    /// default: the first one that is not the controller's own.
    #[arg(long)]
    provider: Option<String>,
}

/// Room after the data for the rings: the SQ at +0, the CQ at +64 KiB.
const RING_ROOM: usize = 128 << 10;
/// Bytes per read command.
const CHUNK: usize = 64 << 10;
/// Poisons the memory before the reads, so that a read that lands nowhere shows.
const POISON: u8 = 0xa5;

/// The PCI device (sysfs directory) providing peer-to-peer memory.
fn provider(nvme: &Path, named: Option<&str>) -> anyhow::Result<PathBuf> {
    if let Some(n) = named {
        let p = Path::new("/sys/bus/pci/devices").join(n);
        ensure!(p.join("p2pmem/allocate").exists(), "{} publishes no p2pmem", p.display());
        return Ok(p);
    }
    let name = nvme.file_name().context("controller path")?.to_string_lossy().into_owned();
    let own = std::fs::canonicalize(format!("/sys/class/nvme/{name}/device")).ok();
    for e in std::fs::read_dir("/sys/bus/pci/devices")?.flatten() {
        if e.path().join("p2pmem/allocate").exists() && std::fs::canonicalize(e.path()).ok() != own {
            return Ok(e.path());
        }
    }
    bail!("no PCI device other than {name}'s publishes p2pmem (an NVMe CMB with WDS and RDS: QEMU cmb_size_mb)")
}

/// The device's BARs, `(start, end)` CPU addresses from sysfs.
fn bars(dev: &Path) -> anyhow::Result<Vec<(u64, u64)>> {
    let text = std::fs::read_to_string(dev.join("resource"))?;
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or(0);
    Ok(text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && hex(f[0]) != 0).then(|| (hex(f[0]), hex(f[1])))
        })
        .collect())
}

pub fn run(a: &ReadIntoArgs) -> anyhow::Result<()> {
    let ctrl = Controller::open(&a.nvme).with_context(|| format!("attach {}", a.nvme.display()))?;
    let info = ctrl.info()?;
    let ns = crate::io::find_namespace(&info, &a.nvme, a.nsid)?;
    let bs = 1u64 << ns.lba_shift;
    ensure!(a.blocks > 0 && a.blocks * bs <= 4 << 20, "--blocks must cover 1 block to 4 MiB");
    crate::io::ensure_in_namespace(&ns, a.lba, a.blocks)?;
    let len = (a.blocks * bs) as usize;
    let data_len = len.next_multiple_of(homi::PAGE);
    let total = data_len + if a.rings_in_memory { RING_ROOM } else { 0 };

    // The memory, registered with the module; `_keep` outlives `mem` (declared first).
    let (_keep, mem, what): (Box<dyn std::any::Any>, DmaBuffer, String) = match a.into {
        Memory::Udmabuf => {
            let fd = homi::udmabuf(total)?;
            let mem = ctrl.register_dmabuf_mapped(fd.as_fd(), 0, total).context("REGISTER_DMABUF of a udmabuf")?;
            (Box::new(fd), mem, "a udmabuf (REGISTER_DMABUF)".into())
        }
        Memory::Cmb => {
            let dev = provider(&a.nvme, a.provider.as_deref())?;
            let map = homi::P2pMemory::map(&dev.join("p2pmem/allocate"), total)?;
            // SAFETY: `map` stays mapped until after `mem` is dropped (`_keep`).
            let mem = match unsafe { ctrl.register_memory(map.ptr(), total) } {
                Err(homi::Error::Unreachable) => bail!(
                    "REGISTER of {}'s p2pmem: EXDEV, P2PDMA finds no path to {} (see dmesg)",
                    dev.display(),
                    a.nvme.display()
                ),
                r => r.context("REGISTER of p2pmem")?,
            };
            let name = dev.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            check_in_bars(&ctrl, &dev, &mem)?;
            (Box::new(map), mem, format!("the CMB of {name} (p2pmem, REGISTER with FOLL_PCI_P2PDMA)"))
        }
    };
    let mem = Arc::new(mem);
    let first = mem.page_addrs().and_then(|p| p.first().copied()).unwrap_or(mem.dma_addr());
    eprintln!("homi: {} KiB of {what}, first page at DMA address {first:#x}", total / 1024);
    mem.write_at(0, &vec![POISON; data_len])?;

    let mut qp = if a.rings_in_memory {
        let place = RingPlacement {
            sq: Some((mem.clone(), data_len as u64)),
            cq: Some((mem.clone(), (data_len + (64 << 10)) as u64)),
        };
        ctrl.create_qpair_placed(64, place).context("CREATE_QPAIR with both rings placed in that memory")?
    } else {
        ctrl.create_qpair(64)?
    };
    let mut off = 0;
    while off < len {
        let n = CHUNK.min(len - off);
        let lba = a.lba + (off as u64) / bs;
        qp.execute_io(Command::read(a.nsid, lba, (n as u64 / bs) as u32), &mem, off, n, Duration::from_secs(10))
            .with_context(|| format!("read LBA {lba}"))?;
        off += n;
    }
    let mut out = vec![0u8; len];
    mem.read_at(0, &mut out)?;
    OpenOptions::new().create(true).truncate(true).write(true).open(&a.file)?.write_all(&out)?;
    eprintln!(
        "homi: read {} blocks ({} KiB) at LBA {} of ns {} through qid {} into {what}{}",
        a.blocks,
        len / 1024,
        a.lba,
        a.nsid,
        qp.qid(),
        if a.rings_in_memory { ", its SQ and CQ rings placed there too" } else { "" }
    );
    Ok(())
}

/// Without an IOMMU, P2PDMA maps peer memory under one switch with bus addresses: each
/// page the controller is told must then lie in one of the provider's BARs (QEMU's q35
/// has no offset between bus and CPU addresses). Behind an IOMMU the addresses are
/// IOVAs and this says nothing.
fn check_in_bars(ctrl: &Controller, dev: &Path, mem: &DmaBuffer) -> anyhow::Result<()> {
    if ctrl.info()?.flags & homi::uapi::HOMI_INFO_IOMMU != 0 {
        return Ok(());
    }
    let bars = bars(dev)?;
    let pages = mem.page_addrs().context("no page addresses")?;
    for p in pages {
        ensure!(
            bars.iter().any(|(s, e)| (*s..=*e).contains(p)),
            "DMA address {p:#x} is not in a BAR of {} ({bars:x?}): the data would not land in its memory",
            dev.display()
        );
    }
    Ok(())
}
