"""datachain interop with the real datachain package: records both ways, pixel-exact."""


import subprocess
import sys

import numpy as np
import pytest
from checks import assert_every_frame_once
from conftest import SIZE, reference
from torch.utils.data import DataLoader

from zarr_torch import SelectionIndex, ZarrFrameDataset
from zarr_torch.interop import records_to_columns
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


def test_records_back_into_datachain(frames_chain, dc):
    index = SelectionIndex.from_datachain(frames_chain, "frame")[::3]
    records = list(index.to_records())
    assert records[1] == {"uri": index.stores[0].uri, "array": ARRAY, "index": [3], "media": "image"}
    back = dc.read_values(**records_to_columns(records), in_memory=True)
    assert back.to_list("uri", "array", "index") == [(r["uri"], r["array"], r["index"]) for r in records]


def test_core_never_imports_datachain():
    code = "import sys, zarr_torch; print('datachain' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
