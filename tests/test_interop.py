"""datachain interop with the real datachain package: records both ways, pixel-exact."""

import subprocess
import sys

import numpy as np
import pytest
from checks import assert_every_frame_once
from conftest import SIZE, reference
from torch.utils.data import DataLoader

from zarr_torch import SelectionIndex, ZarrFrameDataset
from zarr_torch.synth import write_stores

ARRAY = "data/camera0_rgb"
STORES, FRAMES = 3, 8


@pytest.fixture
def dc(tmp_path, monkeypatch):
    """datachain, keeping its database under tmp_path."""
    monkeypatch.setenv("DATACHAIN_ROOT_DIR", str(tmp_path / ".datachain"))
    monkeypatch.setenv("DATACHAIN_SYSTEM_CONFIG_DIR", str(tmp_path / ".datachain-system"))
    import datachain

    return datachain


@pytest.fixture
def frames_chain(dc, tmp_path):
    """dc.read_zarr over synthetic stores, mapped to one ZarrSelection per frame."""
    from datachain.lib.zarr import ZarrSelection, ZarrStore

    write_stores(str(tmp_path / "stores"), stores=STORES, frames=FRAMES, size=SIZE, chunk=4)

    def frames(zarr: ZarrStore):
        arr = zarr.get_array(ARRAY)
        for t in range(arr.shape[0]):
            yield arr.select(t, media="image")

    return (
        dc.read_zarr(str(tmp_path / "stores"), in_memory=True)
        .order_by("zarr.file.path")
        .gen(frame=frames, output=ZarrSelection)
    )


def test_chain_to_dataset_keeps_order_and_pixels(frames_chain):
    sels = frames_chain.to_values("frame")
    ds = ZarrFrameDataset.from_datachain(frames_chain, "frame")
    assert len(ds) == len(sels) == STORES * FRAMES
    for i in (0, 5, 13, 23):
        np.testing.assert_array_equal(ds[i].numpy(), np.asarray(sels[i].read()))
        assert ds.index[i].index == sels[i].index and ds.index[i].array.path == ARRAY
    loader = DataLoader(
        ds, batch_size=5, shuffle=True, num_workers=2, multiprocessing_context="spawn", timeout=120
    )
    assert_every_frame_once(loader, reference(STORES, FRAMES), FRAMES)


def test_filtered_chain(frames_chain, dc):
    odd = frames_chain.filter(dc.C("frame.index") != [0])  # drop each store's first frame
    index = SelectionIndex.from_datachain(odd, "frame")
    assert len(index) == STORES * (FRAMES - 1)
    assert [sel.index for sel in index][:3] == [[1], [2], [3]]


def test_stores_and_arrays_columns(frames_chain, dc, tmp_path):
    stores_chain = dc.read_zarr(str(tmp_path / "stores"), in_memory=True).order_by("zarr.file.path")
    by_store = SelectionIndex.from_datachain(stores_chain, "zarr", array=ARRAY)
    assert len(by_store) == STORES * FRAMES
    np.testing.assert_array_equal(ZarrFrameDataset(by_store)[9].numpy(), reference(STORES, FRAMES)[9])


def test_wrong_column_type_is_named(frames_chain, dc):
    chain = dc.read_values(n=[1, 2], in_memory=True)
    with pytest.raises(
        TypeError,
        match="column 'n' must hold one of datachain's ZarrSelection, ZarrArray or ZarrStore, not int",
    ):
        SelectionIndex.from_datachain(chain, "n")


def test_records_round_trip_through_datachain(frames_chain):
    """datachain's ZarrSelection -> zarr_torch index -> records -> datachain, unchanged."""
    from datachain.lib.zarr import ZarrSelection as DcSelection

    originals = frames_chain.to_values("frame")
    index = SelectionIndex.from_datachain(frames_chain, "frame")
    records = list(index.to_records())
    back = [DcSelection.model_validate(r) for r in records]
    assert [b.model_dump() for b in back] == [o.model_dump() for o in originals]
    assert records[9]["array"]["store"] == {
        "file": {"source": originals[9].array.store.source, "path": originals[9].array.store.path}
    }
    chain = index[::3].to_datachain("frame", in_memory=True)
    again = chain.to_values("frame")
    assert [a.index for a in again] == [o.index for o in originals[::3]]
    for a, o in zip(again, originals[::3], strict=True):
        np.testing.assert_array_equal(a.read(), o.read())


def test_a_datachain_record_validates_unchanged_and_ours_load_in_datachain(frames_chain):
    from datachain.lib import zarr as dcz

    from zarr_torch import ZarrSelection

    theirs = frames_chain.to_values("frame")[5]
    record = theirs.model_dump()  # File fields and all: size, etag, last_modified, ...
    assert {"size", "etag", "last_modified"} <= set(record["array"]["store"]["file"])
    ours = ZarrSelection.model_validate(record)
    assert (ours.array.store.source, ours.array.store.path) == (
        theirs.array.store.source,
        theirs.array.store.path,
    )
    np.testing.assert_array_equal(ours.read(), np.asarray(theirs.read()))
    store = ours.array.store
    for model, dc_model in [
        (store, dcz.ZarrStore),
        (store.get_info(), dcz.ZarrInfo),
        (ours.array, dcz.ZarrArray),
        (ours, dcz.ZarrSelection),
    ]:
        loaded = dc_model.model_validate(model.model_dump())  # and back, unchanged
        assert type(model).model_validate(loaded.model_dump()) == model
    assert dcz.ZarrSelection.model_validate(ours.model_dump()).read().tolist() == ours.read().tolist()


def test_multi_axis_records_round_trip(tmp_path):
    import zarr
    from datachain.lib.zarr import ZarrSelection as DcSelection

    values = np.arange(2 * 3 * 4 * 5 * 6, dtype="u2").reshape(2, 3, 4, 5, 6)
    zarr.create_array(str(tmp_path / "img.zarr"), data=values, chunks=(1, 1, 2, 5, 3))
    index = SelectionIndex.build(str(tmp_path / "img.zarr"), item_axes=3)
    records = list(index.to_records())
    assert [r["index"] for r in records[:2]] == [[0, 0, 0], [0, 0, 1]] and records[-1]["index"] == [1, 2, 3]
    picked = [DcSelection.model_validate(r) for r in records[::5]]
    for sel in picked:
        np.testing.assert_array_equal(np.asarray(sel.read()), values[tuple(sel.index)])


def test_core_never_imports_datachain():
    code = "import sys, zarr_torch; print('datachain' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
