#!/usr/bin/env bash
# Builds the image `edgehub:local` from the release binary of the hub, with no registry and no
# base image: a root file system holding the binary and the shared libraries it links is
# imported with `docker import`. Prints the tags it built, one a line.
#
#   docker/build-images.sh            # builds target/release/edgehub first if it is missing
#   EDGEHUB_BIN=/path/to/edgehub docker/build-images.sh
#   docker/build-images.sh edgehub:nested-test-42     # another tag (or EDGEHUB_IMAGE=...)
#
# The image runs `edgehub run --config /etc/edgehub/edgehub.toml` in /etc/edgehub: mount the
# folder of the hub's configuration there (a relative data_dir then resolves inside it, the
# same folder the agent gives to `edgehub identity add`).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
bin="${EDGEHUB_BIN:-$target/release/edgehub}"
tag="${1:-${EDGEHUB_IMAGE:-edgehub:local}}"
if [ ! -x "$bin" ]; then
    (cd "$root" && cargo build --release -p edgehub --bin edgehub >&2)
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/edgehub" "$rootfs/tmp" "$rootfs/etc/ssl/certs"
chmod 1777 "$rootfs/tmp"
cp "$bin" "$rootfs/usr/local/bin/edgehub"

# The shared libraries the binary links (and the dynamic loader), at the same paths.
for lib in $(ldd "$bin" | grep -o '/[^ )]*'); do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
done

tar -C "$rootfs" -c . | docker import \
    --change 'ENTRYPOINT ["/usr/local/bin/edgehub"]' \
    --change 'CMD ["run", "--config", "/etc/edgehub/edgehub.toml"]' \
    --change 'WORKDIR /etc/edgehub' \
    --change 'EXPOSE 8883' \
    - "$tag" >/dev/null
echo "$tag"
