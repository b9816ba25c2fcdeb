/* SPDX-License-Identifier: GPL-2.0 */
/*
 * File maps' C glue (homi_file_glue.c): leases, map_blocks, the namespace
 * behind a file. The Rust side declares these by hand in lease.rs.
 */
#ifndef HOMI_FILE_GLUE_H
#define HOMI_FILE_GLUE_H

#include <linux/types.h>

struct file;
struct nvme_ctrl;

/* How homi keeps a file's map true. */
enum homi_fs_kind {
	HOMI_FS_LAYOUT = 1,	/* layout lease + export map_blocks (XFS) */
	HOMI_FS_DENY_WRITE = 2,	/* writes denied + bmap (ext4) */
};

struct homi_file_info {
	const char *why;	/* on refusal: the reason, a static string */
	char bdev[32];		/* the block device, as %pg prints it */
	char fs[16];		/* the file system type */
	u64 start;		/* the partition's first byte on the namespace */
	u64 size;		/* i_size */
	u32 nsid;
	u32 lba_shift;
	u32 block_size;
	u32 kind;		/* enum homi_fs_kind */
};

enum homi_file_kind {
	HOMI_FILE_HOLE = 0,
	HOMI_FILE_MAPPED = 1,
	HOMI_FILE_UNWRITTEN = 2,
	HOMI_FILE_DELALLOC = 3,
	HOMI_FILE_INLINE = 4,
};

struct homi_file_extent {
	u64 offset;	/* bytes in the file */
	u64 length;	/* bytes */
	u64 addr;	/* bytes on the file system's block device */
	u32 kind;	/* enum homi_file_kind */
	u32 shared;	/* the blocks are shared with another file */
};

void homi_file_glue_init(void (*broken)(void *owner));
int homi_lease_take(struct file *filp, void *owner);
int homi_lease_drop(struct file *filp, void *owner);
int homi_write_deny(struct file *filp);
void homi_write_allow(struct file *filp);
s64 homi_file_next_data(struct file *filp, u64 pos);
int homi_file_describe(struct nvme_ctrl *ctrl, struct file *filp,
		       struct homi_file_info *info);
int homi_file_map_blocks(struct file *filp, u64 offset, u64 len,
			 struct homi_file_extent *ext);
int homi_file_bmap(struct file *filp, u64 block, u64 *phys);
int homi_file_flush(struct file *filp, u64 start, u64 end);
int homi_file_invalidate(struct file *filp, u64 start, u64 end);

#endif /* HOMI_FILE_GLUE_H */
