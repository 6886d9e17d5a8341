/*
 * NEON kernels of the sparse down projection (aarch64; reached only through ts_axpy_rows, which asks the CPU first).
 * The same two schemes as the AVX2 kernels (axpy_rows_avx2.c), with the same results up to float rounding: integer
 * kernels for Q4_0 and Q8_0, float kernels for Q4_1, Q4_K and the float types.
 */
#include "axpy_rows.h"

#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#include <string.h>

static inline float half_at(const uint8_t *p) {
    __fp16 h;
    memcpy(&h, p, sizeof(h));
    return (float)h;
}

static void prefetch_rows(const char *w, size_t row_bytes, size_t offset, const int32_t *idx, int64_t n,
                          size_t seg_bytes) {
    for (int64_t i = 0; i < n; i++) {
        const char *p = w + (size_t)idx[i] * row_bytes + offset;
        for (size_t b = 0; b < seg_bytes; b += 64) {
            __builtin_prefetch(p + b);
        }
    }
}

/*
 * Float kernels: units of 32 columns, a unit function adding coef * (the unit's 32 dequantized values) into eight
 * 4-float accumulators; rows GROUP at a time, so each output unit is loaded and stored once per group.
 */
#define GROUP 4

/* acc[0, 4) += c + s * v for 16 unsigned bytes v */
static inline void add_u8x16(uint8x16_t v, float s, float c, float32x4_t *acc) {
    const uint16x8_t lo = vmovl_u8(vget_low_u8(v)), hi = vmovl_high_u8(v);
    const float32x4_t cv = vdupq_n_f32(c);
    acc[0] = vaddq_f32(acc[0], vfmaq_n_f32(cv, vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo))), s));
    acc[1] = vaddq_f32(acc[1], vfmaq_n_f32(cv, vcvtq_f32_u32(vmovl_high_u16(lo)), s));
    acc[2] = vaddq_f32(acc[2], vfmaq_n_f32(cv, vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi))), s));
    acc[3] = vaddq_f32(acc[3], vfmaq_n_f32(cv, vcvtq_f32_u32(vmovl_high_u16(hi)), s));
}

/* Q4_1: 20-byte blocks {d, m, 16 bytes}: value = d * nibble + m; low nibbles are values 0-15, high nibbles 16-31 */
static inline void unit_q4_1(const uint8_t *row, int64_t u, float a, float32x4_t acc[8]) {
    const uint8_t *p = row + u * 20;
    const float s = a * half_at(p), c = a * half_at(p + 2);
    const uint8x16_t q = vld1q_u8(p + 4);
    add_u8x16(vandq_u8(q, vdupq_n_u8(0x0F)), s, c, acc);
    add_u8x16(vshrq_n_u8(q, 4), s, c, acc + 4);
}

/* Q4_K (144-byte super-blocks of 256): sub-block j = d * sc_j * nibble - dmin * m_j, see axpy_rows_avx2.c */
static inline void scale_min_q4_k(const uint8_t *sc, int j, int *scale, int *min) {
    if (j < 4) {
        *scale = sc[j] & 63;
        *min = sc[j + 4] & 63;
    } else {
        *scale = (sc[j + 4] & 0x0F) | ((sc[j - 4] >> 6) << 4);
        *min = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
    }
}

static inline void unit_q4_k(const uint8_t *row, int64_t u, float a, float32x4_t acc[8]) {
    const uint8_t *p = row + (u >> 3) * 144;
    const int j = (int)(u & 7);
    int sc, mn;
    scale_min_q4_k(p + 4, j, &sc, &mn);
    const float s = a * half_at(p) * (float)sc, c = -a * half_at(p + 2) * (float)mn;
    const uint8_t *q = p + 16 + (j >> 1) * 32;
    uint8x16_t q0 = vld1q_u8(q), q1 = vld1q_u8(q + 16);
    if (j & 1) {
        q0 = vshrq_n_u8(q0, 4);
        q1 = vshrq_n_u8(q1, 4);
    } else {
        q0 = vandq_u8(q0, vdupq_n_u8(0x0F));
        q1 = vandq_u8(q1, vdupq_n_u8(0x0F));
    }
    add_u8x16(q0, s, c, acc);
    add_u8x16(q1, s, c, acc + 4);
}

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
                                       float *o) {                                                                   \
        for (int64_t u = 0; u < n_units; u++) {                                                                      \
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
    static void axpy_tile_##name(const char *w, size_t row_bytes, size_t offset, const int32_t *idx,              \
                                 const float *coef, int64_t n_idx, int64_t n_units, float *o) {                     \
        const size_t seg_bytes = (size_t)(n_units * (unit_bytes));                                                   \
        prefetch_rows(w, row_bytes, offset, idx, n_idx < GROUP ? n_idx : GROUP, seg_bytes);                          \
        for (int64_t i = 0; i < n_idx; i += GROUP) {                                                                 \
            const int n = n_idx - i < GROUP ? (int)(n_idx - i) : GROUP;                                              \
            const int64_t next = i + n, ahead = n_idx - next < GROUP ? n_idx - next : GROUP;                         \
            prefetch_rows(w, row_bytes, offset, idx + next, ahead, seg_bytes);                                       \
            const uint8_t *r[GROUP];                                                                                 \
            for (int k = 0; k < n; k++) {                                                                            \
                r[k] = (const uint8_t *)w + (size_t)idx[i + k] * row_bytes + offset;                                 \
            }                                                                                                        \
            if (n == GROUP) {                                                                                        \
                add_rows_##name(r, coef + i, GROUP, n_units, o); /* a constant count the compiler unrolls */         \
            } else {                                                                                                 \
                add_rows_##name(r, coef + i, n, n_units, o);                                                         \
            }                                                                                                        \
        }                                                                                                            \
    }

/*
 * Integer kernels (Q4_0, Q8_0): the AVX2 kernels' scheme. Per unit of 32 columns, c_r = coef_r * d_r of INT_ROWS
 * rows are quantized together to 8 bits, c_r ~ S * k_r with S = max |c| / 127 (rounded to nearest even, as AVX2's
 * conversion rounds), the rows' codes times k are summed in integers, and one conversion to float per unit and
 * INT_ROWS rows scales the sum by S. The error of a value is at most sum_r S / 2 * |code_r|.
 */
#define INT_ROWS 16

typedef struct {
    int8_t k[INT_ROWS];
    float scale; /* S */
} int_coefs;

/* Quantizes c_r = a_r * d_r (d_r: the fp16 scale of row r's unit u, the block's first two bytes); 0 when every c
 * is 0 (nothing to add). */
static inline int quantize_coefs(const float *a, const uint8_t *const *r, int64_t u, size_t block_bytes, int_coefs *q) {
    uint16_t dh[INT_ROWS];
    for (int k = 0; k < INT_ROWS; k++) {
        memcpy(&dh[k], r[k] + (size_t)u * block_bytes, sizeof(uint16_t));
    }
    float32x4_t c[4];
    float32x4_t amax = vdupq_n_f32(0.0f);
    for (int j = 0; j < 4; j++) {
        c[j] = vmulq_f32(vld1q_f32(a + 4 * j), vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(dh + 4 * j))));
        amax = vmaxq_f32(amax, vabsq_f32(c[j]));
    }
    const float m = vmaxvq_f32(amax);
    if (m == 0.0f) {
        return 0;
    }
    const float inv = 127.0f / m;
    int16x8_t k16[2];
    for (int h = 0; h < 2; h++) {
        k16[h] = vcombine_s16(vmovn_s32(vcvtnq_s32_f32(vmulq_n_f32(c[2 * h], inv))),
                              vmovn_s32(vcvtnq_s32_f32(vmulq_n_f32(c[2 * h + 1], inv))));
    }
    vst1q_s8(q->k, vcombine_s8(vmovn_s16(k16[0]), vmovn_s16(k16[1])));
    q->scale = m * (1.0f / 127.0f);
    return 1;
}

/* o[0, 4) += s * v for 4 int32 v */
static inline void add_scaled(float *o, int32x4_t v, float s) {
    vst1q_f32(o, vfmaq_n_f32(vld1q_f32(o), vcvtq_f32_s32(v), s));
}

/* Q4_0 unit: S * sum_r k_r * (nibble_r - 8), summed in int16 (16 rows * 8 * 127 < 32768). */
static inline void int_unit_q4_0(const uint8_t *const *r, int64_t u, const int_coefs *q, float *o) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    const int8x16_t eight = vdupq_n_s8(8);
    int16x8_t acc[4] = {vdupq_n_s16(0), vdupq_n_s16(0), vdupq_n_s16(0), vdupq_n_s16(0)};
    for (int k = 0; k < INT_ROWS; k++) {
        const uint8x16_t b = vld1q_u8(r[k] + u * 18 + 2);
        const int8x16_t lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(b, m4)), eight); /* columns 0-15 */
        const int8x16_t hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(b, 4)), eight); /* columns 16-31 */
        const int8x16_t kk = vdupq_n_s8(q->k[k]);
        acc[0] = vmlal_s8(acc[0], vget_low_s8(lo), vget_low_s8(kk));
        acc[1] = vmlal_high_s8(acc[1], lo, kk);
        acc[2] = vmlal_s8(acc[2], vget_low_s8(hi), vget_low_s8(kk));
        acc[3] = vmlal_high_s8(acc[3], hi, kk);
    }
    for (int j = 0; j < 4; j++) {
        add_scaled(o + 8 * j, vmovl_s16(vget_low_s16(acc[j])), q->scale);
        add_scaled(o + 8 * j + 4, vmovl_high_s16(acc[j]), q->scale);
    }
}

/* Q8_0 unit: S * sum_r k_r * code_r; two rows' products fit int16 (2 * 128 * 127 < 32768), then into int32. */
static inline void int_unit_q8_0(const uint8_t *const *r, int64_t u, const int_coefs *q, float *o) {
    int32x4_t acc[8];
    for (int j = 0; j < 8; j++) {
        acc[j] = vdupq_n_s32(0);
    }
    for (int k = 0; k < INT_ROWS; k += 2) {
        const int8_t *a = (const int8_t *)(r[k] + u * 34 + 2), *b = (const int8_t *)(r[k + 1] + u * 34 + 2);
        const int8x16_t ka = vdupq_n_s8(q->k[k]), kb = vdupq_n_s8(q->k[k + 1]);
        for (int h = 0; h < 2; h++) { /* columns 16h .. 16h + 15 */
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
        add_scaled(o + 4 * j, acc[j], q->scale);
    }
}

/* INT_ROWS rows at a time (a short last group padded with coefficient 0), the next group prefetched meanwhile. */
#define DEFINE_INT_TILE(name, unit, block_bytes)                                                                     \
    static void axpy_tile_##name(const char *w, size_t row_bytes, size_t offset, const int32_t *idx,               \
                                 const float *coef, int64_t n_idx, int64_t n_units, float *o) {                      \
        const size_t seg_bytes = (size_t)n_units * (block_bytes);                                                   \
        prefetch_rows(w, row_bytes, offset, idx, n_idx < INT_ROWS ? n_idx : INT_ROWS, seg_bytes);                   \
        for (int64_t i = 0; i < n_idx; i += INT_ROWS) {                                                              \
            const int n = n_idx - i < INT_ROWS ? (int)(n_idx - i) : INT_ROWS;                                        \
            const int64_t next = i + n, ahead = n_idx - next < INT_ROWS ? n_idx - next : INT_ROWS;                   \
            prefetch_rows(w, row_bytes, offset, idx + next, ahead, seg_bytes);                                       \
            const uint8_t *r[INT_ROWS];                                                                              \
            float a[INT_ROWS];                                                                                       \
            for (int k = 0; k < INT_ROWS; k++) {                                                                     \
                r[k] = (const uint8_t *)w + (size_t)idx[i + (k < n ? k : 0)] * row_bytes + offset;                   \
                a[k] = k < n ? coef[i + k] : 0.0f;                                                                   \
            }                                                                                                        \
            for (int64_t u = 0; u < n_units; u++) {                                                                  \
                int_coefs q;                                                                                         \
                if (quantize_coefs(a, r, u, (block_bytes), &q)) {                                                    \
                    unit(r, u, &q, o + 32 * u);                                                                      \
                }                                                                                                    \
            }                                                                                                        \
        }                                                                                                            \
    }

DEFINE_INT_TILE(q4_0, int_unit_q4_0, 18)
DEFINE_INT_TILE(q8_0, int_unit_q8_0, 34)

/* unit_bytes: bytes per 32 columns (Q4_K: 144 per 256) */
DEFINE_AXPY_TILE(q4_1, unit_q4_1, 20)
DEFINE_AXPY_TILE(q4_k, unit_q4_k, 18)
DEFINE_AXPY_TILE(f16, unit_f16, 64)
DEFINE_AXPY_TILE(bf16, unit_bf16, 64)
DEFINE_AXPY_TILE(f32, unit_f32, 128)

ts_axpy_tile_fn ts_axpy_tile_neon(enum ggml_type type) {
    switch (type) {
    case GGML_TYPE_Q4_0: return axpy_tile_q4_0;
    case GGML_TYPE_Q4_1: return axpy_tile_q4_1;
    case GGML_TYPE_Q8_0: return axpy_tile_q8_0;
    case GGML_TYPE_Q4_K: return axpy_tile_q4_k;
    case GGML_TYPE_F16: return axpy_tile_f16;
    case GGML_TYPE_BF16: return axpy_tile_bf16;
    case GGML_TYPE_F32: return axpy_tile_f32;
    default: return NULL;
    }
}

#else /* not compiled for aarch64 */

ts_axpy_tile_fn ts_axpy_tile_neon(enum ggml_type type) {
    (void)type;
    return NULL;
}

#endif
