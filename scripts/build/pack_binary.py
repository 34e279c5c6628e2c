"""Pack the one-folder build behind the launcher into one file (called by scripts/build/build_binary.sh).

    python scripts/build/pack_binary.py LAUNCHER ONEDIR OUTPUT

OUTPUT = LAUNCHER bytes + zstd(ustar of ONEDIR) + a trailer the launcher reads (layout: scripts/build/launcher.c,
``struct trailer``). The archive is reproducible: entries sorted, owner 0, fixed mtime. The cache folder name
is "<audiotag version>-<first 16 hex of the payload's sha256>", so a rebuilt binary never reuses an older
unpacked copy.
"""

import hashlib
import io
import os
import re
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

MAGIC = b"AUDIOTAG-SFX-v1"
TRAILER = struct.Struct("<16sQQ64s")
ZSTD_LEVEL = "-19"  # default window (8 MB): the launcher unpacks in a few MB of memory
REPO = Path(__file__).resolve().parent.parent.parent


def version() -> str:
    text = (REPO / "audiotag" / "__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


def ustar(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        paths = sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix())
        for path in paths:
            info = tar.gettarinfo(str(path), arcname=path.relative_to(folder).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            if info.isreg():
                with open(path, "rb") as data:
                    tar.addfile(info, data)
            elif info.isdir() or info.issym():
                tar.addfile(info)
            else:
                raise SystemExit(f"pack_binary: unsupported file type: {path}")
    return buffer.getvalue()


def main(launcher: str, onedir: str, output: str) -> None:
    archive = ustar(Path(onedir))
    payload = subprocess.run(["zstd", ZSTD_LEVEL, "-T0", "-q", "-c"], input=archive, check=True,
                             capture_output=True).stdout
    ident = f"{version()}-{hashlib.sha256(payload).hexdigest()[:16]}".encode()
    head = Path(launcher).read_bytes()
    trailer = TRAILER.pack(MAGIC, len(head), len(payload), ident)
    tmp = Path(output + ".tmp")
    with open(tmp, "wb") as out:
        out.write(head + payload + trailer)
    os.chmod(tmp, 0o755)
    tmp.replace(output)
    print(f"{output}: {Path(output).stat().st_size / 1e6:.1f} MB (launcher {len(head) / 1e3:.0f} kB, "
          f"payload {len(payload) / 1e6:.1f} MB from {len(archive) / 1e6:.1f} MB), cache id {ident.decode()}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
