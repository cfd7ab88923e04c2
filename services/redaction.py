"""What an operator's tool may show of a job: URLs without credentials, secrets masked.

One place for both faces: the command line and the web console show arguments,
results, errors and dead letters' messages through `redact_value`.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# A URL inside any text (an error, an argument): a scheme, then up to a space or a quote.
_URL_IN_TEXT = re.compile(r"""[A-Za-z][A-Za-z0-9+.-]*://[^\s'"<>]+""")
# Keys whose values are secrets wherever they appear in a JSON value.
SECRET_KEY_PATTERN = re.compile(
    r"pass(word|wd)?|secret|token|api[_-]?key|credential|authorization|private[_-]?key",
    re.IGNORECASE,
)
REDACTED = "***"


def redact_url(url: str) -> str:
    """The URL without user name, password or fragment: safe to log and to store."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def hide_password(url: str) -> str:
    """The URL with its password (if any) shown as `***`: for an operator's error messages."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    if password is None:
        return url
    netloc = parts.netloc.replace(f":{password}@", f":{REDACTED}@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def redact_text(text: str) -> str:
    """`text` with every URL in it redacted as `redact_url` does (user, password, fragment)."""
    return _URL_IN_TEXT.sub(
        lambda m: redact_url(m.group(0)) if "@" in m.group(0) else m.group(0), text
    )


def redact_value(value: Any) -> Any:
    """A JSON value safe to show: URLs redacted in every string, secret-named keys masked.

    Arguments, results and errors of jobs, and dead letters' messages, go
    through this before an operator's tool shows them.
    """
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, list):
        return [redact_value(item) for item in value]
    if isinstance(value, dict):
        return {
            key: REDACTED
            if isinstance(key, str) and SECRET_KEY_PATTERN.search(key) and item is not None
            else redact_value(item)
            for key, item in value.items()
        }
    return value
