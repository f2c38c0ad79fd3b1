"""Credentials replaced wherever options and URIs are shown."""

from __future__ import annotations

from zarr_torch import redact


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
