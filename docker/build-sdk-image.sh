#!/usr/bin/env bash
# Builds a test image holding this host's Python, the azure-iot-device SDK from the
# workspace's .venv and the SDK modules of agent/tests/sdk (at /sdk), with no registry and no
# base image (`docker import`). Used by the agent's Docker end-to-end test; prints the tag.
#
#   docker/build-sdk-image.sh <tag>
set -euo pipefail

tag="$1"
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv"
python="$(readlink -f "$venv/bin/python")"
prefix="$(dirname "$(dirname "$python")")"
version="$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
stdlib="$prefix/lib/python$version"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
mkdir -p "$rootfs$prefix/bin" "$rootfs$prefix/lib" "$rootfs/sdk" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"
cp "$python" "$rootfs$prefix/bin/"
ln -s "$prefix/bin/$(basename "$python")" "$rootfs$prefix/bin/python3"
cp -a "$prefix"/lib/libpython*.so* "$rootfs$prefix/lib/" 2>/dev/null || true
tar -C "$prefix/lib" \
    --exclude="python$version/test" --exclude="python$version/site-packages" \
    --exclude="python$version/idlelib" --exclude="python$version/tkinter" \
    --exclude="python$version/ensurepip" --exclude='__pycache__' \
    -c "python$version" | tar -C "$rootfs$prefix/lib" -x
mkdir -p "$rootfs$prefix/lib/python$version/site-packages"
cp -a "$venv/lib/python$version/site-packages/." "$rootfs$prefix/lib/python$version/site-packages/"
cp "$root"/agent/tests/sdk/*.py "$rootfs/sdk/"

# The shared libraries of the interpreter and of every extension module, at the same paths.
find "$rootfs" -name '*.so*' -type f -print0 | xargs -0 ldd 2>/dev/null | grep -o '/[^ )]*\.so[^ )]*' | sort -u > "$work/libs"
ldd "$python" | grep -o '/[^ )]*' >> "$work/libs"
sort -u "$work/libs" | while read -r lib; do
    case "$lib" in "$prefix"/*) continue ;; esac
    [ -e "$lib" ] || continue
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
done

tar -C "$rootfs" -c . | docker import \
    --change "ENV PATH=$prefix/bin:/usr/bin:/bin" \
    --change 'WORKDIR /sdk' \
    - "$tag" >/dev/null
echo "$tag"
