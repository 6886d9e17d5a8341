#include "ts_error.h"

#include "turbosparse.h"

#include <stdarg.h>
#include <stdio.h>

int ts_set_error(char *err, size_t err_size, const char *fmt, ...) {
    if (err != NULL && err_size > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_size, fmt, ap);
        va_end(ap);
    }
    return TS_ERR_FAILED;
}

int ts_fail(char *err, size_t err_size, int status, const char *fmt, ...) {
    if (err != NULL && err_size > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_size, fmt, ap);
        va_end(ap);
    }
    return status;
}
