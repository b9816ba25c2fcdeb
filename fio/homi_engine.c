// SPDX-License-Identifier: GPL-2.0
/*
 * fio external ioengine "homi": each fio job (thread or process) drives one homi
 * queue pair of the namespace's controller, beside the kernel's nvme driver.
 *
 *   fio --ioengine=external:libfio_homi.so --filename=/dev/nvme0n1 ...
 *   fio --ioengine=external:libfio_homi.so --homi_nvme=/dev/nvme0 --homi_nsid=1 \
 *       --filename=any-label ...
 *
 * Built on homi's C library (capi/include/homi.h) against the headers of the fio
 * that will load it (qemu/fetch-fio.sh fetches and configures Debian's source
 * package of the installed version). See fio/README.md.
 *
 * The queue pair is created with iodepth + 1 entries (it keeps at most depth - 1
 * commands in flight). ->queue writes the command into the submission queue and
 * ->commit publishes the batch with one doorbell update; ->getevents polls the
 * completion queue (homi queues have no interrupt). fio's own I/O buffers are
 * registered with homi once (->post_init), whatever iomem= chose: that keeps
 * fio's buffer management, alignment and verify exactly as for any other engine,
 * and memory registered by homi stays pinned and mapped for the controller until
 * the queue pair that could reach it is gone (see kmod/README.md).
 *
 * Struct layouts. The engine reads these fio fields, and nothing else:
 *   thread_data: o (iodepth, td_ddir, max_bs, nr_files, read_iolog_file,
 *     io_submit_mode, disable_clat/slat/bw), last_issue, eo, io_ops, io_ops_data, files, files_index,
 *     orig_buffer, orig_buffer_size, error, first_error, verror, parent (the last
 *     four through td_vmsg);
 *   io_u: ddir, offset, xfer_buf, xfer_buflen, error, resid, issue_time, file,
 *     index;
 *   fio_file: file_name, filetype, fd, real_file_size, flags, engine_pos.
 * Every #ifdef CONFIG_* in fio's headers was read (3.33): io_u's only
 * configuration-dependent member is the last union (libaio iocb, POSIX aiocb,
 * RDMA mr: its size is set by the POSIX aiocb, present in every Linux build), so
 * no field before it moves; fio_file has none; thread_data has only CONFIG_CUDA,
 * at its end, which Debian's build (debian/rules: --disable-native --prefix=/usr
 * --enable-gfio --enable-libnbd) does not set; thread_options has none. What
 * configure finds besides (libaio, numa, rbd, ...) adds engines, not fields.
 * `cargo xtask fio` checks this against Debian's /usr/bin/fio itself:
 * sizeof(struct thread_data) and the offset of every thread_data field above (and
 * last_issue) must appear, exactly, in the machine code of an exported fio
 * function whose source uses it (fio/layout_probe.c names them; xtask/src/fio.rs),
 * and ->init checks at run time that fio handed this engine's own ops back through
 * td->io_ops. thread_options, io_u and fio_file offsets are not checked that way.
 */
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fio.h"
#include "optgroup.h"

#include "homi.h"

#define HOMI_PAGE 4096UL
/* A command not completed after this long means the controller lost it. */
#define HOMI_STALL_MS 30000

struct homi_options {
	void *pad; /* fio takes an ->off1 of 0 for "no offset" */
	char *nvme;
	unsigned int nsid;
};

/* Per job: one controller handle and one queue pair. */
struct homi_data {
	homi_ctrl *ctrl;
	homi_qpair *qp;
	char ctrl_path[256];
	homi_buf *io_buf; /* fio's io_u buffers, registered */
	uintptr_t io_base;
	size_t io_len;
	homi_buf *dsm; /* one DSM range per io_u, by io_u->index */
	uint32_t max_transfer;
	struct io_u **pending; /* queued since the last commit */
	unsigned int nr_pending;
	unsigned int inflight; /* rung, not yet reaped */
	struct io_u **events; /* reaped by the last getevents */
	struct homi_cpl *cpls;
	unsigned int depth;
	unsigned int errors_logged;
	int failed; /* the queue pair is gone */
};

/* fio_file.engine_pos: nsid in the low 32 bits, LBA size in the high 32. */
static inline uint32_t file_nsid(const struct fio_file *f)
{
	return (uint32_t)f->engine_pos;
}

static inline uint32_t file_lba_size(const struct fio_file *f)
{
	return (uint32_t)(f->engine_pos >> 32);
}

static const char *homi_why(int rc)
{
	const char *detail = homi_last_error();

	return detail && *detail ? detail : homi_strerror(rc);
}

static void homi_fail(struct thread_data *td, int err, const char *func,
		      const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Logs the reason in full and records it as the job's error. */
static void homi_fail(struct thread_data *td, int err, const char *func,
		      const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_err("fio: homi: %s\n", msg);
	td_vmsg(td, err, msg, func);
}

/*
 * The controller and namespace of file @f: the engine options when given, else the
 * namespace block device @f names.
 */
static int homi_target(struct thread_data *td, struct fio_file *f, char *ctrl,
		       size_t len, uint32_t *nsid)
{
	struct homi_options *o = td->eo;
	struct stat st;
	int rc;

	if (o && o->nvme && *o->nvme) {
		if ((size_t)snprintf(ctrl, len, "%s", o->nvme) >= len) {
			homi_fail(td, ENAMETOOLONG, "homi_nvme", "homi_nvme=%s is too long", o->nvme);
			return 1;
		}
		*nsid = o->nsid ? o->nsid : 1;
		/*
		 * A block device as the file name must then be a namespace of that
		 * controller: fio's cache invalidation acts on it.
		 */
		if (!stat(f->file_name, &st) && S_ISBLK(st.st_mode)) {
			char own[256];
			uint32_t own_nsid;
			struct stat a, b;

			rc = homi_ns_resolve(f->file_name, own, sizeof(own), &own_nsid);
			if (rc || stat(own, &a) || stat(ctrl, &b) || a.st_rdev != b.st_rdev) {
				homi_fail(td, EINVAL, "homi_nvme", "%s is not a namespace of homi_nvme=%s%s%s",
					  f->file_name, ctrl, rc ? "" : " but of ", rc ? "" : own);
				return 1;
			}
			if (o->nsid && o->nsid != own_nsid) {
				homi_fail(td, EINVAL, "homi_nsid", "%s is namespace %u, but homi_nsid=%u",
					  f->file_name, own_nsid, o->nsid);
				return 1;
			}
			*nsid = own_nsid;
		}
		return 0;
	}
	if (stat(f->file_name, &st) || !S_ISBLK(st.st_mode)) {
		homi_fail(td, EINVAL, "homi_target",
			  "%s is not an NVMe namespace block device; name one (filename=/dev/nvme0n1) or set homi_nvme=/dev/nvmeX and homi_nsid=N",
			  f->file_name);
		return 1;
	}
	rc = homi_ns_resolve(f->file_name, ctrl, len, nsid);
	if (rc) {
		homi_fail(td, EINVAL, "homi_ns_resolve", "%s: cannot find its NVMe controller and namespace: %s",
			  f->file_name, homi_why(rc));
		return 1;
	}
	if (o && o->nsid && o->nsid != *nsid) {
		homi_fail(td, EINVAL, "homi_nsid", "%s is namespace %u, but homi_nsid=%u", f->file_name,
			  *nsid, o->nsid);
		return 1;
	}
	return 0;
}

/* Looks up namespace @nsid of @ctrl: its size in bytes and its LBA size. */
static int homi_namespace(struct thread_data *td, homi_ctrl *ctrl, const char *ctrl_path,
			  uint32_t nsid, uint64_t *bytes, uint32_t *lba_size)
{
	struct homi_ns_info ns;
	int rc;

	memset(&ns, 0, sizeof(ns));
	rc = homi_ns_info(ctrl, nsid, &ns);
	if (rc) {
		homi_fail(td, ENXIO, "homi_ns_info", "%s has no usable namespace %u: %s", ctrl_path, nsid,
			  homi_why(rc));
		return 1;
	}
	if (ns.meta_size) {
		homi_fail(td, EINVAL, "homi_ns_info",
			  "%s namespace %u has %u bytes of metadata per block; the homi engine handles namespaces without metadata only",
			  ctrl_path, nsid, (unsigned int)ns.meta_size);
		return 1;
	}
	if (!ns.lba_size || !ns.nblocks) {
		homi_fail(td, ENXIO, "homi_ns_info", "%s namespace %u is empty or inactive", ctrl_path, nsid);
		return 1;
	}
	*bytes = (uint64_t)ns.nblocks * ns.lba_size;
	*lba_size = (uint32_t)ns.lba_size;
	return 0;
}

/*
 * The namespace's size, so that fio's size defaults work. fio calls this before
 * ->init, in the parent process too (create_serialize), so it opens the controller
 * itself when the job has none yet.
 */
static int fio_homi_get_file_size(struct thread_data *td, struct fio_file *f)
{
	struct homi_data *hd = td->io_ops_data;
	homi_ctrl *ctrl = hd ? hd->ctrl : NULL;
	char path[256];
	uint32_t nsid, lba_size;
	uint64_t bytes;
	int rc, ret;

	if (fio_file_size_known(f))
		return 0;
	if (homi_target(td, f, path, sizeof(path), &nsid))
		return 1;
	if (!ctrl || strcmp(path, hd->ctrl_path)) {
		rc = homi_ctrl_open(path, &ctrl);
		if (rc) {
			homi_fail(td, ENODEV, "homi_ctrl_open", "cannot open %s through homi: %s", path,
				  homi_why(rc));
			return 1;
		}
	}
	ret = homi_namespace(td, ctrl, path, nsid, &bytes, &lba_size);
	if (!hd || ctrl != hd->ctrl)
		homi_ctrl_close(ctrl);
	if (ret)
		return 1;
	/* A label rather than the namespace's block device: nothing to extend or lay out. */
	if (f->filetype != FIO_TYPE_BLOCK)
		f->filetype = FIO_TYPE_CHAR;
	f->real_file_size = bytes;
	fio_file_set_size_known(f);
	return 0;
}

static void fio_homi_cleanup(struct thread_data *td)
{
	struct homi_data *hd = td->io_ops_data;

	if (!hd)
		return;
	/* The queue pair goes first: nothing it can reach is released before it. */
	if (hd->qp)
		homi_qpair_destroy(hd->qp);
	if (hd->io_buf)
		homi_buf_free(hd->io_buf);
	if (hd->dsm)
		homi_buf_free(hd->dsm);
	if (hd->ctrl)
		homi_ctrl_close(hd->ctrl);
	free(hd->pending);
	free(hd->events);
	free(hd->cpls);
	free(hd);
	td->io_ops_data = NULL;
}

extern struct ioengine_ops ioengine;

static int fio_homi_init(struct thread_data *td)
{
	struct homi_data *hd;
	struct fio_file *f;
	unsigned long long max_bs;
	uint32_t nsid;
	unsigned int i;
	int rc;

	/* fio passes back the ops it found in this library: a td laid out otherwise fails here. */
	if (td->io_ops != &ioengine) {
		log_err("fio: homi: this fio's struct thread_data does not match the headers libfio_homi.so was built with; rebuild it (cargo xtask fio)\n");
		return 1;
	}
	/*
	 * Offload workers get a td of their own (iodepth 1, no fio I/O buffers of the
	 * job's): the queue pair and its registered memory would not be theirs.
	 */
	if (td->o.io_submit_mode == IO_MODE_OFFLOAD) {
		homi_fail(td, EINVAL, "init",
			  "io_submit_mode=offload is not supported; use the default io_submit_mode=inline");
		return 1;
	}
	if (!td->files_index || !td->files[0]) {
		homi_fail(td, EINVAL, "init", "no file: set filename= to a namespace block device, or homi_nvme=");
		return 1;
	}
	hd = calloc(1, sizeof(*hd));
	if (!hd) {
		td_verror(td, ENOMEM, "calloc");
		return 1;
	}
	td->io_ops_data = hd;
	hd->depth = td->o.iodepth;
	if (homi_target(td, td->files[0], hd->ctrl_path, sizeof(hd->ctrl_path), &nsid))
		goto err;
	/* One controller per job: every file must be one of its namespaces. */
	for_each_file(td, f, i) {
		char path[256];

		if (homi_target(td, f, path, sizeof(path), &nsid))
			goto err;
		if (strcmp(path, hd->ctrl_path)) {
			homi_fail(td, EINVAL, "init", "%s is on %s, %s on %s: one homi job drives one controller",
				  td->files[0]->file_name, hd->ctrl_path, f->file_name, path);
			goto err;
		}
	}
	rc = homi_ctrl_open(hd->ctrl_path, &hd->ctrl);
	if (rc) {
		homi_fail(td, ENODEV, "homi_ctrl_open", "cannot open %s through homi: %s", hd->ctrl_path,
			  homi_why(rc));
		goto err;
	}
	rc = homi_qpair_create(hd->ctrl, hd->depth + 1, &hd->qp);
	if (rc) {
		homi_fail(td, EBUSY, "homi_qpair_create", "%s: no queue pair of depth %u: %s", hd->ctrl_path,
			  hd->depth + 1, homi_why(rc));
		goto err;
	}
	hd->max_transfer = homi_qpair_max_transfer(hd->qp);
	/* Trims carry no data: only reads and writes are bounded by the transfer size. */
	max_bs = td->o.max_bs[DDIR_READ] > td->o.max_bs[DDIR_WRITE] ? td->o.max_bs[DDIR_READ]
								      : td->o.max_bs[DDIR_WRITE];
	if ((td_read(td) || td_write(td)) && max_bs > hd->max_transfer) {
		homi_fail(td, EINVAL, "init", "bs %llu is above the queue's largest transfer, %u bytes",
			  max_bs, hd->max_transfer);
		goto err;
	}
	hd->pending = calloc(hd->depth, sizeof(*hd->pending));
	hd->events = calloc(hd->depth, sizeof(*hd->events));
	hd->cpls = calloc(hd->depth, sizeof(*hd->cpls));
	if (!hd->pending || !hd->events || !hd->cpls) {
		td_verror(td, ENOMEM, "calloc");
		goto err;
	}
	if (td_trim(td)) {
		size_t len = ((size_t)hd->depth * sizeof(struct homi_dsm_range) + HOMI_PAGE - 1) & ~(HOMI_PAGE - 1);

		rc = homi_buf_alloc(hd->ctrl, len, &hd->dsm);
		if (rc) {
			homi_fail(td, ENOMEM, "homi_buf_alloc", "no DMA memory for trim ranges: %s",
				  homi_why(rc));
			goto err;
		}
	}
	return 0;
err:
	fio_homi_cleanup(td);
	return 1;
}

/* fio's io_u buffers exist now (init_io_u ran): register them all, once. */
static int fio_homi_post_init(struct thread_data *td)
{
	struct homi_data *hd = td->io_ops_data;
	uintptr_t start, end;
	int rc;

	if (!td->orig_buffer || !td->orig_buffer_size)
		return 0; /* no data transfer (e.g. trim only) */
	start = (uintptr_t)td->orig_buffer & ~(HOMI_PAGE - 1);
	end = ((uintptr_t)td->orig_buffer + td->orig_buffer_size + HOMI_PAGE - 1) & ~(HOMI_PAGE - 1);
	rc = homi_buf_register(hd->ctrl, (void *)start, end - start, &hd->io_buf);
	if (rc) {
		homi_fail(td, ENOMEM, "homi_buf_register", "cannot register fio's %zu bytes of I/O buffers: %s",
			  (size_t)(end - start), homi_why(rc));
		return 1;
	}
	hd->io_base = start;
	hd->io_len = end - start;
	return 0;
}

static int fio_homi_open_file(struct thread_data *td, struct fio_file *f)
{
	struct homi_data *hd = td->io_ops_data;
	uint32_t nsid, lba_size;
	uint64_t bytes;
	char path[256];

	if (homi_target(td, f, path, sizeof(path), &nsid))
		return 1;
	if (homi_namespace(td, hd->ctrl, path, nsid, &bytes, &lba_size))
		return 1;
	f->engine_pos = (uint64_t)lba_size << 32 | nsid;
	/*
	 * No I/O goes through this descriptor; fio's cache invalidation and fadvise
	 * hints act on the kernel's view of the block device through it.
	 */
	f->fd = -1;
	if (f->filetype == FIO_TYPE_BLOCK) {
		f->fd = open(f->file_name, O_RDONLY | O_CLOEXEC);
		if (f->fd < 0) {
			td_verror(td, errno, "open");
			return 1;
		}
	}
	return 0;
}

static int fio_homi_close_file(struct thread_data *td, struct fio_file *f)
{
	(void)td;
	if (f->fd >= 0)
		close(f->fd);
	f->fd = -1;
	f->engine_pos = 0;
	return 0;
}

static enum fio_q_status homi_done(struct io_u *io_u, int err)
{
	io_u->error = err;
	return FIO_Q_COMPLETED;
}

static enum fio_q_status fio_homi_queue(struct thread_data *td, struct io_u *io_u)
{
	struct homi_data *hd = td->io_ops_data;
	struct fio_file *f = io_u->file;
	uint32_t nsid = file_nsid(f), lba = file_lba_size(f);
	uint64_t token = (uint64_t)(uintptr_t)io_u;
	uint64_t slba = io_u->offset / lba;
	uint32_t nblocks = (uint32_t)(io_u->xfer_buflen / lba);
	uintptr_t at = (uintptr_t)io_u->xfer_buf;
	int rc;

	fio_ro_check(td, io_u);
	if (hd->failed)
		return homi_done(io_u, EIO); /* the queue pair is gone */
	if (!homi_qpair_free_slots(hd->qp))
		return FIO_Q_BUSY;
	if (ddir_rw(io_u->ddir) || io_u->ddir == DDIR_TRIM) {
		if (io_u->offset % lba || io_u->xfer_buflen % lba || !nblocks) {
			log_err("fio: homi: offset %llu length %llu is not a whole number of %u-byte blocks\n",
				io_u->offset, io_u->xfer_buflen, lba);
			return homi_done(io_u, EINVAL);
		}
	}
	switch (io_u->ddir) {
	case DDIR_READ:
	case DDIR_WRITE:
		if (at < hd->io_base || at + io_u->xfer_buflen > hd->io_base + hd->io_len)
			return homi_done(io_u, EFAULT); /* not in fio's registered buffers */
		if (io_u->ddir == DDIR_READ)
			rc = homi_submit_read(hd->qp, nsid, slba, nblocks, hd->io_buf, at - hd->io_base,
					      io_u->xfer_buflen, token);
		else
			rc = homi_submit_write(hd->qp, nsid, slba, nblocks, hd->io_buf, at - hd->io_base,
					       io_u->xfer_buflen, token);
		break;
	case DDIR_TRIM: {
		/* A DSM Deallocate of one range, kept in the io_u's own slot. */
		struct homi_dsm_range *r = (struct homi_dsm_range *)homi_buf_ptr(hd->dsm) + io_u->index;

		r->cattr = 0;
		r->nlb = nblocks;
		r->slba = slba;
		rc = homi_submit_dsm(hd->qp, nsid, hd->dsm, (size_t)io_u->index * sizeof(*r), 1, token);
		break;
	}
	case DDIR_SYNC:
	case DDIR_DATASYNC:
		rc = homi_submit_flush(hd->qp, nsid, token);
		break;
	default:
		log_err("fio: homi: I/O direction %d (sync_file_range, wait) is not supported\n",
			io_u->ddir);
		return homi_done(io_u, EOPNOTSUPP);
	}
	if (rc == HOMI_E_QUEUE_FULL && (hd->nr_pending || hd->inflight)) {
		/*
		 * Out of something other than command slots (the queue's PRP-list pages
		 * are fewer than its slots at large depths): fio commits and reaps, then
		 * retries. With nothing outstanding nothing would free it: that fails.
		 */
		return FIO_Q_BUSY;
	}
	if (rc) {
		log_err("fio: homi: submit failed: %s\n", homi_why(rc));
		return homi_done(io_u, EIO);
	}
	hd->pending[hd->nr_pending++] = io_u;
	return FIO_Q_QUEUED;
}

/* One doorbell update for everything queued since the last commit. */
static int fio_homi_commit(struct thread_data *td)
{
	struct homi_data *hd = td->io_ops_data;
	struct timespec now;
	unsigned int i;

	if (!hd->nr_pending)
		return 0;
	if (hd->failed) {
		hd->nr_pending = 0;
		return -EIO;
	}
	homi_ring(hd->qp);
	if (fio_fill_issue_time(td)) {
		fio_gettime(&now, NULL);
		for (i = 0; i < hd->nr_pending; i++) {
			hd->pending[i]->issue_time = now;
			io_u_queued(td, hd->pending[i]);
		}
	}
	/* Replaying an iolog paces itself on the last issue (as libaio does). */
	if (td->o.read_iolog_file) {
		fio_gettime(&now, NULL);
		memcpy(&td->last_issue, &now, sizeof(now));
	}
	io_u_mark_submit(td, hd->nr_pending);
	hd->inflight += hd->nr_pending;
	hd->nr_pending = 0;
	return 0;
}

/*
 * Gives the queue pair up while commands may still be live: homi_qpair_destroy
 * deletes the queue on the controller before it releases anything, so nothing can
 * write into fio's buffers once fio frees them. The job fails; later calls say so.
 */
static void homi_abandon(struct homi_data *hd)
{
	if (hd->qp)
		homi_qpair_destroy(hd->qp);
	hd->qp = NULL;
	hd->failed = 1;
}

static int fio_homi_getevents(struct thread_data *td, unsigned int min, unsigned int max,
			      const struct timespec *t)
{
	struct homi_data *hd = td->io_ops_data;
	struct timespec start, last, now;
	unsigned int nr = 0, i;
	uint64_t limit_ms = t ? (uint64_t)t->tv_sec * 1000 + t->tv_nsec / 1000000 : 0;
	int started = 0;

	if (hd->failed)
		return -EIO;
	if (max > hd->depth)
		max = hd->depth;
	for (;;) {
		int r = homi_poll(hd->qp, hd->cpls, max - nr);

		if (r < 0) {
			/*
			 * What this call reaped already goes to fio first; the error comes
			 * back on the next call (homi_poll reports it again).
			 */
			if (nr)
				break;
			/*
			 * A reset destroyed the queue (HOMI_E_RESET): what was in flight is
			 * lost. Said once; fio asks again while it winds the job down.
			 */
			homi_fail(td, EIO, "homi_poll", "%s: the queue pair failed with %u commands in flight: %s",
				  hd->ctrl_path, hd->inflight, homi_why(r));
			homi_abandon(hd);
			return -EIO;
		}
		for (i = 0; i < (unsigned int)r; i++) {
			struct io_u *io_u = (struct io_u *)(uintptr_t)hd->cpls[i].token;

			io_u->resid = 0;
			io_u->error = 0;
			if (hd->cpls[i].status) {
				io_u->error = EIO;
				io_u->resid = io_u->xfer_buflen;
				if (hd->errors_logged++ < 8)
					log_err("fio: homi: %s at offset %llu: NVMe status 0x%04x (type %u, code 0x%02x)\n",
						io_ddir_name(io_u->ddir), io_u->offset, hd->cpls[i].status,
						(hd->cpls[i].status >> 8) & 7, hd->cpls[i].status & 0xff);
			}
			hd->events[nr++] = io_u;
		}
		hd->inflight -= (unsigned int)r;
		if (nr >= min || nr >= max)
			break;
		fio_gettime(&now, NULL);
		if (!started) {
			start = last = now;
			started = 1;
		} else if (r > 0) {
			last = now; /* the stall clock runs from the last completion */
		} else {
			if (t && mtime_since(&start, &now) >= limit_ms)
				break;
			if (mtime_since(&last, &now) >= HOMI_STALL_MS) {
				if (nr)
					break; /* these first; the stall is seen again next call */
				homi_fail(td, ETIMEDOUT, "homi_poll",
					  "%s: %u commands in flight, none completed in %d s; queue pair destroyed",
					  hd->ctrl_path, hd->inflight, HOMI_STALL_MS / 1000);
				homi_abandon(hd);
				return -ETIMEDOUT;
			}
		}
	}
	return (int)nr;
}

static struct io_u *fio_homi_event(struct thread_data *td, int event)
{
	struct homi_data *hd = td->io_ops_data;

	return hd->events[event];
}

static struct fio_option options[] = {
	{
		.name = "homi_nvme",
		.lname = "homi controller",
		.type = FIO_OPT_STR_STORE,
		.off1 = offsetof(struct homi_options, nvme),
		.help = "NVMe controller char device (/dev/nvme0); default: the controller of filename's namespace",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = "homi_nsid",
		.lname = "homi namespace",
		.type = FIO_OPT_INT,
		.off1 = offsetof(struct homi_options, nsid),
		.minval = 1,
		.help = "namespace ID (with homi_nvme: default 1; with a block device: must match it)",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = NULL,
	},
};

/* The symbol fio's dlopen path looks up; the only one this library exports. */
__attribute__((visibility("default"))) struct ioengine_ops ioengine = {
	.name = "homi",
	.version = FIO_IOOPS_VERSION,
	/*
	 * RAWIO: direct access, page-aligned buffers. NOEXTEND: a namespace has a fixed
	 * size. NODISKUTIL: the block device's statistics count the kernel's I/O, not
	 * the queue pair's. Issue times are set at commit, when the doorbell is rung.
	 */
	.flags = FIO_RAWIO | FIO_NOEXTEND | FIO_NODISKUTIL | FIO_ASYNCIO_SETS_ISSUE_TIME,
	.init = fio_homi_init,
	.post_init = fio_homi_post_init,
	.queue = fio_homi_queue,
	.commit = fio_homi_commit,
	.getevents = fio_homi_getevents,
	.event = fio_homi_event,
	.cleanup = fio_homi_cleanup,
	.open_file = fio_homi_open_file,
	.close_file = fio_homi_close_file,
	.get_file_size = fio_homi_get_file_size,
	.option_struct_size = sizeof(struct homi_options),
	.options = options,
};
