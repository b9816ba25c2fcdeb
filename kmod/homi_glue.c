// SPDX-License-Identifier: GPL-2.0
/*
 * homi C glue: see homi_glue.h for why each function is here. Everything else
 * is Rust (homi_main.rs and its modules).
 */
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/nvme.h>
#include <linux/pci.h>
#include <linux/slab.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "nvme.h"
#include "homi_glue.h"

MODULE_IMPORT_NS("NVME_TARGET_PASSTHRU");
#ifdef HOMI_USER_QUEUES
MODULE_IMPORT_NS("NVME_PCI_USER_QUEUES");
#endif

/*
 * Returns the controller behind an open /dev/nvmeX with a reference on its
 * char device, or NULL if the file is not an nvme-pci controller. The same
 * lookup nvmet's passthru uses.
 */
struct nvme_ctrl *homi_ctrl_get(struct file *nvme_file)
{
	struct nvme_ctrl *ctrl = nvme_ctrl_from_file(nvme_file);

	if (!ctrl || !ctrl->dev || !dev_is_pci(ctrl->dev))
		return NULL;
	get_device(ctrl->device);
	return ctrl;
}

void homi_ctrl_put(struct nvme_ctrl *ctrl)
{
	put_device(ctrl->device);
}

/* The PCI device: rings and buffers are DMA-mapped against it. */
struct device *homi_ctrl_dma_dev(struct nvme_ctrl *ctrl)
{
	return ctrl->dev;
}

int homi_ctrl_instance(struct nvme_ctrl *ctrl)
{
	return ctrl->instance;
}

/* I/O queues the driver created (queue_count counts the admin queue too). */
u32 homi_ctrl_io_queues(struct nvme_ctrl *ctrl)
{
	return ctrl->queue_count ? ctrl->queue_count - 1 : 0;
}

u64 homi_ctrl_cap(struct nvme_ctrl *ctrl)
{
	return ctrl->cap;
}

u16 homi_ctrl_oacs(struct nvme_ctrl *ctrl)
{
	return ctrl->oacs;
}

u32 homi_ctrl_max_hw_sectors(struct nvme_ctrl *ctrl)
{
	return ctrl->max_hw_sectors;
}

bool homi_ctrl_live(struct nvme_ctrl *ctrl)
{
	return nvme_ctrl_state(ctrl) == NVME_CTRL_LIVE;
}

/* Bumped by the core on every transition into RESETTING. */
u64 homi_ctrl_generation(struct nvme_ctrl *ctrl)
{
	return atomic_long_read(&ctrl->nr_reset);
}

u64 homi_ctrl_bar_start(struct nvme_ctrl *ctrl)
{
	return pci_resource_start(to_pci_dev(ctrl->dev), 0);
}

u64 homi_ctrl_bar_len(struct nvme_ctrl *ctrl)
{
	return pci_resource_len(to_pci_dev(ctrl->dev), 0);
}

/*
 * The Controller Memory Buffer's size in bytes (0 if none), from CMBSZ. nvme-pci
 * keeps its BAR mapping private, so map the register page briefly; reading
 * CMBSZ has no side effects.
 */
u64 homi_ctrl_cmb_size(struct nvme_ctrl *ctrl)
{
	void __iomem *regs;
	u32 cmbsz;

	if (homi_ctrl_bar_len(ctrl) < NVME_REG_CMBSZ + 4)
		return 0;
	regs = ioremap(homi_ctrl_bar_start(ctrl), NVME_REG_CMBSZ + 4);
	if (!regs)
		return 0;
	cmbsz = readl(regs + NVME_REG_CMBSZ);
	iounmap(regs);
	/* SZ counts units of 4 KiB << (4 * SZU). */
	return (u64)((cmbsz >> NVME_CMBSZ_SZ_SHIFT) & NVME_CMBSZ_SZ_MASK)
	       << (12 + 4 * ((cmbsz >> NVME_CMBSZ_SZU_SHIFT) & NVME_CMBSZ_SZU_MASK));
}

/*
 * Submits one admin command through the driver's own admin queue and waits.
 * Returns 0, a positive NVMe status, or a negative errno.
 */
int homi_ctrl_admin(struct nvme_ctrl *ctrl, const void *sqe, void *buf,
		    unsigned int len, u32 *result)
{
	struct nvme_command cmd;
	union nvme_result res = {};
	int ret;

	memcpy(&cmd, sqe, sizeof(cmd));
	ret = __nvme_submit_sync_cmd(ctrl->admin_q, &cmd, &res, buf, len,
				     NVME_QID_ANY, 0);
	if (result)
		*result = le32_to_cpu(res.u32);
	return ret;
}

/*
 * nvme-pci's user queues (qemu/patches/): Kbuild defines HOMI_USER_QUEUES when
 * the kernel's nvme.h declares them. Without them every call below fails with
 * -EOPNOTSUPP, and homi keeps to spare qids and MMIO doorbells.
 */
bool homi_have_user_queues(void)
{
	return IS_ENABLED(HOMI_USER_QUEUES);
}

/* The reserved qid range and whether shadow doorbells are in use. */
int homi_ctrl_user_queues(struct nvme_ctrl *ctrl, u32 *first, u32 *nr,
			  bool *shadow)
{
#ifdef HOMI_USER_QUEUES
	struct nvme_pci_user_queues uq;
	int ret = nvme_pci_get_user_queues(ctrl, &uq);

	if (ret)
		return ret;
	*first = uq.qid;
	*nr = uq.nr_queues;
	*shadow = uq.shadow;
	return 0;
#else
	return -EOPNOTSUPP;
#endif
}

/*
 * Zeroes a reserved queue's shadow doorbell and event index slots, which still
 * hold the values of the queue's previous life, and returns their byte offsets
 * in their pages. -ENODEV if shadow doorbells are not in use.
 */
int homi_user_queue_shadow(struct nvme_ctrl *ctrl, u16 qid, u32 *sq_slot,
			   u32 *cq_slot)
{
#ifdef HOMI_USER_QUEUES
	struct nvme_pci_user_queue q;
	int ret = nvme_pci_get_user_queue(ctrl, qid, &q);

	if (ret)
		return ret;
	if (!q.sq_shadow)
		return -ENODEV;
	WRITE_ONCE(*q.sq_shadow, 0);
	WRITE_ONCE(*q.cq_shadow, 0);
	WRITE_ONCE(*q.sq_eventidx, 0);
	WRITE_ONCE(*q.cq_eventidx, 0);
	/* Ordered before the Create I/O SQ/CQ commands that follow. */
	wmb();
	*sq_slot = offset_in_page(q.sq_shadow);
	*cq_slot = offset_in_page(q.cq_shadow);
	return 0;
#else
	return -EOPNOTSUPP;
#endif
}

/* Maps a reserved queue's shadow doorbell page, or its event index page. */
int homi_mmap_shadow(struct vm_area_struct *vma, struct nvme_ctrl *ctrl,
		     u16 qid, bool eventidx)
{
#ifdef HOMI_USER_QUEUES
	return nvme_pci_mmap_user_shadow(ctrl, qid, eventidx, vma);
#else
	return -EOPNOTSUPP;
#endif
}

/* Maps one page of MMIO (the doorbells) uncached into a user VMA. */
int homi_mmap_mmio(struct vm_area_struct *vma, u64 phys)
{
	vma->vm_page_prot = pgprot_noncached(vma->vm_page_prot);
	return io_remap_pfn_range(vma, vma->vm_start, phys >> PAGE_SHIFT,
				  vma->vm_end - vma->vm_start,
				  vma->vm_page_prot);
}

/*
 * Revoked mappings. Every homi mapping is fully populated at mmap time, so a
 * fault means homi zapped it (reset, destroy, unbind). The faulting page gets
 * the dummy page instead of a SIGBUS: writes go nowhere, and user space learns
 * what happened from the status page.
 */
static struct page *homi_dummy_page;

static vm_fault_t homi_revoked_fault(struct vm_fault *vmf)
{
	struct vm_area_struct *vma = vmf->vma;

	if (vma->vm_flags & VM_MIXEDMAP)
		return vmf_insert_page(vma, vmf->address, homi_dummy_page);
	return vmf_insert_pfn(vma, vmf->address, page_to_pfn(homi_dummy_page));
}

static const struct vm_operations_struct homi_revocable_ops = {
	.fault = homi_revoked_fault,
};

void homi_vma_revocable(struct vm_area_struct *vma)
{
	vma->vm_ops = &homi_revocable_ops;
}

/* One zeroed kernel page: the status page, which involves no device. */
void *homi_page_alloc(void)
{
	return (void *)get_zeroed_page(GFP_KERNEL);
}

void homi_page_free(void *addr)
{
	free_page((unsigned long)addr);
}

int homi_mmap_page(struct vm_area_struct *vma, void *addr)
{
	return vm_insert_page(vma, vma->vm_start, virt_to_page(addr));
}

/*
 * A watcher on ctrl->state_wq, which the core wakes on every controller state
 * change. The wake function runs under the controller's spinlock, so it only
 * schedules work; @changed runs from that work, in process context.
 */
struct homi_watch {
	struct wait_queue_entry entry;
	struct work_struct work;
	struct nvme_ctrl *ctrl;
	void (*changed)(void *ctx);
	void *ctx;
};

static int homi_watch_wake(struct wait_queue_entry *entry, unsigned int mode,
			   int flags, void *key)
{
	struct homi_watch *w = container_of(entry, struct homi_watch, entry);

	schedule_work(&w->work);
	return 0;
}

static void homi_watch_work(struct work_struct *work)
{
	struct homi_watch *w = container_of(work, struct homi_watch, work);

	w->changed(w->ctx);
}

struct homi_watch *homi_watch_start(struct nvme_ctrl *ctrl,
				    void (*changed)(void *ctx), void *ctx)
{
	struct homi_watch *w = kzalloc(sizeof(*w), GFP_KERNEL);

	if (!w)
		return NULL;
	w->ctrl = ctrl;
	w->changed = changed;
	w->ctx = ctx;
	INIT_WORK(&w->work, homi_watch_work);
	init_waitqueue_func_entry(&w->entry, homi_watch_wake);
	add_wait_queue(&ctrl->state_wq, &w->entry);
	return w;
}

/* After this returns, @changed is not running and will not run again. */
void homi_watch_stop(struct homi_watch *w)
{
	remove_wait_queue(&w->ctrl->state_wq, &w->entry);
	cancel_work_sync(&w->work);
	kfree(w);
}

/*
 * PCI bus notifier: BUS_NOTIFY_UNBIND_DRIVER comes before the driver's remove
 * callback, while the admin queue still works and the BAR is still mapped.
 */
static void (*homi_unbinding)(struct device *dev);

static int homi_bus_notify(struct notifier_block *nb, unsigned long action,
			   void *data)
{
	if (action == BUS_NOTIFY_UNBIND_DRIVER && homi_unbinding)
		homi_unbinding(data);
	return NOTIFY_DONE;
}

static struct notifier_block homi_bus_nb = {
	.notifier_call = homi_bus_notify,
};

int homi_glue_init(void (*unbinding)(struct device *dev))
{
	int ret;

	homi_dummy_page = alloc_page(GFP_KERNEL | __GFP_ZERO);
	if (!homi_dummy_page)
		return -ENOMEM;
	homi_unbinding = unbinding;
	ret = bus_register_notifier(&pci_bus_type, &homi_bus_nb);
	if (ret) {
		__free_page(homi_dummy_page);
		homi_dummy_page = NULL;
	}
	return ret;
}

void homi_glue_exit(void)
{
	bus_unregister_notifier(&pci_bus_type, &homi_bus_nb);
	homi_unbinding = NULL;
	__free_page(homi_dummy_page);
	homi_dummy_page = NULL;
}
