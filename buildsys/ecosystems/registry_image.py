"""Lock a registry root: ``[base] image = "HOST/REPO:TAG"`` pinned to a manifest and its blobs.

At lock time the reference is resolved once, through ``registry.Registry``
(docker's credentials, Basic and Bearer auth, retries): a tag (or a digest)
gives a manifest or an index; from an index the entry of the recipe's
platform (``linux/amd64`` unless ``[base] platform`` says another) is taken.
The lock records the manifest's digest, the config's digest and every layer
blob's digest, size and media type. ``fetch`` vendors all of them by sha256
(the manifest and config bytes too), so a build never asks the registry
again: a tag that is moved or deleted upstream (NVIDIA deletes old ones)
changes nothing for a lock.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from packageurl import PackageURL

from buildsys.core import names, net
from buildsys.core.errors import LockError, UsageError
from buildsys.core.store import Artifact
from buildsys.ecosystems.base import Component, Ecosystem, LockContext, Pin
from buildsys.model.lockfile import Lock, LockSection
from buildsys.model.lockschema import (
    DIGEST,
    IMAGE_LAYER,
    IMAGE_MANIFEST_TYPES,
    LAYER_MEDIA_TYPES,
    Check,
    LockValidator,
    Schema,
    matching,
    one_of,
    whole_number,
)
from buildsys.model.recipe import KeyPath, Recipe, RecipeSection, RecipeValidator
from buildsys.oci.registry import (
    NotInRegistry,
    Reference,
    Registry,
    RegistryError,
    RegistryUnavailable,
    parse_config,
    parse_index,
    parse_manifest,
)

INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
# The scheme of the vendor store's URLs for registry blobs: ``fetch`` hands them to ``BlobDownloads``.
SCHEME = "oci-registry"


# HOST[:PORT]/REPO[:TAG][@sha256:HEX], with the repository and tag rules registry.Reference checks.
IMAGE_REF = re.compile(rf"[A-Za-z0-9.-]+(:[0-9]+)?/{names.IMAGE_REPOSITORY.pattern}"
                       rf"(:{names.IMAGE_TAG.pattern})?(@{names.DIGEST.pattern})?")
_IMAGE_REF = matching(IMAGE_REF, "an image reference HOST/REPO[:TAG][@sha256:DIGEST]")


def _ref(v: Any) -> str | None:
    err = _IMAGE_REF(v)
    if err is None and ("." not in v.split("/", 1)[0] and ":" not in v.split("/", 1)[0]
                        and v.split("/", 1)[0] != "localhost"):
        return f"{v!r} does not name a registry host"
    return err


IMAGE: Schema = {
    "reference": (_ref, True),
    "platform": (matching(names.PLATFORM, "OS/ARCH[/VARIANT]"), True),
    "manifest-digest": (DIGEST, True),
    "manifest-media-type": (one_of(IMAGE_MANIFEST_TYPES, "an image manifest media type"), True),
    "manifest-size": (whole_number, True),
    "config-digest": (DIGEST, True),
    "config-size": (whole_number, True),
    "layers": (None, True),
}


@dataclass(frozen=True)
class ImageBase(RecipeSection):
    """``[base] image = "HOST/REPO[:TAG][@sha256:...]"``: a root from a registry image, pinned by ``lock``."""

    image: str
    platform: str = "linux/amd64"  # the entry taken from a multi-platform index

    KEY = "image"
    ROOT = True
    SCHEMA = "str"
    EXTRA = {"platform": "str"}
    EXAMPLE = 'image = "docker.io/library/debian:bookworm"'

    @classmethod
    def parse(cls, v: RecipeValidator, value: Any, key: KeyPath) -> Self:
        ref = value[cls.KEY]
        if not ref or any(c.isspace() for c in ref):
            raise v.fail((*key, cls.KEY), f"'{ref}' is not an image reference", hint=f"e.g. {cls.EXAMPLE}")
        platform = value.get("platform", "linux/amd64")
        if not names.PLATFORM.fullmatch(platform):
            raise v.fail((*key, "platform"), f"'{platform}' is not OS/ARCH[/VARIANT]",
                         hint='e.g. platform = "linux/arm64"')
        return cls(ref, platform)


@dataclass(frozen=True)
class LockedLayer:
    """One layer blob of a registry base, as the registry stores it (compressed)."""

    digest: str  # sha256:... of the blob's bytes
    size: int
    media_type: str

    def to_toml(self) -> dict[str, Any]:
        return {"digest": self.digest, "media-type": self.media_type, "size": self.size}

    @classmethod
    def from_toml(cls, d: Mapping[str, Any]) -> LockedLayer:
        return cls(digest=d["digest"], size=int(d["size"]), media_type=d["media-type"])


@dataclass(frozen=True)
class ImageBaseLock(LockSection):
    """``[base.image]``: a registry image pinned to its manifest, config and every layer blob.

    Everything ``build`` needs is in the vendor store after ``fetch`` (the manifest
    and config bytes too), so the registry may forget the tag, or be gone.
    """

    reference: str  # as the recipe wrote it
    platform: str
    manifest_digest: str
    manifest_media_type: str
    manifest_size: int
    config_digest: str
    config_size: int
    layers: tuple[LockedLayer, ...]

    KEYS: ClassVar[Mapping[str, Check | None]] = {"base": None}  # shared with a Debian root's [base]

    def write(self) -> dict[str, Any]:
        return {"base": {"image": {
            "config-digest": self.config_digest, "config-size": self.config_size,
            "layers": [la.to_toml() for la in self.layers],  # bottom first: their order is the image
            "manifest-digest": self.manifest_digest, "manifest-media-type": self.manifest_media_type,
            "manifest-size": self.manifest_size, "platform": self.platform, "reference": self.reference}}}

    @classmethod
    def present(cls, d: Mapping[str, Any]) -> bool:
        """A ``[base]`` with ``image`` in it (a Debian root's ``[base]`` has none)."""
        return isinstance(d.get("base"), dict) and "image" in d["base"]

    @classmethod
    def validate(cls, v: LockValidator, d: Mapping[str, Any]) -> None:
        """``[base.image]`` of a registry root: the manifest and config pinned, and at least one layer."""
        base = d["base"]
        v.table(base, {"image": (None, True)}, "[base]")
        v.table(base["image"], IMAGE, "[base.image]")
        layers = v.entries(base["image"]["layers"], "[[base.image.layers]]")
        if not layers:
            raise v.fail("[base.image]", "layers", "no layer is locked")
        for i, la in enumerate(layers):
            v.table(la, IMAGE_LAYER, f"[[base.image.layers]] #{i + 1}")

    @classmethod
    def read(cls, d: Mapping[str, Any]) -> Self:
        b = d["base"]["image"]
        return cls(reference=b["reference"], platform=b["platform"], manifest_digest=b["manifest-digest"],
                   manifest_media_type=b["manifest-media-type"], manifest_size=int(b["manifest-size"]),
                   config_digest=b["config-digest"], config_size=int(b["config-size"]),
                   layers=tuple(LockedLayer.from_toml(la) for la in b.get("layers", [])))


def blob_url(reference: str, kind: str, digest: str) -> str:
    """``oci-registry://HOST/REPO/{blobs|manifests}/DIGEST``: where ``fetch`` finds one pinned blob."""
    ref = Reference.parse(reference)
    return f"{SCHEME}://{ref.host}/{ref.repository}/{kind}/{digest}"


def parse_blob_url(url: str) -> tuple[str, str]:
    """(registry host, API path /v2/REPO/KIND/DIGEST) of a ``blob_url``."""
    rest = url.removeprefix(f"{SCHEME}://")
    host, _, path = rest.partition("/")
    return host, f"/v2/{path}"


def lock_image_root(recipe: Recipe, registry: Registry | None = None) -> tuple[ImageBaseLock, int]:
    """Resolve the recipe's image; return the ``[base.image]`` table and its epoch.

    The epoch is the image config's ``created`` time (the newest thing in the
    image, as its publisher stamped it), read from the pinned config: never the
    wall clock.
    """
    base = recipe.base
    assert isinstance(base, ImageBase)
    try:
        ref = Reference.parse(base.image)
    except UsageError as e:  # said again with the recipe's name
        raise LockError(f"{recipe.path}: base.image: {e}",
                        "write HOST[:PORT]/REPO[:TAG] or HOST/REPO@sha256:..., e.g. nvcr.io/nvidia/cuda:12.4.1-base"
                        ) from e
    reg = registry or Registry(ref.host)
    where = f"{recipe.path}: base.image {base.image}"
    try:
        data, media, digest = reg.get_manifest(ref.repository, ref.digest or ref.tag or "latest")
        document = f"manifest {ref.digest or ref.tag or 'latest'} of {ref.repository}"
        if media in INDEX_TYPES or json.loads(data).get("manifests") is not None:
            entry = _platform_entry(parse_index(ref.host, document, data), base.platform, where)
            data, media, digest = reg.get_manifest(ref.repository, entry)
            document = f"manifest {entry} of {ref.repository}"
        manifest = _manifest(parse_manifest(ref.host, document, data), media, where)
        config_desc = manifest["config"]
        config = reg.get_blob_bytes(ref.repository, config_desc["digest"], config_desc["size"])
        cfg = parse_config(ref.host, f"config {config_desc['digest']} of {ref.repository}", config)
    except NotInRegistry as e:
        raise LockError(f"{where}: {e.message}",
                        f"check the name and tag on {ref.host} (a tag deleted upstream is gone for good: pin "
                        "another one, or a digest)") from e
    except RegistryUnavailable as e:  # its own hint speaks of publishing
        raise LockError(f"{where}: {e.message}",
                        f"check that {ref.host} answers (curl {reg.base}/v2/), then lock again; nothing was "
                        "written") from e
    except RegistryError as e:
        raise LockError(f"{where}: {e.message}", e.hint) from e
    platform = f"{cfg.get('os')}/{cfg.get('architecture')}" + (f"/{cfg['variant']}" if cfg.get("variant") else "")
    if platform.split("/")[:2] != base.platform.split("/")[:2]:
        raise LockError(f"{where}: the image is for {platform}, the recipe asks for {base.platform}",
                        'set [base] platform = "..." to the image\'s, or pick an image (or index) for it')
    diff_ids = (cfg.get("rootfs") or {}).get("diff_ids") or []
    layers = []
    for i, la in enumerate(manifest["layers"]):
        mt = la.get("mediaType", "")
        if mt not in LAYER_MEDIA_TYPES:
            raise LockError(f"{where}: layer {i + 1} has media type {mt!r}, which buildsys cannot unpack",
                            f"supported: {', '.join(sorted(LAYER_MEDIA_TYPES))}")
        layers.append(LockedLayer(digest=la["digest"], size=int(la["size"]), media_type=mt))
    if len(diff_ids) != len(layers):
        raise LockError(f"{where}: the config lists {len(diff_ids)} diff_ids for {len(layers)} layers",
                        "the image is damaged; pick another")
    if not layers:
        raise LockError(f"{where}: the image has no layer")
    table = ImageBaseLock(reference=base.image, platform=base.platform, manifest_digest=digest,
                          manifest_media_type=media, manifest_size=len(data),
                          config_digest=config_desc["digest"], config_size=len(config), layers=tuple(layers))
    return table, created_epoch(cfg)


def created_epoch(config: dict[str, Any]) -> int:
    """The config's ``created`` (RFC 3339) in seconds; 0 when it has none (some tools leave it out)."""
    created = config.get("created")
    if not isinstance(created, str) or len(created) < 19:
        return 0
    try:
        return calendar.timegm(time.strptime(created[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return 0


def _platform_entry(index: dict[str, Any], platform: str, where: str) -> str:
    """The digest of the index's image for ``platform``; when none fits, say why each near one did not."""
    want = platform.split("/")
    found = []
    for m in index["manifests"]:
        p = m.get("platform") or {}
        have = [str(p.get("os", "")), str(p.get("architecture", ""))]
        have += [str(p["variant"])] if p.get("variant") else []
        name = "/".join(have)
        if have[:2] != want[:2]:
            found.append(name)
        elif len(want) > 2 and have[2:] != want[2:]:
            found.append(f"{name} (variant {'/'.join(have[2:]) or 'none'}, not {want[2]})")
        elif m.get("mediaType") not in (*IMAGE_MANIFEST_TYPES, None):
            found.append(f"{name} (a {m['mediaType']}, not an image manifest buildsys reads)")
        else:
            return str(m["digest"])
    raise LockError(f"{where}: the index has no {platform} entry (it has: {'; '.join(found) or 'none'})",
                    'pick an image built for it, or set [base] platform = "..." to one of those')


def _manifest(manifest: dict[str, Any], media: str, where: str) -> dict[str, Any]:
    media = media or manifest.get("mediaType", "")
    if media not in IMAGE_MANIFEST_TYPES:
        raise LockError(f"{where}: the registry answered a {media or 'untyped'} document, not an image manifest",
                        "point base.image at an image (or an index of images)")
    return manifest


class BlobDownloads:
    """``fetch``'s registry clients of one run, one per registry and repository, shared by its threads.

    One client per repository, not per blob: its token (scoped to the repository, as a Bearer
    realm grants it) and its connections serve every blob of an image, where a client per blob
    asked the token service once per blob. The credential and origin rules are the client's own
    (``oci/registry.py``), so docker's credentials and a Bearer realm work as they do for
    ``publish``; the clients are closed when the run ends.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, str], Registry] = {}

    def _client(self, host: str, repository: str) -> Registry:
        with self._lock:
            reg = self._clients.get((host, repository))
            if reg is None:
                reg = self._clients[(host, repository)] = Registry(host)
            return reg

    def download(self, url: str, fd: int, have: int, size: int | None) -> int:
        """Append the blob at ``url`` (``blob_url``) to ``fd`` from byte ``have`` on (by Range); its bytes.

        Reading stops one byte past the locked ``size`` (``net.TooLarge``); the caller hashes the file. What
        the registry refused or failed, its client's retries spent, is a ``net.NetError`` that is not transient
        and says what the registry said (``fetch`` tries the artifact's next URL).
        """
        host, path = parse_blob_url(url)
        repository, kind, digest = path.removeprefix("/v2/").rsplit("/", 2)
        headers = {"Accept": ", ".join(IMAGE_MANIFEST_TYPES)} if kind == "manifests" else {}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            with self._client(host, repository).request("GET", path, headers=headers, ok=(200, 206),
                                                        what=digest) as resp:
                if resp.status_code == 200 and have:  # the registry ignored Range: from the start
                    os.ftruncate(fd, 0)
                    have = 0
                os.lseek(fd, have, os.SEEK_SET)
                return resp.stream(lambda chunk: os.write(fd, chunk), None if size is None else size - have,
                                   f"blob {digest}")
        except RegistryError as e:
            raise net.NetError(url, e.message, e.hint) from e

    def close(self) -> None:
        with self._lock:
            for reg in self._clients.values():
                reg.client.close()
            self._clients.clear()


def blob_artifacts(pinned: ImageBaseLock) -> list[Artifact]:
    """The manifest, the config and every layer blob, each by its sha256."""
    name = pinned.reference
    # local=True: the registry is the one the recipe names (the freshness check holds the lock to it).
    arts = [Artifact(kind="image", name=name, version="manifest", filename="manifest.json",
                     sha256=pinned.manifest_digest.split(":", 1)[1], size=pinned.manifest_size,
                     urls=(blob_url(pinned.reference, "manifests", pinned.manifest_digest),), local=True),
            Artifact(kind="image", name=name, version="config", filename="config.json",
                     sha256=pinned.config_digest.split(":", 1)[1], size=pinned.config_size,
                     urls=(blob_url(pinned.reference, "blobs", pinned.config_digest),), local=True)]
    arts += [Artifact(kind="image", name=name, version=f"layer {i + 1}",
                      filename=layer.digest.split(":", 1)[1] + ".blob",
                      sha256=layer.digest.split(":", 1)[1], size=layer.size,
                      urls=(blob_url(pinned.reference, "blobs", layer.digest),), local=True)
             for i, layer in enumerate(pinned.layers)]
    return arts


class RegistryImage(Ecosystem):
    """A root taken as it is from a registry: ``[base] image = "HOST/REPO:TAG"``, pinned to its blobs."""

    name = "image"
    recipe_section = ImageBase
    lock_section = ImageBaseLock
    url_scheme = SCHEME  # the blobs, through the registry client (docker's credentials, Bearer auth)

    def downloads(self) -> BlobDownloads:
        return BlobDownloads()

    def prepare(self, ctx: LockContext) -> None:
        recipe = ctx.recipe
        if not (recipe.is_root and isinstance(recipe.base, ImageBase)):
            return
        # What the recipe installs (each ecosystem's part that asks for something) and its run steps.
        steps = [*(part.KEY for part in recipe.sections if part.count()), *(["run"] if recipe.run else [])]
        if steps:
            raise LockError(f"{recipe.path}: a root on a registry image takes the image as it is; "
                            f"it cannot have {', '.join(steps)}",
                            f"move them to a child recipe with parents = [\"{recipe.name}\"]")

    def lock(self, ctx: LockContext, lock: Lock) -> Lock:
        recipe = ctx.recipe
        if not (recipe.is_root and isinstance(recipe.base, ImageBase)):
            return lock
        ctx.progress(f"base: resolving {recipe.base.image} ({recipe.base.platform})")
        pinned, epoch = lock_image_root(recipe)
        return lock.with_sections(pinned, epoch=epoch)

    def artifacts(self, lock: Lock) -> list[Artifact]:
        pinned = lock.get(ImageBaseLock)
        return blob_artifacts(pinned) if pinned else []

    def covers(self, recipe: Recipe, lock: Lock, above: Sequence[Lock]) -> list[str]:
        pinned = lock.get(ImageBaseLock)
        if isinstance(recipe.base, ImageBase):
            if pinned is None:
                return [f"[base] is not the registry image {recipe.base.image}"]
            if (pinned.reference, pinned.platform) != (recipe.base.image, recipe.base.platform):
                return [f"[base.image] pins {pinned.reference} ({pinned.platform}), the recipe asks for "
                        f"{recipe.base.image} ({recipe.base.platform})"]
        elif pinned is not None:
            return [f"[base.image] pins {pinned.reference}, the recipe's base is not an image"]
        return []

    def components(self, lock: Lock) -> list[Component]:
        """The image itself, pinned by its manifest digest (what it installed itself is not listed)."""
        b = lock.get(ImageBaseLock)
        if b is None:
            return []
        ref = Reference.parse(b.reference)
        purl = PackageURL("oci", None, ref.repository.rsplit("/", 1)[-1], b.manifest_digest,
                          {"repository_url": f"{ref.host}/{ref.repository}", "arch": b.platform.split("/")[1],
                           **({"tag": ref.tag} if ref.tag else {})})
        # No download URL: the purl's repository_url says where it is (an API path is not one SPDX takes).
        return [Component("image", b.reference, b.manifest_digest, purl.to_string(),
                          b.manifest_digest.split(":", 1)[1], "")]

    def base_facts(self, chain: Sequence[Lock]) -> dict[str, str]:
        b = chain[0].get(ImageBaseLock)
        return {"base-image": b.reference, "base-image-digest": b.manifest_digest} if b else {}

    def pins(self, lock: Lock) -> list[Pin]:
        b = lock.get(ImageBaseLock)  # a tag that moved upstream: the manifest it now names
        return [Pin("image", b.reference, b.manifest_digest[:19], b.platform)] if b else []


REGISTRY_IMAGE = RegistryImage()
