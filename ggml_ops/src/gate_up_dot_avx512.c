/*
 * AVX-512 VNNI gate/up kernels: Q4_0 and Q8_0 rows against a Q8_0 activation, two 32-blocks per instruction, and Q4_K
 * rows against a Q8_K activation, 64 values per instruction; each against an activation prepared once per token,
 * AVX512_DOT_ROWS rows per pass while the next pass's rows are prefetched line by line (dot_rows_driver.h, as the
 * AVX2 kernels). Until 2026-12-02 it took two rows at a time and asked for the next
 * two rows whole in one burst: on an AMD EPYC Zen 5 the AVX2 kernel then read 10 % of a layer's rows from memory
 * 1.2-1.45x faster than it.
 *
 * For prompts (rows_matmul.h), Q4_0 and Q8_0 rows 16 at a time, interleaved so that one dpbusd serves 16 rows (below).
 * Q4_0 gate and up rows of a multiple of 64 values, and Q4_K ones, are held in the split layout, which both kinds read
 * faster (gate_up_dot.h: ts_gate_up_split; q4_k_split.h; the kernels below the ggml layout's).
 *
 * Compiled with -mavx512f -mavx512bw -mavx512vnni (CMakeLists.txt) and reached only through ts_dot_kernel_best,
 * ts_dot_kernel_for and ts_rows_matmul_kernel, which ask the CPU first. Q4_1 on such CPUs takes the AVX2 kernel.
 */
#include "gate_up_dot.h"

#include "dot_rows_driver.h"
#include "q4_k_scales.h"
#include "q4_k_split.h"
#include "rows_matmul.h"
#include "rows_matmul_driver.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__F16C__)
#include <immintrin.h>
#include <string.h>

/* Rows per pass: 8 (4 neurons' gate and up) where AVX2 takes 4. One core reads scattered rows from memory at ~10 GB/s
 * whatever the arithmetic, so more rows in flight pay: on an AMD EPYC Zen 4 (1 thread, 10 % of 14336 rows of 4096
 * from memory, libraries alternating) Q4_0 12.5-13.7 against 11.5-11.7 GB/s, Q4_K 12.0-12.7 against 11.1-11.4; the
 * twins' predictor decoding faster in 8 of 12 pairs (medians +2 % 7B, +5 % Mixtral). 16 would need 16 zmm
 * accumulators per pass. */
#define AVX512_DOT_ROWS TS_DOT_ROWS_MAX

/*
 * The prepared activation (1.25 bytes per value, so rows of TS_DOT_MAX_N values fit):
 *   x     int8[n], per pair of 32-blocks (b, b+1) 64 bytes x_b[0:16], x_b+1[0:16], x_b[16:32], x_b+1[16:32]: the
 *         order in which a Q4_0 pair's low and high nibbles come out of one 32-byte load (a Q4_0 block stores value
 *         k in the low nibble of byte k and value k + 16 in the high nibble); int32 lanes 0-3 and 8-11 hold block b,
 *         lanes 4-7 and 12-15 block b+1;
 *   d     float[n / 32], the activation block scales;
 *   corr  int32[n / 32], -8 * (sum of the block's x), so that a dot product over Q4_0's unsigned nibbles q gives the
 *         sum over (q - 8) * x.
 * Q4_0 block: {fp16 d, 16 bytes}; Q8_0 block: {fp16 d, 32 int8}.
 */
enum { Q4_0_BYTES = 18, Q8_0_BYTES = 34, Q4_K_BYTES = 144 };

#define ALWAYS_INLINE static inline __attribute__((always_inline))

static float half_at(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, sizeof(h));
    return _cvtsh_ss(h);
}

static const void *prepare_pairs(const void *xq, int64_t n, void *buf) {
    const uint8_t *src = xq;
    int8_t *x = buf;
    float *d = (float *)(x + n);
    int32_t *corr = (int32_t *)(d + n / 32);
    for (int64_t b = 0; b < n / 32; b += 2) {
        const uint8_t *b0 = src + b * Q8_0_BYTES, *b1 = b0 + Q8_0_BYTES;
        memcpy(x + 32 * b, b0 + 2, 16);
        memcpy(x + 32 * b + 16, b1 + 2, 16);
        memcpy(x + 32 * b + 32, b0 + 18, 16);
        memcpy(x + 32 * b + 48, b1 + 18, 16);
        for (int k = 0; k < 2; k++) {
            const int8_t *q = (const int8_t *)(src + (b + k) * Q8_0_BYTES + 2);
            int32_t sum = 0;
            for (int i = 0; i < 32; i++) {
                sum += q[i];
            }
            d[b + k] = half_at(src + (b + k) * Q8_0_BYTES);
            corr[b + k] = -8 * sum;
        }
    }
    return buf;
}

/* block b's value in lanes 0-3 and 8-11, block b+1's in lanes 4-7 and 12-15 (v: b's in element 0, b+1's in 1) */
ALWAYS_INLINE __m512 pair_lanes_ps(__m128 v) {
    const __m512i lanes = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1);
    return _mm512_permutexvar_ps(lanes, _mm512_castps128_ps512(v));
}

/* the two blocks' corrections as dpbusd's accumulator: b's in lane 0, b+1's in lane 4, zeros elsewhere */
ALWAYS_INLINE __m512i pair_corr(const int32_t *corr) {
    const __m512i lanes = _mm512_setr_epi32(0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m128i c = _mm_loadl_epi64((const __m128i *)corr);
    return _mm512_maskz_permutexvar_epi32(0x0011, lanes, _mm512_castsi128_si512(c));
}

/* The 64 nibbles of a Q4_0 pair as unsigned bytes in the prepared activation's order: the two blocks' 16 bytes
 * broadcast from memory into [b | b+1 | b | b+1] (load-port work, where building it from 128-bit halves took two
 * shuffle-port inserts), the upper 256 bits shifted to their high nibbles */
ALWAYS_INLINE __m512i pair_nibbles(const uint8_t *b0) {
    __m512i y = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(b0 + 2)));
    y = _mm512_mask_broadcast_i32x4(y, 0xF0F0, _mm_loadu_si128((const __m128i *)(b0 + Q4_0_BYTES + 2)));
    return _mm512_and_si512(_mm512_srlv_epi64(y, _mm512_setr_epi64(0, 0, 0, 0, 4, 4, 4, 4)), _mm512_set1_epi8(0x0F));
}

/* the two fp16 scales of consecutive blocks of block_bytes as floats in elements 0 and 1 */
ALWAYS_INLINE __m128 pair_scales(const uint8_t *b0, size_t block_bytes) {
    uint16_t h0, h1;
    memcpy(&h0, b0, sizeof(h0));
    memcpy(&h1, b0 + block_bytes, sizeof(h1));
    return _mm_cvtph_ps(_mm_cvtsi32_si128((int)((uint32_t)h0 | ((uint32_t)h1 << 16))));
}

/* acc + one step of a row's dot product: the pair's 64 nibbles (pair_nibbles' order) and two weight scales wd against
 * the prepared activation's x, corrections and scales dx of the same pair */
ALWAYS_INLINE __m512 pair_step(__m512 acc, __m512i nibbles, __m128 wd, __m512i x, __m512i corr, __m128 dx) {
    const __m512i t = _mm512_dpbusd_epi32(corr, nibbles, x);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), pair_lanes_ps(_mm_mul_ps(wd, dx)), acc);
}

/* The Q4_0 weight scales of two pairs (4 blocks from b0) times the activation's dx[0, 4), each pair's in its lanes as
 * pair_lanes_ps puts them: one conversion and one product for both pairs (the same values as pair_step's) */
ALWAYS_INLINE void quad_scale_lanes(const uint8_t *b0, const float *dx, __m512 *first, __m512 *second) {
    uint16_t h[4];
    for (int i = 0; i < 4; i++) {
        memcpy(&h[i], b0 + i * Q4_0_BYTES, sizeof(uint16_t));
    }
    const uint64_t packed = (uint64_t)h[0] | (uint64_t)h[1] << 16 | (uint64_t)h[2] << 32 | (uint64_t)h[3] << 48;
    const __m512 s = _mm512_castps128_ps512(_mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi64_si128((long long)packed)), _mm_loadu_ps(dx)));
    *first = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1), s);
    *second = _mm512_permutexvar_ps(_mm512_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3, 2, 2, 2, 2, 3, 3, 3, 3), s);
}

/* acc + the pair's dot product with its scales already in lanes */
ALWAYS_INLINE __m512 pair_step_lanes(__m512 acc, __m512i nibbles, __m512i x, __m512i corr, __m512 scale_lanes) {
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(corr, nibbles, x)), scale_lanes, acc);
}

/* Whether the AVX-512 Q4_0 kernels (decoding and prompts) take rows of n values of `type`: whole pairs of blocks
 * whose prepared activation fits */
static int takes_rows(enum ggml_type type, int64_t n) {
    return type == GGML_TYPE_Q4_0 && n > 0 && n % 64 == 0 && n <= TS_DOT_MAX_N;
}

/* out[k] = rows[k] . x for k < R: 128 values of every row per step (two pairs sharing their scales' conversion),
 * then a last pair where n / 64 is odd */
ALWAYS_INLINE void group_q4_0(const void *const *rows, const int R, const void *prepared, int64_t n, float *out,
                              ts_row_prefetcher *pf) {
    const ts_q8_0_view v = ts_view_q8_0(prepared, n);
    __m512 acc[AVX512_DOT_ROWS];
    for (int k = 0; k < R; k++) {
        acc[k] = _mm512_setzero_ps();
    }
    int64_t b = 0;
    for (; b + 4 <= n / 32; b += 4) {
        ts_prefetch_upto(pf, (size_t)(b + 4) * Q4_0_BYTES + 64);
        const __m512i x0 = _mm512_load_si512((const void *)(v.x + 32 * b));
        const __m512i x1 = _mm512_load_si512((const void *)(v.x + 32 * (b + 2)));
        const __m512i corr0 = pair_corr(v.corr + b), corr1 = pair_corr(v.corr + b + 2);
        for (int k = 0; k < R; k++) {
            const uint8_t *b0 = (const uint8_t *)rows[k] + b * Q4_0_BYTES;
            __m512 s0, s1;
            quad_scale_lanes(b0, v.d + b, &s0, &s1);
            acc[k] = pair_step_lanes(acc[k], pair_nibbles(b0), x0, corr0, s0);
            acc[k] = pair_step_lanes(acc[k], pair_nibbles(b0 + 2 * Q4_0_BYTES), x1, corr1, s1);
        }
    }
    for (; b < n / 32; b += 2) {
        ts_prefetch_upto(pf, (size_t)(b + 2) * Q4_0_BYTES + 64);
        const __m512i x = _mm512_load_si512((const void *)(v.x + 32 * b));
        const __m512i corr = pair_corr(v.corr + b);
        const __m128 dx = _mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)(v.d + b)));
        for (int k = 0; k < R; k++) {
            const uint8_t *b0 = (const uint8_t *)rows[k] + b * Q4_0_BYTES;
            acc[k] = pair_step(acc[k], pair_nibbles(b0), pair_scales(b0, Q4_0_BYTES), x, corr, dx);
        }
    }
    for (int k = 0; k < R; k++) {
        out[k] = _mm512_reduce_add_ps(acc[k]);
    }
}

TS_DEFINE_DOT_ROWS(q4_0, group_q4_0, 32, Q4_0_BYTES, AVX512_DOT_ROWS)

/* ---- Q4_0 rows in the split layout (axpy_rows.h: per group of 8 blocks their 8 scales, then their 8 x 16 quants) ----
 * Four blocks' quants are one 64-byte load: its low nibbles (values 0-15 of each block) and its high nibbles (values
 * 16-31) meet the activation's matching 64 bytes in two dpbusd that add into the same lanes (block i of the four in
 * lanes 4i .. 4i+3), and a group's 8 scales are one 16-byte load, converted and multiplied by the activation's at
 * once: per two blocks half the conversions and multiply-adds of the ggml layout's kernel above, and no scalar
 * assembly of scales or lane permutes of pairs. Rows in L2, one thread, AMD EPYC Zen 4: 53.5 against 23.2 GB/s.
 * Rows of whole pairs of blocks (n a multiple of 64): a row's last group may hold 2, 4 or 6 blocks (its c scales,
 * then its c quants), read with masked loads. The loader holds gate and up rows so where ts_gate_up_split says.
 *
 * prepared: x int8[n rounded up to 128], per 4 blocks 64 bytes of their values 0-15 (block after block), then 64 of
 *           their values 16-31 | d float[n / 32] | corr int32[n / 32] (-8 x the block's sum of x, for Q4_0's offset)
 */
enum { SPLIT_GROUP_BYTES = 8 * Q4_0_BYTES };

static int64_t quads_x_bytes(int64_t n) {
    return (n + 127) / 128 * 128;
}

static const void *prepare_quads(const void *xq, int64_t n, void *buf) {
    const uint8_t *src = xq;
    int8_t *x = buf;
    float *d = (float *)(x + quads_x_bytes(n));
    int32_t *corr = (int32_t *)(d + n / 32);
    const int64_t whole = n / 128 * 128; /* the whole quads' bytes: a last quad's missing blocks hold no values */
    memset(x + whole, 0, (size_t)(quads_x_bytes(n) - whole));
    for (int64_t b = 0; b < n / 32; b++) {
        const int8_t *q = (const int8_t *)(src + b * Q8_0_BYTES + 2);
        int8_t *quad = x + 128 * (b / 4) + 16 * (b % 4);
        memcpy(quad, q, 16);
        memcpy(quad + 64, q + 16, 16);
        int32_t sum = 0;
        for (int i = 0; i < 32; i++) {
            sum += q[i];
        }
        d[b] = half_at(src + b * Q8_0_BYTES);
        corr[b] = -8 * sum;
    }
    return buf;
}

/* m of four blocks' corrections (m <= 4) as dpbusd's accumulator: block i's in lane 4i, zeros elsewhere */
ALWAYS_INLINE __m512i quad_corr(const int32_t *corr, int m) {
    const __m512i lanes = _mm512_setr_epi32(0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0);
    const __m512i c = _mm512_maskz_loadu_epi32((__mmask16)((1u << m) - 1u), corr); /* masked: no read past the end */
    return _mm512_maskz_permutexvar_epi32(0x1111, lanes, c);
}

/* m of four blocks' dot products of one row (m <= 4; quants at q) in int32 lanes, block i in lanes 4i .. 4i+3 */
ALWAYS_INLINE __m512i quad_dot(const uint8_t *q, int m, __m512i x_low, __m512i x_high, __m512i corr) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i w = m == 4 ? _mm512_loadu_si512((const void *)q)
                             : _mm512_maskz_loadu_epi8(((__mmask64)1 << (16 * m)) - 1, (const void *)q);
    const __m512i t = _mm512_dpbusd_epi32(corr, _mm512_and_si512(w, m4), x_low);
    return _mm512_dpbusd_epi32(t, _mm512_and_si512(_mm512_srli_epi16(w, 4), m4), x_high);
}

/* acc + the c blocks (c <= 8) of one row's group at grp against the activation's group at xg (scales dx of those
 * blocks, corrections corr) */
ALWAYS_INLINE __m512 group_step(__m512 acc, const uint8_t *grp, int c, const int8_t *xg, __m256 dx, __m512i c0,
                                __m512i c1) {
    /* the group's scales (floats 0 .. c-1) into the lanes of its first and its last four blocks */
    const __m512i first = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const __m512i last = _mm512_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7);
    const __m128i h = c == 8 ? _mm_loadu_si128((const __m128i *)grp)
                             : _mm512_castsi512_si128(_mm512_maskz_loadu_epi16((__mmask32)((1u << c) - 1u), grp));
    const __m512 s = _mm512_castps256_ps512(_mm256_mul_ps(_mm256_cvtph_ps(h), dx));
    const uint8_t *quants = grp + 2 * c;
    const __m512i x0l = _mm512_load_si512((const void *)xg), x0h = _mm512_load_si512((const void *)(xg + 64));
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(quad_dot(quants, c < 4 ? c : 4, x0l, x0h, c0)),
                          _mm512_permutexvar_ps(first, s), acc);
    if (c > 4) {
        const __m512i x1l = _mm512_load_si512((const void *)(xg + 128)), x1h = _mm512_load_si512((const void *)(xg + 192));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(quad_dot(quants + 64, c - 4, x1l, x1h, c1)),
                              _mm512_permutexvar_ps(last, s), acc);
    }
    return acc;
}

ALWAYS_INLINE void group_q4_0_split(const void *const *rows, const int R, const void *prepared, int64_t n, float *out,
                                    ts_row_prefetcher *pf) {
    const int8_t *x = prepared;
    const float *d = (const float *)(x + quads_x_bytes(n));
    const int32_t *corr = (const int32_t *)(d + n / 32);
    const int64_t nb = n / 32;
    __m512 acc[AVX512_DOT_ROWS];
    for (int k = 0; k < R; k++) {
        acc[k] = _mm512_setzero_ps();
    }
    for (int64_t g = 0; g < (nb + 7) / 8; g++) {
        ts_prefetch_upto(pf, (size_t)(g + 1) * SPLIT_GROUP_BYTES + 64);
        const int c = nb - 8 * g < 8 ? (int)(nb - 8 * g) : 8; /* the group's blocks */
        const __m256 dx = c == 8 ? _mm256_loadu_ps(d + 8 * g)
                                 : _mm512_castps512_ps256(_mm512_maskz_loadu_ps((__mmask16)((1u << c) - 1u), d + 8 * g));
        const __m512i c0 = quad_corr(corr + 8 * g, c < 4 ? c : 4), c1 = c > 4 ? quad_corr(corr + 8 * g + 4, c - 4) : c0;
        for (int k = 0; k < R; k++) {
            acc[k] = group_step(acc[k], (const uint8_t *)rows[k] + g * SPLIT_GROUP_BYTES, c, x + 256 * g, dx, c0, c1);
        }
    }
    for (int k = 0; k < R; k++) {
        out[k] = _mm512_reduce_add_ps(acc[k]);
    }
}

TS_DEFINE_DOT_ROWS(q4_0_split, group_q4_0_split, 32, Q4_0_BYTES, AVX512_DOT_ROWS)

/* Whether the split kernels (decoding and prompts) take rows of n values of `type`: whole pairs of blocks whose
 * prepared activation (1.25 n bytes and a last quad's padding) fits */
static int takes_split_rows(enum ggml_type type, int64_t n) {
    return type == GGML_TYPE_Q4_0 && n > 0 && n % 64 == 0 && n <= TS_DOT_MAX_N;
}

/* ---- Q8_0 rows ------------------------------------------------------------------------------------------
 * prepared: x int8[n] in ggml's order | d float[n / 32] (ts_q8_0_view; no corrections: Q8_0 has no offset).
 * dpbusd multiplies unsigned by signed bytes: |w| times x with w's sign gives w * x (ggml's Q8_0 activation and
 * weight codes lie in [-127, 127], so neither negation overflows). */

static const void *prepare_q8_0(const void *xq, int64_t n, void *buf) {
    const uint8_t *src = xq;
    int8_t *x = buf;
    float *d = (float *)(x + n);
    for (int64_t b = 0; b < n / 32; b++) {
        memcpy(x + 32 * b, src + b * Q8_0_BYTES + 2, 32);
        d[b] = half_at(src + b * Q8_0_BYTES);
    }
    return buf;
}

ALWAYS_INLINE void group_q8_0(const void *const *rows, const int R, const void *prepared, int64_t n, float *out,
                              ts_row_prefetcher *pf) {
    const ts_q8_0_view v = ts_view_q8_0(prepared, n);
    /* block b's scale in lanes 0-7 (its int32 sums), block b+1's in lanes 8-15 */
    const __m512i lanes = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    __m512 acc[AVX512_DOT_ROWS];
    for (int k = 0; k < R; k++) {
        acc[k] = _mm512_setzero_ps();
    }
    for (int64_t b = 0; b < n / 32; b += 2) {
        ts_prefetch_upto(pf, (size_t)(b + 2) * Q8_0_BYTES + 64);
        const __m512i x = _mm512_load_si512((const void *)(v.x + 32 * b));
        const __m128 dx = _mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)(v.d + b)));
        for (int k = 0; k < R; k++) {
            const uint8_t *b0 = (const uint8_t *)rows[k] + b * Q8_0_BYTES;
            const __m512i w = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(b0 + 2))),
                                                 _mm256_loadu_si256((const __m256i *)(b0 + Q8_0_BYTES + 2)), 1);
            const __m512i xs = _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(w), _mm512_setzero_si512(), x);
            const __m512i t = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(w), xs);
            const __m512 s = _mm512_permutexvar_ps(lanes, _mm512_castps128_ps512(_mm_mul_ps(pair_scales(b0, Q8_0_BYTES), dx)));
            acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), s, acc[k]);
        }
    }
    for (int k = 0; k < R; k++) {
        out[k] = _mm512_reduce_add_ps(acc[k]);
    }
}

TS_DEFINE_DOT_ROWS(q8_0, group_q8_0, 32, Q8_0_BYTES, AVX512_DOT_ROWS)

/* ---- Q4_K rows against a Q8_K activation -----------------------------------------------------------------
 * A Q4_K super-block (256 values: fp16 d, fp16 dmin, 12 bytes of 6-bit scales and mins, 128 bytes) holds sub-block
 * 2i in the low nibbles and 2i+1 in the high nibbles of bytes [32i, 32i + 32); value = d * sc_j * nibble - dmin * m_j.
 * prepared: x int8[n], each super-block's 8 sub-blocks of 32 in the order 0 2 1 3 4 6 5 7: the order in which the
 * low and then the high nibbles of a 64-byte half of the quants come out | d float[n / 256] | xsum int16[n / 32]
 * (each sub-block's sum, in sub-block order, for the mins). Per 64 values: maddubs (nibble x value, in int16 pairs),
 * then vpdpwssd with the two sub-blocks' scales (int16 x int16 into int32). */

static const int q8_k_order[8] = {0, 2, 1, 3, 4, 6, 5, 7};

static const void *prepare_q8_k(const void *xq, int64_t n, void *buf) {
    return ts_prepare_q8_k(xq, n, buf, q8_k_order);
}

/* One row's dot product with the prepared activation (pick: group_q4_k's scale lane selections). */
ALWAYS_INLINE float row_q4_k(const uint8_t *row, const ts_q8_k_view *v, int64_t n_blocks, const __m512i *pick,
                             ts_row_prefetcher *pf, size_t pf_base, size_t pf_step) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512 acc = _mm512_setzero_ps();
    __m128 acc_min = _mm_setzero_ps();
    for (int64_t i = 0; i < n_blocks; i++) {
        ts_prefetch_upto(pf, pf_base + (size_t)(i + 1) * pf_step);
        const uint8_t *p = row + i * Q4_K_BYTES;
        const int8_t *x = v->x + 256 * i;
        /* int16: the 8 scales in lanes 0-7, the 8 mins in lanes 8-15 */
        const __m256i sc_mins = _mm256_cvtepu8_epi16(ts_k_scales_mins_vec(p + 4));
        const __m512i sc = _mm512_castsi256_si512(sc_mins);
        __m512i isum = _mm512_setzero_si512();
        for (int half = 0; half < 2; half++) {
            const __m512i q = _mm512_loadu_si512((const void *)(p + 16 + 64 * half));
            const __m512i lo = _mm512_and_si512(q, m4), hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
            isum = _mm512_dpwssd_epi32(isum, _mm512_maddubs_epi16(lo, _mm512_load_si512((const void *)(x + 128 * half))),
                                       _mm512_permutexvar_epi16(pick[2 * half], sc));
            isum = _mm512_dpwssd_epi32(isum, _mm512_maddubs_epi16(hi, _mm512_load_si512((const void *)(x + 128 * half + 64))),
                                       _mm512_permutexvar_epi16(pick[2 * half + 1], sc));
        }
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(half_at(p) * v->d[i]), acc);
        const __m128i xsum = _mm_loadu_si128((const __m128i *)(v->xsum + 8 * i));
        const __m128 m = _mm_cvtepi32_ps(_mm_madd_epi16(_mm256_extracti128_si256(sc_mins, 1), xsum));
        acc_min = _mm_fmadd_ps(m, _mm_set1_ps(half_at(p + 2) * v->d[i]), acc_min);
    }
    const __m128 s = _mm_add_ps(acc_min, _mm_movehl_ps(acc_min, acc_min));
    return _mm512_reduce_add_ps(acc) - _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

ALWAYS_INLINE void group_q4_k(const void *const *rows, const int R, const void *prepared, int64_t n, float *out,
                              ts_row_prefetcher *pf) {
    const ts_q8_k_view v = ts_view_q8_k(prepared, n);
    /* int16 lanes 0-15 and 16-31 of each 64 prepared values h take the scales of sub-blocks q8_k_order[2h, 2h + 1] */
    __m512i pick[4];
    for (int h = 0; h < 4; h++) {
        pick[h] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16((short)q8_k_order[2 * h])),
                                     _mm256_set1_epi16((short)q8_k_order[2 * h + 1]), 1);
    }
    const int64_t n_blocks = n / 256;
    /* a row at a time, its accumulators in registers (a block at a time across the pass's rows they were kept
     * in memory: AVX-512 22.8 -> 24.3 GB/s from L2, one thread, Zen 4); the next pass's lines are asked for evenly
     * meanwhile, so the last lines of its first row get a row's time of lead, not a pass's (--ffn-layer q4_k from
     * DRAM was no slower: 0.70-0.73 against 0.73-0.87 ms); 144 is a whole multiple of every pass size (1-4, 8 rows) */
    const size_t step = (size_t)Q4_K_BYTES / (size_t)R;
    for (int k = 0; k < R; k++) {
        out[k] = row_q4_k((const uint8_t *)rows[k], &v, n_blocks, pick, pf, (size_t)k * (size_t)n_blocks * step + 64,
                          step);
    }
}

TS_DEFINE_DOT_ROWS(q4_k, group_q4_k, 256, Q4_K_BYTES, AVX512_DOT_ROWS)

/* ---- Q4_K rows in the split layout (q4_k_split.h) ----------------------------------------------------------
 * Per group, its headers four to a 64-byte load: each 128-bit lane one block's, decoded in place (8 scales, 8 mins),
 * its d and dmin times the activation's in one conversion and multiply for the group. Per block two 64-byte loads,
 * four maddubs added in int16, one lane permute for the scales, one int16 multiply-add, one conversion and one
 * multiply-add; per two blocks one multiply-add for the mins (ggml's layout: four permutes and four multiply-adds
 * per block, the scales decoded block by block). */

/* the scales and mins of the 4 headers in v, each 128-bit lane's 16 bytes made its block's 8 scales, then 8 mins (as
 * q4_k_scales.h's ts_k_scales_mins_vec, the packed bytes starting at byte 4 of each lane) */
ALWAYS_INLINE __m512i headers_scales_mins(__m512i v) {
    const __m512i low = _mm512_shuffle_epi8(
        v, _mm512_broadcast_i32x4(_mm_setr_epi8(4, 5, 6, 7, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15)));
    const __m512i keep = _mm512_broadcast_i32x4(_mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 0, 0, 0, 0));
    const __m512i keep_high = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 15, 15, 15));
    const __m512i bits = _mm512_or_si512(_mm512_and_si512(low, keep), _mm512_and_si512(_mm512_srli_epi16(low, 4), keep_high));
    const __m512i top = _mm512_shuffle_epi8(
        v, _mm512_broadcast_i32x4(_mm_setr_epi8(-1, -1, -1, -1, 4, 5, 6, 7, -1, -1, -1, -1, 8, 9, 10, 11)));
    return _mm512_or_si512(bits, _mm512_and_si512(_mm512_srli_epi16(top, 2), _mm512_set1_epi8(0x30)));
}

/* acc + the c blocks (c <= 8) of one row's group at grp against the prepared activation's blocks from block b */
ALWAYS_INLINE __m512 q4_k_split_group(__m512 acc, const uint8_t *grp, int c, const ts_q4_k_split_view *v, int64_t b,
                                      ts_row_prefetcher *pf, size_t pf_base, size_t pf_step) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    /* int16 lane l of a block's scale vector: the scale of sub-block l / 4 (blocks 2p in lanes 0-15 of sm[p]) */
    const __m512i pick_even = _mm512_set_epi16(7, 7, 7, 7, 6, 6, 6, 6, 5, 5, 5, 5, 4, 4, 4, 4, 3, 3, 3, 3, 2, 2, 2, 2,
                                               1, 1, 1, 1, 0, 0, 0, 0);
    const __m512i pick_odd = _mm512_add_epi16(pick_even, _mm512_set1_epi16(16));
    const __m512i h0 = c >= 4 ? _mm512_loadu_si512((const void *)grp)
                              : _mm512_maskz_loadu_epi32((__mmask16)((1u << (4 * c)) - 1u), grp);
    const __m512i h1 = c == 8  ? _mm512_loadu_si512((const void *)(grp + 64))
                       : c > 4 ? _mm512_maskz_loadu_epi32((__mmask16)((1u << (4 * (c - 4))) - 1u), grp + 64)
                               : _mm512_setzero_si512();
    /* d_j, dmin_j of block j in floats 2j, 2j+1, times the activation's d */
    const __m512i heads = _mm512_permutex2var_epi32(
        h0, _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 0, 0, 0, 0, 0, 0, 0), h1);
    _Alignas(64) float f[16];
    _mm512_store_ps(f, _mm512_mul_ps(_mm512_cvtph_ps(_mm512_castsi512_si256(heads)), _mm512_loadu_ps(v->dd + 2 * b)));
    const __m512i dec[2] = {headers_scales_mins(h0), headers_scales_mins(h1)};
    for (int p = 0; 2 * p < c; p++) {
        ts_prefetch_upto(pf, pf_base + (size_t)(b + 2 * p + 2) * pf_step);
        /* blocks 2p, 2p+1: scales in int16 lanes 0-7 and 16-23, mins in 8-15 and 24-31 */
        const __m512i sm = _mm512_cvtepu8_epi16(p % 2 ? _mm512_extracti64x4_epi64(dec[p / 2], 1)
                                                      : _mm512_castsi512_si256(dec[p / 2]));
        const __m512i xs = 2 * p + 1 < c ? _mm512_loadu_si512((const void *)(v->xs + 16 * (b + 2 * p)))
                                         : _mm512_maskz_loadu_epi16(0xFFFF, v->xs + 16 * (b + 2 * p));
        const __m512 dmin = _mm512_permutexvar_ps(
            _mm512_setr_epi32(0, 0, 0, 0, 4 * p + 1, 4 * p + 1, 4 * p + 1, 4 * p + 1, 0, 0, 0, 0, 4 * p + 3, 4 * p + 3,
                              4 * p + 3, 4 * p + 3),
            _mm512_load_ps(f));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpwssd_epi32(_mm512_setzero_si512(), sm, xs)), dmin, acc);
        for (int j = 2 * p; j < 2 * p + 2 && j < c; j++) {
            const uint8_t *q = grp + TS_Q4_K_HEAD * c + TS_Q4_K_QUANTS * j;
            const int8_t *x = v->x + 256 * (b + j);
            const __m512i qa = _mm512_loadu_si512((const void *)q), qb = _mm512_loadu_si512((const void *)(q + 64));
            __m512i s = _mm512_maddubs_epi16(_mm512_and_si512(qa, m4), _mm512_load_si512((const void *)x));
            s = _mm512_add_epi16(s, _mm512_maddubs_epi16(_mm512_and_si512(_mm512_srli_epi16(qa, 4), m4),
                                                         _mm512_load_si512((const void *)(x + 64))));
            s = _mm512_add_epi16(s, _mm512_maddubs_epi16(_mm512_and_si512(qb, m4), _mm512_load_si512((const void *)(x + 128))));
            s = _mm512_add_epi16(s, _mm512_maddubs_epi16(_mm512_and_si512(_mm512_srli_epi16(qb, 4), m4),
                                                         _mm512_load_si512((const void *)(x + 192))));
            const __m512i sc = _mm512_permutexvar_epi16(j % 2 ? pick_odd : pick_even, sm);
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpwssd_epi32(_mm512_setzero_si512(), s, sc)), _mm512_set1_ps(f[2 * j]), acc);
        }
    }
    return acc;
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
        __m512 acc = _mm512_setzero_ps();
        for (int64_t b = 0; b < nb; b += TS_SPLIT_GROUP) {
            const int c = ts_split_group_at(b, b + 1, nb).c;
            /* whole groups through a copy unrolled for 8 blocks */
            acc = c == TS_SPLIT_GROUP ? q4_k_split_group(acc, row + b * Q4_K_BYTES, TS_SPLIT_GROUP, &v, b, &next, 64, Q4_K_BYTES)
                                      : q4_k_split_group(acc, row + b * Q4_K_BYTES, c, &v, b, &next, 64, Q4_K_BYTES);
        }
        out[k] = _mm512_reduce_add_ps(acc);
    }
}

TS_DEFINE_DOT_ROWS(q4_k_split, group_q4_k_split, 256, Q4_K_BYTES, AVX512_DOT_ROWS)

/* ---- many tokens (prompts): rows_matmul.h's kernels for Q4_0 and Q8_0 -------------------------------------
 * A pass unpacks 16 rows into one buffer interleaved by row: for each block b and each 4 values c of it (8 per
 * block), 64 bytes holding the 16 rows' values 4c .. 4c+3 as unsigned bytes (Q4_0's nibbles; Q8_0's codes + 128),
 * row r in int32 lane r; then each block's 16 row scales as floats. Against a token, dpbusd with the token's 4 values
 * broadcast adds one block's dot product for all 16 rows, so a block costs 8 dpbusd, one conversion and one
 * multiply-add for 512 products (a row at a time, as decoding runs, costs a conversion, a lane permute and a
 * multiply-add per 64). The unsigned bytes' offset (-8 or -128 x the sum of the token's block) starts each block's
 * sums. Q8_0 had no prompt kernel before (one of the row-at-a-time design was no faster than ggml's plain path). */

#define MM_ROWS16 16
#define MM_CHUNK_BYTES (MM_ROWS16 * 4) /* one 4-value chunk of 16 rows */

/* prepared: x int8[n] in ggml's order | d float[n / 32] | corr int32[n / 32] (ts_q8_0_view), corr = -offset sum(x):
 * the weights' bytes are unsigned, the stored value plus offset (8 for Q4_0's nibbles, 128 for Q8_0's codes) */
static const void *prepare_blocks(const void *xq, int64_t n, void *buf, int32_t offset) {
    prepare_q8_0(xq, n, buf); /* x and d */
    const int8_t *x = buf;
    int32_t *corr = (int32_t *)((float *)(x + n) + n / 32);
    for (int64_t b = 0; b < n / 32; b++) {
        int32_t sum = 0;
        for (int i = 0; i < 32; i++) {
            sum += x[32 * b + i];
        }
        corr[b] = -offset * sum;
    }
    return buf;
}

static const void *prepare_blocks_q4_0(const void *xq, int64_t n, void *buf) {
    return prepare_blocks(xq, n, buf, 8);
}

static const void *prepare_blocks_q8_0(const void *xq, int64_t n, void *buf) {
    return prepare_blocks(xq, n, buf, 128);
}

/* A pass: nib [nb][8 chunks][16 rows][4 values], then the scales d [nb][16 rows] */
static size_t pass16_bytes(int64_t nb) {
    return (size_t)nb * (8 * MM_CHUNK_BYTES + sizeof(float) * MM_ROWS16);
}

/* The 16 rows of a pass as gather offsets (row r in lane r), the lanes past R masked off: they read nothing */
typedef struct {
    __mmask16 live;
    __m512i offsets;
} rows16;

ALWAYS_INLINE rows16 rows16_of(size_t row_bytes, int R) {
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    return (rows16){(__mmask16)((1u << R) - 1u), _mm512_mullo_epi32(lane, _mm512_set1_epi32((int)row_bytes))};
}

/* the 4 bytes at `at` in each row (0 in the lanes past R) */
ALWAYS_INLINE __m512i gather16(rows16 g, const uint8_t *at) {
    return _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), g.live, g.offsets, at, 1);
}

/* the rows' fp16 scales at the start of their blocks at `block` as floats */
ALWAYS_INLINE __m512 scales16(rows16 g, const uint8_t *block) {
    return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(gather16(g, block)));
}

/* R Q4_0 rows (the others of the 16 as zeros) into a pass: per block, each 4 bytes c of the rows' nibbles gathered
 * give chunks c (low nibbles) and c + 4 (high nibbles) */
static void unpack16_q4_0(const uint8_t *w, size_t row_bytes, int R, int64_t nb, uint8_t *pass) {
    float *d = (float *)(pass + (size_t)nb * 8 * MM_CHUNK_BYTES);
    const rows16 g = rows16_of(row_bytes, R);
    const __m512i low = _mm512_set1_epi8(0x0F);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *block = w + b * Q4_0_BYTES;
        uint8_t *chunk = pass + (size_t)b * 8 * MM_CHUNK_BYTES;
        for (int c = 0; c < 4; c++) {
            const __m512i q = gather16(g, block + 2 + 4 * c);
            _mm512_store_si512((void *)(chunk + c * MM_CHUNK_BYTES), _mm512_and_si512(q, low));
            _mm512_store_si512((void *)(chunk + (c + 4) * MM_CHUNK_BYTES), _mm512_and_si512(_mm512_srli_epi32(q, 4), low));
        }
        _mm512_store_ps(d + b * MM_ROWS16, scales16(g, block));
    }
}

/* The same from Q4_0 rows in the split layout (block b's scale and quants within its group of 8: takes_split_rows) */
static void unpack16_q4_0_split(const uint8_t *w, size_t row_bytes, int R, int64_t nb, uint8_t *pass) {
    float *d = (float *)(pass + (size_t)nb * 8 * MM_CHUNK_BYTES);
    const rows16 g = rows16_of(row_bytes, R);
    const __m512i low = _mm512_set1_epi8(0x0F);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *group = w + (b / 8) * SPLIT_GROUP_BYTES;
        const int64_t blocks = nb - b / 8 * 8 < 8 ? nb - b / 8 * 8 : 8; /* the group's: its scales come first */
        const uint8_t *quants = group + 2 * blocks + 16 * (b % 8);
        uint8_t *chunk = pass + (size_t)b * 8 * MM_CHUNK_BYTES;
        for (int c = 0; c < 4; c++) {
            const __m512i q = gather16(g, quants + 4 * c);
            _mm512_store_si512((void *)(chunk + c * MM_CHUNK_BYTES), _mm512_and_si512(q, low));
            _mm512_store_si512((void *)(chunk + (c + 4) * MM_CHUNK_BYTES), _mm512_and_si512(_mm512_srli_epi32(q, 4), low));
        }
        _mm512_store_ps(d + b * MM_ROWS16, scales16(g, group + 2 * (b % 8)));
    }
}

/* R Q8_0 rows into a pass: each 4 codes c of the rows' blocks gathered, made unsigned (+128; the lanes past R hold
 * 128, never stored) */
static void unpack16_q8_0(const uint8_t *w, size_t row_bytes, int R, int64_t nb, uint8_t *pass) {
    float *d = (float *)(pass + (size_t)nb * 8 * MM_CHUNK_BYTES);
    const rows16 g = rows16_of(row_bytes, R);
    const __m512i offset = _mm512_set1_epi8((char)0x80);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *block = w + b * Q8_0_BYTES;
        uint8_t *chunk = pass + (size_t)b * 8 * MM_CHUNK_BYTES;
        for (int c = 0; c < 8; c++) {
            _mm512_store_si512((void *)(chunk + c * MM_CHUNK_BYTES), _mm512_xor_si512(gather16(g, block + 2 + 4 * c), offset));
        }
        _mm512_store_ps(d + b * MM_ROWS16, scales16(g, block));
    }
}

/* the token's 4 values c of block b, broadcast to every lane */
ALWAYS_INLINE __m512i token_chunk(const int8_t *x, int64_t b, int c) {
    int32_t v;
    memcpy(&v, x + 32 * b + 4 * c, sizeof(v));
    return _mm512_set1_epi32(v);
}

/* block b's dot products for the 16 rows as integers (the token's offset correction included), two chains of 4 */
ALWAYS_INLINE __m512i block16(const uint8_t *pass, const ts_q8_0_view v, int64_t b) {
    const uint8_t *p = pass + (size_t)b * 8 * MM_CHUNK_BYTES;
    __m512i even = _mm512_set1_epi32(v.corr[b]), odd = _mm512_setzero_si512();
    for (int c = 0; c < 8; c += 2) {
        even = _mm512_dpbusd_epi32(even, _mm512_load_si512((const void *)(p + c * MM_CHUNK_BYTES)), token_chunk(v.x, b, c));
        odd = _mm512_dpbusd_epi32(odd, _mm512_load_si512((const void *)(p + (c + 1) * MM_CHUNK_BYTES)),
                                  token_chunk(v.x, b, c + 1));
    }
    return _mm512_add_epi32(even, odd);
}

/* sum[r] += row r . x over blocks [b0, b1), block by block (as slice16x2 sums each of its tokens) */
static void slice16(const uint8_t *pass, int64_t nb, const void *prepared, int64_t n, int64_t b0, int64_t b1,
                         float *sum) {
    const float *d = (const float *)(pass + (size_t)nb * 8 * MM_CHUNK_BYTES);
    const ts_q8_0_view v = ts_view_q8_0(prepared, n);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t b = b0; b < b1; b++) {
        const __m512 scale = _mm512_mul_ps(_mm512_load_ps(d + b * MM_ROWS16), _mm512_set1_ps(v.d[b]));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(block16(pass, v, b)), scale, acc);
    }
    _mm512_store_ps(sum, _mm512_add_ps(_mm512_load_ps(sum), acc));
}

/* the same for two tokens at once, each 64 bytes of the rows loaded once for both */
static void slice16x2(const uint8_t *pass, int64_t nb, const void *prepared0, const void *prepared1, int64_t n,
                           int64_t b0, int64_t b1, float *sum0, float *sum1) {
    const float *d = (const float *)(pass + (size_t)nb * 8 * MM_CHUNK_BYTES);
    const ts_q8_0_view v0 = ts_view_q8_0(prepared0, n), v1 = ts_view_q8_0(prepared1, n);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    for (int64_t b = b0; b < b1; b++) {
        const uint8_t *p = pass + (size_t)b * 8 * MM_CHUNK_BYTES;
        __m512i e0 = _mm512_set1_epi32(v0.corr[b]), o0 = _mm512_setzero_si512();
        __m512i e1 = _mm512_set1_epi32(v1.corr[b]), o1 = _mm512_setzero_si512();
        for (int c = 0; c < 8; c += 2) {
            const __m512i w0 = _mm512_load_si512((const void *)(p + c * MM_CHUNK_BYTES));
            const __m512i w1 = _mm512_load_si512((const void *)(p + (c + 1) * MM_CHUNK_BYTES));
            e0 = _mm512_dpbusd_epi32(e0, w0, token_chunk(v0.x, b, c));
            o0 = _mm512_dpbusd_epi32(o0, w1, token_chunk(v0.x, b, c + 1));
            e1 = _mm512_dpbusd_epi32(e1, w0, token_chunk(v1.x, b, c));
            o1 = _mm512_dpbusd_epi32(o1, w1, token_chunk(v1.x, b, c + 1));
        }
        const __m512 rd = _mm512_load_ps(d + b * MM_ROWS16);
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(e0, o0)), _mm512_mul_ps(rd, _mm512_set1_ps(v0.d[b])), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(e1, o1)), _mm512_mul_ps(rd, _mm512_set1_ps(v1.d[b])), acc1);
    }
    _mm512_store_ps(sum0, _mm512_add_ps(_mm512_load_ps(sum0), acc0));
    _mm512_store_ps(sum1, _mm512_add_ps(_mm512_load_ps(sum1), acc1));
}

/* ---- Q4_K rows in the split layout for prompts (q4_k_split.h) ---------------------------------------------------
 * A pass as above for the nibbles (the sub-blocks read as 32-value blocks, ts_prepare_q8_k_prompt's order), then per
 * sub-block the 16 rows' 6-bit scales as int32, per super-block their mins in int16 pairs (sub-blocks 2p, 2p+1) and
 * their d and dmin. Per super-block and token: each sub-block's dpbusd sums times its scale in int32 (at most
 * 8 x 63 x 61440), the mins against the token's sub-block sums in four int16 multiply-adds, then one conversion and
 * multiply-add each with d and dmin (per sub-block scales as floats cost a conversion, a multiply and a multiply-add
 * per sub-block, and ggml's own path for plain Q4_K rows was faster than that). */

static size_t pass16_k_bytes(int64_t nb) {
    return ts_q4_k_pass_bytes(nb, MM_ROWS16);
}

/* byte k (0-3) of each int32 lane of v */
ALWAYS_INLINE __m512i byte_epi32(__m512i v, int k) {
    return _mm512_and_si512(_mm512_srli_epi32(v, 8 * k), _mm512_set1_epi32(0xFF));
}

static void unpack16_q4_k_split(const uint8_t *w, size_t row_bytes, int R, int64_t nb, uint8_t *pass) {
    const ts_q4_k_pass k = ts_q4_k_pass_at(pass, nb, MM_ROWS16);
    const rows16 g = rows16_of(row_bytes, R);
    const __m512i low = _mm512_set1_epi8(0x0F), six = _mm512_set1_epi32(0x3f3f3f3f), four = _mm512_set1_epi32(0x0f0f0f0f);
    const __m512i two = _mm512_set1_epi32(0x03030303);
    const int64_t n_super = nb / 8;
    for (int64_t i = 0; i < n_super; i++) {
        const ts_split_group grp = ts_split_group_at(i, i + 1, n_super);
        const uint8_t *head = w + grp.first * Q4_K_BYTES + TS_Q4_K_HEAD * grp.j0;
        const uint8_t *q = w + grp.first * Q4_K_BYTES + TS_Q4_K_HEAD * grp.c + TS_Q4_K_QUANTS * grp.j0;
        ts_q4_k_prefetch_rows(w + (size_t)MM_ROWS16 * row_bytes, row_bytes, MM_ROWS16, i); /* the next pass's */
        /* the rows' d and dmin, and their 12 scale bytes as 3 int32 (q4_k_scales.h's packing) */
        const __m512i h = gather16(g, head), u0 = gather16(g, head + 4), u1 = gather16(g, head + 8);
        const __m512i u2 = gather16(g, head + 12);
        _mm512_store_ps(k.d + i * MM_ROWS16, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h)));
        _mm512_store_ps(k.dmin + i * MM_ROWS16, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(h, 16))));
        const __m512i sc[2] = {_mm512_and_si512(u0, six),
                               _mm512_or_si512(_mm512_and_si512(u2, four), _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(u0, 6), two), 4))};
        const __m512i mn[2] = {_mm512_and_si512(u1, six),
                               _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(u2, 4), four),
                                               _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(u1, 6), two), 4))};
        for (int p = 0; p < 4; p++) { /* mins of sub-blocks 2p, 2p + 1: bytes 2 (p % 2), 2 (p % 2) + 1 of mn[p / 2] */
            const __m512i pair = _mm512_or_si512(byte_epi32(mn[p / 2], 2 * (p % 2)),
                                                 _mm512_slli_epi32(byte_epi32(mn[p / 2], 2 * (p % 2) + 1), 16));
            _mm512_store_si512((void *)(k.mins + (4 * i + p) * MM_ROWS16), pair);
        }
        for (int s = 0; s < 8; s++) {
            const int64_t b = 8 * i + s;
            uint8_t *chunk = k.nib + (size_t)b * 8 * MM_CHUNK_BYTES;
            static const int at[4] = {0, 4, 64, 68}; /* the block's 16 nibble bytes: two pieces of 8 */
            for (int e = 0; e < 4; e++) {
                const __m512i v = gather16(g, q + 8 * s + at[e]);
                _mm512_store_si512((void *)(chunk + e * MM_CHUNK_BYTES), _mm512_and_si512(v, low));
                _mm512_store_si512((void *)(chunk + (e + 4) * MM_CHUNK_BYTES), _mm512_and_si512(_mm512_srli_epi32(v, 4), low));
            }
            _mm512_store_si512((void *)(k.sc + b * MM_ROWS16), byte_epi32(sc[s / 4], s % 4));
        }
    }
}

/* acc + super-block i of the 16 rows against T tokens (T = 1, 2 or 4: each 64 bytes of the rows loaded once for all) */
ALWAYS_INLINE void super16(const ts_q4_k_pass *k, int64_t i, const ts_q8_k_prompt_view *tok, const int T, __m512 *acc) {
    __m512i isum[4];
    for (int t = 0; t < T; t++) {
        isum[t] = _mm512_setzero_si512();
    }
    for (int s = 0; s < 8; s++) {
        const int64_t b = 8 * i + s;
        const uint8_t *p = k->nib + (size_t)b * 8 * MM_CHUNK_BYTES;
        __m512i even[4], odd[4];
        for (int t = 0; t < T; t++) {
            even[t] = odd[t] = _mm512_setzero_si512();
        }
        for (int c = 0; c < 8; c += 2) {
            const __m512i w0 = _mm512_load_si512((const void *)(p + c * MM_CHUNK_BYTES));
            const __m512i w1 = _mm512_load_si512((const void *)(p + (c + 1) * MM_CHUNK_BYTES));
            for (int t = 0; t < T; t++) {
                even[t] = _mm512_dpbusd_epi32(even[t], w0, token_chunk(tok[t].x, b, c));
                odd[t] = _mm512_dpbusd_epi32(odd[t], w1, token_chunk(tok[t].x, b, c + 1));
            }
        }
        /* each chain's sums (at most 16 x 15 x 128) times the scale by an int16 multiply-add: the sum's low half
         * times the scale plus its sign half times the scale's zero high half */
        const __m512i sc = _mm512_load_si512((const void *)(k->sc + b * MM_ROWS16));
        for (int t = 0; t < T; t++) {
            isum[t] = _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(isum[t], even[t], sc), odd[t], sc);
        }
    }
    const __m512 d = _mm512_load_ps(k->d + i * MM_ROWS16), dmin = _mm512_load_ps(k->dmin + i * MM_ROWS16);
    for (int t = 0; t < T; t++) {
        __m512i imin = _mm512_setzero_si512();
        for (int p = 0; p < 4; p++) {
            imin = _mm512_dpwssd_epi32(imin, _mm512_load_si512((const void *)(k->mins + (4 * i + p) * MM_ROWS16)),
                                       _mm512_set1_epi32(tok[t].sums[4 * i + p]));
        }
        const __m512 xd = _mm512_set1_ps(tok[t].dx[i]);
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_mul_ps(d, xd), acc[t]);
        acc[t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(imin), _mm512_mul_ps(dmin, xd), acc[t]);
    }
}

/* sum[r] += row r . x over blocks [b0, b1) (whole super-blocks: the driver's slices are 16 blocks) */
ALWAYS_INLINE void slice16_k_tokens(const uint8_t *pass, int64_t nb, const void *const *prepared, int64_t n,
                                    int64_t b0, int64_t b1, float *const *sum, const int T) {
    const ts_q4_k_pass k = ts_q4_k_pass_at(pass, nb, MM_ROWS16);
    ts_q8_k_prompt_view tok[4];
    __m512 acc[4];
    for (int t = 0; t < T; t++) {
        tok[t] = ts_view_q8_k_prompt(prepared[t], n);
        acc[t] = _mm512_setzero_ps();
    }
    for (int64_t i = b0 / 8; i < b1 / 8; i++) {
        super16(&k, i, tok, T, acc);
    }
    for (int t = 0; t < T; t++) {
        _mm512_store_ps(sum[t], _mm512_add_ps(_mm512_load_ps(sum[t]), acc[t]));
    }
}

static void slice16_k(const uint8_t *pass, int64_t nb, const void *prepared, int64_t n, int64_t b0, int64_t b1,
                      float *sum) {
    const void *p[1] = {prepared};
    float *s[1] = {sum};
    slice16_k_tokens(pass, nb, p, n, b0, b1, s, 1);
}

static void slice16x2_k(const uint8_t *pass, int64_t nb, const void *prepared0, const void *prepared1, int64_t n,
                        int64_t b0, int64_t b1, float *sum0, float *sum1) {
    const void *p[2] = {prepared0, prepared1};
    float *s[2] = {sum0, sum1};
    slice16_k_tokens(pass, nb, p, n, b0, b1, s, 2);
}

static void slice16x4_k(const uint8_t *pass, int64_t nb, const void *const *prepared, int64_t n, int64_t b0, int64_t b1,
                        float *const *sum) {
    slice16_k_tokens(pass, nb, prepared, n, b0, b1, sum, 4);
}

TS_DEFINE_MATMUL(q4_0, MM_ROWS16, pass16_bytes, prepare_blocks_q4_0, unpack16_q4_0, slice16, slice16x2)
TS_DEFINE_MATMUL(q8_0, MM_ROWS16, pass16_bytes, prepare_blocks_q8_0, unpack16_q8_0, slice16, slice16x2)
TS_DEFINE_MATMUL(q4_0_split, MM_ROWS16, pass16_bytes, prepare_blocks_q4_0, unpack16_q4_0_split, slice16, slice16x2)
TS_DEFINE_MATMUL4(q4_k_split, MM_ROWS16, pass16_k_bytes, ts_prepare_q8_k_prompt, unpack16_q4_k_split, slice16_k,
                  slice16x2_k, slice16x4_k)

ts_rows_matmul_fn ts_rows_matmul_avx512(enum ggml_type type, int64_t n) {
    if (type == GGML_TYPE_Q8_0) {
        return n > 0 && n % 32 == 0 && n <= TS_DOT_MAX_N ? matmul_q8_0 : NULL;
    }
    return takes_rows(type, n) ? matmul_q4_0 : NULL;
}

ts_rows_matmul_fn ts_rows_matmul_avx512_split(enum ggml_type type, int64_t n) {
    if (type == GGML_TYPE_Q4_K) {
        return ts_q4_k_split_takes(n) ? matmul_q4_k_split : NULL;
    }
    return takes_split_rows(type, n) ? matmul_q4_0_split : NULL;
}

/* ---- table -------------------------------------------------------------------------------------------- */

int ts_dot_kernel_avx512(enum ggml_type type, int64_t n, ts_dot_kernel *k) {
    if (n <= 0 || n > TS_DOT_MAX_N) {
        return 0;
    }
    switch (type) {
    case GGML_TYPE_Q4_0:
        *k = (ts_dot_kernel){TS_ISA_AVX512_VNNI, prepare_pairs, dot_rows_q4_0};
        return takes_rows(type, n);
    case GGML_TYPE_Q8_0:
        *k = (ts_dot_kernel){TS_ISA_AVX512_VNNI, prepare_q8_0, dot_rows_q8_0};
        return n % 64 == 0;
    case GGML_TYPE_Q4_K:
        *k = (ts_dot_kernel){TS_ISA_AVX512_VNNI, prepare_q8_k, dot_rows_q4_k};
        return n % 256 == 0;
    default: return 0;
    }
}

int ts_dot_kernel_avx512_split(enum ggml_type type, int64_t n, ts_dot_kernel *k) {
    if (type == GGML_TYPE_Q4_K) {
        *k = (ts_dot_kernel){TS_ISA_AVX512_VNNI, ts_prepare_q8_k_split, dot_rows_q4_k_split};
        return ts_q4_k_split_takes(n);
    }
    *k = (ts_dot_kernel){TS_ISA_AVX512_VNNI, prepare_quads, dot_rows_q4_0_split};
    return takes_split_rows(type, n);
}

#else /* not compiled for AVX-512 VNNI (another architecture) */

int ts_dot_kernel_avx512(enum ggml_type type, int64_t n, ts_dot_kernel *k) {
    (void)type, (void)n, (void)k;
    return 0;
}

ts_rows_matmul_fn ts_rows_matmul_avx512(enum ggml_type type, int64_t n) {
    (void)type, (void)n;
    return NULL;
}

int ts_dot_kernel_avx512_split(enum ggml_type type, int64_t n, ts_dot_kernel *k) {
    (void)type, (void)n, (void)k;
    return 0;
}

ts_rows_matmul_fn ts_rows_matmul_avx512_split(enum ggml_type type, int64_t n) {
    (void)type, (void)n;
    return NULL;
}

#endif
