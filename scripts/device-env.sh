# Sourced by the device scripts (scripts/device-bench.sh, scripts/device-serve-bench.sh) ON the device: builds the
# peers in .peers, puts the Vulkan loader where omex's wgpu finds it, points it at the NVIDIA driver and names
# the card. Sets P (the peers folder) and BIN (the omex binary: OMEX_BIN, else .devbin/omex, else target/release).
# With PEERS_BUILD=background the llama.cpp build (~6 min) runs behind the caller, which calls `peers_wait`
# before it needs llama.cpp, so omex can be measured meanwhile.
P=.peers
BIN=${OMEX_BIN:-$( [ -x .devbin/omex ] && echo .devbin/omex || echo target/release/omex )}
# The NVIDIA driver's Vulkan ICD is its GLX library, which needs glvnd's dispatch libraries. An H100 on
# 2026-12-07 had the manifest and the loader yet no adapter; a missing glvnd is the guess (unverified). The
# Debian packages in .gl (see the device library's README) are unpacked into / when carried.
if ls .gl/*.deb >/dev/null 2>&1; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
bash $P/device.sh vulkan >/dev/null
if [ "${PEERS_BUILD:-}" = background ]; then
    bash $P/device.sh build >/tmp/peers-build.log 2>&1 &
    PEERS_PID=$!
else
    bash $P/device.sh build >/dev/null
    PEERS_PID=
fi
peers_wait() { [ -z "$PEERS_PID" ] || wait "$PEERS_PID" || { echo "peers build failed:"; tail -20 /tmp/peers-build.log; }; }
export LD_LIBRARY_PATH=/opt/vk/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# The NVIDIA Vulkan driver's manifest is not where the loader looks on these machines, and not in the same place
# on all of them: take the first one found. Without one, wgpu finds no adapter ("vulkan not requested"), as
# happened on an H100 on 2026-12-07 (llama.cpp's Vulkan build gave no figures either): say so at once.
icd=$(ls /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json \
    /etc/vulkan/icd.d/nvidia_icd.json /usr/local/nvidia/lib64/nvidia_icd.json 2>/dev/null | head -n 1 || true)
[ -n "$icd" ] || icd=$(find / -xdev -name 'nvidia_icd*.json' 2>/dev/null | head -n 1 || true)
if [ -n "$icd" ]; then
    export VK_DRIVER_FILES=$icd
else
    # The manifest only names the driver's library (which carries the Vulkan ICD): write one if the library is here.
    lib=$(ls /usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.0 /usr/local/nvidia/lib64/libGLX_nvidia.so.0 2>/dev/null | head -n 1 || true)
    if [ -n "$lib" ]; then
        printf '{"file_format_version": "1.0.0", "ICD": {"library_path": "%s", "api_version": "1.3.0"}}\n' "$lib" >/tmp/nvidia_icd.json
        export VK_DRIVER_FILES=/tmp/nvidia_icd.json
        echo "device-env.sh: no nvidia_icd.json found; wrote /tmp/nvidia_icd.json for $lib" >&2
    else
        echo "device-env.sh: no NVIDIA Vulkan driver (nvidia_icd.json or libGLX_nvidia.so.0) on this machine: omex's GPU engine and llama.cpp's Vulkan build will find no adapter" >&2
    fi
fi
# What the manifest names, where the loader finds it, and any library it needs that is missing.
if [ -n "${VK_DRIVER_FILES:-}" ]; then
    cat "$VK_DRIVER_FILES" >&2
    lib=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ICD"]["library_path"])' "$VK_DRIVER_FILES" 2>/dev/null || true)
    found=$([ -z "$lib" ] || ldconfig -p | grep -F "$(basename "$lib")" | head -1 | sed 's/.*=> //' || true)
    if [ -n "$found" ]; then
        echo "device-env.sh: ICD library $found" >&2
        ldd "$found" | grep -i "not found" >&2 || true
    fi
fi
echo "device-env.sh: VK_DRIVER_FILES=${VK_DRIVER_FILES:-unset}; loaders: $(ldconfig -p | grep -c libvulkan) libvulkan entries" >&2
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
