"""The challenger model for shadow scoring: a folder, or the S3 pointer's ``challenger`` entry.

Where the challenger comes from (`build_challenger`, what the stream wires):

- with MODEL_BUCKET, from the ``challenger`` entry of the champion's pointer
  (``models/active.json``, layout in `kestrel.adapters.onnx_model`)::

      "challenger": {"version": "7", "model_key": "models/7/model.onnx",
                     "manifest_key": "models/7/manifest.json", ...}

  `S3ChallengerSource` reads the pointer once at cold start, then looks at each pointer the
  champion's `S3ModelSource` reads (no request of its own), and swaps, refuses or
  withdraws the challenger the way the champion is swapped: a new entry is downloaded
  (manifest first; a version whose features differ is refused and not offered again), an
  entry that is gone, or that names the champion itself, withdraws the challenger
  (`kestrel.scoring.ModelWithdrawn`), so the stream stops shadow work at once. A folder
  in CHALLENGER_MODEL_DIR is served until the pointer is read; then the pointer wins,
  as it does for the champion.
- without MODEL_BUCKET, from CHALLENGER_MODEL_DIR (``model.onnx`` + ``manifest.json``),
  which never changes.
- neither: no challenger, and no shadow work at all.

``python -m kestrel_training.registry shadow --bucket B`` writes the entry (``--off``
removes it).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kestrel.adapters.onnx_model import (
    LayerModelSource,
    OnnxModel,
    S3ModelSource,
    pointer_target,
)
from kestrel.scoring import DEFAULT_REFRESH_S, ModelWithdrawn, RejectedModel, Scorer
from kestrel.settings import Settings

logger = logging.getLogger(__name__)

CHALLENGER = "challenger"  # the pointer's entry


class S3ChallengerSource:
    """The challenger named in the champion's S3 pointer (`kestrel.ports.ModelSource`).

    Args:
        champion: The champion's source; its `S3ModelSource.pointer` is the one read.
        folder: A challenger folder to serve until the pointer is read (None: none).
        threads: intra-op threads of each session.
    """

    def __init__(
        self, champion: S3ModelSource, folder: str | Path | None = None, threads: int = 1
    ) -> None:
        self._champion = champion
        self._folder = Path(folder) if folder else None
        self._threads = threads
        self._known: tuple[str, str, str] | None = None
        self._known_version: str | None = None
        self._bad_entry: str | None = None

    def load(self) -> OnnxModel:
        """The folder's challenger, else the pointer's (read now); ModelWithdrawn if none."""
        if self._folder is not None:
            model = OnnxModel.from_folder(self._folder, self._threads)
            self._known_version = str(model.manifest.get("model_version"))
            return model
        try:
            self._champion.read_pointer()
        except RejectedModel:
            raise
        except Exception as exc:  # noqa: BLE001 - no pointer (yet): no challenger (yet)
            logger.info("no challenger at cold start: model pointer not read: %r", exc)
            raise ModelWithdrawn("the model pointer could not be read") from None
        found = self.poll()
        if found is None:
            raise ModelWithdrawn("the model pointer names no challenger")
        return found

    def poll(self) -> OnnxModel | None:
        """The entry's version if it changed since the last look; ModelWithdrawn if it left."""
        pointer = self._champion.pointer
        if pointer is None:
            return None  # not read yet: keep what there is
        entry = pointer.get(CHALLENGER)
        if entry is None or _same_version(entry, pointer):
            if self._known is None and self._known_version is None:
                return None
            self._known = self._known_version = None
            raise ModelWithdrawn("the model pointer names no challenger")
        target = self._target(entry)
        if target is None:
            return None
        if target == self._known or (self._known is None and target[0] == self._known_version):
            self._known = target
            return None
        try:
            model = self._champion.fetch(target)
        except RejectedModel:
            self._known = target  # offer a refused version once, not on every poll
            raise
        self._known = target
        logger.info("challenger version %s loaded for shadow scoring", target[0])
        return model

    def _target(self, entry: Any) -> tuple[str, str, str] | None:
        """The entry's (version, keys); a malformed entry is refused once, then ignored."""
        try:
            target = pointer_target(entry, CHALLENGER)
        except RejectedModel:
            shown = repr(entry)
            if shown == self._bad_entry:
                return None
            self._bad_entry = shown
            raise
        self._bad_entry = None
        return target


def _same_version(entry: Any, pointer: dict[str, Any]) -> bool:
    """Whether the challenger entry names the champion's own version (then: no challenger)."""
    return isinstance(entry, dict) and str(entry.get("version")) == str(pointer.get("version"))


def build_challenger(settings: Settings, champion: Scorer, threads: int = 1) -> Scorer | None:
    """The stream's challenger scorer (see the module doc), or None when none can be set.

    Args:
        settings: MODEL_BUCKET, CHALLENGER_MODEL_DIR and MODEL_REFRESH_S.
        champion: The container's champion scorer (`build_scorer`); with MODEL_BUCKET the
            challenger follows its source's pointer.
        threads: intra-op threads of each onnxruntime session.
    """
    source: S3ChallengerSource | LayerModelSource
    folder = settings.challenger_model_dir or None
    if isinstance(champion.source, S3ModelSource):
        source = S3ChallengerSource(champion.source, folder, threads)
    elif folder is not None:
        source = LayerModelSource(folder, threads)
    else:
        return None
    refresh_s = settings.model_refresh_s if settings.model_bucket else DEFAULT_REFRESH_S
    return Scorer(source, refresh_s=refresh_s)
