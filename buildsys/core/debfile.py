"""One file out of a .deb's data, read without dpkg: the ar archive, then its data.tar streamed.

A .deb is an ``ar`` archive of ``debian-binary``, ``control.tar.*`` and
``data.tar`` (uncompressed, or gz, xz, bz2 or zstd: Ubuntu's are zstd); the
data tarball is read as a stream until the file is found, so nothing is
unpacked to disk.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import IO

_MAGIC = b"!<arch>\n"
_HEADER = 60


class NotADeb(ValueError):
    """The file is not a .deb this reader understands."""


def _data_member(f: IO[bytes], path: Path) -> tuple[str, int]:
    """Leave ``f`` at the start of the data tarball; return its member name and size."""
    if f.read(len(_MAGIC)) != _MAGIC:
        raise NotADeb(f"{path}: not an ar archive")
    while header := f.read(_HEADER):
        if len(header) < _HEADER:
            break
        name, size = header[:16].decode("ascii", "replace").strip().rstrip("/"), int(header[48:58].strip() or 0)
        if name.startswith("data.tar"):
            return name, size
        f.seek(size + size % 2, 1)
    raise NotADeb(f"{path}: no data.tar member")


def read_file(path: Path, wanted: str, cap: int = 1 << 20) -> bytes | None:
    """The bytes of the regular file ``wanted`` (``usr/share/doc/PKG/copyright``) in the .deb's data, or None
    when it has none (or it is a link, or over ``cap`` bytes)."""
    wanted = wanted.lstrip("./")
    with open(path, "rb") as f:
        name, _ = _data_member(f, path)
        stream: IO[bytes] = f
        if name.endswith(".zst"):
            import zstandard

            stream = zstandard.ZstdDecompressor().stream_reader(f)
        mode = "r|" if name.endswith((".zst", ".tar")) else "r|*"
        try:
            with tarfile.open(fileobj=stream, mode=mode) as tf:  # type: ignore[call-overload]
                for member in tf:
                    if member.name.lstrip("./") != wanted:
                        continue
                    if not member.isfile() or member.size > cap:
                        return None
                    data = tf.extractfile(member)
                    return data.read() if data else None
        except (tarfile.TarError, EOFError, OSError) as e:
            raise NotADeb(f"{path}: its {name} does not read: {e}") from e
    return None
