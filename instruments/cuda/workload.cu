// SPDX-License-Identifier: MIT OR Apache-2.0
//
// GPU workloads over homi.cuh for checks and benchmarks: every thread is one
// initiator with one command in flight at a time. Consecutive threads share a queue
// (threads / nq of them each), so the lanes of a warp name as few queues as they
// can: homi.cuh works best that way.

#include <homi.cuh>
#include "homi_pattern.cuh"

// counters: [0] commands ok, [1] commands failed, [2] first failure (status or
// negative HOMI_GPU_*), [3] data mismatches.
__device__ __forceinline__ struct homi_queue *pick(struct homi_queue *qs, unsigned int nq, unsigned long long t,
                                                   unsigned long long threads) {
    unsigned long long per = threads / nq ? threads / nq : 1;
    return &qs[(t / per) % nq];
}

__device__ void record(unsigned long long *counters, int st) {
    if (st == 0) {
        atomicAdd(&counters[0], 1ull);
    } else {
        atomicAdd(&counters[1], 1ull);
        atomicCAS(&counters[2], 0ull, (unsigned long long)(long long)st);
    }
}

// Fills `len` bytes of `buf` with the pattern of namespace bytes from `ns_off`.
extern "C" __global__ void homi_fill(unsigned char *buf, unsigned long long len, unsigned long long ns_off) {
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x * 8ull;
    for (unsigned long long o = (blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x) * 8ull; o < len; o += stride)
        *(unsigned long long *)(buf + o) = homi_pattern(1u, ns_off + o);
}

// Counts the 8-byte words of `buf` that differ from the pattern into counters[3].
extern "C" __global__ void homi_verify(const unsigned char *buf, unsigned long long len, unsigned long long ns_off,
                                       unsigned long long *counters) {
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x * 8ull;
    unsigned long long bad = 0;
    for (unsigned long long o = (blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x) * 8ull; o < len; o += stride)
        bad += *(const unsigned long long *)(buf + o) != homi_pattern(1u, ns_off + o);
    if (bad)
        atomicAdd(&counters[3], bad);
}

// Moves `chunks` chunks of `io` bytes between the namespace (from LBA 0) and the
// same offsets of `mem`: chunk c goes to the thread c % threads. write != 0 writes.
extern "C" __global__ void homi_transfer(struct homi_queue *qs, unsigned int nq, const struct homi_dma *mem,
                                         unsigned long long chunks, unsigned int io, unsigned int write,
                                         unsigned long long *counters) {
    unsigned long long t = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    unsigned long long threads = (unsigned long long)gridDim.x * blockDim.x;
    struct homi_queue *q = pick(qs, nq, t, threads);
    unsigned int nblocks = io >> q->lba_shift;
    for (unsigned long long c = t; c < chunks; c += threads) {
        unsigned char *at = mem->base + c * io;
        unsigned long long lba = c * nblocks;
        int st = write ? homi_write(q, 1u, lba, nblocks, mem, at) : homi_read(q, 1u, lba, nblocks, mem, at);
        record(counters, st);
        if (st < 0)
            return;
    }
}

// Benchmark: each thread issues reads of `io` bytes into its own slot of `mem` until
// `*stop` turns non-zero (or `max_ios` each), cycling over `span_blocks` blocks.
extern "C" __global__ void homi_loop(struct homi_queue *qs, unsigned int nq, const struct homi_dma *mem,
                                     unsigned int io, unsigned long long span_blocks, unsigned long long max_ios,
                                     const volatile unsigned int *stop, unsigned long long *counters) {
    unsigned long long t = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    struct homi_queue *q = pick(qs, nq, t, (unsigned long long)gridDim.x * blockDim.x);
    unsigned int nblocks = io >> q->lba_shift;
    unsigned char *at = mem->base + (t * io) % mem->len;
    unsigned long long lba = (t * nblocks) % span_blocks;
    unsigned long long ok = 0;
    for (unsigned long long i = 0; i < max_ios; i++) {
        if ((i & 15ull) == 0 && *stop)
            break;
        int st = homi_read(q, 1u, lba, nblocks, mem, at);
        if (st != 0) {
            record(counters, st);
            break;
        }
        ok++;
        lba += 7919ull * nblocks;
        if (lba + nblocks > span_blocks)
            lba %= span_blocks - nblocks + 1;
    }
    atomicAdd(&counters[0], ok);
}

// The ceiling of SQ entry stores, with no controller: each thread takes a ticket
// (warp-aggregated, as homi.cuh does), writes a 64-byte entry at ticket % depth of
// `ring` and fences system-wide, until `*stop` turns non-zero. counters[0] counts
// entries written.
extern "C" __global__ void homi_store_ceiling(unsigned char *ring, unsigned int depth, unsigned long long *ticket,
                                              const volatile unsigned int *stop, unsigned long long *counters) {
    unsigned long long n = 0;
    for (;;) {
        if ((n & 15ull) == 0 && *stop)
            break;
        unsigned int peers = __activemask();
        unsigned int lane = threadIdx.x & 31u;
        int leader = __ffs(peers) - 1;
        unsigned long long base = 0;
        if ((int)lane == leader)
            base = atomicAdd(ticket, (unsigned long long)__popc(peers));
        base = __shfl_sync(peers, base, leader);
        unsigned long long t = base + __popc(peers & ((1u << lane) - 1u));
        uint4 *sqe = (uint4 *)(ring + 64u * (unsigned int)(t % depth));
        sqe[0] = make_uint4(HOMI_OPC_READ | ((unsigned int)(t % depth) << 16), 1u, 0, 0);
        sqe[1] = make_uint4(0, 0, (unsigned int)t, (unsigned int)(t >> 32));
        sqe[2] = make_uint4(0, 0, (unsigned int)t, 0);
        sqe[3] = make_uint4(7u, 0, 0, 0);
        __threadfence_system();
        n++;
    }
    atomicAdd(&counters[0], n);
}

// The device engine's PRP rule, case by case, for comparison with the host's: case i
// asks for lens[i] bytes at offs[i] of `mem`; out[i * 516 ..] receives ok, prp1,
// prp2 and the list (up to 513 entries) from the PRP list page of slot i of `q`.
extern "C" __global__ void homi_prp_cases(struct homi_queue *q, const struct homi_dma *mem,
                                          const unsigned long long *offs, const unsigned int *lens, unsigned int n,
                                          unsigned long long *out) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    unsigned long long *o = out + (unsigned long long)i * 516u;
    unsigned long long prp1 = 0, prp2 = 0;
    bool ok = homi_prps(q, mem, offs[i], lens[i], i, &prp1, &prp2);
    o[0] = ok;
    o[1] = prp1;
    o[2] = prp2;
    unsigned int first = HOMI_PAGE - (unsigned int)(prp1 % HOMI_PAGE);
    unsigned int more = lens[i] > first ? (lens[i] - first + HOMI_PAGE - 1) / HOMI_PAGE : 0;
    if (ok && more > 1)
        for (unsigned int k = 0; k < more; k++)
            o[3 + k] = q->prp_lists[(unsigned long long)i * HOMI_PRP_LIST_ENTRIES + k];
}
