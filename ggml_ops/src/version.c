/* Which ggml we were built against and which one this process runs (they must be the same). */
#include "ggml.h"
#include "turbosparse.h"

#ifndef TS_BUILD_GGML_VERSION
#error "TS_BUILD_GGML_VERSION must be defined by the build"
#endif

const char *ts_ggml_version(void) {
    return ggml_version();
}

const char *ts_build_ggml_version(void) {
    return TS_BUILD_GGML_VERSION;
}
