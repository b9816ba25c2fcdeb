/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note OR MIT */
/*
 * homi ioctl ABI for C users. The definition of record is uapi/src/abi.rs;
 * uapi's tests compile this header and check every size, offset and ioctl
 * number against it.
 */
#ifndef _UAPI_LINUX_HOMI_H
#define _UAPI_LINUX_HOMI_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define HOMI_IOCTL_TYPE 0xB9
#define HOMI_ABI_MAJOR 0
#define HOMI_ABI_MINOR 7

#define HOMI_FEAT_USER_QUEUES		(1ULL << 0)

struct homi_version {
	__u32 abi_major;
	__u32 abi_minor;
	__u64 features;
};

struct homi_attach {
	__s32 nvme_fd;		/* fd of /dev/nvmeX, opened read-write */
	__u32 flags;		/* must be 0 */
};

#define HOMI_MAX_NAMESPACES 16

struct homi_namespace {
	__u32 nsid;
	__u32 lba_shift;
	__u64 blocks;
	__u32 meta_size;
	__u32 reserved;
};

#define HOMI_INFO_LIVE			(1U << 0)
#define HOMI_INFO_SHADOW_DOORBELLS	(1U << 1)
#define HOMI_INFO_CMB			(1U << 2)
#define HOMI_INFO_MORE_NAMESPACES	(1U << 3)
#define HOMI_INFO_USER_QUEUES		(1U << 4)
#define HOMI_INFO_IOMMU			(1U << 5)
#define HOMI_INFO_SHARED_DOORBELLS	(1U << 6)

struct homi_info {
	__u32 instance;
	__u32 flags;
	__u32 driver_io_queues;
	__u32 granted_io_queues;
	__u32 first_spare_qid;
	__u32 spare_free;
	__u32 max_queue_entries;
	__u32 doorbell_stride;
	__u32 min_page_size;
	__u32 max_transfer;
	__u64 cap;
	__u64 generation;
	__u64 pinned_pages;
	__u64 dma_bytes;
	__u32 qpairs;
	__u32 nr_namespaces;
	__u64 quarantined_bytes;
	__u64 refused_calls;
	struct homi_namespace namespaces[HOMI_MAX_NAMESPACES];
};

#define HOMI_QPAIR_SHADOW		(1U << 0)
#define HOMI_QPAIR_SQ_IN_MEMORY		(1U << 8)
#define HOMI_QPAIR_CQ_IN_MEMORY		(1U << 9)

struct homi_qpair {
	__u32 depth;
	__u32 flags;
	__u32 qid;
	__u32 sq_doorbell;
	__u64 sq_size;
	__u64 cq_size;
	__u64 sq_offset;
	__u64 cq_offset;
	__u64 doorbell_offset;
	__u64 generation;
	__u64 shadow_offset;	/* HOMI_QPAIR_SHADOW: shadow doorbell page */
	__u64 eventidx_offset;	/* HOMI_QPAIR_SHADOW: event index page, read-only */
	__u32 shadow_sq;	/* SQ tail slot's byte offset in both pages */
	__u32 shadow_cq;	/* CQ head slot's byte offset in both pages */
	__u32 status_slot;	/* index in homi_status.queue_state */
	__u32 sq_memory;	/* HOMI_QPAIR_SQ_IN_MEMORY: buffer/registration id */
	__u32 cq_memory;	/* HOMI_QPAIR_CQ_IN_MEMORY: buffer/registration id */
	__u32 reserved;
	__u64 sq_memory_offset;	/* SQ ring's offset there, 4096-aligned */
	__u64 cq_memory_offset;	/* CQ ring's offset there, 4096-aligned */
};

struct homi_id {
	__u32 id;
	__u32 flags;
};

#define HOMI_ALLOC_MAX (4ULL << 20)

struct homi_alloc {
	__u64 size;
	__u32 flags;
	__u32 id;
	__u64 offset;
	__u64 dma_addr;
};

#define HOMI_REGISTER_MAX (16ULL << 30)

struct homi_register {
	__u64 addr;
	__u64 len;
	__u64 dma_addrs;
	__u32 flags;
	__u32 id;
};

struct homi_register_dmabuf {
	__s32 fd;		/* a dma-buf fd */
	__u32 flags;		/* must be 0 */
	__u64 offset;		/* into the dma-buf, 4096-aligned */
	__u64 len;		/* non-zero multiple of 4096, at most HOMI_REGISTER_MAX */
	__u64 dma_addrs;	/* __u64[len / 4096], filled */
	__u32 id;		/* out: the registration id */
	__u32 reserved;
};

struct homi_list {
	__u64 entries;		/* struct homi_qpair_entry[capacity] */
	__u32 capacity;
	__u32 count;		/* out: queue pairs that exist */
};

struct homi_qpair_entry {
	__u32 pid;
	__u32 instance;
	__u32 qid;
	__u32 depth;
	__u32 state;
	__u32 reserved;
};

/* MAP_FILE: a file's extents under a lease (see uapi/src/abi.rs). */
#define HOMI_MAP_WRITE		(1U << 0)
#define HOMI_MAP_LAYOUT_LEASE	(1U << 8)
#define HOMI_MAP_DENY_WRITE	(1U << 9)
#define HOMI_MAP_MAX_EXTENTS	(1U << 20)

struct homi_map_file {
	__s32 fd;		/* a regular file */
	__u32 flags;		/* in: HOMI_MAP_WRITE or 0; out: also HOMI_MAP_*_LEASE/DENY_WRITE */
	__u64 offset;		/* bytes, a multiple of 4096 */
	__u64 len;		/* in: non-zero; out: bytes the extents cover */
	__u64 extents;		/* struct homi_extent[capacity] */
	__u32 capacity;		/* 1..HOMI_MAP_MAX_EXTENTS */
	__u32 count;		/* out: extents written */
	__u32 id;		/* out: for HOMI_IOCTL_UNMAP_FILE */
	__u32 status_slot;	/* out: slot in struct homi_map_status */
	__u64 file_size;	/* out */
	__u32 block_size;	/* out */
	__u32 nsid;		/* out */
	__u32 lba_shift;	/* out */
	__u32 revoke_ms;	/* in: 0; out: how long a revocation waits for UNMAP_FILE */
};

#define HOMI_EXTENT_MAPPED	1
#define HOMI_EXTENT_UNWRITTEN	2
#define HOMI_EXTENT_HOLE	3

struct homi_extent {
	__u64 file_offset;	/* bytes */
	__u64 lba;		/* partition offset added; 0 for a hole */
	__u64 blocks;		/* in the namespace's LBAs */
	__u32 nsid;
	__u32 kind;		/* HOMI_EXTENT_* */
};

#define HOMI_MAP_STATUS_OFFSET 4096
#define HOMI_MAP_SLOTS 1024
#define HOMI_MAP_NONE 0
#define HOMI_MAP_LIVE 1
#define HOMI_MAP_REVOKED 2
#define HOMI_MAP_FENCED 3

struct homi_map_status {
	__u32 map_state[HOMI_MAP_SLOTS];
};

#define HOMI_STATUS_OFFSET 0
#define HOMI_STATUS_SLOTS 1020
#define HOMI_QUEUE_NONE 0
#define HOMI_QUEUE_LIVE 1
#define HOMI_QUEUE_DEAD 2
#define HOMI_CTRL_LIVE 1
#define HOMI_CTRL_NOT_LIVE 2
#define HOMI_CTRL_GONE 3

struct homi_status {
	__u64 generation;
	__u32 ctrl_state;
	__u32 reserved;
	__u32 queue_state[HOMI_STATUS_SLOTS];
};

#define HOMI_IOCTL_VERSION	_IOR(HOMI_IOCTL_TYPE, 0x00, struct homi_version)
#define HOMI_IOCTL_ATTACH	_IOW(HOMI_IOCTL_TYPE, 0x01, struct homi_attach)
#define HOMI_IOCTL_INFO		_IOR(HOMI_IOCTL_TYPE, 0x02, struct homi_info)
#define HOMI_IOCTL_CREATE_QPAIR	_IOWR(HOMI_IOCTL_TYPE, 0x03, struct homi_qpair)
#define HOMI_IOCTL_DESTROY_QPAIR _IOW(HOMI_IOCTL_TYPE, 0x04, struct homi_id)
#define HOMI_IOCTL_REARM_QPAIR	_IOWR(HOMI_IOCTL_TYPE, 0x05, struct homi_qpair)
#define HOMI_IOCTL_ALLOC	_IOWR(HOMI_IOCTL_TYPE, 0x06, struct homi_alloc)
#define HOMI_IOCTL_FREE		_IOW(HOMI_IOCTL_TYPE, 0x07, struct homi_id)
#define HOMI_IOCTL_REGISTER	_IOWR(HOMI_IOCTL_TYPE, 0x08, struct homi_register)
#define HOMI_IOCTL_UNREGISTER	_IOW(HOMI_IOCTL_TYPE, 0x09, struct homi_id)
#define HOMI_IOCTL_LIST_QPAIRS	_IOWR(HOMI_IOCTL_TYPE, 0x0a, struct homi_list)
#define HOMI_IOCTL_REGISTER_DMABUF _IOWR(HOMI_IOCTL_TYPE, 0x0b, struct homi_register_dmabuf)
#define HOMI_IOCTL_MAP_FILE	_IOWR(HOMI_IOCTL_TYPE, 0x0c, struct homi_map_file)
#define HOMI_IOCTL_UNMAP_FILE	_IOW(HOMI_IOCTL_TYPE, 0x0d, struct homi_id)

#endif /* _UAPI_LINUX_HOMI_H */
