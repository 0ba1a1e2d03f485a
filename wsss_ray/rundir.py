"""The run directory: every stage reads and writes under one root (local path or URI)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import pyarrow.fs as pafs

from wsss_ray.store import exists, open_fs


@dataclass(frozen=True)
class RunDir:
    root: str

    def __post_init__(self):
        # Ray workers do not share the driver's working directory: make local roots absolute
        if "://" not in self.root:
            object.__setattr__(self, "root", os.path.abspath(self.root))

    def fs(self) -> tuple[pafs.FileSystem, str]:
        return open_fs(self.root)

    def path(self, *parts: str) -> str:
        _, base = self.fs()
        return "/".join([base.rstrip("/"), *parts])

    def uri(self, *parts: str) -> str:
        """Like ``path`` but keeps the URI scheme, for handing to other processes."""
        return "/".join([self.root.rstrip("/"), *parts])

    def manifest(self) -> str:
        return self.path("manifest")

    def checkpoint(self, name: str) -> str:
        return self.path("checkpoints", name)

    def maps(self, method: str) -> str:
        return self.path("maps", method)

    def errors(self, stage: str) -> str:
        return self.path("errors", stage)

    def eval_json(self, method: str) -> str:
        return self.path("eval", f"{method}.json")

    def exists(self, path: str) -> bool:
        fs, _ = self.fs()
        return exists(fs, path)

    def write_text(self, path: str, text: str) -> None:
        fs, _ = self.fs()
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        tmp = path + ".tmp"
        with fs.open_output_stream(tmp) as out:
            out.write(text.encode())
        fs.move(tmp, path)

    def read_text(self, path: str) -> str:
        fs, _ = self.fs()
        with fs.open_input_stream(path) as f:
            return f.read().decode()

    def write_json(self, path: str, data) -> None:
        self.write_text(path, json.dumps(data, indent=1, sort_keys=True))

    def read_json(self, path: str):
        return json.loads(self.read_text(path))
