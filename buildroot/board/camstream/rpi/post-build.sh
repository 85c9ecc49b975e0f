#!/bin/sh
# Raspberry Pi boards: a console on HDMI when nothing streams there yet, and the settings file
# users edit from a PC, placed on the boot partition.
set -eu
mkdir -p "${TARGET_DIR}/etc/systemd/system/getty.target.wants"
ln -sf /lib/systemd/system/getty@.service \
	"${TARGET_DIR}/etc/systemd/system/getty.target.wants/getty@tty1.service"
mkdir -p "${TARGET_DIR}/boot" "${TARGET_DIR}/data"
install -m 0644 "${BR2_EXTERNAL_CAMSTREAM_PATH}/board/camstream/camstream.txt" \
	"${BINARIES_DIR}/camstream.txt"
