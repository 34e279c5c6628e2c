#!/usr/bin/env bash
# Build the single-file binary dist/audiotag from a checkout (clean or not), in one command:
#
#     scripts/build/build_binary.sh
#
# 1. scripts/build/setup.sh when the checkout is not set up yet (.venv, frontend arrays, the exported model), then the
#    pinned build tools (requirements-build.txt) into .venv.
# 2. The C tools the launcher needs (gcc, static libzstd, the zstd command), from apt when missing (needs root).
# 3. PyInstaller with build.spec -> dist/audiotag-onedir/ (slim one-folder build, glibc and loader included).
# 4. scripts/build/launcher.c -> a static launcher; scripts/build/pack_binary.py appends the compressed folder to it
#    -> dist/audiotag.
# 5. A smoke run of dist/audiotag --version in an empty environment, with a throw-away cache folder.
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf '== %s\n' "$*" >&2; }
start=$(date +%s)

if [ ! -x .venv/bin/python ] || [ ! -f audiotag/assets/mn04_as.onnx ] || [ ! -f audiotag/assets/mel_filterbank.npy ]; then
    log "setting up the checkout (scripts/build/setup.sh)"
    AUDIOTAG_ASSETS_DIR="${AUDIOTAG_ASSETS_DIR:-../shared/upstream}" scripts/build/setup.sh
fi
log "build tools (requirements-build.txt)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -r requirements-build.txt

missing=()
command -v gcc >/dev/null || missing+=(gcc libc6-dev)
command -v zstd >/dev/null || missing+=(zstd)
[ -f /usr/include/zstd.h ] && [ -n "$(gcc -print-file-name=libzstd.a | grep /)" ] || missing+=(libzstd-dev)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} with apt-get"
    if [ "$(id -u)" != 0 ]; then
        echo "build_binary.sh: missing ${missing[*]}: install them (apt-get install ${missing[*]})" >&2
        exit 1
    fi
    apt-get -o DPkg::Lock::Timeout=600 update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >/dev/null ||
        { echo "build_binary.sh: apt-get install ${missing[*]} failed" >&2; exit 1; }
fi

log "PyInstaller (build.spec) -> dist/audiotag-onedir"
rm -rf dist/audiotag-onedir
# The slim FFmpeg's libraries (scripts/build/build_ffmpeg.sh) find each other there, not in the system's folders: a
# Debian ffmpeg installed on the build host (the tests' fixture maker) would otherwise be bundled, 60 MB of it.
ffmpeg_lib=$(.venv/bin/python -c 'import av, os, pathlib, re, subprocess
core = next(pathlib.Path(av.__file__).parent.glob("_core*.so"))
out = subprocess.run(["ldd", str(core)], capture_output=True, text=True).stdout
print(os.path.dirname(re.search(r"libavcodec\S* => (\S+)", out).group(1)))') ||
    { echo "build_binary.sh: PyAV is not installed in .venv (run scripts/build/setup.sh)" >&2; exit 1; }
LD_LIBRARY_PATH="$ffmpeg_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
.venv/bin/python -m PyInstaller --noconfirm --clean --log-level WARN --distpath dist --workpath build/pyinstaller build.spec

log "launcher (scripts/build/launcher.c)"
gcc -static -O2 -s -Wall -Wextra -Werror -o build/launcher scripts/build/launcher.c -l:libzstd.a

log "packing -> dist/audiotag"
.venv/bin/python scripts/build/pack_binary.py build/launcher dist/audiotag-onedir dist/audiotag

log "smoke run: env -i dist/audiotag --version"
cache=$(mktemp -d)
trap 'rm -rf "$cache"' EXIT
env -i AUDIOTAG_CACHE_DIR="$cache" dist/audiotag --version
log "built dist/audiotag in $(( $(date +%s) - start )) s"
