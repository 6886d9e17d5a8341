/*
 * The 6-bit scales and mins of a K-quant super-block (Q4_K, Q5_K: ggml-common.h's packing), shared by every kernel
 * that reads them. The 12 packed bytes: bytes 0-3 hold scales 0-3 (and the top 2 bits of scales 4-7), bytes 4-7
 * mins 0-3 (and the top 2 bits of mins 4-7), bytes 8-11 the low 4 bits of scales 4-7 (low nibble) and mins 4-7
 * (high nibble).
 */
#ifndef TS_Q4_K_SCALES_H
#define TS_Q4_K_SCALES_H

#include <stdint.h>
#include <string.h>

/* sm[0, 8) = the 8 scales, sm[8, 16) = the 8 mins */
static inline void ts_k_scales_mins(const uint8_t *packed, uint8_t sm[16]) {
    uint32_t u[3];
    memcpy(u, packed, sizeof(u));
    const uint32_t v[4] = {
        u[0] & 0x3f3f3f3f,
        (u[2] & 0x0f0f0f0f) | (((u[0] >> 6) & 0x03030303) << 4),
        u[1] & 0x3f3f3f3f,
        ((u[2] >> 4) & 0x0f0f0f0f) | (((u[1] >> 6) & 0x03030303) << 4),
    };
    memcpy(sm, v, sizeof(v));
}

#if defined(__AVX2__)
#include <immintrin.h>

/*
 * The same 16 bytes (8 scales, then 8 mins) in a vector register, for two super-blocks at once: each 128-bit lane of
 * v holds one block's 12 packed bytes and 4 more. Two byte shuffles put each output byte's low bits and top 2 bits in
 * place; the 16-bit shifts' bits leaking in from the neighbouring byte fall outside the masks. The x86 kernels take
 * this instead of the scalar version and its round trip through memory (Zen 4, rows in L2, one thread: the Q4_K
 * down kernels 3-8 % faster, the gate/up ones 1-4 %).
 */
static inline __m256i ts_k_scales_mins_x2(__m256i v) {
    /* bytes 0-3 | 8-11 | 4-7 | 8-11: the low 6 bits of scales 0-3, low 4 of scales 4-7, mins 0-3, (high 4) mins 4-7 */
    const __m256i low = _mm256_shuffle_epi8(v, _mm256_broadcastsi128_si256(
                                                   _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11)));
    const __m256i keep = _mm256_broadcastsi128_si256(_mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 0, 0, 0, 0));
    const __m256i keep_high = _mm256_broadcastsi128_si256(_mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 15, 15, 15));
    const __m256i bits = _mm256_or_si256(_mm256_and_si256(low, keep), _mm256_and_si256(_mm256_srli_epi16(low, 4), keep_high));
    /* the top 2 bits of bytes 0-3 (scales 4-7) and 4-7 (mins 4-7), shifted to bits 4-5 */
    const __m256i top = _mm256_shuffle_epi8(v, _mm256_broadcastsi128_si256(
                                                   _mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7)));
    return _mm256_or_si256(bits, _mm256_and_si256(_mm256_srli_epi16(top, 2), _mm256_set1_epi8(0x30)));
}

/* One super-block's, from a 16-byte load at `packed` (its 12 packed bytes and the 4 after them, which every layout
 * holds within the block or its group). */
static inline __m128i ts_k_scales_mins_vec(const uint8_t *packed) {
    const __m128i v = _mm_loadu_si128((const __m128i *)packed);
    return _mm256_castsi256_si128(ts_k_scales_mins_x2(_mm256_castsi128_si256(v)));
}
#endif

#endif
