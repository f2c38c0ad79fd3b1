"""Property tests: any valid batch gives exactly the reference frames held in memory;
any invalid one raises IndexError or ValueError, never a crash or a hang."""

from __future__ import annotations

import shutil
import tempfile

import numcodecs
import numpy as np
import zarr
import zarr.testing.strategies as zst
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

from zarr_torch import SelectionIndex, ZarrFrameDataset

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def stores(draw) -> tuple[list[np.ndarray], list[dict]]:
    """1-3 arrays of random length, item shape, dtype and chunking, with random values."""
    dtype = draw(st.sampled_from(["uint8", "int16", "float32"]))
    item = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=3)))
    arrays, layouts = [], []
    for n in draw(st.lists(st.integers(1, 40), min_size=1, max_size=3)):
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        arrays.append((rng.random((n, *item)) * 100).astype(dtype))
        chunk = draw(st.integers(1, 16))
        shard = draw(st.sampled_from([None, chunk * 2]))
        layouts.append({"chunks": (chunk, *item), "shards": None if shard is None else (shard, *item)})
    return arrays, layouts


def write(root: str, arrays: list[np.ndarray], layouts: list[dict]) -> list[str]:
    uris = []
    for i, (values, layout) in enumerate(zip(arrays, layouts, strict=True)):
        uri = f"{root}/s{i}.zarr"
        zarr.create_array(uri, data=values, **layout)
        uris.append(uri)
    return uris


@FUZZ
@given(data=stores(), picks=st.data())
def test_any_valid_batch_is_the_reference(data, picks):
    arrays, layouts = data
    reference = np.concatenate(arrays)
    with tempfile.TemporaryDirectory() as root:
        ds = ZarrFrameDataset(write(root, arrays, layouts))
        assert len(ds) == len(reference)
        batch = picks.draw(st.lists(st.integers(0, len(ds) - 1), max_size=50))
        got = ds.__getitems__(batch)
        assert len(got) == len(batch)
        for i, frame in zip(batch, got, strict=True):
            np.testing.assert_array_equal(frame.numpy(), reference[i])


@FUZZ
@given(data=stores(), picks=st.data())
def test_any_selection_list_is_the_reference(data, picks):
    arrays, layouts = data
    with tempfile.TemporaryDirectory() as root:
        index = SelectionIndex.build(write(root, arrays, layouts))
        order = picks.draw(st.lists(st.integers(0, len(index) - 1), min_size=1, max_size=30))
        selections = [index[i] for i in order]
        ds = ZarrFrameDataset(selections)
        for k, sel in enumerate(selections):
            a = int(sel.array.store.uri.rsplit("/s", 1)[1].split(".")[0])
            np.testing.assert_array_equal(ds[k].numpy(), arrays[a][sel.index[0]])


@FUZZ
@given(data=stores(), picks=st.data())
def test_any_invalid_batch_is_an_index_error(data, picks):
    arrays, layouts = data
    with tempfile.TemporaryDirectory() as root:
        ds = ZarrFrameDataset(write(root, arrays, layouts))
        n = len(ds)
        good = st.integers(0, n - 1)
        bad = st.one_of(st.integers(max_value=-1), st.integers(min_value=n))
        batch = [*picks.draw(st.lists(good, max_size=5)), picks.draw(bad)]
        batch = picks.draw(st.permutations(batch))
        try:
            ds.__getitems__(batch)
        except (IndexError, ValueError):
            pass
        else:
            raise AssertionError(f"batch {batch} of a {n}-frame dataset did not raise")
        for wrong in ([0.5], ["0"], [[0, 1]]):
            try:
                ds.__getitems__(wrong)
            except (IndexError, ValueError):
                pass
            else:
                raise AssertionError(f"{wrong!r} did not raise")


@FUZZ
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=4),
    window=st.integers(1, 6),
    stride=st.integers(1, 3),
    pads=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    chunk=st.integers(1, 5),
    picks=st.data(),
)
def test_any_window_is_the_reference(lengths, window, stride, pads, chunk, picks):
    """Windows against a plain-Python reference: clip each slot to its episode."""
    values = np.arange(sum(lengths) * 2, dtype="int32").reshape(-1, 2)
    ends = np.cumsum(lengths)
    expected = []
    before, after = (min(p, window - 1) for p in pads)  # clamped as Diffusion Policy does
    for first, end in zip([0, *ends[:-1].tolist()], ends.tolist(), strict=True):
        for s in range(first - before, end - window + after + 1, stride):
            expected.append(values[[min(max(t, first), end - 1) for t in range(s, s + window)]])
    with tempfile.TemporaryDirectory() as root:
        zarr.create_array(f"{root}/rb.zarr", name="x", data=values, chunks=(chunk, 2))
        zarr.create_array(f"{root}/rb.zarr", name="ends", data=ends)
        kwargs = {
            "array": "x",
            "window": window,
            "stride": stride,
            "episode_ends": "ends",
            "pad_before": pads[0],
            "pad_after": pads[1],
        }
        if window > max(lengths):
            try:
                ZarrFrameDataset(f"{root}/rb.zarr", **kwargs)
            except ValueError:
                return
            raise AssertionError("a window longer than every episode did not raise")
        ds = ZarrFrameDataset(f"{root}/rb.zarr", **kwargs)
        assert len(ds) == len(expected)
        batch = picks.draw(st.lists(st.integers(0, len(ds) - 1), max_size=20))
        for i, got in zip(batch, ds.__getitems__(batch), strict=True):
            np.testing.assert_array_equal(got.numpy(), expected[i])


# -- any dtype, byte order, codec and shard layout zarr writes ---------------------------

V3_COMPRESSORS = [None, ZstdCodec(level=1), BloscCodec(cname="lz4"), GzipCodec(level=1)]
V2_COMPRESSORS = [None, numcodecs.Zstd(level=1), numcodecs.Blosc(cname="zstd"), numcodecs.GZip(level=1)]


@st.composite
def zarr_arrays(draw) -> str:
    """A store holding one array drawn with ``zarr.testing.strategies``: a numeric dtype of
    either byte order, its values, chunks, shards (v3) and a compressor; its URI."""
    dtype = draw(zst.dtypes().filter(lambda d: d.kind in "biufc"))
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder(draw(st.sampled_from("<>")))
    zarr_format = draw(st.sampled_from([2, 3]))
    shape = (draw(st.integers(1, 12)), *draw(st.lists(st.integers(1, 5), max_size=2)))
    values = draw(zst.numpy_arrays(shapes=st.just(shape), dtype=dtype))
    chunks = draw(zst.chunk_shapes(shape=shape))
    shards = draw(st.none() | zst.shard_shapes(shape=shape, chunk_shape=chunks)) if zarr_format == 3 else None
    compressor = draw(st.sampled_from(V3_COMPRESSORS if zarr_format == 3 else V2_COMPRESSORS))
    uri = f"{tempfile.mkdtemp(prefix='zt-fuzz-')}/a.zarr"
    zarr.create_array(
        uri,
        data=values,
        chunks=chunks,
        shards=shards,
        compressors=compressor,
        zarr_format=zarr_format,
        config={"write_empty_chunks": draw(st.booleans())},
    )
    return uri


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(uri=zarr_arrays(), picks=st.data())
def test_any_zarr_array_reads_as_zarr_reads_it(uri, picks):
    try:
        expected = zarr.open_array(uri, mode="r")[:]
        ds = ZarrFrameDataset([uri])
        batch = picks.draw(st.lists(st.integers(0, len(expected) - 1), min_size=1, max_size=20))
        got = ds.__getitems__(batch)
        for i, frame in zip(batch, got, strict=True):
            assert frame.numpy().dtype == expected.dtype.newbyteorder("=")
            np.testing.assert_array_equal(frame.numpy(), expected[i])
    finally:
        shutil.rmtree(uri.rsplit("/", 1)[0], ignore_errors=True)
