# Sourced by the device scripts (scripts/device-bench.sh, scripts/device-serve-bench.sh) ON the device: builds the
# peers in .peers, puts the Vulkan loader where omex's wgpu finds it, points it at the NVIDIA driver and names
# the card. Sets P (the peers folder) and BIN (the omex binary: OMEX_BIN, else .devbin/omex, else target/release).
P=.peers
BIN=${OMEX_BIN:-$( [ -x .devbin/omex ] && echo .devbin/omex || echo target/release/omex )}
bash $P/device.sh build >/dev/null
bash $P/device.sh vulkan >/dev/null
export LD_LIBRARY_PATH=/opt/vk/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# The NVIDIA Vulkan driver's manifest is not where the loader looks on these machines.
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f $icd ] && export VK_DRIVER_FILES=$icd
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
