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

// One command's fields, as a lane loaded them from its SQ entry.
struct gctl_cmd {
    unsigned int dw0, nsid, nlb;
    unsigned long long slba, prp1, prp2;
};

__device__ __forceinline__ uint4 gctl_load16(const unsigned char *p) {
    uint4 v;
    asm volatile("ld.relaxed.gpu.global.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p)
                 : "memory");
    return v;
}

__device__ __forceinline__ struct gctl_cmd gctl_load_cmd(const unsigned char *sqe) {
    uint4 a = gctl_load16(sqe);
    uint4 c = gctl_load16(sqe + 16);
    uint4 d = gctl_load16(sqe + 32);
    uint4 e = gctl_load16(sqe + 48);
    struct gctl_cmd m;
    m.dw0 = a.x;
    m.nsid = a.y;
    m.prp1 = c.z | ((unsigned long long)c.w << 32);
    m.prp2 = d.x | ((unsigned long long)d.y << 32);
    m.slba = d.z | ((unsigned long long)d.w << 32);
    m.nlb = (e.x & 0xffffu) + 1u;
    return m;
}

// The status of a command before any data moves.
__device__ __forceinline__ unsigned int gctl_check(const struct homi_gctl_queue *q, const struct gctl_cmd *m) {
    unsigned int opc = m->dw0 & 0xffu;
    if (opc != HOMI_OPC_READ && opc != HOMI_OPC_WRITE)
        return 0;
    if (m->nsid != 1u)
        return GCTL_INVALID_NS;
    if (m->slba + m->nlb > q->blocks)
        return GCTL_LBA_RANGE;
    return 0;
}

// Moves one command's data in pattern mode, the whole warp together (every lane
// passes the same command); returns its status.
__device__ unsigned int gctl_data(const struct homi_gctl_queue *q, const struct gctl_cmd *m,
                                  unsigned long long *mismatches) {
    unsigned int lane = threadIdx.x & 31u;
    unsigned int opc = m->dw0 & 0xffu;
    unsigned int len = m->nlb << q->lba_shift;
    unsigned long long ns_off = m->slba << q->lba_shift;
    unsigned int bad = 0;
    for (unsigned int o = 8u * lane; o < len; o += 8u * 32u) {
        unsigned long long *p = (unsigned long long *)gctl_addr(m->prp1, m->prp2, len, o);
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
        // A destroyed queue (as by a reset) is served no more.
        if (avail == 0 || tail >= depth || gctl_load(q->state) != HOMI_QUEUE_LIVE) {
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
        // Each lane loads and checks its own command; in pattern mode the warp then
        // moves each command's data together. Completions follow a fence, so data is
        // visible before any phase tag.
        struct gctl_cmd m = {};
        unsigned int my_status = 0, my_cid = 0;
        if (lane < n) {
            m = gctl_load_cmd(q->sq + 64u * ((sq_head + lane) % depth));
            my_status = gctl_check(q, &m);
            my_cid = m.dw0 >> 16;
        }
        if (q->pattern) {
            for (unsigned int i = 0; i < n; i++) {
                struct gctl_cmd c;
                c.dw0 = __shfl_sync(0xffffffffu, m.dw0, i);
                c.nlb = __shfl_sync(0xffffffffu, m.nlb, i);
                c.slba = __shfl_sync(0xffffffffu, m.slba, i);
                c.prp1 = __shfl_sync(0xffffffffu, m.prp1, i);
                c.prp2 = __shfl_sync(0xffffffffu, m.prp2, i);
                unsigned int st = __shfl_sync(0xffffffffu, my_status, i);
                unsigned int opc = c.dw0 & 0xffu;
                if (st == 0 && (opc == HOMI_OPC_READ || opc == HOMI_OPC_WRITE)) {
                    st = gctl_data(q, &c, &q->mismatches);
                    if (lane == i)
                        my_status = st;
                }
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
