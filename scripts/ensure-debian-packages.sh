#!/usr/bin/env bash
# Installs the named Debian packages when they are missing: with apt-get when run as root,
# otherwise prints the exact command and fails. With --optional first (packages only some
# tests need), a machine without root gets a note instead: those tests skip and say so.
set -euo pipefail
optional=false
if [ "${1:-}" = "--optional" ]; then
    optional=true
    shift
fi
missing=()
for package in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "installing missing Debian packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    exit 0
fi
if $optional; then
    echo "note: not installed: ${missing[*]} (the tests that need them skip; as root: apt-get install -y ${missing[*]})" >&2
    exit 0
fi
echo "error: missing Debian packages: ${missing[*]}" >&2
echo "install them with:  sudo apt-get install -y ${missing[*]}" >&2
exit 1
