// SPDX-License-Identifier: GPL-2.0
/*
 * File maps: the parts of MAP_FILE that Rust bindings do not reach. Leases
 * (struct file_lease and its lease manager operations are not in the bindings),
 * the pNFS block export operation map_blocks (struct iomap), the namespace
 * behind a file (struct nvme_ns is private to drivers/nvme/host), and the
 * file's attribute flags and mount options. Policy stays in filemap.rs.
 */
#include <linux/blkdev.h>
#include <linux/exportfs.h>
#include <linux/exportfs_block.h>
#include <linux/fileattr.h>
#include <linux/filelock.h>
#include <linux/fs.h>
#include <linux/fscrypt.h>
#include <linux/fsverity.h>
#include <linux/iomap.h>
#include <linux/slab.h>
#include <linux/string.h>

#include "nvme.h"
/* ext4's private superblock info, for its data journalling mode (like nvme.h, compiled
 * against the same tree and config). */
#include "ext4.h"
#include "homi_file_glue.h"

static void (*homi_broken)(void *owner);

/*
 * lm_break: runs under the inode's flc_lock. Tells the map's owner, which marks
 * the map revoked and schedules its fence, and keeps the lease: homi removes
 * it once the holder acknowledged or was fenced. The breaker waits until then.
 */
static bool homi_lm_break(struct file_lease *fl)
{
	homi_broken(fl->c.flc_owner);
	return false;
}

/* The locks code asks again when its own break time passes: keep the lease. */
static bool homi_lm_breaker_timedout(struct file_lease *fl)
{
	return false;
}

static int homi_lm_change(struct file_lease *fl, int arg, struct list_head *dispose)
{
	return lease_modify(fl, arg, dispose);
}

/* Layout leases do not conflict with opens. */
static int homi_layout_open_conflict(struct file *filp, int arg)
{
	return 0;
}

static const struct lease_manager_operations homi_layout_lm_ops = {
	.lm_break = homi_lm_break,
	.lm_change = homi_lm_change,
	.lm_open_conflict = homi_layout_open_conflict,
	.lm_breaker_timedout = homi_lm_breaker_timedout,
};

void homi_file_glue_init(void (*broken)(void *owner))
{
	homi_broken = broken;
}

/*
 * A layout lease, with the checks fcntl(F_SETLEASE) makes: the caller owns the
 * file or has CAP_LEASE, and the LSMs agree.
 */
int homi_lease_take(struct file *filp, void *owner)
{
	struct file_lease *fl = locks_alloc_lease();
	int err;

	if (!fl)
		return -ENOMEM;
	fl->fl_lmops = &homi_layout_lm_ops;
	fl->c.flc_flags = FL_LAYOUT;
	fl->c.flc_type = F_RDLCK;
	fl->c.flc_owner = owner;
	fl->c.flc_pid = current->tgid;
	fl->c.flc_file = filp;
	err = vfs_setlease(filp, F_RDLCK, &fl, NULL);
	/* On success the lease list owns it and fl is NULL. */
	if (fl)
		locks_free_lease(fl);
	return err;
}

int homi_lease_drop(struct file *filp, void *owner)
{
	return kernel_setlease(filp, F_UNLCK, NULL, &owner);
}

/*
 * Denies writes to the file's inode, as exec does: every open for writing and
 * every truncate (O_RDONLY|O_TRUNC included) fails with ETXTBSY until
 * homi_write_allow(). Fails if the file is open for writing now.
 */
int homi_write_deny(struct file *filp)
{
	return deny_write_access(filp) ? -EAGAIN : 0;
}

void homi_write_allow(struct file *filp)
{
	allow_write_access(filp);
}

/*
 * Whether ext4 journals this inode's data (data=journal, whether asked for at
 * mount or by the superblock's default mount options, or chattr +j): the data
 * may then sit in the journal, not yet where the extents point.
 */
static bool homi_ext4_journals_data(struct inode *inode)
{
	struct ext4_sb_info *sbi = EXT4_SB(inode->i_sb);

	return sbi->s_journal &&
	       (test_opt(inode->i_sb, DATA_FLAGS) == EXT4_MOUNT_JOURNAL_DATA ||
		ext4_test_inode_flag(inode, EXT4_INODE_JOURNAL_DATA));
}

int homi_file_describe(struct nvme_ctrl *ctrl, struct file *filp,
		       struct homi_file_info *info)
{
	struct inode *inode = file_inode(filp);
	struct super_block *sb = inode->i_sb;
	const struct exportfs_block_ops *bops = NULL;
	struct file_kattr fa = {};
	struct block_device *bdev = sb->s_bdev;
	struct nvme_ns *ns;
	int srcu_idx, err;

	memset(info, 0, sizeof(*info));
	strscpy(info->fs, sb->s_type->name, sizeof(info->fs));
	if (bdev)
		snprintf(info->bdev, sizeof(info->bdev), "%pg", bdev);
	else
		strscpy(info->bdev, "no block device", sizeof(info->bdev));
	if (!S_ISREG(inode->i_mode)) {
		info->why = "not a regular file";
		return -EINVAL;
	}
	if (!bdev) {
		info->why = "its file system is on no block device";
		return -EXDEV;
	}

	srcu_idx = srcu_read_lock(&ctrl->srcu);
	list_for_each_entry_srcu(ns, &ctrl->namespaces, list,
				 srcu_read_lock_held(&ctrl->srcu)) {
		if (ns->disk == bdev->bd_disk
#ifdef CONFIG_NVME_MULTIPATH
		    || ns->head->disk == bdev->bd_disk
#endif
		    ) {
			info->nsid = ns->head->ns_id;
			info->lba_shift = ns->head->lba_shift;
			break;
		}
	}
	srcu_read_unlock(&ctrl->srcu, srcu_idx);
	if (!info->nsid) {
		info->why = "not a namespace of this controller (files on other devices, device-mapper, md and loop stacks are refused)";
		return -EXDEV;
	}
	info->start = (u64)bdev->bd_start_sect << SECTOR_SHIFT;
	info->block_size = sb->s_blocksize;
	info->size = i_size_read(inode);

	if (IS_ENCRYPTED(inode)) {
		info->why = "encrypted: the device holds ciphertext";
		return -EINVAL;
	}
	if (IS_VERITY(inode)) {
		info->why = "verity-protected: reads must be verified by the file system";
		return -EINVAL;
	}
	if (IS_DAX(inode)) {
		info->why = "DAX: the file is not on the namespace's blocks";
		return -EINVAL;
	}
	err = vfs_fileattr_get(filp->f_path.dentry, &fa);
	if (err && err != -ENOIOCTLCMD)
		return err;
	if (fa.flags & FS_INLINE_DATA_FL) {
		info->why = "inline data: stored in the inode, not in blocks of its own";
		return -EINVAL;
	}
	if (fa.flags & FS_COMPR_FL) {
		info->why = "compressed: the device holds compressed data";
		return -EINVAL;
	}
	if (fa.flags & FS_JOURNAL_DATA_FL) {
		info->why = "data journalling (chattr +j): data may be in the journal only";
		return -EOPNOTSUPP;
	}

	if (sb->s_export_op)
		bops = sb->s_export_op->block_ops;
	if (bops && bops->map_blocks) {
		info->kind = HOMI_FS_LAYOUT;
	} else if (sb->s_magic == EXT4_SUPER_MAGIC &&
		   !strcmp(sb->s_type->name, "ext4") &&
		   inode->i_mapping->a_ops->bmap) {
		if (homi_ext4_journals_data(inode)) {
			info->why = "ext4 journals its data (data=journal): data may be in the journal only";
			return -EOPNOTSUPP;
		}
		info->kind = HOMI_FS_DENY_WRITE;
	} else {
		info->why = "homi cannot keep a map of this file system true (it offers neither layout leases nor the ext4 guarantees)";
		return -EOPNOTSUPP;
	}
	if (info->block_size % (1U << info->lba_shift) ||
	    info->start % (1U << info->lba_shift)) {
		info->why = "its blocks or partition are not aligned to the namespace's LBAs";
		return -EINVAL;
	}
	return 0;
}

int homi_file_map_blocks(struct file *filp, u64 offset, u64 len,
			 struct homi_file_extent *ext)
{
	struct inode *inode = file_inode(filp);
	const struct exportfs_block_ops *bops = inode->i_sb->s_export_op->block_ops;
	struct iomap iomap = {};
	u32 device_generation = 0;
	int err;

	err = bops->map_blocks(inode, offset, len, &iomap, false,
			       &device_generation);
	if (err)
		return err;
	ext->offset = iomap.offset;
	ext->length = iomap.length;
	ext->addr = iomap.addr;
	ext->shared = !!(iomap.flags & IOMAP_F_SHARED);
	switch (iomap.type) {
	case IOMAP_HOLE:
		ext->kind = HOMI_FILE_HOLE;
		break;
	case IOMAP_MAPPED:
		ext->kind = HOMI_FILE_MAPPED;
		break;
	case IOMAP_UNWRITTEN:
		ext->kind = HOMI_FILE_UNWRITTEN;
		break;
	case IOMAP_DELALLOC:
		ext->kind = HOMI_FILE_DELALLOC;
		break;
	default:
		ext->kind = HOMI_FILE_INLINE;
		break;
	}
	return 0;
}

int homi_file_bmap(struct file *filp, u64 block, u64 *phys)
{
	sector_t b = block;
	int err = bmap(file_inode(filp), &b);

	*phys = b;
	return err;
}

/*
 * The first byte of data at or after @pos, as SEEK_DATA finds it (the file's
 * size if none): bmap answers 0 for holes and on errors alike.
 */
s64 homi_file_next_data(struct file *filp, u64 pos)
{
	loff_t at = vfs_llseek(filp, pos, SEEK_DATA);

	return at == -ENXIO ? i_size_read(file_inode(filp)) : at;
}

int homi_file_flush(struct file *filp, u64 start, u64 end)
{
	return filemap_write_and_wait_range(filp->f_mapping, start, end - 1);
}

int homi_file_invalidate(struct file *filp, u64 start, u64 end)
{
	struct address_space *mapping = filp->f_mapping;
	int err;

	/* Keeps page faults from bringing pages back while they go. */
	filemap_invalidate_lock(mapping);
	err = invalidate_inode_pages2_range(mapping, start >> PAGE_SHIFT,
					    (end - 1) >> PAGE_SHIFT);
	filemap_invalidate_unlock(mapping);
	return err;
}
