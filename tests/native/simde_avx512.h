/* force-included before an AVX-512 kernel file of an emulated build */
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#include <string.h>

static inline simde__m512i ts_emu_cvtepi16_epi32(simde__m256i a) {
    int16_t s[16]; int32_t d[16]; simde__m512i r;
    memcpy(s, &a, sizeof(s));
    for (int i = 0; i < 16; i++) d[i] = s[i];
    memcpy(&r, d, sizeof(r));
    return r;
}
static inline simde__m512 ts_emu_cvtepi32_ps(simde__m512i a) {
    int32_t s[16]; float d[16]; simde__m512 r;
    memcpy(s, &a, sizeof(s));
    for (int i = 0; i < 16; i++) d[i] = (float)s[i];
    memcpy(&r, d, sizeof(r));
    return r;
}
static inline simde__m512i ts_emu_maskz_loadu_epi8(simde__mmask64 k, const void *p) {
    uint8_t d[64]; simde__m512i r;
    for (int i = 0; i < 64; i++) d[i] = (k >> i) & 1 ? ((const uint8_t *)p)[i] : 0;
    memcpy(&r, d, sizeof(r));
    return r;
}
static inline float ts_emu_reduce_add_ps(simde__m512 a) {
    float v[16];
    memcpy(v, &a, sizeof(v));
    for (int w = 8; w >= 1; w /= 2) for (int i = 0; i < w; i++) v[i] += v[i + w];
    return v[0];
}
#undef _mm512_cvtepi16_epi32 /* a newer SIMDe may have its own */
#undef _mm512_cvtepi32_ps
#undef _mm512_maskz_loadu_epi8
#undef _mm512_reduce_add_ps
#define _mm512_cvtepi16_epi32 ts_emu_cvtepi16_epi32
#define _mm512_cvtepi32_ps ts_emu_cvtepi32_ps
#define _mm512_maskz_loadu_epi8 ts_emu_maskz_loadu_epi8
#define _mm512_reduce_add_ps ts_emu_reduce_add_ps
#define __AVX512F__ 1
#define __AVX512BW__ 1
#define __AVX512VNNI__ 1
