//! From a namespace block device to its controller and NSID, through sysfs.

use std::ffi::{c_char, c_int};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::ctrl::path_arg;
use crate::error::{guard, Failure, HomiErr};
use crate::put;

fn io(what: String, e: std::io::Error) -> Failure {
    Failure::new(HomiErr::HOMI_E_IO, format!("{what}: {e}"))
}

/// The controller node ("/dev/nvme0") and NSID of the namespace block device with
/// device number `major:minor`, from the sysfs tree at `sys`.
pub(crate) fn resolve_in(sys: &Path, major: u64, minor: u64) -> Result<(String, u32), Failure> {
    let link = sys.join(format!("dev/block/{major}:{minor}"));
    let dev = std::fs::canonicalize(&link).map_err(|e| io(link.display().to_string(), e))?;
    let name = dev.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if dev.join("partition").exists() {
        return Err(Failure::invalid(format!("{name} is a partition, not a namespace")));
    }
    let nsid_file = dev.join("nsid");
    let nsid = std::fs::read_to_string(&nsid_file)
        .map_err(|_| Failure::invalid(format!("{name} is not an NVMe namespace (no {})", nsid_file.display())))?;
    let nsid = nsid.trim().parse::<u32>().map_err(|_| Failure::invalid(format!("{name}: nsid {nsid:?}")))?;
    let ctrl = controller_of(sys, &dev)?;
    Ok((format!("/dev/{ctrl}"), nsid))
}

/// The `nvmeN` controller behind namespace directory `dev`: its `device` link, or
/// for a multipath head node (whose `device` is the subsystem), the controller of its
/// first path (`multipath/nvmeScCnN`).
fn controller_of(sys: &Path, dev: &Path) -> Result<String, Failure> {
    let is_ctrl =
        |n: &str| n.strip_prefix("nvme").is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
    let target = |p: PathBuf| {
        std::fs::canonicalize(&p)
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
            .filter(|n| is_ctrl(n))
    };
    if let Some(c) = target(dev.join("device")) {
        return Ok(c);
    }
    let mut paths: Vec<String> = std::fs::read_dir(dev.join("multipath"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    paths.sort();
    for p in paths {
        if let Some(c) = target(sys.join("block").join(&p).join("device")) {
            return Ok(c);
        }
    }
    Err(Failure::invalid(format!("{}: no NVMe controller found in sysfs", dev.display())))
}

/// Finds the controller and NSID of a namespace block device ("/dev/nvme0n1", or a
/// link to it) through sysfs: writes the controller's character device path
/// ("/dev/nvme0", NUL-terminated) into `ctrl_path` of `ctrl_path_len` bytes and the
/// NSID into `*nsid`. HOMI_E_INVALID for something that is not an NVMe namespace (a
/// partition, another disk) or a `ctrl_path` too small; HOMI_E_IO where the node or
/// sysfs cannot be read. For a multipath namespace, the controller of its first path.
///
/// # Safety
///
/// `block_dev` must be NULL or a NUL-terminated string; `ctrl_path` NULL or writable
/// for `ctrl_path_len` bytes; `nsid` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn homi_ns_resolve(
    block_dev: *const c_char,
    ctrl_path: *mut c_char,
    ctrl_path_len: usize,
    nsid: *mut u32,
) -> c_int {
    guard("homi_ns_resolve", || {
        // SAFETY: NULL or NUL-terminated (caller).
        let dev = unsafe { path_arg(block_dev, "block_dev")? };
        if ctrl_path.is_null() {
            return Err(Failure::null("ctrl_path"));
        }
        if nsid.is_null() {
            return Err(Failure::null("nsid"));
        }
        let meta = std::fs::metadata(dev).map_err(|e| io(format!("stat {}", dev.display()), e))?;
        if !meta.file_type().is_block_device() {
            return Err(Failure::invalid(format!("{} is not a block device", dev.display())));
        }
        let rdev = meta.rdev();
        let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
        let (ctrl, id) = resolve_in(Path::new("/sys"), major, minor)?;
        if ctrl.len() >= ctrl_path_len {
            return Err(Failure::invalid(format!(
                "ctrl_path_len {ctrl_path_len} leaves no room for {ctrl:?} and its NUL"
            )));
        }
        // SAFETY: `ctrl_path` has room for `ctrl_path_len` > `ctrl.len()` bytes (caller,
        // checked above), and `ctrl` is a separate allocation.
        unsafe {
            std::ptr::copy_nonoverlapping(ctrl.as_ptr(), ctrl_path.cast::<u8>(), ctrl.len());
            ctrl_path.add(ctrl.len()).write(0);
        }
        // SAFETY: not NULL (checked above) and writable (caller).
        unsafe { put(nsid, "nsid", id)? };
        Ok(0)
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A scratch sysfs tree.
    struct Tree(PathBuf);

    impl Tree {
        fn new(name: &str) -> Self {
            let p = std::env::temp_dir().join(format!("homi-capi-sys-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(p.join("dev/block")).unwrap();
            std::fs::create_dir_all(p.join("block")).unwrap();
            Self(p)
        }

        fn dir(&self, rel: &str) -> PathBuf {
            let d = self.0.join(rel);
            std::fs::create_dir_all(&d).unwrap();
            d
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn plain_namespace_partition_and_other_disk() {
        let t = Tree::new("plain");
        let ns = t.dir("devices/pci0/nvme/nvme3/nvme3n2");
        std::fs::write(ns.join("nsid"), "5\n").unwrap();
        symlink("../../nvme3", ns.join("device")).unwrap();
        symlink(&ns, t.0.join("dev/block/259:1")).unwrap();
        assert_eq!(resolve_in(&t.0, 259, 1).unwrap(), ("/dev/nvme3".into(), 5));

        let part = t.dir("devices/pci0/nvme/nvme3/nvme3n2/nvme3n2p1");
        std::fs::write(part.join("partition"), "1\n").unwrap();
        symlink(&part, t.0.join("dev/block/259:2")).unwrap();
        assert!(resolve_in(&t.0, 259, 2).unwrap_err().msg.contains("partition"));

        let sda = t.dir("devices/ata/sda");
        symlink(&sda, t.0.join("dev/block/8:0")).unwrap();
        assert_eq!(resolve_in(&t.0, 8, 0).unwrap_err().code, HomiErr::HOMI_E_INVALID);
        assert_eq!(resolve_in(&t.0, 1, 1).unwrap_err().code, HomiErr::HOMI_E_IO);
    }

    #[test]
    fn multipath_head_takes_its_first_path() {
        let t = Tree::new("mpath");
        let subsys = t.dir("devices/virtual/nvme-subsystem/nvme-subsys0");
        let head = t.dir("devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1");
        std::fs::write(head.join("nsid"), "1").unwrap();
        symlink(&subsys, head.join("device")).unwrap();
        let path = t.dir("devices/pci0/nvme/nvme2/nvme0c2n1");
        t.dir("devices/pci0/nvme/nvme2");
        symlink(t.0.join("devices/pci0/nvme/nvme2"), path.join("device")).unwrap();
        t.dir("devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1/multipath");
        symlink(&path, head.join("multipath/nvme0c2n1")).unwrap();
        symlink(&path, t.0.join("block/nvme0c2n1")).unwrap();
        symlink(&head, t.0.join("dev/block/259:0")).unwrap();
        assert_eq!(resolve_in(&t.0, 259, 0).unwrap(), ("/dev/nvme2".into(), 1));
    }

    #[test]
    fn arguments_are_checked() {
        let mut buf = [0 as c_char; 4];
        let mut nsid = 0u32;
        // SAFETY: NUL-terminated strings, writable outs of the stated sizes.
        unsafe {
            assert_eq!(
                homi_ns_resolve(std::ptr::null(), buf.as_mut_ptr(), 4, &mut nsid),
                HomiErr::HOMI_E_NULL_ARG as c_int
            );
            assert_eq!(
                homi_ns_resolve(c"/dev/null".as_ptr(), std::ptr::null_mut(), 4, &mut nsid),
                HomiErr::HOMI_E_NULL_ARG as c_int
            );
            assert_eq!(
                homi_ns_resolve(c"/dev/null".as_ptr(), buf.as_mut_ptr(), 4, std::ptr::null_mut()),
                HomiErr::HOMI_E_NULL_ARG as c_int
            );
            assert_eq!(
                homi_ns_resolve(c"/dev/null".as_ptr(), buf.as_mut_ptr(), 4, &mut nsid),
                HomiErr::HOMI_E_INVALID as c_int
            );
            assert_eq!(
                homi_ns_resolve(c"/nonexistent".as_ptr(), buf.as_mut_ptr(), 4, &mut nsid),
                HomiErr::HOMI_E_IO as c_int
            );
        }
    }
}
