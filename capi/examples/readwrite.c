/*
 * readwrite: writes a pattern through a homi queue pair, reads it back, compares.
 *
 *   readwrite [/dev/nvmeX | /dev/nvmeXnY] [LBA]
 *
 * 128 KiB (less where the controller's largest transfer is smaller) go out from
 * module DMA memory (homi_buf_alloc) and come back into the caller's own page-aligned
 * memory (homi_buf_register); both spans need PRP lists. Needs homi.ko loaded and
 * root (CAP_SYS_RAWIO). Overwrites up to 128 KiB at LBA (default 16384) of the
 * namespace.
 *
 * Build against an installation (cargo xtask capi):
 *   cc -std=c99 $(pkg-config --cflags homi) readwrite.c $(pkg-config --libs homi)
 */
#define _POSIX_C_SOURCE 200809L

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <homi.h>

#define LEN (128u * 1024u)

/* Reports a failed call; rc 1 is wait_for's NVMe error status, printed already. */
static int die(const char *what, int rc)
{
	if (rc == 1)
		fprintf(stderr, "readwrite: %s failed (NVMe status above)\n", what);
	else
		fprintf(stderr, "readwrite: %s: %s (%d): %s\n", what, homi_strerror(rc), rc, homi_last_error());
	return 1;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Rings and polls until the command with `token` completes; 0 or a negative code, or
 * 1 for an NVMe error status (printed). */
static int wait_for(homi_qpair *q, uint64_t token)
{
	double deadline = now() + 10.0;
	homi_ring(q);
	while (now() < deadline) {
		homi_cpl c;
		int n = homi_poll(q, &c, 1);
		if (n < 0)
			return n;
		if (n == 1 && c.token == token) {
			if (c.status != 0) {
				fprintf(stderr, "readwrite: command %llu failed with NVMe status 0x%03x\n",
					(unsigned long long)token, c.status);
				return 1;
			}
			return 0;
		}
	}
	return HOMI_E_TIMEOUT;
}

int main(int argc, char **argv)
{
	const char *dev = argc > 1 ? argv[1] : "/dev/nvme0";
	uint64_t lba = argc > 2 ? strtoull(argv[2], NULL, 0) : 16384;
	char ctrl_path[64];
	uint32_t nsid = 1;
	homi_ctrl *c = NULL;
	homi_qpair *q = NULL;
	homi_buf *out = NULL, *back = NULL;
	struct homi_ctrl_info info;
	struct homi_ns_info ns;
	void *mem = NULL;
	int rc, status = 1;

	/* A namespace block device names its controller and NSID. */
	if (strncmp(dev, "/dev/nvme", 9) == 0 && strchr(dev + 9, 'n') != NULL) {
		rc = homi_ns_resolve(dev, ctrl_path, sizeof(ctrl_path), &nsid);
		if (rc)
			return die("homi_ns_resolve", rc);
		printf("%s is namespace %u of %s\n", dev, nsid, ctrl_path);
		dev = ctrl_path;
	}
	rc = homi_ctrl_open(dev, &c);
	if (rc)
		return die("homi_ctrl_open", rc);
	if ((rc = homi_ctrl_info(c, &info)) || (rc = homi_ns_info(c, nsid, &ns))) {
		die("info", rc);
		goto out;
	}
	printf("%s: nvme driver uses qids 1..%u, %u spare for homi; nsid %u: %llu blocks of %u bytes\n", dev,
	       info.driver_io_queues, info.spare_free, nsid, (unsigned long long)ns.nblocks, ns.lba_size);
	if ((rc = homi_qpair_create(c, 32, &q))) {
		die("homi_qpair_create", rc);
		goto out;
	}
	if (posix_memalign(&mem, 4096, LEN)) {
		fprintf(stderr, "readwrite: out of memory\n");
		goto out;
	}
	memset(mem, 0, LEN);
	if ((rc = homi_buf_alloc(c, LEN, &out)) || (rc = homi_buf_register(c, mem, LEN, &back))) {
		die("buffers", rc);
		goto out;
	}
	{
		uint8_t *p = homi_buf_ptr(out);
		/* One command moves at most homi_qpair_max_transfer() bytes, whole blocks. */
		uint32_t max = homi_qpair_max_transfer(q);
		uint32_t len = (max < LEN ? max : LEN) / ns.lba_size * ns.lba_size;
		uint32_t blocks = len / ns.lba_size;
		uint32_t i;

		if (blocks == 0) {
			fprintf(stderr, "readwrite: max transfer %u is below the LBA size %u\n", max, ns.lba_size);
			goto out;
		}
		for (i = 0; i < len; i++)
			p[i] = (uint8_t)(i * 7 + i / 4096);
		if ((rc = homi_submit_write(q, nsid, lba, blocks, out, 0, len, 1)) || (rc = wait_for(q, 1))) {
			die("write", rc);
			goto out;
		}
		if ((rc = homi_submit_read(q, nsid, lba, blocks, back, 0, len, 2)) || (rc = wait_for(q, 2))) {
			die("read", rc);
			goto out;
		}
		if (memcmp(p, mem, len) != 0) {
			fprintf(stderr, "readwrite: read back different data\n");
			goto out;
		}
		printf("qid %u: wrote %u KiB at LBA %llu from module memory, read it back into registered memory: "
		       "identical\n",
		       homi_qpair_qid(q), len / 1024, (unsigned long long)lba);
	}
	status = 0;
out:
	homi_buf_free(out);
	homi_buf_free(back);
	homi_qpair_destroy(q);
	homi_ctrl_close(c);
	free(mem);
	return status;
}
