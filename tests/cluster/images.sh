#!/usr/bin/env bash
# Builds the images the real node runs, from programs built here (no registry
# is reachable), and imports them into its containerd. Each image is a root
# filesystem packed by umoci into an OCI image; the images are cached, like the
# binaries, under a key made of every input, so an unchanged tree builds nothing.
#
#   berth.local/pause:test       the Pod sandbox (images/pause)
#   berth.local/install:test     sh and wget (busybox): Berth's install init container
#   berth.local/gameserver:test  a stand-in game server (images/gameserver) with busybox
#   berth.local/berth:test       Berth itself: the release binary and the libraries it
#                                links, laid out as the Dockerfile lays it out (path,
#                                user, entrypoint and command are read from it)
#
# images.sh build          build what is missing into the cache
# images.sh import         build, then import into the real node's containerd
# images.sh berth BINARY   build Berth's image from BINARY and import it
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TAG=test
IMAGES=(pause install gameserver)

inputs_key() {
  {
    find "$CLUSTER_SRC/images" -type f | sort | xargs cat
    busybox 2>&1 | head -1
    go version
    umoci --version
    sed -n '/^build_image()/,/^}/p;/^rootfs_/,/^}/p' "${BASH_SOURCE[0]}"
  } | sha256sum | cut -c1-16
}

# A static Go program of images/NAME into DIR.
go_static() {
  (cd "$CLUSTER_SRC" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$2/$1" "./images/$1")
}

# busybox and the applets a shell user expects, into rootfs DIR.
rootfs_busybox() {
  mkdir -p "$1/bin" "$1/tmp"
  cp /bin/busybox "$1/bin/busybox"
  local applet
  for applet in $(busybox --list); do
    [ -e "$1/bin/$applet" ] || ln -s busybox "$1/bin/$applet"
  done
}

rootfs_pause() { go_static pause "$1"; }
rootfs_install() { rootfs_busybox "$1"; }
rootfs_gameserver() {
  rootfs_busybox "$1"
  go_static gameserver "$1/bin"
}

# build_image NAME OUT: rootfs_NAME, packed as an OCI image tar at OUT.
build_image() {
  local name=$1 out=$2 tmp
  tmp=$(mktemp -d)
  umoci init --layout "$tmp/oci"
  umoci new --image "$tmp/oci:$TAG"
  umoci unpack --image "$tmp/oci:$TAG" "$tmp/bundle" >/dev/null
  "rootfs_$name" "$tmp/bundle/rootfs"
  umoci repack --image "$tmp/oci:$TAG" "$tmp/bundle"
  case $name in
    pause) umoci config --image "$tmp/oci:$TAG" --config.entrypoint /pause ;;
    install) umoci config --image "$tmp/oci:$TAG" --config.entrypoint /bin/sh --config.env PATH=/bin ;;
    gameserver) umoci config --image "$tmp/oci:$TAG" --config.entrypoint /bin/gameserver \
      --config.env PATH=/bin --config.workingdir /app/data ;;
  esac
  umoci gc --layout "$tmp/oci"
  tar -C "$tmp/oci" -cf "$out.tmp" .
  mv "$out.tmp" "$out"
  rm -rf "$tmp"
}

build_all() {
  local key cache name
  key=$(inputs_key)
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/berth/images/$key
  for name in "${IMAGES[@]}"; do
    [ -f "$cache/$name.tar" ] && continue
    mkdir -p "$cache"
    log "building image berth.local/$name:$TAG"
    build_image "$name" "$cache/$name.tar"
  done
  # Images of inputs that changed since are not needed any more.
  find "$(dirname "$cache")" -mindepth 1 -maxdepth 1 -type d ! -name "$key" -exec rm -rf {} +
  echo "$cache"
}

import_all() {
  local cache name digest
  cache=$(build_all)
  for name in "${IMAGES[@]}"; do
    digest=$(sha256sum <"$cache/$name.tar" | cut -c1-16)
    # Import only what changed since the last import into this containerd.
    [ "$(cat "$NODE_DIR/imported-$name" 2>/dev/null)" = "$digest" ] && continue
    ctr images import --base-name "berth.local/$name" "$cache/$name.tar" >/dev/null
    echo "$digest" >"$NODE_DIR/imported-$name"
  done
}

# dockerfile_value INSTRUCTION: the value of the final stage's INSTRUCTION (a JSON
# array's items space-separated), so this image and the Dockerfile's agree.
dockerfile_value() {
  python3 - "$1" "$REPO_ROOT/Dockerfile" <<'PY'
import json, sys
want, path = sys.argv[1], sys.argv[2]
value = None
for line in open(path):
    parts = line.strip().split(None, 1)
    if len(parts) == 2 and parts[0] == want:
        value = parts[1]
if value is None:
    sys.exit(f"no {want} in {path}")
try:
    parsed = json.loads(value)
    print(" ".join(parsed) if isinstance(parsed, list) else parsed)
except ValueError:
    print(value.split()[-1] if want == "COPY" else value)
PY
}

# Berth's image from BINARY: the binary where the Dockerfile puts it, the shared
# libraries it links (what distroless/cc provides), and the nonroot user.
build_berth() {
  local binary=$1 out=$2 tmp dest lib user
  tmp=$(mktemp -d)
  umoci init --layout "$tmp/oci"
  umoci new --image "$tmp/oci:$TAG"
  umoci unpack --image "$tmp/oci:$TAG" "$tmp/bundle" >/dev/null
  local root=$tmp/bundle/rootfs
  dest=$(dockerfile_value COPY)
  user=$(dockerfile_value USER)
  mkdir -p "$root$(dirname "$dest")" "$root/etc" "$root/tmp"
  chmod 1777 "$root/tmp"
  cp "$binary" "$root$dest"
  for lib in $(ldd "$binary" | awk '/=> \// {print $3} /^\t\/lib/ {print $1}'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/home/nonroot:/sbin/nologin\n' \
    "${user%%:*}" "${user##*:}" >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:%s:\n' "${user##*:}" >"$root/etc/group"
  umoci repack --image "$tmp/oci:$TAG" "$tmp/bundle"
  umoci config --image "$tmp/oci:$TAG" --config.user "$user" \
    --config.entrypoint "$(dockerfile_value ENTRYPOINT)" --config.cmd "$(dockerfile_value CMD)" \
    --config.exposedports "$(dockerfile_value EXPOSE)/tcp"
  umoci gc --layout "$tmp/oci"
  tar -C "$tmp/oci" -cf "$out.tmp" .
  mv "$out.tmp" "$out"
  rm -rf "$tmp"
}

import_berth() {
  local binary=$1 key cache
  [ -x "$binary" ] || { echo "no Berth binary at $binary" >&2; exit 1; }
  if [ -f "$NODE_UNAVAILABLE" ]; then
    log "no real node: Berth's image is not imported"
    return 0
  fi
  key=$({ sha256sum <"$binary"; cat "$REPO_ROOT/Dockerfile"; sed -n '/^build_berth()/,/^}/p' "${BASH_SOURCE[0]}"; } | sha256sum | cut -c1-16)
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/berth/images-berth
  if [ ! -f "$cache/$key.tar" ]; then
    rm -rf "$cache" && mkdir -p "$cache"
    log "building image berth.local/berth:$TAG"
    build_berth "$binary" "$cache/$key.tar"
  fi
  [ "$(cat "$NODE_DIR/imported-berth" 2>/dev/null)" = "$key" ] && return 0
  ctr images import --base-name berth.local/berth "$cache/$key.tar" >/dev/null
  echo "$key" >"$NODE_DIR/imported-berth"
}

case ${1:-import} in
  build) build_all >/dev/null ;;
  import) import_all ;;
  berth) import_berth "${2:?usage: $0 berth BINARY}" ;;
  *) echo "usage: $0 build|import|berth BINARY" >&2; exit 2 ;;
esac
