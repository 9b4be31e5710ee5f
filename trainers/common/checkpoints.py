"""Checkpoints of a run in local mode (``scaling.num_workers=0``: the loop runs in the driver, no Ray Train workers).

No Ray Train controller keeps them there (Ray Train's own local mode keeps only the last checkpoint object,
whose temporary directory is gone once reported, and restores nothing), so the loop writes each checkpoint
under the run's storage itself, as Ray Train would: ``checkpoint_<step>`` directories in
``<storage>/<run name>`` (a local path or any URI pyarrow's filesystems resolve), the ``keep`` newest kept
(and, with a score, the best one too), and the newest restored when a run of the same name starts again.
"""
from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path

PREFIX = "checkpoint_"
SCORE_FILE = "trainlab_metrics.json"


class RunCheckpoints:
    def __init__(self, root: str, keep: int, score: tuple[str, str] | list | None = None):
        import pyarrow.fs as pafs

        if "://" in root:
            self.fs, self.root = pafs.FileSystem.from_uri(root)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(root)
        self.keep = max(1, int(keep))
        self.score = tuple(score) if score else None

    def _step_dirs(self) -> list[tuple[int, str]]:
        import pyarrow.fs as pafs

        if self.fs.get_file_info(self.root).type != pafs.FileType.Directory:
            return []
        out = []
        for info in self.fs.get_file_info(pafs.FileSelector(self.root)):
            name = info.base_name
            if info.type == pafs.FileType.Directory and name.startswith(PREFIX) and name[len(PREFIX):].isdigit():
                out.append((int(name[len(PREFIX):]), info.path))
        return sorted(out)

    def _checkpoint(self, path: str):
        from ray.train import Checkpoint

        return Checkpoint(path, filesystem=self.fs)

    def latest(self):
        """The newest checkpoint of this run, or None."""
        dirs = self._step_dirs()
        return self._checkpoint(dirs[-1][1]) if dirs else None

    def save(self, local_dir: str | Path, step: int, metrics: dict[str, float]):
        """Copy ``local_dir`` to ``checkpoint_<step>`` (replacing one of that step), prune, return it. The copy goes
        to a temporary name first (not a step directory: never restored) and is renamed into place, so a process
        killed mid-copy leaves the previous checkpoints intact."""
        import pyarrow.fs as pafs

        (Path(local_dir) / SCORE_FILE).write_text(json.dumps(metrics))
        dest = f"{self.root}/{PREFIX}{step:06d}"
        tmp = f"{dest}.partial-{uuid.uuid4().hex[:8]}"
        self.fs.create_dir(tmp, recursive=True)
        pafs.copy_files(str(local_dir), tmp, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)
        if self.fs.get_file_info(dest).type != pafs.FileType.NotFound:
            self.fs.delete_dir(dest)
        self.fs.move(tmp, dest)
        self._prune()
        return self._checkpoint(dest)

    def _score(self, path: str) -> float | None:
        try:
            with self.fs.open_input_stream(f"{path}/{SCORE_FILE}") as f:
                v = json.loads(f.read()).get(self.score[0])
            return None if v is None else float(v)
        except (OSError, ValueError):
            return None

    def _prune(self) -> None:
        dirs = [p for _, p in self._step_dirs()]
        keep = set(dirs[-self.keep:])
        if self.score:
            scored = [(s, p) for p in dirs if (s := self._score(p)) is not None and math.isfinite(s)]
            if scored:
                best = (max if self.score[1] == "max" else min)(scored)[1]
                keep.add(best)
        for p in dirs:
            if p not in keep:
                self.fs.delete_dir(p)
