"""ZarrFrameDataset: every frame once, pixel-exact, through real DataLoader workers."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest
import torch
from checks import CollateWithStats, assert_every_frame_once, roundtrip_pickle
from conftest import SIZE, reference
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from zarr_torch import SelectionIndex, ZarrFrameDataset, ZarrStore, read_zarr
from zarr_torch.synth import write_stores

STORES, FRAMES = 3, 20
ARRAY = "data/camera0_rgb"


def loader(ds: ZarrFrameDataset, context: str, workers: int = 2, **kwargs) -> DataLoader:
    ctx = multiprocessing.get_context(context) if workers else None
    return DataLoader(
        ds,
        batch_size=7,
        shuffle=True,
        num_workers=workers,
        multiprocessing_context=ctx,
        timeout=120 if workers else 0,
        **kwargs,
    )


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_every_frame_once_local(tmp_path, layout, context):
    root = str(tmp_path / "stores")
    write_stores(root, stores=STORES, frames=FRAMES, size=SIZE, **layout)
    ds = ZarrFrameDataset(root, array=ARRAY, media="image")
    assert len(ds) == STORES * FRAMES
    served = list(loader(ds, context, collate_fn=CollateWithStats(ds)))
    assert_every_frame_once((batch for batch, _ in served), reference(STORES, FRAMES), FRAMES)
    last = served[-1][1]
    served_fast = last["chunks_decoded_direct"] + last["chunks_read_by_zarrs"]
    assert served_fast > 0, "zarr_torch's own decoders (or zarrs) served the workers' batches"
    assert last["chunks_decoded_by_zarr"] == 0


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_every_frame_once_s3_parent_touched(s3_bucket, s3_options, layout, context):
    write_stores(
        f"{s3_bucket}/eps", stores=STORES, frames=FRAMES, size=SIZE, storage_options=s3_options, **layout
    )
    ds = ZarrFrameDataset(f"{s3_bucket}/eps", array=ARRAY, storage_options=s3_options)
    # Touch the dataset in the parent first: its handles must not leak into the workers.
    assert len(ds) == STORES * FRAMES
    np.testing.assert_array_equal(ds[0].numpy(), reference(STORES, FRAMES)[0])
    assert_every_frame_once(loader(ds, context), reference(STORES, FRAMES), FRAMES)


def test_item_is_stored_shape_and_dtype(local_stores):
    ds = ZarrFrameDataset(local_stores, array=ARRAY)
    frame = ds[13]
    assert isinstance(frame, torch.Tensor)
    assert frame.shape == (SIZE, SIZE, 3) and frame.dtype == torch.uint8
    np.testing.assert_array_equal(frame.numpy(), reference(3, 10)[13])


def test_getitems_returns_batch_in_order(local_stores):
    ds = ZarrFrameDataset(local_stores, array=ARRAY)
    order = [29, 0, 13, 13, 5, 21]
    batch = ds.__getitems__(order)
    for i, frame in zip(order, batch, strict=True):
        np.testing.assert_array_equal(frame.numpy(), reference(3, 10)[i])


def test_transform_gets_the_numpy_frame(local_stores):
    transform = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    ds = ZarrFrameDataset(local_stores, array=ARRAY, media="image", transform=transform)
    image = ds[4]
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
    expected = torch.from_numpy(reference(3, 10)[4]).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(image.as_subclass(torch.Tensor), expected)


def test_sources_agree(local_stores):
    """A prefix, a list of URIs, a list of stores, selections and an index give one dataset."""
    stores = read_zarr(local_stores)
    uris = [s.uri for s in stores]
    index = SelectionIndex.build(local_stores, array=ARRAY)
    sources = [local_stores, uris, stores, list(index), index]
    for source in sources:
        ds = ZarrFrameDataset(source, array=ARRAY)
        assert len(ds) == 30
        np.testing.assert_array_equal(ds[17].numpy(), reference(3, 10)[17])
        assert ds.index[17].array.store.uri == uris[1]
        assert ds.index[17].index == [7]


def test_index_entry_is_the_selection(local_stores):
    ds = ZarrFrameDataset(local_stores, array=ARRAY, media="image")
    sel = ds.index[25]
    assert sel.array.path == ARRAY and sel.index == [5] and sel.media == "image"
    np.testing.assert_array_equal(sel.read(), ds[25].numpy())


def test_selections_agree_everywhere_and_out_of_range_fails_at_construction(local_stores):
    arr = read_zarr(local_stores)[1].get_array(ARRAY)
    ds = ZarrFrameDataset([arr.select(-1), arr.select(0)])
    expected = reference(3, 10)[[19, 10]]
    np.testing.assert_array_equal(np.stack([ds[0].numpy(), ds[1].numpy()]), expected)
    np.testing.assert_array_equal(ds.index[0].read(), expected[0])  # frame 9, not a fill frame
    assert ds.index[0].index == [9]
    bad = arr.select(0).model_copy(update={"index": [10]})  # a record from elsewhere
    for on_error in ("raise", "skip"):
        with pytest.raises(ValueError, match=r"selection 1: index \[10\] is out of range for array "):
            ZarrFrameDataset([arr.select(1), bad], on_error=on_error)


def test_stores_of_different_frame_shapes_are_named_at_construction(tmp_path):
    from zarr_torch.synth import write_store

    small = write_store(str(tmp_path / "a.zarr"), 0, [3], size=4)
    big = write_store(str(tmp_path / "b.zarr"), 1, [3], size=6)
    with pytest.raises(
        ValueError,
        match=r"store '.*a.zarr' holds items of shape \(4, 4, 3\) and dtype uint8, but array "
        r"'data/camera0_rgb' in store '.*b.zarr' holds items of shape \(6, 6, 3\)",
    ):
        ZarrFrameDataset([small, big], array=ARRAY)
    crop = ZarrFrameDataset([small, big], array=ARRAY, transform=lambda f: torch.from_numpy(f[:4, :4]))
    assert next(iter(DataLoader(crop, batch_size=6))).shape == (6, 4, 4, 3)


def test_pickles_to_records_only(tmp_path):
    root = str(tmp_path / "many")
    write_stores(root, stores=30, frames=100, size=4, chunk=50)
    ds = ZarrFrameDataset(root, array=ARRAY)
    ds[0]  # open handles in this process: they must not be pickled
    copy, size = roundtrip_pickle(ds)
    assert size < 80_000, f"a 3000-frame dataset pickled to {size} bytes"
    np.testing.assert_array_equal(copy[2999].numpy(), ds[2999].numpy())


@pytest.mark.parametrize("bad", [-1, 30, 10_000])
def test_out_of_range_index(local_stores, bad):
    ds = ZarrFrameDataset(local_stores, array=ARRAY)
    with pytest.raises(IndexError, match=f"index {bad} is out of range for a dataset of 30"):
        ds[bad]
    with pytest.raises(IndexError):
        ds.__getitems__([0, bad])


def test_missing_store_is_named(local_stores, tmp_path):
    missing = str(tmp_path / "nowhere.zarr")
    uris = [s.uri for s in read_zarr(local_stores)] + [missing]
    with pytest.raises(FileNotFoundError, match=r"no Zarr store at .*nowhere.zarr"):
        ZarrFrameDataset(uris, array=ARRAY)


def test_missing_array_is_named(local_stores):
    with pytest.raises(FileNotFoundError, match=r"'data/depth' in store .*episode_0000[0-2].zarr"):
        ZarrFrameDataset(local_stores, array="data/depth")


def test_group_where_array_expected(local_stores):
    with pytest.raises(ValueError, match=r"'data' is not a Zarr array in store .*: it is a group"):
        ZarrFrameDataset(local_stores, array="data")


def test_non_zarr_directory(tmp_path):
    (tmp_path / "plain" / "sub").mkdir(parents=True)
    (tmp_path / "plain" / "notes.txt").write_text("not zarr")
    with pytest.raises(ValueError, match=r"no Zarr stores under .*plain"):
        ZarrFrameDataset(str(tmp_path / "plain"), array=ARRAY)
    with pytest.raises(FileNotFoundError, match=r"no Zarr store at .*plain"):
        ZarrFrameDataset([ZarrStore(uri=str(tmp_path / "plain"))], array=ARRAY)


def test_selections_from_a_store_that_vanished(local_stores, tmp_path):
    import shutil

    sels = list(SelectionIndex.build(local_stores, array=ARRAY))
    shutil.rmtree(sels[-1].array.store.uri)
    with pytest.raises(FileNotFoundError, match=r"episode_00002.zarr"):
        ZarrFrameDataset(sels)


# -- zipped stores (UMI's replay buffers) ------------------------------------------------


@pytest.fixture
def zipped(tmp_path) -> tuple[str, list[str]]:
    """Two v2 replay buffers (episodes of 5+3 and 7 frames) zipped as UMI ships them; the
    folder holding the zips, and the directory stores they came from."""
    from zarr_torch.synth import write_store, zip_store

    dirs = [
        write_store(str(tmp_path / "dirs" / f"ep{i}.zarr"), i, lengths, size=SIZE, chunk=2, zarr_format=2)
        for i, lengths in enumerate([[5, 3], [7]])
    ]
    for d in dirs:
        zip_store(d, str(tmp_path / "zips" / (d.rsplit("/", 1)[-1] + ".zip")))
    return str(tmp_path / "zips"), dirs


def every_frame(ds: ZarrFrameDataset) -> np.ndarray:
    return np.stack([t.numpy() for t in ds.__getitems__(list(range(len(ds))))])


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_zipped_stores_read_as_zarr_reads_them_through_workers(zipped, context):
    import zarr

    folder, dirs = zipped
    ds = ZarrFrameDataset(folder, array=ARRAY)
    assert [s.uri for s in ds.index.stores] == [f"{folder}/ep0.zarr.zip", f"{folder}/ep1.zarr.zip"]
    zips = [zarr.storage.ZipStore(f"{folder}/ep{i}.zarr.zip", mode="r") for i in (0, 1)]
    expected = np.concatenate([zarr.open_array(z, path=ARRAY, mode="r")[:] for z in zips])  # zarr's own read
    np.testing.assert_array_equal(every_frame(ds), expected)
    np.testing.assert_array_equal(expected, every_frame(ZarrFrameDataset(dirs, array=ARRAY)))
    loader = DataLoader(
        ds,
        batch_size=4,
        num_workers=2,
        timeout=60,
        multiprocessing_context=context,
        collate_fn=CollateWithStats(ds),
    )
    served = list(loader)
    np.testing.assert_array_equal(torch.cat([batch for batch, _ in served]).numpy(), expected)
    # the workers read the zips' members in place and decoded them themselves
    assert all(s["reads_in_place"] > 0 and s["chunks_decoded_by_zarr"] == 0 for _, s in served)


def test_zipped_stores_by_path_url_windows_and_saved_index(zipped, tmp_path):
    import pathlib

    folder, dirs = zipped
    sources = [f"zip::file://{folder}/ep0.zarr.zip", pathlib.Path(folder) / "ep1.zarr.zip"]
    windows = dict(array=ARRAY, window=3, episode_ends="meta/episode_ends")
    np.testing.assert_array_equal(
        every_frame(ZarrFrameDataset(sources, **windows)), every_frame(ZarrFrameDataset(dirs, **windows))
    )
    SelectionIndex.build(folder, array=ARRAY).save(tmp_path / "zips.zti")
    reloaded = ZarrFrameDataset(SelectionIndex.load(tmp_path / "zips.zti"))
    np.testing.assert_array_equal(every_frame(reloaded), every_frame(ZarrFrameDataset(dirs, array=ARRAY)))


@pytest.mark.parametrize("layout", ["v2-blosc", "v3-sharded"])
def test_zipped_stores_are_read_in_place(tmp_path, layout):
    """Members stored uncompressed are read with positioned reads of the zip file (the
    counter says so), sharded ones by byte ranges of their shard; the pixels are zarr's."""
    import zarr

    from zarr_torch.synth import write_store, zip_store

    options = {"zarr_format": 2, "codec": "blosc"} if layout == "v2-blosc" else {"shard": 8}
    store = write_store(str(tmp_path / "ep.zarr"), 3, [24], size=SIZE, chunk=2, **options)
    zipped = zip_store(store, str(tmp_path / "ep.zarr.zip"))
    ds = ZarrFrameDataset(zipped, array=ARRAY)
    before = ds.stats()
    got = every_frame(ds)
    after = ds.stats()
    np.testing.assert_array_equal(got, zarr.open_array(store, path=ARRAY, mode="r")[:])
    assert after["reads_in_place"] - before["reads_in_place"] >= 12 / (4 if layout == "v3-sharded" else 1)
    if layout == "v3-sharded":
        assert after["shard_indexes_fetched"] - before["shard_indexes_fetched"] == 3


def test_a_zip_of_compressed_members_reads_through_the_store(tmp_path):
    import shutil

    import zarr

    from zarr_torch.synth import write_store

    store = write_store(str(tmp_path / "ep.zarr"), 1, [6], size=SIZE, chunk=2)
    zipped = shutil.make_archive(str(tmp_path / "deflated.zarr"), "zip", store)  # ZIP_DEFLATED members
    ds = ZarrFrameDataset(zipped, array=ARRAY)
    before = ds.stats()["reads_in_place"]
    np.testing.assert_array_equal(every_frame(ds), zarr.open_array(store, path=ARRAY, mode="r")[:])
    assert ds.stats()["reads_in_place"] == before, "compressed members cannot be read in place"


@pytest.mark.parametrize("source", [42, b"data/", [1.5]])
def test_a_source_of_another_type_says_what_is_accepted(source):
    with pytest.raises(TypeError, match=r"a (source is|list of stores holds) (a )?URIs?, (a )?paths?"):
        ZarrFrameDataset(source, array=ARRAY)


def test_forkserver_workers_start_clean_where_fork_would_inherit_threads(local_stores):
    """The README's start method: the parent runs zarr's I/O thread once it has read (where
    Python 3.12 warns that fork() may deadlock); forkserver workers never fork it."""
    import threading
    import warnings

    ds = ZarrFrameDataset(local_stores, array=ARRAY)
    ds[0]
    assert threading.active_count() > 1, "the parent holds running threads"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")  # Python 3.12+ warns "use of fork() may lead to deadlocks"
        loader = DataLoader(ds, batch_size=7, num_workers=2, timeout=60, multiprocessing_context="forkserver")
        got = torch.cat(list(loader)).numpy()
    np.testing.assert_array_equal(got, reference(3, 10))
    assert not [w for w in seen if "fork()" in str(w.message)], "no worker was forked from this process"
