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

#endif
