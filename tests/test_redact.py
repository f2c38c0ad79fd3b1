"""Credentials replaced wherever options and URIs are shown."""

from __future__ import annotations

import pytest

from zarr_torch import ZarrStore, redact


def test_redact_options_is_recursive():
    opts = {
        "key": "K",
        "secret": "S",
        "anon": False,
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:1", "aws_session_token": "T"},
    }
    assert redact.redact_options(opts) == {
        "key": "***",
        "secret": "***",
        "anon": False,
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:1", "aws_session_token": "***"},
    }
    assert opts["key"] == "K"


def test_redact_uri():
    assert redact.redact_uri("s3://AK:SECRET@bucket/a.zarr") == "s3://***@bucket/a.zarr"
    assert redact.redact_uri("s3://bucket/a.zarr") == "s3://bucket/a.zarr"
    assert redact.redact_uri("/data/a.zarr") == "/data/a.zarr"


def test_scrub_replaces_every_secret_value_in_text():
    opts = {"key": "AKIA123", "client_kwargs": {"token": "tok-9"}}
    assert redact.scrub("denied for AKIA123 with tok-9", opts) == "denied for *** with ***"


# -- secrets by shape, wherever they are shown ------------------------------------------

SECRETS = [
    "AKIAIOSFODNN7EXAMPLE",
    "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY",
    "hunter2",
    "Zm9vYmFy",
    "sv-sig-99",
]
#: storage options holding each secret in a shape users meet.
SHAPES = {
    "authorization-header": {"client_kwargs": {"headers": {"Authorization": "Bearer Zm9vYmFy"}}},
    "endpoint-userinfo": {"client_kwargs": {"endpoint_url": "http://admin:hunter2@127.0.0.1:9000"}},
    "credentials-key": {"credentials": {"access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret": "x"}},
    "nested-secret": {
        "config_kwargs": {"s3": {"aws_secret_access_key": "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"}}
    },
    "sse-customer-key": {"s3_additional_kwargs": {"SSECustomerKey": "Zm9vYmFy"}},
}
URIS = {
    "presigned-s3": "https://b.s3.amazonaws.com/ep.zarr?X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F2026&X-Amz-Signature=sv-sig-99",
    "azure-sas": "https://acct.blob.core.windows.net/c/ep.zarr?sv=2024&sig=sv-sig-99",
    "userinfo": "s3://AKIAIOSFODNN7EXAMPLE:hunter2@bucket/ep.zarr",
}


def _shows_no_secret(text: str) -> bool:
    return not any(s in text for s in SECRETS)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_options_of_any_shape_never_show_in_a_repr(shape):
    store = ZarrStore(uri="s3://bucket/ep.zarr", storage_options=SHAPES[shape])
    assert _shows_no_secret(repr(store)) and _shows_no_secret(str(store))
    assert "***" in repr(store)


@pytest.mark.parametrize("uri", list(URIS))
def test_uris_lose_user_info_and_signatures(uri):
    shown = redact.redact_uri(URIS[uri])
    assert _shows_no_secret(shown) and "***" in shown
    assert shown.split("?")[0].endswith("ep.zarr"), "the path stays readable"
    assert _shows_no_secret(repr(ZarrStore(uri=URIS[uri])))


@pytest.mark.parametrize("shape", list(SHAPES))
def test_error_text_is_scrubbed_of_option_values_and_secret_shapes(shape):
    options = SHAPES[shape]
    values = [v for v in SECRETS if v in repr(options)]
    text = redact.scrub(f"denied: {options} while reading {URIS['presigned-s3']}", options)
    assert values and _shows_no_secret(text), text
