//! The kmod suites: attach, info, queue pairs, buffers, registrations, I/O against the
//! kernel's view, bad input, crash cleanup, resets and unbind.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command as Proc, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use homi::uapi::*;
use homi::{Command, Controller, Error, HomiDevice};
use nix::errno::Errno;

use crate::common::*;
use crate::harness::Harness;
use crate::kmod;

/// The stock-kernel suite on a `dbcs=off` controller.
pub fn queues(kmod_path: &Path, h: &mut Harness) -> anyhow::Result<()> {
    if !kmod::loaded("homi") {
        kmod::load(kmod_path, "").context("load homi.ko")?;
    }

    h.check("queues: ATTACH rejects bad fds, flags and read-only controllers", || {
        let homi = open_homi()?;
        let devnull = File::open("/dev/null")?;
        expect_errno("not an nvme fd", attach_raw(&homi, &devnull), Errno::ENODEV)?;
        let ro = File::open(NVME)?;
        expect_errno("read-only nvme fd", attach_raw(&homi, &ro), Errno::EACCES)?;
        let mut bad = HomiAttach { nvme_fd: -1, flags: 0 };
        expect_errno("fd -1", raw(&homi, HOMI_IOCTL_ATTACH, &mut bad), Errno::EBADF)?;
        bad.nvme_fd = 999;
        expect_errno("closed fd", raw(&homi, HOMI_IOCTL_ATTACH, &mut bad), Errno::EBADF)?;
        let nvme = OpenOptions::new().read(true).write(true).open(NVME)?;
        let mut flags = HomiAttach { nvme_fd: nvme.as_raw_fd(), flags: 1 };
        expect_errno("flags", raw(&homi, HOMI_IOCTL_ATTACH, &mut flags), Errno::EINVAL)?;
        let mut info = HomiInfo::default();
        expect_errno("INFO before ATTACH", raw(&homi, HOMI_IOCTL_INFO, &mut info), Errno::ENOTCONN)?;
        attach_raw(&homi, &nvme).context("good attach")?;
        expect_errno("second ATTACH", attach_raw(&homi, &nvme), Errno::EBUSY)?;
        Ok(())
    });

    h.check("queues: ATTACH needs CAP_SYS_RAWIO", || {
        // A child drops to an unprivileged uid, which clears its capabilities, while
        // keeping the fds root opened.
        let out = Proc::new(std::env::current_exe()?).arg("helper").arg("attach-unprivileged").output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(out.status.success() && text.contains("EPERM"), "child said {text:?} ({})", out.status);
        Ok(())
    });

    let ctrl = match Controller::open(NVME) {
        Ok(c) => c,
        Err(e) => bail!("attach /dev/nvme0: {e}"),
    };
    let base = info_counters(&ctrl)?;

    h.check("queues: every ioctl: EFAULT for unmapped arguments, ENOTTY for wrong sizes", || {
        let fresh = open_homi()?;
        let all = [
            HOMI_IOCTL_VERSION,
            HOMI_IOCTL_ATTACH,
            HOMI_IOCTL_INFO,
            HOMI_IOCTL_CREATE_QPAIR,
            HOMI_IOCTL_DESTROY_QPAIR,
            HOMI_IOCTL_REARM_QPAIR,
            HOMI_IOCTL_ALLOC,
            HOMI_IOCTL_FREE,
            HOMI_IOCTL_REGISTER,
            HOMI_IOCTL_UNREGISTER,
            HOMI_IOCTL_LIST_QPAIRS,
        ];
        for req in all {
            let f = if req == HOMI_IOCTL_ATTACH { &fresh } else { ctrl.homi_fd() };
            for bad in [0usize, 0x10, usize::MAX - 4095] {
                // SAFETY: the module must reject the pointer; nothing here dereferences it.
                let rc = unsafe { nix::libc::ioctl(f.as_raw_fd(), req as _, bad) };
                expect_errno(&format!("ioctl {req:#x} at {bad:#x}"), Errno::result(rc).map(drop), Errno::EFAULT)?;
            }
            // The same number with a size one byte off is not an ioctl of ours.
            let size = (req >> 16) & 0x3fff;
            let wrong = (req & !(0x3fff << 16)) | ((size + 1) << 16);
            let mut junk = [0u8; 1024];
            expect_errno(&format!("ioctl {req:#x} with size {}", size + 1), raw(f, wrong, &mut junk), Errno::ENOTTY)?;
        }
        // Unaligned argument pointers are fine: the module copies bytes.
        let mut bytes = vec![0u8; std::mem::size_of::<HomiInfo>() + 1];
        // SAFETY: `bytes` has room for a `HomiInfo` at offset 1.
        let rc =
            unsafe { nix::libc::ioctl(ctrl.homi_fd().as_raw_fd(), HOMI_IOCTL_INFO as _, bytes.as_mut_ptr().add(1)) };
        Errno::result(rc).context("INFO into an unaligned buffer")?;
        let instance = u32::from_ne_bytes(bytes[1..5].try_into()?);
        ensure!(instance == ctrl.info()?.instance, "unaligned INFO differs");
        Ok(())
    });

    h.check("queues: INFO reports the driver's queues, spare qids and the namespace", || {
        let i = ctrl.info()?;
        let driver = std::fs::read_dir("/sys/block/nvme0n1/mq")?.count() as u32;
        ensure!(i.driver_io_queues == driver, "driver_io_queues {} but blk-mq has {driver}", i.driver_io_queues);
        ensure!(i.granted_io_queues == 64, "granted {} (QEMU max_ioqpairs=64)", i.granted_io_queues);
        // 64 queues is less than a doorbell page holds, so user queues follow the driver's.
        ensure!(i.first_spare_qid == driver + 1, "first spare {}", i.first_spare_qid);
        ensure!(i.spare_free == expected_spare(&i), "spare_free {}", i.spare_free);
        let user = user_queues_param() > 0;
        ensure!((i.flags & HOMI_INFO_USER_QUEUES != 0) == user, "user queues flag in {:#x}", i.flags);
        let shadow = shape().dbcs;
        ensure!((i.flags & HOMI_INFO_SHADOW_DOORBELLS != 0) == shadow, "shadow doorbells flag in {:#x}", i.flags);
        ensure!(i.max_queue_entries == 2048, "MQES+1 {}", i.max_queue_entries);
        ensure!(
            i.doorbell_stride == 4 && i.min_page_size == 4096,
            "stride/page {:?}",
            (i.doorbell_stride, i.min_page_size)
        );
        ensure!(i.flags & HOMI_INFO_LIVE != 0, "flags {:#x}", i.flags);
        ensure!(i.nr_namespaces == 1, "{} namespaces", i.nr_namespaces);
        let ns = i.namespaces[0];
        let sectors: u64 = std::fs::read_to_string("/sys/block/nvme0n1/size")?.trim().parse()?;
        ensure!(
            ns.nsid == 1 && ns.lba_shift == 9 && ns.blocks == sectors,
            "namespace {ns:?}, kernel says {sectors} sectors"
        );
        ensure!(i.max_transfer >= 4096, "max transfer {}", i.max_transfer);
        Ok(())
    });

    h.check("queues: CREATE_QPAIR rejects bad depths and flags", || {
        let f = ctrl.homi_fd();
        for depth in [0, 1, 2049, u32::MAX] {
            let mut q = HomiQpair { depth, ..Default::default() };
            expect_errno(&format!("depth {depth}"), raw(f, HOMI_IOCTL_CREATE_QPAIR, &mut q), Errno::EINVAL)?;
        }
        let mut q = HomiQpair { depth: 8, flags: 2, ..Default::default() };
        expect_errno("flags", raw(f, HOMI_IOCTL_CREATE_QPAIR, &mut q), Errno::EINVAL)?;
        for (req, name) in
            [(HOMI_IOCTL_DESTROY_QPAIR, "DESTROY"), (HOMI_IOCTL_FREE, "FREE"), (HOMI_IOCTL_UNREGISTER, "UNREGISTER")]
        {
            let mut id = HomiId { id: 4000, flags: 0 };
            expect_errno(&format!("{name} of an unknown id"), raw(f, req, &mut id), Errno::ENOENT)?;
            let mut id = HomiId { id: 1, flags: 1 };
            expect_errno(&format!("{name} with flags"), raw(f, req, &mut id), Errno::EINVAL)?;
        }
        let mut rearm = HomiQpair { qid: 4000, ..Default::default() };
        expect_errno("REARM of an unknown qid", raw(f, HOMI_IOCTL_REARM_QPAIR, &mut rearm), Errno::ENOENT)?;
        Ok(())
    });

    h.check("queues: ALLOC and REGISTER reject bad sizes and pointers", || {
        let f = ctrl.homi_fd();
        for size in [0, 100, 4097, (HOMI_ALLOC_MAX + 4096)] {
            let mut a = HomiAlloc { size, ..Default::default() };
            expect_errno(&format!("ALLOC {size}"), raw(f, HOMI_IOCTL_ALLOC, &mut a), Errno::EINVAL)?;
        }
        let mut addrs = [0u64; 4];
        let mem = Aligned::new(16384);
        let good =
            HomiRegister { addr: mem.ptr as u64, len: 16384, dma_addrs: addrs.as_mut_ptr() as u64, flags: 0, id: 0 };
        for (what, mut r, want) in [
            ("unaligned address", HomiRegister { addr: good.addr + 8, ..good }, Errno::EINVAL),
            ("zero length", HomiRegister { len: 0, ..good }, Errno::EINVAL),
            ("unaligned length", HomiRegister { len: 5000, ..good }, Errno::EINVAL),
            ("flags", HomiRegister { flags: 1, ..good }, Errno::EINVAL),
            ("unmapped memory", HomiRegister { addr: 0x1000, ..good }, Errno::EFAULT),
            ("bad address array", HomiRegister { dma_addrs: 8, ..good }, Errno::EFAULT),
        ] {
            expect_errno(what, raw(f, HOMI_IOCTL_REGISTER, &mut r), want)?;
        }
        ensure!(info_counters(&ctrl)? == base, "failed calls left something behind: {:?}", info_counters(&ctrl)?);
        Ok(())
    });

    h.check("queues: a call whose reply cannot be written is undone (ALLOC, REGISTER, CREATE_QPAIR)", || {
        use nix::sys::mman::{mmap, MapFlags, ProtFlags};
        use std::num::NonZeroUsize;
        let f = ctrl.homi_fd();
        // One memfd page in two views: the argument is written through `rw` and passed
        // as `ro`, which the module can read but not write its reply to.
        let memfd = nix::sys::memfd::memfd_create(c"homi-ro-reply", nix::sys::memfd::MFdFlags::empty())?;
        nix::unistd::ftruncate(&memfd, 4096)?;
        let len = NonZeroUsize::new(4096).unwrap();
        // SAFETY: fresh shared mappings of our memfd; unmapped below.
        let (rw, ro) = unsafe {
            (
                mmap(None, len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED, &memfd, 0)?,
                mmap(None, len, ProtFlags::PROT_READ, MapFlags::MAP_SHARED, &memfd, 0)?,
            )
        };
        let mut addrs = [0u64; 4];
        let mem = Aligned::new(16384);
        let reg =
            HomiRegister { addr: mem.ptr as u64, len: 16384, dma_addrs: addrs.as_mut_ptr() as u64, flags: 0, id: 0 };
        let result = (|| {
            let call = |what: &str, req: u32, arg: &[u8]| -> anyhow::Result<()> {
                // SAFETY: the rw view has a page of room; `arg` is one ABI struct.
                unsafe { std::ptr::copy_nonoverlapping(arg.as_ptr(), rw.as_ptr().cast::<u8>(), arg.len()) };
                // SAFETY: `ro` is a live mapping holding the argument.
                let rc = unsafe { nix::libc::ioctl(f.as_raw_fd(), req as _, ro.as_ptr()) };
                ensure!(
                    rc == -1 && Errno::last() == Errno::EFAULT,
                    "{what}: expected EFAULT, got {rc} ({})",
                    Errno::last()
                );
                ensure!(
                    info_counters(&ctrl)? == base,
                    "{what}: left {:?} held (before: {base:?})",
                    info_counters(&ctrl)?
                );
                Ok(())
            };
            let bytes = |p: *const u8, n: usize| {
                // SAFETY: `p` points at a live ABI struct of `n` bytes.
                unsafe { std::slice::from_raw_parts(p, n) }.to_vec()
            };
            let a = HomiAlloc { size: 4096, ..Default::default() };
            call("ALLOC", HOMI_IOCTL_ALLOC, &bytes((&a as *const HomiAlloc).cast(), size_of::<HomiAlloc>()))?;
            call(
                "REGISTER",
                HOMI_IOCTL_REGISTER,
                &bytes((&reg as *const HomiRegister).cast(), size_of::<HomiRegister>()),
            )?;
            let q = HomiQpair { depth: 16, ..Default::default() };
            call(
                "CREATE_QPAIR",
                HOMI_IOCTL_CREATE_QPAIR,
                &bytes((&q as *const HomiQpair).cast(), size_of::<HomiQpair>()),
            )
        })();
        // SAFETY: mapped above, unmapped once.
        unsafe {
            let _ = nix::sys::mman::munmap(rw, 4096);
            let _ = nix::sys::mman::munmap(ro, 4096);
        }
        result
    });

    h.check("queues: mmap rejects unknown offsets, private and writable status maps", || {
        use nix::sys::mman::{mmap, MapFlags, ProtFlags};
        use std::num::NonZeroUsize;
        let f = ctrl.homi_fd();
        let len = NonZeroUsize::new(4096).unwrap();
        let rw = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        // SAFETY: each call asks for a fresh mapping; failures map nothing.
        let tries = unsafe {
            [
                (
                    "unknown offset",
                    mmap(None, len, ProtFlags::PROT_READ, MapFlags::MAP_SHARED, f, 1 << 40).err(),
                    Errno::EINVAL,
                ),
                ("writable status page", mmap(None, len, rw, MapFlags::MAP_SHARED, f, 0).err(), Errno::EACCES),
                (
                    "private status page",
                    mmap(None, len, ProtFlags::PROT_READ, MapFlags::MAP_PRIVATE, f, 0).err(),
                    Errno::EINVAL,
                ),
            ]
        };
        for (what, got, want) in tries {
            ensure!(got == Some(want), "{what}: expected {want}, got {got:?}");
        }
        Ok(())
    });

    h.check("queues: several files, several depths, data identical to the kernel's view", || {
        let other = Controller::open(NVME)?;
        let mut qps = Vec::new();
        for (c, depth) in [(&ctrl, 2), (&ctrl, 64), (&other, 1024), (&other, 2048)] {
            qps.push((c.clone(), c.create_qpair(depth).with_context(|| format!("depth {depth}"))?));
        }
        let mut qids: Vec<u16> = qps.iter().map(|(_, q)| q.qid()).collect();
        let first = ctrl.info()?.first_spare_qid as u16;
        ensure!(qids.iter().all(|&q| q >= first), "qids {qids:?} below the first spare {first}");
        qids.sort();
        qids.dedup();
        ensure!(qids.len() == 4, "qids not unique");
        for (i, (c, qp)) in qps.iter_mut().enumerate() {
            ensure!(qp.queue_state().unwrap_or(0) == HOMI_QUEUE_LIVE, "status page: qid {} not live", qp.qid());
            roundtrip(c, qp, LBA + 64 * i as u64, i as u64)?;
        }
        drop(qps);
        ensure!(ctrl.info()?.qpairs == base.2, "queues left after destroy");
        Ok(())
    });

    h.check("queues: registered user memory reads what the kernel wrote", || {
        let data = pattern(77, 16384);
        kernel_write(LBA + 512, &data)?;
        let mem = Aligned::new(16384);
        let mut addrs = [0u64; 4];
        let mut r =
            HomiRegister { addr: mem.ptr as u64, len: 16384, dma_addrs: addrs.as_mut_ptr() as u64, flags: 0, id: 0 };
        raw(ctrl.homi_fd(), HOMI_IOCTL_REGISTER, &mut r).context("REGISTER")?;
        ensure!(ctrl.info()?.pinned_pages == base.0 + 4, "pin counter did not rise by 4");
        let mut qp = ctrl.create_qpair(16)?;
        for (i, &a) in addrs.iter().enumerate() {
            let cmd = Command::read(1, LBA + 512 + 8 * i as u64, 8).with_prps(a, 0);
            // SAFETY: the page stays pinned and untouched until the command completes.
            unsafe { qp.execute(&cmd, TIMEOUT) }?;
        }
        ensure!(mem.as_slice() == &data[..], "registered memory differs from the kernel's data");
        let mut id = HomiId { id: r.id, flags: 0 };
        raw(ctrl.homi_fd(), HOMI_IOCTL_UNREGISTER, &mut id).context("UNREGISTER")?;
        expect_errno("double UNREGISTER", raw(ctrl.homi_fd(), HOMI_IOCTL_UNREGISTER, &mut id), Errno::ENOENT)?;
        // The queue that read into them still exists: the pages stay pinned (quarantined)
        // until it is deleted.
        ensure!(ctrl.info()?.pinned_pages == base.0 + 4, "pages unpinned while a queue may still reach them");
        drop(qp);
        ensure!(ctrl.info()?.pinned_pages == base.0, "pages still pinned after UNREGISTER and DESTROY");
        Ok(())
    });

    h.check("queues: library-registered memory, 64 KiB through one PRP list, matches the kernel", || {
        let mut qp = ctrl.create_qpair(8)?;
        let buf = Arc::new(ctrl.register(65536)?);
        ensure!(buf.page_addrs().is_some_and(|p| p.len() == 16), "expected 16 page addresses");
        let data = pattern(99, 65536);
        buf.write_at(0, &data)?;
        qp.execute_io(Command::write(1, LBA + 768, 128), &buf, 0, 65536, TIMEOUT)?;
        ensure!(kernel_read(LBA + 768, 65536)? == data, "kernel reads other data than homi wrote");
        let other = pattern(100, 65536);
        kernel_write(LBA + 768, &other)?;
        qp.execute_io(Command::read(1, LBA + 768, 128), &buf, 0, 65536, TIMEOUT)?;
        let mut got = vec![0u8; 65536];
        buf.read_at(0, &mut got)?;
        ensure!(got == other, "homi read other data than the kernel wrote");
        let pinned = ctrl.info()?.pinned_pages;
        drop(qp);
        drop(buf);
        ensure!(ctrl.info()?.pinned_pages == pinned - 16, "dropping the buffer did not unpin it");
        Ok(())
    });

    h.check("queues: double DESTROY answers ENOENT", || {
        let mut q = HomiQpair { depth: 8, ..Default::default() };
        raw(ctrl.homi_fd(), HOMI_IOCTL_CREATE_QPAIR, &mut q).context("CREATE")?;
        let mut id = HomiId { id: q.qid, flags: 0 };
        raw(ctrl.homi_fd(), HOMI_IOCTL_DESTROY_QPAIR, &mut id).context("DESTROY")?;
        expect_errno("second DESTROY", raw(ctrl.homi_fd(), HOMI_IOCTL_DESTROY_QPAIR, &mut id), Errno::ENOENT)?;
        Ok(())
    });

    h.check("queues: kernel I/O on the same namespace runs beside homi I/O", || {
        let stop = Arc::new(AtomicBool::new(false));
        let kernel_side = {
            let stop = stop.clone();
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let lba = 8192 + (n % 64) * 16;
                    let data = pattern(1000 + n, 8192);
                    kernel_write(lba, &data)?;
                    ensure!(kernel_read(lba, 8192)? == data, "kernel I/O mismatch at {lba}");
                    n += 1;
                }
                Ok(n)
            })
        };
        let mut qp = ctrl.create_qpair(32)?;
        let buf = ctrl.alloc(8192)?;
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(3) {
            let lba = 16384 + (n % 64) * 16;
            let data = pattern(5000 + n, 8192);
            homi_write(&mut qp, &buf, lba, &data)?;
            ensure!(homi_read(&mut qp, &buf, lba, 8192)? == data, "homi I/O mismatch at {lba}");
            n += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let k = kernel_side.join().map_err(|_| anyhow::anyhow!("kernel I/O thread panicked"))??;
        ensure!(n > 0 && k > 0, "no overlap: homi {n}, kernel {k} round trips");
        println!("# concurrent round trips: homi {n}, kernel {k}");
        Ok(())
    });

    h.check("queues: SIGKILLed holder leaves no queue, pin or DMA memory", || {
        let mut child = Proc::new(std::env::current_exe()?).args(["helper", "hold"]).stdout(Stdio::piped()).spawn()?;
        let mut line = [0u8; 6];
        child.stdout.take().unwrap().read_exact(&mut line)?;
        ensure!(&line == b"ready\n", "holder said {:?}", String::from_utf8_lossy(&line));
        let held = info_counters(&ctrl)?;
        ensure!(held.0 > base.0 && held.1 > base.1 && held.2 > base.2, "holder holds nothing: {held:?}");
        let listed = HomiDevice::open()?.list_qpairs()?;
        let mine: Vec<_> = listed.iter().filter(|e| e.pid == child.id()).collect();
        ensure!(
            mine.len() == 2 && mine.iter().all(|e| e.state == HOMI_QUEUE_LIVE && e.instance == 0),
            "LIST_QPAIRS does not show the holder's two queues: {listed:?}"
        );
        child.kill()?;
        child.wait()?;
        // The file is released when the dead process's last reference goes.
        let deadline = Instant::now() + Duration::from_secs(5);
        while info_counters(&ctrl)? != base && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        ensure!(info_counters(&ctrl)? == base, "left behind: {:?} (before: {base:?})", info_counters(&ctrl)?);
        Ok(())
    });

    h.check("queues: unload is refused while a file is open", || match kmod::unload("homi") {
        Err(Errno::EWOULDBLOCK) | Err(Errno::EBUSY) => Ok(()),
        other => bail!("delete_module with an open file: {other:?}"),
    });

    h.check("queues: reset with an idle queue, then rearm restores I/O", || {
        let mut qp = ctrl.create_qpair(16)?;
        let buf = ctrl.alloc(8192)?;
        roundtrip(&ctrl, &mut qp, LBA + 1024, 10)?;
        let g = ctrl.generation();
        reset_controller()?;
        wait_for("generation change", || ctrl.generation() != g)?;
        wait_for("queue marked dead", || qp.queue_state().unwrap_or(0) == HOMI_QUEUE_DEAD)?;
        wait_for("controller live", || ctrl.state() == HOMI_CTRL_LIVE)?;
        let (p1, p2) = buf.prps(0, 4096)?;
        // SAFETY: `buf` outlives the queue.
        match unsafe { qp.execute(&Command::read(1, LBA, 8).with_prps(p1, p2), TIMEOUT) } {
            Err(Error::Reset { .. }) => {}
            other => bail!("I/O on a reset queue: {other:?}"),
        }
        qp.rearm()?;
        ensure!(qp.queue_state().unwrap_or(0) == HOMI_QUEUE_LIVE, "not live after rearm");
        roundtrip(&ctrl, &mut qp, LBA + 1024, 11)
    });

    h.check("queues: reset with a busy queue: typed error, rearm, I/O again", || {
        let mut qp = ctrl.create_qpair(64)?;
        let buf = ctrl.alloc(4096 * 32)?;
        let g = ctrl.generation();
        let resetter = std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            reset_controller()
        });
        let start = Instant::now();
        let mut submitted = 0u64;
        let err = loop {
            while qp.free_slots() > 0 {
                let slot = submitted % 32;
                let cmd = Command::read(1, LBA + slot * 8, 8).with_prps(buf.dma_addr() + slot * 4096, 0);
                // SAFETY: `buf` outlives the queue pair.
                if unsafe { qp.push(&cmd, submitted) }.is_err() {
                    break;
                }
                submitted += 1;
            }
            qp.ring();
            if let Err(e) = qp.poll(|c| assert!(c.status.is_success(), "{c:?}")) {
                break e;
            }
            if ctrl.generation() != g && start.elapsed() > Duration::from_secs(1) {
                // Commands caught by the reset never complete; the status page says why.
                break Error::Reset { old: g, new: ctrl.generation() };
            }
            ensure!(start.elapsed() < Duration::from_secs(20), "no reset observed");
        };
        resetter.join().map_err(|_| anyhow::anyhow!("reset thread panicked"))??;
        ensure!(matches!(err, Error::Reset { .. }), "expected a reset error, got {err}");
        ensure!(submitted > 0, "nothing was submitted before the reset");
        wait_for("controller live", || ctrl.state() == HOMI_CTRL_LIVE)?;
        qp.rearm()?;
        roundtrip(&ctrl, &mut qp, LBA + 2048, 12)
    });

    drop(ctrl);
    h.check("queues: everything released once the files are closed", || {
        let c = Controller::open(NVME)?;
        let i = c.info()?;
        ensure!(
            (i.pinned_pages, i.dma_bytes, i.qpairs) == (0, 0, 0),
            "left: {:?}",
            (i.pinned_pages, i.dma_bytes, i.qpairs)
        );
        ensure!(i.spare_free == expected_spare(&i), "qids still reserved");
        Ok(())
    });
    h.check("queues: after a crashed holder and all closes, the module unloads and reloads", || {
        kmod::unload("homi").context("delete_module(homi)")?;
        ensure!(!kmod::loaded("homi"), "still loaded");
        kmod::load(kmod_path, "")?;
        ensure!(Controller::open(NVME)?.info()?.qpairs == 0, "a fresh module sees queues");
        Ok(())
    });
    Ok(())
}

/// Unbind and rebind with a queue held: the holder gets ENODEV, the module lets go.
pub fn unbind(h: &mut Harness) -> anyhow::Result<()> {
    h.check("unbind: driver unbind revokes homi queues; rebind works again", || {
        let ctrl = Controller::open(NVME)?;
        let mut qp = ctrl.create_qpair(16)?;
        roundtrip(&ctrl, &mut qp, LBA + 4096, 20)?;
        let pci = std::fs::read_link("/sys/class/nvme/nvme0/device")?;
        let bdf = pci.file_name().context("pci address")?.to_string_lossy().into_owned();
        std::fs::write("/sys/bus/pci/drivers/nvme/unbind", &bdf).context("unbind")?;
        ensure!(ctrl.state() == HOMI_CTRL_GONE, "status page does not say gone");
        ensure!(qp.queue_state().unwrap_or(0) == HOMI_QUEUE_DEAD, "queue not marked dead");
        match ctrl.info() {
            Err(e) if errno_of(&e) == Some(Errno::ENODEV) => {}
            other => bail!("INFO after unbind: {other:?}"),
        }
        match ctrl.alloc(4096) {
            Err(e) if errno_of(&e) == Some(Errno::ENODEV) => {}
            other => bail!("ALLOC after unbind: {other:?}"),
        }
        drop(qp);
        drop(ctrl);
        std::fs::write("/sys/bus/pci/drivers/nvme/bind", &bdf).context("bind")?;
        wait_for("nvme0 live again", || {
            std::fs::read_to_string("/sys/class/nvme/nvme0/state").is_ok_and(|s| s.trim() == "live")
        })?;
        wait_for("nvme0n1 back", || Path::new(NS).exists())?;
        let ctrl = Controller::open(NVME)?;
        let mut qp = ctrl.create_qpair(16)?;
        roundtrip(&ctrl, &mut qp, LBA + 4096, 21)
    });
    Ok(())
}

/// On a controller with shadow doorbells on and no user queues reserved, homi refuses
/// queues by name: as built for a stock kernel, and as built with nvme-pci's user
/// queue API on a kernel booted without `nvme.user_queues`.
pub fn dbcs(kmod_path: &Path, h: &mut Harness) -> anyhow::Result<()> {
    let refused = |hint: &str| -> anyhow::Result<()> {
        let ctrl = Controller::open(NVME)?;
        let i = ctrl.info()?;
        ensure!(i.flags & HOMI_INFO_SHADOW_DOORBELLS != 0, "INFO does not flag shadow doorbells");
        ensure!(i.flags & HOMI_INFO_USER_QUEUES == 0, "INFO flags user queues");
        match ctrl.create_qpair(16) {
            Err(e @ Error::ShadowDoorbells) => {
                ensure!(e.to_string().contains("shadow doorbells"), "message: {e}")
            }
            other => bail!("expected a shadow-doorbell refusal, got {other:?}"),
        }
        let log = kmod::kernel_log()?;
        let line = log.lines().rev().find(|l| l.contains("shadow doorbells")).unwrap_or_default();
        ensure!(
            line.contains(hint),
            "the last kernel log line naming shadow doorbells does not say {hint:?}: {line:?}"
        );
        Ok(())
    };
    if let Some(stock) = &shape().stock_kmod {
        h.check("dbcs: built for a stock kernel, CREATE_QPAIR is refused naming shadow doorbells", || {
            kmod::load(stock, "").context("load the stock-built homi.ko")?;
            let features = HomiDevice::open()?.version()?.features;
            ensure!(features & HOMI_FEAT_USER_QUEUES == 0, "features {features:#x}");
            let r = refused("stock nvme-pci");
            kmod::unload("homi").context("unload the stock-built homi.ko")?;
            r
        });
    }
    kmod::load(kmod_path, "").context("load homi.ko")?;
    h.check("dbcs: with user queues built in but none reserved, the refusal names nvme.user_queues", || {
        let features = HomiDevice::open()?.version()?.features;
        ensure!(features & HOMI_FEAT_USER_QUEUES != 0, "features {features:#x}");
        refused("nvme.user_queues=N")
    });
    Ok(())
}

/// With `max_ioqpairs` equal to the vCPU count, the driver takes every queue.
pub fn nospare(kmod_path: &Path, h: &mut Harness) -> anyhow::Result<()> {
    kmod::load(kmod_path, "").context("load homi.ko")?;
    h.check("nospare: CREATE_QPAIR says no spare queues", || {
        let ctrl = Controller::open(NVME)?;
        let i = ctrl.info()?;
        ensure!(i.spare_free == 0, "spare_free {}", i.spare_free);
        match ctrl.create_qpair(16) {
            Err(e @ Error::NoSpareQueues) => {
                ensure!(e.to_string().contains("no spare queues"), "message: {e}")
            }
            other => bail!("expected no spare queues, got {other:?}"),
        }
        ensure!(kmod::kernel_log()?.contains("no spare queues"), "no kernel log line says so");
        Ok(())
    });
    Ok(())
}

/// Subprocess roles for the checks above.
pub fn helper(role: &str) -> anyhow::Result<()> {
    match role {
        "attach-unprivileged" => {
            let homi = open_homi()?;
            let nvme = OpenOptions::new().read(true).write(true).open(NVME)?;
            let nobody = nix::unistd::Uid::from_raw(65534);
            nix::unistd::setresuid(nobody, nobody, nobody)?;
            match attach_raw(&homi, &nvme) {
                Err(e) => println!("{e:?}"),
                Ok(()) => println!("attached"),
            }
            Ok(())
        }
        "hold" => {
            let ctrl = Controller::open(NVME)?;
            let qps = [ctrl.create_qpair(64)?, ctrl.create_qpair(256)?];
            let buf = ctrl.alloc(1 << 20)?;
            let mem = Aligned::new(1 << 20);
            let mut addrs = vec![0u64; 256];
            let mut r = HomiRegister {
                addr: mem.ptr as u64,
                len: 1 << 20,
                dma_addrs: addrs.as_mut_ptr() as u64,
                flags: 0,
                id: 0,
            };
            raw(ctrl.homi_fd(), HOMI_IOCTL_REGISTER, &mut r)?;
            std::io::stdout().write_all(b"ready\n")?;
            std::io::stdout().flush()?;
            std::thread::sleep(Duration::from_secs(600));
            drop((qps, buf, mem));
            Ok(())
        }
        other => bail!("unknown helper role {other:?}"),
    }
}
