/*
 * The last step of the x86 Q8_0 down kernels (axpy_rows_avx2.c, axpy_rows_avx512.c; AVX2 code, which both compile):
 * a unit's int32 sums, in the order the kernels' byte interleaves leave them, scaled into its 32 outputs. Both
 * kernels compute the same sums from the same coefficients, and this one step keeps their outputs bit for bit alike.
 */
#ifndef TS_AXPY_Q8_0_SUMS_H
#define TS_AXPY_Q8_0_SUMS_H

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

/* o[0, 8) += s * v for 8 int32 v (+ 0, as the kernels of types with mins add theirs: a -0 output becomes +0) */
static inline void ts_q8_0_add8(float *o, __m256i v, __m256 s) {
    const __m256 x = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), s, _mm256_loadu_ps(o));
    _mm256_storeu_ps(o, _mm256_add_ps(x, _mm256_setzero_ps()));
}

/* o[0, 32) += s * sums, sums[0] holding outputs {0-3 | 16-19}, [1] {4-7 | 20-23}, [2] {8-11 | 24-27}, [3] {12-15 |
 * 28-31} (128-bit lanes: unpacks work within them) */
static inline void ts_add_q8_0_sums(float *o, const __m256i sums[4], __m256 s) {
    ts_q8_0_add8(o, _mm256_permute2x128_si256(sums[0], sums[1], 0x20), s);
    ts_q8_0_add8(o + 8, _mm256_permute2x128_si256(sums[2], sums[3], 0x20), s);
    ts_q8_0_add8(o + 16, _mm256_permute2x128_si256(sums[0], sums[1], 0x31), s);
    ts_q8_0_add8(o + 24, _mm256_permute2x128_si256(sums[2], sums[3], 0x31), s);
}

#endif
#endif
