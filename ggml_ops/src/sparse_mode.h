/* Which sparse modes a model allows: the one place that decides it (ts_model_sparse_mode in turbosparse.h). */
#ifndef TS_SPARSE_MODE_H
#define TS_SPARSE_MODE_H

#include "model.h"

/*
 * 0 when a context can run `mode` (an enum ts_sparse_mode other than AUTO) on the model, else TS_ERR_ARGUMENT with
 * err naming the file and what the mode needs. Looser than ts_model_sparse_mode in one case: exact mode on an
 * uncalibrated SwiGLU FFN (the context's thresholds, set later, decide its rows).
 */
int ts_sparse_mode_check(const ts_model *m, int32_t mode, char *err, size_t err_size);

#endif
