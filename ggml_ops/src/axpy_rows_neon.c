/*
 * NEON kernels of the sparse down projection (aarch64; reached only through ts_axpy_rows, which asks the CPU first).
 * The same two schemes as the AVX2 kernels (axpy_rows_avx2.c), with the same results up to float rounding: integer
 * kernels for Q4_0, Q4_1, Q8_0 and Q4_K, float kernels for the float types.
 */
#include "axpy_rows.h"
#include "axpy_tile_driver.h"
#include "q4_k_scales.h"

#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#include <string.h>

static inline float half_at(const uint8_t *p) {
    __fp16 h;
    memcpy(&h, p, sizeof(h));
    return (float)h;
}

/*
 * Float kernels (F32, F16, BF16): units of 32 columns, a unit function adding coef * (the unit's 32 values) into
 * eight 4-float accumulators; rows GROUP at a time, so each output unit is loaded and stored once per group.
 */
#define GROUP 4

static inline void unit_f16(const uint8_t *row, int64_t u, float a, float32x4_t acc[8]) {
    const uint16_t *p = (const uint16_t *)(row + u * 64);
    for (int k = 0; k < 4; k++) {
        const float16x8_t h = vreinterpretq_f16_u16(vld1q_u16(p + 8 * k));
        acc[2 * k] = vfmaq_n_f32(acc[2 * k], vcvt_f32_f16(vget_low_f16(h)), a);
        acc[2 * k + 1] = vfmaq_n_f32(acc[2 * k + 1], vcvt_high_f32_f16(h), a);
    }
}

static inline void unit_bf16(const uint8_t *row, int64_t u, float a, float32x4_t acc[8]) {
    const uint16_t *p = (const uint16_t *)(row + u * 64);
    for (int k = 0; k < 4; k++) {
        const uint16x8_t h = vld1q_u16(p + 8 * k); /* bf16 = the top half of a float */
        acc[2 * k] = vfmaq_n_f32(acc[2 * k], vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(h), 16)), a);
        acc[2 * k + 1] = vfmaq_n_f32(acc[2 * k + 1], vreinterpretq_f32_u32(vshll_high_n_u16(h, 16)), a);
    }
}

static inline void unit_f32(const uint8_t *row, int64_t u, float a, float32x4_t acc[8]) {
    const float *p = (const float *)(row + u * 128);
    for (int k = 0; k < 8; k++) {
        acc[k] = vfmaq_n_f32(acc[k], vld1q_f32(p + 4 * k), a);
    }
}

#define DEFINE_AXPY_TILE(name, unit, unit_bytes)                                                                    \
    static inline void add_rows_##name(const uint8_t *const *r, const float *a, int n_rows, int64_t n_units,      \
                                       float *o, ts_row_prefetcher *pf) {                                            \
        for (int64_t u = 0; u < n_units; u++) {                                                                      \
            ts_prefetch_upto(pf, (size_t)(u + 1) * (unit_bytes));                                                   \
            float32x4_t acc[8];                                                                                      \
            for (int k = 0; k < 8; k++) {                                                                            \
                acc[k] = vld1q_f32(o + 32 * u + 4 * k);                                                              \
            }                                                                                                        \
            for (int k = 0; k < n_rows; k++) {                                                                       \
                unit(r[k], u, a[k], acc);                                                                            \
            }                                                                                                        \
            for (int k = 0; k < 8; k++) {                                                                            \
                vst1q_f32(o + 32 * u + 4 * k, acc[k]);                                                               \
            }                                                                                                        \
        }                                                                                                            \
    }                                                                                                                \
    TS_DEFINE_FLOAT_TILE(name, unit_bytes, GROUP)

/*
 * Integer kernels (Q4_0, Q4_1, Q8_0, Q4_K): the AVX2 kernels' scheme. Per unit of 32 columns, c_r = coef_r * d_r of
 * INT_ROWS rows are quantized together to 8 bits, c_r ~ S * k_r with S = max |c| / 127 (rounded to nearest even, as
 * AVX2's conversion rounds), the rows' codes times k are summed in integers, and one conversion to float per unit
 * and INT_ROWS rows scales the sum by S. The error of a value is at most sum_r S / 2 * |code_r - offset|; the mins
 * (Q4_1, Q4_K) are added in float, exactly.
 */
#define INT_ROWS 16 /* rows sharing S: their 4-bit products sum within int16 (16 * 15 * 127 < 32768) */

typedef struct {
    int8_t k[INT_ROWS];
    float scale; /* S */
} int_coefs;

/* Quantizes c[0, INT_ROWS); 0 when every c is 0 (no codes to add). */
static inline int quantize_coefs(const float *c, int_coefs *q) {
    float32x4_t v[4];
    float32x4_t amax = vdupq_n_f32(0.0f);
    for (int j = 0; j < 4; j++) {
        v[j] = vld1q_f32(c + 4 * j);
        amax = vmaxq_f32(amax, vabsq_f32(v[j]));
    }
    const float m = vmaxvq_f32(amax);
    if (m == 0.0f) {
        return 0;
    }
    const float inv = 127.0f / m;
    int16x8_t k16[2];
    for (int h = 0; h < 2; h++) {
        k16[h] = vcombine_s16(vmovn_s32(vcvtnq_s32_f32(vmulq_n_f32(v[2 * h], inv))),
                              vmovn_s32(vcvtnq_s32_f32(vmulq_n_f32(v[2 * h + 1], inv))));
    }
    vst1q_s8(q->k, vcombine_s8(vmovn_s16(k16[0]), vmovn_s16(k16[1])));
    q->scale = m * (1.0f / 127.0f);
    return 1;
}

/* c[k] = a[k] * (the fp16 value at byte `at` of row k: a block's scale or min) */
static inline void scaled_halves(const uint8_t *const *r, const float *a, size_t at, float *c) {
    uint16_t h[INT_ROWS];
    for (int k = 0; k < INT_ROWS; k++) {
        memcpy(&h[k], r[k] + at, sizeof(uint16_t));
    }
    for (int j = 0; j < INT_ROWS / 4; j++) {
        const float32x4_t v = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h + 4 * j)));
        vst1q_f32(c + 4 * j, vmulq_f32(vld1q_f32(a + 4 * j), v));
    }
}

/* o[0, 4) += s * v + m for 4 int32 v */
static inline void add_scaled(float *o, int32x4_t v, float s, float m) {
    vst1q_f32(o, vaddq_f32(vfmaq_n_f32(vld1q_f32(o), vcvtq_f32_s32(v), s), vdupq_n_f32(m)));
}

/* o[0, 32) += S * the int16 sums acc (outputs 8j .. 8j + 7 in acc[j]) + m */
static inline void add_sums16(float *o, const int16x8_t acc[4], float s, float m) {
    for (int j = 0; j < 4; j++) {
        add_scaled(o + 8 * j, vmovl_s16(vget_low_s16(acc[j])), s, m);
        add_scaled(o + 8 * j + 4, vmovl_high_s16(acc[j]), s, m);
    }
}

/* acc += k * the codes lo (outputs 0-15) and hi (16-31) */
static inline void add_codes16(int16x8_t acc[4], int8x16_t lo, int8x16_t hi, int8_t k) {
    const int8x16_t kk = vdupq_n_s8(k);
    acc[0] = vmlal_s8(acc[0], vget_low_s8(lo), vget_low_s8(kk));
    acc[1] = vmlal_high_s8(acc[1], lo, kk);
    acc[2] = vmlal_s8(acc[2], vget_low_s8(hi), vget_low_s8(kk));
    acc[3] = vmlal_high_s8(acc[3], hi, kk);
}

/* Q4_0 {d, 16 bytes}, Q4_1 {d, m, 16 bytes}: S * sum_r k_r * (nibble_r - offset) + min_sum; low nibbles are
 * outputs 0-15, high nibbles 16-31 (|nibble - offset| <= 15: 16 rows' sums within int16). */
static inline void int_unit_nibbles(const uint8_t *const *r, size_t at, const int_coefs *q, int offset, float min_sum,
                                    float *o) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    const int8x16_t off = vdupq_n_s8((int8_t)offset);
    int16x8_t acc[4] = {vdupq_n_s16(0), vdupq_n_s16(0), vdupq_n_s16(0), vdupq_n_s16(0)};
    for (int k = 0; k < INT_ROWS; k++) {
        const uint8x16_t b = vld1q_u8(r[k] + at);
        add_codes16(acc, vsubq_s8(vreinterpretq_s8_u8(vandq_u8(b, m4)), off),
                    vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(b, 4)), off), q->k[k]);
    }
    add_sums16(o, acc, q->scale, min_sum);
}

/* Q8_0 {d, 32 int8}: S * sum_r k_r * code_r; two rows' products fit int16 (2 * 128 * 127 < 32768), then int32. */
static inline void int_unit_q8_0(const uint8_t *const *r, size_t at, const int_coefs *q, float *o) {
    int32x4_t acc[8];
    for (int j = 0; j < 8; j++) {
        acc[j] = vdupq_n_s32(0);
    }
    for (int k = 0; k < INT_ROWS; k += 2) {
        const int8_t *a = (const int8_t *)(r[k] + at), *b = (const int8_t *)(r[k + 1] + at);
        const int8x16_t ka = vdupq_n_s8(q->k[k]), kb = vdupq_n_s8(q->k[k + 1]);
        for (int h = 0; h < 2; h++) { /* outputs 16h .. 16h + 15 */
            const int8x16_t xa = vld1q_s8(a + 16 * h), xb = vld1q_s8(b + 16 * h);
            const int16x8_t p0 = vmlal_s8(vmull_s8(vget_low_s8(xa), vget_low_s8(ka)), vget_low_s8(xb), vget_low_s8(kb));
            const int16x8_t p1 = vmlal_high_s8(vmull_high_s8(xa, ka), xb, kb);
            acc[4 * h] = vaddw_s16(acc[4 * h], vget_low_s16(p0));
            acc[4 * h + 1] = vaddw_high_s16(acc[4 * h + 1], p0);
            acc[4 * h + 2] = vaddw_s16(acc[4 * h + 2], vget_low_s16(p1));
            acc[4 * h + 3] = vaddw_high_s16(acc[4 * h + 3], p1);
        }
    }
    for (int j = 0; j < 8; j++) {
        add_scaled(o + 4 * j, acc[j], q->scale, 0.0f);
    }
}

/* o[0, 32) += m */
static inline void add_min(float *o, float m) {
    for (int k = 0; k < 32; k++) {
        o[k] += m;
    }
}

static void add_group_q4_0(const uint8_t *const *r, const float *a, int64_t n_units, float *o,
                           ts_row_prefetcher *pf) {
    for (int64_t u = 0; u < n_units; u++) {
        ts_prefetch_upto(pf, (size_t)(u + 1) * 18);
        float c[INT_ROWS];
        int_coefs q;
        scaled_halves(r, a, (size_t)u * 18, c);
        if (quantize_coefs(c, &q)) {
            int_unit_nibbles(r, (size_t)u * 18 + 2, &q, 8, 0.0f, o + 32 * u);
        }
    }
}

static void add_group_q8_0(const uint8_t *const *r, const float *a, int64_t n_units, float *o,
                           ts_row_prefetcher *pf) {
    for (int64_t u = 0; u < n_units; u++) {
        ts_prefetch_upto(pf, (size_t)(u + 1) * 34);
        float c[INT_ROWS];
        int_coefs q;
        scaled_halves(r, a, (size_t)u * 34, c);
        if (quantize_coefs(c, &q)) {
            int_unit_q8_0(r, (size_t)u * 34 + 2, &q, o + 32 * u);
        }
    }
}

static void add_group_q4_1(const uint8_t *const *r, const float *a, int64_t n_units, float *o,
                           ts_row_prefetcher *pf) {
    for (int64_t u = 0; u < n_units; u++) {
        ts_prefetch_upto(pf, (size_t)(u + 1) * 20);
        float c[INT_ROWS], m[INT_ROWS];
        int_coefs q;
        scaled_halves(r, a, (size_t)u * 20, c);
        scaled_halves(r, a, (size_t)u * 20 + 2, m);
        const float min_sum = vaddvq_f32(vaddq_f32(vaddq_f32(vld1q_f32(m), vld1q_f32(m + 4)),
                                                   vaddq_f32(vld1q_f32(m + 8), vld1q_f32(m + 12))));
        if (quantize_coefs(c, &q)) {
            int_unit_nibbles(r, (size_t)u * 20 + 4, &q, 0, min_sum, o + 32 * u);
        } else {
            add_min(o + 32 * u, min_sum);
        }
    }
}

/*
 * Q4_K super-blocks of 256 {d, dmin, 12 bytes of 6-bit scales and mins, 128 bytes}: sub-block j (a unit)
 * = d * sc_j * nibble - dmin * mn_j, sub-blocks 2i and 2i + 1 the low and high nibbles of bytes [32i, 32i + 32).
 * Per row and super-block the 8 scales and mins are unpacked at once (q4_k_scales.h) into c[j][row] and the mins'
 * sum per j.
 */
static inline void q4_k_coefs(const uint8_t *const *r, const float *a, size_t at, float (*c)[INT_ROWS], float *min_sum) {
    float32x4_t mins[2] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
    for (int k = 0; k < INT_ROWS; k++) {
        const uint8_t *p = r[k] + at;
        uint8_t sm[16];
        ts_k_scales_mins(p + 4, sm);
        const uint16x8_t sc = vmovl_u8(vld1_u8(sm)), mn = vmovl_u8(vld1_u8(sm + 8));
        const float ad = a[k] * half_at(p), amin = -a[k] * half_at(p + 2);
        float row[8];
        vst1q_f32(row, vmulq_n_f32(vcvtq_f32_u32(vmovl_u16(vget_low_u16(sc))), ad));
        vst1q_f32(row + 4, vmulq_n_f32(vcvtq_f32_u32(vmovl_high_u16(sc)), ad));
        for (int j = 0; j < 8; j++) {
            c[j][k] = row[j];
        }
        mins[0] = vfmaq_n_f32(mins[0], vcvtq_f32_u32(vmovl_u16(vget_low_u16(mn))), amin);
        mins[1] = vfmaq_n_f32(mins[1], vcvtq_f32_u32(vmovl_high_u16(mn)), amin);
    }
    vst1q_f32(min_sum, mins[0]);
    vst1q_f32(min_sum + 4, mins[1]);
}

static void add_group_q4_k(const uint8_t *const *r, const float *a, int64_t n_units, float *o,
                           ts_row_prefetcher *pf) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    for (int64_t b = 0; b < n_units / 8; b++) {
        ts_prefetch_upto(pf, (size_t)(b + 1) * 144);
        float c[8][INT_ROWS], min_sum[8];
        q4_k_coefs(r, a, (size_t)b * 144, c, min_sum);
        for (int j = 0; j < 8; j++) {
            float *ou = o + 32 * (8 * b + j);
            int_coefs q;
            if (!quantize_coefs(c[j], &q)) {
                add_min(ou, min_sum[j]);
                continue;
            }
            const size_t at = (size_t)b * 144 + 16 + (size_t)(j / 2) * 32;
            int16x8_t acc[4] = {vdupq_n_s16(0), vdupq_n_s16(0), vdupq_n_s16(0), vdupq_n_s16(0)};
            for (int k = 0; k < INT_ROWS; k++) {
                uint8x16_t lo = vld1q_u8(r[k] + at), hi = vld1q_u8(r[k] + at + 16); /* outputs 0-15, 16-31 */
                if (j & 1) {
                    lo = vshrq_n_u8(lo, 4);
                    hi = vshrq_n_u8(hi, 4);
                } else {
                    lo = vandq_u8(lo, m4);
                    hi = vandq_u8(hi, m4);
                }
                add_codes16(acc, vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi), q.k[k]);
            }
            add_sums16(ou, acc, q.scale, min_sum[j]);
        }
    }
}

/* INT_ROWS rows per group, through the shared driver (axpy_tile_driver.h) */
TS_DEFINE_INT_TILE(q4_0, 18, INT_ROWS)
TS_DEFINE_INT_TILE(q4_1, 20, INT_ROWS)
TS_DEFINE_INT_TILE(q8_0, 34, INT_ROWS)
TS_DEFINE_INT_TILE(q4_k, 18, INT_ROWS)

/* unit_bytes: bytes per 32 columns */
DEFINE_AXPY_TILE(f16, unit_f16, 64)
DEFINE_AXPY_TILE(bf16, unit_bf16, 64)
DEFINE_AXPY_TILE(f32, unit_f32, 128)

ts_axpy_kernel ts_axpy_kernel_neon(enum ggml_type type) {
    switch (type) {
    case GGML_TYPE_Q4_0: return (ts_axpy_kernel){axpy_tile_q4_0, TS_ROWS_GGML};
    case GGML_TYPE_Q4_1: return (ts_axpy_kernel){axpy_tile_q4_1, TS_ROWS_GGML};
    case GGML_TYPE_Q8_0: return (ts_axpy_kernel){axpy_tile_q8_0, TS_ROWS_GGML};
    case GGML_TYPE_Q4_K: return (ts_axpy_kernel){axpy_tile_q4_k, TS_ROWS_GGML};
    case GGML_TYPE_F16: return (ts_axpy_kernel){axpy_tile_f16, TS_ROWS_GGML};
    case GGML_TYPE_BF16: return (ts_axpy_kernel){axpy_tile_bf16, TS_ROWS_GGML};
    case GGML_TYPE_F32: return (ts_axpy_kernel){axpy_tile_f32, TS_ROWS_GGML};
    default: return (ts_axpy_kernel){NULL, TS_ROWS_GGML};
    }
}

#else /* not compiled for aarch64 */

ts_axpy_kernel ts_axpy_kernel_neon(enum ggml_type type) {
    (void)type;
    return (ts_axpy_kernel){NULL, TS_ROWS_GGML};
}

#endif
