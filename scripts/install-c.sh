#!/usr/bin/env bash
# libipsecha for C programs: builds the shared library in release with the Swift runtime linked
# in (-static-stdlib: nothing to ship beside it but libsodium), exporting the C API alone, and
# installs it with ipsecha.h and a pkg-config file into PREFIX (default /usr/local):
#   PREFIX/lib/libipsecha.so.1, PREFIX/lib/libipsecha.so -> libipsecha.so.1,
#   PREFIX/include/ipsecha.h, PREFIX/lib/pkgconfig/ipsecha.pc
# Then: cc app.c $(pkg-config --cflags --libs ipsecha) (PKG_CONFIG_PATH=PREFIX/lib/pkgconfig
# for a prefix pkg-config does not search; run ldconfig, or link with -Wl,-rpath,PREFIX/lib).
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=${1:-/usr/local}
SCRATCH=${IPSECHA_C_SCRATCH:-$HERE/.build/libipsecha}
# The library's release and its ABI (the soname's number) come from the code, not from here.
VERSION=$(sed -n 's/.*static let version = StaticText.make("\(.*\)").*/\1/p' "$HERE/Sources/IPsecHACAPI/MemberHandle.swift")
ABI=$(sed -n 's/^#define IPSECHA_ABI_VERSION \([0-9]*\)$/\1/p' "$HERE/Sources/CIPsecHA/include/ipsecha.h")
[ -n "$VERSION" ] && [ -n "$ABI" ] || { echo "install-c: cannot read the version or the ABI" >&2; exit 1; }

(cd "$HERE" && swift build -c release --product ipsecha --scratch-path "$SCRATCH" -Xswiftc -static-stdlib \
    -Xlinker -soname -Xlinker "libipsecha.so.$ABI" -Xlinker "--version-script=$HERE/scripts/lib/ipsecha.map")
BUILT=$(cd "$HERE" && swift build -c release --scratch-path "$SCRATCH" --show-bin-path)/libipsecha.so

install -d "$PREFIX/lib/pkgconfig" "$PREFIX/include"
install -m 0755 "$BUILT" "$PREFIX/lib/libipsecha.so.$ABI"
ln -sf "libipsecha.so.$ABI" "$PREFIX/lib/libipsecha.so"
install -m 0644 "$HERE/Sources/CIPsecHA/include/ipsecha.h" "$PREFIX/include/ipsecha.h"
sed -e "s|@PREFIX@|$PREFIX|" -e "s|@VERSION@|$VERSION|" "$HERE/scripts/lib/ipsecha.pc.in" >"$PREFIX/lib/pkgconfig/ipsecha.pc"
echo "installed libipsecha $VERSION (ABI $ABI) into $PREFIX"
