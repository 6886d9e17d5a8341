/* Device enumeration and lookup by name (device.h). */
#include "device.h"

#include "ts_error.h"
#include "turbosparse.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

/* devices a model can live on: the CPU and GPUs (ACCEL devices such as BLAS only help the CPU backend) */
static int holds_weights(ggml_backend_dev_t dev) {
    const enum ggml_backend_dev_type type = ggml_backend_dev_type(dev);
    return type == GGML_BACKEND_DEVICE_TYPE_CPU || type == GGML_BACKEND_DEVICE_TYPE_GPU ||
           type == GGML_BACKEND_DEVICE_TYPE_IGPU;
}

int ts_device_is_cpu(ggml_backend_dev_t dev) {
    return ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_CPU;
}

/* "CPU (description), Vulkan0 (description)" into buf */
static void list_devices(char *buf, size_t size) {
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < ggml_backend_dev_count() && used < size; i++) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        if (holds_weights(dev)) {
            const int n = snprintf(buf + used, size - used, "%s%s (%s)", used > 0 ? ", " : "", ggml_backend_dev_name(dev),
                                   ggml_backend_dev_description(dev));
            used += n > 0 ? (size_t)n : 0;
        }
    }
}

/* ggml-vulkan leaves out CPU-type Vulkan devices (Mesa's lavapipe) unless GGML_VK_VISIBLE_DEVICES names them */
static const char *vulkan_hint(void) {
    ggml_backend_reg_t vulkan = ggml_backend_reg_by_name("Vulkan");
    return vulkan != NULL && ggml_backend_reg_dev_count(vulkan) == 0
               ? "; ggml-vulkan found no device: a software Vulkan device (lavapipe) needs GGML_VK_VISIBLE_DEVICES=0"
               : "";
}

ggml_backend_dev_t ts_device_find(const char *name, char *err, size_t err_size) {
    if (name == NULL || name[0] == '\0' || strcasecmp(name, "cpu") == 0) {
        ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
        if (cpu == NULL) {
            ts_set_error(err, err_size, "ggml has no CPU device");
        }
        return cpu;
    }
    const int any_gpu = strcasecmp(name, "gpu") == 0;
    for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        if (!holds_weights(dev)) {
            continue;
        }
        if (any_gpu ? !ts_device_is_cpu(dev) : strcasecmp(ggml_backend_dev_name(dev), name) == 0) {
            return dev;
        }
    }
    char devices[1024];
    list_devices(devices, sizeof(devices));
    if (any_gpu) {
        ts_fail(err, err_size, TS_ERR_ARGUMENT,
                "no GPU device: this ggml has %s%s (a GPU needs a llama-cpp-python built with Metal, CUDA or Vulkan; "
                "scripts/setup.sh --vulkan builds the Vulkan one)",
                devices, vulkan_hint());
    } else {
        ts_fail(err, err_size, TS_ERR_ARGUMENT, "unknown device '%s': this ggml has %s, or 'cpu' / 'gpu'%s", name,
                devices, vulkan_hint());
    }
    return NULL;
}

/* the index-th device that holds weights, or NULL */
static ggml_backend_dev_t nth_device(int32_t index) {
    int32_t seen = 0;
    for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        if (holds_weights(dev) && seen++ == index) {
            return dev;
        }
    }
    return NULL;
}

void ts_device_describe(ggml_backend_dev_t dev, ts_device_info *info) {
    memset(info, 0, sizeof(*info));
    snprintf(info->name, sizeof(info->name), "%s", ggml_backend_dev_name(dev));
    snprintf(info->description, sizeof(info->description), "%s", ggml_backend_dev_description(dev));
    info->is_cpu = ts_device_is_cpu(dev);
    size_t free = 0, total = 0;
    ggml_backend_dev_memory(dev, &free, &total);
    info->memory_total = total;
}

int32_t ts_device_count(void) {
    int32_t n = 0;
    while (nth_device(n) != NULL) {
        n++;
    }
    return n;
}

int32_t ts_device_get(int32_t index, ts_device_info *info) {
    ggml_backend_dev_t dev = index >= 0 ? nth_device(index) : NULL;
    if (dev == NULL) {
        return TS_ERR_ARGUMENT;
    }
    ts_device_describe(dev, info);
    return TS_OK;
}

int32_t ts_device_lookup(const char *name, ts_device_info *info, char *err, size_t err_size) {
    ggml_backend_dev_t dev = ts_device_find(name, err, err_size);
    if (dev == NULL) {
        return TS_ERR_ARGUMENT;
    }
    ts_device_describe(dev, info);
    return TS_OK;
}
