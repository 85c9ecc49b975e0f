#!/bin/sh
# Virtual board: no camera and no screen, so the image's settings switch to the test picture
# and no display. Fails the build if the shipped settings no longer look as expected.
set -eu
conf="${TARGET_DIR}/etc/camstream/camstream.toml"
if grep -q '^\[display\]' "${conf}"; then
	echo "post-build: ${conf} already has a [display] table" >&2
	exit 1
fi
sed -i 's/^source = "v4l2"$/source = "test"/' "${conf}"
grep -q '^source = "test"$' "${conf}"
cat >> "${conf}" <<'TOML'

# Virtual board (board/camstream/qemu/post-build.sh): the test picture, nothing on a screen.
[display]
sink = "none"
TOML
