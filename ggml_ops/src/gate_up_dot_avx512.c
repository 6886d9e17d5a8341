/*
 * AVX-512 VNNI gate/up kernel for Q4_0 rows against a Q8_0 activation: rows two at a time (a neuron's gate and
 * up), two 32-blocks per instruction against an activation prepared once per token.
 *
 * Compiled with -mavx512f -mavx512bw -mavx512vnni (CMakeLists.txt) and reached only through ts_dot_kernel_best,
 * which asks the CPU first. Other types on such CPUs take the AVX2 kernels.
 */
#include "gate_up_dot.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__F16C__)
#include <immintrin.h>
#include <string.h>

#define PAIR_BYTES 192 /* prepared bytes per 64 values */
#define MAX_N (TS_DOT_PREPARED_MAX / 3) /* longest row whose prepared activation fits */

/*
 * Layout of the prepared activation, per pair of 32-blocks (b, b+1), 192 bytes:
 *   x     64 int8: x_b[0:16], x_b+1[0:16], x_b[16:32], x_b+1[16:32] - the order in which a Q4_0 pair's low and
 *         high nibbles come out of one 32-byte load (a Q4_0 block stores value k in the low nibble of byte k and
 *         value k + 16 in the high nibble);
 *   corr  16 int32: -8 * (sum of the 4 activation bytes of each 32-bit lane), so that a dot product over the
 *         unsigned nibbles q gives the sum over (q - 8) * x;
 *   dx    16 float: the activation block scale of each lane.
 * Q4_0 block: {fp16 d, 16 bytes}; Q8_0 block: {fp16 d, 32 int8}.
 */
typedef struct {
    __m512i x;
    __m512i corr;
    __m512 dx;
} prepared_pair;

_Static_assert(sizeof(prepared_pair) == PAIR_BYTES, "prepared pair layout");

enum { Q4_0_BYTES = 18, Q8_0_BYTES = 34 };

static float half_at(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, sizeof(h));
    return _cvtsh_ss(h);
}

static const void *prepare_pairs(const void *xq, int64_t n, void *prepared) {
    const uint8_t *x = xq;
    prepared_pair *out = prepared;
    const __m512i eight = _mm512_set1_epi8(8);
    for (int64_t p = 0; p < n / 64; p++) {
        const uint8_t *b0 = x + (2 * p) * Q8_0_BYTES, *b1 = b0 + Q8_0_BYTES;
        const __m128i lo0 = _mm_loadu_si128((const __m128i *)(b0 + 2)), hi0 = _mm_loadu_si128((const __m128i *)(b0 + 18));
        const __m128i lo1 = _mm_loadu_si128((const __m128i *)(b1 + 2)), hi1 = _mm_loadu_si128((const __m128i *)(b1 + 18));
        const __m256i lo = _mm256_inserti128_si256(_mm256_castsi128_si256(lo0), lo1, 1);
        const __m256i hi = _mm256_inserti128_si256(_mm256_castsi128_si256(hi0), hi1, 1);
        const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
        out[p].x = v;
        out[p].corr = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), eight, v));
        const float d0 = half_at(b0), d1 = half_at(b1);
        const __m512 s0 = _mm512_set1_ps(d0), s1 = _mm512_set1_ps(d1);
        out[p].dx = _mm512_mask_blend_ps(0xF0F0, s0, s1); /* lanes 4-7 and 12-15 belong to block b+1 */
    }
    return prepared;
}

/* Scales of a Q4_0 pair laid out as the lanes: d_b in lanes 0-3 and 8-11, d_b+1 in lanes 4-7 and 12-15 */
static inline __m512 pair_scales(const uint8_t *b0) {
    uint16_t h0, h1;
    memcpy(&h0, b0, sizeof(h0));
    memcpy(&h1, b0 + Q4_0_BYTES, sizeof(h1));
    const __m128 d = _mm_cvtph_ps(_mm_cvtsi32_si128((int)((uint32_t)h0 | ((uint32_t)h1 << 16))));
    const __m512i lanes = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1);
    return _mm512_permutexvar_ps(lanes, _mm512_castps128_ps512(d));
}

/* The 64 nibbles of a Q4_0 pair as unsigned bytes in the prepared activation's order */
static inline __m512i pair_nibbles(const uint8_t *b0) {
    const __m256i y = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(b0 + 2))),
                                              _mm_loadu_si128((const __m128i *)(b0 + Q4_0_BYTES + 2)), 1);
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i lo = _mm256_and_si256(y, m4), hi = _mm256_and_si256(_mm256_srli_epi16(y, 4), m4);
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

/* *g = gate_row . x and *u = up_row . x */
static void pair_dot(const void *gate_row, const void *up_row, const void *prepared, int64_t n, float *g, float *u) {
    const uint8_t *ga = gate_row, *ua = up_row;
    const prepared_pair *xp = prepared;
    __m512 acc_g = _mm512_setzero_ps(), acc_u = _mm512_setzero_ps();
    for (int64_t p = 0; p < n / 64; p++) {
        const uint8_t *gb = ga + 2 * p * Q4_0_BYTES, *ub = ua + 2 * p * Q4_0_BYTES;
        const __m512i tg = _mm512_dpbusd_epi32(xp[p].corr, pair_nibbles(gb), xp[p].x);
        const __m512i tu = _mm512_dpbusd_epi32(xp[p].corr, pair_nibbles(ub), xp[p].x);
        acc_g = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tg), _mm512_mul_ps(pair_scales(gb), xp[p].dx), acc_g);
        acc_u = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tu), _mm512_mul_ps(pair_scales(ub), xp[p].dx), acc_u);
    }
    *g = _mm512_reduce_add_ps(acc_g);
    *u = _mm512_reduce_add_ps(acc_u);
}

/* Asks for a whole row ahead of its use. */
static void prefetch_row(const void *row, size_t row_bytes) {
    for (size_t b = 0; b < row_bytes; b += 64) {
        _mm_prefetch((const char *)row + b, _MM_HINT_T0);
    }
}

/* Rows in pairs, the next pair prefetched whole while one is computed; an odd last row is paired with itself. */
static void dot_rows_q4_0(enum ggml_type type, const void *const *rows, int64_t n_rows, const void *prepared,
                          int64_t n, float *out) {
    (void)type;
    const size_t row_bytes = (size_t)(n / 32) * Q4_0_BYTES;
    for (int64_t i = 0; i < n_rows; i += 2) {
        for (int64_t k = i + 2; k < i + 4 && k < n_rows; k++) {
            prefetch_row(rows[k], row_bytes);
        }
        float second;
        pair_dot(rows[i], rows[i + 1 < n_rows ? i + 1 : i], prepared, n, &out[i], i + 1 < n_rows ? &out[i + 1] : &second);
    }
}

int ts_dot_kernel_avx512(enum ggml_type type, int64_t n, ts_dot_kernel *k) {
    if (type != GGML_TYPE_Q4_0 || n <= 0 || n % 64 != 0 || n > MAX_N) {
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

#endif
