// SPDX-License-Identifier: GPL-2.0
/*
 * homi C glue: see homi_glue.h for why each function is here. Everything else
 * is Rust (homi_main.rs and its modules).
 */
#include <linux/dma-mapping.h>
#include <linux/iommu.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/nvme.h>
#include <linux/pci.h>
#include <linux/ratelimit.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/security.h>
#include <linux/slab.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "nvme.h"
#include "homi_glue.h"

MODULE_IMPORT_NS("NVME_TARGET_PASSTHRU");
/* dma_buf_dynamic_attach() and the rest of the importer API (REGISTER_DMABUF). */
MODULE_IMPORT_NS("DMA_BUF");
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

/* Being deleted or dead: the driver is letting go of it. */
bool homi_ctrl_deleting(struct nvme_ctrl *ctrl)
{
	enum nvme_ctrl_state state = nvme_ctrl_state(ctrl);

	return state == NVME_CTRL_DELETING || state == NVME_CTRL_DELETING_NOIO ||
	       state == NVME_CTRL_DEAD;
}

static bool homi_overlaps(u64 a, u64 alen, u64 b, u64 blen)
{
	return a < b + blen && b < a + alen;
}

/*
 * Whether [@page, @page + @len) of BAR0 holds only doorbells: nothing below
 * the doorbell array (the controller registers) and no part of an MSI-X table
 * or pending-bit array that lives in BAR0.
 */
bool homi_ctrl_bar0_doorbells_only(struct nvme_ctrl *ctrl, u64 page, u64 len)
{
	struct pci_dev *pdev = to_pci_dev(ctrl->dev);
	u32 table, pba;
	u16 flags;
	u64 entries;

	if (page < NVME_REG_DBS)
		return false;
	if (!pdev->msix_cap)
		return true;
	pci_read_config_word(pdev, pdev->msix_cap + PCI_MSIX_FLAGS, &flags);
	pci_read_config_dword(pdev, pdev->msix_cap + PCI_MSIX_TABLE, &table);
	pci_read_config_dword(pdev, pdev->msix_cap + PCI_MSIX_PBA, &pba);
	entries = (flags & PCI_MSIX_FLAGS_QSIZE) + 1;
	if ((table & PCI_MSIX_TABLE_BIR) == 0 &&
	    homi_overlaps(page, len, table & PCI_MSIX_TABLE_OFFSET,
			  entries * PCI_MSIX_ENTRY_SIZE))
		return false;
	if ((pba & PCI_MSIX_PBA_BIR) == 0 &&
	    homi_overlaps(page, len, pba & PCI_MSIX_PBA_OFFSET,
			  DIV_ROUND_UP(entries, 64) * 8))
		return false;
	return true;
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
 * in their pages and the pages' kernel addresses (nvme-pci's shadow buffer,
 * which it frees only when the device goes away). -ENODEV if shadow doorbells
 * are not in use.
 */
int homi_user_queue_shadow(struct nvme_ctrl *ctrl, u16 qid, u32 *sq_slot,
			   u32 *cq_slot, void **shadow_page,
			   void **eventidx_page)
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
	*shadow_page = PTR_ALIGN_DOWN(q.sq_shadow, PAGE_SIZE);
	*eventidx_page = PTR_ALIGN_DOWN(q.sq_eventidx, PAGE_SIZE);
	return 0;
#else
	return -EOPNOTSUPP;
#endif
}

/*
 * User mappings. homi installs no page at mmap time: every page comes from
 * @homi_fault, which looks the page up under the file's lock and inserts it
 * there, so a revocation (unmap_mapping_range under the same lock) can never
 * miss a mapping that is being set up. The VMA's private data is the file's
 * state, which outlives the VMA because the VMA holds the file.
 */
static vm_fault_t (*homi_fault)(void *ctx, struct vm_fault *vmf);

static vm_fault_t homi_vm_fault(struct vm_fault *vmf)
{
	return homi_fault(vmf->vma->vm_private_data, vmf);
}

static const struct vm_operations_struct homi_vm_ops = {
	.fault = homi_vm_fault,
};

void homi_vma_setup(struct vm_area_struct *vma, void *ctx, bool mmio)
{
	vm_flags_set(vma, VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP | VM_DONTCOPY |
			  (mmio ? VM_IO : 0));
	if (mmio)
		vma->vm_page_prot = pgprot_noncached(vma->vm_page_prot);
	vma->vm_ops = &homi_vm_ops;
	vma->vm_private_data = ctx;
}

unsigned long homi_vmf_pgoff(struct vm_fault *vmf)
{
	return vmf->pgoff;
}

/* The page frame behind kernel memory: the linear map or vmalloc space. */
unsigned long homi_kaddr_pfn(void *kaddr)
{
	if (is_vmalloc_addr(kaddr))
		return vmalloc_to_pfn(kaddr);
	return page_to_pfn(virt_to_page(kaddr));
}

vm_fault_t homi_vmf_insert_pfn(struct vm_fault *vmf, unsigned long pfn)
{
	return vmf_insert_pfn(vmf->vma, vmf->address & PAGE_MASK, pfn);
}

/* One zeroed kernel page (status pages, revoked-mapping sinks). */
void *homi_page_alloc(void)
{
	return (void *)get_zeroed_page(GFP_KERNEL);
}

void homi_page_free(void *addr)
{
	free_page((unsigned long)addr);
}

/*
 * A watcher on ctrl->state_wq. nvme_change_ctrl_state() wakes it with
 * ctrl->lock held, right after storing the new state, so the wake function
 * sees every transition, in order, and nothing else changes the state while
 * it runs. It keeps homi's own reset accounting, which nothing outside homi
 * can rewrite (unlike nr_reset, which sysfs can):
 *  - @resets counts entries into RESETTING;
 *  - @cleared is @resets as of the last entry into CONNECTING from
 *    nvme_reset_work, which disables the controller first, so every I/O queue
 *    created while @resets was below @cleared is gone.
 * The wake function then schedules @changed, which runs in process context.
 */
struct homi_watch {
	struct wait_queue_entry entry;
	struct work_struct work;
	struct nvme_ctrl *ctrl;
	void (*changed)(void *ctx);
	void *ctx;
	enum nvme_ctrl_state last;
	atomic64_t resets;
	atomic64_t cleared;
};

static int homi_watch_wake(struct wait_queue_entry *entry, unsigned int mode,
			   int flags, void *key)
{
	struct homi_watch *w = container_of(entry, struct homi_watch, entry);
	enum nvme_ctrl_state state = nvme_ctrl_state(w->ctrl);

	if (state != w->last) {
		w->last = state;
		if (state == NVME_CTRL_RESETTING)
			atomic64_inc(&w->resets);
		/*
		 * Only nvme_reset_work enters CONNECTING after disabling the
		 * controller; the subsystem reset path passes through it before
		 * the controller has even seen its reset.
		 */
		else if (state == NVME_CTRL_CONNECTING &&
			 current_work() == &w->ctrl->reset_work)
			atomic64_set(&w->cleared, atomic64_read(&w->resets));
	}
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
	unsigned long flags;

	if (!w)
		return NULL;
	w->ctrl = ctrl;
	w->changed = changed;
	w->ctx = ctx;
	INIT_WORK(&w->work, homi_watch_work);
	init_waitqueue_func_entry(&w->entry, homi_watch_wake);
	/* Under ctrl->lock, so no transition falls between reading and listening. */
	spin_lock_irqsave(&ctrl->lock, flags);
	w->last = nvme_ctrl_state(ctrl);
	add_wait_queue(&ctrl->state_wq, &w->entry);
	spin_unlock_irqrestore(&ctrl->lock, flags);
	return w;
}

/* After this returns, @changed is not running and will not run again. */
void homi_watch_stop(struct homi_watch *w)
{
	remove_wait_queue(&w->ctrl->state_wq, &w->entry);
	cancel_work_sync(&w->work);
	kfree(w);
}

u64 homi_watch_resets(struct homi_watch *w)
{
	return atomic64_read(&w->resets);
}

u64 homi_watch_cleared(struct homi_watch *w)
{
	return atomic64_read(&w->cleared);
}

/*
 * Pinned memory is charged to the caller's mm->pinned_vm against
 * RLIMIT_MEMLOCK, as RDMA does, so the limit follows the process however many
 * files it opens. The charge is undone against the same mm, which may run
 * after the process exited: the caller keeps it with mmgrab().
 */
struct mm_struct *homi_mm_get(void)
{
	struct mm_struct *mm = current->mm;

	if (mm)
		mmgrab(mm);
	return mm;
}

void homi_mm_put(struct mm_struct *mm)
{
	mmdrop(mm);
}

int homi_mm_charge(struct mm_struct *mm, unsigned long pages)
{
	unsigned long limit = rlimit(RLIMIT_MEMLOCK) >> PAGE_SHIFT;

	if (atomic64_add_return(pages, &mm->pinned_vm) > limit &&
	    !capable(CAP_IPC_LOCK)) {
		atomic64_sub(pages, &mm->pinned_vm);
		return -ENOMEM;
	}
	return 0;
}

void homi_mm_uncharge(struct mm_struct *mm, unsigned long pages)
{
	atomic64_sub(pages, &mm->pinned_vm);
}

/*
 * Whether CPU and controller need explicit syncs to see each other's writes at
 * @addr: a swiotlb bounce buffer, or a non-coherent device. homi's memory is
 * written by the controller behind the CPU's back, with no sync, so such
 * mappings cannot be used.
 */
bool homi_dma_needs_sync(struct device *dev, u64 addr)
{
	return dma_need_sync(dev, addr);
}

/* Kernel lockdown forbids raw PCI access, which a queue holder has. */
int homi_locked_down(void)
{
	return security_locked_down(LOCKDOWN_PCI_ACCESS);
}

/* Whether the device answers config reads (false once surprise-removed). */
bool homi_dev_present(struct device *dev)
{
	return pci_device_is_present(to_pci_dev(dev));
}

/* Whether the device's DMA is translated by an IOMMU (not identity, not none). */
bool homi_dev_iommu_translates(struct device *dev)
{
	struct iommu_domain *d = iommu_get_domain_for_dev(dev);

	return d && (d->type & __IOMMU_DOMAIN_PAGING);
}

/* Refused calls are logged through this: at most 10 lines per 5 seconds. */
bool homi_log_ratelimit(void)
{
	static DEFINE_RATELIMIT_STATE(rs, 5 * HZ, 10);

	return __ratelimit(&rs);
}

/*
 * PCI bus notifier: BUS_NOTIFY_UNBIND_DRIVER comes before the driver's remove
 * callback, while the admin queue still works and the BAR is still mapped;
 * BUS_NOTIFY_UNBOUND_DRIVER comes after it, when nvme-pci has disabled the
 * controller and it can no longer reach memory.
 */
static void (*homi_unbinding)(struct device *dev, bool done);

static int homi_bus_notify(struct notifier_block *nb, unsigned long action,
			   void *data)
{
	if (action == BUS_NOTIFY_UNBIND_DRIVER)
		homi_unbinding(data, false);
	else if (action == BUS_NOTIFY_UNBOUND_DRIVER)
		homi_unbinding(data, true);
	return NOTIFY_DONE;
}

static struct notifier_block homi_bus_nb = {
	.notifier_call = homi_bus_notify,
};

int homi_glue_init(void (*unbinding)(struct device *dev, bool done),
		   vm_fault_t (*fault)(void *ctx, struct vm_fault *vmf))
{
	homi_unbinding = unbinding;
	homi_fault = fault;
	return bus_register_notifier(&pci_bus_type, &homi_bus_nb);
}

void homi_glue_exit(void)
{
	bus_unregister_notifier(&pci_bus_type, &homi_bus_nb);
}
