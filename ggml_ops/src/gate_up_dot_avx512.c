/*
 * AVX-512 VNNI gate/up kernel for Q4_0 rows against a Q8_0 activation: two 32-blocks per instruction against an
 * activation prepared once per token, TS_DOT_ROWS rows per pass while the next pass's rows are prefetched line by
 * line (dot_rows_driver.h, as the AVX2 kernels). Until 2026-12-02 it took two rows at a time and asked for the next
 * two rows whole in one burst: on an AMD EPYC Zen 5 the AVX2 kernel then read 10 % of a layer's rows from memory
 * 1.2-1.45x faster than it.
 *
 * For prompts, the same arithmetic over rows unpacked once against many tokens (rows_matmul.h).
 *
 * Compiled with -mavx512f -mavx512bw -mavx512vnni (CMakeLists.txt) and reached only through ts_dot_kernel_best and
 * ts_rows_matmul_kernel, which ask the CPU first. Other types on such CPUs take the AVX2 kernels.
 */
#include "gate_up_dot.h"

#include "dot_rows_driver.h"
#include "rows_matmul.h"
#include "rows_matmul_driver.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__F16C__)
#include <immintrin.h>
#include <string.h>

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
enum { Q4_0_BYTES = 18, Q8_0_BYTES = 34 };

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

/* The 64 nibbles of a Q4_0 pair as unsigned bytes in the prepared activation's order */
ALWAYS_INLINE __m512i pair_nibbles(const uint8_t *b0) {
    const __m256i y = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(b0 + 2))),
                                              _mm_loadu_si128((const __m128i *)(b0 + Q4_0_BYTES + 2)), 1);
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i lo = _mm256_and_si256(y, m4), hi = _mm256_and_si256(_mm256_srli_epi16(y, 4), m4);
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

/* the pair's two fp16 weight scales as floats in elements 0 and 1 */
ALWAYS_INLINE __m128 pair_scales(const uint8_t *b0) {
    uint16_t h0, h1;
    memcpy(&h0, b0, sizeof(h0));
    memcpy(&h1, b0 + Q4_0_BYTES, sizeof(h1));
    return _mm_cvtph_ps(_mm_cvtsi32_si128((int)((uint32_t)h0 | ((uint32_t)h1 << 16))));
}

/* acc + one step of a row's dot product: the pair's 64 nibbles (pair_nibbles' order) and two weight scales wd against
 * the prepared activation's x, corrections and scales dx of the same pair */
ALWAYS_INLINE __m512 pair_step(__m512 acc, __m512i nibbles, __m128 wd, __m512i x, __m512i corr, __m128 dx) {
    const __m512i t = _mm512_dpbusd_epi32(corr, nibbles, x);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), pair_lanes_ps(_mm_mul_ps(wd, dx)), acc);
}

/* Whether the AVX-512 kernels take rows of n values of `type`: Q4_0 in whole pairs of blocks whose prepared
 * activation fits */
static int takes_rows(enum ggml_type type, int64_t n) {
    return type == GGML_TYPE_Q4_0 && n > 0 && n % 64 == 0 && n <= TS_DOT_MAX_N;
}

/* out[k] = rows[k] . x for k < R: 64 values of every row per step */
ALWAYS_INLINE void group_q4_0(const void *const *rows, const int R, const void *prepared, int64_t n, float *out,
                              ts_row_prefetcher *pf) {
    const ts_q8_0_view v = ts_view_q8_0(prepared, n);
    __m512 acc[TS_DOT_ROWS];
    for (int k = 0; k < R; k++) {
        acc[k] = _mm512_setzero_ps();
    }
    for (int64_t b = 0; b < n / 32; b += 2) {
        ts_prefetch_upto(pf, (size_t)(b + 2) * Q4_0_BYTES + 64);
        const __m512i x = _mm512_load_si512((const void *)(v.x + 32 * b));
        const __m512i corr = pair_corr(v.corr + b);
        const __m128 dx = _mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)(v.d + b)));
        for (int k = 0; k < R; k++) {
            const uint8_t *b0 = (const uint8_t *)rows[k] + b * Q4_0_BYTES;
            acc[k] = pair_step(acc[k], pair_nibbles(b0), pair_scales(b0), x, corr, dx);
        }
    }
    for (int k = 0; k < R; k++) {
        out[k] = _mm512_reduce_add_ps(acc[k]);
    }
}

TS_DEFINE_DOT_ROWS(q4_0, group_q4_0, 32, Q4_0_BYTES)

/* ---- many tokens (prompts): rows_matmul.h's kernel for Q4_0 --------------------------------------------
 * A pass unpacks 4 rows once (each pair of blocks' nibbles as the 64 bytes pair_nibbles makes, each block's scale as
 * a float) and runs them against every token of a chunk, 64 values of a row per step as in decoding. */

ALWAYS_INLINE void unpack_q4_0(const uint8_t *row, int64_t nb, ts_mm_row r) {
    for (int64_t b = 0; b < nb; b += 2) {
        _mm512_store_si512((void *)(r.nib + 32 * b), pair_nibbles(row + b * Q4_0_BYTES));
        r.d[b] = half_at(row + b * Q4_0_BYTES);
        r.d[b + 1] = half_at(row + (b + 1) * Q4_0_BYTES);
    }
}

ALWAYS_INLINE void mm_token_q4_0(const ts_mm_row *rows, const int R, const void *prepared, int64_t n, float *out) {
    const ts_q8_0_view v = ts_view_q8_0(prepared, n);
    __m512 acc[TS_MM_ROWS];
    for (int k = 0; k < R; k++) {
        acc[k] = _mm512_setzero_ps();
    }
    for (int64_t b = 0; b < n / 32; b += 2) {
        const __m512i x = _mm512_load_si512((const void *)(v.x + 32 * b));
        const __m512i corr = pair_corr(v.corr + b);
        const __m128 dx = _mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)(v.d + b)));
        for (int k = 0; k < R; k++) {
            const __m512i nibbles = _mm512_load_si512((const void *)(rows[k].nib + 32 * b));
            const __m128 wd = _mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)(rows[k].d + b)));
            acc[k] = pair_step(acc[k], nibbles, wd, x, corr, dx);
        }
    }
    for (int k = 0; k < R; k++) {
        out[k] = _mm512_reduce_add_ps(acc[k]);
    }
}

TS_DEFINE_MATMUL(q4_0, prepare_pairs, unpack_q4_0, mm_token_q4_0)

ts_rows_matmul_fn ts_rows_matmul_avx512(enum ggml_type type, int64_t n) {
    return takes_rows(type, n) ? matmul_q4_0 : NULL;
}

/* ---- table -------------------------------------------------------------------------------------------- */

int ts_dot_kernel_avx512(enum ggml_type type, int64_t n, ts_dot_kernel *k) {
    if (!takes_rows(type, n)) {
        return 0;
    }
    *k = (ts_dot_kernel){TS_ISA_AVX512_VNNI, prepare_pairs, dot_rows_q4_0};
    return 1;
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

#endif
