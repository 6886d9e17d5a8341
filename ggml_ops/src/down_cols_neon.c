/*
 * NEON kernel of the column-group down layout (down_cols.h; aarch64, reached only through ts_down_cols_add, which
 * asks the CPU first). Outputs are walked in units of 32: each kept neuron's codes for the unit times its quantized
 * activation q are summed in integers (int16 for a few neurons, then int32), and one conversion to float per unit
 * scales the sums by S * scale[i] (plus the min term), as the AVX2 kernel does.
 */
#include "down_cols.h"

#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>

#define ROWS_PER_INT16 16 /* 4-bit codes: 16 * 15 * 127 < 32768 */

/* acc[2j], acc[2j + 1] += the int16 sums s[j] (outputs 8j .. 8j + 7) */
static inline void widen_into(const int16x8_t s[4], int32x4_t acc[8]) {
    for (int j = 0; j < 4; j++) {
        acc[2 * j] = vaddw_s16(acc[2 * j], vget_low_s16(s[j]));
        acc[2 * j + 1] = vaddw_high_s16(acc[2 * j + 1], s[j]);
    }
}

/* 4-bit codes, unit u: 16 bytes per neuron, low nibbles outputs 0-15, high nibbles 16-31 (unsigned codes 0-15). */
static inline void unit_codes4(const uint8_t *const *rows, const int8_t *q, int n, int64_t u, int32x4_t acc[8]) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    for (int r0 = 0; r0 < n; r0 += ROWS_PER_INT16) {
        const int r1 = n - r0 < ROWS_PER_INT16 ? n : r0 + ROWS_PER_INT16;
        int16x8_t s[4] = {vdupq_n_s16(0), vdupq_n_s16(0), vdupq_n_s16(0), vdupq_n_s16(0)};
        for (int r = r0; r < r1; r++) {
            const uint8x16_t b = vld1q_u8(rows[r] + u * 16);
            const int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(b, m4)), hi = vreinterpretq_s8_u8(vshrq_n_u8(b, 4));
            const int8x16_t qq = vdupq_n_s8(q[r]);
            s[0] = vmlal_s8(s[0], vget_low_s8(lo), vget_low_s8(qq));
            s[1] = vmlal_high_s8(s[1], lo, qq);
            s[2] = vmlal_s8(s[2], vget_low_s8(hi), vget_low_s8(qq));
            s[3] = vmlal_high_s8(s[3], hi, qq);
        }
        widen_into(s, acc);
    }
}

/* 8-bit codes, unit u: 32 bytes per neuron; two neurons' products fit int16 (2 * 128 * 127 < 32768). */
static inline void unit_codes8(const uint8_t *const *rows, const int8_t *q, int n, int64_t u, int32x4_t acc[8]) {
    for (int r = 0; r < n; r += 2) {
        const int8_t *a = (const int8_t *)(rows[r] + u * 32);
        const int8x16_t qa = vdupq_n_s8(q[r]);
        const int has_b = r + 1 < n;
        const int8_t *b = has_b ? (const int8_t *)(rows[r + 1] + u * 32) : a;
        const int8x16_t qb = vdupq_n_s8(has_b ? q[r + 1] : 0);
        int16x8_t s[4];
        for (int h = 0; h < 2; h++) { /* outputs 16h .. 16h + 15 */
            const int8x16_t xa = vld1q_s8(a + 16 * h), xb = vld1q_s8(b + 16 * h);
            s[2 * h] = vmlal_s8(vmull_s8(vget_low_s8(xa), vget_low_s8(qa)), vget_low_s8(xb), vget_low_s8(qb));
            s[2 * h + 1] = vmlal_high_s8(vmull_high_s8(xa, qa), xb, qb);
        }
        widen_into(s, acc);
    }
}

/* 4 fp16 values as floats */
static inline float32x4_t halves(const uint16_t *p) {
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)));
}

static void add_group_neon(const ts_down_cols_format *f, const uint8_t *group, const int32_t *k, const int8_t *q,
                           int n, float s, int32_t sum_q, int64_t c0, int64_t len, float *out) {
    const uint16_t *scale = (const uint16_t *)group, *min = scale + f->n_embd;
    const size_t code_row = (size_t)f->n_embd * (size_t)f->code_bits / 8, unit_bytes = (size_t)f->code_bits * 4;
    const uint8_t *codes = group + (size_t)f->n_embd * 2 * (f->has_min ? 2 : 1);
    const uint8_t *rows[TS_DOWN_COLS_GROUP];
    for (int r = 0; r < n; r++) {
        rows[r] = codes + (size_t)k[r] * code_row;
    }
    const int32x4_t offset = vdupq_n_s32(f->offset * sum_q);
    const float32x4_t min_term = vdupq_n_f32(s * (float)sum_q);
    const int64_t u0 = c0 / 32;
    for (int64_t u = u0; u < u0 + len / 32; u++) {
        for (int r = 0; r < n; r++) {
            if ((u * unit_bytes) % 64 == 0) {
                __builtin_prefetch(rows[r] + (u + 8) * unit_bytes); /* rows are scattered */
            }
        }
        int32x4_t acc[8];
        for (int j = 0; j < 8; j++) {
            acc[j] = vdupq_n_s32(0);
        }
        if (f->code_bits == 8) {
            unit_codes8(rows, q, n, u, acc);
        } else {
            unit_codes4(rows, q, n, u, acc);
        }
        float *o = out + (u - u0) * 32;
        for (int j = 0; j < 8; j++) {
            const float32x4_t sc = vmulq_n_f32(halves(scale + u * 32 + 4 * j), s);
            float32x4_t v = vfmaq_f32(vld1q_f32(o + 4 * j), sc, vcvtq_f32_s32(vsubq_s32(acc[j], offset)));
            if (f->has_min) {
                v = vfmaq_f32(v, halves(min + u * 32 + 4 * j), min_term);
            }
            vst1q_f32(o + 4 * j, v);
        }
    }
}

ts_down_cols_group_fn ts_down_cols_group_neon(void) {
    return add_group_neon;
}

#else /* not compiled for aarch64 */

ts_down_cols_group_fn ts_down_cols_group_neon(void) {
    return NULL;
}

#endif
