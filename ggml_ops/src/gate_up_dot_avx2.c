/*
 * AVX2 gate/up kernels: Q4_0 and Q8_0 rows against a Q8_0 activation, Q4_1 against Q8_1, Q4_K against Q8_K; and
 * for prompts, Q4_0 and Q4_1 matrices against many tokens (rows_matmul.h). Q4_0 gate and up rows of a multiple of 64
 * values, and Q4_K ones, are held in the split layout, which both kinds read faster (gate_up_dot.h: ts_gate_up_split;
 * q4_k_split.h).
 *
 * Compiled with -mavx2 -mfma -mf16c (CMakeLists.txt) and reached only through ts_dot_kernel_best and
 * ts_rows_matmul_kernel, which ask the CPU first. Each decoding kernel takes TS_DOT_ROWS rows per pass over the
 * activation (dot_rows_driver.h): an activation block is loaded once for all of them, and the rows' accumulators are
 * independent, so their multiply-adds overlap (Q4_K's kernel takes its pass's rows one after another instead, below).
 * While a pass runs, the next pass's rows are prefetched line by line at the offset being read (one pass of lead
 * time, far more than a memory latency). Integer products come from maddubs (unsigned weight
 * bytes x signed activation bytes, summed in pairs to int16, then in fours to int32), one float multiply-add per 32
 * values with the two blocks' scales.
 *
 * Block layouts are ggml's (ggml-common.h):
 *   Q4_0 {fp16 d, 16 bytes}: value k = d * ((qs[k] & 15) - 8), value k + 16 = d * ((qs[k] >> 4) - 8)
 *   Q4_1 {fp16 d, fp16 m, 16 bytes}: the same nibbles, value = d * nibble + m
 *   Q8_0 {fp16 d, 32 int8}; Q8_1 {fp16 d, fp16 s = d * sum(qs), 32 int8}
 *   Q4_K 256 values {fp16 d, fp16 dmin, 12 bytes of 6-bit scales and mins, 128 bytes}: sub-block j (32 values)
 *        = d * sc_j * nibble - dmin * m_j; sub-blocks 2i and 2i+1 are the low and high nibbles of bytes [32i, 32i+32)
 *   Q8_K 256 values {float d, 256 int8, int16 bsums[16] (sums of 16 consecutive values)}
 */
#include "gate_up_dot.h"

#include "dot_rows_driver.h"
#include "q4_k_scales.h"
#include "q4_k_split.h"
#include "rows_matmul.h"
#include "rows_matmul_driver.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#include <string.h>


enum { Q4_0_BYTES = 18, Q4_1_BYTES = 20, Q8_0_BYTES = 34, Q8_1_BYTES = 36, Q4_K_BYTES = 144 };

#define ALWAYS_INLINE static inline __attribute__((always_inline))

ALWAYS_INLINE float half_at(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, sizeof(h));
    return _cvtsh_ss(h);
}

ALWAYS_INLINE float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

ALWAYS_INLINE float hsum_ps128(__m128 s) {
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* sum of a block's 32 int8 values */
static int32_t sum_i8x32(const int8_t *x) {
    const __m256i v = _mm256_loadu_si256((const __m256i *)x);
    const __m256i s16 = _mm256_maddubs_epi16(_mm256_set1_epi8(1), v);
    const __m256i s32 = _mm256_madd_epi16(s16, _mm256_set1_epi16(1));
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(s32), _mm256_extracti128_si256(s32, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

/* The 32 nibbles of a Q4 block's 16 bytes as unsigned bytes in value order (low nibbles, then high nibbles): the
 * bytes broadcast to both 128-bit lanes by the load itself and the high lane shifted, no shuffle-port insert (on a
 * Zen 3 the Q4_0 kernel ran 1.19x from L3 and 1.01-1.16x from DRAM against building the register from two halves). */
ALWAYS_INLINE __m256i nibbles(const uint8_t *qs) {
    const __m256i q = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
    return _mm256_and_si256(_mm256_srlv_epi64(q, _mm256_setr_epi64x(0, 0, 4, 4)), _mm256_set1_epi8(0x0F));
}

/* int32 lanes whose sum is sum_k u[k] * s[k] (u unsigned, s signed bytes; no int16 saturation for u <= 15 or |s| <= 127
 * with u <= 128) */
ALWAYS_INLINE __m256i dot_u8_i8(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

/* ---- Q8_0 activation (Q4_0 and Q8_0 rows) ---------------------------------------------------------------
 * prepared: x int8[n] (32-aligned) | d float[n / 32] | corr int32[n / 32] = -8 * (sum of the block's x), which
 * turns a dot product over Q4_0's unsigned nibbles q into one over q - 8. */

static const void *prepare_q8_0(const void *xq, int64_t n, void *buf) {
    const uint8_t *src = xq;
    int8_t *x = buf;
    float *d = (float *)(x + n);
    int32_t *corr = (int32_t *)(d + n / 32);
    for (int64_t b = 0; b < n / 32; b++) {
        const uint8_t *blk = src + b * Q8_0_BYTES;
        d[b] = half_at(blk);
        memcpy(x + 32 * b, blk + 2, 32);
        corr[b] = -8 * sum_i8x32(x + 32 * b);
    }
    return buf;
}

ALWAYS_INLINE void group_q4_0(const void *const *rows, const int R, const void *prepared, int64_t n, float *out,
                              ts_row_prefetcher *pf) {
    const ts_q8_0_view v = ts_view_q8_0(prepared, n);
    __m256 acc[TS_DOT_ROWS];
    for (int k = 0; k < R; k++) {
        acc[k] = _mm256_setzero_ps();
    }
    for (int64_t b = 0; b < n / 32; b++) {
        ts_prefetch_upto(pf, (size_t)(b + 1) * Q4_0_BYTES + 64);
        const __m256i x = _mm256_load_si256((const __m256i *)(v.x + 32 * b));
        const __m256i corr = _mm256_zextsi128_si256(_mm_cvtsi32_si128(v.corr[b]));
        for (int k = 0; k < R; k++) {
            const uint8_t *p = (const uint8_t *)rows[k] + b * Q4_0_BYTES;
            const __m256i s = _mm256_add_epi32(dot_u8_i8(nibbles(p + 2), x), corr);
            acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(half_at(p) * v.d[b]), acc[k]);
        }
    }
    for (int k = 0; k < R; k++) {
        out[k] = hsum_ps(acc[k]);
    }
}

ALWAYS_INLINE void group_q8_0(const void *const *rows, const int R, const void *prepared, int64_t n, float *out,
                              ts_row_prefetcher *pf) {
    const ts_q8_0_view v = ts_view_q8_0(prepared, n);
    __m256 acc[TS_DOT_ROWS];
    for (int k = 0; k < R; k++) {
        acc[k] = _mm256_setzero_ps();
    }
    for (int64_t b = 0; b < n / 32; b++) {
        ts_prefetch_upto(pf, (size_t)(b + 1) * Q8_0_BYTES + 64);
        const __m256i x = _mm256_load_si256((const __m256i *)(v.x + 32 * b));
        for (int k = 0; k < R; k++) {
            const uint8_t *p = (const uint8_t *)rows[k] + b * Q8_0_BYTES;
            const __m256i w = _mm256_loadu_si256((const __m256i *)(p + 2));
            /* |w| (unsigned) x (x with w's sign) = w * x */
            const __m256i s = dot_u8_i8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
            acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(half_at(p) * v.d[b]), acc[k]);
        }
    }
    for (int k = 0; k < R; k++) {
        out[k] = hsum_ps(acc[k]);
    }
}

TS_DEFINE_DOT_ROWS(q4_0, group_q4_0, 32, Q4_0_BYTES, TS_DOT_ROWS)

/* ---- Q4_0 rows in the split layout (axpy_rows.h: per group of 8 blocks their 8 scales, then their 8 x 16 quants) ----
 * Two blocks' quants are one 32-byte load: its low nibbles (values 0-15 of each block) and its high nibbles (16-31)
 * meet the activation's matching 32 bytes in two maddubs whose int16 sums add up (at most 4 x 15 x 127) before one
 * madd, block j of the two in int32 lanes 4j .. 4j+3; a group's 8 scales are one 16-byte load, converted and
 * multiplied by the activation's at once, and the -8 offset's correction is one multiply-add per group (the scales
 * times the activation blocks' -8 sums). About 6 vector instructions per block against the plain layout's 11.
 * Rows of whole pairs of blocks (n a multiple of 64): a row's last group may hold 2, 4 or 6 blocks (its c scales, then
 * its c quants), read with masked loads. Held so where gate_up_dot.h's ts_gate_up_split says (and copied).
 *
 * prepared: x int8[n], per 2 blocks 32 bytes of their values 0-15 (block after block), then 32 of their values 16-31
 *           | d float[n / 32] | corr float[n / 32] (-8 x the block's sum of x)
 */
enum { SPLIT_GROUP_BYTES = 8 * Q4_0_BYTES };

static const void *prepare_split_pairs(const void *xq, int64_t n, void *buf) {
    const uint8_t *src = xq;
    int8_t *x = buf;
    float *d = (float *)(x + n), *corr = d + n / 32;
    for (int64_t b = 0; b < n / 32; b++) {
        const uint8_t *blk = src + b * Q8_0_BYTES;
        int8_t *pair = x + 64 * (b / 2) + 16 * (b % 2);
        memcpy(pair, blk + 2, 16);
        memcpy(pair + 32, blk + 18, 16);
        d[b] = half_at(blk);
        corr[b] = (float)(-8 * sum_i8x32((const int8_t *)(blk + 2)));
    }
    return buf;
}

/* Two blocks' dot products of one row (quants at q) in int32 lanes, block j of the two in lanes 4j .. 4j+3 */
ALWAYS_INLINE __m256i pair_dot_split(const uint8_t *q, __m256i x_low, __m256i x_high) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i w = _mm256_loadu_si256((const __m256i *)q);
    const __m256i lo = _mm256_maddubs_epi16(_mm256_and_si256(w, m4), x_low);
    const __m256i hi = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(w, 4), m4), x_high);
    return _mm256_madd_epi16(_mm256_add_epi16(lo, hi), _mm256_set1_epi16(1));
}

ALWAYS_INLINE void group_q4_0_split(const void *const *rows, const int R, const void *prepared, int64_t n, float *out,
                                    ts_row_prefetcher *pf) {
    const int8_t *x = prepared;
    const float *d = (const float *)(x + n), *corr = d + n / 32;
    /* a group's 8 scales (floats 0-7) into the lanes of its block pairs */
    const __m256i pair_lanes[4] = {_mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1), _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3),
                                   _mm256_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5), _mm256_setr_epi32(6, 6, 6, 6, 7, 7, 7, 7)};
    __m256 acc[TS_DOT_ROWS];
    for (int k = 0; k < R; k++) {
        acc[k] = _mm256_setzero_ps();
    }
    const int64_t nb = n / 32;
    for (int64_t g = 0; g < (nb + 7) / 8; g++) {
        ts_prefetch_upto(pf, (size_t)(g + 1) * SPLIT_GROUP_BYTES + 64);
        const int c = nb - 8 * g < 8 ? (int)(nb - 8 * g) : 8; /* the group's blocks, an even number */
        /* a last group's missing blocks: lanes masked off (no read past the activation's or the row's end) */
        const __m256i lanes = _mm256_cmpgt_epi32(_mm256_set1_epi32(c), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        const __m256 dx = _mm256_maskload_ps(d + 8 * g, lanes), cx = _mm256_maskload_ps(corr + 8 * g, lanes);
        const __m128i scale_words = _mm_cmpgt_epi32(_mm_set1_epi32(c / 2), _mm_setr_epi32(0, 1, 2, 3)); /* 2 per word */
        const int8_t *xg = x + 256 * g;
        for (int k = 0; k < R; k++) {
            const uint8_t *grp = (const uint8_t *)rows[k] + g * SPLIT_GROUP_BYTES;
            const __m128i h = c == 8 ? _mm_loadu_si128((const __m128i *)grp) : _mm_maskload_epi32((const int *)grp, scale_words);
            const __m256 s = _mm256_mul_ps(_mm256_cvtph_ps(h), dx);
            __m256 a = _mm256_fmadd_ps(s, cx, acc[k]); /* the group's -8 offsets */
            for (int p = 0; p < c / 2; p++) {
                const __m256i t = pair_dot_split(grp + 2 * c + 32 * p, _mm256_load_si256((const __m256i *)(xg + 64 * p)),
                                                 _mm256_load_si256((const __m256i *)(xg + 64 * p + 32)));
                a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_permutevar8x32_ps(s, pair_lanes[p]), a);
            }
            acc[k] = a;
        }
    }
    for (int k = 0; k < R; k++) {
        out[k] = hsum_ps(acc[k]);
    }
}

TS_DEFINE_DOT_ROWS(q4_0_split, group_q4_0_split, 32, Q4_0_BYTES, TS_DOT_ROWS)

/* Whether the split kernels (decoding and prompts) take rows of n values of `type`: whole pairs of blocks */
static int takes_split_rows(enum ggml_type type, int64_t n) {
    return type == GGML_TYPE_Q4_0 && n > 0 && n % 64 == 0 && n <= TS_DOT_MAX_N;
}

TS_DEFINE_DOT_ROWS(q8_0, group_q8_0, 32, Q8_0_BYTES, TS_DOT_ROWS)

/* ---- Q8_1 activation (Q4_1 rows) ------------------------------------------------------------------------
 * prepared: x int8[n] (32-aligned) | d float[n / 32] | s float[n / 32] (ggml's d * sum(x), rounded to fp16) */

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
    __m256 acc[TS_DOT_ROWS];
    float mins[TS_DOT_ROWS];
    for (int k = 0; k < R; k++) {
        acc[k] = _mm256_setzero_ps();
        mins[k] = 0.0f;
    }
    for (int64_t b = 0; b < n / 32; b++) {
        ts_prefetch_upto(pf, (size_t)(b + 1) * Q4_1_BYTES + 64);
        const __m256i x = _mm256_load_si256((const __m256i *)(xs + 32 * b));
        for (int k = 0; k < R; k++) {
            const uint8_t *p = (const uint8_t *)rows[k] + b * Q4_1_BYTES;
            const __m256i s = dot_u8_i8(nibbles(p + 4), x);
            acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(half_at(p) * dx[b]), acc[k]);
            mins[k] += half_at(p + 2) * sx[b]; /* sum over the block of m * x */
        }
    }
    for (int k = 0; k < R; k++) {
        out[k] = hsum_ps(acc[k]) + mins[k];
    }
}

TS_DEFINE_DOT_ROWS(q4_1, group_q4_1, 32, Q4_1_BYTES, TS_DOT_ROWS)

/* ---- Q8_K activation (Q4_K rows) ------------------------------------------------------------------------
 * prepared: ts_q8_k_view's layout (gate_up_dot.h), the sub-blocks in order */

static const void *prepare_q8_k(const void *xq, int64_t n, void *buf) {
    return ts_prepare_q8_k(xq, n, buf, NULL);
}

/* One row's dot product with the prepared activation: per super-block the sub-block sums (maddubs), times their
 * scales (madd), the mins against the activation's sub-block sums. */
ALWAYS_INLINE float row_q4_k(const uint8_t *row, const ts_q8_k_view *v, int64_t n_blocks, ts_row_prefetcher *pf,
                             size_t pf_base, size_t pf_step) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc = _mm256_setzero_ps();
    __m128 acc_min = _mm_setzero_ps();
    for (int64_t i = 0; i < n_blocks; i++) {
        ts_prefetch_upto(pf, pf_base + (size_t)(i + 1) * pf_step);
        const uint8_t *p = row + i * Q4_K_BYTES;
        const int8_t *x = v->x + 256 * i;
        const __m128i sm = ts_k_scales_mins_vec(p + 4); /* 8 scales, then 8 mins */
        /* the 8 scales as int16, in both 128-bit halves; sub-block j's scale broadcast by a byte shuffle */
        const __m256i sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
        const __m128i mins = _mm_cvtepu8_epi16(_mm_unpackhi_epi64(sm, sm));
        __m256i isum = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(p + 16 + 32 * j));
            const __m256i lo = _mm256_maddubs_epi16(_mm256_and_si256(q, m4),
                                                    _mm256_load_si256((const __m256i *)(x + 64 * j)));
            const __m256i hi = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4),
                                                    _mm256_load_si256((const __m256i *)(x + 64 * j + 32)));
            const __m256i sc_lo = _mm256_shuffle_epi8(sc, _mm256_set1_epi16((short)(0x0100 + 0x0202 * (2 * j))));
            const __m256i sc_hi = _mm256_shuffle_epi8(sc, _mm256_set1_epi16((short)(0x0100 + 0x0202 * (2 * j + 1))));
            isum = _mm256_add_epi32(isum, _mm256_add_epi32(_mm256_madd_epi16(lo, sc_lo), _mm256_madd_epi16(hi, sc_hi)));
        }
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(half_at(p) * v->d[i]), acc);
        const __m128 m = _mm_cvtepi32_ps(_mm_madd_epi16(mins, _mm_loadu_si128((const __m128i *)(v->xsum + 8 * i))));
        acc_min = _mm_fmadd_ps(m, _mm_set1_ps(half_at(p + 2) * v->d[i]), acc_min);
    }
    return hsum_ps(acc) - hsum_ps128(acc_min);
}

ALWAYS_INLINE void group_q4_k(const void *const *rows, const int R, const void *prepared, int64_t n, float *out,
                              ts_row_prefetcher *pf) {
    const ts_q8_k_view v = ts_view_q8_k(prepared, n);
    const int64_t n_blocks = n / 256;
    /* a row at a time, its accumulators in registers (a block at a time across the pass's rows they were kept
     * in memory: AVX2 18.4 -> 21 GB/s from L2, one thread, Zen 4); the next pass's lines are asked for evenly
     * meanwhile, so the last lines of its first row get a row's time of lead, not a pass's (--ffn-layer q4_k from
     * DRAM was no slower: 0.70-0.73 against 0.73-0.87 ms); 144 is a whole multiple of every pass size (1-4, 8 rows) */
    const size_t step = (size_t)Q4_K_BYTES / (size_t)R;
    for (int k = 0; k < R; k++) {
        out[k] = row_q4_k((const uint8_t *)rows[k], &v, n_blocks, pf, (size_t)k * (size_t)n_blocks * step + 64, step);
    }
}

TS_DEFINE_DOT_ROWS(q4_k, group_q4_k, 256, Q4_K_BYTES, TS_DOT_ROWS)

/* ---- Q4_K rows in the split layout (q4_k_split.h) ----------------------------------------------------------
 * Per block: its header decoded, two byte shuffles making the scale vectors of sub-blocks 0-3 and 4-7 (each 32-byte
 * half of a 64-byte quarter holds 8 values of four sub-blocks), four 32-byte loads, eight maddubs added in int16 per
 * half, two int16 multiply-adds, and the mins in one more (ggml's layout: eight shuffles and eight multiply-adds). */

/* acc + block i of one row (its header at head, quants at q) against the prepared activation */
ALWAYS_INLINE __m256 q4_k_split_block(__m256 acc, const uint8_t *head, const uint8_t *q, const ts_q4_k_split_view *v,
                                      int64_t i) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    /* 8 scales, then 8 mins; read from head + 4 on: 16 bytes within the group (the next header or the quants) */
    const __m128i sm = ts_k_scales_mins_vec(head + 4);
    const __m256i smb = _mm256_broadcastsi128_si256(sm);
    /* int16 lane l: the scale of sub-block l / 4 (first: sub-blocks 0-3) or 4 + l / 4 (second), zero-extended */
    const __m256i sc_first = _mm256_shuffle_epi8(smb, _mm256_setr_epi8(0, -1, 0, -1, 0, -1, 0, -1, 1, -1, 1, -1, 1, -1, 1, -1,
                                                                       2, -1, 2, -1, 2, -1, 2, -1, 3, -1, 3, -1, 3, -1, 3, -1));
    const __m256i sc_second = _mm256_shuffle_epi8(smb, _mm256_setr_epi8(4, -1, 4, -1, 4, -1, 4, -1, 5, -1, 5, -1, 5, -1, 5, -1,
                                                                        6, -1, 6, -1, 6, -1, 6, -1, 7, -1, 7, -1, 7, -1, 7, -1));
    const int8_t *x = v->x + 256 * i;
    __m256i first = _mm256_setzero_si256(), second = _mm256_setzero_si256();
    for (int h = 0; h < 2; h++) { /* the quarters 2h (low nibbles) and 2h + 1 (high) of 64 bytes */
        const __m256i qa = _mm256_loadu_si256((const __m256i *)(q + 64 * h));
        const __m256i qb = _mm256_loadu_si256((const __m256i *)(q + 64 * h + 32));
        const int8_t *xl = x + 128 * h, *xh = xl + 64;
        first = _mm256_add_epi16(first, _mm256_maddubs_epi16(_mm256_and_si256(qa, m4), _mm256_load_si256((const __m256i *)xl)));
        first = _mm256_add_epi16(first, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(qa, 4), m4),
                                                             _mm256_load_si256((const __m256i *)xh)));
        second = _mm256_add_epi16(second, _mm256_maddubs_epi16(_mm256_and_si256(qb, m4),
                                                               _mm256_load_si256((const __m256i *)(xl + 32))));
        second = _mm256_add_epi16(second, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(qb, 4), m4),
                                                               _mm256_load_si256((const __m256i *)(xh + 32))));
    }
    const __m256i t = _mm256_add_epi32(_mm256_madd_epi16(first, sc_first), _mm256_madd_epi16(second, sc_second));
    /* int32 lanes 4-7: minus the mins times the sub-block sums (lanes 0-3: the scales times zeros) */
    const __m256i mins = _mm256_madd_epi16(_mm256_cvtepu8_epi16(sm), _mm256_loadu_si256((const __m256i *)(v->xs + 16 * i)));
    const float dx = v->dd[2 * i];
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_set1_ps(half_at(head) * dx), acc);
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(mins), _mm256_set1_ps(half_at(head + 2) * dx), acc);
}

ALWAYS_INLINE void group_q4_k_split(const void *const *rows, const int R, const void *prepared, int64_t n, float *out,
                                    ts_row_prefetcher *pf) {
    const ts_q4_k_split_view v = ts_view_q4_k_split(prepared, n);
    const int64_t nb = n / 256;
    /* a row at a time; meanwhile the next pass's row in the same place is asked for, line by line as this row is read,
     * so that every line gets a whole pass of lead */
    for (int k = 0; k < R; k++) {
        const uint8_t *row = rows[k];
        ts_row_prefetcher next = {pf->rows + k, k < pf->n, 0};
        __m256 acc = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            ts_prefetch_upto(&next, (size_t)(b + 1) * Q4_K_BYTES + 64);
            const ts_split_group g = ts_split_group_at(b, b + 1, nb);
            const uint8_t *grp = row + g.first * Q4_K_BYTES;
            acc = q4_k_split_block(acc, grp + TS_Q4_K_HEAD * g.j0, grp + TS_Q4_K_HEAD * g.c + TS_Q4_K_QUANTS * g.j0,
                                   &v, b);
        }
        out[k] = hsum_ps(acc);
    }
}

TS_DEFINE_DOT_ROWS(q4_k_split, group_q4_k_split, 256, Q4_K_BYTES, TS_DOT_ROWS)

/* ---- many tokens (prompts): rows_matmul.h's kernels -------------------------------------------------------
 * A pass (rows_matmul_driver.h) unpacks 8 rows interleaved: for each block b and each 4 values c of it (8 per block),
 * 32 bytes holding the 8 rows' values 4c .. 4c+3 as unsigned nibbles, row r in int32 lane r; then the block's 8 row
 * scales (and Q4_1's 8 mins) as floats. Against a token, maddubs with the token's 4 values broadcast gives each row's
 * two int16 pair sums; a block's 8 such add up in int16 (at most 8 x 2 x 15 x 127 = 30480) and one madd makes them
 * the 8 rows' int32 dot products, which one conversion and one multiply-add scale (a row at a time needed 8 madds,
 * 6 horizontal adds and 2 permutes per 8 blocks of a row to put the scales on vectors). */

#define MM_ROWS8 8
#define MM_CHUNK8 (MM_ROWS8 * 4) /* one 4-value chunk of 8 rows */

/* A pass: nib [nb][8 chunks][8 rows][4 values], then the scales d [nb][8 rows], then the mins m [nb][8 rows] */
static size_t pass8_bytes(int64_t nb) {
    return (size_t)nb * (8 * MM_CHUNK8 + 2 * sizeof(float) * MM_ROWS8);
}

/* A block's 16 nibble bytes of 8 rows (v[r]: row r's in the low 128 bits, row r + 4's in the high) into the pass's
 * chunks: transposed as 4 x 4 int32 in each 128-bit lane, which puts row r's bytes 4c .. 4c+3 in lane r of vector c:
 * chunk c (low nibbles) and c + 4 (high nibbles). */
ALWAYS_INLINE void store_chunks8(const __m256i v[4], uint8_t *chunk) {
    const __m256i low = _mm256_set1_epi8(0x0F);
    const __m256i t0 = _mm256_unpacklo_epi32(v[0], v[1]), t1 = _mm256_unpackhi_epi32(v[0], v[1]);
    const __m256i t2 = _mm256_unpacklo_epi32(v[2], v[3]), t3 = _mm256_unpackhi_epi32(v[2], v[3]);
    const __m256i c4[4] = {_mm256_unpacklo_epi64(t0, t2), _mm256_unpackhi_epi64(t0, t2),
                           _mm256_unpacklo_epi64(t1, t3), _mm256_unpackhi_epi64(t1, t3)};
    for (int c = 0; c < 4; c++) {
        _mm256_store_si256((__m256i *)(chunk + c * MM_CHUNK8), _mm256_and_si256(c4[c], low));
        _mm256_store_si256((__m256i *)(chunk + (c + 4) * MM_CHUNK8), _mm256_and_si256(_mm256_srli_epi32(c4[c], 4), low));
    }
}

/* R rows (the others of the 8 as zeros) into a pass, per block the 8 rows' 16 nibble bytes through store_chunks8. No
 * gathers: slow on Zen 3. split: Q4_0 rows in the split layout (block b's scale and quants within its group of 8:
 * takes_split_rows). */
static void unpack8_q4(const uint8_t *w, size_t row_bytes, int R, int64_t nb, size_t block_bytes, int split,
                       uint8_t *pass) {
    static const uint8_t none[Q4_1_BYTES]; /* a missing row's block: zeros */
    const int has_min = block_bytes == Q4_1_BYTES, qs = has_min ? 4 : 2;
    float *d = (float *)(pass + (size_t)nb * 8 * MM_CHUNK8), *m = d + nb * MM_ROWS8;
    for (int64_t b = 0; b < nb; b++) {
        /* each row's block: its scale (and min) at blk, its quants at quants */
        const uint8_t *blk[MM_ROWS8], *quants[MM_ROWS8];
        for (int r = 0; r < MM_ROWS8; r++) {
            const uint8_t *row = w + (size_t)r * row_bytes, *group = row + (b / 8) * SPLIT_GROUP_BYTES;
            const int64_t blocks = nb - b / 8 * 8 < 8 ? nb - b / 8 * 8 : 8; /* the group's: its scales come first */
            blk[r] = r >= R ? none : split ? group + 2 * (b % 8) : row + b * block_bytes;
            quants[r] = r >= R ? none + qs : split ? group + 2 * blocks + 16 * (b % 8) : blk[r] + qs;
        }
        __m256i v[4];
        for (int r = 0; r < 4; r++) {
            v[r] = _mm256_loadu2_m128i((const __m128i *)quants[r + 4], (const __m128i *)quants[r]);
        }
        store_chunks8(v, pass + (size_t)b * 8 * MM_CHUNK8);
        for (int r = 0; r < MM_ROWS8; r++) { /* the zero block's scale and min are 0 */
            d[b * MM_ROWS8 + r] = half_at(blk[r]);
            if (has_min) { /* Q4_0's slices never read the mins */
                m[b * MM_ROWS8 + r] = half_at(blk[r] + 2);
            }
        }
    }
}

static void unpack8_q4_0(const uint8_t *w, size_t row_bytes, int R, int64_t nb, uint8_t *pass) {
    unpack8_q4(w, row_bytes, R, nb, Q4_0_BYTES, 0, pass);
}

static void unpack8_q4_0_split(const uint8_t *w, size_t row_bytes, int R, int64_t nb, uint8_t *pass) {
    unpack8_q4(w, row_bytes, R, nb, Q4_0_BYTES, 1, pass);
}

static void unpack8_q4_1(const uint8_t *w, size_t row_bytes, int R, int64_t nb, uint8_t *pass) {
    unpack8_q4(w, row_bytes, R, nb, Q4_1_BYTES, 0, pass);
}

/* the token's 4 values c of block b, broadcast to every lane */
ALWAYS_INLINE __m256i token_chunk8(const int8_t *x, int64_t b, int c) {
    int32_t v;
    memcpy(&v, x + 32 * b + 4 * c, sizeof(v));
    return _mm256_set1_epi32(v);
}

/* A token as the kernels of one type read it: x, the block scales dx and, by type, Q4_0's offset corrections or
 * Q4_1's weighted sums (prepare_q8_0, prepare_q8_1) */
typedef struct {
    const int8_t *x;
    const float *dx;
    const int32_t *corr; /* Q4_0 */
    const float *sx;     /* Q4_1 */
} mm_token8;

ALWAYS_INLINE mm_token8 token8(const void *prepared, int64_t n, int has_min) {
    const int8_t *x = prepared;
    const float *dx = (const float *)(x + n);
    return (mm_token8){x, dx, has_min ? NULL : (const int32_t *)(dx + n / 32), has_min ? dx + n / 32 : NULL};
}

/* acc + block b of the 8 rows against one token: int16 pair sums e (even chunks) and o (odd chunks) made into int32
 * dots, corrected (Q4_0), scaled, and the mins weighed (Q4_1) */
ALWAYS_INLINE __m256 block8_acc(__m256 acc, __m256i e, __m256i o, const float *d, const float *m, int64_t b,
                                const mm_token8 t, int has_min) {
    __m256i dot = _mm256_madd_epi16(_mm256_add_epi16(e, o), _mm256_set1_epi16(1));
    if (!has_min) {
        dot = _mm256_add_epi32(dot, _mm256_set1_epi32(t.corr[b]));
    }
    const __m256 scale = _mm256_mul_ps(_mm256_load_ps(d + b * MM_ROWS8), _mm256_set1_ps(t.dx[b]));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc);
    return has_min ? _mm256_fmadd_ps(_mm256_load_ps(m + b * MM_ROWS8), _mm256_set1_ps(t.sx[b]), acc) : acc;
}

/* sum[r] += row r . x over blocks [b0, b1), block by block (as slice8x2_q4 sums each of its tokens) */
ALWAYS_INLINE void slice8_q4(const uint8_t *pass, int64_t nb, const void *prepared, int64_t n, int64_t b0, int64_t b1,
                             float *sum, int has_min) {
    const float *d = (const float *)(pass + (size_t)nb * 8 * MM_CHUNK8), *m = d + nb * MM_ROWS8;
    const mm_token8 t = token8(prepared, n, has_min);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = b0; b < b1; b++) {
        const uint8_t *p = pass + (size_t)b * 8 * MM_CHUNK8;
        __m256i e = _mm256_setzero_si256(), o = _mm256_setzero_si256();
        for (int c = 0; c < 8; c += 2) {
            e = _mm256_add_epi16(e, _mm256_maddubs_epi16(_mm256_load_si256((const __m256i *)(p + c * MM_CHUNK8)),
                                                         token_chunk8(t.x, b, c)));
            o = _mm256_add_epi16(o, _mm256_maddubs_epi16(_mm256_load_si256((const __m256i *)(p + (c + 1) * MM_CHUNK8)),
                                                         token_chunk8(t.x, b, c + 1)));
        }
        acc = block8_acc(acc, e, o, d, m, b, t, has_min);
    }
    _mm256_store_ps(sum, _mm256_add_ps(_mm256_load_ps(sum), acc));
}

/* the same for two tokens at once, each 32 bytes of the rows loaded once for both */
ALWAYS_INLINE void slice8x2_q4(const uint8_t *pass, int64_t nb, const void *prepared0, const void *prepared1,
                               int64_t n, int64_t b0, int64_t b1, float *sum0, float *sum1, int has_min) {
    const float *d = (const float *)(pass + (size_t)nb * 8 * MM_CHUNK8), *m = d + nb * MM_ROWS8;
    const mm_token8 t0 = token8(prepared0, n, has_min), t1 = token8(prepared1, n, has_min);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (int64_t b = b0; b < b1; b++) {
        const uint8_t *p = pass + (size_t)b * 8 * MM_CHUNK8;
        __m256i e0 = _mm256_setzero_si256(), o0 = _mm256_setzero_si256();
        __m256i e1 = _mm256_setzero_si256(), o1 = _mm256_setzero_si256();
        for (int c = 0; c < 8; c += 2) {
            const __m256i w0 = _mm256_load_si256((const __m256i *)(p + c * MM_CHUNK8));
            const __m256i w1 = _mm256_load_si256((const __m256i *)(p + (c + 1) * MM_CHUNK8));
            e0 = _mm256_add_epi16(e0, _mm256_maddubs_epi16(w0, token_chunk8(t0.x, b, c)));
            o0 = _mm256_add_epi16(o0, _mm256_maddubs_epi16(w1, token_chunk8(t0.x, b, c + 1)));
            e1 = _mm256_add_epi16(e1, _mm256_maddubs_epi16(w0, token_chunk8(t1.x, b, c)));
            o1 = _mm256_add_epi16(o1, _mm256_maddubs_epi16(w1, token_chunk8(t1.x, b, c + 1)));
        }
        acc0 = block8_acc(acc0, e0, o0, d, m, b, t0, has_min);
        acc1 = block8_acc(acc1, e1, o1, d, m, b, t1, has_min);
    }
    _mm256_store_ps(sum0, _mm256_add_ps(_mm256_load_ps(sum0), acc0));
    _mm256_store_ps(sum1, _mm256_add_ps(_mm256_load_ps(sum1), acc1));
}

/* ---- Q4_K rows in the split layout for prompts (q4_k_split.h) -----------------------------------------------
 * A pass: the nibbles as above (the sub-blocks as 32-value blocks, ts_prepare_q8_k_prompt's order), then per
 * sub-block the 8 rows' 6-bit scales, each twice in an int32 (an int16 pair), per super-block their mins in int16
 * pairs (sub-blocks 2p, 2p + 1) and their d and dmin. Per sub-block and token the maddubs pair sums (at most
 * 8 x 2 x 15 x 128 = 30720) meet the scale pair in one int16 multiply-add, which gives the scaled dot product in
 * int32 (taking the scales as floats cost a conversion and two multiplies per sub-block); per super-block four more
 * for the mins, then one conversion and multiply-add each with d and dmin. */

static size_t pass8_k_bytes(int64_t nb) {
    return ts_q4_k_pass_bytes(nb, MM_ROWS8);
}

static void unpack8_q4_k_split(const uint8_t *w, size_t row_bytes, int R, int64_t nb, uint8_t *pass) {
    const ts_q4_k_pass k = ts_q4_k_pass_at(pass, nb, MM_ROWS8);
    const int64_t n_super = nb / 8;
    for (int64_t i = 0; i < n_super; i++) {
        const ts_split_group g = ts_split_group_at(i, i + 1, n_super);
        ts_q4_k_prefetch_rows(w + (size_t)MM_ROWS8 * row_bytes, row_bytes, MM_ROWS8, i); /* the next pass's */
        const uint8_t *quants[MM_ROWS8];
        for (int r = 0; r < MM_ROWS8; r++) {
            const uint8_t *grp = w + (size_t)r * row_bytes + g.first * Q4_K_BYTES;
            quants[r] = r < R ? grp + TS_Q4_K_HEAD * g.c + TS_Q4_K_QUANTS * g.j0 : NULL;
            uint8_t sm[16] = {0}; /* a missing row: zero scales and mins */
            float dd = 0.0f, dmin = 0.0f;
            if (r < R) {
                ts_k_scales_mins(grp + TS_Q4_K_HEAD * g.j0 + 4, sm);
                dd = half_at(grp + TS_Q4_K_HEAD * g.j0);
                dmin = half_at(grp + TS_Q4_K_HEAD * g.j0 + 2);
            }
            k.d[i * MM_ROWS8 + r] = dd;
            k.dmin[i * MM_ROWS8 + r] = dmin;
            for (int s = 0; s < 8; s++) {
                k.sc[(8 * i + s) * MM_ROWS8 + r] = (int32_t)((uint32_t)sm[s] * 0x10001u);
            }
            for (int p = 0; p < 4; p++) {
                k.mins[(4 * i + p) * MM_ROWS8 + r] = (int32_t)((uint32_t)sm[8 + 2 * p] | ((uint32_t)sm[9 + 2 * p] << 16));
            }
        }
        for (int s = 0; s < 8; s++) {
            __m256i v[4];
            for (int r = 0; r < 4; r++) {
                __m128i q[2];
                for (int h = 0; h < 2; h++) {
                    const uint8_t *p = quants[r + 4 * h];
                    q[h] = p == NULL ? _mm_setzero_si128()
                                     : _mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i *)(p + 8 * s)),
                                                          _mm_loadl_epi64((const __m128i *)(p + 64 + 8 * s)));
                }
                v[r] = _mm256_set_m128i(q[1], q[0]);
            }
            store_chunks8(v, k.nib + (size_t)(8 * i + s) * 8 * MM_CHUNK8);
        }
    }
}

/* sum[t][r] += row r . x_t over blocks [b0, b1) (whole super-blocks: the driver's slices are 16 blocks), T = 1 or 2
 * tokens, each 32 bytes of the rows loaded once for both */
ALWAYS_INLINE void slice8_k_tokens(const uint8_t *pass, int64_t nb, const void *const *prepared, int64_t n, int64_t b0,
                                   int64_t b1, float *const *sum, const int T) {
    const ts_q4_k_pass k = ts_q4_k_pass_at(pass, nb, MM_ROWS8);
    ts_q8_k_prompt_view tok[2];
    __m256 acc[2];
    for (int t = 0; t < T; t++) {
        tok[t] = ts_view_q8_k_prompt(prepared[t], n);
        acc[t] = _mm256_setzero_ps();
    }
    for (int64_t i = b0 / 8; i < b1 / 8; i++) {
        __m256i isum[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
        for (int s = 0; s < 8; s++) {
            const int64_t b = 8 * i + s;
            const uint8_t *p = k.nib + (size_t)b * 8 * MM_CHUNK8;
            __m256i e[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()}, o[2] = {e[0], e[1]};
            for (int c = 0; c < 8; c += 2) {
                const __m256i w0 = _mm256_load_si256((const __m256i *)(p + c * MM_CHUNK8));
                const __m256i w1 = _mm256_load_si256((const __m256i *)(p + (c + 1) * MM_CHUNK8));
                for (int t = 0; t < T; t++) {
                    e[t] = _mm256_add_epi16(e[t], _mm256_maddubs_epi16(w0, token_chunk8(tok[t].x, b, c)));
                    o[t] = _mm256_add_epi16(o[t], _mm256_maddubs_epi16(w1, token_chunk8(tok[t].x, b, c + 1)));
                }
            }
            const __m256i sc = _mm256_load_si256((const __m256i *)(k.sc + b * MM_ROWS8));
            for (int t = 0; t < T; t++) {
                isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(_mm256_add_epi16(e[t], o[t]), sc));
            }
        }
        const __m256 d = _mm256_load_ps(k.d + i * MM_ROWS8), dmin = _mm256_load_ps(k.dmin + i * MM_ROWS8);
        for (int t = 0; t < T; t++) {
            __m256i imin = _mm256_setzero_si256();
            for (int p = 0; p < 4; p++) {
                imin = _mm256_add_epi32(imin, _mm256_madd_epi16(_mm256_load_si256((const __m256i *)(k.mins + (4 * i + p) * MM_ROWS8)),
                                                                _mm256_set1_epi32(tok[t].sums[4 * i + p])));
            }
            const __m256 xd = _mm256_set1_ps(tok[t].dx[i]);
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(d, xd), acc[t]);
            acc[t] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(imin), _mm256_mul_ps(dmin, xd), acc[t]);
        }
    }
    for (int t = 0; t < T; t++) {
        _mm256_store_ps(sum[t], _mm256_add_ps(_mm256_load_ps(sum[t]), acc[t]));
    }
}

static void slice8_k(const uint8_t *pass, int64_t nb, const void *x, int64_t n, int64_t b0, int64_t b1, float *sum) {
    const void *p[1] = {x};
    float *s[1] = {sum};
    slice8_k_tokens(pass, nb, p, n, b0, b1, s, 1);
}

static void slice8x2_k(const uint8_t *pass, int64_t nb, const void *x0, const void *x1, int64_t n, int64_t b0,
                       int64_t b1, float *sum0, float *sum1) {
    const void *p[2] = {x0, x1};
    float *s[2] = {sum0, sum1};
    slice8_k_tokens(pass, nb, p, n, b0, b1, s, 2);
}

static void slice8_q4_0(const uint8_t *pass, int64_t nb, const void *x, int64_t n, int64_t b0, int64_t b1, float *sum) {
    slice8_q4(pass, nb, x, n, b0, b1, sum, 0);
}

static void slice8_q4_1(const uint8_t *pass, int64_t nb, const void *x, int64_t n, int64_t b0, int64_t b1, float *sum) {
    slice8_q4(pass, nb, x, n, b0, b1, sum, 1);
}

static void slice8x2_q4_0(const uint8_t *pass, int64_t nb, const void *x0, const void *x1, int64_t n, int64_t b0,
                          int64_t b1, float *sum0, float *sum1) {
    slice8x2_q4(pass, nb, x0, x1, n, b0, b1, sum0, sum1, 0);
}

static void slice8x2_q4_1(const uint8_t *pass, int64_t nb, const void *x0, const void *x1, int64_t n, int64_t b0,
                          int64_t b1, float *sum0, float *sum1) {
    slice8x2_q4(pass, nb, x0, x1, n, b0, b1, sum0, sum1, 1);
}

TS_DEFINE_MATMUL(q4_0, MM_ROWS8, pass8_bytes, prepare_q8_0, unpack8_q4_0, slice8_q4_0, slice8x2_q4_0)
TS_DEFINE_MATMUL(q4_1, MM_ROWS8, pass8_bytes, prepare_q8_1, unpack8_q4_1, slice8_q4_1, slice8x2_q4_1)
TS_DEFINE_MATMUL(q4_0_split, MM_ROWS8, pass8_bytes, prepare_q8_0, unpack8_q4_0_split, slice8_q4_0, slice8x2_q4_0)

TS_DEFINE_MATMUL(q4_k_split, MM_ROWS8, pass8_k_bytes, ts_prepare_q8_k_prompt, unpack8_q4_k_split, slice8_k, slice8x2_k)

ts_rows_matmul_fn ts_rows_matmul_avx2_split(enum ggml_type type, int64_t n) {
    if (type == GGML_TYPE_Q4_K) {
        return ts_q4_k_split_takes(n) ? matmul_q4_k_split : NULL;
    }
    return takes_split_rows(type, n) ? matmul_q4_0_split : NULL;
}

ts_rows_matmul_fn ts_rows_matmul_avx2(enum ggml_type type, int64_t n) {
    if (n <= 0 || n > TS_DOT_MAX_N || n % 32 != 0) {
        return NULL;
    }
    switch (type) {
    case GGML_TYPE_Q4_0: return matmul_q4_0;
    case GGML_TYPE_Q4_1: return matmul_q4_1;
    default: return NULL;
    }
}

/* ---- table -------------------------------------------------------------------------------------------- */

int ts_dot_kernel_avx2(enum ggml_type type, int64_t n, ts_dot_kernel *k) {
    /* whole blocks (the type's own rule, which ggml checks too); every prepared layout takes n * 5/4 bytes at most */
    if (n <= 0 || n > TS_DOT_MAX_N || n % ggml_blck_size(type) != 0) {
        return 0;
    }
    switch (type) {
    case GGML_TYPE_Q4_0: *k = (ts_dot_kernel){TS_ISA_AVX2, prepare_q8_0, dot_rows_q4_0}; return 1;
    case GGML_TYPE_Q8_0: *k = (ts_dot_kernel){TS_ISA_AVX2, prepare_q8_0, dot_rows_q8_0}; return 1;
    case GGML_TYPE_Q4_1: *k = (ts_dot_kernel){TS_ISA_AVX2, prepare_q8_1, dot_rows_q4_1}; return 1;
    case GGML_TYPE_Q4_K: *k = (ts_dot_kernel){TS_ISA_AVX2, prepare_q8_k, dot_rows_q4_k}; return 1;
    default: return 0;
    }
}

int ts_dot_kernel_avx2_split(enum ggml_type type, int64_t n, ts_dot_kernel *k) {
    if (type == GGML_TYPE_Q4_K) {
        *k = (ts_dot_kernel){TS_ISA_AVX2, ts_prepare_q8_k_split, dot_rows_q4_k_split};
        return ts_q4_k_split_takes(n);
    }
    *k = (ts_dot_kernel){TS_ISA_AVX2, prepare_split_pairs, dot_rows_q4_0_split};
    return takes_split_rows(type, n);
}

#else /* not compiled for AVX2 (another architecture) */

int ts_dot_kernel_avx2(enum ggml_type type, int64_t n, ts_dot_kernel *k) {
    (void)type, (void)n, (void)k;
    return 0;
}

ts_rows_matmul_fn ts_rows_matmul_avx2(enum ggml_type type, int64_t n) {
    (void)type, (void)n;
    return NULL;
}

int ts_dot_kernel_avx2_split(enum ggml_type type, int64_t n, ts_dot_kernel *k) {
    (void)type, (void)n, (void)k;
    return 0;
}

ts_rows_matmul_fn ts_rows_matmul_avx2_split(enum ggml_type type, int64_t n) {
    (void)type, (void)n;
    return NULL;
}

#endif
