#!/usr/bin/env bash
# Refreshes the console page's vendored xterm.js (src/console/page/vendor/) from
# npm at the pinned versions. The files are committed and compiled into the
# binary (include_bytes!): a build needs neither npm nor a network, and the page
# loads nothing from a CDN.
set -euo pipefail
XTERM=6.0.0
FIT=0.11.0
dest=$(cd "$(dirname "$0")/.." && pwd)/src/console/page/vendor
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
npm pack --silent "@xterm/xterm@$XTERM" "@xterm/addon-fit@$FIT" >/dev/null
mkdir xterm fit
tar xzf "xterm-xterm-$XTERM.tgz" -C xterm --strip-components 1
tar xzf "xterm-addon-fit-$FIT.tgz" -C fit --strip-components 1
cp xterm/lib/xterm.js xterm/css/xterm.css fit/lib/addon-fit.js "$dest/"
cp xterm/LICENSE "$dest/LICENSE-xterm"
printf '@xterm/xterm %s\n@xterm/addon-fit %s\n' "$XTERM" "$FIT" >"$dest/VERSIONS"
echo "vendored @xterm/xterm $XTERM and @xterm/addon-fit $FIT into $dest"
