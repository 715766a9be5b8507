"""Lock ``[[files]]``: download each URL once, pin its sha256 and size.

The downloaded file goes straight into the vendor store (it is content
addressed, so a later ``fetch`` has nothing to do for it).
"""

from __future__ import annotations

import email.utils
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from buildsys.core.errors import FetchError, HashMismatch, RecipeError
from buildsys.core.store import Store
from buildsys.core.urlpolicy import LocalURLRefused, local_reason, opener
from buildsys.model.lockfile import LockedFile
from buildsys.model.recipe import Recipe


@dataclass(frozen=True)
class FilesLock:
    locked: tuple[LockedFile, ...]
    epochs: tuple[int, ...]  # Last-Modified of each file, where the server gave one


def lock_files(recipe: Recipe, store: Store, warn: Callable[[str], None] = lambda message: None,
               ) -> FilesLock:
    """Download and pin each ``[[files]]`` entry; ``warn`` hears of every local source allowed."""
    locked, epochs = [], []
    for i, spec in enumerate(recipe.files):
        what = f"{recipe.path}: files[{i}] ({spec.name})"
        reason = local_reason(spec.url, resolve=True)
        if reason and not spec.local:
            raise RecipeError(recipe.path, f"'{spec.url}' reads from this machine: {reason}", key=f"files[{i}].url",
                              hint="a recipe may do that only on purpose: add local = true to this [[files]] entry")
        if reason:
            warn(f"files[{i}] ({spec.name}): reading {spec.url} from this machine, as local = true allows")
        sha, size, modified = _download(store, spec.url, what, allow_local=spec.local)
        if spec.sha256 and spec.sha256 != sha:
            raise HashMismatch(what, spec.url, spec.sha256, sha)
        locked.append(LockedFile(url=spec.url, name=spec.name, sha256=sha, size=size, local=spec.local))
        if modified is not None:
            epochs.append(modified)
    return FilesLock(tuple(locked), tuple(epochs))


def _download(store: Store, url: str, what: str, allow_local: bool) -> tuple[str, int, int | None]:
    """Stream ``url`` into the vendor store; return its sha256, size and Last-Modified time."""
    try:
        resp = opener(allow_local).open(urllib.request.Request(url), timeout=60)
    except LocalURLRefused as e:
        raise RecipeError(what.split(": ", 1)[0], f"{url} was {e}", key=what.split(": ", 1)[-1],
                          hint="pin the final URL, or add local = true to the entry if this is on purpose") from e
    except urllib.error.HTTPError as e:
        raise FetchError(f"{what}: {url} answered HTTP {e.code}", hint="check the URL") from e
    except (urllib.error.URLError, OSError) as e:
        raise FetchError(f"{what}: cannot download {url}: {getattr(e, 'reason', e)}",
                         hint="check the URL and the network") from e
    lm = resp.headers.get("Last-Modified")
    modified = int(email.utils.parsedate_to_datetime(lm).timestamp()) if lm else None
    with resp:
        sha, size = store.vendor_stream(resp, "file-")
    return sha, size, modified
