/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The only C in homi: accessors for what Rust cannot reach because
 * struct nvme_ctrl is private to drivers/nvme/host (its layout depends on the
 * kernel config, so it is never mirrored in Rust), plus the few helpers
 * that are macros or inline (pgprot_noncached, virt_to_pfn, rlimit, mm
 * counters, dma_need_sync, ratelimits), need a C vm_operations table, or
 * watch the controller's state under its lock. The Rust side declares these by hand in glue.rs.
 */
#ifndef HOMI_GLUE_H
#define HOMI_GLUE_H

#include <linux/mm_types.h>
#include <linux/types.h>

struct device;
struct file;
struct mm_struct;
struct vm_fault;
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
bool homi_ctrl_deleting(struct nvme_ctrl *ctrl);
bool homi_ctrl_bar0_doorbells_only(struct nvme_ctrl *ctrl, u64 page, u64 len);
u64 homi_ctrl_bar_start(struct nvme_ctrl *ctrl);
u64 homi_ctrl_bar_len(struct nvme_ctrl *ctrl);
u64 homi_ctrl_cmb_size(struct nvme_ctrl *ctrl);
int homi_ctrl_admin(struct nvme_ctrl *ctrl, const void *sqe, void *buf,
		    unsigned int len, u32 *result);

bool homi_have_user_queues(void);
int homi_ctrl_user_queues(struct nvme_ctrl *ctrl, u32 *first, u32 *nr,
			  bool *shadow);
int homi_user_queue_shadow(struct nvme_ctrl *ctrl, u16 qid, u32 *sq_slot,
			   u32 *cq_slot, void **shadow_page,
			   void **eventidx_page);

void homi_vma_setup(struct vm_area_struct *vma, void *ctx, bool mmio);
unsigned long homi_vmf_pgoff(struct vm_fault *vmf);
unsigned long homi_kaddr_pfn(void *kaddr);
vm_fault_t homi_vmf_insert_pfn(struct vm_fault *vmf, unsigned long pfn);
void *homi_page_alloc(void);
void homi_page_free(void *addr);

struct homi_watch *homi_watch_start(struct nvme_ctrl *ctrl,
				    void (*changed)(void *ctx), void *ctx);
void homi_watch_stop(struct homi_watch *w);
u64 homi_watch_resets(struct homi_watch *w);
u64 homi_watch_cleared(struct homi_watch *w);

struct mm_struct *homi_mm_get(void);
void homi_mm_put(struct mm_struct *mm);
int homi_mm_charge(struct mm_struct *mm, unsigned long pages);
void homi_mm_uncharge(struct mm_struct *mm, unsigned long pages);
bool homi_dma_needs_sync(struct device *dev, u64 addr);
int homi_locked_down(void);
bool homi_dev_present(struct device *dev);
bool homi_dev_iommu_translates(struct device *dev);
bool homi_log_ratelimit(void);

int homi_glue_init(void (*unbinding)(struct device *dev, bool done),
		   vm_fault_t (*fault)(void *ctx, struct vm_fault *vmf));
void homi_glue_exit(void);

#endif /* HOMI_GLUE_H */
