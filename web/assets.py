"""The console's static files under URLs that name their content, kept by browsers for a year.

A page links `asset_url("console.css")`: `/static/console.css?v=<digest>`, the
digest of the file as this process serves it.  The answer to such a URL says
`immutable` with a year's `max-age`, so a browser loads each file once and
then paints every page without asking for it again (a static file costs a round
trip, and the style sheet holds up the first paint).  A new release changes the
digest, hence the URL.  A URL with another digest (a page of an older release)
or none is answered as before: revalidated on each use, never stale.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from flask import Flask, current_app, request, url_for
from werkzeug.wrappers import Response

# How long a browser keeps a file whose URL names its digest (a year: the digest changes
# with the file, so the URL does too).
VERSIONED_MAX_AGE_SECONDS = 365 * 24 * 3600
EXTENSION = "taskyard_assets"
# Hex digits of the SHA-256 in a URL: enough that two releases' files never share one.
DIGEST_CHARS = 16


class Assets:
    """The digests of one app's static files, each read once."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self._digests: dict[str, str] = {}

    def digest(self, filename: str) -> str:
        """The file's digest (read at its first use: the files do not change under a process)."""
        found = self._digests.get(filename)
        if found is None:
            content = (self.folder / filename).read_bytes()
            found = self._digests[filename] = hashlib.sha256(content).hexdigest()[:DIGEST_CHARS]
        return found


def asset_url(filename: str) -> str:
    """The URL of a static file that names its content (for templates)."""
    assets: Assets = current_app.extensions[EXTENSION]
    return url_for("static", filename=filename, v=assets.digest(filename))


def cache_versioned(response: Response) -> Response:
    """After a static file's request: a year's caching when its URL named this digest."""
    if request.endpoint != "static" or response.status_code != 200:
        return response
    filename = (request.view_args or {}).get("filename")
    version = request.args.get("v")
    assets: Assets = current_app.extensions[EXTENSION]
    if isinstance(filename, str) and version and version == assets.digest(filename):
        response.cache_control.no_cache = None
        response.cache_control.public = True
        response.cache_control.max_age = VERSIONED_MAX_AGE_SECONDS
        response.cache_control.immutable = True
    return response


def install(app: Flask) -> None:
    """Give `app` its digests, the `asset_url` template function and the caching."""
    assert app.static_folder is not None
    app.extensions[EXTENSION] = Assets(app.static_folder)
    app.jinja_env.globals.update(asset_url=asset_url)
    app.after_request(cache_versioned)
