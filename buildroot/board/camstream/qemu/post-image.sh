#!/bin/sh
# Virtual board: a data disk (ext4, label "data", mounted at /data like the SD card's data
# partition) and the script that starts the board. An existing data disk is kept, so
# recordings and settings survive a rebuild.
set -eu
BOARD_DIR="$(dirname "$0")"
data="${BINARIES_DIR}/data.ext4"
if [ ! -e "${data}" ]; then
	truncate -s 1G "${data}"
	"${HOST_DIR}/sbin/mkfs.ext4" -q -L data "${data}"
fi
install -m 0755 "${BOARD_DIR}/start-qemu.sh" "${BINARIES_DIR}/start-qemu.sh"
