// SPDX-License-Identifier: MIT OR Apache-2.0
//
// homi.cuh: device-initiated NVMe I/O on homi queue pairs, from any CUDA thread.
//
// The host side (Rust, `homi::gpu`) creates the queues, places their rings, maps the
// doorbells into the GPU and fills one `struct homi_queue` per queue in GPU memory.
// Kernels include this header (NVRTC: `homi::gpu::Gpu::compile`) and call
//
//     int st = homi_read(q, nsid, lba, nblocks, mem, dst);
//     int st = homi_write(q, nsid, lba, nblocks, mem, src);
//
// from any number of threads at once. The call returns when the command completed:
// 0 on success, the NVMe status (Status Code Type << 8 | Status Code) on an error
// completion, or a negative HOMI_GPU_* error. Once a queue reports a negative error
// (reset, unbind, timeout, corruption) it stays broken for every caller: the host
// destroys or rearms it.
//
// How a command goes out (one queue, many threads):
//   1. Tickets: the threads of a warp that target the same queue take consecutive
//      tickets with one atomic. Ticket t uses SQ slot t % depth and command id
//      t % depth, so a completion names its slot.
//   2. Room: slot t % depth must be free (its previous command was reaped and its
//      thread let it go) and ticket t - depth + 1 must have completed, so the SQ
//      never holds depth entries and at most depth - 1 commands are in flight (the CQ
//      cannot overflow).
//   3. The thread writes its 64-byte entry (PRP list, if any, in the queue's own
//      list pages), then marks the slot ready with a release store.
//   4. In-order publication: whoever holds the SQ lock moves the published tail over
//      every consecutive ready slot and rings the doorbell once for all of them.
//   5. Completions: whoever holds the CQ lock reaps every new entry by phase tag,
//      stores each status in its slot, marks the slot completed, and writes the CQ
//      head doorbell once per batch. Each thread waits on its own slot.
//
// Memory ordering: ring and PRP stores are made visible system-wide
// (`fence.sc.sys`) before the doorbell store; doorbells are stored with
// `st.mmio.relaxed.sys`, as the PTX ISA prescribes for MMIO (not `volatile`). With
// shadow doorbells the new value goes to the shadow slot, a system fence follows, and
// the MMIO register is written only when the event index asks for it.

#ifndef HOMI_CUH
#define HOMI_CUH

#include "homi_layout.cuh"

// Negative results of the device calls.
#define HOMI_GPU_TIMEOUT (-1)  // no completion within the queue's timeout
#define HOMI_GPU_DEAD (-2)     // the queue was destroyed (reset, unbind) or stopped
#define HOMI_GPU_INVALID (-3)  // bad arguments: nothing was submitted
#define HOMI_GPU_CORRUPT (-4)  // a completion named a command not in flight
#define HOMI_GPU_REVOKED (-5)  // the file map is not live: nothing more was submitted on it

// `struct homi_queue::flags`
#define HOMI_GPU_MMIO_DOORBELLS 1u  // doorbells are MMIO registers (st.mmio)

// Memory the controller can reach, as the GPU addresses it: `len` bytes at `base`,
// whose 4096-byte page i the controller sees at `pages[i]`.
struct homi_dma {
    unsigned char *base;
    const unsigned long long *pages;
    unsigned long long len;
};

// One queue pair. The host fills the first part and zeroes the engine's state; the
// layout is shared with `homi::gpu::QueueDesc` (Rust), field for field.
struct homi_queue {
    unsigned char *sq;              // depth 64-byte entries
    unsigned char *cq;              // depth 16-byte entries
    unsigned int *sq_db;            // SQ tail doorbell
    unsigned int *cq_db;            // CQ head doorbell
    unsigned int *sq_shadow;        // shadow slots, or null
    unsigned int *cq_shadow;
    const unsigned int *sq_eventidx;  // event index slots, or null
    const unsigned int *cq_eventidx;
    const unsigned int *state;      // HOMI_QUEUE_* of the queue (status page), or null
    unsigned long long *prp_lists;  // depth pages of PRP list entries (GPU address)
    const unsigned long long *prp_lists_dma;  // per slot: its page as the controller sees it
    unsigned int *turn;             // per slot: 2r free for round r, 2r+1 completed
    unsigned int *ready;            // per slot: ticket + 1 once its entry is written
    unsigned int *status;           // per slot: the completion's status field
    unsigned int depth;
    unsigned int qid;
    unsigned int flags;             // HOMI_GPU_*
    unsigned int max_transfer;      // bytes
    unsigned int lba_shift;         // log2 of the namespace's block size
    unsigned int reserved;
    unsigned long long timeout_ns;  // per wait
    // Engine state, zero at start.
    unsigned long long sq_ticket;     // next ticket
    unsigned long long sq_published;  // tickets published to the controller
    unsigned int sq_lock;
    unsigned int cq_lock;
    unsigned int cq_head;
    unsigned int cq_phase;          // the phase tag of entries not yet reaped, xor 1
    int error;                      // sticky negative HOMI_GPU_* once broken
    unsigned int pad;
};
static_assert(sizeof(struct homi_queue) == 184, "struct homi_queue is shared with homi::gpu::QueueDesc");
static_assert(sizeof(struct homi_dma) == 24, "struct homi_dma is shared with homi::gpu::GpuBuffer");

// ---- memory access helpers ----------------------------------------------------

__device__ __forceinline__ unsigned long long homi_globaltimer() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

__device__ __forceinline__ void homi_mmio_store(unsigned int *reg, unsigned int v) {
    asm volatile("st.mmio.relaxed.sys.global.u32 [%0], %1;" ::"l"(reg), "r"(v) : "memory");
}

__device__ __forceinline__ void homi_store_sys(unsigned int *p, unsigned int v) {
    asm volatile("st.relaxed.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

__device__ __forceinline__ unsigned int homi_load_sys(const unsigned int *p) {
    unsigned int v;
    asm volatile("ld.relaxed.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ unsigned int homi_load_acquire(const unsigned int *p) {
    unsigned int v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ unsigned long long homi_load_acquire64(const unsigned long long *p) {
    unsigned long long v;
    asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ void homi_store_release(unsigned int *p, unsigned int v) {
    asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

__device__ __forceinline__ void homi_store_release64(unsigned long long *p, unsigned long long v) {
    asm volatile("st.release.gpu.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

__device__ __forceinline__ bool homi_try_lock(unsigned int *lock) {
    if (homi_load_sys(lock) != 0)
        return false;
    if (atomicCAS(lock, 0u, 1u) != 0)
        return false;
    __threadfence();
    return true;
}

__device__ __forceinline__ void homi_unlock(unsigned int *lock) {
    homi_store_release(lock, 0u);
}

// NVMe's shadow doorbell rule: whether moving from `old` to `v` passed `ei`.
__device__ __forceinline__ bool homi_need_event(unsigned int ei, unsigned int v, unsigned int old) {
    return (unsigned short)(v - ei - 1) < (unsigned short)(v - old);
}

// Publishes `v` on a doorbell; stores to rings must be visible system-wide already.
__device__ __forceinline__ void homi_doorbell(const struct homi_queue *q, unsigned int *db, unsigned int *shadow,
                                              const unsigned int *ei, unsigned int v, unsigned int old) {
    if (shadow) {
        homi_store_sys(shadow, v);
        __threadfence_system();
        if (!homi_need_event(homi_load_sys(ei), v, old))
            return;
    }
    if (q->flags & HOMI_GPU_MMIO_DOORBELLS)
        homi_mmio_store(db, v);
    else
        homi_store_sys(db, v);
}

// ---- queue state ----------------------------------------------------------------

__device__ __forceinline__ int homi_fail(struct homi_queue *q, int err) {
    atomicCAS(&q->error, 0, err);
    return *(volatile int *)&q->error;
}

// The queue's error, looking at the status page now and then.
__device__ __forceinline__ int homi_broken(struct homi_queue *q, unsigned int spins) {
    int e = *(volatile int *)&q->error;
    if (e)
        return e;
    if (q->state && (spins & 63) == 63 && homi_load_sys(q->state) != HOMI_QUEUE_LIVE)
        return homi_fail(q, HOMI_GPU_DEAD);
    return 0;
}

// Entries the reaper and the publisher look at per round of loads: their loads are
// issued together, so a batch costs about one memory latency rather than one each.
#define HOMI_SCAN 8u

__device__ __forceinline__ void homi_release_add(unsigned int *p, unsigned int v) {
    asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

// Reaps every completion there is, if no other thread is reaping.
__device__ void homi_reap(struct homi_queue *q) {
    if (!homi_try_lock(&q->cq_lock))
        return;
    unsigned int depth = q->depth;
    unsigned int old = *(volatile unsigned int *)&q->cq_head;
    unsigned int head = old;
    unsigned int phase = *(volatile unsigned int *)&q->cq_phase ^ 1u;
    for (;;) {
        // Command id, phase tag and status arrive in one dword: one load sees them
        // together.
        unsigned int dw3[HOMI_SCAN];
#pragma unroll
        for (unsigned int i = 0; i < HOMI_SCAN; i++) {
            unsigned int at = head + i >= depth ? head + i - depth : head + i;
            dw3[i] = homi_load_sys((const unsigned int *)(q->cq + 16u * at + 12u));
        }
        unsigned int n = 0;
#pragma unroll
        for (unsigned int i = 0; i < HOMI_SCAN; i++) {
            unsigned int p = head + i >= depth ? phase ^ 1u : phase;
            if (n != i || ((dw3[i] >> 16) & 1u) != p)
                continue;
            unsigned int cid = dw3[i] & 0xffffu;
            if (cid >= depth) {
                homi_fail(q, HOMI_GPU_CORRUPT);
                break;
            }
            q->status[cid] = dw3[i] >> 17;
            homi_release_add(&q->turn[cid], 1u);  // odd: completed, status visible
            n++;
        }
        head += n;
        if (head >= depth) {
            head -= depth;
            phase ^= 1u;
        }
        if (n < HOMI_SCAN)
            break;
    }
    if (head != old) {
        *(volatile unsigned int *)&q->cq_head = head;
        *(volatile unsigned int *)&q->cq_phase = phase ^ 1u;
        homi_doorbell(q, q->cq_db, q->cq_shadow, q->cq_eventidx, head, old);
    }
    homi_unlock(&q->cq_lock);
}

// Moves the published SQ tail over every consecutive ready entry, with one doorbell.
__device__ void homi_publish(struct homi_queue *q) {
    if (!homi_try_lock(&q->sq_lock))
        return;
    unsigned int depth = q->depth;
    unsigned long long from = *(volatile unsigned long long *)&q->sq_published;
    unsigned long long to = from;
    for (;;) {
        unsigned int r[HOMI_SCAN];
#pragma unroll
        for (unsigned int i = 0; i < HOMI_SCAN; i++)
            r[i] = homi_load_sys(&q->ready[(to + i) % depth]);
        unsigned int n = 0;
#pragma unroll
        for (unsigned int i = 0; i < HOMI_SCAN; i++)
            n += (n == i && r[i] == (unsigned int)(to + i + 1));
        to += n;
        if (n < HOMI_SCAN)
            break;
    }
    if (to != from) {
        // Orders the entries, whose ready marks were seen above, before the doorbell.
        __threadfence_system();
        homi_doorbell(q, q->sq_db, q->sq_shadow, q->sq_eventidx, (unsigned int)(to % depth),
                      (unsigned int)(from % depth));
        homi_store_release64(&q->sq_published, to);
    }
    homi_unlock(&q->sq_lock);
}

// A thread that found nothing to do yields its warp's issue slots for a moment, so
// that the lanes of its warp that hold a lock (divergent paths) run.
__device__ __forceinline__ void homi_backoff(unsigned int spins) {
    __nanosleep(spins < 64u ? 32u : 256u);
}

// ---- commands -------------------------------------------------------------------

// Fills the PRP entries for `len` bytes at `off` of `mem`; returns false when the
// range does not fit the memory or one PRP list page. The list, if any, goes to
// the slot's own list page.
__device__ __forceinline__ bool homi_prps(const struct homi_queue *q, const struct homi_dma *mem,
                                          unsigned long long off, unsigned int len, unsigned int slot,
                                          unsigned long long *prp1, unsigned long long *prp2) {
    if (len == 0 || off >= mem->len || len > mem->len - off || (off & 3u))
        return false;
    unsigned long long page = off / HOMI_PAGE;
    unsigned int in_page = (unsigned int)(off % HOMI_PAGE);
    *prp1 = mem->pages[page] + in_page;
    unsigned int first = HOMI_PAGE - in_page;
    if (len <= first) {
        *prp2 = 0;
        return true;
    }
    unsigned int rest = len - first;
    unsigned int more = (rest + HOMI_PAGE - 1) / HOMI_PAGE;
    if (more == 1) {
        *prp2 = mem->pages[page + 1];
        return true;
    }
    if (more > HOMI_PRP_LIST_ENTRIES)
        return false;
    unsigned long long *list = q->prp_lists + (unsigned long long)slot * HOMI_PRP_LIST_ENTRIES;
    for (unsigned int i = 0; i < more; i++)
        list[i] = mem->pages[page + 1 + i];
    *prp2 = q->prp_lists_dma[slot];
    return true;
}

// One round of a wait by the peers of a warp: the leader reaps, and finds whether the
// queue broke or the wait timed out; every peer learns the verdict (0 to go on).
__device__ __forceinline__ int homi_wait_round(struct homi_queue *q, bool lead, unsigned int peers, int leader,
                                               unsigned int *spins, unsigned long long deadline) {
    int e = 0;
    ++*spins;
    if (lead) {
        homi_reap(q);
        e = homi_broken(q, *spins);
        if (!e && (*spins & 255u) == 0 && homi_globaltimer() > deadline)
            e = homi_fail(q, HOMI_GPU_TIMEOUT);
    }
    return __shfl_sync(peers, e, leader);
}

// Submits one command and waits for it. `cdw` are command dwords 10..15.
//
// The threads of a warp that name the same queue at once (its "peers") go through
// every step together: one atomic takes their tickets, and in each wait they stay
// converged (`__all_sync`) while one of them, the leader, does the queue's shared
// work (publishing, reaping). No lane spins on a lock another lane of its warp holds.
__device__ int homi_io(struct homi_queue *q, unsigned int opcode, unsigned int nsid, const unsigned int cdw[6],
                       const struct homi_dma *mem, unsigned long long off, unsigned int len) {
    unsigned int peers = __match_any_sync(__activemask(), (unsigned long long)q);
    unsigned int lane = threadIdx.x & 31u;
    int leader = __ffs(peers) - 1;
    bool lead = (int)lane == leader;
    // Bad sizes are refused before a ticket is taken, by each lane for itself; the
    // others go on as peers.
    bool sized = len <= q->max_transfer;
    peers = __ballot_sync(peers, sized);
    if (!sized)
        return HOMI_GPU_INVALID;
    leader = __ffs(peers) - 1;
    lead = (int)lane == leader;
    int e = 0;
    if (lead)
        e = homi_broken(q, 0);
    e = __shfl_sync(peers, e, leader);
    if (e)
        return e;
    unsigned long long base = 0;
    if (lead)
        base = atomicAdd(&q->sq_ticket, (unsigned long long)__popc(peers));
    unsigned long long t = __shfl_sync(peers, base, leader) + __popc(peers & ((1u << lane) - 1u));
    unsigned int depth = q->depth;
    unsigned int slot = (unsigned int)(t % depth);
    unsigned int round = (unsigned int)(t / depth);
    unsigned long long deadline = homi_globaltimer() + q->timeout_ns;
    // Room: our slot free, and ticket t - depth + 1 completed.
    unsigned int spins = 0;
    for (;;) {
        bool free = homi_load_acquire(&q->turn[slot]) == 2u * round;
        bool room = t + 1 < depth ||
                    homi_load_acquire(&q->turn[(t + 1) % depth]) + 1u >= 2u * (unsigned int)((t + 1) / depth);
        if (__all_sync(peers, free && room))
            break;
        if ((e = homi_wait_round(q, lead, peers, leader, &spins, deadline)))
            return e;
        homi_backoff(spins);
    }
    unsigned long long prp1 = 0, prp2 = 0;
    bool ok = mem == 0 || homi_prps(q, mem, off, len, slot, &prp1, &prp2);
    // A ticket must be published even when its arguments are bad: send a Flush of
    // namespace 0 instead (refused by the controller, it touches nothing), and report
    // the arguments.
    unsigned int op = ok ? opcode : HOMI_OPC_FLUSH;
    uint4 *sqe = (uint4 *)(q->sq + 64u * slot);
    sqe[0] = make_uint4(op | (slot << 16), ok ? nsid : 0u, 0, 0);
    sqe[1] = make_uint4(0, 0, (unsigned int)prp1, (unsigned int)(prp1 >> 32));
    sqe[2] = ok ? make_uint4((unsigned int)prp2, (unsigned int)(prp2 >> 32), cdw[0], cdw[1])
                : make_uint4(0, 0, 0, 0);
    sqe[3] = ok ? make_uint4(cdw[2], cdw[3], cdw[4], cdw[5]) : make_uint4(0, 0, 0, 0);
    __threadfence();
    homi_store_release(&q->ready[slot], (unsigned int)(t + 1));
    __syncwarp(peers);
    spins = 0;
    for (;;) {
        if (lead)
            homi_publish(q);
        if (__all_sync(peers, homi_load_acquire64(&q->sq_published) > t))
            break;
        if (lead)
            e = homi_broken(q, ++spins);
        if ((e = __shfl_sync(peers, e, leader)))
            return e;
        homi_backoff(spins);
    }
    deadline = homi_globaltimer() + q->timeout_ns;
    spins = 0;
    for (;;) {
        if (__all_sync(peers, homi_load_acquire(&q->turn[slot]) == 2u * round + 1u))
            break;
        if ((e = homi_wait_round(q, lead, peers, leader, &spins, deadline)))
            return e;
        if (__all_sync(peers, homi_load_acquire(&q->turn[slot]) == 2u * round + 1u))
            break;
        homi_backoff(spins);
    }
    unsigned int status = *(volatile unsigned int *)&q->status[slot];
    homi_store_release(&q->turn[slot], 2u * round + 2u);
    if (!ok)
        return HOMI_GPU_INVALID;
    return (int)(status & 0x7ffu);  // SCT << 8 | SC
}

// Reads `nblocks` blocks at `lba` of namespace `nsid` into `dst`, inside `mem`.
__device__ __forceinline__ int homi_read(struct homi_queue *q, unsigned int nsid, unsigned long long lba,
                                         unsigned int nblocks, const struct homi_dma *mem, void *dst) {
    if (nblocks == 0 || nblocks > 65536u)
        return HOMI_GPU_INVALID;
    unsigned long long off = (unsigned long long)((unsigned char *)dst - mem->base);
    unsigned int cdw[6] = {(unsigned int)lba, (unsigned int)(lba >> 32), nblocks - 1u, 0, 0, 0};
    return homi_io(q, HOMI_OPC_READ, nsid, cdw, mem, off, nblocks << q->lba_shift);
}

// Writes `nblocks` blocks at `lba` of namespace `nsid` from `src`, inside `mem`.
__device__ __forceinline__ int homi_write(struct homi_queue *q, unsigned int nsid, unsigned long long lba,
                                          unsigned int nblocks, const struct homi_dma *mem, const void *src) {
    if (nblocks == 0 || nblocks > 65536u)
        return HOMI_GPU_INVALID;
    unsigned long long off = (unsigned long long)((const unsigned char *)src - mem->base);
    unsigned int cdw[6] = {(unsigned int)lba, (unsigned int)(lba >> 32), nblocks - 1u, 0, 0, 0};
    return homi_io(q, HOMI_OPC_WRITE, nsid, cdw, mem, off, nblocks << q->lba_shift);
}

// A Flush of namespace `nsid`.
__device__ __forceinline__ int homi_flush(struct homi_queue *q, unsigned int nsid) {
    unsigned int cdw[6] = {0, 0, 0, 0, 0, 0};
    return homi_io(q, HOMI_OPC_FLUSH, nsid, cdw, 0, 0, 0);
}

// ---- file maps ------------------------------------------------------------------
//
// A file map is the extent table HOMI_IOCTL_MAP_FILE returned for a byte range of a
// file, copied to GPU memory by `homi::gpu::DeviceFileMap`, plus the map's
// HOMI_MAP_* state word. Threads read file offsets with
//
//     int st = homi_read_file(q, map, off, len, mem, dst);
//
// which splits the range at extent boundaries: mapped pieces become Reads on `q`,
// holes and unwritten pieces are zeroed in `dst` here, and bytes past the file's size
// read as zeros.
//
// Revocation: before each piece the thread loads the state word with acquire
// ordering at system scope; anything but HOMI_MAP_LIVE ends the call with
// HOMI_GPU_REVOKED, and nothing more is submitted for it. A piece checked just before
// the module revoked the map may still be submitted: the holder waits for its kernels
// (or their calls) to end before it acknowledges with HOMI_IOCTL_UNMAP_FILE, which
// the file system operation that broke the lease waits for.
//
// The state word the GPU reads is a pinned host word that the host side keeps equal
// to the module's (see `homi::gpu::DeviceFileMap` for why and for the delay), so the
// GPU learns of a revocation within the host's poll period plus one bus read.

// One extent, as the module returns it (`homi_uapi::HomiExtent`, field for field).
struct homi_extent {
    unsigned long long file_offset;  // bytes
    unsigned long long lba;          // first LBA, partition offset added; 0 for a hole
    unsigned long long blocks;       // logical blocks
    unsigned int nsid;
    unsigned int kind;               // HOMI_EXTENT_*
};

// A file map as kernels see it (`homi::gpu::FileMapDesc`, field for field). The host
// checked the table: file order, no gaps, offsets and lengths whole blocks, known kinds.
struct homi_file_map {
    const struct homi_extent *extents;
    unsigned long long count;
    const unsigned int *state;       // HOMI_MAP_* (host memory mapped into the GPU)
    unsigned long long start;        // extents[0].file_offset
    unsigned long long end;          // where the last extent ends
    unsigned long long file_size;    // bytes from here on read as zeros
    unsigned int lba_shift;          // log2 of the namespace's block size
    unsigned int reserved;
};
static_assert(sizeof(struct homi_extent) == 32, "struct homi_extent is shared with homi_uapi::HomiExtent");
static_assert(sizeof(struct homi_file_map) == 56, "struct homi_file_map is shared with homi::gpu::FileMapDesc");

// The map's HOMI_MAP_* state now.
__device__ __forceinline__ unsigned int homi_map_state(const struct homi_file_map *m) {
    unsigned int v;
    asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(m->state) : "memory");
    return v;
}

// The index of the extent that holds file byte `off`, or m->count if none does.
__device__ __forceinline__ unsigned long long homi_map_find(const struct homi_file_map *m, unsigned long long off) {
    if (off < m->start || off >= m->end)
        return m->count;
    // extents[lo].file_offset <= off < extents[hi].file_offset (or m->end).
    unsigned long long lo = 0, hi = m->count;
    while (hi - lo > 1) {
        unsigned long long mid = lo + (hi - lo) / 2;
        if (m->extents[mid].file_offset <= off)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

// Zeroes `n` bytes at `p`, 16 bytes a store where it can.
__device__ __forceinline__ void homi_zero(unsigned char *p, unsigned long long n) {
    while (n && ((unsigned long long)p & 15u)) {
        *p++ = 0;
        n--;
    }
    uint4 *w = (uint4 *)p;
    for (unsigned long long i = 0; i < n / 16; i++)
        w[i] = make_uint4(0, 0, 0, 0);
    for (unsigned long long o = n & ~15ull; o < n; o++)
        p[o] = 0;
}

// The most bytes one Read of a file map moves into buffer offset `mo`: the queue's
// largest transfer, no more than one PRP list page holds where `mo` is not
// page-aligned, whole blocks, and at most 65536 of them. `homi::gpu::ExtentTable::plan`
// applies the same rule on the host.
__device__ __forceinline__ unsigned long long homi_file_chunk(const struct homi_queue *q, unsigned int lba_shift,
                                                              unsigned long long mo) {
    unsigned long long c = q->max_transfer;
    if (mo % HOMI_PAGE && c > (unsigned long long)HOMI_PRP_LIST_ENTRIES * HOMI_PAGE)
        c = (unsigned long long)HOMI_PRP_LIST_ENTRIES * HOMI_PAGE;
    c = min(c, 65536ull << lba_shift);
    return c & ~((1ull << lba_shift) - 1ull);
}

// Reads `len` bytes at file offset `off` through map `m` into `dst` (inside `mem`),
// with Reads on `q`, whose namespace block size must be the map's. `off` and `len` are
// whole blocks inside the map, `dst` is 4-aligned. Returns 0, the NVMe status of a
// failed Read, HOMI_GPU_REVOKED once the map is not live, or another negative
// HOMI_GPU_*; on an error the pieces before it are in `dst` and nothing after it was
// submitted.
__device__ int homi_read_file(struct homi_queue *q, const struct homi_file_map *m, unsigned long long off,
                              unsigned long long len, const struct homi_dma *mem, void *dst) {
    unsigned int shift = m->lba_shift;
    unsigned long long bs = 1ull << shift;
    unsigned char *d = (unsigned char *)dst;
    unsigned long long mo = (unsigned long long)(d - mem->base);
    if (shift != q->lba_shift || len == 0 || ((off | len) & (bs - 1ull)) || off < m->start || off > m->end ||
        len > m->end - off || d < mem->base || mo > mem->len || len > mem->len - mo || (mo & 3u))
        return HOMI_GPU_INVALID;
    unsigned long long i = homi_map_find(m, off);
    unsigned long long at = off, stop = off + len;
    while (at < stop) {
        if (i >= m->count)
            return HOMI_GPU_INVALID;
        const struct homi_extent e = m->extents[i++];
        unsigned long long piece_end = min(e.file_offset + (e.blocks << shift), stop);
        if (e.kind == HOMI_EXTENT_HOLE || e.kind == HOMI_EXTENT_UNWRITTEN) {
            if (homi_map_state(m) != HOMI_MAP_LIVE)
                return HOMI_GPU_REVOKED;
            homi_zero(d + (at - off), piece_end - at);
            at = piece_end;
            continue;
        }
        if (e.kind != HOMI_EXTENT_MAPPED)
            return HOMI_GPU_INVALID;
        while (at < piece_end) {
            unsigned long long n = min(piece_end - at, homi_file_chunk(q, shift, mo + (at - off)));
            if (homi_map_state(m) != HOMI_MAP_LIVE)
                return HOMI_GPU_REVOKED;
            unsigned char *p = d + (at - off);
            int st = homi_read(q, e.nsid, e.lba + ((at - e.file_offset) >> shift), (unsigned int)(n >> shift), mem, p);
            if (st)
                return st;
            if (at + n > m->file_size) {
                unsigned long long from = max(at, m->file_size);
                homi_zero(p + (from - at), at + n - from);
            }
            at += n;
        }
    }
    return 0;
}

#endif  // HOMI_CUH
