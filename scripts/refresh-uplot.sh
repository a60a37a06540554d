#!/bin/sh
# Re-downloads the vendored uPlot (the dashboard's charts) from npm:
# its built, minified browser bundle, its stylesheet and its license, into
# crates/server/assets/vendor/uplot/. The files are committed and compiled
# into the binary (include_bytes!), so building never needs Node or the
# network; only this script does (it needs `npm`).
#
#   scripts/refresh-uplot.sh            # the pinned version
#   scripts/refresh-uplot.sh 1.6.33     # another one (then update VERSION below)
set -eu

VERSION=${1:-1.6.32}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST="$ROOT/crates/server/assets/vendor/uplot"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

cd "$WORK"
npm pack --silent "uplot@$VERSION" >/dev/null
tar xzf "uplot-$VERSION.tgz"
mkdir -p "$DEST"
cp package/dist/uPlot.iife.min.js "$DEST/uPlot.iife.min.js"
cp package/dist/uPlot.min.css "$DEST/uPlot.min.css"
cp package/LICENSE "$DEST/LICENSE"
echo "$VERSION" > "$DEST/VERSION"
echo "uPlot $VERSION vendored into $DEST"
