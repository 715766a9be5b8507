"""An image's apt sources and keys, as Ubuntu's, Debian's and NVIDIA's images write them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from buildsys.ecosystems.apt_image_sources import ImageSourcesError, read_sources
from buildsys.ecosystems.registry_apt import ImageRelease, image_resolver

UBUNTU_2204 = b"""\
# See http://help.ubuntu.com/community/UpgradeNotes for how to upgrade to
deb http://archive.ubuntu.com/ubuntu/ jammy main restricted
# deb-src http://archive.ubuntu.com/ubuntu/ jammy main restricted
deb http://archive.ubuntu.com/ubuntu/ jammy-updates main restricted universe
deb-src http://archive.ubuntu.com/ubuntu/ jammy-updates main restricted
deb http://security.ubuntu.com/ubuntu/ jammy-security main restricted universe
"""
CUDA_LIST = (b"deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] "
             b"https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64/ /\n")
UBUNTU_2404 = b"""\
Types: deb
URIs: http://archive.ubuntu.com/ubuntu/
Suites: noble noble-updates noble-backports
Components: main restricted universe multiverse
Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg

Types: deb-src
URIs: http://archive.ubuntu.com/ubuntu/
Suites: noble
Components: main

Types: deb
URIs: http://security.ubuntu.com/ubuntu/
Suites: noble-security
Components: main restricted universe multiverse
Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg

Enabled: no
Types: deb
URIs: http://archive.ubuntu.com/ubuntu/
Suites: noble-proposed
Components: main
Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg
"""


def image(files: dict[str, bytes]):
    def read(path: str) -> bytes | None:
        return files.get(path)

    def children(folder: str) -> Iterable[str]:
        return {p[len(folder) + 1:].split("/", 1)[0] for p in files if p.startswith(folder + "/")}

    return read, children


def test_ubuntu_22_04_with_nvidia_s_flat_repository(tmp_path: Path) -> None:
    read, children = image({
        "etc/apt/sources.list": UBUNTU_2204,
        "etc/apt/sources.list.d/cuda-ubuntu2204-x86_64.list": CUDA_LIST,
        "etc/apt/trusted.gpg.d/ubuntu-keyring-2018-archive.gpg": b"UBUNTU KEY",
        "etc/apt/trusted.gpg.d/ubuntu-keyring-2012-cdimage.gpg": b"CDIMAGE KEY",
        "usr/share/keyrings/cuda-archive-keyring.gpg": b"NVIDIA KEY",
    })
    sources = read_sources(read, children)
    assert [(s.uri, s.suite, s.components) for s in sources] == [
        ("http://archive.ubuntu.com/ubuntu", "jammy", ("main", "restricted")),
        ("http://archive.ubuntu.com/ubuntu", "jammy-updates", ("main", "restricted", "universe")),
        ("http://security.ubuntu.com/ubuntu", "jammy-security", ("main", "restricted", "universe")),
        ("https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64/", "/", ()),
    ]
    ubuntu, cuda = sources[0], sources[3]
    # without signed-by: every key of trusted.gpg.d, by name
    assert ubuntu.key_names == ("etc/apt/trusted.gpg.d/ubuntu-keyring-2012-cdimage.gpg",
                                "etc/apt/trusted.gpg.d/ubuntu-keyring-2018-archive.gpg")
    assert ubuntu.origin == "etc/apt/sources.list:2" and not ubuntu.flat
    assert cuda.flat and cuda.keys == (b"NVIDIA KEY",) and cuda.origin.endswith("cuda-ubuntu2204-x86_64.list:1")
    # the line apt is given for it: its own keyring, the flat "/" as apt also reads it
    resolver, n = image_resolver(tmp_path, "amd64", ImageRelease("jammy", "Ubuntu 22.04", b"", tuple(sources)), [])
    nvidia = resolver.third_party[-1]
    url = "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64"
    assert n == 3 and nvidia.line() == f"deb [signed-by={nvidia.keyring}] {url} ./\n"
    assert nvidia.keyring.read_bytes() == b"NVIDIA KEY"


def test_ubuntu_24_04_deb822_skips_sources_and_disabled_stanzas() -> None:
    read, children = image({
        "etc/apt/sources.list.d/ubuntu.sources": UBUNTU_2404,
        "usr/share/keyrings/ubuntu-archive-keyring.gpg": b"UBUNTU KEY",
    })
    sources = read_sources(read, children)
    assert [(s.uri, s.suite) for s in sources] == [
        ("http://archive.ubuntu.com/ubuntu", "noble"), ("http://archive.ubuntu.com/ubuntu", "noble-updates"),
        ("http://archive.ubuntu.com/ubuntu", "noble-backports"),
        ("http://security.ubuntu.com/ubuntu", "noble-security")]
    assert all(s.keys == (b"UBUNTU KEY",) and len(s.components) == 4 for s in sources)


def test_a_key_block_written_in_the_stanza() -> None:
    stanza = (b"Types: deb\nURIs: https://cloud.r-project.org/bin/linux/debian\nSuites: bookworm-cran40/\n"
              b"Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n mQINBF\n -----END PGP PUBLIC KEY BLOCK-----\n")
    read, children = image({"etc/apt/sources.list.d/cran.sources": stanza})
    (src,) = read_sources(read, children)
    assert src.flat and src.suite == "bookworm-cran40/"
    assert src.keys[0].startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQINBF\n")


@pytest.mark.parametrize(("files", "says"), [
    ({"etc/apt/sources.list": b"deb [trusted=yes] http://repo.example/ ./\n"},
     "etc/apt/sources.list:1: the source is marked trusted=yes"),
    ({"etc/apt/sources.list": b"deb [signed-by=/usr/share/keyrings/gone.gpg] http://repo.example/ stable main\n"},
     "signed-by names /usr/share/keyrings/gone.gpg, which the image does not have"),
    ({"etc/apt/sources.list": b"deb http://repo.example/ stable main\n"},
     "the image has no key to check it with"),
    ({"etc/apt/sources.list": b"deb [signed-by=ABCDEF0123] http://repo.example/ stable main\n"},
     "signed-by 'ABCDEF0123' is not a keyring path"),
    ({"etc/apt/sources.list": b"deb http://repo.example/\n"}, "names no suite"),
])
def test_sources_buildsys_cannot_lock_against_are_named(files: dict[str, bytes], says: str) -> None:
    read, children = image(files)
    with pytest.raises(ImageSourcesError) as e:
        read_sources(read, children)
    assert says in str(e.value)
