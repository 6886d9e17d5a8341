#!/usr/bin/env bash
# What `scripts/setup.sh --vulkan` needs before it compiles llama-cpp-python with ggml's Vulkan backend:
# Debian's Vulkan loader and headers, the glslc shader compiler, SPIR-V headers, and Mesa's software Vulkan device
# (lavapipe, shown as "llvmpipe"). Prints the Vulkan include directory to compile against on stdout; talks on stderr.
#
# ggml-vulkan needs a newer vulkan.hpp than Debian bookworm ships (vk::LayerSettingEXT). Then the headers of the
# next Debian release's libvulkan-dev are downloaded as a package file through a private apt state (the system's
# sources and package lists stay untouched) and unpacked into the cache, never installed: the loader, libc and
# drivers stay the system's.
set -euo pipefail
cache=$1

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

packages=(mesa-vulkan-drivers libvulkan-dev glslc spirv-headers)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]} from Debian's packages" >&2
    as_root apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

if grep -rqs LayerSettingEXT /usr/include/vulkan/; then
    echo /usr/include
    exit 0
fi

release=trixie
headers="$cache/vulkan-headers-$release"
if [ ! -f "$headers/usr/include/vulkan/vulkan.hpp" ]; then
    echo "setup: the system's vulkan.hpp is too old for ggml-vulkan; fetching Debian $release's libvulkan-dev headers" >&2
    apt_dir=$(mktemp -d) && chmod 755 "$apt_dir"  # readable by apt's download user
    trap 'rm -rf "$apt_dir"' EXIT
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/parts"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $release main" \
        > "$apt_dir/sources.list"
    private_apt=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=$apt_dir/parts"
                 -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o "Debug::NoLocking=1")
    apt-get "${private_apt[@]}" update -q >&2
    (cd "$apt_dir" && apt-get "${private_apt[@]}" download libvulkan-dev >&2)
    rm -rf "$headers.tmp"
    dpkg -x "$apt_dir"/libvulkan-dev_*.deb "$headers.tmp"
    if ! grep -rqs LayerSettingEXT "$headers.tmp/usr/include/vulkan/"; then
        echo "setup: Debian $release's libvulkan-dev has no vk::LayerSettingEXT either; cannot build ggml-vulkan" >&2
        exit 1
    fi
    rm -rf "$headers" && mv "$headers.tmp" "$headers"
fi
echo "$headers/usr/include"
