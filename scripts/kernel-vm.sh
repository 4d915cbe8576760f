#!/usr/bin/env bash
# A Debian 12 VM with the stock kernel (6.1, ESP and XFRM as modules) under qemu, for the tests
# that need a real kernel data plane: this machine's kernel has XFRM but no ESP.
#
#   scripts/kernel-vm.sh image        build the image once (cached in .build/kernel-vm, ~2 min)
#   scripts/kernel-vm.sh run SHARE    boot it; the guest runs SHARE/run.sh (SHARE is mounted at
#                                     /mnt/host), writes SHARE/out/{log,rc}, powers off; the exit
#                                     status is run.sh's (98/99: the VM itself failed)
#   scripts/kernel-vm.sh check NAME   exit 77, saying why, where the VM cannot run
#   scripts/kernel-vm.sh binary PRODUCT DESTINATION
#                                     a static build of one of the package's executables
#
# Needs root, qemu-system-x86, debootstrap and the Debian mirror apt already uses (build only).
# KVM does not run a stock kernel on these machines: qemu emulates (TCG), fine for functions,
# not for timing.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
W=${KERNEL_VM_DIR:-$HERE/.build/kernel-vm}
# Bump when the image's contents change, so that a cached image is rebuilt.
VERSION=4

mirror() {
    local uri
    uri=$(awk '/^URIs:/ {print $2}' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n1 || true)
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

# In the guest: iproute2 and kmod for XFRM; strongSwan's charon with its kernel backend, ping,
# arping and keepalived for interop-kernel.sh; libsodium and libstdc++ for the package's
# binaries (built with the Swift runtime linked in).
PACKAGES=iproute2,kmod,iputils-ping,iputils-arping,strongswan-charon,strongswan-swanctl,libcharon-extra-plugins,libstrongswan-standard-plugins,libstrongswan-extra-plugins,libsodium23,libstdc++6,keepalived

image() {
    if [ -f "$W/out/root.img" ] && [ "$(cat "$W/out/version" 2>/dev/null)" = "$VERSION" ]; then return; fi
    local root=$W/rootfs
    rm -rf "$root" "$W/out"
    mkdir -p "$W/out"
    # minbase has no init: the guest's PID 1 is the script written below.
    debootstrap --variant=minbase --include="$PACKAGES" bookworm "$root" "$(mirror)" >"$W/debootstrap.log" 2>&1 \
        || { tail -20 "$W/debootstrap.log"; exit 1; }
    mkdir -p "$root/etc/initramfs-tools/conf.d"
    printf '%s\n' virtio_pci virtio_blk ext4 9p 9pnet_virtio >"$root/etc/initramfs-tools/modules"
    printf 'MODULES=list\nCOMPRESS=gzip\n' >"$root/etc/initramfs-tools/conf.d/ci.conf"
    mount -t proc proc "$root/proc"
    chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends linux-image-amd64 >"$W/kernel.log" 2>&1 \
        || { umount "$root/proc"; tail -20 "$W/kernel.log"; exit 1; }
    umount "$root/proc"
    chroot "$root" apt-get clean
    rm -rf "$root"/usr/share/{doc,man,locale,info}/* "$root"/var/lib/apt/lists/*
    mkdir -p "$root/mnt/host"
    cat >"$root/sbin/ci-init" <<'INIT'
#!/bin/sh
# PID 1: mount the basics and the host's share, run its run.sh under a watchdog, power off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /tmp; mkdir -p /run/netns
ip link set lo up
RC=98
if modprobe 9pnet_virtio && mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 host0 /mnt/host; then
    mkdir -p /mnt/host/out
    timeout -k 5 540 /mnt/host/run.sh >/tmp/run.log 2>&1 </dev/null
    RC=$?
    cp /tmp/run.log /mnt/host/out/log
    echo "$RC" >/mnt/host/out/rc
    sync
    umount /mnt/host
fi
echo "ci-init: rc=$RC"
sync
echo o >/proc/sysrq-trigger
sleep 10
INIT
    chmod 755 "$root/sbin/ci-init"
    cp "$root"/boot/vmlinuz-* "$W/out/vmlinuz"
    cp "$root"/boot/initrd.img-* "$W/out/initrd.img"
    local kilobytes
    kilobytes=$(du -sk "$root" | cut -f1)
    mkfs.ext4 -q -F -L ciroot -d "$root" "$W/out/root.img" "$((kilobytes * 13 / 10 / 1024 + 64))M"
    rm -rf "$root"
    echo "$VERSION" >"$W/out/version"
}

run() {
    local share
    share=$(cd "$1" && pwd)
    rm -rf "$share/out"
    mkdir -p "$share/out"
    # -snapshot: the image is never written, so every run starts from the same one.
    timeout 600 qemu-system-x86_64 -accel tcg,thread=multi -cpu max -m 1G -smp 2 -nographic -no-reboot -nic none -nodefaults \
        -serial stdio -kernel "$W/out/vmlinuz" -initrd "$W/out/initrd.img" \
        -drive file="$W/out/root.img",if=virtio,format=raw,snapshot=on \
        -virtfs local,path="$share",mount_tag=host0,security_model=none,id=host0 \
        -append "root=/dev/vda rw console=ttyS0 init=/sbin/ci-init panic=-1 quiet loglevel=3" \
        </dev/null >"$share/out/console" 2>&1 || { echo "kernel-vm: qemu failed" >&2; tail -5 "$share/out/console" >&2; return 99; }
    [ -f "$share/out/rc" ] || { echo "kernel-vm: the guest wrote no result" >&2; tail -20 "$share/out/console" >&2; return 99; }
    return "$(cat "$share/out/rc")"
}

# Exit 77 (skipped), saying why as NAME, unless this machine can build and boot the VM.
check() { # name
    [ "$(id -u)" = 0 ] || { echo "$1: skipped: needs root (debootstrap and qemu build and boot the VM)"; exit 77; }
    for tool in qemu-system-x86_64 debootstrap mkfs.ext4; do
        command -v "$tool" >/dev/null || { echo "$1: skipped: $tool is missing (make test installs qemu-system-x86 and debootstrap)"; exit 77; }
    done
}

# One of the package's executables for the guest, with the Swift runtime linked in (the guest has
# none; libsodium and libstdc++ come from Debian).
binary() { # product destination
    (cd "$HERE" && swift build -c release --scratch-path .build/xfrm-probe --product "$1" -Xswiftc -static-stdlib >/dev/null)
    cp "$HERE/.build/xfrm-probe/release/$1" "$2"
}

case "${1:-}" in
check) check "${2:?a name}" ;;
binary) binary "${2:?a product}" "${3:?a destination}" ;;
image) image ;;
run) image; run "${2:?the share directory}" ;;
*) sed -n '2,15p' "$0"; exit 2 ;;
esac
