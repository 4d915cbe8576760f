#!/usr/bin/env bash
# IPsecHAXFRM against a real kernel: in the Debian VM of scripts/kernel-vm.sh (this machine's
# kernel has XFRM but no ESP), two ESP SAs are installed with iproute2, one with ESN and a
# 128-packet window, one 32-bit with a 32-packet window (the legacy replay state); the probe
# (ikeha-xfrm-probe, IPsecHAXFRM's socket and codec) reads their counters, writes new ones past
# 2^32 (both halves) as a takeover does, and reads them back; `ip -s xfrm state` then shows what
# the kernel itself holds. Then both are deleted, their last counters read from the kernel's
# deletion notices (a planned switchover's stop). Exit 77 (skipped) without root, qemu or debootstrap.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/kernel-vm.sh check xfrm-kernel
share=$(mktemp -d)
trap 'rm -rf "$share"' EXIT
scripts/kernel-vm.sh binary ikeha-xfrm-probe "$share/probe"
cat >"$share/run.sh" <<'GUEST'
#!/bin/sh
set -e
modprobe esp4
modprobe xfrm_user
K20=0x0102030405060708090a0b0c0d0e0f1011121314
K36=0x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20212223
ip xfrm state add src 10.1.0.1 dst 10.1.0.2 proto esp spi 0x1001 reqid 1 mode tunnel aead 'rfc4106(gcm(aes))' $K20 128 replay-window 128 flag esn
ip xfrm state add src 10.1.0.2 dst 10.1.0.1 proto esp spi 0x2002 reqid 2 mode tunnel aead 'rfc7539esp(chacha20,poly1305)' $K36 128 replay-window 32
echo "== esn before";  /mnt/host/probe 10.1.0.2 0x1001 10.1.0.1
echo "== esn set";     /mnt/host/probe 10.1.0.2 0x1001 10.1.0.1 4294968296 4294967400
echo "== legacy before"; /mnt/host/probe 10.1.0.1 0x2002 10.1.0.2
echo "== legacy set";  /mnt/host/probe 10.1.0.1 0x2002 10.1.0.2 1000 900
echo "== missing";     /mnt/host/probe 10.1.0.1 0x9999 10.1.0.2 || true
echo "== kernel"
ip -s xfrm state
echo "== esn delete";  /mnt/host/probe delete 10.1.0.2 0x1001 10.1.0.1
echo "== esn gone";    /mnt/host/probe 10.1.0.2 0x1001 10.1.0.1 || true
echo "== legacy delete"; /mnt/host/probe delete 10.1.0.1 0x2002 10.1.0.2
echo "== delete missing"; /mnt/host/probe delete 10.1.0.1 0x2002 10.1.0.2 || true
GUEST
chmod +x "$share/run.sh"
status=0
scripts/kernel-vm.sh run "$share" || status=$?
cat "$share/out/log" 2>/dev/null || true
exit "$status"
