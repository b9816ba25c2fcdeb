/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The only C in homi: accessors for what Rust cannot reach because
 * struct nvme_ctrl is private to drivers/nvme/host (its layout depends on the
 * kernel config, so it is never mirrored in Rust), plus the few mm helpers
 * that are macros (pgprot_noncached, virt_to_page) or need a C vm_operations
 * table. The Rust side declares these by hand in glue.rs.
 */
#ifndef HOMI_GLUE_H
#define HOMI_GLUE_H

#include <linux/types.h>

struct device;
struct file;
struct nvme_ctrl;
struct vm_area_struct;
struct homi_watch;

struct nvme_ctrl *homi_ctrl_get(struct file *nvme_file);
void homi_ctrl_put(struct nvme_ctrl *ctrl);
struct device *homi_ctrl_dma_dev(struct nvme_ctrl *ctrl);
int homi_ctrl_instance(struct nvme_ctrl *ctrl);
u32 homi_ctrl_io_queues(struct nvme_ctrl *ctrl);
u64 homi_ctrl_cap(struct nvme_ctrl *ctrl);
u16 homi_ctrl_oacs(struct nvme_ctrl *ctrl);
u32 homi_ctrl_max_hw_sectors(struct nvme_ctrl *ctrl);
bool homi_ctrl_live(struct nvme_ctrl *ctrl);
u64 homi_ctrl_generation(struct nvme_ctrl *ctrl);
u64 homi_ctrl_bar_start(struct nvme_ctrl *ctrl);
u64 homi_ctrl_bar_len(struct nvme_ctrl *ctrl);
u64 homi_ctrl_cmb_size(struct nvme_ctrl *ctrl);
int homi_ctrl_admin(struct nvme_ctrl *ctrl, const void *sqe, void *buf,
		    unsigned int len, u32 *result);

bool homi_have_user_queues(void);
int homi_ctrl_user_queues(struct nvme_ctrl *ctrl, u32 *first, u32 *nr,
			  bool *shadow);
int homi_user_queue_shadow(struct nvme_ctrl *ctrl, u16 qid, u32 *sq_slot,
			   u32 *cq_slot);
int homi_mmap_shadow(struct vm_area_struct *vma, struct nvme_ctrl *ctrl,
		     u16 qid, bool eventidx);
int homi_mmap_mmio(struct vm_area_struct *vma, u64 phys);
void homi_vma_revocable(struct vm_area_struct *vma);
void *homi_page_alloc(void);
void homi_page_free(void *addr);
int homi_mmap_page(struct vm_area_struct *vma, void *addr);

struct homi_watch *homi_watch_start(struct nvme_ctrl *ctrl,
				    void (*changed)(void *ctx), void *ctx);
void homi_watch_stop(struct homi_watch *w);

int homi_glue_init(void (*unbinding)(struct device *dev));
void homi_glue_exit(void);

#endif /* HOMI_GLUE_H */
