// SPDX-License-Identifier: MIT OR Apache-2.0
//
// A GPU-resident NVMe controller: **a test instrument, not a device.** One warp per
// queue consumes SQ entries from GPU memory and posts completions, so the device
// engine (homi.cuh) can be measured without a bus or a drive in the way (null mode),
// or checked end to end (pattern mode).
//
// "Controller addresses" are GPU addresses here. In pattern mode a Read fills its
// PRPs with homi_pattern() of the bytes' namespace offsets, and a Write compares its
// data with the same pattern and completes with Compare Failure (SCT 2, SC 0x85)
// where it differs. Other opcodes complete successfully without data.
//
// The host launches homi_gctl_serve with one warp per queue before any kernel that
// submits, and stops it through the mapped `stop` word.

#include "homi_layout.cuh"
#include "homi_pattern.cuh"

struct homi_gctl_queue {
    unsigned char *sq;
    unsigned char *cq;
    unsigned int *sq_db;
    unsigned int *cq_db;
    unsigned int *state;            // HOMI_QUEUE_* the engine reads
    unsigned int depth;
    unsigned int qid;
    unsigned int pattern;           // 0: null mode, 1: pattern mode
    unsigned int lba_shift;
    unsigned long long blocks;      // namespace 1's size in blocks
    unsigned long long commands;    // out: commands served
    unsigned long long mismatches;  // out: Write data that differed from the pattern
};
static_assert(sizeof(struct homi_gctl_queue) == 80, "shared with homi_instruments::gpu_ctrl");

#define GCTL_COMPARE_FAILURE ((2u << 8) | 0x85u)
#define GCTL_LBA_RANGE 0x80u
#define GCTL_INVALID_NS 0x0bu

__device__ __forceinline__ unsigned int gctl_load(const unsigned int *p) {
    unsigned int v;
    asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

// The GPU address of byte `o` of a transfer whose PRPs are prp1 and prp2.
__device__ __forceinline__ unsigned long long gctl_addr(unsigned long long prp1, unsigned long long prp2,
                                                        unsigned int len, unsigned int o) {
    unsigned int first = HOMI_PAGE - (unsigned int)(prp1 % HOMI_PAGE);
    if (o < first)
        return prp1 + o;
    unsigned int rest = len - first;
    unsigned int page = (o - first) / HOMI_PAGE;
    unsigned long long base = rest <= HOMI_PAGE ? prp2 : ((const unsigned long long *)prp2)[page];
    return base + (o - first) % HOMI_PAGE;
}

// Moves one command's data, the whole warp together; returns its status.
__device__ unsigned int gctl_execute(const struct homi_gctl_queue *q, const unsigned int *sqe,
                                     unsigned long long *mismatches) {
    unsigned int lane = threadIdx.x & 31u;
    unsigned int opc = sqe[0] & 0xffu;
    if (opc != HOMI_OPC_READ && opc != HOMI_OPC_WRITE)
        return 0;
    if (sqe[1] != 1u)
        return GCTL_INVALID_NS;
    unsigned long long slba = sqe[10] | ((unsigned long long)sqe[11] << 32);
    unsigned int nlb = (sqe[12] & 0xffffu) + 1u;
    if (slba + nlb > q->blocks)
        return GCTL_LBA_RANGE;
    if (!q->pattern)
        return 0;
    unsigned long long prp1 = sqe[6] | ((unsigned long long)sqe[7] << 32);
    unsigned long long prp2 = sqe[8] | ((unsigned long long)sqe[9] << 32);
    unsigned int len = nlb << q->lba_shift;
    unsigned long long ns_off = slba << q->lba_shift;
    unsigned int bad = 0;
    for (unsigned int o = 8u * lane; o < len; o += 8u * 32u) {
        unsigned long long *p = (unsigned long long *)gctl_addr(prp1, prp2, len, o);
        unsigned long long want = homi_pattern(1u, ns_off + o);
        if (opc == HOMI_OPC_READ)
            *p = want;
        else if (*p != want)
            bad++;
    }
    bad = __reduce_add_sync(0xffffffffu, bad);
    if (bad) {
        if (lane == 0)
            atomicAdd(mismatches, 1ull);
        return GCTL_COMPARE_FAILURE;
    }
    return 0;
}

extern "C" __global__ void homi_gctl_serve(struct homi_gctl_queue *qs, unsigned int nq,
                                           const volatile unsigned int *stop) {
    unsigned int w = (blockIdx.x * blockDim.x + threadIdx.x) / 32u;
    unsigned int lane = threadIdx.x & 31u;
    if (w >= nq)
        return;
    struct homi_gctl_queue *q = &qs[w];
    unsigned int depth = q->depth;
    unsigned int sq_head = 0, cq_tail = 0, phase = 1;
    unsigned long long served = 0;
    unsigned int idle = 0;
    while (true) {
        unsigned int tail = gctl_load(q->sq_db);
        unsigned int avail = (tail + depth - sq_head) % depth;
        if (avail == 0 || tail >= depth) {
            if ((++idle & 1023u) == 0 && *stop)
                break;
            continue;
        }
        idle = 0;
        unsigned int cq_head = gctl_load(q->cq_db);
        unsigned int room = (cq_head + depth - cq_tail - 1u) % depth;
        unsigned int n = min(min(avail, room), 32u);
        if (n == 0)
            continue;
        __syncwarp();
        // Data first, one command at a time with the whole warp; then the completions,
        // one lane each, after a fence so the data is visible before any phase tag.
        unsigned int my_status = 0, my_cid = 0;
        for (unsigned int i = 0; i < n; i++) {
            const unsigned int *sqe = (const unsigned int *)(q->sq + 64u * ((sq_head + i) % depth));
            unsigned int st = gctl_execute(q, sqe, &q->mismatches);
            if (lane == i) {
                my_status = st;
                my_cid = sqe[0] >> 16;
            }
        }
        __threadfence();
        if (lane < n) {
            unsigned int pos = cq_tail + lane;
            unsigned int p = pos >= depth ? phase ^ 1u : phase;
            unsigned int new_head = (sq_head + n) % depth;
            unsigned int dw2 = new_head | (q->qid << 16), dw3 = my_cid | (p << 16) | (my_status << 17);
            asm volatile("st.relaxed.gpu.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(q->cq + 16u * (pos % depth)),
                         "r"(0u), "r"(0u), "r"(dw2), "r"(dw3)
                         : "memory");
        }
        __syncwarp();
        sq_head = (sq_head + n) % depth;
        cq_tail += n;
        if (cq_tail >= depth) {
            cq_tail -= depth;
            phase ^= 1u;
        }
        served += n;
    }
    if (lane == 0)
        q->commands = served;
}

// Stops serving: every queue's state word turns DEAD, as a reset would make it.
extern "C" __global__ void homi_gctl_kill(struct homi_gctl_queue *qs, unsigned int nq) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < nq)
        atomicExch(qs[i].state, HOMI_QUEUE_DEAD);
}
