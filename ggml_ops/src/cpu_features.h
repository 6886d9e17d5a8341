/*
 * Which instruction sets this CPU runs, asked at run time: one build of the library serves AVX2 and AVX-512
 * x86 CPUs, and aarch64 CPUs with and without the dot product extension (other architectures run the generic
 * kernels). Kernels for an instruction set live in their
 * own translation units compiled with that set's flags (CMakeLists.txt), and are only called after
 * ts_isa_supported() said yes; everything else is compiled for the architecture's baseline.
 */
#ifndef TS_CPU_FEATURES_H
#define TS_CPU_FEATURES_H

#include "ggml.h"
#include "turbosparse.h"

/* 1 when this CPU (and its OS) runs code of that instruction set; TS_ISA_GENERIC always. */
int ts_isa_supported(enum ts_kernel_isa isa);

/* 1 when this CPU has AVX512-FP16 (x86 only; context.c's attention span follows ggml's F16 step, which it widens). */
int ts_cpu_has_avx512_fp16(void);

/* Whether a family of kernels (gate/up, down, prompt) has one of instruction set isa for rows of n values of type. */
typedef int (*ts_isa_has_kernel)(enum ts_kernel_isa isa, enum ggml_type type, int64_t n);

/*
 * The one rule every family's kernel is chosen by: the most specialised instruction set this CPU runs for which
 * has_kernel says yes (AVX-512 VNNI, AVX2, NEON with the dot product extension, NEON: where a CPU runs several, the
 * later ones are its fallbacks), else TS_ISA_GENERIC.
 */
enum ts_kernel_isa ts_isa_best(ts_isa_has_kernel has_kernel, enum ggml_type type, int64_t n);

#endif
