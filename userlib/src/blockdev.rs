//! Which block device, and which NVMe controller, a file lives on (from sysfs).

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// `major:minor` of the device that holds `file` (its `st_dev`).
fn dev_of(file: &File) -> Option<String> {
    let st = nix::sys::stat::fstat(file.as_fd()).ok()?;
    let dev = st.st_dev;
    Some(format!("{}:{}", nix::sys::stat::major(dev), nix::sys::stat::minor(dev)))
}

/// The `DEVNAME=` line of a sysfs `uevent` file.
fn devname(uevent: &str) -> Option<&str> {
    uevent.lines().find_map(|l| l.strip_prefix("DEVNAME=")).map(str::trim).filter(|s| !s.is_empty())
}

/// The name of the block device that holds `file` (`nvme0n1p2`, `dm-0`, `loop3`), from
/// `/sys/dev/block/MAJ:MIN/uevent`; `None` where the file system has no block device
/// (tmpfs, NFS) or sysfs does not say.
pub fn block_device_of(file: &File) -> Option<String> {
    let dev = dev_of(file)?;
    let uevent = std::fs::read_to_string(format!("/sys/dev/block/{dev}/uevent")).ok()?;
    devname(&uevent).map(str::to_owned)
}

/// Like [`block_device_of`], but never `None`: falls back to `major:minor`, for
/// messages.
pub(crate) fn describe_device(file: &File) -> String {
    block_device_of(file).or_else(|| dev_of(file).map(|d| format!("device {d}"))).unwrap_or_else(|| "?".into())
}

/// Whether `name` is a controller's (`nvme` and digits).
fn is_controller(name: &str) -> bool {
    name.strip_prefix("nvme").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The controller's char device (`/dev/nvme0`) of the NVMe namespace that holds
/// `file`: `/sys/dev/block/MAJ:MIN` is the namespace disk (or a partition of it, whose
/// parent is the disk), and the disk's `device` link names the controller (or, with
/// native multipath, the subsystem, whose first controller is taken). `None` when the
/// file is not on an NVMe namespace.
pub fn nvme_controller_of(file: &File) -> Option<PathBuf> {
    let mut disk = std::fs::canonicalize(format!("/sys/dev/block/{}", dev_of(file)?)).ok()?;
    if disk.join("partition").exists() {
        disk = disk.parent()?.to_owned();
    }
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    if !name(&disk)?.starts_with("nvme") {
        return None;
    }
    let dev = std::fs::canonicalize(disk.join("device")).ok()?;
    let ctrl = name(&dev)?;
    if is_controller(&ctrl) {
        return Some(Path::new("/dev").join(ctrl));
    }
    // A multipath namespace head: its device is the subsystem, which lists its paths.
    let mut ctrls: Vec<String> = std::fs::read_dir(&dev)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| is_controller(n))
        .collect();
    ctrls.sort();
    ctrls.first().map(|c| Path::new("/dev").join(c))
}

/// The path `file` was opened by, for messages (`/proc/self/fd/N`).
pub(crate) fn path_of(file: &File) -> String {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| format!("fd {}", file.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devname_is_read_from_uevent() {
        let u = "MAJOR=259\nMINOR=1\nDEVNAME=nvme0n1p1\nDEVTYPE=partition\nPARTN=1\n";
        assert_eq!(devname(u), Some("nvme0n1p1"));
        assert_eq!(devname("MAJOR=8\n"), None);
        assert_eq!(devname("DEVNAME=\n"), None);
    }

    #[test]
    fn controller_names_are_nvme_and_digits() {
        assert!(is_controller("nvme0"));
        assert!(is_controller("nvme12"));
        assert!(!is_controller("nvme"));
        assert!(!is_controller("nvme0n1"));
        assert!(!is_controller("nvme-subsys0"));
    }

    #[test]
    fn a_file_off_nvme_has_no_controller() {
        // The test binary itself: on whatever holds the build tree.
        let f = File::open(std::env::current_exe().unwrap()).unwrap();
        let dev = block_device_of(&f);
        if dev.as_deref().is_none_or(|d| !d.starts_with("nvme")) {
            assert_eq!(nvme_controller_of(&f), None);
        }
        assert!(!describe_device(&f).is_empty());
        assert!(path_of(&f).contains('/'));
    }
}
