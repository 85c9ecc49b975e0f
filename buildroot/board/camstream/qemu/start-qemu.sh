#!/bin/sh
# Starts the camstream virtual board (camstream_qemu_aarch64_defconfig) from the images
# directory: read-only root on the first disk, the data disk (recordings, settings) on the
# second, serial console in this terminal (Ctrl-A X quits). The device's RTSP server is
# forwarded to rtsp://127.0.0.1:${RTSP_PORT:-8554}/live on this machine.
#
# Settings as on a real card go in camstream.txt (see board/camstream/camstream.txt) at the
# root of the data disk, which has no boot partition to hold it:
#   debugfs -w -R "write camstream.txt camstream.txt" data.ext4
set -eu
cd "$(dirname "$0")"
QEMU=qemu-system-aarch64
if [ -x ../host/bin/qemu-system-aarch64 ]; then
	QEMU=../host/bin/qemu-system-aarch64
fi
# virtio-blk-pci, not virtio-mmio: PCI enumerates in command-line order, so the root is
# always /dev/vda. A USB controller is there for a camera passed through from this machine:
#   start-qemu.sh -device usb-host,vendorid=0x046d,productid=0x0825
exec "${QEMU}" -M virt -cpu cortex-a53 -smp 2 -m 1024 -nographic \
	-kernel Image -append "rootwait root=/dev/vda ro console=ttyAMA0" \
	-drive file=rootfs.ext4,if=none,format=raw,id=root -device virtio-blk-pci,drive=root \
	-drive file=data.ext4,if=none,format=raw,id=data -device virtio-blk-pci,drive=data \
	-netdev "user,id=net0,hostfwd=tcp:127.0.0.1:${RTSP_PORT:-8554}-:8554" \
	-device virtio-net-pci,netdev=net0 \
	-device qemu-xhci,id=xhci \
	"$@"
