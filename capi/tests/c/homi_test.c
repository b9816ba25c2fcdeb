/*
 * homi_test: libhomi against a live controller, from C.
 *
 *   homi_test [/dev/nvmeXnY]      (default /dev/nvme0n1; homi.ko loaded; as root)
 *
 * Prints one line per check, "ok - NAME" or "not ok - NAME: WHY" (NAME has no ": "),
 * comments as "# ...", then
 * "N passed, N failed", and exits non-zero when a check failed. Writes to the
 * namespace from 64 MiB to 80 MiB, and resets the controller once (the last checks
 * but one). Built by `cargo xtask capi` against the installed header and libhomi.a;
 * run in the test VM by the `capi` suite.
 */
#define _GNU_SOURCE

#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <homi.h>

static int passed, failed;
static char why[1024];

/*
 * Each check macro comes in two forms: FAIL, EXPECT, CALL and REFUSED return the
 * reason at once, for a test that holds nothing yet; the _OUT forms store it in the
 * test's `w` and jump to its `out:` label, which releases what the test holds, so that
 * one failure does not leave queues, buffers or pins behind for the later checks.
 */
#define FAIL_(done, ...)                                  \
	do {                                              \
		snprintf(why, sizeof(why), __VA_ARGS__); \
		done;                                     \
	} while (0)
#define EXPECT_(done, cond, ...)                  \
	do {                                      \
		if (!(cond))                      \
			FAIL_(done, __VA_ARGS__); \
	} while (0)
/* A call that must succeed. */
#define CALL_(done, expr)                                                                                   \
	do {                                                                                                \
		int rc_ = (expr);                                                                           \
		if (rc_ < 0)                                                                                \
			FAIL_(done, "%s: %s (%d): %s", #expr, homi_strerror(rc_), rc_, homi_last_error()); \
	} while (0)
/* A call that must fail with `code` and leave a message naming `fn`. */
#define REFUSED_(done, expr, code, fn)                                                                         \
	do {                                                                                                   \
		int rc_ = (expr);                                                                              \
		if (rc_ != (code))                                                                             \
			FAIL_(done, "%s returned %d (%s), expected %d (%s)", #expr, rc_, homi_strerror(rc_), \
			      (int)(code), homi_strerror(code));                                                \
		if (strncmp(homi_last_error(), fn ": ", strlen(fn) + 2) != 0)                                  \
			FAIL_(done, "%s: message %s does not name %s", #expr, homi_last_error(), fn);          \
	} while (0)
#define RETURN_WHY return why
#define GOTO_OUT   \
	w = why;   \
	goto out
#define FAIL(...) FAIL_(RETURN_WHY, __VA_ARGS__)
#define EXPECT(cond, ...) EXPECT_(RETURN_WHY, cond, __VA_ARGS__)
#define CALL(expr) CALL_(RETURN_WHY, expr)
#define REFUSED(expr, code, fn) REFUSED_(RETURN_WHY, expr, code, fn)
#define FAIL_OUT(...) FAIL_(GOTO_OUT, __VA_ARGS__)
#define EXPECT_OUT(cond, ...) EXPECT_(GOTO_OUT, cond, __VA_ARGS__)
#define CALL_OUT(expr) CALL_(GOTO_OUT, expr)
#define REFUSED_OUT(expr, code, fn) REFUSED_(GOTO_OUT, expr, code, fn)

static void run(const char *name, const char *(*check)(void))
{
	const char *w = check();
	if (w) {
		failed++;
		printf("not ok - %s: %s\n", name, w);
	} else {
		passed++;
		printf("ok - %s\n", name);
	}
	fflush(stdout);
}

static const char *block_dev = "/dev/nvme0n1";
static char ctrl_path[64];
static uint32_t nsid;
static homi_ctrl *c;
static homi_qpair *q;
static struct homi_ctrl_info base;
static struct homi_ns_info ns;

/* The test's area: 16 MiB from 64 MiB on. */
#define AREA (64ull << 20)

static uint64_t lba_of(uint64_t byte)
{
	return byte / ns.lba_size;
}

static uint32_t blocks_of(size_t len)
{
	return (uint32_t)(len / ns.lba_size);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void pause_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

static void fill(uint8_t *p, size_t len, unsigned seed)
{
	size_t i;
	for (i = 0; i < len; i++)
		p[i] = (uint8_t)(i * 131 + seed * 7 + (i >> 12) + 1);
}

static int filled(const uint8_t *p, size_t len, unsigned seed)
{
	size_t i;
	for (i = 0; i < len; i++)
		if (p[i] != (uint8_t)(i * 131 + seed * 7 + (i >> 12) + 1))
			return 0;
	return 1;
}

/* Rings, then polls until the command with `token` completes or 10 s pass. Returns 0
 * with its status in *status, or a negative code. Other completions are dropped. */
static int wait_token(homi_qpair *qp, uint64_t token, uint16_t *status)
{
	double deadline = now() + 10.0;
	homi_ring(qp);
	while (now() < deadline) {
		homi_cpl cpl[8];
		int i, n = homi_poll(qp, cpl, 8);
		if (n < 0)
			return n;
		for (i = 0; i < n; i++)
			if (cpl[i].token == token) {
				*status = cpl[i].status;
				return 0;
			}
	}
	return HOMI_E_TIMEOUT;
}

/* One read or write of `len` bytes at byte `at` of the namespace, at `off` of `b`. */
static const char *io(int is_write, uint64_t at, homi_buf *b, size_t off, size_t len)
{
	static uint64_t token = 1000;
	uint16_t status = 0xffff;
	uint64_t t = ++token;
	if (is_write)
		CALL(homi_submit_write(q, nsid, lba_of(at), blocks_of(len), b, off, len, t));
	else
		CALL(homi_submit_read(q, nsid, lba_of(at), blocks_of(len), b, off, len, t));
	CALL(wait_token(q, t, &status));
	EXPECT(status == 0, "%s of %zu bytes at %llu: NVMe status 0x%03x", is_write ? "write" : "read", len,
	       (unsigned long long)at, status);
	return NULL;
}

/* What the kernel's block device holds at byte `at` (O_DIRECT, past any cache). */
static const char *kernel_read(uint64_t at, void *dst, size_t len)
{
	void *bounce = NULL;
	ssize_t n;
	int fd = open(block_dev, O_RDONLY | O_DIRECT);
	EXPECT(fd >= 0, "open %s O_DIRECT failed", block_dev);
	if (posix_memalign(&bounce, 4096, len)) {
		close(fd);
		FAIL("out of memory");
	}
	n = pread(fd, bounce, len, (off_t)at);
	close(fd);
	if (n != (ssize_t)len) {
		free(bounce);
		FAIL("pread %zu bytes at %llu of %s returned %zd", len, (unsigned long long)at, block_dev, n);
	}
	memcpy(dst, bounce, len);
	free(bounce);
	return NULL;
}

static const char *t_strerror(void)
{
	int code;
	const char *texts[18];
	EXPECT(strcmp(homi_strerror(0), "success") == 0, "homi_strerror(0) = %s", homi_strerror(0));
	for (code = HOMI_E_OPEN; code >= HOMI_E_PANIC; code--) {
		const char *t = homi_strerror(code);
		int i;
		EXPECT(t != NULL && t[0] != '\0', "homi_strerror(%d) is empty", code);
		EXPECT(strcmp(t, "unknown homi error code") != 0, "homi_strerror(%d) does not know its code", code);
		for (i = 0; i < -code - 1; i++)
			EXPECT(strcmp(t, texts[i]) != 0, "codes %d and %d share the text %s", code, -i - 1, t);
		texts[-code - 1] = t;
	}
	EXPECT(strcmp(homi_strerror(HOMI_E_PANIC - 1), "unknown homi error code") == 0, "code %d",
	       HOMI_E_PANIC - 1);
	EXPECT(strcmp(homi_strerror(7), "unknown homi error code") == 0, "code 7");
	EXPECT(homi_version() != NULL && homi_version()[0] != '\0', "homi_version() is empty");
	return NULL;
}

static const char *t_open(void)
{
	homi_ctrl *bad = (homi_ctrl *)&why;
	REFUSED(homi_ctrl_open(NULL, &bad), HOMI_E_NULL_ARG, "homi_ctrl_open");
	EXPECT(bad == NULL, "*out is not NULL after a failed open");
	REFUSED(homi_ctrl_open("/dev/nvme0", NULL), HOMI_E_NULL_ARG, "homi_ctrl_open");
	REFUSED(homi_ctrl_open("/dev/no-such-nvme", &bad), HOMI_E_OPEN, "homi_ctrl_open");
	EXPECT(strstr(homi_last_error(), "no-such-nvme") != NULL, "message %s", homi_last_error());
	CALL(homi_ctrl_open(ctrl_path, &c));
	EXPECT(c != NULL, "no handle");
	return NULL;
}

static const char *t_resolve(void)
{
	char small[4];
	uint32_t id = 0;
	CALL(homi_ns_resolve(block_dev, ctrl_path, sizeof(ctrl_path), &nsid));
	EXPECT(strncmp(ctrl_path, "/dev/nvme", 9) == 0, "controller %s", ctrl_path);
	EXPECT(nsid >= 1, "nsid %u", nsid);
	REFUSED(homi_ns_resolve(block_dev, small, sizeof(small), &id), HOMI_E_INVALID, "homi_ns_resolve");
	REFUSED(homi_ns_resolve("/dev/null", small, sizeof(small), &id), HOMI_E_INVALID, "homi_ns_resolve");
	REFUSED(homi_ns_resolve("/dev/no-such-disk", small, sizeof(small), &id), HOMI_E_IO, "homi_ns_resolve");
	REFUSED(homi_ns_resolve(NULL, small, sizeof(small), &id), HOMI_E_NULL_ARG, "homi_ns_resolve");
	REFUSED(homi_ns_resolve(block_dev, NULL, 64, &id), HOMI_E_NULL_ARG, "homi_ns_resolve");
	REFUSED(homi_ns_resolve(block_dev, small, sizeof(small), NULL), HOMI_E_NULL_ARG, "homi_ns_resolve");
	printf("# %s is nsid %u of %s\n", block_dev, nsid, ctrl_path);
	return NULL;
}

static const char *t_info(void)
{
	struct homi_ns_info none;
	CALL(homi_ctrl_info(c, &base));
	EXPECT(base.flags & HOMI_INFO_LIVE, "controller not live: flags 0x%x", base.flags);
	EXPECT(base.nr_namespaces >= 1, "no namespaces");
	EXPECT(base.max_transfer >= 4096, "max transfer %u", base.max_transfer);
	EXPECT(base.spare_free >= 2, "only %u spare qids", base.spare_free);
	EXPECT(base.first_spare_qid > base.driver_io_queues || (base.flags & HOMI_INFO_USER_QUEUES),
	       "first spare qid %u inside the driver's 1..%u", base.first_spare_qid, base.driver_io_queues);
	EXPECT(homi_ctrl_generation(c) == base.generation, "generation %llu != INFO's %llu",
	       (unsigned long long)homi_ctrl_generation(c), (unsigned long long)base.generation);
	CALL(homi_ns_info(c, nsid, &ns));
	EXPECT(ns.nsid == nsid && (ns.lba_size == 512 || ns.lba_size == 4096), "nsid %u lba size %u", ns.nsid,
	       ns.lba_size);
	EXPECT(ns.lba_size == 1u << ns.lba_shift, "lba_shift %u vs size %u", ns.lba_shift, ns.lba_size);
	EXPECT(ns.nblocks * ns.lba_size >= AREA + (16u << 20), "namespace of %llu blocks too small",
	       (unsigned long long)ns.nblocks);
	REFUSED(homi_ns_info(c, 0x7777, &none), HOMI_E_INVALID, "homi_ns_info");
	REFUSED(homi_ns_info(NULL, nsid, &none), HOMI_E_NULL_ARG, "homi_ns_info");
	REFUSED(homi_ns_info(c, nsid, NULL), HOMI_E_NULL_ARG, "homi_ns_info");
	REFUSED(homi_ctrl_info(c, NULL), HOMI_E_NULL_ARG, "homi_ctrl_info");
	REFUSED(homi_ctrl_info(NULL, &base), HOMI_E_NULL_ARG, "homi_ctrl_info");
	EXPECT(homi_ctrl_generation(NULL) == 0, "generation of NULL");
	printf("# instance %u flags 0x%x: driver qids 1..%u, %u spare from qid %u, max transfer %u, "
	       "%u qpairs, %llu pinned pages, %llu DMA bytes held module-wide\n",
	       base.instance, base.flags, base.driver_io_queues, base.spare_free, base.first_spare_qid,
	       base.max_transfer, base.qpairs, (unsigned long long)base.pinned_pages,
	       (unsigned long long)base.dma_bytes);
	return NULL;
}

static const char *t_qpair(void)
{
	struct homi_ctrl_info i;
	homi_qpair *bad = (homi_qpair *)&why;
	REFUSED(homi_qpair_create(c, 1, &bad), HOMI_E_INVALID, "homi_qpair_create");
	EXPECT(bad == NULL, "*out is not NULL after a failed create");
	REFUSED(homi_qpair_create(c, 1u << 20, &bad), HOMI_E_INVALID, "homi_qpair_create");
	REFUSED(homi_qpair_create(NULL, 64, &bad), HOMI_E_NULL_ARG, "homi_qpair_create");
	REFUSED(homi_qpair_create(c, 64, NULL), HOMI_E_NULL_ARG, "homi_qpair_create");
	CALL(homi_qpair_create(c, 64, &q));
	EXPECT(homi_qpair_qid(q) >= base.first_spare_qid, "qid %u below the first spare %u", homi_qpair_qid(q),
	       base.first_spare_qid);
	EXPECT(homi_qpair_depth(q) == 64, "depth %u", homi_qpair_depth(q));
	EXPECT(homi_qpair_free_slots(q) == 63, "free slots %u", homi_qpair_free_slots(q));
	EXPECT(homi_qpair_in_flight(q) == 0, "in flight %u", homi_qpair_in_flight(q));
	EXPECT(homi_qpair_max_transfer(q) == base.max_transfer, "max transfer %u vs INFO's %u",
	       homi_qpair_max_transfer(q), base.max_transfer);
	CALL(homi_qpair_check(q));
	CALL(homi_ctrl_info(c, &i));
	EXPECT(i.qpairs == base.qpairs + 1, "INFO counts %u queue pairs, expected %u", i.qpairs, base.qpairs + 1);
	EXPECT(i.spare_free == base.spare_free - 1, "spare %u, expected %u", i.spare_free, base.spare_free - 1);
	REFUSED(homi_qpair_rearm(q), HOMI_E_INVALID, "homi_qpair_rearm");
	REFUSED(homi_qpair_check(NULL), HOMI_E_NULL_ARG, "homi_qpair_check");
	EXPECT(homi_qpair_qid(NULL) == 0 && homi_qpair_depth(NULL) == 0 && homi_qpair_free_slots(NULL) == 0 &&
		       homi_qpair_max_transfer(NULL) == 0,
	       "getters of NULL are not 0");
	homi_ring(NULL);
	homi_qpair_destroy(NULL);
	return NULL;
}

static const char *t_module_buffer(void)
{
	homi_buf *b = NULL, *bad = (homi_buf *)&why;
	uint8_t kernel[8192];
	const char *w = NULL;
	REFUSED(homi_buf_alloc(c, 0, &bad), HOMI_E_INVALID, "homi_buf_alloc");
	EXPECT(bad == NULL, "*out is not NULL after a failed alloc");
	REFUSED(homi_buf_alloc(c, 1000, &bad), HOMI_E_INVALID, "homi_buf_alloc");
	REFUSED(homi_buf_alloc(c, HOMI_BUF_ALLOC_MAX + 4096, &bad), HOMI_E_INVALID, "homi_buf_alloc");
	REFUSED(homi_buf_alloc(NULL, 4096, &bad), HOMI_E_NULL_ARG, "homi_buf_alloc");
	REFUSED(homi_buf_alloc(c, 4096, NULL), HOMI_E_NULL_ARG, "homi_buf_alloc");
	CALL(homi_buf_alloc(c, 8192, &b));
	EXPECT_OUT(homi_buf_len(b) == 8192 && homi_buf_ptr(b) != NULL, "len %zu ptr %p", homi_buf_len(b),
		   homi_buf_ptr(b));
	EXPECT_OUT(homi_buf_len(NULL) == 0 && homi_buf_ptr(NULL) == NULL && homi_qpair_in_flight(NULL) == 0,
		   "getters of NULL");
	homi_buf_free(NULL);
	fill(homi_buf_ptr(b), 8192, 1);
	if ((w = io(1, AREA, b, 0, 8192)) != NULL)
		goto out;
	memset(homi_buf_ptr(b), 0, 8192);
	if ((w = io(0, AREA, b, 0, 8192)) != NULL)
		goto out;
	if (!filled(homi_buf_ptr(b), 8192, 1)) {
		snprintf(why, sizeof(why), "read back other data than written");
		w = why;
		goto out;
	}
	if ((w = kernel_read(AREA, kernel, sizeof(kernel))) != NULL)
		goto out;
	if (!filled(kernel, sizeof(kernel), 1)) {
		snprintf(why, sizeof(why), "the kernel's block device reads other data than homi wrote");
		w = why;
	}
out:
	homi_buf_free(b);
	return w;
}

static const char *t_registered_buffer(void)
{
	struct homi_ctrl_info i;
	homi_buf *b = NULL, *bad = (homi_buf *)&why;
	void *mem = NULL;
	const char *w = NULL;
	EXPECT(posix_memalign(&mem, 4096, 16384) == 0, "out of memory");
	REFUSED_OUT(homi_buf_register(c, (char *)mem + 512, 4096, &bad), HOMI_E_INVALID, "homi_buf_register");
	EXPECT_OUT(bad == NULL, "*out is not NULL after a failed register");
	REFUSED_OUT(homi_buf_register(c, mem, 1000, &bad), HOMI_E_INVALID, "homi_buf_register");
	REFUSED_OUT(homi_buf_register(c, NULL, 4096, &bad), HOMI_E_NULL_ARG, "homi_buf_register");
	REFUSED_OUT(homi_buf_register(NULL, mem, 4096, &bad), HOMI_E_NULL_ARG, "homi_buf_register");
	CALL_OUT(homi_buf_register(c, mem, 16384, &b));
	EXPECT_OUT(homi_buf_ptr(b) == mem && homi_buf_len(b) == 16384, "ptr %p len %zu", homi_buf_ptr(b),
		   homi_buf_len(b));
	CALL_OUT(homi_ctrl_info(c, &i));
	EXPECT_OUT(i.pinned_pages == base.pinned_pages + 4, "%llu pages pinned, expected %llu",
		   (unsigned long long)i.pinned_pages, (unsigned long long)base.pinned_pages + 4);
	fill(mem, 16384, 2);
	if ((w = io(1, AREA + (1 << 20), b, 0, 16384)) != NULL)
		goto out;
	memset(mem, 0, 16384);
	if ((w = io(0, AREA + (1 << 20), b, 0, 16384)) != NULL)
		goto out;
	if (!filled(mem, 16384, 2)) {
		snprintf(why, sizeof(why), "read back other data than written");
		w = why;
	}
out:
	homi_buf_free(b);
	free(mem);
	return w;
}

/* Module memory out, registered memory back, at offsets inside the buffers: the
 * transfer spans many pages, so both commands go through PRP lists. */
static const char *t_prp_list(void)
{
	size_t len = homi_qpair_max_transfer(q) < (256u << 10) ? homi_qpair_max_transfer(q) : (256u << 10);
	size_t size = len + 8192;
	homi_buf *out = NULL, *back = NULL;
	void *mem = NULL;
	const char *w = NULL;
	uint8_t *kernel = malloc(len);
	EXPECT_OUT(kernel != NULL && posix_memalign(&mem, 4096, size) == 0, "out of memory");
	memset(mem, 0, size);
	if (homi_buf_alloc(c, size, &out) || homi_buf_register(c, mem, size, &back)) {
		snprintf(why, sizeof(why), "buffers: %s", homi_last_error());
		w = why;
		goto out;
	}
	fill((uint8_t *)homi_buf_ptr(out) + 4096, len, 3);
	if ((w = io(1, AREA + (2 << 20), out, 4096, len)) != NULL ||
	    (w = io(0, AREA + (2 << 20), back, ns.lba_size, len)) != NULL)
		goto out;
	if (!filled((uint8_t *)mem + ns.lba_size, len, 3)) {
		snprintf(why, sizeof(why), "%zu bytes read back through a PRP list differ", len);
		w = why;
		goto out;
	}
	if ((w = kernel_read(AREA + (2 << 20), kernel, len)) != NULL)
		goto out;
	if (!filled(kernel, len, 3)) {
		snprintf(why, sizeof(why), "the kernel reads other data than homi wrote");
		w = why;
	}
	printf("# %zu bytes (%zu pages) each way\n", len, len / 4096);
out:
	homi_buf_free(out);
	homi_buf_free(back);
	free(mem);
	free(kernel);
	return w;
}

static const char *t_flush(void)
{
	uint16_t st = 0xffff;
	CALL(homi_submit_flush(q, nsid, 77));
	CALL(wait_token(q, 77, &st));
	EXPECT(st == 0, "flush status 0x%03x", st);
	REFUSED(homi_submit_flush(q, 0x7777, 78), HOMI_E_INVALID, "homi_submit_flush");
	REFUSED(homi_submit_flush(NULL, nsid, 78), HOMI_E_NULL_ARG, "homi_submit_flush");
	return NULL;
}

static const char *t_write_zeroes(void)
{
	homi_buf *b = NULL;
	uint16_t st = 0xffff;
	const char *w = NULL;
	size_t i;
	CALL(homi_buf_alloc(c, 16384, &b));
	fill(homi_buf_ptr(b), 16384, 4);
	if ((w = io(1, AREA + (3 << 20), b, 0, 16384)) != NULL)
		goto out;
	if (homi_submit_write_zeroes(q, nsid, lba_of(AREA + (3 << 20)), blocks_of(16384), 79) != 0 ||
	    wait_token(q, 79, &st) != 0 || st != 0) {
		snprintf(why, sizeof(why), "write zeroes: status 0x%03x, %s", st, homi_last_error());
		w = why;
		goto out;
	}
	if ((w = io(0, AREA + (3 << 20), b, 0, 16384)) != NULL)
		goto out;
	for (i = 0; i < 16384; i++)
		if (((uint8_t *)homi_buf_ptr(b))[i] != 0) {
			snprintf(why, sizeof(why), "byte %zu reads 0x%02x after write zeroes", i,
				 ((uint8_t *)homi_buf_ptr(b))[i]);
			w = why;
			goto out;
		}
	if (homi_submit_write_zeroes(q, nsid, 0, 0, 80) != HOMI_E_INVALID) {
		snprintf(why, sizeof(why), "write zeroes of 0 blocks accepted");
		w = why;
	}
out:
	homi_buf_free(b);
	return w;
}

static const char *t_dsm(void)
{
	homi_buf *ranges = NULL;
	struct homi_dsm_range *r;
	uint16_t st = 0xffff;
	const char *w = NULL;
	CALL(homi_buf_alloc(c, 4096, &ranges));
	r = homi_buf_ptr(ranges);
	r[0].cattr = 0;
	r[0].nlb = blocks_of(65536);
	r[0].slba = lba_of(AREA + (4 << 20));
	r[1].cattr = 0;
	r[1].nlb = blocks_of(8192);
	r[1].slba = lba_of(AREA + (5 << 20));
	if (homi_submit_dsm(q, nsid, ranges, 0, 2, 81) != 0 || wait_token(q, 81, &st) != 0) {
		snprintf(why, sizeof(why), "deallocate: %s", homi_last_error());
		w = why;
	} else if (st != 0) {
		snprintf(why, sizeof(why), "deallocate status 0x%03x", st);
		w = why;
	} else if (homi_submit_dsm(q, nsid, ranges, 0, 0, 82) != HOMI_E_INVALID ||
		   homi_submit_dsm(q, nsid, ranges, 4096 - 16, 2, 82) != HOMI_E_INVALID ||
		   homi_submit_dsm(q, nsid, NULL, 0, 1, 82) != HOMI_E_NULL_ARG) {
		snprintf(why, sizeof(why), "bad ranges accepted");
		w = why;
	}
	homi_buf_free(ranges);
	return w;
}

/* 16 writes pushed, one ring, then 16 reads the same way; each comes back once. */
static const char *t_batched(void)
{
	enum { N = 16 };
	homi_buf *b = NULL;
	int seen[2 * N] = { 0 };
	int round, i, got;
	double deadline;
	const char *w = NULL;
	CALL(homi_buf_alloc(c, N * 4096, &b));
	fill(homi_buf_ptr(b), N * 4096, 5);
	for (round = 0; round < 2 && !w; round++) {
		uint32_t free_before = homi_qpair_free_slots(q);
		for (i = 0; i < N; i++) {
			uint64_t at = AREA + (6 << 20) + (uint64_t)i * 65536;
			int rc = round == 0 ? homi_submit_write(q, nsid, lba_of(at), blocks_of(4096), b, i * 4096, 4096,
								  round * N + i)
					    : homi_submit_read(q, nsid, lba_of(at), blocks_of(4096), b, i * 4096, 4096,
								 round * N + i);
			if (rc) {
				snprintf(why, sizeof(why), "submit %d: %s", i, homi_last_error());
				w = why;
				break;
			}
		}
		if (w)
			break;
		if (homi_qpair_free_slots(q) != free_before - N || homi_qpair_in_flight(q) != N) {
			snprintf(why, sizeof(why), "free slots %u (was %u), in flight %u after %d pushes",
				 homi_qpair_free_slots(q), free_before, homi_qpair_in_flight(q), N);
			w = why;
			break;
		}
		if (round == 1)
			memset(homi_buf_ptr(b), 0, N * 4096);
		homi_ring(q);
		deadline = now() + 10.0;
		for (got = 0; got < N && now() < deadline;) {
			homi_cpl cpl[N];
			int n = homi_poll(q, cpl, N);
			if (n < 0) {
				snprintf(why, sizeof(why), "poll: %s", homi_last_error());
				w = why;
				break;
			}
			for (i = 0; i < n; i++) {
				if (cpl[i].token >= 2 * N || seen[cpl[i].token]++ || cpl[i].status != 0) {
					snprintf(why, sizeof(why), "completion token %llu status 0x%03x (seen %d)",
						 (unsigned long long)cpl[i].token, cpl[i].status,
						 cpl[i].token < 2 * N ? seen[cpl[i].token] : -1);
					w = why;
					break;
				}
			}
			got += n;
		}
		if (!w && got != N) {
			snprintf(why, sizeof(why), "round %d: %d of %d completions in 10 s", round, got, N);
			w = why;
		}
	}
	if (!w && !filled(homi_buf_ptr(b), N * 4096, 5)) {
		snprintf(why, sizeof(why), "batched reads returned other data than the batched writes wrote");
		w = why;
	}
	homi_buf_free(b);
	return w;
}

/* 12 reads complete; polls of at most 5 take them in 5, 5, 2: none is lost, none
 * reaped twice, and the entry after `max` is never written. */
static const char *t_poll_max(void)
{
	enum { N = 12, MAX = 5 };
	homi_buf *b = NULL;
	homi_cpl cpl[MAX + 1];
	int seen[N] = { 0 };
	int i, got = 0, calls = 0, full = 0;
	double deadline;
	const char *w = NULL;
	CALL(homi_buf_alloc(c, N * 4096, &b));
	for (i = 0; i < N; i++)
		if (homi_submit_read(q, nsid, lba_of(AREA + (7 << 20)) + (uint64_t)i * blocks_of(4096),
				     blocks_of(4096), b, i * 4096, 4096, 500 + i)) {
			snprintf(why, sizeof(why), "submit: %s", homi_last_error());
			homi_buf_free(b);
			return why;
		}
	homi_ring(q);
	/* Let all of them complete before the first poll (QEMU runs them at once; the
	 * margin is for a loaded host). */
	pause_ms(2000);
	deadline = now() + 10.0;
	while (got < N && now() < deadline) {
		int n;
		memset(&cpl[MAX], 0xab, sizeof(cpl[MAX]));
		n = homi_poll(q, cpl, MAX);
		if (n < 0 || n > MAX) {
			snprintf(why, sizeof(why), "poll returned %d: %s", n, homi_last_error());
			w = why;
			break;
		}
		if (cpl[MAX].token != 0xababababababababull) {
			snprintf(why, sizeof(why), "poll wrote past max");
			w = why;
			break;
		}
		calls += n > 0;
		full += n == MAX;
		for (i = 0; i < n; i++) {
			uint64_t t = cpl[i].token - 500;
			if (t >= N || seen[t]++ || cpl[i].status != 0) {
				snprintf(why, sizeof(why), "completion token %llu status 0x%03x",
					 (unsigned long long)cpl[i].token, cpl[i].status);
				w = why;
				break;
			}
		}
		got += n;
	}
	if (!w && got != N) {
		snprintf(why, sizeof(why), "%d of %d completions", got, N);
		w = why;
	}
	if (!w && full < 2) {
		snprintf(why, sizeof(why), "only %d of %d polls were full: the commands were not all ready", full, calls);
		w = why;
	}
	if (!w && homi_qpair_in_flight(q) != 0) {
		snprintf(why, sizeof(why), "%u still in flight", homi_qpair_in_flight(q));
		w = why;
	}
	if (!w && homi_poll(q, NULL, 0) != 0) {
		snprintf(why, sizeof(why), "homi_poll(q, NULL, 0) != 0");
		w = why;
	}
	if (!w)
		printf("# %d completions in %d polls of at most %d\n", got, calls, MAX);
	homi_buf_free(b);
	return w;
}

static const char *t_queue_full(void)
{
	homi_qpair *small = NULL;
	uint16_t st;
	int i;
	const char *w = NULL;
	CALL(homi_qpair_create(c, 4, &small));
	for (i = 0; i < 3 && !w; i++)
		if (homi_submit_flush(small, nsid, 900 + i) != 0) {
			snprintf(why, sizeof(why), "flush %d: %s", i, homi_last_error());
			w = why;
		}
	if (!w && homi_submit_flush(small, nsid, 999) != HOMI_E_QUEUE_FULL) {
		snprintf(why, sizeof(why), "a fourth command on a queue of depth 4 was not refused as full");
		w = why;
	}
	if (!w && homi_qpair_free_slots(small) != 0) {
		snprintf(why, sizeof(why), "free slots %u", homi_qpair_free_slots(small));
		w = why;
	}
	if (!w && (wait_token(small, 902, &st) != 0 || st != 0)) {
		snprintf(why, sizeof(why), "the flushes did not complete: %s", homi_last_error());
		w = why;
	}
	homi_qpair_destroy(small);
	return w;
}

static const char *t_bad_submits(void)
{
	homi_buf *b = NULL, *big = NULL, *other_buf = NULL;
	homi_ctrl *other = NULL;
	homi_cpl cpl;
	const char *w = NULL;
	uint32_t mt = homi_qpair_max_transfer(q);
	/* Over max transfer by one block, in a buffer that holds it: only the max-transfer
	 * check can refuse it. */
	size_t over = (size_t)mt + ns.lba_size, big_len = (over + 4095) / 4096 * 4096;
	CALL(homi_buf_alloc(c, 8192, &b));
	if (big_len <= HOMI_BUF_ALLOC_MAX)
		CALL_OUT(homi_buf_alloc(c, big_len, &big));
#define BAD(expr, code, fn)                                                                                 \
	do {                                                                                                \
		int rc_ = (expr);                                                                           \
		if (rc_ != (code) || strncmp(homi_last_error(), fn ": ", strlen(fn) + 2) != 0) {            \
			snprintf(why, sizeof(why), "%s returned %d (%s), expected %d; message %s", #expr, rc_, \
				 homi_strerror(rc_), (int)(code), homi_last_error());                        \
			w = why;                                                                            \
			goto out;                                                                           \
		}                                                                                           \
	} while (0)
	BAD(homi_submit_read(q, nsid, 0, blocks_of(4096), b, 0, 4096 + ns.lba_size, 1), HOMI_E_INVALID,
	    "homi_submit_read");
	BAD(homi_submit_read(q, nsid, 0, blocks_of(8192), b, 4096, 8192, 1), HOMI_E_INVALID, "homi_submit_read");
	BAD(homi_submit_read(q, nsid, 0, blocks_of(4096), b, (size_t)-4096, 4096, 1), HOMI_E_INVALID,
	    "homi_submit_read");
	BAD(homi_submit_read(q, nsid, 0, 0, b, 0, 0, 1), HOMI_E_INVALID, "homi_submit_read");
	BAD(homi_submit_write(q, nsid, 0, 65537, b, 0, 4096, 1), HOMI_E_INVALID, "homi_submit_write");
	if (big) {
		BAD(homi_submit_write(q, nsid, 0, blocks_of(over), big, 0, over, 1), HOMI_E_INVALID, "homi_submit_write");
		if (strstr(homi_last_error(), "max transfer") == NULL) {
			snprintf(why, sizeof(why), "over max transfer refused for another reason: %s", homi_last_error());
			w = why;
			goto out;
		}
	} else {
		printf("# over max transfer: max transfer %u leaves no buffer that holds it\n", mt);
	}
	BAD(homi_submit_write(q, 0x7777, 0, blocks_of(4096), b, 0, 4096, 1), HOMI_E_INVALID, "homi_submit_write");
	BAD(homi_submit_write(q, nsid, 0, blocks_of(4096), b, 2, 4096, 1), HOMI_E_INVALID, "homi_submit_write");
	BAD(homi_submit_write(NULL, nsid, 0, blocks_of(4096), b, 0, 4096, 1), HOMI_E_NULL_ARG, "homi_submit_write");
	BAD(homi_submit_write(q, nsid, 0, blocks_of(4096), NULL, 0, 4096, 1), HOMI_E_NULL_ARG, "homi_submit_write");
	BAD(homi_submit_write_zeroes(NULL, nsid, 0, 1, 1), HOMI_E_NULL_ARG, "homi_submit_write_zeroes");
	BAD(homi_submit_dsm(q, nsid, b, 0, 257, 1), HOMI_E_INVALID, "homi_submit_dsm");
	BAD(homi_poll(q, NULL, 1), HOMI_E_NULL_ARG, "homi_poll");
	BAD(homi_poll(NULL, &cpl, 1), HOMI_E_NULL_ARG, "homi_poll");
	BAD(homi_qpair_rearm(NULL), HOMI_E_NULL_ARG, "homi_qpair_rearm");
	/* A buffer made through another handle of the same controller. */
	if (homi_ctrl_open(ctrl_path, &other) || homi_buf_alloc(other, 4096, &other_buf)) {
		snprintf(why, sizeof(why), "second handle: %s", homi_last_error());
		w = why;
		goto out;
	}
	BAD(homi_submit_write(q, nsid, 0, blocks_of(4096), other_buf, 0, 4096, 1), HOMI_E_INVALID,
	    "homi_submit_write");
	if (homi_qpair_in_flight(q) != 0) {
		snprintf(why, sizeof(why), "refused commands reached the queue: %u in flight", homi_qpair_in_flight(q));
		w = why;
	}
#undef BAD
out:
	homi_buf_free(b);
	homi_buf_free(big);
	homi_buf_free(other_buf);
	homi_ctrl_close(other);
	return w;
}

/* The caller's reference goes before the completion: the queue keeps the buffer. */
static const char *t_free_in_flight(void)
{
	homi_buf *b = NULL, *back = NULL;
	uint16_t st = 0xffff;
	const char *w = NULL;
	CALL(homi_buf_alloc(c, 65536, &b));
	fill(homi_buf_ptr(b), 65536, 6);
	CALL_OUT(homi_submit_write(q, nsid, lba_of(AREA + (8 << 20)), blocks_of(65536), b, 0, 65536, 600));
	homi_buf_free(b);
	b = NULL;
	CALL_OUT(wait_token(q, 600, &st));
	EXPECT_OUT(st == 0, "write status 0x%03x", st);
	CALL_OUT(homi_buf_alloc(c, 65536, &back));
	if ((w = io(0, AREA + (8 << 20), back, 0, 65536)) == NULL && !filled(homi_buf_ptr(back), 65536, 6)) {
		snprintf(why, sizeof(why), "the data of a buffer freed in flight did not arrive whole");
		w = why;
	}
out:
	homi_buf_free(b);
	homi_buf_free(back);
	return w;
}

/* A queue destroyed with commands in flight, and buffers freed while they are: its
 * qid comes back, its rings are freed, and the buffer is freed or, while the other
 * queue of this handle lives, quarantined. */
static const char *t_destroy_in_flight(void)
{
	struct homi_ctrl_info before, during, after;
	homi_qpair *tmp = NULL;
	homi_buf *b = NULL;
	const char *w = NULL;
	int i;
	CALL(homi_ctrl_info(c, &before));
	CALL(homi_qpair_create(c, 32, &tmp));
	CALL_OUT(homi_buf_alloc(c, 65536, &b));
	for (i = 0; i < 16; i++)
		CALL_OUT(homi_submit_read(tmp, nsid, lba_of(AREA) + (uint64_t)i * blocks_of(4096), blocks_of(4096), b,
					  (size_t)i * 4096, 4096, i));
	homi_ring(tmp);
	CALL_OUT(homi_ctrl_info(c, &during));
	EXPECT_OUT(during.qpairs == before.qpairs + 1 && during.spare_free == before.spare_free - 1,
		   "with the queue: %u queue pairs, %u spare; before: %u, %u", during.qpairs, during.spare_free,
		   before.qpairs, before.spare_free);
	EXPECT_OUT(during.dma_bytes >= before.dma_bytes + 65536,
		   "with the queue and buffer: %llu DMA bytes, %llu before", (unsigned long long)during.dma_bytes,
		   (unsigned long long)before.dma_bytes);
	homi_buf_free(b);
	b = NULL;
	homi_qpair_destroy(tmp);
	tmp = NULL;
	CALL(homi_ctrl_info(c, &after));
	EXPECT(after.qpairs == before.qpairs, "%u queue pairs after the destroy, %u before", after.qpairs,
	       before.qpairs);
	EXPECT(after.spare_free == before.spare_free, "%u spare qids after the destroy, %u before", after.spare_free,
	       before.spare_free);
	EXPECT(after.dma_bytes < during.dma_bytes, "%llu DMA bytes after the destroy, %llu with the queue",
	       (unsigned long long)after.dma_bytes, (unsigned long long)during.dma_bytes);
	/* The rings are freed; the buffer is freed too, or quarantined while q lives (the
	 * quarantine counts registered memory as well, so it is no bound on DMA bytes). */
	EXPECT(after.dma_bytes <= before.dma_bytes + 65536,
	       "%llu DMA bytes after the destroy, %llu before: more than the freed buffer is held",
	       (unsigned long long)after.dma_bytes, (unsigned long long)before.dma_bytes);
	printf("# destroyed with 16 in flight: %llu DMA bytes before, %llu with it, %llu after\n",
	       (unsigned long long)before.dma_bytes, (unsigned long long)during.dma_bytes,
	       (unsigned long long)after.dma_bytes);
	return NULL;
out:
	homi_buf_free(b);
	homi_qpair_destroy(tmp);
	return w;
}

static int write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY);
	ssize_t n;
	if (fd < 0)
		return -1;
	n = write(fd, text, strlen(text));
	close(fd);
	return n == (ssize_t)strlen(text) ? 0 : -1;
}

/* A controller reset under a queue with a command in flight: poll reports it, check
 * agrees, rearm (retried while the controller comes back) gives a working queue. */
static const char *t_reset(void)
{
	char path[96];
	homi_cpl cpl[4];
	homi_buf *b = NULL;
	uint64_t gen = homi_ctrl_generation(c);
	double deadline;
	int rc = 0;
	const char *w = NULL;
	snprintf(path, sizeof(path), "/sys/class/nvme/%s/reset_controller", ctrl_path + 5);
	CALL(homi_buf_alloc(c, 4096, &b));
	CALL_OUT(homi_submit_read(q, nsid, lba_of(AREA), blocks_of(4096), b, 0, 4096, 700));
	homi_ring(q);
	if (write_file(path, "1") != 0)
		FAIL_OUT("cannot write %s", path);
	/* The read may complete before the reset; after it, poll must say reset. */
	deadline = now() + 30.0;
	do {
		rc = homi_poll(q, cpl, 4);
		if (rc >= 0 && homi_qpair_in_flight(q) == 0)
			rc = homi_qpair_check(q);
	} while ((rc >= 0 || rc == HOMI_E_NOT_LIVE) && now() < deadline);
	if (rc != HOMI_E_RESET) {
		snprintf(why, sizeof(why), "after a reset, poll/check returned %d (%s), not HOMI_E_RESET", rc,
			 homi_strerror(rc));
		w = why;
		goto out;
	}
	if (homi_ctrl_generation(c) == gen) {
		snprintf(why, sizeof(why), "the generation did not move from %llu", (unsigned long long)gen);
		w = why;
		goto out;
	}
	deadline = now() + 60.0;
	while ((rc = homi_qpair_rearm(q)) == HOMI_E_NOT_LIVE && now() < deadline)
		pause_ms(50);
	if (rc != 0) {
		snprintf(why, sizeof(why), "rearm: %s (%d): %s", homi_strerror(rc), rc, homi_last_error());
		w = why;
		goto out;
	}
	if (homi_qpair_in_flight(q) != 0 || homi_qpair_check(q) != 0) {
		snprintf(why, sizeof(why), "after rearm: %u in flight, check %d", homi_qpair_in_flight(q),
			 homi_qpair_check(q));
		w = why;
		goto out;
	}
	fill(homi_buf_ptr(b), 4096, 7);
	if ((w = io(1, AREA + (9 << 20), b, 0, 4096)) != NULL)
		goto out;
	memset(homi_buf_ptr(b), 0, 4096);
	if ((w = io(0, AREA + (9 << 20), b, 0, 4096)) == NULL && !filled(homi_buf_ptr(b), 4096, 7)) {
		snprintf(why, sizeof(why), "I/O after rearm read back other data");
		w = why;
	}
	if (!w)
		printf("# generation %llu -> %llu, qid %u rearmed\n", (unsigned long long)gen,
		       (unsigned long long)homi_ctrl_generation(c), homi_qpair_qid(q));
out:
	homi_buf_free(b);
	return w;
}

/* One thread's share of t_threads: its own queue and buffer from the shared handle,
 * round trips at its own LBAs, INFO asked on the way. */
struct worker {
	int id;
	char err[256];
};

static void *work(void *arg)
{
	struct worker *wk = arg;
	homi_qpair *tq = NULL;
	homi_buf *b = NULL;
	struct homi_ctrl_info i;
	uint16_t st = 0;
	int round, rc;
	uint64_t at;
	wk->err[0] = '\0';
	if ((rc = homi_qpair_create(c, 16, &tq)) || (rc = homi_buf_alloc(c, 8192, &b))) {
		snprintf(wk->err, sizeof(wk->err), "thread %d: %s", wk->id, homi_last_error());
		goto out;
	}
	for (round = 0; round < 32; round++) {
		at = AREA + (10ull << 20) + (uint64_t)wk->id * (1 << 20) + (uint64_t)round * 8192;
		fill(homi_buf_ptr(b), 8192, 100 + wk->id * 32 + round);
		rc = homi_submit_write(tq, nsid, lba_of(at), blocks_of(8192), b, 0, 8192, 1);
		if (!rc)
			rc = wait_token(tq, 1, &st);
		if (!rc && !st) {
			memset(homi_buf_ptr(b), 0, 8192);
			rc = homi_submit_read(tq, nsid, lba_of(at), blocks_of(8192), b, 0, 8192, 2);
		}
		if (!rc && !st)
			rc = wait_token(tq, 2, &st);
		if (!rc && !st)
			rc = homi_ctrl_info(c, &i);
		if (rc || st) {
			snprintf(wk->err, sizeof(wk->err), "thread %d round %d: rc %d status 0x%03x: %s", wk->id, round, rc,
				 st, homi_last_error());
			goto out;
		}
		if (!filled(homi_buf_ptr(b), 8192, 100 + wk->id * 32 + round)) {
			snprintf(wk->err, sizeof(wk->err), "thread %d round %d: read back other data", wk->id, round);
			goto out;
		}
	}
out:
	homi_buf_free(b);
	homi_qpair_destroy(tq);
	return NULL;
}

/* The handle shared by threads: each creates its queue and buffer from it and runs
 * I/O at the same time as the others. */
static const char *t_threads(void)
{
	enum { T = 3 };
	pthread_t th[T];
	struct worker wk[T];
	int i, started = 0;
	for (i = 0; i < T; i++) {
		wk[i].id = i;
		if (pthread_create(&th[i], NULL, work, &wk[i]) != 0)
			break;
		started++;
	}
	for (i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	EXPECT(started == T, "started %d of %d threads", started, T);
	for (i = 0; i < T; i++)
		EXPECT(wk[i].err[0] == '\0', "%s", wk[i].err);
	return NULL;
}

/* Everything released: a fresh handle sees homi hold what it held before. */
static const char *t_released(void)
{
	struct homi_ctrl_info i;
	homi_ctrl *fresh = NULL;
	homi_qpair_destroy(q);
	q = NULL;
	homi_ctrl_close(c);
	c = NULL;
	CALL(homi_ctrl_open(ctrl_path, &fresh));
	if (homi_ctrl_info(fresh, &i) != 0) {
		homi_ctrl_close(fresh);
		FAIL("info: %s", homi_last_error());
	}
	homi_ctrl_close(fresh);
	printf("# after release: %u qpairs, %u spare, %llu pinned pages, %llu DMA bytes, %llu quarantined bytes\n",
	       i.qpairs, i.spare_free, (unsigned long long)i.pinned_pages, (unsigned long long)i.dma_bytes,
	       (unsigned long long)i.quarantined_bytes);
	EXPECT(i.qpairs == base.qpairs, "%u queue pairs held, %u before", i.qpairs, base.qpairs);
	EXPECT(i.spare_free == base.spare_free, "%u spare qids, %u before", i.spare_free, base.spare_free);
	EXPECT(i.pinned_pages == base.pinned_pages, "%llu pages pinned, %llu before",
	       (unsigned long long)i.pinned_pages, (unsigned long long)base.pinned_pages);
	EXPECT(i.dma_bytes == base.dma_bytes, "%llu DMA bytes held, %llu before", (unsigned long long)i.dma_bytes,
	       (unsigned long long)base.dma_bytes);
	EXPECT(i.quarantined_bytes == base.quarantined_bytes, "%llu bytes quarantined, %llu before",
	       (unsigned long long)i.quarantined_bytes, (unsigned long long)base.quarantined_bytes);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc > 1)
		block_dev = argv[1];
	run("homi_strerror names every code; homi_version", t_strerror);
	run("homi_ns_resolve finds the controller and nsid; refuses bad input", t_resolve);
	if (failed)
		goto done;
	run("homi_ctrl_open refuses NULL and a missing node, then opens the controller", t_open);
	if (!c)
		goto done;
	run("homi_ctrl_info, homi_ns_info, homi_ctrl_generation", t_info);
	run("homi_qpair_create and its getters; bad depths", t_qpair);
	if (!q || !ns.lba_size)
		goto done;
	run("module buffer written, read back, the kernel's O_DIRECT view agrees", t_module_buffer);
	run("registered buffer pins its pages, written, read back", t_registered_buffer);
	run("multi-page transfer through PRP lists, at offsets in both buffers", t_prp_list);
	run("flush completes; bad nsid refused", t_flush);
	run("write zeroes reads back zeros", t_write_zeroes);
	run("dataset management (deallocate) of two ranges", t_dsm);
	run("QD 16 batched submits, one ring, every completion once", t_batched);
	run("homi_poll with max below what is ready loses nothing", t_poll_max);
	run("a full queue answers HOMI_E_QUEUE_FULL", t_queue_full);
	run("bad submissions are refused with their code and a message", t_bad_submits);
	run("a buffer freed while its write is in flight", t_free_in_flight);
	run("a queue destroyed with commands in flight", t_destroy_in_flight);
	run("three threads share the handle, each with its own queue, at once", t_threads);
	run("after a controller reset, poll says HOMI_E_RESET and rearm recovers", t_reset);
	run("everything released, no qids, pins or DMA memory held after close", t_released);
done:
	homi_qpair_destroy(q);
	homi_ctrl_close(c);
	printf("%d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
