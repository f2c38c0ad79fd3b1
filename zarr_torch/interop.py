"""datachain interop: curate frames in datachain, train on them with zarr_torch, and back.

zarr_torch's models are datachain's records (``ZarrStore`` with a ``file``, ``ZarrArray``,
``ZarrSelection``), so a chain column of them becomes a :class:`SelectionIndex` in one
pass over the chain (``to_values``), keeping the chain's order, and an index's rows
become datachain ``ZarrSelection`` records again (``to_records``, ``to_datachain``).
datachain is imported only here, and only when these functions run
(``pip install 'zarr-torch[datachain]'``).

    chain = dc.read_zarr("data/").gen(frame=frames_of_each_store, output=ZarrSelection)
    index = index_from_datachain(chain, "frame")
    chain_again = to_datachain(index[::10], "frame")
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from zarr_torch.models import ZarrArray, ZarrSelection, ZarrStore

if TYPE_CHECKING:
    from zarr_torch.index import SelectionIndex


def _store(value: Any, storage_options: dict[str, Any]) -> ZarrStore:
    """zarr_torch's store for a datachain ``ZarrStore``: the same ``file``."""
    return ZarrStore(file=value.file, storage_options=storage_options)


def _array(value: Any, storage_options: dict[str, Any]) -> ZarrArray:
    return ZarrArray(
        store=_store(value.store, storage_options),
        path=value.path,
        shape=list(value.shape),
        chunks=None if value.chunks is None else list(value.chunks),
        dtype=value.dtype,
        attrs=dict(value.attrs),
    )


def index_from_datachain(
    chain: Any, column: str, *, array: str = "", storage_options: dict[str, Any] | None = None
) -> SelectionIndex:
    """A :class:`SelectionIndex` of a chain column, in the chain's order.

    The column holds datachain ``ZarrSelection`` values (one row each), ``ZarrArray``
    values (every item on the leading axis) or ``ZarrStore`` values (every item of
    ``array`` in each store). No credentials are taken from datachain: give
    ``storage_options``. Raises ``TypeError`` naming the type of a value of any other kind.
    """
    from datachain.lib.zarr import ZarrArray as DcArray
    from datachain.lib.zarr import ZarrSelection as DcSelection
    from datachain.lib.zarr import ZarrStore as DcStore

    from zarr_torch.index import SelectionIndex

    options = dict(storage_options or {})
    values = chain.to_values(column)
    kinds = {type(v) for v in values}
    wrong = kinds - {DcSelection, DcArray, DcStore}
    if wrong or len(kinds) > 1:
        found = ", ".join(sorted(t.__name__ for t in kinds))
        raise TypeError(
            f"column {column!r} must hold one of datachain's ZarrSelection, ZarrArray or ZarrStore, "
            f"not {found}"
        )
    if not values:
        raise ValueError(f"column {column!r} of the chain is empty")
    if isinstance(values[0], DcStore):
        return SelectionIndex.build([_store(v, options) for v in values], array=array)
    if isinstance(values[0], DcArray):
        arrays = [_array(v, options) for v in values]
        return SelectionIndex.from_selections(a.select(i) for a in arrays for i in range(a.shape[0]))
    arrays: dict[tuple[str, str], ZarrArray] = {}

    def selection(v: Any) -> ZarrSelection:
        key = (v.array.store.file.source, v.array.store.file.path, v.array.path)
        if key not in arrays:
            arrays[key] = _array(v.array, options)
        return ZarrSelection(array=arrays[key], index=list(v.index), media=v.media)

    index = SelectionIndex.from_selections(map(selection, values))
    index.validate()
    return index


def to_records(index: SelectionIndex) -> Iterator[dict[str, Any]]:
    """Every row of ``index`` as a ``ZarrSelection`` record (``model_dump()`` form, no
    credentials), in order; datachain's ``ZarrSelection.model_validate`` takes each.
    Rows of one array share its (read-only) ``array`` record."""
    arrays = [index.zarr_array(a).model_dump() for a in range(len(index.arrays))]
    media = [e.media for e in index.arrays]
    for array_id, start in zip(index.rows["array"].tolist(), index.rows["start"].tolist(), strict=True):
        at = index.item_index(array_id, start)
        yield {"array": arrays[array_id], "index": at, "media": media[array_id]}


def to_datachain(index: SelectionIndex, column: str = "frame", **read_values: Any) -> Any:
    """A datachain chain with one datachain ``ZarrSelection`` per row of ``index``, in order
    (``read_values`` go to ``dc.read_values``, e.g. ``session=`` or ``in_memory=True``)."""
    import datachain as dc
    from datachain.lib.zarr import ZarrSelection as DcSelection

    values = [DcSelection.model_validate(r) for r in to_records(index)]
    return dc.read_values(**{column: values}, **read_values)
