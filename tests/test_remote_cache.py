"""``build --cache-to`` / ``--cache-from``: a registry repository as the layer cache of another machine.

"Another machine" is a fresh store with no vendored files: a chain it takes
from the cache is built with no container started and the same image IDs.
"""

from __future__ import annotations

import json

import pytest
import requests
from helpers import bs, ok

from buildsys.oci.registry import Registry
from buildsys.ship.remote_cache import TAG_PREFIX

pytestmark = [pytest.mark.docker, pytest.mark.network, pytest.mark.slow]


def cache_tags(host: str, repo: str) -> list[str]:
    resp = requests.get(f"http://{host}/v2/{repo}/tags/list", timeout=10)
    return sorted(resp.json().get("tags") or []) if resp.status_code == 200 else []


@pytest.fixture(scope="module")
def cache(shipped, registry) -> str:
    proj, store = shipped
    ref = f"{registry.host}/cache/chain"
    result = ok(bs(proj, store, "build", "--cache-to", ref, "app"))
    assert result.stderr.count("cache push") == 3
    return ref


def test_cache_to_pushes_one_entry_per_layer_under_its_cache_key(cache: str, registry) -> None:
    tags = cache_tags(registry.host, "cache/chain")
    assert len(tags) == 3 and all(t.startswith(TAG_PREFIX) and len(t) == len(TAG_PREFIX) + 64 for t in tags)
    # Entries go up gzip-compressed (the default), each layer with the method that made it.
    reg = Registry(registry.host)
    for t in tags:
        layers = json.loads(reg.get_manifest("cache/chain", t)[0])["layers"]
        assert {la["mediaType"] for la in layers} == {"application/vnd.oci.image.layer.v1.tar+gzip"}
        assert all(la["annotations"]["io.buildsys.compression"].startswith("gzip libdeflate") for la in layers)


def test_a_fresh_store_takes_the_whole_chain_from_the_cache_with_no_container(shipped, cache: str,
                                                                              tmp_path) -> None:
    proj, store = shipped
    (built,) = json.loads(ok(bs(proj, store, "build", "--json", "app")).stdout)
    fresh = tmp_path / "other-machine"
    result = ok(bs(proj, fresh, "build", "--cache-from", cache, "--json", "app"))
    (image,) = json.loads(result.stdout)
    assert image["image_id"] == built["image_id"] and image["manifest_digest"] == built["manifest_digest"]
    assert image["diff_ids"] == built["diff_ids"]
    assert result.stderr.count("remote cache") == 3
    assert "bootstrap" not in result.stderr and " run:" not in result.stderr  # no container, no mmdebstrap
    assert not (fresh / "vendor").exists()  # nothing needed fetching
    again = ok(bs(proj, fresh, "build", "--json", "app"))  # now a local cache hit, no registry needed
    assert json.loads(again.stdout)[0]["cached"] is True


def test_an_entry_that_is_not_the_layer_it_claims_is_ignored_and_the_layer_built(shipped, registry,
                                                                                 tmp_path) -> None:
    proj, store = shipped
    evil = f"{registry.host}/cache/evil"
    ok(bs(proj, store, "build", "--cache-to", evil, "app"))
    reg = Registry(registry.host)
    entries = {t: json.loads(reg.get_manifest("cache/evil", t)[0]) for t in cache_tags(registry.host, "cache/evil")}
    app_tag = next(t for t, m in entries.items() if len(m["layers"]) == 3)
    tools_tag = next(t for t, m in entries.items() if len(m["layers"]) == 2)
    data, media, _ = reg.get_manifest("cache/evil", tools_tag)
    reg.put_manifest("cache/evil", app_tag, data, media)  # app's key now names tools' image
    (built,) = json.loads(ok(bs(proj, store, "build", "--json", "app")).stdout)
    fresh = tmp_path / "other"
    ok(bs(proj, fresh, "fetch", "app"))  # app's layer will be built here
    result = ok(bs(proj, fresh, "build", "--cache-from", evil, "--json", "app"))
    said = " ".join(result.stderr.split())  # progress lines may wrap
    assert "app remote miss: entry bs-" in said and "does not build on the parent layers; ignored" in said
    assert said.count("remote cache:") == 2  # root and tools from the cache
    assert json.loads(result.stdout)[0]["image_id"] == built["image_id"]


def test_a_cache_registry_that_is_down_is_a_miss_not_a_failure(shipped, tmp_path) -> None:
    from shipenv import free_port

    from buildsys.model.graph import build_graph
    from buildsys.model.recipe import load_recipes
    from buildsys.oci.image import OciLayout
    from buildsys.ship.remote_cache import RemoteCache

    proj, _ = shipped
    graph = build_graph(load_recipes(proj))
    events: list[tuple[str, str, str]] = []
    host = f"127.0.0.1:{free_port()}"
    remote = RemoteCache(f"{host}/cache/none", None, progress=lambda *e: events.append(e))
    assert remote.fetch("0" * 64, graph.recipes["root"], None, OciLayout(tmp_path / "oci")) is None
    assert events[0][:2] == ("root", "remote miss") and host in events[0][2] and "unreachable" in events[0][2]


def test_an_answer_that_is_no_manifest_is_a_miss_not_a_traceback(shipped, tmp_path) -> None:
    """A proxy in front of the cache that answers 200 with an HTML page (reviewer's case)."""
    import http.server
    import threading

    from buildsys.model.graph import build_graph
    from buildsys.model.recipe import load_recipes
    from buildsys.oci.image import OciLayout
    from buildsys.ship.remote_cache import RemoteCache

    class Portal(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = b"<html><body>Please log in to the proxy</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Portal)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proj, _ = shipped
        graph = build_graph(load_recipes(proj))
        events: list[tuple[str, str, str]] = []
        remote = RemoteCache(f"127.0.0.1:{server.server_address[1]}/cache/x", None,
                             progress=lambda *e: events.append(e))
        assert remote.fetch("0" * 64, graph.recipes["root"], None, OciLayout(tmp_path / "oci")) is None
        assert [e for e in events if e[1] == "remote miss" and "not a manifest buildsys wrote" in e[2]], events
    finally:
        server.shutdown()
