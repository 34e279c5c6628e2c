#!/usr/bin/env bash
# Portability proof for dist/audiotag (run as root, after scripts/build/build_binary.sh):
#
#     scripts/build/check_bullseye.sh
#
# 1. Debian 11 "bullseye" (glibc 2.31), a debootstrap minbase root in build/bullseye-root (made once, ~1 min):
#    the binary, copied in, passes --version and --self-check and tags every clip of $AUDIOTAG_SHARED/audio and audio/extra from an empty environment
#    with a fresh cache, and its --format json output must agree with `python -m audiotag` on this host, run in
#    the same empty environment (scripts/tools/compare_records.py: every field equal, scores within 1e-5).
# 2. An empty root (no libc, no shell, nothing but the binary, one clip and /proc): --version and one clip, same
#    tags as the package. This shows the binary never uses the server's C library, whatever its version. The
#    package's side runs under each OpenBLAS kernel setting CI hosts carry (none; OPENBLAS_CORETYPE=Haswell with
#    OPENBLAS_L2_SIZE=512, as on AMD EPYC hosts; Sandybridge, whose rounding differs on this kind of CPU): a
#    kernel moves scores by about 1e-6, which the comparison must tolerate and nothing else may cause.
# 3. The GLIBC_ symbol versions: the highest one any bundled file needs, and what the bundled libc provides.
#
# Mounts live in a private mount namespace (unshare -m), so nothing stays mounted when the script ends.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
shared=$(realpath "${AUDIOTAG_SHARED:-$repo/../shared}")
binary=$(realpath "${AUDIOTAG_BINARY:-dist/audiotag}")
root=$repo/build/bullseye-root
empty=$repo/build/empty-root
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
log() { printf '== %s\n' "$*" >&2; }
fail() { printf 'check_bullseye: FAIL: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "needs root (debootstrap, chroot, mount)"
[ -x "$binary" ] || fail "$binary missing: run scripts/build/build_binary.sh first"
if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    apt-get -o DPkg::Lock::Timeout=600 update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq debootstrap >/dev/null ||
        fail "apt-get install debootstrap failed"
fi

if [ ! -f "$root/.audiotag-ready" ]; then
    log "debootstrap --variant=minbase bullseye -> $root"
    rm -rf "$root" "$root.partial"
    t0=$(date +%s)
    debootstrap --variant=minbase bullseye "$root.partial" "$mirror" >"$repo/build/debootstrap.log" 2>&1 ||
        { tail -20 "$repo/build/debootstrap.log" >&2; fail "debootstrap failed (log: build/debootstrap.log)"; }
    touch "$root.partial/.audiotag-ready"
    mv "$root.partial" "$root"
    log "root made in $(( $(date +%s) - t0 )) s"
fi

# The clips and the binary go into the root; the package's answers are made here, on this host.
rm -rf "$root/data" "$root/opt/audiotag" "$root/var/cache/audiotag-check"
mkdir -p "$root/data" "$root/opt/audiotag"
cp -r "$shared/audio" "$root/data/audio"
cp "$binary" "$root/opt/audiotag/audiotag"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
agree() { "$repo/.venv/bin/python" "$repo/scripts/tools/compare_records.py" "$@"; }  # scores within 1e-5, all else equal

in_root() {  # run a shell command inside the bullseye root, from an empty environment
    unshare -m sh -c 'mount -t proc proc "$0/proc" && mount --bind /dev "$0/dev" &&
                      exec env -i PATH=/usr/bin:/bin HOME=/root AUDIOTAG_CACHE_DIR=/var/cache/audiotag-check \
                      /usr/sbin/chroot "$0" /bin/sh -c "$1"' "$root" "$1"
}

glibc=$(in_root 'ldd --version | head -1')
log "inside the root: $glibc"
case "$glibc" in *2.31*) ;; *) fail "expected glibc 2.31 in the bullseye root, found: $glibc" ;; esac

log "--version and --self-check in bullseye"
in_root '/opt/audiotag/audiotag --version && /opt/audiotag/audiotag --self-check' >&2 ||
    fail "--version or --self-check failed in bullseye"

compared=0
for sub in . extra; do
    clips=$(cd "$shared/audio/$sub" && ls | grep -Ei '\.(wav|flac|ogg|mp3)$' | sort | tr '\n' ' ')
    [ -n "$clips" ] || fail "no clips in $shared/audio/$sub"
    log "tagging $(echo $clips | wc -w) clips of audio/$sub: package on this host, binary in bullseye"
    (cd "$shared/audio/$sub" && env -i PATH=/usr/bin:/bin "$repo/.venv/bin/python" -m audiotag --format json $clips \
        >"$work/package.jsonl")
    in_root "cd /data/audio/$sub && /opt/audiotag/audiotag --format json $clips" >"$work/binary.jsonl"
    agree "$work/package.jsonl" "$work/binary.jsonl" || fail "binary JSON in bullseye differs from the package's for audio/$sub"
    compared=$(( compared + $(wc -l <"$work/package.jsonl") ))
done
log "bullseye: $compared clips, same JSON as python -m audiotag"

log "empty root (no libc at all): $empty"
rm -rf "$empty"
mkdir -p "$empty/proc" "$empty/dev" "$empty/cache" "$empty/data"
cp "$binary" "$empty/audiotag"
cp "$shared/audio/speech.wav" "$empty/data/"
unshare -m sh -c 'mount -t proc proc "$0/proc" &&
    env -i AUDIOTAG_CACHE_DIR=/cache /usr/sbin/chroot "$0" /audiotag --version &&
    env -i AUDIOTAG_CACHE_DIR=/cache /usr/sbin/chroot "$0" /audiotag --format json /data/speech.wav' "$empty" \
    >"$work/empty.out" 2>"$work/empty.err" || { cat "$work/empty.err" >&2; fail "the binary does not run in an empty root"; }
head -1 "$work/empty.out" >&2
tail -1 "$work/empty.out" >"$work/empty.jsonl"
for blas in "" "OPENBLAS_CORETYPE=Haswell OPENBLAS_L2_SIZE=512" "OPENBLAS_CORETYPE=Sandybridge"; do
    # shellcheck disable=SC2086  # $blas is zero or more NAME=VALUE words
    (cd "$shared/audio" && env -i PATH=/usr/bin:/bin $blas "$repo/.venv/bin/python" -m audiotag --format json speech.wav \
        2>/dev/null) >"$work/expected.jsonl"
    agree "$work/expected.jsonl" "$work/empty.jsonl" --ignore-path ||
        fail "empty root: tags differ from the package's (package run with: ${blas:-no OpenBLAS setting})"
    log "empty root vs package (${blas:-no OpenBLAS setting}): agree"
done
log "empty root: runs, same tags as the package"

log "GLIBC_ symbol versions (from the unpacked bundle in the bullseye root's cache)"
bundle=$(ls -d "$root"/var/cache/audiotag-check/*/ | head -1)
glibc_files='^(ld-linux-x86-64\.so\.2|libc\.so\.6|libm\.so\.6|libmvec\.so\.1|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1|libutil\.so\.1)$'
while IFS= read -r -d '' f; do
    name=$(basename "$f")
    [[ "$name" =~ $glibc_files ]] && continue
    file -b "$f" | grep -q '^ELF' || continue
    v=$(objdump -T "$f" 2>/dev/null | grep -oE '\(GLIBC_[0-9.]+\)' | tr -d '()' | sort -uV | tail -1 || true)
    if [ -n "$v" ]; then printf '%s %s\n' "$v" "${f#$bundle}"; fi
done < <(find "$bundle" -type f -print0) | sort -V >"$work/needs.txt"
tail -8 "$work/needs.txt" | sed 's/^/   needs /' >&2
highest=$(tail -1 "$work/needs.txt" | cut -d' ' -f1)
provided=$(objdump -T "$bundle/_internal/libc.so.6" | grep -oE 'GLIBC_2\.[0-9]+' | sort -uV | tail -1)
launcher=$(file -b "$binary" | grep -o 'statically linked' || echo 'DYNAMIC')
printf 'highest GLIBC_ needed by a bundled file: %s; provided by the bundled libc: up to %s; launcher: %s\n' \
    "$highest" "$provided" "$launcher"
[ "$launcher" = "statically linked" ] || fail "the launcher must be statically linked"
printf 'floor: none on the server'"'"'s glibc (the bundle brings glibc %s); kernel: %s\n' "${provided#GLIBC_}" \
    "$(file -b "$bundle/_internal/libc.so.6" | grep -oE 'for GNU/Linux [0-9.]+' || echo '?')"
log "check_bullseye: OK"
