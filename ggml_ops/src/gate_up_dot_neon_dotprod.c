/*
 * The NEON gate/up kernels with the dot product extension (SDOT): gate_up_dot_neon.c compiled a second time, with
 * +dotprod (CMakeLists.txt), its table named ts_dot_kernel_neon_dotprod. Run only where the CPU reports the
 * extension (cpu_features.c).
 */
#define TS_NEON_DOTPROD_UNIT
#include "gate_up_dot_neon.c"
