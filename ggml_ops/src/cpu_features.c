#include "cpu_features.h"

#include "axpy_rows.h"
#include "gate_up_dot.h"
#include "rows_matmul.h"
#include "ggml-cpu.h"

#if defined(__x86_64__)
/* __builtin_cpu_supports checks the CPUID bits and that the OS saves the wider registers (XGETBV). */
int ts_isa_supported(enum ts_kernel_isa isa) {
    switch (isa) {
    case TS_ISA_GENERIC:
        return 1;
    case TS_ISA_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case TS_ISA_AVX512_VNNI:
#ifdef TS_EMULATE_AVX512
        return ts_isa_supported(TS_ISA_AVX2); /* a test build: SIMDe emulates AVX-512 in AVX2 (CMakeLists.txt) */
#else
        return ts_isa_supported(TS_ISA_AVX2) && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni");
#endif
    default:
        return 0;
    }
}

#elif defined(__aarch64__) && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>

/* Advanced SIMD is part of every aarch64 CPU; the kernel reports the dot product extension in AT_HWCAP. */
int ts_isa_supported(enum ts_kernel_isa isa) {
    switch (isa) {
    case TS_ISA_GENERIC:
    case TS_ISA_NEON: return 1;
    case TS_ISA_NEON_DOTPROD: return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
    default: return 0;
    }
}

#elif defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>

/* macOS has no getauxval: it reports the dot product extension as the sysctl hw.optional.arm.FEAT_DotProd (macOS 12
 * on; every Apple M-series CPU has it). Where the key is missing the plain NEON kernels run. */
static int apple_cpu_has(const char *feature) {
    int value = 0;
    size_t size = sizeof(value);
    return sysctlbyname(feature, &value, &size, NULL, 0) == 0 && value != 0;
}

int ts_isa_supported(enum ts_kernel_isa isa) {
    switch (isa) {
    case TS_ISA_GENERIC:
    case TS_ISA_NEON: return 1;
    case TS_ISA_NEON_DOTPROD: return apple_cpu_has("hw.optional.arm.FEAT_DotProd");
    default: return 0;
    }
}

#elif defined(__aarch64__)
/* Other aarch64 systems: Advanced SIMD only, the dot product kernels are not asked for. */
int ts_isa_supported(enum ts_kernel_isa isa) {
    return isa == TS_ISA_GENERIC || isa == TS_ISA_NEON;
}

#else
int ts_isa_supported(enum ts_kernel_isa isa) {
    return isa == TS_ISA_GENERIC;
}
#endif

#if defined(__x86_64__)
#include <cpuid.h>

/* CPUID leaf 7, EDX bit 23, asked directly: __builtin_cpu_supports knows "avx512fp16" only from GCC 12 on. */
int ts_cpu_has_avx512_fp16(void) {
    unsigned int eax, ebx, ecx, edx;
    return __get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) && (edx >> 23 & 1u);
}
#else
int ts_cpu_has_avx512_fp16(void) {
    return 0;
}
#endif

enum ts_kernel_isa ts_isa_best(ts_isa_has_kernel has_kernel, enum ggml_type type, int64_t n) {
    static const enum ts_kernel_isa preference[] = {TS_ISA_AVX512_VNNI, TS_ISA_AVX2, TS_ISA_NEON_DOTPROD, TS_ISA_NEON};
    for (size_t i = 0; i < sizeof(preference) / sizeof(preference[0]); i++) {
        if (ts_isa_supported(preference[i]) && has_kernel(preference[i], type, n)) {
            return preference[i];
        }
    }
    return TS_ISA_GENERIC;
}

const char *ts_kernel_isa_name(int32_t isa) {
    switch (isa) {
    case TS_ISA_GENERIC: return "generic";
    case TS_ISA_AVX2: return "avx2";
    case TS_ISA_AVX512_VNNI: return "avx512vnni";
    case TS_ISA_NEON: return "neon";
    case TS_ISA_NEON_DOTPROD: return "neon_dotprod";
    default: return "unknown";
    }
}

int32_t ts_kernel_isa_supported(int32_t isa) {
    return isa >= 0 && isa < TS_ISA_COUNT && ts_isa_supported((enum ts_kernel_isa)isa);
}

int32_t ts_kernel_isa_used(int32_t kind, int32_t type, int64_t n) {
    if (type < 0 || type >= GGML_TYPE_COUNT || ggml_blck_size((enum ggml_type)type) == 0) {
        return -1;
    }
    ggml_cpu_init();
    switch (kind) {
    case TS_KERNEL_DOT_ROWS: return (int32_t)ts_dot_kernel_best((enum ggml_type)type, n).isa;
    case TS_KERNEL_AXPY_ROWS:
        return ts_axpy_rows_supported((enum ggml_type)type) ? (int32_t)ts_axpy_rows_isa((enum ggml_type)type) : -1;
    case TS_KERNEL_ROWS_MATMUL: return ts_rows_matmul_isa((enum ggml_type)type, n);
    default: return -1;
    }
}

int32_t ts_down_rows_type(int32_t type) {
    if (type < 0 || type >= GGML_TYPE_COUNT || ggml_blck_size((enum ggml_type)type) == 0) {
        return -1;
    }
    ggml_cpu_init();
    return (int32_t)ts_axpy_rows_held_type((enum ggml_type)type);
}
