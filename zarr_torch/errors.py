"""What a training loop sees when a sample cannot be read: an error, or a skip log.

try:
    batch = ds.__getitems__([0, 1])
except ReadError as err:
    print(err)  # cannot read sample 1: array 'data/camera0_rgb' in store 's3://b/ep.zarr' ...
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import tempfile
import weakref
from collections import Counter

logger = logging.getLogger("zarr_torch")


class ReadError(OSError):
    """A sample could not be read; the message names the store, the array and the index.

    The store URI is shown without credentials and the original exception is chained
    as ``__cause__``. It crosses ``DataLoader`` worker boundaries with its message intact.
    """

    def __init__(
        self, message: str, *, uri: str | None = None, array: str | None = None, index: int | None = None
    ) -> None:
        super().__init__(message)
        self.uri, self.array, self.index = uri, array, index

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self):
        return (_rebuild, (str(self), self.uri, self.array, self.index))


def _rebuild(message: str, uri: str | None, array: str | None, index: int | None) -> ReadError:
    return ReadError(message, uri=uri, array=array, index=index)


class SkipLog:
    """The samples skipped under ``on_error="skip"``, shared by every process of a run.

    Each process appends one JSON line per skipped sample to its own file in a folder
    made by the process that created the log, and logs the first failure of each store
    once. :meth:`summary` gathers every process's records, e.g. at the end of an epoch.

        log = SkipLog(); log.record(err); log.summary()  # {"s3://b/ep.zarr": 3}
    """

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="zarr_torch_skips_")
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.directory, True)
        self._warned: set[str] = set()

    def __getstate__(self) -> dict:
        return {"directory": self.directory}

    def __setstate__(self, state: dict) -> None:
        self.directory = state["directory"]
        self._warned = set()

    def record(self, err: ReadError) -> None:
        """Note a skipped sample; the first one of each store in this process is logged."""
        line = {"index": err.index, "uri": err.uri, "array": err.array, "error": str(err)}
        with open(os.path.join(self.directory, f"{os.getpid()}.jsonl"), "a") as f:
            f.write(json.dumps(line) + "\n")
        if err.uri not in self._warned:
            self._warned.add(err.uri or "")
            logger.warning("skipping unreadable samples of store %s: %s", err.uri, err)

    def records(self) -> list[dict]:
        """Every sample skipped by any process since the last ``summary(reset=True)``."""
        out = []
        for name in sorted(glob.glob(os.path.join(self.directory, "*.jsonl"))):
            with open(name) as f:
                out += [json.loads(line) for line in f if line.strip()]
        return sorted(out, key=lambda r: r["index"])

    def summary(self, reset: bool = True) -> dict[str, int]:
        """Skipped samples per store, logged as one line; ``reset`` starts a new count."""
        counts = Counter(r["uri"] for r in self.records())
        if counts:
            logger.warning(
                "skipped %d unreadable samples: %s",
                sum(counts.values()),
                ", ".join(f"{uri}: {n}" for uri, n in sorted(counts.items())),
            )
        if reset:
            for name in glob.glob(os.path.join(self.directory, "*.jsonl")):
                os.remove(name)
        return dict(counts)
