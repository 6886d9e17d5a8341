/*
 * The coefficients of the Q4_K down kernels (axpy_rows_avx2.c, axpy_rows_avx512.c; AVX2 code, which both compile).
 * Q4_K super-blocks of 256 {d, dmin, 12 bytes of 6-bit scales and mins, 128 bytes}: sub-block j (a unit)
 * = d * sc_j * nibble - dmin * mn_j, sub-blocks 2i and 2i + 1 the low and high nibbles of bytes [32i, 32i + 32).
 * Per row and super-block, the 8 scales and mins are unpacked at once (q4_k_scales.h): row k's c = a_k * d_k * sc_j
 * is one vector with the units j in the lanes, so S and k of all 8 units are found at once (the same values, bit for
 * bit, as one unit at a time; 1.15-1.17x from DRAM, 1.26-1.31x from cache against that, Zen 3) with the mins' sum
 * per j. Q4_K_ROWS rows per group: 8 ran 0.95-1.0x. Both kernels walk the down layout's groups the same way
 * (q4_k_add_blocks) and differ in the step that adds one super-block's values.
 */
#ifndef TS_AXPY_Q4_K_COEFS_H
#define TS_AXPY_Q4_K_COEFS_H

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include "axpy_rows.h"
#include "q4_k_scales.h"
#include "q4_k_split.h"
#include "row_prefetch.h"

#include <immintrin.h>
#include <stdint.h>

#define Q4_K_ROWS 16 /* rows sharing S: 8 pairs, whose 4-bit sums stay within int16 (8 * 2 * 15 * 127 < 32768) */

typedef struct {
    int32_t pair[Q4_K_ROWS / 2][8]; /* [p][unit]: k of rows 2p and 2p + 1 as a byte pair, twice (one broadcast) */
    float scale[8];
    float min_sum[8];
} q4_k_lanes;

/* dm[k][2j] = a_k * d_kj and dm[k][2j + 1] = -a_k * dmin_kj for the Q4_K_ROWS rows' blocks j < c of the group at byte
 * `group` of the down layout (q4_k_split.h: its first 4 c bytes; a group of c < 8 gives lanes unused) */
static inline void q4_k_group_factors(const uint8_t *const *r, const float *a, size_t group, float dm[][16]) {
    const __m256 sign = _mm256_setr_ps(1, -1, 1, -1, 1, -1, 1, -1);
    for (int k = 0; k < Q4_K_ROWS; k++) {
        const __m256i h = _mm256_loadu_si256((const __m256i *)(r[k] + group));
        const __m256 s = _mm256_mul_ps(sign, _mm256_set1_ps(a[k]));
        _mm256_storeu_ps(dm[k], _mm256_mul_ps(_mm256_cvtph_ps(_mm256_castsi256_si128(h)), s));
        _mm256_storeu_ps(dm[k] + 8, _mm256_mul_ps(_mm256_cvtph_ps(_mm256_extracti128_si256(h, 1)), s));
    }
}

/* The coefficients of the Q4_K_ROWS rows' block j of a group: its 12 packed scale bytes at byte `at`, its factors
 * dm[k][2j], dm[k][2j + 1] (q4_k_group_factors) */
static inline void q4_k_quantize(const uint8_t *const *r, const float dm[][16], int j, size_t at, q4_k_lanes *q) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 c[Q4_K_ROWS];
    __m256 amax = _mm256_setzero_ps(), mins = _mm256_setzero_ps();
    for (int k = 0; k < Q4_K_ROWS; k += 2) {
        /* two rows' scales and mins unpacked at once: [scales | mins] of row k, then of row k + 1 */
        const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(r[k] + at))),
                                                     _mm_loadu_si128((const __m128i *)(r[k + 1] + at)), 1);
        const __m256i sm2 = ts_k_scales_mins_x2(both);
        for (int e = 0; e < 2; e++) {
            const __m128i sm = e ? _mm256_extracti128_si256(sm2, 1) : _mm256_castsi256_si128(sm2);
            const __m256 sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(sm));
            const __m256 mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(sm, sm)));
            c[k + e] = _mm256_mul_ps(sc, _mm256_broadcast_ss(&dm[k + e][2 * j]));
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, c[k + e]));
            mins = _mm256_fmadd_ps(mn, _mm256_broadcast_ss(&dm[k + e][2 * j + 1]), mins);
        }
    }
    const __m256 inv = _mm256_and_ps(_mm256_cmp_ps(amax, _mm256_setzero_ps(), _CMP_GT_OQ),
                                     _mm256_div_ps(_mm256_set1_ps(127.0f), amax));
    const __m256i byte = _mm256_set1_epi32(0xFF);
    for (int p = 0; p < Q4_K_ROWS / 2; p++) {
        const __m256i k0 = _mm256_cvtps_epi32(_mm256_mul_ps(c[2 * p], inv));
        const __m256i k1 = _mm256_cvtps_epi32(_mm256_mul_ps(c[2 * p + 1], inv));
        const __m256i w = _mm256_or_si256(_mm256_and_si256(k0, byte), _mm256_slli_epi32(_mm256_and_si256(k1, byte), 8));
        _mm256_storeu_si256((__m256i *)q->pair[p], _mm256_or_si256(w, _mm256_slli_epi32(w, 16)));
    }
    _mm256_storeu_ps(q->scale, _mm256_mul_ps(amax, _mm256_set1_ps(1.0f / 127.0f)));
    _mm256_storeu_ps(q->min_sum, mins);
}

/* A kernel's step: adds to o[0, 256) one super-block of the Q4_K_ROWS rows, its quants at byte `at` of each row, its
 * coefficients q */
typedef void (*q4_k_block_fn)(const uint8_t *const *r, size_t at, const q4_k_lanes *q, float *o);

/* Super-blocks [b0, b0 + n_blocks) of the Q4_K_ROWS rows r (coefficients a) in the down layout (q4_k_split.h: per
 * group of 8 their d/dmin, their scales, then their quants) added to o: per group the rows' factors, per super-block
 * its coefficients, then `block` (a constant where this is inlined, so it is inlined too); meanwhile pf asks for the
 * next rows line by line. */
static inline __attribute__((always_inline)) void q4_k_add_blocks(const uint8_t *const *r, const float *a, int64_t b0,
                                                                  int64_t n_blocks, int64_t row_blocks, float *o,
                                                                  ts_row_prefetcher *pf, q4_k_block_fn block) {
    const int64_t start = b0 / TS_SPLIT_GROUP * TS_SPLIT_GROUP, end = b0 + n_blocks;
    for (int64_t b = b0; b < end;) {
        const ts_split_group g = ts_split_group_at(b, end, row_blocks);
        const size_t group = (size_t)g.first * TS_Q4_K_BYTES, quants = group + TS_Q4_K_HEAD * (size_t)g.c;
        float dm[Q4_K_ROWS][16];
        q4_k_group_factors(r, a, group, dm);
        for (int j = g.j0; j < g.j0 + g.n; j++) {
            ts_prefetch_upto(pf, (size_t)(g.first + j + 1 - start) * TS_Q4_K_BYTES);
            q4_k_lanes q;
            q4_k_quantize(r, dm, j, group + 4 * (size_t)g.c + 12 * (size_t)j, &q);
            block(r, quants + TS_Q4_K_QUANTS * (size_t)j, &q, o + 256 * (g.first + j - b0));
        }
        b += g.n;
    }
}

#endif

#endif
