#include "neuron_list.h"
#include "turbosparse.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#elif defined(__ARM_NEON) && defined(__aarch64__)
#include <arm_neon.h>
#endif

enum mask_kind { MASK_AT_LEAST, MASK_ABOVE, MASK_NONZERO };

/* Bit i (i < w <= 64): x[i] >= t, x[i] > t or x[i] != t, as kind says. */
static uint64_t compare_mask(const float *x, int w, enum mask_kind kind, float t) {
    uint64_t m = 0;
    int i = 0;
#if defined(__SSE2__)
    const __m128 vt = _mm_set1_ps(t);
    for (; i + 4 <= w; i += 4) {
        const __m128 v = _mm_loadu_ps(x + i);
        const __m128 c = kind == MASK_AT_LEAST ? _mm_cmpge_ps(v, vt)
                         : kind == MASK_ABOVE  ? _mm_cmpgt_ps(v, vt)
                                               : _mm_cmpneq_ps(v, vt); /* unordered: true for a NaN, as != */
        m |= (uint64_t)_mm_movemask_ps(c) << i;
    }
#elif defined(__ARM_NEON) && defined(__aarch64__)
    const float32x4_t vt = vdupq_n_f32(t);
    static const uint32_t lane_bits[4] = {1, 2, 4, 8};
    const uint32x4_t bits = vld1q_u32(lane_bits);
    for (; i + 4 <= w; i += 4) {
        const float32x4_t v = vld1q_f32(x + i);
        const uint32x4_t c = kind == MASK_AT_LEAST ? vcgeq_f32(v, vt)
                             : kind == MASK_ABOVE  ? vcgtq_f32(v, vt)
                                                   : vmvnq_u32(vceqq_f32(v, vt));
        m |= (uint64_t)vaddvq_u32(vandq_u32(c, bits)) << i;
    }
#endif
    for (; i < w; i++) {
        const int c = kind == MASK_AT_LEAST ? x[i] >= t : kind == MASK_ABOVE ? x[i] > t : x[i] != t;
        m |= (uint64_t)c << i;
    }
    return m;
}

int ts_pick_next(const float *x, int64_t *j, int64_t j1, ts_pick p, int32_t *list, int cap) {
    const enum mask_kind kind = p.kind == TS_PICK_AT_LEAST ? MASK_AT_LEAST : MASK_ABOVE;
    int64_t at = *j;
    int n = 0;
    while (at < j1 && n < cap) {
        const int w = j1 - at < 64 ? (int)(j1 - at) : 64;
        uint64_t m = compare_mask(x + at, w, kind, p.t);
        for (; m != 0 && n < cap; m &= m - 1) {
            list[n++] = (int32_t)(at + __builtin_ctzll(m));
        }
        if (m != 0) { /* the list is full: the next call starts at the first picked neuron left out */
            *j = at + __builtin_ctzll(m);
            return n;
        }
        at += w;
    }
    *j = at;
    return n;
}

int64_t ts_nonzero_list(const float *a, int64_t n, int32_t *idx, float *val) {
    int64_t count = 0;
    for (int64_t at = 0; at < n; at += 64) {
        const int w = n - at < 64 ? (int)(n - at) : 64;
        for (uint64_t m = compare_mask(a + at, w, MASK_NONZERO, 0.0f); m != 0; m &= m - 1) {
            const int64_t j = at + __builtin_ctzll(m);
            idx[count] = (int32_t)j;
            val[count] = a[j];
            count++;
        }
    }
    return count;
}

int32_t ts_kernel_pick_list(int32_t kind, float t, const float *x, int64_t *j, int64_t j1, int32_t *list,
                            int32_t cap) {
    if ((kind != TS_PICK_AT_LEAST && kind != TS_PICK_ABOVE) || cap < 1) {
        return -1;
    }
    return ts_pick_next(x, j, j1, (ts_pick){(ts_pick_kind)kind, t}, list, cap);
}

int64_t ts_kernel_nonzero_list(const float *a, int64_t n, int32_t *idx, float *val) {
    return ts_nonzero_list(a, n, idx, val);
}
