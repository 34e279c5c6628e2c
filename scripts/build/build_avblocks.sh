#!/usr/bin/env bash
# Compile audiotag/decode/_avblocks.c (whole blocks of decoded audio per call, without Python's lock) and
# audiotag/infer/_logmel.c (the log-mel frontend in one call, without the lock; FFmpeg's FFT) against the slim
# FFmpeg of scripts/build/build_ffmpeg.sh, into audiotag/decode/_avblocks.so and audiotag/infer/_logmel.so.
#
#     scripts/build/build_avblocks.sh FFMPEG_PREFIX
#
# Run by scripts/build/setup.sh; a failure stops the set-up (the package falls back to PyAV and numpy without the
# libraries, 10-100x slower beside busy threads: a checkout must not end up there unnoticed). rpath: the FFmpeg libraries of
# this machine's build, then the folder two levels up, where the frozen binary keeps them (build.spec).
set -euo pipefail
cd "$(dirname "$0")/../.."
prefix=${1:?usage: build_avblocks.sh FFMPEG_PREFIX}
[ -f "$prefix/include/libavcodec/avcodec.h" ] || { echo "build_avblocks.sh: no FFmpeg headers in $prefix" >&2; exit 1; }
prefix=$(cd "$prefix" && pwd)  # the rpath must not depend on the folder a program starts in
out=audiotag/decode/_avblocks.so
tmp=$out.tmp.$$
gcc -O2 -g0 -shared -fPIC -Wall -Wextra -Werror -I"$prefix/include" -o "$tmp" audiotag/decode/_avblocks.c \
    -L"$prefix/lib" -lavformat -lavcodec -lavutil -Wl,-rpath,"$prefix/lib" -Wl,-rpath,'$ORIGIN/../..'
mv "$tmp" "$out"
# -ffp-contract=off: no fused multiply-add rounding differently from numpy and torch (upstream parity).
out=audiotag/infer/_logmel.so
tmp=$out.tmp.$$
gcc -O3 -ffp-contract=off -g0 -shared -fPIC -Wall -Wextra -Werror -I"$prefix/include" -o "$tmp" audiotag/infer/_logmel.c \
    -L"$prefix/lib" -lavutil -lm -Wl,-rpath,"$prefix/lib" -Wl,-rpath,'$ORIGIN/../..'
mv "$tmp" "$out"
