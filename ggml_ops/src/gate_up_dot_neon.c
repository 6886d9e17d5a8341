/*
 * NEON gate/up kernels: Q4_0 and Q8_0 rows against a Q8_0 activation, Q4_1 against Q8_1, Q4_K against Q8_K (the
 * contract: gate_up_dot.h; the block layouts: gate_up_dot_avx2.c).
 *
 * Compiled twice on aarch64 (CMakeLists.txt): as itself for every aarch64 CPU, where the int8 products are widened
 * with SMULL and summed in pairs into int32 with SADALP; and through gate_up_dot_neon_dotprod.c with +dotprod, where
 * SDOT sums four products into each int32 lane. ts_dot_kernel_best asks the CPU before taking the second. As in the
 * AVX2 kernels, each pass takes TS_DOT_ROWS rows (dot_rows_driver.h; an activation block is loaded once for all of
 * them) while the next pass's rows are prefetched. NEON multiplies signed bytes by signed bytes, so Q4_0's nibbles
 * are made signed (q - 8) first.
 */
#include "gate_up_dot.h"

#include "dot_rows_driver.h"
#include "q4_k_scales.h"

#if defined(TS_NEON_DOTPROD_UNIT)
#define TABLE ts_dot_kernel_neon_dotprod
#else
#define TABLE ts_dot_kernel_neon
#endif

#if defined(__aarch64__) && defined(__ARM_NEON)
#if defined(TS_NEON_DOTPROD_UNIT) && !defined(__ARM_FEATURE_DOTPROD)
#error "gate_up_dot_neon_dotprod.c must be compiled with the dot product extension (-march=armv8.2-a+dotprod)"
#endif
#include <arm_neon.h>
#include <string.h>

enum { Q4_0_BYTES = 18, Q4_1_BYTES = 20, Q8_0_BYTES = 34, Q8_1_BYTES = 36, Q4_K_BYTES = 144 };

#define ALWAYS_INLINE static inline __attribute__((always_inline))

#if defined(TS_NEON_DOTPROD_UNIT)
#define KERNEL_ISA TS_ISA_NEON_DOTPROD
/* acc + the products a[k] * b[k], four neighbours summed into each int32 lane */
ALWAYS_INLINE int32x4_t dot_i8x16(int32x4_t acc, int8x16_t a, int8x16_t b) {
    return vdotq_s32(acc, a, b);
}
#else
#define KERNEL_ISA TS_ISA_NEON
/* acc + the products a[k] * b[k] (each fits int16), two neighbours summed into each int32 lane, twice */
ALWAYS_INLINE int32x4_t dot_i8x16(int32x4_t acc, int8x16_t a, int8x16_t b) {
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
    return vpadalq_s16(acc, vmull_high_s8(a, b));
}
#endif

ALWAYS_INLINE float half_at(const uint8_t *p) {
    __fp16 h;
    memcpy(&h, p, sizeof(h));
    return (float)h;
}

/* The 32 nibbles of a Q4 block's 16 bytes as bytes in value order: lo = values 0-15, hi = values 16-31. */
ALWAYS_INLINE void nibbles(const uint8_t *qs, int8x16_t *lo, int8x16_t *hi) {
    const uint8x16_t q = vld1q_u8(qs);
    *lo = vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0F)));
    *hi = vreinterpretq_s8_u8(vshrq_n_u8(q, 4));
}

/* ---- Q8_0 activation (Q4_0 and Q8_0 rows) ---------------------------------------------------------------
 * prepared: x int8[n] | d float[n / 32] */

static const void *prepare_q8_0(const void *xq, int64_t n, void *buf) {
    const uint8_t *src = xq;
    int8_t *x = buf;
    float *d = (float *)(x + n);
    for (int64_t b = 0; b < n / 32; b++) {
        const uint8_t *blk = src + b * Q8_0_BYTES;
        d[b] = half_at(blk);
        memcpy(x + 32 * b, blk + 2, 32);
    }
    return buf;
}

ALWAYS_INLINE void group_q4_0(const void *const *rows, const int R, const void *prepared, int64_t n, float *out,
                              ts_row_prefetcher *pf) {
    const int8_t *xs = prepared;
    const float *dx = (const float *)(xs + n);
    const int8x16_t eight = vdupq_n_s8(8);
    float32x4_t acc[TS_DOT_ROWS];
    for (int k = 0; k < R; k++) {
        acc[k] = vdupq_n_f32(0.0f);
    }
    for (int64_t b = 0; b < n / 32; b++) {
        ts_prefetch_upto(pf, (size_t)(b + 1) * Q4_0_BYTES + 64);
        const int8x16_t x0 = vld1q_s8(xs + 32 * b), x1 = vld1q_s8(xs + 32 * b + 16);
        for (int k = 0; k < R; k++) {
            const uint8_t *p = (const uint8_t *)rows[k] + b * Q4_0_BYTES;
            int8x16_t lo, hi;
            nibbles(p + 2, &lo, &hi);
            const int32x4_t s = dot_i8x16(dot_i8x16(vdupq_n_s32(0), vsubq_s8(lo, eight), x0), vsubq_s8(hi, eight), x1);
            acc[k] = vfmaq_n_f32(acc[k], vcvtq_f32_s32(s), half_at(p) * dx[b]);
        }
    }
    for (int k = 0; k < R; k++) {
        out[k] = vaddvq_f32(acc[k]);
    }
}

ALWAYS_INLINE void group_q8_0(const void *const *rows, const int R, const void *prepared, int64_t n, float *out,
                              ts_row_prefetcher *pf) {
    const int8_t *xs = prepared;
    const float *dx = (const float *)(xs + n);
    float32x4_t acc[TS_DOT_ROWS];
    for (int k = 0; k < R; k++) {
        acc[k] = vdupq_n_f32(0.0f);
    }
    for (int64_t b = 0; b < n / 32; b++) {
        ts_prefetch_upto(pf, (size_t)(b + 1) * Q8_0_BYTES + 64);
        const int8x16_t x0 = vld1q_s8(xs + 32 * b), x1 = vld1q_s8(xs + 32 * b + 16);
        for (int k = 0; k < R; k++) {
            const uint8_t *p = (const uint8_t *)rows[k] + b * Q8_0_BYTES;
            const int8_t *w = (const int8_t *)(p + 2);
            const int32x4_t s = dot_i8x16(dot_i8x16(vdupq_n_s32(0), vld1q_s8(w), x0), vld1q_s8(w + 16), x1);
            acc[k] = vfmaq_n_f32(acc[k], vcvtq_f32_s32(s), half_at(p) * dx[b]);
        }
    }
    for (int k = 0; k < R; k++) {
        out[k] = vaddvq_f32(acc[k]);
    }
}

TS_DEFINE_DOT_ROWS(q4_0, group_q4_0, 32, Q4_0_BYTES, TS_DOT_ROWS)
TS_DEFINE_DOT_ROWS(q8_0, group_q8_0, 32, Q8_0_BYTES, TS_DOT_ROWS)

/* ---- Q8_1 activation (Q4_1 rows) ------------------------------------------------------------------------
 * prepared: x int8[n] | d float[n / 32] | s float[n / 32] (ggml's d * sum(x), rounded to fp16) */

static const void *prepare_q8_1(const void *xq, int64_t n, void *buf) {
    const uint8_t *src = xq;
    int8_t *x = buf;
    float *d = (float *)(x + n), *s = d + n / 32;
    for (int64_t b = 0; b < n / 32; b++) {
        const uint8_t *blk = src + b * Q8_1_BYTES;
        d[b] = half_at(blk);
        s[b] = half_at(blk + 2);
        memcpy(x + 32 * b, blk + 4, 32);
    }
    return buf;
}

ALWAYS_INLINE void group_q4_1(const void *const *rows, const int R, const void *prepared, int64_t n, float *out,
                              ts_row_prefetcher *pf) {
    const int8_t *xs = prepared;
    const float *dx = (const float *)(xs + n), *sx = dx + n / 32;
    float32x4_t acc[TS_DOT_ROWS];
    float mins[TS_DOT_ROWS];
    for (int k = 0; k < R; k++) {
        acc[k] = vdupq_n_f32(0.0f);
        mins[k] = 0.0f;
    }
    for (int64_t b = 0; b < n / 32; b++) {
        ts_prefetch_upto(pf, (size_t)(b + 1) * Q4_1_BYTES + 64);
        const int8x16_t x0 = vld1q_s8(xs + 32 * b), x1 = vld1q_s8(xs + 32 * b + 16);
        for (int k = 0; k < R; k++) {
            const uint8_t *p = (const uint8_t *)rows[k] + b * Q4_1_BYTES;
            int8x16_t lo, hi;
            nibbles(p + 4, &lo, &hi);
            const int32x4_t s = dot_i8x16(dot_i8x16(vdupq_n_s32(0), lo, x0), hi, x1);
            acc[k] = vfmaq_n_f32(acc[k], vcvtq_f32_s32(s), half_at(p) * dx[b]);
            mins[k] += half_at(p + 2) * sx[b]; /* sum over the block of m * x */
        }
    }
    for (int k = 0; k < R; k++) {
        out[k] = vaddvq_f32(acc[k]) + mins[k];
    }
}

TS_DEFINE_DOT_ROWS(q4_1, group_q4_1, 32, Q4_1_BYTES, TS_DOT_ROWS)

/* ---- Q8_K activation (Q4_K rows) ------------------------------------------------------------------------
 * prepared: ts_q8_k_view's layout (gate_up_dot.h), the sub-blocks in order */

static const void *prepare_q8_k(const void *xq, int64_t n, void *buf) {
    return ts_prepare_q8_k(xq, n, buf, NULL);
}

ALWAYS_INLINE void group_q4_k(const void *const *rows, const int R, const void *prepared, int64_t n, float *out,
                              ts_row_prefetcher *pf) {
    const int8_t *xs = prepared;
    const float *dx = (const float *)(xs + n);
    const int16_t *xsums = (const int16_t *)(dx + n / 256);
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    float32x4_t acc[TS_DOT_ROWS], acc_min[TS_DOT_ROWS];
    for (int k = 0; k < R; k++) {
        acc[k] = vdupq_n_f32(0.0f);
        acc_min[k] = vdupq_n_f32(0.0f);
    }
    for (int64_t i = 0; i < n / 256; i++) {
        ts_prefetch_upto(pf, (size_t)(i + 1) * Q4_K_BYTES + 64);
        const int8_t *x = xs + 256 * i;
        const int16x8_t xsum = vld1q_s16(xsums + 8 * i);
        for (int k = 0; k < R; k++) {
            const uint8_t *p = (const uint8_t *)rows[k] + i * Q4_K_BYTES;
            uint8_t sm[16];
            ts_k_scales_mins(p + 4, sm);
            int32x4_t isum = vdupq_n_s32(0);
            for (int j = 0; j < 4; j++) { /* bytes [32j, 32j + 32): sub-block 2j in the low nibbles, 2j + 1 in the high */
                const uint8x16_t q0 = vld1q_u8(p + 16 + 32 * j), q1 = vld1q_u8(p + 16 + 32 * j + 16);
                const int8_t *xj = x + 64 * j;
                int32x4_t lo = dot_i8x16(vdupq_n_s32(0), vreinterpretq_s8_u8(vandq_u8(q0, m4)), vld1q_s8(xj));
                lo = dot_i8x16(lo, vreinterpretq_s8_u8(vandq_u8(q1, m4)), vld1q_s8(xj + 16));
                int32x4_t hi = dot_i8x16(vdupq_n_s32(0), vreinterpretq_s8_u8(vshrq_n_u8(q0, 4)), vld1q_s8(xj + 32));
                hi = dot_i8x16(hi, vreinterpretq_s8_u8(vshrq_n_u8(q1, 4)), vld1q_s8(xj + 48));
                isum = vmlaq_n_s32(isum, lo, sm[2 * j]);
                isum = vmlaq_n_s32(isum, hi, sm[2 * j + 1]);
            }
            acc[k] = vfmaq_n_f32(acc[k], vcvtq_f32_s32(isum), half_at(p) * dx[i]);
            const int16x8_t mins = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(sm + 8)));
            const int32x4_t m = vmlal_high_s16(vmull_s16(vget_low_s16(mins), vget_low_s16(xsum)), mins, xsum);
            acc_min[k] = vfmaq_n_f32(acc_min[k], vcvtq_f32_s32(m), half_at(p + 2) * dx[i]);
        }
    }
    for (int k = 0; k < R; k++) {
        out[k] = vaddvq_f32(acc[k]) - vaddvq_f32(acc_min[k]);
    }
}

TS_DEFINE_DOT_ROWS(q4_k, group_q4_k, 256, Q4_K_BYTES, TS_DOT_ROWS)

/* ---- table -------------------------------------------------------------------------------------------- */

int TABLE(enum ggml_type type, int64_t n, ts_dot_kernel *k) {
    /* whole blocks; every prepared layout takes n * 5/4 bytes at most */
    if (n <= 0 || n > TS_DOT_MAX_N || n % ggml_blck_size(type) != 0) {
        return 0;
    }
    switch (type) {
    case GGML_TYPE_Q4_0: *k = (ts_dot_kernel){KERNEL_ISA, prepare_q8_0, dot_rows_q4_0}; return 1;
    case GGML_TYPE_Q8_0: *k = (ts_dot_kernel){KERNEL_ISA, prepare_q8_0, dot_rows_q8_0}; return 1;
    case GGML_TYPE_Q4_1: *k = (ts_dot_kernel){KERNEL_ISA, prepare_q8_1, dot_rows_q4_1}; return 1;
    case GGML_TYPE_Q4_K: *k = (ts_dot_kernel){KERNEL_ISA, prepare_q8_k, dot_rows_q4_k}; return 1;
    default: return 0;
    }
}

#else /* not compiled for aarch64 */

int TABLE(enum ggml_type type, int64_t n, ts_dot_kernel *k) {
    (void)type, (void)n, (void)k;
    return 0;
}

#endif
