"""SelectionIndex: building, slicing, concat/filter, save/load, verify and the index CLI."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import random
import shutil
import struct
import zlib

import numpy as np
import pytest
import zarr
from checks import assert_every_frame_once, roundtrip_pickle
from conftest import SIZE, reference
from torch.utils.data import DataLoader

from zarr_torch import SelectionIndex, ZarrFrameDataset, ZarrStore, read_zarr
from zarr_torch.cli import main
from zarr_torch.index import ROW_DTYPE
from zarr_torch.indexfile import MAGIC, rows_offset
from zarr_torch.process import process_state
from zarr_torch.stores import options_key
from zarr_torch.synth import make_actions, make_frames, write_metadata_stores, write_store, write_stores
from zarr_torch.tables import TABLE_DTYPE

ARRAY = "data/camera0_rgb"
ACTION = "data/action"


def built(root: str, array: str = ARRAY) -> SelectionIndex:
    return SelectionIndex.build(root, array=array, media="image" if array == ARRAY else None)


def pixels(index: SelectionIndex, **options) -> np.ndarray:
    """Every frame of ``index`` read through ``ZarrFrameDataset``, stacked."""
    ds = ZarrFrameDataset(index, **options)
    return np.stack([t.numpy() for t in ds.__getitems__(list(range(len(ds))))])


# -- building and access ----------------------------------------------------------------


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_a_build_parses_each_distinct_metadata_document_once(tmp_path, zarr_format):
    layout = {"chunk": 4, "zarr_format": zarr_format}
    paths = write_stores(str(tmp_path / "a"), stores=3, frames=8, size=SIZE, **layout)
    paths += write_stores(str(tmp_path / "b"), stores=2, frames=12, size=SIZE, **layout)
    parsed = process_state().metadata
    parsed.clear()
    index = SelectionIndex.build(paths, array=ARRAY)
    assert len(parsed) == 2, "one parse per distinct document, not per store"
    opened = [process_state().arrays[(p, ARRAY, options_key(None))] for p in paths]
    # the first store is opened by zarr, probing for its format; the others share
    assert len({id(arr.metadata) for arr in opened[1:]}) == 2
    assert [arr.shape[0] for arr in opened] == [8, 8, 8, 12, 12]
    np.testing.assert_array_equal(pixels(index)[-1], make_frames(1, 12, SIZE)[-1])  # seeds restart


def test_build_has_one_16_byte_row_per_item(local_stores):
    index = built(local_stores)
    assert len(index) == 30 and len(index.stores) == 3 and len(index.arrays) == 3
    assert index.rows.dtype == ROW_DTYPE and index.rows.nbytes == 16 * len(index)
    np.testing.assert_array_equal(index.rows["array"], np.repeat([0, 1, 2], 10))
    np.testing.assert_array_equal(index.rows["start"], np.tile(np.arange(10), 3))
    sel = index[13]
    assert sel.array.store.uri.endswith("episode_00001.zarr") and sel.index == [3] and sel.media == "image"
    np.testing.assert_array_equal(sel.read(), reference(3, 10)[13])


def test_build_over_mixed_zarr_formats(tmp_path):
    """The first store's format is tried first on the others; a v2 store among v3 still opens."""
    formats = [3, 2, 3, 2]
    for n, zarr_format in enumerate(formats):
        write_store(str(tmp_path / f"ep{n}.zarr"), n, [5], size=SIZE, chunk=2, zarr_format=zarr_format)
    index = built(str(tmp_path))
    assert len(index) == 20 and [e.shape[0] for e in index.arrays] == [5] * 4
    np.testing.assert_array_equal(pixels(index), reference(4, 5))


def test_from_selections_keeps_their_order(local_stores):
    stores = read_zarr(local_stores)
    sels = [s.get_array(ARRAY).select(t, media="image") for s in stores for t in range(10)]
    sels += [s.get_array(ACTION).select(t) for s in stores for t in range(10)]
    random.Random(0).shuffle(sels)
    index = SelectionIndex.from_selections(sels)
    assert list(index) == sels
    assert len(index.stores) == 3 and len(index.arrays) == 6
    actions = [i for i, s in enumerate(sels) if s.array.path == ACTION]
    store_of = {s.uri: n for n, s in enumerate(stores)}
    for i in actions[:5]:
        sel = sels[i]
        expected = make_actions(store_of[sel.array.store.uri], 10)[sel.index[0]]
        np.testing.assert_array_equal(ZarrFrameDataset(index)[i].numpy(), expected)


def test_slices_and_numpy_indexing_give_smaller_indexes(local_stores):
    index = built(local_stores)
    sels = list(index)
    assert list(index[5:12]) == sels[5:12]
    assert list(index[::-4]) == sels[::-4]
    assert list(index[np.array([29, 0, 29, 7])]) == [sels[29], sels[0], sels[29], sels[7]]
    mask = np.zeros(30, dtype=bool)
    mask[[3, 17]] = True
    assert list(index[mask]) == [sels[3], sels[17]]
    assert index[-1] == sels[29] and index[np.int64(4)] == sels[4]
    with pytest.raises(IndexError, match="index 30 is out of range for 30 selections"):
        index[30]


def test_concat_merges_shared_stores_and_keeps_row_order(local_stores):
    cameras, actions = built(local_stores), built(local_stores, ACTION)
    both = SelectionIndex.concat([cameras[20:], actions[:4], cameras[:2]])
    assert list(both) == list(cameras[20:]) + list(actions[:4]) + list(cameras[:2])
    # stores 0 and 2 are used; store 1 is not; each (store, array) appears once
    assert [s.uri[-18:] for s in both.stores] == ["episode_00002.zarr", "episode_00000.zarr"]
    assert len(both.arrays) == 3
    np.testing.assert_array_equal(pixels(both[-2:]), reference(3, 10)[:2])


def test_concat_keeps_stores_reached_with_different_options_apart(local_stores):
    index = built(local_stores)
    other = index.with_storage_options({"auto_mkdir": False})
    both = SelectionIndex.concat([index, other])
    assert len(both.stores) == 6 and len(both) == 60
    assert both[35].array.store.storage_options == {"auto_mkdir": False}


def test_filter_by_store_and_by_array(local_stores):
    index = SelectionIndex.concat([built(local_stores), built(local_stores, ACTION)])
    uris = [s.uri for s in read_zarr(local_stores)]
    one = index.filter(stores=uris[1])
    assert len(one) == 20 and [s.uri for s in one.stores] == [uris[1]]
    assert list(one) == [s for s in index if s.array.store.uri == uris[1]]
    cams = index.filter(stores=[uris[0], uris[2]], arrays=ARRAY)
    assert len(cams) == 20 and {s.array.path for s in cams} == {ARRAY}
    np.testing.assert_array_equal(pixels(cams), reference(3, 10)[np.r_[0:10, 20:30]])
    with pytest.raises(ValueError, match=r"no store '.*nowhere.zarr' in this index"):
        index.filter(stores=[uris[0], "/data/nowhere.zarr"])
    with pytest.raises(ValueError, match=r"no array 'data/depth' in this index"):
        index.filter(arrays="data/depth")


# -- save and load ----------------------------------------------------------------------


def test_save_load_round_trip(tmp_path, layout):
    root = str(tmp_path / "stores")
    write_stores(root, stores=3, frames=9, size=SIZE, **layout)
    index = built(root)
    path = tmp_path / "frames.zti"
    size = index.save(path)
    assert size == path.stat().st_size
    loaded = SelectionIndex.load(path)
    assert list(loaded) == list(index)
    assert [s.storage_options for s in loaded.stores] == [{}] * 3
    numbers = [int(s.uri[-10:-5]) for s in loaded.stores]  # nested layouts list stores 0, 2, 1
    expected = np.concatenate([make_frames(n, 9, SIZE) for n in numbers])
    np.testing.assert_array_equal(pixels(loaded), expected)


def test_saving_a_slice_keeps_only_what_it_uses(local_stores, tmp_path):
    index = built(local_stores)
    index[12:15].save(tmp_path / "part.zti")
    part = SelectionIndex.load(tmp_path / "part.zti")
    assert list(part) == list(index[12:15]) and len(part.stores) == 1
    empty = tmp_path / "empty.zti"
    SelectionIndex.concat([]).save(empty)
    assert len(SelectionIndex.load(empty)) == 0


def test_load_gives_options_to_every_store(local_stores, tmp_path):
    built(local_stores).save(tmp_path / "f.zti")
    loaded = SelectionIndex.load(tmp_path / "f.zti", storage_options={"auto_mkdir": False})
    assert [s.storage_options for s in loaded.stores] == [{"auto_mkdir": False}] * 3


def test_loaded_index_pickles_to_its_file_not_its_rows(tmp_path):
    uris = write_metadata_stores(str(tmp_path / "big"), stores=4, frames=50_000, size=8)
    SelectionIndex.build(uris, array=ARRAY).save(tmp_path / "big.zti")
    loaded = SelectionIndex.load(tmp_path / "big.zti")
    copy, size = roundtrip_pickle(loaded)
    assert size < 5_000, f"a 200,000-row loaded index pickled to {size} bytes"
    assert list(copy[-3:]) == list(loaded[-3:])
    part, size = roundtrip_pickle(loaded[150_000:10:-7])
    assert size < 5_000 and list(part[:5]) == list(loaded[150_000:10:-7][:5]) and len(part) == 21_428
    picked, _ = roundtrip_pickle(loaded[np.array([199_999, 3])])  # a copy of the rows: pickled as such
    assert [s.index for s in picked] == [[49_999], [3]]


def test_replacing_the_file_keeps_loaded_rows_and_fails_unpickling(local_stores, tmp_path):
    path = tmp_path / "f.zti"
    index = built(local_stores)
    index.save(path)
    loaded = SelectionIndex.load(path)
    blob = pickle.dumps(loaded)
    index[:5].save(path)  # rebuilt while a run holds the old one
    assert list(loaded) == list(index)
    with pytest.raises(ValueError, match=r"f.zti: the index file changed since it was loaded"):
        pickle.loads(blob)


def test_loaded_index_through_spawn_workers(tmp_path):
    root = str(tmp_path / "stores")
    write_stores(root, stores=2, frames=12, size=SIZE, chunk=4)
    built(root).save(tmp_path / "f.zti")
    ds = ZarrFrameDataset(SelectionIndex.load(tmp_path / "f.zti"))
    loader = DataLoader(
        ds,
        batch_size=5,
        shuffle=True,
        num_workers=2,
        multiprocessing_context=multiprocessing.get_context("spawn"),
    )
    assert_every_frame_once(loader, reference(2, 12), 12)


def test_two_million_rows_within_16_bytes_a_row_on_disk(tmp_path):
    uris = write_metadata_stores(str(tmp_path / "big"), stores=20, frames=100_000, size=8)
    index = SelectionIndex.build(uris, array=ARRAY)
    path = tmp_path / "big.zti"
    size = index.save(path)
    assert len(index) == 2_000_000 and index.rows.nbytes == 16 * 2_000_000
    assert size <= 16 * 2_000_000 + 16_384, f"{size} bytes for 2,000,000 rows"
    loaded = SelectionIndex.load(path)
    assert len(loaded) == 2_000_000
    assert loaded[-1].index == [99_999] and loaded[-1].array.store.uri == uris[-1]


# -- rejected files ---------------------------------------------------------------------


def test_a_saved_index_of_many_episodes_keeps_each_metadata_once_and_pickles_small(tmp_path):
    root = str(tmp_path / "s")
    write_stores(root, stores=4, frames=[20, 20, 20], size=SIZE, chunk=4)  # 3 episodes a store
    index = SelectionIndex.build(root, array=ARRAY, window=5, episode_ends="meta/episode_ends")
    assert len(index.arrays) == 12 and len(index.arrays.metas) == 1, "episodes share their metadata"
    index.save(tmp_path / "w.zti")
    loaded = SelectionIndex.load(tmp_path / "w.zti")
    assert list(loaded.arrays) == list(index.arrays) and [e.episode for e in loaded.arrays][:2] == [
        (0, 20),
        (20, 40),
    ]
    copy, size = roundtrip_pickle(loaded[7:])
    assert size < 4096 and list(copy.arrays) == list(index.arrays), "rows and arrays map from the file"
    np.testing.assert_array_equal(pixels(copy[:9]), pixels(index[7:16]))


@pytest.mark.parametrize("context", ["spawn", "forkserver"])
def test_workers_open_arrays_from_a_saved_index_without_reading_their_metadata(
    local_stores, tmp_path, context
):
    built(local_stores).save(tmp_path / "frames.zti")
    index = SelectionIndex.load(tmp_path / "frames.zti")
    for store in index.stores:  # the arrays' metadata documents are gone; their chunks are there
        os.remove(f"{store.uri}/{ARRAY}/zarr.json")
    loader = DataLoader(
        ZarrFrameDataset(index),
        batch_size=4,
        shuffle=True,
        num_workers=2,
        multiprocessing_context=context,
        timeout=60,
    )
    assert_every_frame_once(loader, reference(3, 10), 10)
    with pytest.raises(FileNotFoundError, match="no Zarr array or group 'data/camera0_rgb'"):
        ZarrFrameDataset(local_stores, array=ARRAY)  # stores indexed here: their metadata is read


def _saved(local_stores: str, tmp_path) -> bytes:
    built(local_stores).save(tmp_path / "good.zti")
    return (tmp_path / "good.zti").read_bytes()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-5], r"truncated index file \(\d+ bytes, its header promises 30 rows"),
        (lambda b: b[:30], r"truncated index file \(30 bytes, header cut short\)"),
        (lambda b: b[:12], r"truncated index file \(12 bytes\)"),
        (lambda b: b + b"\0" * 16, r"corrupt index file"),
        (lambda b: b"\x89PNG\r\n\x1a\n" + b[8:], r"not a zarr_torch index file"),
        (lambda b: b"", r"not a zarr_torch index file"),
        (
            lambda b: b[:8] + struct.pack("<I", 1) + b[12:],
            r"index format version 1 is not supported.*build the index again",
        ),
        (lambda b: b[:24] + b"[" + b[25:], r"corrupt index header \(it does not match its checksum"),
        (lambda b: resummed(b[:24] + b"[" + b[25:]), r"corrupt index header \(JSONDecodeError"),
    ],
    ids=[
        "truncated-rows",
        "truncated-header",
        "truncated-preamble",
        "trailing",
        "png",
        "empty",
        "v1",
        "json",
        "json-resummed",
    ],
)
def test_damaged_or_foreign_files_are_rejected(local_stores, tmp_path, damage, message):
    bad = tmp_path / "bad.zti"
    bad.write_bytes(damage(_saved(local_stores, tmp_path)))
    with pytest.raises(ValueError, match=rf"bad.zti: {message}"):
        SelectionIndex.load(bad)


def resummed(data: bytes) -> bytes:
    """``data`` with its header checksum made to match its (edited) header again."""
    (length,) = struct.unpack("<Q", data[16:24])
    return data[:12] + struct.pack("<I", zlib.crc32(data[24 : 24 + length])) + data[16:]


def test_a_flipped_bit_in_a_store_name_is_caught_by_the_checksum(local_stores, tmp_path):
    data = _saved(local_stores, tmp_path)
    flipped = data.replace(b"episode_00000.zarr", b"episode_00001.zarr", 1)  # '0' -> '1' is one bit
    assert sum(bin(a ^ b).count("1") for a, b in zip(data, flipped, strict=True)) == 1
    (tmp_path / "bad.zti").write_bytes(flipped)
    with pytest.raises(ValueError, match=r"bad.zti: corrupt index header \(it does not match its checksum\)"):
        SelectionIndex.load(tmp_path / "bad.zti")


def test_edited_arrays_table_is_rejected(local_stores, tmp_path):
    data = _saved(local_stores, tmp_path)
    edited = data.replace(b'"shape":[10,', b'"shape":[99,')
    assert edited != data and len(edited) == len(data)
    (tmp_path / "bad.zti").write_bytes(edited)
    with pytest.raises(ValueError, match=r"bad.zti: corrupt index header \(it does not match its checksum\)"):
        SelectionIndex.load(tmp_path / "bad.zti")
    (tmp_path / "bad.zti").write_bytes(resummed(edited))  # edited with care: the fingerprints still tell
    with pytest.raises(
        ValueError, match=r"bad.zti: corrupt index header \(arrays do not match fingerprints\)"
    ):
        SelectionIndex.load(tmp_path / "bad.zti")


@pytest.mark.parametrize(
    ("row", "field", "value", "message"),
    [
        (3, "start", -3, r"row 3 \(start -3, length 0\) is not an item of array 'data/camera0_rgb'"),
        (29, "start", 10, r"row 29 \(start 10, length 0\) is not an item"),
        (5, "length", 1 << 20, r"row 5 \(start 5, length 1048576\) is not an item"),
        (12, "array", 3, r"row 12: array id 3 is not in the index's 3 arrays"),
    ],
    ids=["negative-start", "start-past-end", "flipped-length", "array-past-table"],
)
def test_rows_outside_their_array_are_rejected_on_load(local_stores, tmp_path, row, field, value, message):
    data = bytearray(_saved(local_stores, tmp_path))
    (header_length,) = struct.unpack("<Q", data[16:24])
    rows = np.frombuffer(data, dtype=ROW_DTYPE, offset=rows_offset(header_length), count=30)
    rows = rows.copy()
    rows[field][row] = value
    data[rows_offset(header_length) : rows_offset(header_length) + rows.nbytes] = rows.tobytes()
    (tmp_path / "bad.zti").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"bad.zti: corrupt index \({message}"):
        SelectionIndex.load(tmp_path / "bad.zti")


def test_a_window_row_must_show_a_frame_of_its_episode(local_stores):
    index = SelectionIndex.build(local_stores, array=ARRAY, window=4, pad_before=3)
    rows = index.rows.copy()
    rows["start"][0] = -4  # a window of padding only
    with pytest.raises(ValueError, match=r"row 0 \(start -4, length 4\) is not a 4-frame window of episode"):
        SelectionIndex(index.stores, index.arrays, rows)
    rows = index.rows.copy()
    rows["length"][7] = 5  # one window of another length
    with pytest.raises(ValueError, match=r"row 7 \(start \d+, length 5\) is not a 4-frame window"):
        SelectionIndex(index.stores, index.arrays, rows)


def test_a_fifo_or_a_deeply_nested_header_is_a_clear_error(local_stores, tmp_path):
    fifo = tmp_path / "pipe.zti"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"pipe.zti: not a zarr_torch index file \(not a regular file\)"):
        SelectionIndex.load(fifo)  # would block for ever waiting for a writer
    data = _saved(local_stores, tmp_path)
    (length,) = struct.unpack("<Q", data[16:24])
    body = b"[" * 100_000 + b"]" * 100_000
    nested = data[:16] + struct.pack("<Q", len(body)) + body
    nested += bytes(rows_offset(len(body)) - len(nested)) + data[rows_offset(length) :]
    (tmp_path / "deep.zti").write_bytes(resummed(nested))
    with pytest.raises(ValueError, match=r"deep.zti: corrupt index header \(RecursionError"):
        SelectionIndex.load(tmp_path / "deep.zti")


def test_a_crafted_file_with_credentials_in_a_uri_is_refused_without_showing_them(local_stores, tmp_path):
    data = _saved(local_stores, tmp_path)
    source = built(local_stores).stores[0].source.encode()
    crafted = data.replace(b'"source":"' + source, b'"source":"s3://AKIAEXAMPLE:s3cr3tpass@bucket/x', 1)
    (length,) = struct.unpack("<Q", data[16:24])
    grown = len(crafted) - len(data)
    crafted = crafted[:16] + struct.pack("<Q", length + grown) + crafted[24 : 24 + length + grown]
    crafted += bytes(rows_offset(length + grown) - len(crafted)) + data[rows_offset(length) :]
    (tmp_path / "creds.zti").write_bytes(resummed(crafted))
    with pytest.raises(ValueError, match=r"has credentials in its URI") as caught:
        SelectionIndex.load(tmp_path / "creds.zti")
    assert "s3cr3tpass" not in str(caught.value) and "AKIAEXAMPLE" not in str(caught.value)


def test_rows_start_on_a_page(local_stores, tmp_path):
    data = _saved(local_stores, tmp_path)
    assert data.startswith(MAGIC)
    (header_length,) = struct.unpack("<Q", data[16:24])
    offset = rows_offset(header_length)
    assert offset % 4096 == 0 and len(data) == offset + 30 * 16 + 3 * TABLE_DTYPE.itemsize
    rows = np.frombuffer(data, dtype=ROW_DTYPE, offset=offset, count=30)
    np.testing.assert_array_equal(rows, built(local_stores).rows)


# -- verify -----------------------------------------------------------------------------


def test_verify_names_changed_and_vanished_stores(tmp_path):
    root = str(tmp_path / "stores")
    uris = write_stores(root, stores=4, frames=8, size=SIZE, chunk=4)
    built(root).save(tmp_path / "f.zti")
    index = SelectionIndex.load(tmp_path / "f.zti")
    assert index.verify() == []
    ZarrFrameDataset(index)[9]  # this process now holds a handle on store 1's old metadata
    write_store(uris[1], 1, [8], size=SIZE, chunk=2, overwrite=True)  # same shape, new chunks
    write_store(uris[2], 2, [11], size=SIZE, chunk=4, overwrite=True)  # new shape
    shutil.rmtree(uris[3])
    assert index.verify() == uris[1:]


def rewrite_metadata(store: str, edit) -> None:
    """Replace the camera array's ``zarr.json`` in ``store`` by ``edit(its metadata)`` (text)."""
    path = f"{store}/{ARRAY}/zarr.json"
    with open(path) as f:
        text = edit(json.load(f))
    with open(path, "w") as f:
        f.write(text)


UNREADABLE = r"unreadable Zarr metadata of 'data/camera0_rgb' in store '.*episode_00001.zarr': .*"
BROKEN_METADATA = {
    "invalid-json": (lambda m: "{not json", UNREADABLE + "JSONDecodeError"),
    "unknown-dtype": (lambda m: json.dumps({**m, "data_type": "float1024"}), UNREADABLE + "float1024"),
    "negative-shape": (
        lambda m: json.dumps({**m, "shape": [-6, *m["shape"][1:]]}),
        UNREADABLE + "non-negative",
    ),
    "10^15-frames": (  # named, never allocated (16 PiB of rows)
        lambda m: json.dumps({**m, "shape": [10**15, *m["shape"][1:]]}),
        r"over the limit of 4294967296: array 'data/camera0_rgb' in store '.*episode_00001.zarr'",
    ),
}


@pytest.mark.parametrize("broken", list(BROKEN_METADATA))
def test_broken_metadata_is_named_by_build_and_changed_for_verify(local_stores, broken):
    index = built(local_stores)
    edit, message = BROKEN_METADATA[broken]
    rewrite_metadata(f"{local_stores}/episode_00001.zarr", edit)
    assert index.verify() == [f"{local_stores}/episode_00001.zarr"]
    with pytest.raises(ValueError, match=message):
        built(local_stores)


def test_validate_names_a_dtype_change_as_verify_does(local_stores):
    index = built(local_stores)
    uri = f"{local_stores}/episode_00001.zarr"
    old = zarr.open_array(f"{uri}/{ARRAY}", mode="r")
    zarr.create_array(uri, name=ARRAY, data=old[:].astype("uint16"), chunks=old.chunks, overwrite=True)
    assert index.verify() == [uri]
    with pytest.raises(
        ValueError, match=r"episode_00001.zarr' has dtype uint16, but the index expects uint8"
    ):
        index.validate()


def test_verify_counts_an_array_turned_group_as_changed(local_stores):
    index = built(local_stores)
    uri = index.stores[0].uri
    shutil.rmtree(f"{uri}/{ARRAY}")
    zarr.open_group(f"{uri}/{ARRAY}", mode="w")
    assert index.verify() == [uri]


# -- S3 and credentials -----------------------------------------------------------------


def test_s3_build_save_load_verify_and_no_credentials_saved(s3_bucket, s3_options, tmp_path):
    planted = {**s3_options, "key": "AKIAPLANTEDKEY0001", "secret": "planted/secret+value/0123456789"}
    uris = write_stores(f"{s3_bucket}/eps", stores=3, frames=6, size=SIZE, chunk=4, storage_options=planted)
    index = SelectionIndex.build(f"{s3_bucket}/eps", array=ARRAY, media="image", storage_options=planted)
    assert [s.uri for s in index.stores] == uris
    path = tmp_path / "s3.zti"
    index.save(path)
    data = path.read_bytes()
    for value in [
        planted["key"],
        planted["secret"],
        s3_options["client_kwargs"]["endpoint_url"],
        "eu-west-1",
    ]:
        assert value.encode() not in data, f"{value!r} was written to the index file"
    loaded = SelectionIndex.load(path, storage_options=planted)
    assert list(loaded) == list(index)
    np.testing.assert_array_equal(pixels(loaded), reference(3, 6))
    np.testing.assert_array_equal(pixels(SelectionIndex.load(path), storage_options=planted), reference(3, 6))
    assert loaded.verify() == []
    write_store(uris[0], 0, [7], size=SIZE, chunk=4, storage_options=planted, overwrite=True)
    assert loaded.verify() == [uris[0]]


def test_credentials_in_a_uri_are_never_saved(local_stores, tmp_path):
    index = built(local_stores)
    leaky = SelectionIndex(
        [ZarrStore(uri="s3://AKIAKEY:topsecret@bucket/ep.zarr")], index.arrays[:1], index.rows[:2]
    )
    with pytest.raises(
        ValueError, match=r"store 's3://\*\*\*@bucket/ep.zarr' has credentials in its URI"
    ) as err:
        leaky.save(tmp_path / "leak.zti")
    assert "topsecret" not in str(err.value)
    assert not (tmp_path / "leak.zti").exists()


# -- command line -----------------------------------------------------------------------


def test_cli_build_info_verify(tmp_path, capsys):
    root = str(tmp_path / "stores")
    uris = write_stores(root, stores=3, frames=10, size=SIZE, chunk=4)
    out = str(tmp_path / "frames.zti")
    assert main(["index", "build", root, "--array", ARRAY, "--media", "image", "-o", out]) == 0
    size = (tmp_path / "frames.zti").stat().st_size
    assert f"{out}: 3 stores, 3 arrays, 30 rows, {size} bytes" in capsys.readouterr().out
    np.testing.assert_array_equal(pixels(SelectionIndex.load(out)), reference(3, 10))

    assert main(["index", "info", out]) == 0
    printed = capsys.readouterr().out
    assert f"format 2, 3 stores, 3 arrays, 30 rows, {size} bytes" in printed
    assert f"{ARRAY}  media=image dtype=uint8 item=({SIZE}, {SIZE}, 3)  3 arrays, 30 rows" in printed

    assert main(["index", "verify", out, "--storage-options", "{}"]) == 0
    assert "0 of 3 stores changed" in capsys.readouterr().out
    write_store(uris[2], 2, [4], size=SIZE, overwrite=True)
    assert main(["index", "verify", out]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"changed: {uris[2]}",
        "1 of 3 stores changed since the index was built",
    ]


def test_cli_build_on_s3_with_storage_options(s3_bucket, s3_options, tmp_path, capsys):
    write_stores(f"{s3_bucket}/eps", stores=2, frames=5, size=SIZE, storage_options=s3_options)
    out = str(tmp_path / "s3.zti")
    options = json.dumps(s3_options)
    assert (
        main(
            ["index", "build", f"{s3_bucket}/eps", "--array", ARRAY, "-o", out, "--storage-options", options]
        )
        == 0
    )
    assert "2 stores, 2 arrays, 10 rows" in capsys.readouterr().out
    assert s3_options["secret"].encode() not in (tmp_path / "s3.zti").read_bytes()
    assert main(["index", "verify", out, "--storage-options", options]) == 0
