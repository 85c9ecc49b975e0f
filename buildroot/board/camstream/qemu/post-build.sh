#!/bin/sh
# Virtual board: no camera and no screen, so the image's settings switch to the test picture
# and no display, and to the board profile of the virtual board (pipelines/virt.toml: software
# encoder and decoders; QEMU's device tree has no model string to select it by). Fails the
# build if the shipped settings no longer look as expected.
set -eu
conf="${TARGET_DIR}/etc/camstream/camstream.toml"
for table in display pipeline; do
	if grep -q "^\[${table}\]" "${conf}"; then
		echo "post-build: ${conf} already has a [${table}] table" >&2
		exit 1
	fi
done
sed -i 's/^source = "v4l2"$/source = "test"/' "${conf}"
grep -q '^source = "test"$' "${conf}"
cat >> "${conf}" <<'TOML'

# Virtual board (board/camstream/qemu/post-build.sh): the test picture, nothing on a screen,
# the virtual board's profile.
[display]
sink = "none"

[pipeline]
profile = "virt"
TOML
# The profile as a file too (pipeline.profiles_dir), so the image runs it whatever profiles the
# binary has built in.
install -D -m 0644 "$(dirname "$0")/../../../../pipelines/virt.toml" \
	"${TARGET_DIR}/etc/camstream/pipelines/virt.toml"
