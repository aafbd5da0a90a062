#!/usr/bin/env bash
# Downloads, here (where the package index is reachable), the wheels scripts/gpu_check.sh installs on a GPU
# machine that starts bare: what it lacks of what the masks stage and its bench import, for its Python (3.12;
# torch, torchvision, numpy, pyarrow, opencv-python-headless and nvidia-ml-py are there already). Into .whl/
# (ignored by git): carry it with the device tool (`carry: [".whl", "models"]`). Settings: WHEELS (.whl),
# PY (python3, whose pip downloads), PYTHON_VERSION (3.12); a relative WHEELS is from the repository's root.
# The versions are the ones the rehearsals used.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.whl}
PY=${PY:-python3}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
PACKAGES=(av==18.1.0 dask==2026.8.0 distributed==2026.8.0 locket==1.0.0 partd==1.4.2 tblib==3.2.2 tornado==6.6.1
          zict==3.0.0 pycocotools==2.0.11 ultralytics==8.4.190 segment-anything==1.0)
mkdir -p "$WHEELS"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHEELS" "${PACKAGES[@]}"
echo "$(ls "$WHEELS"/*.whl | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1), in $WHEELS"
