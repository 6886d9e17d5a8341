/*
 * AVX2 kernels of the sparse down projection (compiled with -mavx2 -mfma -mf16c, CMakeLists.txt; reached only
 * through ts_axpy_rows, which asks the CPU first).
 */
#include "axpy_rows.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#include <string.h>

/*
 * Fused dequantize-and-add kernels. Every supported type is walked in units of 32 columns; a unit function
 * adds coef * (the unit's 32 dequantized values) into four 8-float accumulators. Rows are taken GROUP at a
 * time so each output unit is loaded and stored once per group, and the next group's row segments are
 * prefetched: the rows of active neurons are scattered, so the hardware prefetcher cannot guess them.
 * Block layouts are ggml's (ggml-common.h): a fp16 scale (and min) followed by the packed quants.
 */
#define GROUP 4

static float half_at(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, sizeof(h));
    return _cvtsh_ss(h);
}

/* 16 int8 values (low 8 then high 8) into acc[k], acc[k+1]: acc += s * v */
static inline void fma_i8x16(__m128i v, __m256 s, __m256 *acc) {
    acc[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)), s, acc[0]);
    acc[1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v, 8))), s, acc[1]);
}

/* Q4_0: 18-byte blocks {d, 16 bytes}: value k = d * ((qs[k] & 15) - 8), value k+16 = d * ((qs[k] >> 4) - 8) */
static inline void unit_q4_0(const uint8_t *row, int64_t u, float a, __m256 acc[4]) {
    const uint8_t *p = row + u * 18;
    const __m256 s = _mm256_set1_ps(a * half_at(p));
    const __m128i q = _mm_loadu_si128((const __m128i *)(p + 2));
    const __m128i m4 = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
    fma_i8x16(_mm_sub_epi8(_mm_and_si128(q, m4), eight), s, acc);
    fma_i8x16(_mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), m4), eight), s, acc + 2);
}

/* Q4_1: 20-byte blocks {d, m, 16 bytes}: value = d * nibble + m */
static inline void unit_q4_1(const uint8_t *row, int64_t u, float a, __m256 acc[4]) {
    const uint8_t *p = row + u * 20;
    const __m256 s = _mm256_set1_ps(a * half_at(p));
    const __m256 c = _mm256_set1_ps(a * half_at(p + 2));
    const __m128i q = _mm_loadu_si128((const __m128i *)(p + 4));
    const __m128i m4 = _mm_set1_epi8(0x0F);
    __m256 v[4] = {c, c, c, c};
    fma_i8x16(_mm_and_si128(q, m4), s, v); /* nibbles are < 16: signed and unsigned widening agree */
    fma_i8x16(_mm_and_si128(_mm_srli_epi16(q, 4), m4), s, v + 2);
    for (int k = 0; k < 4; k++) {
        acc[k] = _mm256_add_ps(acc[k], v[k]);
    }
}

/* Q8_0: 34-byte blocks {d, 32 int8} */
static inline void unit_q8_0(const uint8_t *row, int64_t u, float a, __m256 acc[4]) {
    const uint8_t *p = row + u * 34;
    const __m256 s = _mm256_set1_ps(a * half_at(p));
    fma_i8x16(_mm_loadu_si128((const __m128i *)(p + 2)), s, acc);
    fma_i8x16(_mm_loadu_si128((const __m128i *)(p + 18)), s, acc + 2);
}

/*
 * Q4_K: 144-byte super-blocks of 256 {d, dmin, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles}.
 * Sub-block j (32 values) = d * sc_j * nibble - dmin * m_j; sub-blocks 2i and 2i+1 are the low and high
 * nibbles of bytes [32i, 32i + 32).
 */
static inline void scale_min_q4_k(const uint8_t *sc, int j, int *scale, int *min) {
    if (j < 4) {
        *scale = sc[j] & 63;
        *min = sc[j + 4] & 63;
    } else {
        *scale = (sc[j + 4] & 0x0F) | ((sc[j - 4] >> 6) << 4);
        *min = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
    }
}

static inline void unit_q4_k(const uint8_t *row, int64_t u, float a, __m256 acc[4]) {
    const uint8_t *p = row + (u >> 3) * 144;
    const int j = (int)(u & 7);
    int sc, mn;
    scale_min_q4_k(p + 4, j, &sc, &mn);
    const __m256 s = _mm256_set1_ps(a * half_at(p) * (float)sc);
    const __m256 c = _mm256_set1_ps(-a * half_at(p + 2) * (float)mn);
    __m256i q = _mm256_loadu_si256((const __m256i *)(p + 16 + (j >> 1) * 32));
    if (j & 1) {
        q = _mm256_srli_epi16(q, 4);
    }
    q = _mm256_and_si256(q, _mm256_set1_epi8(0x0F));
    __m256 v[4] = {c, c, c, c};
    fma_i8x16(_mm256_castsi256_si128(q), s, v);
    fma_i8x16(_mm256_extracti128_si256(q, 1), s, v + 2);
    for (int k = 0; k < 4; k++) {
        acc[k] = _mm256_add_ps(acc[k], v[k]);
    }
}

static inline void unit_f16(const uint8_t *row, int64_t u, float a, __m256 acc[4]) {
    const __m128i *p = (const __m128i *)(row + u * 64);
    const __m256 s = _mm256_set1_ps(a);
    for (int k = 0; k < 4; k++) {
        acc[k] = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(p + k)), s, acc[k]);
    }
}

static inline void unit_bf16(const uint8_t *row, int64_t u, float a, __m256 acc[4]) {
    const __m128i *p = (const __m128i *)(row + u * 64);
    const __m256 s = _mm256_set1_ps(a);
    for (int k = 0; k < 4; k++) {
        const __m256i x = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(p + k)), 16);
        acc[k] = _mm256_fmadd_ps(_mm256_castsi256_ps(x), s, acc[k]);
    }
}

static inline void unit_f32(const uint8_t *row, int64_t u, float a, __m256 acc[4]) {
    const float *p = (const float *)(row + u * 128);
    const __m256 s = _mm256_set1_ps(a);
    for (int k = 0; k < 4; k++) {
        acc[k] = _mm256_fmadd_ps(_mm256_loadu_ps(p + 8 * k), s, acc[k]);
    }
}

static void prefetch_rows(const char *w, size_t row_bytes, size_t offset, const int32_t *idx, int64_t n,
                          size_t seg_bytes) {
    for (int64_t i = 0; i < n; i++) {
        const char *p = w + (size_t)idx[i] * row_bytes + offset;
        for (size_t b = 0; b < seg_bytes; b += 64) {
            _mm_prefetch(p + b, _MM_HINT_T0);
        }
    }
}

/*
 * o[0, 32 * n_units) += sum_i coef[i] * row_i, rows taken GROUP at a time (the last group may be shorter): each
 * output unit is loaded and stored once per group, and the next group's row segments are prefetched meanwhile.
 */
#define DEFINE_AXPY_TILE(name, unit, unit_bytes)                                                                    \
    static inline void add_rows_##name(const uint8_t *const *r, const float *a, int n_rows, int64_t n_units,      \
                                       float *o) {                                                                   \
        for (int64_t u = 0; u < n_units; u++) {                                                                      \
            __m256 acc[4];                                                                                           \
            for (int k = 0; k < 4; k++) {                                                                            \
                acc[k] = _mm256_loadu_ps(o + 32 * u + 8 * k);                                                        \
            }                                                                                                        \
            for (int k = 0; k < n_rows; k++) {                                                                       \
                unit(r[k], u, a[k], acc);                                                                            \
            }                                                                                                        \
            for (int k = 0; k < 4; k++) {                                                                            \
                _mm256_storeu_ps(o + 32 * u + 8 * k, acc[k]);                                                       \
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

/* unit_bytes: bytes per 32 columns (Q4_K: 144 per 256) */
DEFINE_AXPY_TILE(q4_0, unit_q4_0, 18)
DEFINE_AXPY_TILE(q4_1, unit_q4_1, 20)
DEFINE_AXPY_TILE(q8_0, unit_q8_0, 34)
DEFINE_AXPY_TILE(q4_k, unit_q4_k, 18)
DEFINE_AXPY_TILE(f16, unit_f16, 64)
DEFINE_AXPY_TILE(bf16, unit_bf16, 64)
DEFINE_AXPY_TILE(f32, unit_f32, 128)

ts_axpy_tile_fn ts_axpy_tile_avx2(enum ggml_type type) {
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

#else /* not compiled for AVX2 (another architecture) */

ts_axpy_tile_fn ts_axpy_tile_avx2(enum ggml_type type) {
    (void)type;
    return NULL;
}

#endif
