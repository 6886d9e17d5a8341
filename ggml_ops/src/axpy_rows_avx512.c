/*
 * AVX-512 kernel of the sparse down projection for Q4_0 rows in the split layout (axpy_rows.h), compiled with
 * -mavx512f -mavx512bw (CMakeLists.txt) and reached only through ts_axpy_rows, which asks the CPU first. The same
 * arithmetic as the AVX2 kernel (axpy_rows_avx2.c: SPLIT_ROWS rows per group, their coefficients quantized to 8 bits
 * per unit of 32 columns, axpy_split_coefs.h; codes summed in int16 in row pairs with maddubs), two units per
 * instruction: in the split layout a row's quants of consecutive units are adjacent.
 */
#include "axpy_rows.h"

#include "axpy_split_coefs.h"
#include "axpy_tile_driver.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

/* 32 bytes: the 16 quant bytes of unit j at p, then those of unit j + 1 (at p + 16, or p again where j is the last) */
static inline __m256i two_units(const uint8_t *p, int both) {
    const __m128i a = _mm_loadu_si128((const __m128i *)p);
    return _mm256_inserti128_si256(_mm256_castsi128_si256(a), both ? _mm_loadu_si128((const __m128i *)(p + 16)) : a, 1);
}

/* o[0, 16) += s * (v - off) for 16 int16 v */
static inline void add_scaled16(float *o, __m256i v, __m512i off, __m512 s) {
    const __m512i w = _mm512_sub_epi32(_mm512_cvtepi16_epi32(v), off);
    _mm512_storeu_ps(o, _mm512_fmadd_ps(_mm512_cvtepi32_ps(w), s, _mm512_loadu_ps(o)));
}

/*
 * Units j and j + 1 (both: 0 where j is the tile's last) of the group's SPLIT_ROWS rows, quants at byte `at` of
 * each row: sum_r k_r * (nibble_r - 8), times S, into the units' 64 outputs. A row pair's bytes interleaved
 * (a0 b0 a1 b1 ...) give 128-bit lanes [unit j bytes 0-7 | unit j+1 bytes 0-7 | unit j 8-15 | unit j+1 8-15]; byte k
 * holds value k (low nibble) and k + 16 (high), so the low nibbles' sums are outputs 0-15 and the high ones 16-31.
 */
static inline void two_units_q4_0(const uint8_t *const *r, size_t at, const split_coefs *q, int j, int both, float *o) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();
    for (int p = 0; p < SPLIT_ROWS / 2; p++) {
        const __m256i qa = two_units(r[2 * p] + at, both), qb = two_units(r[2 * p + 1] + at, both);
        const __m512i x = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_unpacklo_epi8(qa, qb)),
                                             _mm256_unpackhi_epi8(qa, qb), 1);
        const __m128i kj = _mm_set1_epi32(q->pair[p][j]), kj1 = _mm_set1_epi32(q->pair[p][both ? j + 1 : j]);
        const __m256i k2 = _mm256_inserti128_si256(_mm256_castsi128_si256(kj), kj1, 1);
        const __m512i k = _mm512_inserti64x4(_mm512_castsi256_si512(k2), k2, 1);
        lo = _mm512_add_epi16(lo, _mm512_maddubs_epi16(_mm512_and_si512(x, m4), k));
        hi = _mm512_add_epi16(hi, _mm512_maddubs_epi16(_mm512_and_si512(_mm512_srli_epi16(x, 4), m4), k));
    }
    /* lanes [j 0-7 | j+1 0-7 | j 8-15 | j+1 8-15] -> [j 0-15 | j+1 0-15] */
    lo = _mm512_shuffle_i64x2(lo, lo, _MM_SHUFFLE(3, 1, 2, 0));
    hi = _mm512_shuffle_i64x2(hi, hi, _MM_SHUFFLE(3, 1, 2, 0));
    for (int u = 0; u < 1 + both; u++) {
        const int jj = j + u;
        if (q->scale[jj] == 0.0f) {
            continue; /* no codes to add */
        }
        const __m512i off = _mm512_set1_epi32(8 * q->sum_k[jj]);
        const __m512 s = _mm512_set1_ps(q->scale[jj]);
        float *ou = o + 32 * u;
        add_scaled16(ou, u ? _mm512_extracti64x4_epi64(lo, 1) : _mm512_castsi512_si256(lo), off, s);
        add_scaled16(ou + 16, u ? _mm512_extracti64x4_epi64(hi, 1) : _mm512_castsi512_si256(hi), off, s);
    }
}

/* Units [u0, u0 + n_units) of SPLIT_ROWS split Q4_0 rows (a d array of row_units fp16, then the quants). */
static void add_split_q4_0(const uint8_t *const *r, const float *a, int64_t u0, int64_t n_units, int64_t row_units,
                           float *o, ts_row_prefetcher *qpf, ts_row_prefetcher *hpf) {
    const size_t quants = (size_t)row_units * 2;
    for (int64_t u = 0; u < n_units; u += 8) {
        const int n = n_units - u < 8 ? (int)(n_units - u) : 8;
        ts_prefetch_upto(hpf, (size_t)(u + n) * 2);
        split_coefs q;
        split_quantize(r, a, (size_t)(u0 + u) * 2, 0, n, &q);
        for (int j = 0; j < n; j += 2) {
            ts_prefetch_upto(qpf, (size_t)(u + j + 2) * 16); /* a line at a time: bursts overrun */
            two_units_q4_0(r, quants + (size_t)(u0 + u + j) * 16, &q, j, j + 1 < n, o + 32 * (u + j));
        }
    }
}

TS_DEFINE_SPLIT_TILE(q4_0, 18, 2, SPLIT_ROWS)

ts_axpy_kernel ts_axpy_kernel_avx512(enum ggml_type type) {
    return type == GGML_TYPE_Q4_0 ? (ts_axpy_kernel){axpy_tile_q4_0, TS_ROWS_SPLIT} : (ts_axpy_kernel){NULL, TS_ROWS_GGML};
}

#else /* not compiled for AVX-512 (another architecture) */

ts_axpy_kernel ts_axpy_kernel_avx512(enum ggml_type type) {
    (void)type;
    return (ts_axpy_kernel){NULL, TS_ROWS_GGML};
}

#endif
