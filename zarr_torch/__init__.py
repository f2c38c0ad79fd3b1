"""zarr_torch: train PyTorch models on frames stored in many Zarr stores.

from torch.utils.data import DataLoader
from zarr_torch import ZarrFrameDataset
loader = DataLoader(ZarrFrameDataset("data/", array="data/camera0_rgb"), batch_size=64)
"""

from zarr_torch.dataset import ZarrFrameDataset
from zarr_torch.errors import ReadError
from zarr_torch.index import SelectionIndex
from zarr_torch.models import ZarrArray, ZarrInfo, ZarrSelection, ZarrStore, read_zarr
from zarr_torch.sampling import ChunkAwareSampler, ReadAheadBatches
from zarr_torch.storage import MissingChunkError, RetryPolicy

__all__ = [
    "ChunkAwareSampler",
    "MissingChunkError",
    "ReadAheadBatches",
    "ReadError",
    "RetryPolicy",
    "SelectionIndex",
    "ZarrArray",
    "ZarrFrameDataset",
    "ZarrInfo",
    "ZarrSelection",
    "ZarrStore",
    "read_zarr",
]
