"""What a user sees when reads fail: ReadError, the skip policy, and no leaked secrets."""

from __future__ import annotations

import logging
import multiprocessing
import pickle

import numcodecs
import numpy as np
import pytest
import torch
from conftest import SIZE, reference
from torch.utils.data import DataLoader

from zarr_torch import SelectionIndex, ZarrFrameDataset, ZarrStore, read_zarr
from zarr_torch.cli import main
from zarr_torch.dataset import skip_collate
from zarr_torch.errors import ReadError
from zarr_torch.synth import write_stores

ARRAY = "data/camera0_rgb"
STORES, FRAMES = 2, 12


@pytest.fixture
def corrupt_stores(tmp_path) -> str:
    """Two chunk-4 stores; chunk 1 (frames 4-7) of the first one holds garbage."""
    root = str(tmp_path / "s")
    write_stores(root, stores=STORES, frames=FRAMES, size=SIZE, chunk=4)
    with open(f"{root}/episode_00000.zarr/{ARRAY}/c/1/0/0/0", "wb") as f:
        f.write(b"this is not zstd")
    return root


def test_read_error_names_store_array_and_index(corrupt_stores):
    ds = ZarrFrameDataset(corrupt_stores, array=ARRAY)
    with pytest.raises(ReadError) as info:
        ds.__getitems__([0, 6, 13])
    err = info.value
    assert isinstance(err, OSError)
    assert str(err).startswith(
        f"cannot read sample 6: array '{ARRAY}' in store '{corrupt_stores}/episode_00000.zarr', index 6: "
    )
    assert (err.uri, err.array, err.index) == (f"{corrupt_stores}/episode_00000.zarr", ARRAY, 6)
    assert err.__cause__ is not None
    assert str(pickle.loads(pickle.dumps(err))) == str(err)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_read_error_reaches_the_training_loop(corrupt_stores, context):
    ds = ZarrFrameDataset(corrupt_stores, array=ARRAY)
    loader = DataLoader(
        ds,
        batch_size=4,
        num_workers=2,
        timeout=60,
        multiprocessing_context=multiprocessing.get_context(context),
    )
    with pytest.raises(
        ReadError,
        match=r"cannot read sample 4: array 'data/camera0_rgb' in store "
        r"'.*episode_00000.zarr', index 4",
    ):
        list(loader)


def test_skip_drops_only_the_bad_samples(corrupt_stores, caplog):
    ds = ZarrFrameDataset(corrupt_stores, array=ARRAY, on_error="skip")
    expected = reference(STORES, FRAMES)
    with caplog.at_level(logging.WARNING, logger="zarr_torch"):
        batch = ds.__getitems__([3, 5, 12, 6])
        again = ds.__getitems__([7, 2])
    np.testing.assert_array_equal(np.stack(batch), expected[[3, 12]])
    np.testing.assert_array_equal(np.stack(again), expected[[2]])
    warnings = [r for r in caplog.records if "skipping unreadable samples" in r.message]
    assert len(warnings) == 1, "a store is logged once per process"
    assert [r["index"] for r in ds.skips.records()] == [5, 6, 7]
    assert ds.skip_summary() == {f"{corrupt_stores}/episode_00000.zarr": 3}
    assert ds.skip_summary() == {}, "each summary starts a new count"


def test_skip_one_sample_at_a_time_gives_none(corrupt_stores):
    ds = ZarrFrameDataset(corrupt_stores, array=ARRAY, on_error="skip")
    assert ds[5] is None
    np.testing.assert_array_equal(ds[3].numpy(), reference(STORES, FRAMES)[3])
    got = list(DataLoader(ds, batch_size=None, num_workers=2, timeout=60))  # samples, not batches
    good = [i for i in range(STORES * FRAMES) if not 4 <= i < 8]
    assert [i for i, t in enumerate(got) if t is None] == [4, 5, 6, 7]
    np.testing.assert_array_equal(np.stack([got[i].numpy() for i in good]), reference(STORES, FRAMES)[good])
    assert skip_collate([None, got[0], None]).shape == (1, *got[0].shape)


def test_skip_through_workers_counts_every_process(corrupt_stores):
    ds = ZarrFrameDataset(corrupt_stores, array=ARRAY, on_error="skip")
    loader = DataLoader(
        ds,
        batch_size=4,
        num_workers=2,
        timeout=60,
        collate_fn=skip_collate,
        multiprocessing_context=multiprocessing.get_context("spawn"),
    )
    batches = list(loader)
    assert batches[1] is None, "a batch whose every sample failed comes back as None"
    got = torch.cat([b for b in batches if b is not None]).numpy()
    good = [i for i in range(STORES * FRAMES) if not 4 <= i < 8]
    np.testing.assert_array_equal(got, reference(STORES, FRAMES)[good])
    assert ds.skip_summary() == {f"{corrupt_stores}/episode_00000.zarr": 4}


def test_a_store_that_shrank_after_indexing_skips_its_lost_frames_in_workers(tmp_path):
    import zarr

    root = str(tmp_path / "s")
    write_stores(root, stores=STORES, frames=FRAMES, size=SIZE, chunk=4)
    ds = ZarrFrameDataset(root, array=ARRAY, on_error="skip")
    shrunk = zarr.open_array(f"{root}/episode_00001.zarr/{ARRAY}", mode="r+")
    shrunk.resize((5, *shrunk.shape[1:]))  # frames 5-11 of store 1 are gone
    loader = DataLoader(ds, batch_size=4, num_workers=2, timeout=60, collate_fn=skip_collate)
    got = torch.cat([b for b in loader if b is not None]).numpy()
    np.testing.assert_array_equal(got, reference(STORES, FRAMES)[: FRAMES + 5])
    assert ds.skip_summary() == {f"{root}/episode_00001.zarr": FRAMES - 5}
    with pytest.raises(ValueError, match=r"episode_00001.zarr' has shape \(5, "):
        ds.index.validate()


def test_bad_on_error():
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip', not 'ignore'"):
        ZarrFrameDataset([], on_error="ignore")


PLANTED = {"key": "AKIAPLANTEDKEY0001", "secret": "planted/secret+value", "token": "planted-token"}


def test_no_credentials_anywhere(s3_bucket, s3_options, tmp_path, capsys, caplog):
    """A planted secret shows in no repr, str, error, log line or CLI output."""
    options = {**s3_options, **PLANTED}
    write_stores(f"{s3_bucket}/eps", stores=2, frames=8, size=SIZE, chunk=4, storage_options=options)
    shown: list[str] = []
    with caplog.at_level(logging.DEBUG, logger="zarr_torch"):
        stores = read_zarr(f"{s3_bucket}/eps", options)
        ds = ZarrFrameDataset(f"{s3_bucket}/eps", array=ARRAY, storage_options=options, on_error="skip")
        shown += [
            repr(ds),
            str(ds),
            repr(ds.index),
            str(ds.index),
            repr(stores),
            repr(ds.index[3]),
            str(ds.index[3]),
            repr(ds.index[3].array),
        ]
        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
        fs.pipe(f"{s3_bucket}/eps/episode_00001.zarr/{ARRAY}/c/0/0/0/0", b"garbage")
        ds.__getitems__([8, 9])
        shown += [r["error"] for r in ds.skips.records()] + [str(ds.skip_summary())]
        strict = ZarrFrameDataset(ds.index, storage_options=options)
        for bad in (
            lambda: strict[9],
            lambda: ZarrStore(uri=f"{s3_bucket}/nope", storage_options=options).get_info(),
            lambda: ZarrFrameDataset([f"{s3_bucket}/nope"], array=ARRAY, storage_options=options),
            lambda: SelectionIndex.build(f"{s3_bucket}/eps", array="data/none", storage_options=options),
        ):
            with pytest.raises(Exception) as info:
                bad()
            shown.append(f"{info.value!s} {info.value!r} {info.value.__cause__!s}")
        main(["info", f"{s3_bucket}/eps", "--storage-options", __import__("json").dumps(options)])
    shown += [capsys.readouterr().out, caplog.text]
    assert "cannot read sample" in caplog.text and len(shown) > 15
    assert "***" in repr(stores), "the redaction itself was exercised"
    for text in shown:
        for secret in PLANTED.values():
            assert secret not in text


class PlainCodec(numcodecs.abc.Codec):
    """A codec registered only in the process that runs the tests: spawn workers lack it."""

    codec_id = "zarr_torch_test_plain"

    def encode(self, buf):
        return bytes(memoryview(buf).cast("B"))

    def decode(self, buf, out=None):
        return numcodecs.compat.ndarray_copy(buf, out) if out is not None else bytes(buf)


UNKNOWN = r"uses codec '{}', which is not registered in this process: install the package that provides it"


def test_an_unknown_codec_is_named_with_how_to_register_it(tmp_path):
    import json

    import zarr

    uri = str(tmp_path / "v3.zarr")
    zarr.create_array(uri, data=np.zeros((4, 8), dtype="u1"), chunks=(1, 8))
    meta = json.loads((tmp_path / "v3.zarr" / "zarr.json").read_text())
    meta["codecs"].append({"name": "jpegxl_not_installed", "configuration": {}})
    (tmp_path / "v3.zarr" / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(
        ValueError, match=r"array '/' in store '.*v3.zarr' " + UNKNOWN.format("jpegxl_not_installed")
    ):
        ZarrFrameDataset([uri])


def test_a_codec_registered_only_in_the_main_script_is_named_in_spawn_workers(tmp_path):
    import zarr

    numcodecs.register_codec(PlainCodec)
    uri = str(tmp_path / "v2.zarr")
    zarr.create_array(
        uri,
        data=np.arange(32, dtype="u1").reshape(4, 8),
        chunks=(1, 8),
        compressors=PlainCodec(),
        zarr_format=2,
    )
    ds = ZarrFrameDataset([uri])
    np.testing.assert_array_equal(ds[1].numpy(), np.arange(8, 16))  # registered here
    loader = DataLoader(ds, batch_size=2, num_workers=1, timeout=60, multiprocessing_context="spawn")
    with pytest.raises(ReadError, match=r"sample 0: .*v2.zarr.*" + UNKNOWN.format("zarr_torch_test_plain")):
        list(loader)
