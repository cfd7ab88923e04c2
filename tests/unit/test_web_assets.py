"""The console's static files: URLs that name their content, kept for a year; others revalidated."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

from db.migrate import upgrade_to_head
from db.session import make_engine
from settings import Settings
from web.app import create_app
from web.assets import DIGEST_CHARS, VERSIONED_MAX_AGE_SECONDS

STATIC = Path(__file__).resolve().parents[2] / "web" / "static"


def _client(tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'console.db'}"
    upgrade_to_head(url)
    settings = dataclasses.replace(Settings(), database_url=url)
    return create_app(settings, engine=make_engine(settings)).test_client()


def test_pages_link_each_static_file_by_its_digest_and_it_is_kept_a_year(tmp_path: Path) -> None:
    client = _client(tmp_path)
    page = client.get("/sign-in").get_data(as_text=True)
    linked = dict(re.findall(r'"/static/([\w.]+)\?v=([0-9a-f]+)"', page))
    assert set(linked) == {"console.css", "htmx.min.js", "console.js"}
    for name, version in linked.items():
        assert version == hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:DIGEST_CHARS]
        with client.get(f"/static/{name}?v={version}") as answer:
            assert answer.status_code == 200
            assert answer.get_data() == (STATIC / name).read_bytes()
            cache = answer.cache_control
        assert cache.immutable and cache.public and not cache.no_cache, answer.headers
        assert cache.max_age == VERSIONED_MAX_AGE_SECONDS


def test_a_static_url_without_this_digest_is_revalidated_and_pages_are_never_kept(
    tmp_path: Path,
) -> None:
    client = _client(tmp_path)
    for path in ("/static/console.css", "/static/console.css?v=0123456789abcdef"):
        with client.get(path) as answer:
            cache = answer.cache_control
        assert not cache.immutable and not cache.max_age, path
        assert cache.no_cache, path
    assert client.get("/sign-in").headers["Cache-Control"] == "no-store"
    with client.get("/static/no-such-file.css?v=0123456789abcdef") as missing:
        assert missing.status_code == 404
