#!/usr/bin/env bash
# An emulated aarch64 Python 3.11 with flare-onnx's runtime, for tests/test_aarch64.py:
#   qemu-user 10 from bookworm-backports (Debian 12's own qemu 7.2 crashes importing
#   onnxruntime 1.32), Debian's arm64 python3.11 and its libraries unpacked into a sysroot,
#   and the runtime's aarch64 wheels (the versions installed in .venv) in a target directory.
# Nothing is installed on the system: apt runs on private lists, packages are unpacked with
# dpkg -x. Safe to run again (a finished directory is reused). Needs apt-get and dpkg
# (Debian/Ubuntu) and the package registries.
# Usage: bash scripts/aarch64.sh [DIR]   (default .cache/aarch64; prints DIR when ready)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DIR=$(mkdir -p "${1:-.cache/aarch64}" && cd "${1:-.cache/aarch64}" && pwd)
PY=${PYTHON:-.venv/bin/python}
versions=$("$PY" -c "import onnxruntime, tokenizers, numpy, tqdm; print(f'onnxruntime=={onnxruntime.__version__} tokenizers=={tokenizers.__version__} numpy=={numpy.__version__} tqdm=={tqdm.__version__}')")
if [ -f "$DIR/ready" ] && [ "$(cat "$DIR/ready")" = "$versions" ]; then echo "$DIR"; exit 0; fi
command -v apt-get >/dev/null && command -v dpkg >/dev/null || { echo "aarch64: needs apt-get and dpkg (Debian or Ubuntu)" >&2; exit 2; }
rm -rf "$DIR" && mkdir -p "$DIR"/apt/lists/partial "$DIR"/apt/cache/archives/partial "$DIR"/debs "$DIR"/sysroot "$DIR"/qemu
cat > "$DIR/apt/sources.list" <<EOF
deb [arch=arm64] http://deb.debian.org/debian bookworm main
deb [arch=amd64] http://deb.debian.org/debian bookworm-backports main
EOF
APT=(-o "Dir::Etc::SourceList=$DIR/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o "Dir::State::Lists=$DIR/apt/lists" -o "Dir::Cache=$DIR/apt/cache" -o Dir::State::status=/dev/null
     -o APT::Architectures::=amd64 -o APT::Architectures::=arm64 -o APT::Sandbox::User=root -qq)
echo "aarch64: package lists (bookworm arm64, bookworm-backports)" >&2
apt-get "${APT[@]}" update >&2
# python3.11 and libstdc++ (onnxruntime, tokenizers) with everything they depend on
pkgs=$(apt-cache "${APT[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
         --no-replaces --no-enhances --no-pre-depends python3.11:arm64 libstdc++6:arm64 \
       | grep -v '^[ <]' | grep -E '^(lib|python3|zlib|media-types|gcc-12-base)' | sort -u)
echo "aarch64: downloading qemu-user 10 and $(echo "$pkgs" | wc -w) arm64 packages" >&2
(cd "$DIR/debs" && apt-get "${APT[@]}" download $pkgs qemu-user/bookworm-backports >&2)
for deb in "$DIR"/debs/*_arm64.deb "$DIR"/debs/*_all.deb; do dpkg -x "$deb" "$DIR/sysroot"; done
dpkg -x "$DIR"/debs/qemu-user_*_amd64.deb "$DIR/qemu"
echo "aarch64: wheels $versions" >&2
"$PY" -m pip install -q --disable-pip-version-check --target "$DIR/site" --python-version 3.11 --implementation cp \
  --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
  --only-binary=:all: $versions 2>&1 | grep -vE "is ignored: it is neither|dependency resolver|requires .* but you have" >&2 || true
rm -rf "$DIR/debs" "$DIR/apt/cache"
"$DIR/qemu/usr/bin/qemu-aarch64" -L "$DIR/sysroot" -E "PYTHONPATH=$DIR/site" "$DIR/sysroot/usr/bin/python3.11" \
  -c "import platform, onnxruntime, tokenizers, numpy; assert platform.machine() == 'aarch64'" \
  || { echo "aarch64: the emulated interpreter cannot import the runtime" >&2; exit 1; }
echo "$versions" > "$DIR/ready"
echo "$DIR"
