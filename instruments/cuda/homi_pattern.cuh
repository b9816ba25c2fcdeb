// SPDX-License-Identifier: MIT OR Apache-2.0
//
// The data pattern the GPU instruments and checks share: the 8-byte word at byte
// offset `off` (a multiple of 8) of namespace `nsid`. Test instruments only.

#ifndef HOMI_PATTERN_CUH
#define HOMI_PATTERN_CUH

__device__ __forceinline__ unsigned long long homi_pattern(unsigned int nsid, unsigned long long off) {
    unsigned long long x = (off >> 3) * 0x9e3779b97f4a7c15ull + nsid;
    x ^= x >> 31;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 29;
    return x;
}

#endif
