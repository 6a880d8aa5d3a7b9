#!/usr/bin/env bash
# Builds the images the real node runs, from programs built here (no registry
# is reachable), and imports them into its containerd. Each image is a root
# filesystem packed by umoci into an OCI image; the images are cached, like the
# binaries, under a key made of every input, so an unchanged tree builds nothing.
#
#   berth.local/pause:test       the Pod sandbox (images/pause)
#   berth.local/install:test     sh and wget (busybox): Berth's install init container
#   berth.local/gameserver:test  a stand-in game server (images/gameserver) with busybox
#   berth.local/berth:test       Berth itself: the release binary and the libraries it links
#
# images.sh build          build what is missing into the cache
# images.sh import         build, then import into the real node's containerd
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

case ${1:-import} in
  build) build_all >/dev/null ;;
  import) import_all ;;
  *) echo "usage: $0 build|import" >&2; exit 2 ;;
esac
