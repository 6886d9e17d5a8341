/*
 * ggml's backend devices: which one a model's weights live on. The CPU device keeps the file's mapping and ggml's
 * repacked matrices; any other device (Metal, CUDA, Vulkan: whatever the installed ggml was built with) holds
 * the weights in its own buffers and runs the graph through ggml's backend scheduler, with the CPU as fallback.
 */
#ifndef TS_DEVICE_H
#define TS_DEVICE_H

#include "ggml-backend.h"
#include "turbosparse.h"

#include <stddef.h>

/*
 * The device a name means: NULL, "" or "cpu" the CPU; "gpu" the first GPU (or integrated GPU) device; else a
 * ggml device name such as "Vulkan0" or "Metal" (case-insensitive). NULL with err listing the devices there are
 * when none matches.
 */
ggml_backend_dev_t ts_device_find(const char *name, char *err, size_t err_size);

/* 1 for ggml's CPU device. */
int ts_device_is_cpu(ggml_backend_dev_t dev);

/* dev's name, description and memory into info */
void ts_device_describe(ggml_backend_dev_t dev, ts_device_info *info);

#endif
