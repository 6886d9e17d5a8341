/*
 * The coefficients of the Q4_K down kernels (axpy_rows_avx2.c, axpy_rows_avx512.c; AVX2 code, which both compile).
 * Q4_K super-blocks of 256 {d, dmin, 12 bytes of 6-bit scales and mins, 128 bytes}: sub-block j (a unit)
 * = d * sc_j * nibble - dmin * mn_j, sub-blocks 2i and 2i + 1 the low and high nibbles of bytes [32i, 32i + 32).
 * Per row and super-block, the 8 scales and mins are unpacked at once (q4_k_scales.h): row k's c = a_k * d_k * sc_j
 * is one vector with the units j in the lanes, so S and k of all 8 units are found at once (the same values, bit for
 * bit, as one unit at a time; 1.15-1.17x from DRAM, 1.26-1.31x from cache against that, Zen 3) with the mins' sum
 * per j. Q4_K_ROWS rows per group: 8 ran 0.95-1.0x.
 */
#ifndef TS_AXPY_Q4_K_COEFS_H
#define TS_AXPY_Q4_K_COEFS_H

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include "q4_k_scales.h"

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#define Q4_K_ROWS 16 /* rows sharing S: 8 pairs, whose 4-bit sums stay within int16 (8 * 2 * 15 * 127 < 32768) */

typedef struct {
    int32_t pair[Q4_K_ROWS / 2][8]; /* [p][unit]: k of rows 2p and 2p + 1 as a byte pair, twice (one broadcast) */
    float scale[8];
    float min_sum[8];
} q4_k_lanes;

static inline float q4_k_half(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, sizeof(h));
    return _cvtsh_ss(h);
}

/* The coefficients of the Q4_K_ROWS rows' super-blocks at byte `at` */
static inline void q4_k_quantize(const uint8_t *const *r, const float *a, size_t at, q4_k_lanes *q) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 c[Q4_K_ROWS];
    __m256 amax = _mm256_setzero_ps(), mins = _mm256_setzero_ps();
    for (int k = 0; k < Q4_K_ROWS; k++) {
        const uint8_t *p = r[k] + at;
        const __m128i sm = ts_k_scales_mins_vec(p + 4); /* 8 scales, then 8 mins */
        const __m256 sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(sm));
        const __m256 mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(sm, sm)));
        c[k] = _mm256_mul_ps(sc, _mm256_set1_ps(a[k] * q4_k_half(p)));
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, c[k]));
        mins = _mm256_fmadd_ps(mn, _mm256_set1_ps(-a[k] * q4_k_half(p + 2)), mins);
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

#endif

#endif
