// SPDX-License-Identifier: MIT OR Apache-2.0
//
// GPU threads reading file offsets through a file map (homi_read_file), for checks:
// one request per thread, or the same request over and over until the map stops
// being live.

#include <homi.cuh>

// One thread's request: `len` bytes at file offset `off` into byte `dst` of the buffer.
struct homi_file_req {
    unsigned long long off;
    unsigned long long len;
    unsigned long long dst;
};

__device__ __forceinline__ struct homi_queue *file_queue(struct homi_queue *qs, unsigned int nq, unsigned int t) {
    return &qs[(t / 32u) % nq];
}

// results[t]: what request t returned.
extern "C" __global__ void homi_file_read(struct homi_queue *qs, unsigned int nq, const struct homi_file_map *m,
                                          const struct homi_dma *mem, const struct homi_file_req *reqs,
                                          unsigned int n, int *results) {
    unsigned int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n)
        return;
    struct homi_file_req r = reqs[t];
    results[t] = homi_read_file(file_queue(qs, nq, t), m, r.off, r.len, mem, mem->base + r.dst);
}

// Each thread repeats its request until a call fails or `max_calls` succeeded:
// results[t] is the failure (0 if none), calls[t] the calls that succeeded. The first
// thread refused as revoked stores 1 in `seen` (host memory), so the host can time
// how long a revocation takes to reach the GPU.
extern "C" __global__ void homi_file_read_loop(struct homi_queue *qs, unsigned int nq, const struct homi_file_map *m,
                                               const struct homi_dma *mem, const struct homi_file_req *reqs,
                                               unsigned int n, int *results, unsigned long long *calls,
                                               unsigned int *seen, unsigned long long max_calls) {
    unsigned int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n)
        return;
    struct homi_file_req r = reqs[t];
    unsigned long long ok = 0;
    int st = 0;
    while (ok < max_calls) {
        st = homi_read_file(file_queue(qs, nq, t), m, r.off, r.len, mem, mem->base + r.dst);
        if (st)
            break;
        ok++;
    }
    if (st == HOMI_GPU_REVOKED)
        asm volatile("st.relaxed.sys.global.u32 [%0], %1;" ::"l"(seen), "r"(1u) : "memory");
    results[t] = st;
    calls[t] = ok;
}
