#!/usr/bin/env bash
# What the tests need beyond .venv, from Debian's packages (test time only: none of it ships):
# ffmpeg and libvo-amrwbenc-dev make the fixtures of tests/test_formats.py (every container and codec a crawler
# meets; Debian's ffmpeg has no AMR encoder, so tests/fixtures/amr_encode.c is compiled against
# libopencore-amrnb and libvo-amrwbenc), gcc compiles it and the crash library of tests/test_robustness.py.
set -euo pipefail
packages=(ffmpeg gcc libc6-dev libopencore-amrnb-dev libvo-amrwbenc-dev)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "install_test_tools.sh: missing ${missing[*]}: install them (apt-get install ${missing[*]})" >&2
    exit 1
fi
echo "== installing ${missing[*]} with apt-get (test fixtures)" >&2
apt-get -o DPkg::Lock::Timeout=600 update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null ||
    { echo "install_test_tools.sh: apt-get install ${missing[*]} failed" >&2; exit 1; }
