"""How every stage writes its folder: refuse a folder it must not replace, write into a fresh one, swap it in whole,
and write the manifest last (:mod:`agenttuning.data.outputs` has the why of each rule).

>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp()) / "o"
>>> with stage_folder(out, stage="demo", inputs=[]) as w:
...     _ = (w.path / "data.txt").write_text("x")
...     _ = w.finish(config={}, inputs={}, result={"n": 1})
>>> sorted(p.name for p in out.iterdir())
['data.txt', 'manifest.json']
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agenttuning.data.outputs import check_output, staged_dir
from agenttuning.stages.manifest import MANIFEST, Manifest, write_stage_manifest

PathLike = str | os.PathLike[str]


@dataclass
class StageWriter:
    """The fresh folder a stage writes into (``path``) and the call that completes it (:meth:`finish`)."""

    stage: str
    path: Path
    started: float = field(default_factory=time.perf_counter)
    manifest: Manifest | None = None

    def finish(self, *, config: Any, inputs: Any, result: Any) -> Manifest:
        """Write the manifest (after every other file): the folder is complete when the block ends."""
        self.manifest = write_stage_manifest(self.path, stage=self.stage, config=config, inputs=inputs, result=result,
                                       seconds=time.perf_counter() - self.started)  # fmt: skip
        return self.manifest


@contextmanager
def stage_folder(out: PathLike, *, stage: str, inputs: Sequence[PathLike], overwrite: bool = False,
                 recursive: bool = True) -> Iterator[StageWriter]:  # fmt: skip
    """Check ``out`` may be (re)placed, yield a writer on a fresh folder, swap it in if the block finished it.

    ``recursive``: whether the stage reads its input folders recursively (see ``check_inputs``).
    """
    check_output(out, stage=stage, marker=MANIFEST, overwrite=overwrite, inputs=inputs, recursive=recursive)
    with staged_dir(out) as tmp:
        writer = StageWriter(stage, tmp)
        yield writer
        if writer.manifest is None:
            raise RuntimeError(f"stage {stage}: finished without writing its manifest")
