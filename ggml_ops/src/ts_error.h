/* Error messages written into a caller-provided buffer. */
#ifndef TS_ERROR_H
#define TS_ERROR_H

#include <stddef.h>

#if defined(__GNUC__)
#define TS_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define TS_PRINTF(a, b)
#endif

/* Writes the formatted message into err (if non-NULL) and returns -1 (TS_ERR_FAILED). */
int ts_set_error(char *err, size_t err_size, const char *fmt, ...) TS_PRINTF(3, 4);
/* The same, returning `status` (an enum ts_status). */
int ts_fail(char *err, size_t err_size, int status, const char *fmt, ...) TS_PRINTF(4, 5);

#endif
