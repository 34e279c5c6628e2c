#!/usr/bin/env bash
# Build audiotag's second decoder: a slim, LGPL-only FFmpeg and PyAV 12.3.0 against it, as one wheel.
#
#     scripts/build/build_ffmpeg.sh [PYTHON]      # prints the wheel's path on stdout; PYTHON defaults to .venv/bin/python
#
# FFmpeg 5.1 comes from Debian bookworm's source package (the security-maintained 5.1.x; PyAV 12 is the last
# release that builds against FFmpeg < 7). It is configured with nothing but what decoding downloaded audio needs:
# audio demuxers (and the containers of video files, whose video is never decoded), audio decoders and their
# parsers, the file and pipe protocols, swresample. No encoders, muxers, network, devices, filters or programs,
# no GPL part. libopus (BSD) decodes Opus with float output and libopencore-amrnb (Apache-2.0, hence
# --enable-version3: LGPL-3.0+ overall) decodes AMR-NB with DTX frames, both from Debian's packages. FFmpeg's own
# AMR-NB decoder is left out (it rejects DTX frames: ../shared/notes/decoders.md). FFmpeg's own Opus decoder is in
# (2.4x faster than libopus) and decodes Opus outside Ogg (WebM, Matroska), where FFmpeg is the reference; Ogg
# Opus keeps libopus in float, as libsndfile decodes it (audiotag/decode/_avblocks.c picks, by container).
#
# The result is cached in build/ffmpeg/<key>/ (key: this script's hash and the Python version), so a second run
# only prints the path. Needs root for apt-get when the build tools are missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

python=${1:-.venv/bin/python}
PYAV_VERSION=12.3.0
log() { printf '== build_ffmpeg: %s\n' "$*" >&2; }
fail() { printf 'build_ffmpeg.sh: %s\n' "$*" >&2; exit 1; }

[ -x "$python" ] || fail "no Python at $python (run scripts/build/setup.sh)"
pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
key=$( (cat "$0"; echo "$pyver") | sha256sum | cut -c1-16)
root=$PWD/build/ffmpeg/$key
prefix=$root/prefix
wheel=$(ls "$root"/wheel/av-"$PYAV_VERSION"-*.whl 2>/dev/null | head -n1 || true)
if [ -n "$wheel" ] && [ -f "$root/done" ]; then
    echo "$wheel"
    exit 0
fi
start=$(date +%s)
rm -rf "$root"
mkdir -p "$root"

# Build tools and the two codec libraries (their -dev packages; the runtime .so files are bundled by PyInstaller).
packages=(nasm pkg-config make gcc libc6-dev xz-utils libopus-dev libopencore-amrnb-dev)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
apt_opts=(-o DPkg::Lock::Timeout=600)
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || fail "missing ${missing[*]}: install them (apt-get install ${missing[*]})"
    log "installing ${missing[*]} with apt-get"
    apt-get "${apt_opts[@]}" update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y -qq "${missing[@]}" >/dev/null ||
        fail "apt-get install ${missing[*]} failed"
fi

# The source package, through a private apt source list (the system's has no deb-src lines; it is left alone).
log "FFmpeg source from Debian bookworm"
apt_dir=$root/apt
mkdir -p "$apt_dir/lists/partial" "$root/src"
printf '%s\n' "deb-src http://deb.debian.org/debian bookworm main" \
    "deb-src http://deb.debian.org/debian-security bookworm-security main" >"$apt_dir/sources.list"
src_opts=(-o Dir::Etc::SourceList="$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o Dir::State::Lists="$apt_dir/lists" -o APT::Sandbox::User=root)
apt-get "${src_opts[@]}" update -qq >/dev/null || fail "apt-get update of the deb-src list failed"
(cd "$root/src" && apt-get "${src_opts[@]}" source --download-only -qq ffmpeg >/dev/null) ||
    fail "apt-get source ffmpeg failed"
orig=$(ls "$root"/src/ffmpeg_5.1.*.orig.tar.xz 2>/dev/null | head -n1) || true
[ -n "$orig" ] || fail "Debian's ffmpeg source is not 5.1.x any more: $(ls "$root/src")"
tar -xf "$orig" -C "$root/src"
source_dir=$(ls -d "$root"/src/ffmpeg-5.1.*/ | head -n1)
basename "$orig" >"$root/source-version"

# What a crawler meets: audio containers, the containers of video files, raw audio streams.
demuxers="aac ac3 aiff amr amrnb amrwb ape asf asf_o au avi caf dts dtshd eac3 flac flv gsm loas live_flv \
matroska mlp mov mp3 mpc mpc8 mpegps mpegts nistsphere ogg rm sox spdif tak truehd tta voc w64 wav wsaud wv xwma \
pcm_* dsf iff ircam mmf oma qcp shorten smjpeg sol"
decoders="aac aac_fixed aac_latm ac3 ac3_fixed alac als amrwb ape atrac1 atrac3 atrac3p atrac9 cook dca \
dsd_* eac3 flac g722 g723_1 g726 g726le g729 gsm gsm_ms ilbc mlp mp1 mp1float mp2 mp2float mp3 mp3float mp3adu \
mp3adufloat mp3on4 mp3on4float mpc7 mpc8 nellymoser qcelp qdm2 ra_144 ra_288 ralf shorten sipr tak truehd tta \
vorbis wavpack wmalossless wmapro wmav1 wmav2 wmavoice pcm_* adpcm_* opus libopus libopencore_amrnb"
parsers="aac aac_latm ac3 amr cook dca flac gsm mlp mpegaudio opus sipr tak vorbis xma g723_1 g729"
flags=(--prefix="$prefix" --enable-shared --disable-static --enable-pic --disable-debug --disable-doc
       --disable-programs --disable-everything --disable-autodetect --disable-network --disable-iconv
       --enable-version3 --enable-libopus --enable-libopencore-amrnb
       --enable-avcodec --enable-avformat --enable-avutil --enable-swresample
       --enable-avdevice --enable-avfilter --enable-swscale  # PyAV 12 links all five; built empty
       --enable-protocol=file,pipe --enable-bsf=null)
for name in $demuxers; do flags+=(--enable-demuxer="$name"); done
for name in $decoders; do flags+=(--enable-decoder="$name"); done
for name in $parsers; do flags+=(--enable-parser="$name"); done

log "configuring and building FFmpeg ($(basename "$source_dir"))"
(cd "$source_dir" && ./configure "${flags[@]}" >"$root/configure.log" 2>&1) ||
    { tail -20 "$root/configure.log" >&2; fail "FFmpeg configure failed (log: $root/configure.log)"; }
grep -q "^License: LGPL version 3 or later" "$root/configure.log" || fail "FFmpeg is not configured LGPL-only"
(cd "$source_dir" && make -j"$(nproc)" >"$root/make.log" 2>&1 && make install >>"$root/make.log" 2>&1) ||
    { tail -20 "$root/make.log" >&2; fail "FFmpeg build failed (log: $root/make.log)"; }
strip --strip-unneeded "$prefix"/lib/lib*.so.*.*

log "building PyAV $PYAV_VERSION against it"
# rpath: the extension modules find these libraries wherever the wheel is installed on this machine; the frozen
# binary bundles them beside the rest. -g0: no debug info in the extension modules. --no-cache-dir: pip's cache
# would hand back a PyAV wheel built earlier against another build's libraries (another rpath, other decoders).
PKG_CONFIG_PATH="$prefix/lib/pkgconfig" CFLAGS="-g0" LDFLAGS="-Wl,-rpath,$prefix/lib" \
    "$python" -m pip wheel --quiet --disable-pip-version-check --no-cache-dir --no-deps --no-binary av \
    "av==$PYAV_VERSION" -w "$root/wheel" >"$root/pyav.log" 2>&1 ||
    { tail -20 "$root/pyav.log" >&2; fail "PyAV build failed (log: $root/pyav.log)"; }
rm -rf "$root/src"  # 100 MB of objects; the logs and the prefix stay
touch "$root/done"
log "built in $(( $(date +%s) - start )) s"
ls "$root"/wheel/av-"$PYAV_VERSION"-*.whl
