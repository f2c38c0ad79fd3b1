"""The seed API: ZarrStore, ZarrInfo, ZarrArray, ZarrSelection and read_zarr."""

from __future__ import annotations

import io

import numpy as np
import pytest
import zarr
from checks import roundtrip_pickle
from conftest import SIZE
from PIL import Image

from zarr_torch import ZarrArray, ZarrSelection, ZarrStore, read_zarr
from zarr_torch.synth import make_actions, make_frames, write_store, write_stores

ARRAY = "data/camera0_rgb"


@pytest.fixture
def store(tmp_path) -> ZarrStore:
    uri = write_store(str(tmp_path / "ep.zarr"), 3, [6, 4], size=SIZE, chunk=4)
    return ZarrStore(uri=uri)


def test_info(store):
    info = store.get_info()
    assert info.zarr_format == 3
    assert info.arrays == ["data/action", ARRAY, "data/robot0_eef_pos", "meta/episode_ends"]
    assert info.attrs == {"synth_store": 3}


def test_info_v2(tmp_path):
    info = ZarrStore(uri=write_store(str(tmp_path / "v2.zarr"), 0, [3], zarr_format=2)).get_info()
    assert info.zarr_format == 2 and ARRAY in info.arrays


def test_get_arrays_is_recursive(store):
    arrays = {a.path: a for a in store.get_arrays()}
    assert set(arrays) == {"data/action", ARRAY, "data/robot0_eef_pos", "meta/episode_ends"}
    rgb = arrays[ARRAY]
    assert rgb.shape == [10, SIZE, SIZE, 3] and rgb.chunks == [4, SIZE, SIZE, 3]
    assert rgb.dtype == "uint8" and rgb.store == store


def test_get_array_and_read(store):
    rgb = store.get_array(ARRAY)
    np.testing.assert_array_equal(rgb.read(), make_frames(3, 10, SIZE))
    np.testing.assert_array_equal(rgb.read(np.s_[2:5, 0]), make_frames(3, 10, SIZE)[2:5, 0])
    np.testing.assert_array_equal(store.get_array("data/action").read(), make_actions(3, 10))


def test_array_only_store(tmp_path):
    arr = zarr.create_array(str(tmp_path / "plain.zarr"), shape=(5, 2), chunks=(2, 2), dtype="i4")
    arr[:] = np.arange(10).reshape(5, 2)
    store = ZarrStore(uri=str(tmp_path / "plain.zarr"))
    assert store.get_info().arrays == [""]
    np.testing.assert_array_equal(store.get_array().select(4).read(), [8, 9])


def test_get_array_of_a_group_or_missing_path(store):
    with pytest.raises(ValueError, match=r"'data' is not a Zarr array in store '.*ep.zarr': it is a group"):
        store.get_array("data")
    with pytest.raises(ValueError, match="'' is not a Zarr array"):
        store.get_array()
    with pytest.raises(FileNotFoundError, match="'data/nope' in store"):
        store.get_array("data/nope")


def test_select_drops_the_leading_axis(store):
    sel = store.get_array(ARRAY).select(5, media="image")
    assert sel.index == [5] and sel.media == "image"
    frame = sel.read()
    assert frame.shape == (SIZE, SIZE, 3)
    np.testing.assert_array_equal(frame, make_frames(3, 10, SIZE)[5])
    assert store.get_array(ARRAY).select([5, 1]).read().shape == (SIZE, 3)


def test_select_counts_negative_indices_from_the_end_and_names_one_out_of_range(store):
    arr = store.get_array(ARRAY)
    last = arr.select(-1)
    np.testing.assert_array_equal(last.read(), make_frames(3, 10, SIZE)[9])
    for bad in (10, -11, [1, 2, 3, 0, 0]):
        with pytest.raises(
            IndexError, match=r"index \[.*\] .* array 'data/camera0_rgb' in store '.*ep.zarr'"
        ):
            arr.select(bad)
    made_by_hand = ZarrSelection(array=arr, index=[10])  # records can come from anywhere
    with pytest.raises(IndexError, match=r"index \[10\] is out of range for array 'data/camera0_rgb'"):
        made_by_hand.read()


@pytest.mark.parametrize(
    ("fmt", "magic"),
    [
        ("PNG", b"\x89PNG"),
        ("png", b"\x89PNG"),
        (".png", b"\x89PNG"),
        ("JPEG", b"\xff\xd8"),
        ("jpg", b"\xff\xd8"),
        (".jpg", b"\xff\xd8"),
    ],
)
def test_read_bytes_formats(store, fmt, magic):
    data = store.get_array(ARRAY).select(2, media="image").read_bytes(fmt)
    assert data.startswith(magic)
    decoded = np.asarray(Image.open(io.BytesIO(data)))
    assert decoded.shape == (SIZE, SIZE, 3)
    if magic == b"\x89PNG":
        np.testing.assert_array_equal(decoded, make_frames(3, 10, SIZE)[2])


def test_read_bytes_rejects_audio(store):
    with pytest.raises(ValueError, match="supports image media, not 'audio'"):
        store.get_array(ARRAY).select(2, media="audio").read_bytes()


def test_read_bytes_casts_floats(tmp_path):
    values = np.linspace(0, 255, 4 * 4 * 3).reshape(1, 4, 4, 3).astype("float32")
    zarr.create_array(str(tmp_path / "f.zarr"), data=values)
    data = ZarrStore(uri=str(tmp_path / "f.zarr")).get_array().select(0).read_bytes()
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), values[0].astype("uint8"))


def test_models_pickle_and_json(store):
    sel = store.get_array(ARRAY).select(7, media="image")
    copy, _ = roundtrip_pickle(sel)
    assert copy == sel
    again = ZarrSelection.model_validate_json(sel.model_dump_json())
    assert again == sel
    np.testing.assert_array_equal(again.read(), make_frames(3, 10, SIZE)[7])
    arr = ZarrArray.model_validate_json(sel.array.model_dump_json())
    assert arr == sel.array


def test_repr_hides_credentials():
    store = ZarrStore(
        uri="s3://user:pa55word@bucket/ep.zarr",
        storage_options={
            "key": "AKIAPLANTED",
            "secret": "s3cr3t-planted",
            "client_kwargs": {"region_name": "eu-west-1"},
        },
    )
    shown = repr(store) + str(store) + repr(ZarrArray(store=store).select(0))
    for secret in ("AKIAPLANTED", "s3cr3t-planted", "pa55word"):
        assert secret not in shown
    assert "eu-west-1" in shown


def test_read_zarr_nested_and_array_only(tmp_path):
    root = tmp_path / "root"
    write_stores(str(root), stores=4, frames=2, size=4, nested=True)
    zarr.create_array(str(root / "deep" / "deeper" / "plain.zarr"), shape=(3,), dtype="u1")
    found = [s.uri for s in read_zarr(str(root))]
    assert found == sorted(
        [
            *(str(root / f"part{i % 2}" / f"episode_{i:05d}.zarr") for i in range(4)),
            str(root / "deep" / "deeper" / "plain.zarr"),
        ]
    )


def test_read_zarr_of_a_store_root_is_that_store(store):
    assert [s.uri for s in read_zarr(store.uri)] == [store.uri]


def test_read_zarr_protocols(tmp_path):
    write_stores(str(tmp_path / "s"), stores=2, frames=2, size=4)
    found = read_zarr(f"file://{tmp_path}/s")
    assert [(s.source, s.path) for s in found] == [
        (f"file://{tmp_path}/s", f"episode_0000{i}.zarr") for i in range(2)
    ]
    assert [s.uri for s in found] == [f"{tmp_path}/s/episode_0000{i}.zarr" for i in range(2)]
    assert found[1].get_array(ARRAY).shape == [2, 4, 4, 3]


def test_read_zarr_memory():
    write_stores("memory://readzarr", stores=2, frames=3, size=4)
    found = read_zarr("memory://readzarr")
    assert [s.uri for s in found] == [f"memory://readzarr/episode_0000{i}.zarr" for i in range(2)]
    np.testing.assert_array_equal(found[1].get_array(ARRAY).select(2).read(), make_frames(1, 3, 4)[2])


def test_read_zarr_s3(s3_bucket, s3_options):
    write_stores(f"{s3_bucket}/a/b", stores=3, frames=2, size=4, storage_options=s3_options, nested=True)
    found = read_zarr(f"{s3_bucket}/a", s3_options)
    assert len(found) == 3 and all(s.uri.startswith(f"{s3_bucket}/a/b/part") for s in found)
    assert found[0].storage_options == s3_options
    assert found[1].uri == f"{s3_bucket}/a/b/part0/episode_00002.zarr"
    np.testing.assert_array_equal(found[1].get_array(ARRAY).select(1).read(), make_frames(2, 2, 4)[1])


def test_read_zarr_plain_and_missing_folders(tmp_path):
    (tmp_path / "plain" / "a").mkdir(parents=True)
    assert read_zarr(str(tmp_path / "plain")) == []
    with pytest.raises(FileNotFoundError, match=r"no directory at .*missing"):
        read_zarr(str(tmp_path / "missing"))


# -- datachain's own expectations (its tests/unit/lib/test_zarr.py), on zarr_torch's models --


def _dc_store(root, who, n=4):
    g = zarr.open_group(str(root), mode="w")
    g.attrs["who"] = who
    g.create_array("images", shape=(n, 8, 8), chunks=(1, 8, 8), dtype="uint8")
    g["images"][:] = np.arange(n * 8 * 8).reshape(n, 8, 8).astype("uint8")
    g.create_group("labels").create_array("y", shape=(n,), dtype="int64")
    g["labels/y"][:] = np.arange(n)


@pytest.fixture
def dc_store(tmp_path) -> ZarrStore:
    _dc_store(tmp_path / "s.zarr", "s")
    (store,) = read_zarr((tmp_path / "s.zarr").as_uri())
    return store


def test_datachain_read_zarr_one_store_per_root_at_any_depth(tmp_path):
    for name in ("scan001", "scan002", "scan003"):
        _dc_store(tmp_path / f"{name}.zarr", name)
    assert [s.path for s in read_zarr(tmp_path.as_uri())] == ["scan001.zarr", "scan002.zarr", "scan003.zarr"]
    _dc_store(tmp_path / "a" / "b" / "deep.zarr", "deep")
    assert "a/b/deep.zarr" in [s.path for s in read_zarr(tmp_path.as_uri())]


def test_datachain_read_zarr_of_a_store_directory(dc_store):
    assert dc_store.path == "s.zarr" and dc_store.source.startswith("file://")


def test_datachain_get_info_arrays_and_read(dc_store):
    info = dc_store.get_info()
    assert (info.zarr_format, sorted(info.arrays), info.attrs) == (3, ["images", "labels/y"], {"who": "s"})
    arrays = {a.path: a for a in dc_store.get_arrays()}
    assert (arrays["images"].shape, arrays["images"].chunks, arrays["images"].dtype) == (
        [4, 8, 8],
        [1, 8, 8],
        "uint8",
    )
    assert arrays["labels/y"].shape == [4]
    data = dc_store.get_array("images").read()
    assert data.shape == (4, 8, 8) and int(data.flat[0]) == 0
    assert dc_store.get_array("images").read(np.s_[0]).shape == (8, 8)
    assert dc_store.get_array("labels/y").read().tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="not a Zarr array"):
        dc_store.get_array("labels")


def test_datachain_select_and_read_bytes(dc_store, tmp_path):
    selection = dc_store.get_array("images").select(0)
    assert selection.index == [0] and selection.read().shape == (8, 8)
    assert dc_store.get_array("images").select([1]).read().shape == (8, 8)
    assert dc_store.get_array("images").select(0, media="image").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="supports image media"):
        dc_store.get_array("images").select(0, media="audio").read_bytes()


def test_store_file_is_datachains_split():
    for uri, source, path in [
        ("s3://bucket/scan.zarr", "s3://bucket", "scan.zarr"),
        ("s3://bucket", "s3://bucket", ""),
        ("s3://bucket/", "s3://bucket", ""),
        ("/data/a/ep.zarr", "file:///data/a", "ep.zarr"),
        ("zip::/data/ep.zarr.zip", "zip::file:///data", "ep.zarr.zip"),
    ]:
        store = ZarrStore(uri=uri)
        assert (store.source, store.path) == (source, path)
        assert store.model_dump() == {"file": {"source": source, "path": path}}
        assert ZarrStore.model_validate(store.model_dump()) == store
    assert ZarrStore(uri="file:///data/a/ep.zarr").uri == "/data/a/ep.zarr"


def test_read_zarr_takes_lists_and_globs(tmp_path):
    write_stores(str(tmp_path / "a"), stores=3, frames=2, size=4)
    write_stores(str(tmp_path / "b"), stores=2, frames=2, size=4)
    both = read_zarr([str(tmp_path / "a"), tmp_path / "b"])
    assert [s.uri for s in both] == sorted(
        [
            *(f"{tmp_path}/a/episode_0000{i}.zarr" for i in range(3)),
            *(f"{tmp_path}/b/episode_0000{i}.zarr" for i in range(2)),
        ]
    )
    globbed = read_zarr([f"{tmp_path}/*/episode_00001.zarr", str(tmp_path / "a" / "episode_00001.zarr")])
    assert [s.uri for s in globbed] == [
        f"{tmp_path}/a/episode_00001.zarr",
        f"{tmp_path}/b/episode_00001.zarr",
    ]
    with pytest.raises(FileNotFoundError, match=r"no path matches .*nothing"):
        read_zarr(str(tmp_path / "nothing*"))


def test_a_zarr_store_object_is_a_source(tmp_path):
    from zarr.storage import FsspecStore, LocalStore, MemoryStore, ZipStore

    from zarr_torch import ZarrFrameDataset
    from zarr_torch.synth import zip_store

    uri = write_store(str(tmp_path / "ep.zarr"), 2, [5], size=SIZE)
    zipped = zip_store(uri, str(tmp_path / "ep.zarr.zip"))
    expected = make_frames(2, 5, SIZE)
    for store in [
        ZipStore(zipped, mode="r"),
        LocalStore(uri, read_only=True),
        FsspecStore.from_url(f"zip::file://{zipped}", read_only=True),
    ]:
        ds = ZarrFrameDataset(store, array=ARRAY)
        np.testing.assert_array_equal(np.stack([ds[i].numpy() for i in range(len(ds))]), expected)
    with pytest.raises(TypeError, match="a MemoryStore cannot be reopened in DataLoader workers"):
        ZarrFrameDataset(MemoryStore(), array=ARRAY)
