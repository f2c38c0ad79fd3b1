"""Credentials never shown: storage options, URIs and error text with secrets replaced.

Secrets are recognised by shape, not by a fixed list of option names: any option whose
name speaks of a key, secret, token, password, credential, authorization, signature or
session; user info in any URL (``s3://key:secret@bucket``, an ``endpoint_url`` with
``user:pass@``); signed-URL query values (``X-Amz-Signature=``, ``sig=``, ``token=``);
and AWS access key ids wherever they appear.

redact_uri("s3://key:secret@bucket/ep.zarr")      # 's3://***@bucket/ep.zarr'
redact_options({"key": "AKIA...", "anon": False})  # {'key': '***', 'anon': False}
redact_text("GET https://h/x?X-Amz-Signature=ab12")  # 'GET https://h/x?X-Amz-Signature=***'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "***"

#: an option whose (lower-case) name holds one of these is a credential: never shown.
SECRET_NAME = re.compile(
    "key|secret|token|passw|credential|auth|signature|session|sas|connection_string|cookie"
)
#: user info in a URL: ``scheme://user:pass@`` or ``scheme://token@``.
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s?#]+@")
#: query parameters of signed URLs (S3, GCS, Azure SAS) and tokens passed in a query.
_SIGNED_QUERY = re.compile(
    r"(?P<name>[?&](?:x-amz-[a-z-]+|x-goog-[a-z-]+|sig|signature|token|access_token|awsaccesskeyid|"
    r"se|sp|sv|skoid|sktid|key|credential|policy)=)[^&\s#'\"]+",
    re.IGNORECASE,
)
#: AWS access key ids (long-term and temporary).
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")


def is_secret_name(name: Any) -> bool:
    """True for an option name that holds a credential (``key``, ``Authorization``, ...)."""
    return bool(SECRET_NAME.search(str(name).lower()))


def redact_options(options: Any) -> Any:
    """Return ``options`` with every credential replaced by ``***`` (recursively): values
    under secret names, and secrets inside any string (URLs with user info, signed URLs)."""
    if isinstance(options, Mapping):
        return {k: REDACTED if is_secret_name(k) else redact_options(v) for k, v in options.items()}
    if isinstance(options, list | tuple):
        return type(options)(redact_options(v) for v in options)
    if isinstance(options, str):
        return redact_text(options)
    return options


def _secret_values(options: Any) -> list[str]:
    """Every string held under a secret name in ``options``, however deep."""
    if isinstance(options, Mapping):
        found = []
        for k, v in options.items():
            if is_secret_name(k):
                found += [s for s in _strings(v) if s]
            else:
                found += _secret_values(v)
        return found
    if isinstance(options, list | tuple):
        return [s for v in options for s in _secret_values(v)]
    return []


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return [str(value)] if isinstance(value, int | float) and not isinstance(value, bool) else []


def scrub(text: str, options: Any) -> str:
    """``text`` with every credential value found in ``options``, and every secret of a
    recognisable shape, replaced by ``***``."""
    for value in sorted(_secret_values(options), key=len, reverse=True):  # longest first
        text = text.replace(value, REDACTED)
    return redact_text(text)


def redact_text(text: str) -> str:
    """``text`` with URL user info, signed-URL query values and AWS key ids replaced."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
    text = _SIGNED_QUERY.sub(lambda m: f"{m['name']}{REDACTED}", text)
    return _AWS_KEY_ID.sub(REDACTED, text)


def redact_uri(uri: str) -> str:
    """A URI without secrets: ``s3://k:s@b/p`` -> ``s3://***@b/p``; signed query values go too."""
    return redact_text(uri)
