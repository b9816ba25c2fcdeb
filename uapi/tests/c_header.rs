//! Keeps `include/linux/homi.h` in sync with the Rust ABI: compiles a C program
//! against the header that prints every size, field offset, constant and ioctl number,
//! and compares each with the Rust definition.

use std::mem::{offset_of, size_of};
use std::process::Command;

use homi_uapi::*;

/// C expressions the probe prints, one per line, paired with the Rust value.
fn expectations() -> Vec<(&'static str, u64)> {
    macro_rules! size {
        ($c:literal, $t:ty) => {
            (concat!("sizeof(struct ", $c, ")"), size_of::<$t>() as u64)
        };
    }
    macro_rules! off {
        ($c:literal, $t:ty, $f:ident) => {
            (
                concat!("offsetof(struct ", $c, ", ", stringify!($f), ")"),
                offset_of!($t, $f) as u64,
            )
        };
    }
    vec![
        ("HOMI_IOCTL_TYPE", u64::from(IOCTL_TYPE)),
        ("HOMI_ABI_MAJOR", u64::from(ABI_MAJOR)),
        ("HOMI_ABI_MINOR", u64::from(ABI_MINOR)),
        size!("homi_version", HomiVersion),
        off!("homi_version", HomiVersion, features),
        size!("homi_attach", HomiAttach),
        off!("homi_attach", HomiAttach, flags),
        size!("homi_namespace", HomiNamespace),
        off!("homi_namespace", HomiNamespace, blocks),
        off!("homi_namespace", HomiNamespace, meta_size),
        size!("homi_info", HomiInfo),
        off!("homi_info", HomiInfo, max_transfer),
        off!("homi_info", HomiInfo, cap),
        off!("homi_info", HomiInfo, dma_bytes),
        off!("homi_info", HomiInfo, qpairs),
        off!("homi_info", HomiInfo, nr_namespaces),
        off!("homi_info", HomiInfo, quarantined_bytes),
        off!("homi_info", HomiInfo, refused_calls),
        off!("homi_info", HomiInfo, namespaces),
        size!("homi_qpair", HomiQpair),
        off!("homi_qpair", HomiQpair, sq_doorbell),
        off!("homi_qpair", HomiQpair, sq_size),
        off!("homi_qpair", HomiQpair, doorbell_offset),
        off!("homi_qpair", HomiQpair, generation),
        off!("homi_qpair", HomiQpair, shadow_offset),
        off!("homi_qpair", HomiQpair, eventidx_offset),
        off!("homi_qpair", HomiQpair, shadow_sq),
        off!("homi_qpair", HomiQpair, shadow_cq),
        off!("homi_qpair", HomiQpair, status_slot),
        off!("homi_qpair", HomiQpair, sq_memory),
        off!("homi_qpair", HomiQpair, cq_memory),
        off!("homi_qpair", HomiQpair, reserved),
        off!("homi_qpair", HomiQpair, sq_memory_offset),
        off!("homi_qpair", HomiQpair, cq_memory_offset),
        (
            "HOMI_QPAIR_SQ_IN_MEMORY",
            u64::from(HOMI_QPAIR_SQ_IN_MEMORY),
        ),
        (
            "HOMI_QPAIR_CQ_IN_MEMORY",
            u64::from(HOMI_QPAIR_CQ_IN_MEMORY),
        ),
        size!("homi_register_dmabuf", HomiRegisterDmabuf),
        off!("homi_register_dmabuf", HomiRegisterDmabuf, flags),
        off!("homi_register_dmabuf", HomiRegisterDmabuf, offset),
        off!("homi_register_dmabuf", HomiRegisterDmabuf, len),
        off!("homi_register_dmabuf", HomiRegisterDmabuf, dma_addrs),
        off!("homi_register_dmabuf", HomiRegisterDmabuf, id),
        off!("homi_register_dmabuf", HomiRegisterDmabuf, reserved),
        ("HOMI_QPAIR_SHADOW", u64::from(HOMI_QPAIR_SHADOW)),
        ("HOMI_INFO_USER_QUEUES", u64::from(HOMI_INFO_USER_QUEUES)),
        ("HOMI_INFO_IOMMU", u64::from(HOMI_INFO_IOMMU)),
        (
            "HOMI_INFO_SHARED_DOORBELLS",
            u64::from(HOMI_INFO_SHARED_DOORBELLS),
        ),
        ("HOMI_FEAT_USER_QUEUES", HOMI_FEAT_USER_QUEUES),
        size!("homi_id", HomiId),
        size!("homi_alloc", HomiAlloc),
        off!("homi_alloc", HomiAlloc, id),
        off!("homi_alloc", HomiAlloc, dma_addr),
        ("HOMI_REGISTER_MAX", HOMI_REGISTER_MAX),
        size!("homi_register", HomiRegister),
        off!("homi_register", HomiRegister, dma_addrs),
        off!("homi_register", HomiRegister, id),
        size!("homi_status", HomiStatus),
        off!("homi_status", HomiStatus, ctrl_state),
        off!("homi_status", HomiStatus, queue_state),
        size!("homi_list", HomiList),
        off!("homi_list", HomiList, capacity),
        off!("homi_list", HomiList, count),
        size!("homi_qpair_entry", HomiQpairEntry),
        off!("homi_qpair_entry", HomiQpairEntry, qid),
        off!("homi_qpair_entry", HomiQpairEntry, state),
        ("HOMI_MAX_NAMESPACES", HOMI_MAX_NAMESPACES as u64),
        ("HOMI_ALLOC_MAX", HOMI_ALLOC_MAX),
        ("HOMI_STATUS_OFFSET", HOMI_STATUS_OFFSET),
        ("HOMI_STATUS_SLOTS", HOMI_STATUS_SLOTS as u64),
        ("HOMI_INFO_LIVE", u64::from(HOMI_INFO_LIVE)),
        (
            "HOMI_INFO_SHADOW_DOORBELLS",
            u64::from(HOMI_INFO_SHADOW_DOORBELLS),
        ),
        ("HOMI_INFO_CMB", u64::from(HOMI_INFO_CMB)),
        (
            "HOMI_INFO_MORE_NAMESPACES",
            u64::from(HOMI_INFO_MORE_NAMESPACES),
        ),
        ("HOMI_QUEUE_NONE", u64::from(HOMI_QUEUE_NONE)),
        ("HOMI_QUEUE_LIVE", u64::from(HOMI_QUEUE_LIVE)),
        ("HOMI_QUEUE_DEAD", u64::from(HOMI_QUEUE_DEAD)),
        ("HOMI_CTRL_LIVE", u64::from(HOMI_CTRL_LIVE)),
        ("HOMI_CTRL_NOT_LIVE", u64::from(HOMI_CTRL_NOT_LIVE)),
        ("HOMI_CTRL_GONE", u64::from(HOMI_CTRL_GONE)),
        ("HOMI_IOCTL_VERSION", u64::from(HOMI_IOCTL_VERSION)),
        ("HOMI_IOCTL_ATTACH", u64::from(HOMI_IOCTL_ATTACH)),
        ("HOMI_IOCTL_INFO", u64::from(HOMI_IOCTL_INFO)),
        (
            "HOMI_IOCTL_CREATE_QPAIR",
            u64::from(HOMI_IOCTL_CREATE_QPAIR),
        ),
        (
            "HOMI_IOCTL_DESTROY_QPAIR",
            u64::from(HOMI_IOCTL_DESTROY_QPAIR),
        ),
        ("HOMI_IOCTL_REARM_QPAIR", u64::from(HOMI_IOCTL_REARM_QPAIR)),
        ("HOMI_IOCTL_ALLOC", u64::from(HOMI_IOCTL_ALLOC)),
        ("HOMI_IOCTL_FREE", u64::from(HOMI_IOCTL_FREE)),
        ("HOMI_IOCTL_REGISTER", u64::from(HOMI_IOCTL_REGISTER)),
        ("HOMI_IOCTL_UNREGISTER", u64::from(HOMI_IOCTL_UNREGISTER)),
        ("HOMI_IOCTL_LIST_QPAIRS", u64::from(HOMI_IOCTL_LIST_QPAIRS)),
        (
            "HOMI_IOCTL_REGISTER_DMABUF",
            u64::from(HOMI_IOCTL_REGISTER_DMABUF),
        ),
        ("HOMI_IOCTL_MAP_FILE", u64::from(HOMI_IOCTL_MAP_FILE)),
        ("HOMI_IOCTL_UNMAP_FILE", u64::from(HOMI_IOCTL_UNMAP_FILE)),
        size!("homi_map_file", HomiMapFile),
        off!("homi_map_file", HomiMapFile, flags),
        off!("homi_map_file", HomiMapFile, offset),
        off!("homi_map_file", HomiMapFile, len),
        off!("homi_map_file", HomiMapFile, extents),
        off!("homi_map_file", HomiMapFile, capacity),
        off!("homi_map_file", HomiMapFile, count),
        off!("homi_map_file", HomiMapFile, id),
        off!("homi_map_file", HomiMapFile, status_slot),
        off!("homi_map_file", HomiMapFile, file_size),
        off!("homi_map_file", HomiMapFile, block_size),
        off!("homi_map_file", HomiMapFile, nsid),
        off!("homi_map_file", HomiMapFile, lba_shift),
        off!("homi_map_file", HomiMapFile, revoke_ms),
        size!("homi_extent", HomiExtent),
        off!("homi_extent", HomiExtent, lba),
        off!("homi_extent", HomiExtent, blocks),
        off!("homi_extent", HomiExtent, nsid),
        off!("homi_extent", HomiExtent, kind),
        size!("homi_map_status", HomiMapStatus),
        ("HOMI_MAP_WRITE", u64::from(HOMI_MAP_WRITE)),
        ("HOMI_MAP_LAYOUT_LEASE", u64::from(HOMI_MAP_LAYOUT_LEASE)),
        ("HOMI_MAP_DENY_WRITE", u64::from(HOMI_MAP_DENY_WRITE)),
        ("HOMI_MAP_MAX_EXTENTS", u64::from(HOMI_MAP_MAX_EXTENTS)),
        ("HOMI_EXTENT_MAPPED", u64::from(HOMI_EXTENT_MAPPED)),
        ("HOMI_EXTENT_UNWRITTEN", u64::from(HOMI_EXTENT_UNWRITTEN)),
        ("HOMI_EXTENT_HOLE", u64::from(HOMI_EXTENT_HOLE)),
        ("HOMI_MAP_STATUS_OFFSET", HOMI_MAP_STATUS_OFFSET),
        ("HOMI_MAP_SLOTS", HOMI_MAP_SLOTS as u64),
        ("HOMI_MAP_NONE", u64::from(HOMI_MAP_NONE)),
        ("HOMI_MAP_LIVE", u64::from(HOMI_MAP_LIVE)),
        ("HOMI_MAP_REVOKED", u64::from(HOMI_MAP_REVOKED)),
        ("HOMI_MAP_FENCED", u64::from(HOMI_MAP_FENCED)),
    ]
}

#[test]
fn c_header_matches_rust_abi() {
    let exp = expectations();
    let dir = std::env::temp_dir().join(format!("homi-uapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut prog = String::from(
        "#include <stddef.h>\n#include <stdio.h>\n#include <linux/homi.h>\nint main(void) {\n",
    );
    for (expr, _) in &exp {
        prog += &format!("\tprintf(\"%llu\\n\", (unsigned long long)({expr}));\n");
    }
    prog += "\treturn 0;\n}\n";
    let src = dir.join("probe.c");
    let bin = dir.join("probe");
    std::fs::write(&src, prog).unwrap();
    let include = concat!(env!("CARGO_MANIFEST_DIR"), "/include");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let st = Command::new(&cc)
        .args([
            "-std=c11", "-Wall", "-Wextra", "-Werror", "-I", include, "-o",
        ])
        .arg(&bin)
        .arg(&src)
        .status()
        .unwrap_or_else(|e| panic!("run {cc}: {e}"));
    assert!(
        st.success(),
        "include/linux/homi.h does not compile cleanly"
    );
    let out = Command::new(&bin).output().unwrap();
    let got: Vec<u64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(got.len(), exp.len());
    let mismatches: Vec<String> = exp
        .iter()
        .zip(&got)
        .filter(|((_, r), c)| r != *c)
        .map(|((e, r), c)| format!("{e}: C {c}, Rust {r}"))
        .collect();
    assert!(
        mismatches.is_empty(),
        "homi.h out of sync:\n{}",
        mismatches.join("\n")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
