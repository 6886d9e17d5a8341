/*
 * Which instruction sets this CPU runs, asked at run time: one build of the library serves AVX2 and AVX-512
 * x86 CPUs, and aarch64 CPUs with and without the dot product extension (other architectures run the generic
 * kernels). Kernels for an instruction set live in their
 * own translation units compiled with that set's flags (CMakeLists.txt), and are only called after
 * ts_isa_supported() said yes; everything else is compiled for the architecture's baseline.
 */
#ifndef TS_CPU_FEATURES_H
#define TS_CPU_FEATURES_H

#include "turbosparse.h"

/* 1 when this CPU (and its OS) runs code of that instruction set; TS_ISA_GENERIC always. */
int ts_isa_supported(enum ts_kernel_isa isa);

#endif
