//! The `dmabuf` suite: memory the caller brings. A udmabuf (memfd → dma-buf) imported
//! with REGISTER_DMABUF, peer-to-peer memory (a second controller's CMB published
//! through P2PDMA) registered with REGISTER, and queue pairs whose rings are placed in
//! such memory. Data is checked against the kernel's O_DIRECT view of the same LBAs;
//! reset, unbind and SIGKILL must leave nothing held; every refusal has its errno.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use homi::uapi::*;
use homi::{Command, Controller, DmaBuffer, QueuePair, RingPlacement};
use nix::errno::Errno;

use crate::common::*;
use crate::hardening::wait_nothing_held;
use crate::harness::Harness;
use crate::kmod;

/// A udmabuf of `len` bytes over a fresh memfd.
pub(crate) fn udmabuf(len: usize) -> anyhow::Result<OwnedFd> {
    Ok(homi::udmabuf(len)?)
}

/// The p2pmem `allocate` file of a device other than nvme0 that published peer-to-peer
/// memory (the second controller's CMB; nvme0 may publish its own, which it always
/// reaches and which proves nothing).
pub(crate) fn p2pmem() -> Option<std::path::PathBuf> {
    let nvme0 = std::fs::canonicalize("/sys/class/nvme/nvme0/device").ok();
    std::fs::read_dir("/sys/bus/pci/devices")
        .ok()?
        .flatten()
        .filter(|e| std::fs::canonicalize(e.path()).ok() != nvme0)
        .map(|e| e.path().join("p2pmem/allocate"))
        .find(|p| p.exists())
}

/// Whether nvme0 and the device publishing `alloc` share an upstream bridge (a switch
/// port), which P2PDMA accepts without consulting its host bridge list.
fn common_bridge(alloc: &Path) -> bool {
    let (Ok(a), Some(Ok(b))) = (
        std::fs::canonicalize("/sys/class/nvme/nvme0/device"),
        alloc.parent().and_then(Path::parent).map(std::fs::canonicalize),
    ) else {
        return false;
    };
    // /sys/devices/pci0000:00/<root port>/<upstream port>/...: a shared component after
    // the host bridge's is a shared bridge.
    let shared = a.components().zip(b.components()).take_while(|(x, y)| x == y).count();
    let host = a.components().position(|c| c.as_os_str().to_string_lossy().starts_with("pci")).unwrap_or(usize::MAX);
    shared > host.saturating_add(1)
}

/// A PCI device's BARs, `(start, end)` from sysfs.
fn bars(dev: &Path) -> anyhow::Result<Vec<(u64, u64)>> {
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or(0);
    Ok(std::fs::read_to_string(dev.join("resource"))?
        .lines()
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [s, e, _] if hex(s) != 0 => Some((hex(s), hex(e))),
            _ => None,
        })
        .collect())
}

/// Whether an IOMMU translates DMA in this VM.
fn iommu_on() -> bool {
    std::fs::read_dir("/sys/class/iommu").is_ok_and(|mut d| d.next().is_some())
}

fn reg_dmabuf(homi: &File, fd: i32, offset: u64, len: u64, addrs: &mut [u64]) -> Result<HomiRegisterDmabuf, Errno> {
    let mut r = HomiRegisterDmabuf { fd, offset, len, dma_addrs: addrs.as_mut_ptr() as u64, ..Default::default() };
    raw(homi, HOMI_IOCTL_REGISTER_DMABUF, &mut r)?;
    Ok(r)
}

/// Reads 16 KiB at `lba` into `buf` through `qp` and compares with the kernel's view,
/// then writes a pattern from `buf` and reads it back through the kernel.
fn both_ways(qp: &mut QueuePair, buf: &Arc<DmaBuffer>, lba: u64, seed: u64) -> anyhow::Result<()> {
    let len = 16384;
    // The block device of nsid 1 (names follow the asynchronous scan, not the nsid).
    let ns = &ns_path(0, 1)?;
    let a = pattern(seed, len);
    kernel_write_at(ns, lba, &a)?;
    qp.execute_io(Command::read(1, lba, 32), buf, 0, len, TIMEOUT)?;
    let mut got = vec![0u8; len];
    buf.read_at(0, &mut got)?;
    ensure!(got == a, "homi read other data into the buffer than the kernel wrote");
    let b = pattern(seed + 1, len);
    buf.write_at(0, &b)?;
    qp.execute_io(Command::write(1, lba, 32), buf, 0, len, TIMEOUT)?;
    ensure!(kernel_read_at(ns, lba, len)? == b, "the kernel reads other data than homi wrote from the buffer");
    Ok(())
}

pub fn dmabuf(kmod_path: &Path, h: &mut Harness) -> anyhow::Result<()> {
    if !kmod::loaded("homi") {
        kmod::load(kmod_path, "").context("load homi.ko")?;
    }
    if !Path::new("/dev/udmabuf").exists() {
        h.skip("dmabuf: udmabuf checks", "no /dev/udmabuf in this kernel");
    } else {
        udmabuf_checks(h)?;
    }
    placement_checks(h)?;
    let cmb = p2p_checks(h)?;
    cli_checks(h, cmb);
    h.check("dmabuf: nothing held afterwards, kernel log has no splat", || {
        wait_nothing_held()?;
        let bad = kmod::splats()?;
        ensure!(bad.is_empty(), "kernel log:\n{}", bad.join("\n"));
        Ok(())
    });
    Ok(())
}

fn udmabuf_checks(h: &mut Harness) -> anyhow::Result<()> {
    h.check("dmabuf: a udmabuf registers, one address per page, counted in INFO, no VmPin charge", || {
        let ctrl = Controller::open(NVME)?;
        let before = ctrl.info()?.pinned_pages;
        let vmpin = std::fs::read_to_string("/proc/self/status")?;
        let fd = udmabuf(1 << 20)?;
        let buf = ctrl.register_dmabuf(fd.as_fd(), 64 << 10, 256 << 10)?;
        let pages = buf.page_addrs().context("no page addresses")?;
        ensure!(pages.len() == 64 && pages.iter().all(|a| a % 4096 == 0 && *a != 0), "addresses {pages:x?}");
        ensure!(!buf.is_mapped(), "an unmapped import has a CPU pointer");
        ensure!(ctrl.info()?.pinned_pages == before + 64, "INFO pinned_pages does not count the import");
        let pin = |s: &str| s.lines().find(|l| l.starts_with("VmPin:")).map(str::to_owned);
        ensure!(pin(&vmpin) == pin(&std::fs::read_to_string("/proc/self/status")?), "VmPin changed");
        drop(buf);
        ensure!(ctrl.info()?.pinned_pages == before, "UNREGISTER left pages counted");
        Ok(())
    });
    h.check("dmabuf: data read into and written from a udmabuf matches the kernel's O_DIRECT view", || {
        let ctrl = Controller::open(NVME)?;
        let mut qp = ctrl.create_qpair(64)?;
        let fd = udmabuf(1 << 20)?;
        let buf = Arc::new(ctrl.register_dmabuf_mapped(fd.as_fd(), 0, 1 << 20)?);
        both_ways(&mut qp, &buf, LBA + 2048, 300)?;
        // A range that starts inside the dma-buf.
        let part = Arc::new(ctrl.register_dmabuf_mapped(fd.as_fd(), 512 << 10, 64 << 10)?);
        both_ways(&mut qp, &part, LBA + 2048, 302)
    });
    h.check("dmabuf: every REGISTER_DMABUF refusal has its errno, and nothing stays held", || {
        let ctrl = Controller::open(NVME)?;
        let homi = ctrl.homi_fd();
        let fd = udmabuf(1 << 20)?;
        let d = fd.as_raw_fd();
        let mut addrs = vec![0u64; 4096];
        let memfd = nix::sys::memfd::memfd_create(c"not-a-dmabuf", nix::sys::memfd::MFdFlags::empty())?;
        let e = |what: &str, got: Result<HomiRegisterDmabuf, Errno>, want| expect_errno(what, got.map(|_| ()), want);
        e("closed fd", reg_dmabuf(homi, 999, 0, 4096, &mut addrs), Errno::EBADF)?;
        e("negative fd", reg_dmabuf(homi, -1, 0, 4096, &mut addrs), Errno::EINVAL)?;
        e("a memfd, not a dma-buf", reg_dmabuf(homi, memfd.as_raw_fd(), 0, 4096, &mut addrs), Errno::EINVAL)?;
        e("unaligned offset", reg_dmabuf(homi, d, 100, 4096, &mut addrs), Errno::EINVAL)?;
        e("unaligned length", reg_dmabuf(homi, d, 0, 4000, &mut addrs), Errno::EINVAL)?;
        e("zero length", reg_dmabuf(homi, d, 0, 0, &mut addrs), Errno::EINVAL)?;
        e("over HOMI_REGISTER_MAX", reg_dmabuf(homi, d, 0, HOMI_REGISTER_MAX + 4096, &mut addrs), Errno::EINVAL)?;
        e("past the end", reg_dmabuf(homi, d, 1 << 20, 4096, &mut addrs), Errno::EINVAL)?;
        e("straddling the end", reg_dmabuf(homi, d, 1020 << 10, 8192, &mut addrs), Errno::EINVAL)?;
        e("offset + len overflows", reg_dmabuf(homi, d, u64::MAX - 4095, 8192, &mut addrs), Errno::EINVAL)?;
        let mut bad = |f: &dyn Fn(&mut HomiRegisterDmabuf)| {
            let mut r = HomiRegisterDmabuf {
                fd: d,
                offset: 0,
                len: 4096,
                dma_addrs: addrs.as_mut_ptr() as u64,
                ..Default::default()
            };
            f(&mut r);
            raw(homi, HOMI_IOCTL_REGISTER_DMABUF, &mut r)
        };
        expect_errno("flags", bad(&|r| r.flags = 1), Errno::EINVAL)?;
        expect_errno("reserved", bad(&|r| r.reserved = 1), Errno::EINVAL)?;
        expect_errno("id in", bad(&|r| r.id = 5), Errno::EINVAL)?;
        expect_errno("unmapped address array", bad(&|r| r.dma_addrs = 8), Errno::EFAULT)?;
        let i = ctrl.info()?;
        ensure!(i.pinned_pages == 0, "refused imports left {} pages counted", i.pinned_pages);
        Ok(())
    });
    Ok(())
}

/// A queue pair with both rings placed at `offset` (SQ) and `offset + 64 KiB` (CQ)
/// of `mem`, checked with I/O both ways through a separate data buffer.
fn placed_io(ctrl: &Controller, mem: Arc<DmaBuffer>, data: &Arc<DmaBuffer>, seed: u64) -> anyhow::Result<()> {
    let place = RingPlacement { sq: Some((mem.clone(), 0)), cq: Some((mem, 64 << 10)) };
    let mut qp = ctrl.create_qpair_placed(64, place)?;
    both_ways(&mut qp, data, LBA + 4096, seed)
}

/// Whether rings at 0 (16 pages) and 64 KiB (1 page) of `mem` are contiguous for the
/// controller: always behind an IOMMU, by chance without one.
fn ring_ready(mem: &DmaBuffer) -> bool {
    mem.page_addrs().is_none_or(|p| p.len() >= 17 && p[..16].windows(2).all(|w| w[1] == w[0] + 4096))
}

/// 128 KiB of a udmabuf for rings where its pages are contiguous for the controller,
/// else an ALLOC buffer (without an IOMMU, memfd pages rarely are).
fn ring_memory(ctrl: &Controller, fd: &OwnedFd) -> anyhow::Result<Arc<DmaBuffer>> {
    let mem = ctrl.register_dmabuf_mapped(fd.as_fd(), 0, 128 << 10)?;
    Ok(Arc::new(if ring_ready(&mem) { mem } else { ctrl.alloc(128 << 10)? }))
}

/// A controller, a udmabuf and 128 KiB of it registered, when those pages are
/// contiguous for the controller over both rings (`None` when they are not).
fn udmabuf_rings() -> anyhow::Result<Option<(Controller, OwnedFd, Arc<DmaBuffer>)>> {
    let ctrl = Controller::open(NVME)?;
    let fd = udmabuf(1 << 20)?;
    let mem = ctrl.register_dmabuf_mapped(fd.as_fd(), 0, 128 << 10)?;
    Ok(ring_ready(&mem).then(|| (ctrl, fd, Arc::new(mem))))
}

fn create_raw(homi: &File, f: impl FnOnce(&mut HomiQpair)) -> Result<HomiQpair, Errno> {
    let mut q = HomiQpair { depth: 64, ..Default::default() };
    f(&mut q);
    raw(homi, HOMI_IOCTL_CREATE_QPAIR, &mut q)?;
    Ok(q)
}

fn placement_checks(h: &mut Harness) -> anyhow::Result<()> {
    h.check("dmabuf: rings placed in registered host memory and in an ALLOC buffer: I/O matches the kernel", || {
        let ctrl = Controller::open(NVME)?;
        let data = Arc::new(ctrl.alloc(16384)?);
        // Host pages are contiguous for the controller only behind an IOMMU (or by
        // chance): use ALLOC memory where they are not.
        let host = Arc::new(ctrl.register(128 << 10)?);
        let contiguous = host.page_addrs().is_some_and(|p| p.windows(2).all(|w| w[1] == w[0] + 4096));
        if contiguous {
            placed_io(&ctrl, host, &data, 310)?;
        }
        placed_io(&ctrl, Arc::new(ctrl.alloc(128 << 10)?), &data, 312)
    });
    // Without an IOMMU a udmabuf's pages are contiguous for the controller only by
    // chance: probe one and, when it is, run the check on that very registration.
    let probed = Path::new("/dev/udmabuf").exists().then(udmabuf_rings).and_then(Result::ok).flatten();
    if let Some((ctrl, _fd, mem)) = probed {
        h.check("dmabuf: rings placed in a udmabuf: I/O matches the kernel, reply says where", || {
            let data = Arc::new(ctrl.alloc(16384)?);
            placed_io(&ctrl, mem.clone(), &data, 320)?;
            // The raw reply: no mmap offsets for placed rings, flags and ids echoed.
            let mid = mem_id(&ctrl, &mem)?;
            let q = create_raw(ctrl.homi_fd(), |q| {
                q.flags = HOMI_QPAIR_SQ_IN_MEMORY | HOMI_QPAIR_CQ_IN_MEMORY;
                (q.sq_memory, q.cq_memory) = (mid, mid);
                q.cq_memory_offset = 64 << 10;
            })?;
            ensure!(q.sq_offset == 0 && q.cq_offset == 0, "placed rings got mmap offsets");
            ensure!(q.flags & (HOMI_QPAIR_SQ_IN_MEMORY | HOMI_QPAIR_CQ_IN_MEMORY) != 0, "flags {:#x}", q.flags);
            let mut id = HomiId { id: q.qid, flags: 0 };
            raw(ctrl.homi_fd(), HOMI_IOCTL_DESTROY_QPAIR, &mut id)?;
            Ok(())
        });
    } else {
        h.skip(
            "dmabuf: rings placed in a udmabuf: I/O matches the kernel, reply says where",
            "no udmabuf, or its pages are not contiguous for the controller (no IOMMU)",
        );
    }
    h.check("dmabuf: every placement refusal has its errno; memory holding a ring is EBUSY until destroyed", || {
        let ctrl = Controller::open(NVME)?;
        let homi = ctrl.homi_fd();
        let mut a = HomiAlloc { size: 64 << 10, ..Default::default() };
        raw(homi, HOMI_IOCTL_ALLOC, &mut a)?;
        let (sq, cq) = (HOMI_QPAIR_SQ_IN_MEMORY, HOMI_QPAIR_CQ_IN_MEMORY);
        let id = a.id;
        expect_errno("flag without id", create_raw(homi, |q| q.flags = sq).map(|_| ()), Errno::EINVAL)?;
        expect_errno("id without flag", create_raw(homi, |q| q.sq_memory = id).map(|_| ()), Errno::EINVAL)?;
        expect_errno(
            "offset without flag",
            create_raw(homi, |q| q.cq_memory_offset = 4096).map(|_| ()),
            Errno::EINVAL,
        )?;
        expect_errno("unknown flag", create_raw(homi, |q| q.flags = 1 << 12).map(|_| ()), Errno::EINVAL)?;
        expect_errno("SHADOW flag in", create_raw(homi, |q| q.flags = HOMI_QPAIR_SHADOW).map(|_| ()), Errno::EINVAL)?;
        expect_errno("reserved", create_raw(homi, |q| q.reserved = 1).map(|_| ()), Errno::EINVAL)?;
        // Depth 128: an 8 KiB SQ, a 2 KiB CQ (page-rounded to 4 KiB).
        let placed = |f: u32, mem: u32, off: u64| {
            create_raw(homi, |q| {
                q.depth = 128;
                q.flags = f;
                if f == sq {
                    (q.sq_memory, q.sq_memory_offset) = (mem, off);
                } else {
                    (q.cq_memory, q.cq_memory_offset) = (mem, off);
                }
            })
            .map(|_| ())
        };
        expect_errno("missing memory", placed(sq, 0x7fff_0000, 0), Errno::EINVAL)?;
        expect_errno("unaligned offset", placed(sq, id, 100), Errno::EINVAL)?;
        expect_errno("SQ past the end", placed(sq, id, 64 << 10), Errno::EINVAL)?;
        expect_errno("SQ straddling the end", placed(sq, id, 60 << 10), Errno::EINVAL)?;
        expect_errno("CQ offset overflow", placed(cq, id, !4095), Errno::EINVAL)?;
        let i0 = ctrl.info()?;
        ensure!(i0.qpairs == 0, "a refused placement left a queue pair");
        // A live ring holds its memory.
        let q = create_raw(homi, |q| {
            q.flags = sq | cq;
            (q.sq_memory, q.cq_memory, q.cq_memory_offset) = (id, id, 16 << 10);
        })?;
        let mut free = HomiId { id, flags: 0 };
        expect_errno("FREE of memory holding a ring", raw(homi, HOMI_IOCTL_FREE, &mut free), Errno::EBUSY)?;
        raw(homi, HOMI_IOCTL_DESTROY_QPAIR, &mut HomiId { id: q.qid, flags: 0 })?;
        raw(homi, HOMI_IOCTL_FREE, &mut free).context("FREE after DESTROY")?;
        // Non-contiguous registered pages refuse a ring across them (without an IOMMU).
        let host = ctrl.register(256 << 10)?;
        let pages = host.page_addrs().context("pages")?;
        let hid = mem_id(&ctrl, &host)?;
        if let Some(i) = pages.windows(2).position(|w| w[1] != w[0] + 4096) {
            // depth 128: an 8 KiB SQ across pages i and i+1.
            let mut q = HomiQpair {
                depth: 128,
                flags: sq,
                sq_memory: hid,
                sq_memory_offset: i as u64 * 4096,
                ..Default::default()
            };
            expect_errno("SQ across non-contiguous pages", raw(homi, HOMI_IOCTL_CREATE_QPAIR, &mut q), Errno::EINVAL)?;
        }
        // UNREGISTER of a registration holding a ring.
        let q = create_raw(homi, |q| {
            q.depth = 16;
            q.flags = cq;
            q.cq_memory = hid;
        })?;
        let mut un = HomiId { id: hid, flags: 0 };
        expect_errno("UNREGISTER of memory holding a ring", raw(homi, HOMI_IOCTL_UNREGISTER, &mut un), Errno::EBUSY)?;
        raw(homi, HOMI_IOCTL_DESTROY_QPAIR, &mut HomiId { id: q.qid, flags: 0 })?;
        Ok(())
    });
    h.check("dmabuf: reset, then SIGKILL and unbind, with imported memory and placed rings: nothing left held", || {
        {
            let ctrl = Controller::open(NVME)?;
            let fd = udmabuf(1 << 20)?;
            let mem = ring_memory(&ctrl, &fd)?;
            let alloc = Arc::new(ctrl.alloc(128 << 10)?);
            let place = RingPlacement { sq: Some((alloc, 0)), cq: Some((mem.clone(), 64 << 10)) };
            let mut qp = ctrl.create_qpair_placed(64, place)?;
            let data = Arc::new(ctrl.register_dmabuf_mapped(fd.as_fd(), 512 << 10, 64 << 10)?);
            both_ways(&mut qp, &data, LBA + 4096, 330)?;
            reset_controller()?;
            wait_for("queue dead", || qp.queue_state() == Some(HOMI_QUEUE_DEAD))?;
            wait_for("controller live", || {
                std::fs::read_to_string("/sys/class/nvme/nvme0/state").is_ok_and(|s| s.trim() == "live")
            })?;
            let mut rearmed = false;
            for _ in 0..200 {
                match qp.rearm() {
                    Ok(()) => {
                        rearmed = true;
                        break;
                    }
                    Err(homi::Error::NotLive) => std::thread::sleep(Duration::from_millis(20)),
                    Err(e) => return Err(e.into()),
                }
            }
            ensure!(rearmed, "rearm kept saying not live");
            both_ways(&mut qp, &data, LBA + 4096, 332)?;
        }
        wait_nothing_held()?;
        // SIGKILL of a holder with reads in flight into a udmabuf, rings in it.
        let mut child = std::process::Command::new("/proc/self/exe")
            .args(["helper", "dmabuf-holder"])
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut ready = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().context("stdout")?),
            &mut ready,
        )?;
        ensure!(ready.trim() == "ready", "holder said {ready:?}");
        std::thread::sleep(Duration::from_millis(200));
        child.kill()?;
        child.wait()?;
        wait_nothing_held().context("after SIGKILL")?;
        // Unbind with an import and placed rings held.
        let ctrl = Controller::open(NVME)?;
        let fd = udmabuf(1 << 20)?;
        let mem = ring_memory(&ctrl, &fd)?;
        let qp =
            ctrl.create_qpair_placed(64, RingPlacement { sq: Some((mem.clone(), 0)), cq: Some((mem, 64 << 10)) })?;
        crate::hardening::unbind_rebind(move || {
            let state = ctrl.state();
            // Everything goes before the rebind, so that the controller comes back as
            // nvme0 (an open /dev/nvme0 keeps the old instance number taken).
            drop((qp, ctrl));
            ensure!(state == HOMI_CTRL_GONE, "status page says {state}");
            Ok(())
        })?;
        drop(fd);
        wait_nothing_held().context("after unbind")
    });
    Ok(())
}

fn mem_id(_ctrl: &Controller, buf: &DmaBuffer) -> anyhow::Result<u32> {
    buf.id().context("no module id")
}

/// `homi read-into` (the CLI the demo runs): into a udmabuf, and into the CMB with the
/// rings there too where P2P works; what it copies out must be what the kernel reads.
fn cli_checks(h: &mut Harness, cmb: bool) {
    let run = |into: &str, extra: &[&str], seed: u64| -> anyhow::Result<()> {
        let (lba, len) = (LBA + 8192, 256 << 10);
        let ns = &ns_path(0, 1)?;
        kernel_write_at(ns, lba, &pattern(seed, len))?;
        let out = std::env::temp_dir().join(format!("read-into-{into}"));
        let cli = std::env::current_exe()?.with_file_name("homi");
        let lba_s = lba.to_string();
        let o = std::process::Command::new(cli)
            .args(["read-into", "--into", into, "--lba", &lba_s, "--blocks", "512", "--file"])
            .arg(&out)
            .args(extra)
            .output()?;
        ensure!(o.status.success(), "homi read-into: {}", String::from_utf8_lossy(&o.stderr));
        ensure!(std::fs::read(&out)? == kernel_read_at(ns, lba, len)?, "the file differs from the kernel's view");
        Ok(())
    };
    if Path::new("/dev/udmabuf").exists() {
        h.check("dmabuf: `homi read-into --into udmabuf` copies out what the kernel reads", || {
            run("udmabuf", &[], 350)
        });
    }
    if cmb {
        h.check("dmabuf: `homi read-into --into cmb --rings-in-memory` copies out what the kernel reads", || {
            run("cmb", &["--rings-in-memory"], 352)
        });
    }
}

/// The P2P checks; true when the CMB was reachable and the data checks ran.
fn p2p_checks(h: &mut Harness) -> anyhow::Result<bool> {
    let Some(alloc) = p2pmem() else {
        h.skip("dmabuf: P2P memory (a CMB published through P2PDMA)", "no /sys/bus/pci/devices/*/p2pmem in this VM");
        return Ok(false);
    };
    // REGISTER of the CMB either maps it (P2PDMA finds a path) or refuses with EXDEV
    // and a log line naming why; QEMU's q35 host bridge is not on P2PDMA's list. Under
    // one switch with no IOMMU (no ACS redirection) it must map.
    let must_map = common_bridge(&alloc) && !iommu_on();
    let mut reachable = false;
    h.check(
        "dmabuf: P2P memory (the second controller's CMB) pins with FOLL_PCI_P2PDMA: mapped, or EXDEV and logged",
        || {
            let ctrl = Controller::open(NVME)?;
            let cmb = homi::P2pMemory::map(&alloc, 256 << 10)?;
            // The refusal's log line is rate-limited: let the earlier checks' lines age out.
            std::thread::sleep(Duration::from_secs(6));
            // SAFETY: `cmb` stays mapped until after the buffer is dropped.
            match unsafe { ctrl.register_memory(cmb.ptr(), 256 << 10) } {
                Ok(b) => {
                    let pages = b.page_addrs().context("no addresses")?;
                    ensure!(pages.len() == 64, "{} addresses", pages.len());
                    if !iommu_on() {
                        // Bus addresses (no offset on q35): each page must lie in a BAR
                        // of the provider, or the data would land elsewhere.
                        let bars = bars(alloc.parent().and_then(Path::parent).context("provider")?)?;
                        let outside = pages.iter().find(|p| !bars.iter().any(|(s, e)| (*s..=*e).contains(*p)));
                        ensure!(outside.is_none(), "address {outside:x?} not in the provider's BARs {bars:x?}");
                    }
                    reachable = true;
                }
                Err(homi::Error::Unreachable) if must_map => {
                    bail!("EXDEV although nvme0 and the CMB share an upstream bridge and no IOMMU is on")
                }
                Err(homi::Error::Unreachable) => {
                    let log = kmod::kernel_log()?;
                    ensure!(
                        log.contains("peer-to-peer memory the controller cannot reach"),
                        "EXDEV without a log line"
                    );
                }
                Err(e) => return Err(e.into()),
            }
            ensure!(ctrl.info()?.pinned_pages == 0, "pages left counted");
            Ok(())
        },
    );
    if !reachable {
        h.skip(
            "dmabuf: data into the CMB and rings in the CMB match the kernel's view",
            "P2PDMA finds no path between nvme1's CMB and nvme0 in this VM (EXDEV; q35's host bridge is \
             not on its list, or ACS redirects through it): the p2p-switch boot runs this",
        );
        return Ok(false);
    }
    h.check("dmabuf: data into the CMB and rings in the CMB match the kernel's view", || {
        let ctrl = Controller::open(NVME)?;
        let cmb = homi::P2pMemory::map(&alloc, 256 << 10)?;
        // SAFETY: `cmb` stays mapped until after `buf` is dropped (declared after it).
        let buf = Arc::new(unsafe { ctrl.register_memory(cmb.ptr(), 256 << 10) }?);
        let mut qp = ctrl.create_qpair(64)?;
        both_ways(&mut qp, &buf, LBA + 6144, 340)?;
        let ring_mem = homi::P2pMemory::map(&alloc, 128 << 10)?;
        // SAFETY: as above.
        let rings = Arc::new(unsafe { ctrl.register_memory(ring_mem.ptr(), 128 << 10) }?);
        let place = RingPlacement { sq: Some((rings.clone(), 0)), cq: Some((rings, 64 << 10)) };
        let mut pq = ctrl.create_qpair_placed(64, place)?;
        both_ways(&mut pq, &buf, LBA + 6144, 342)
    });
    Ok(true)
}

/// `homi-vmtest helper dmabuf-holder`: rings and data in a udmabuf, reads in flight
/// until killed.
pub fn helper() -> anyhow::Result<()> {
    let ctrl = Controller::open(NVME)?;
    let fd = udmabuf(1 << 20)?;
    let mem = ring_memory(&ctrl, &fd)?;
    let data = ctrl.register_dmabuf(fd.as_fd(), 512 << 10, 256 << 10)?;
    let place = RingPlacement { sq: Some((mem.clone(), 0)), cq: Some((mem, 64 << 10)) };
    let mut qp = ctrl.create_qpair_placed(256, place)?;
    std::io::Write::write_all(&mut std::io::stdout(), b"ready\n")?;
    std::io::Write::flush(&mut std::io::stdout())?;
    let target = data.page_addrs().map_or(0, |p| p[0]);
    loop {
        crate::hardening::flood_reads(&mut qp, target, 4096);
        if qp.poll(|_| {}).is_err() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
