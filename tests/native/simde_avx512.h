/* force-included before an AVX-512 kernel file of an emulated build */
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#include <math.h>
#include <string.h>

/* a 16-lane conversion, lane by lane: out[i] = convert(in[i]) */
#define TS_EMU_LANES(name, in_vec, in_t, out_vec, out_t, convert)                                                     \
    static inline out_vec name(in_vec a) {                                                                          \
        in_t s[16]; out_t d[16]; out_vec r;                                                                         \
        memcpy(s, &a, sizeof(s));                                                                                   \
        for (int i = 0; i < 16; i++) d[i] = convert(s[i]);                                                          \
        memcpy(&r, d, sizeof(r));                                                                                   \
        return r;                                                                                                   \
    }
TS_EMU_LANES(ts_emu_cvtepi16_epi32, simde__m256i, int16_t, simde__m512i, int32_t, (int32_t))
TS_EMU_LANES(ts_emu_cvtepi32_ps, simde__m512i, int32_t, simde__m512, float, (float))
TS_EMU_LANES(ts_emu_cvtepi32_epi16, simde__m512i, int32_t, simde__m256i, int16_t, (int16_t))
TS_EMU_LANES(ts_emu_cvtph_ps, simde__m256i, uint16_t, simde__m512, float, _cvtsh_ss)
/* float -> int32 in the current rounding mode (to nearest, ties to even), as cvtps2dq; int32 -> int8 by truncation */
TS_EMU_LANES(ts_emu_cvtps_epi32, simde__m512, float, simde__m512i, int32_t, (int32_t)nearbyintf)
static inline simde__m128i ts_emu_cvtepi32_epi8(simde__m512i a) {
    int32_t s[16]; int8_t d[16]; simde__m128i r;
    memcpy(s, &a, sizeof(s));
    for (int i = 0; i < 16; i++) d[i] = (int8_t)s[i];
    memcpy(&r, d, sizeof(r));
    return r;
}
/* a masked load, element by element: the elements whose bit is clear read nothing and are 0 */
#define TS_EMU_MASKZ_LOAD(name, mask_t, vec, elem_t, n)                                                               \
    static inline vec name(mask_t k, const void *p) {                                                              \
        elem_t d[n]; vec r;                                                                                         \
        for (int i = 0; i < n; i++) d[i] = (k >> i) & 1 ? ((const elem_t *)p)[i] : 0;                              \
        memcpy(&r, d, sizeof(r));                                                                                   \
        return r;                                                                                                   \
    }
TS_EMU_MASKZ_LOAD(ts_emu_maskz_loadu_epi8, simde__mmask64, simde__m512i, uint8_t, 64)
TS_EMU_MASKZ_LOAD(ts_emu_maskz_loadu_epi16, simde__mmask32, simde__m512i, uint16_t, 32)
TS_EMU_MASKZ_LOAD(ts_emu_maskz_loadu_epi32, simde__mmask16, simde__m512i, uint32_t, 16)
TS_EMU_MASKZ_LOAD(ts_emu_maskz_loadu_ps, simde__mmask16, simde__m512, float, 16)
static inline simde__m512i ts_emu_cvtepu8_epi16(simde__m256i a) { /* 32 lanes: bytes zero-extended to int16 */
    uint8_t s[32]; uint16_t d[32]; simde__m512i r;
    memcpy(s, &a, sizeof(s));
    for (int i = 0; i < 32; i++) d[i] = s[i];
    memcpy(&r, d, sizeof(r));
    return r;
}
static inline float ts_emu_reduce_add_ps(simde__m512 a) {
    float v[16];
    memcpy(v, &a, sizeof(v));
    for (int w = 8; w >= 1; w /= 2) for (int i = 0; i < w; i++) v[i] += v[i + w];
    return v[0];
}
static inline float ts_emu_reduce_max_ps(simde__m512 a) {
    float v[16];
    memcpy(v, &a, sizeof(v));
    float m = v[0];
    for (int i = 1; i < 16; i++) m = v[i] > m ? v[i] : m;
    return m;
}
static inline simde__m512i ts_emu_mask_i32gather_epi32(simde__m512i src, simde__mmask16 k, simde__m512i vindex,
                                                       const void *base, int scale) {
    int32_t idx[16], d[16]; simde__m512i r;
    memcpy(idx, &vindex, sizeof(idx));
    memcpy(d, &src, sizeof(d));
    for (int i = 0; i < 16; i++) if ((k >> i) & 1) memcpy(&d[i], (const char *)base + (int64_t)idx[i] * scale, 4);
    memcpy(&r, d, sizeof(r));
    return r;
}
#undef _mm512_cvtepi16_epi32 /* a newer SIMDe may have its own */
#undef _mm512_cvtepi32_ps
#undef _mm512_maskz_loadu_epi8
#undef _mm512_maskz_loadu_epi16
#undef _mm512_maskz_loadu_epi32
#undef _mm512_maskz_loadu_ps
#undef _mm512_reduce_add_ps
#undef _mm512_mask_i32gather_epi32
#undef _mm512_cvtepi32_epi16
#undef _mm512_cvtph_ps
#undef _mm512_cvtepu8_epi16
#undef _mm512_cvtps_epi32
#undef _mm512_cvtepi32_epi8
#undef _mm512_reduce_max_ps
#define _mm512_cvtps_epi32 ts_emu_cvtps_epi32
#define _mm512_cvtepi32_epi8 ts_emu_cvtepi32_epi8
#define _mm512_reduce_max_ps ts_emu_reduce_max_ps
#define _mm512_cvtepu8_epi16 ts_emu_cvtepu8_epi16
#define _mm512_mask_i32gather_epi32 ts_emu_mask_i32gather_epi32
#define _mm512_cvtepi32_epi16 ts_emu_cvtepi32_epi16
#define _mm512_cvtph_ps ts_emu_cvtph_ps
#define _mm512_cvtepi16_epi32 ts_emu_cvtepi16_epi32
#define _mm512_cvtepi32_ps ts_emu_cvtepi32_ps
#define _mm512_maskz_loadu_epi8 ts_emu_maskz_loadu_epi8
#define _mm512_maskz_loadu_epi16 ts_emu_maskz_loadu_epi16
#define _mm512_maskz_loadu_epi32 ts_emu_maskz_loadu_epi32
#define _mm512_maskz_loadu_ps ts_emu_maskz_loadu_ps
#define _mm512_reduce_add_ps ts_emu_reduce_add_ps
#define __AVX512F__ 1
#define __AVX512BW__ 1
#define __AVX512VNNI__ 1
