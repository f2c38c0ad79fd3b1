"""Credentials never shown: storage options, URIs and error text with secrets replaced.

redact_uri("s3://key:secret@bucket/ep.zarr")      # 's3://***@bucket/ep.zarr'
redact_options({"key": "AKIA...", "anon": False})  # {'key': '***', 'anon': False}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

#: storage option keys whose values are credentials: never shown, logged or saved.
SECRET_KEYS = frozenset(
    {
        "key",
        "secret",
        "token",
        "password",
        "session_token",
        "client_secret",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "account_key",
        "sas_token",
        "connection_string",
    }
)
REDACTED = "***"


def redact_options(options: Any) -> Any:
    """Return ``options`` with every credential value replaced by ``***`` (recursively)."""
    if isinstance(options, Mapping):
        return {
            k: REDACTED if str(k).lower() in SECRET_KEYS else redact_options(v) for k, v in options.items()
        }
    if isinstance(options, list | tuple):
        return type(options)(redact_options(v) for v in options)
    return options


def scrub(text: str, options: Any) -> str:
    """``text`` with every credential value found in ``options`` replaced by ``***``."""
    if isinstance(options, Mapping):
        for k, v in options.items():
            if str(k).lower() in SECRET_KEYS and isinstance(v, str) and v:
                text = text.replace(v, REDACTED)
            else:
                text = scrub(text, v)
    return text


def redact_uri(uri: str) -> str:
    """Drop a password (or any user info) embedded in a URI: ``s3://k:s@b/p`` -> ``s3://***@b/p``."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{REDACTED}@{host}"))
