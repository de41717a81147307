"""Shadow scoring: a challenger model scores the stream's batches beside the champion.

With a challenger set (`kestrel.adapters.onnx_model.build_challenger`), `TransactionPath`
scores each batch's feature vectors with it as well, in one call, once the champion has
decided. The challenger's scores go to the event log (``shadow_score`` and
``shadow_model_version`` beside the champion's ``score`` and ``model_version``) and to the
telemetry, never into a decision. A challenger that fails is logged and counted, and the
batch goes on: shadow work never fails the stream. Without a challenger, or while it has no
model (`kestrel.scoring.ModelWithdrawn`), nothing is scored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from kestrel.scoring import NoModelError, Scorer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Shadow:
    """The challenger's scores for one batch, in the batch's scoring order.

    Attributes:
        model_version: The challenger's version.
        scores: One score per scored transaction (empty when `error` is set).
        ms: Wall time of the challenger's scoring call, in milliseconds.
        error: Why the challenger could not score this batch (None: it did).
    """

    model_version: str | None
    scores: list[float] = field(default_factory=list)
    ms: float = 0.0
    error: str | None = None


def shadow_score(challenger: Scorer | None, vectors: Sequence[Sequence[float]]) -> Shadow | None:
    """The challenger's scores for `vectors` in one call; None when there is nothing to do."""
    if challenger is None or not vectors:
        return None
    started = time.perf_counter()
    try:
        scores, manifest = challenger.score_batch(vectors)
    except NoModelError:
        return None  # no challenger set (or withdrawn): no shadow work
    except Exception as exc:  # noqa: BLE001 - shadow work never fails the batch
        version = challenger.model_version
        log.warning("challenger %s could not score: %s: %s", version, type(exc).__name__, exc)
        return Shadow(version, ms=(time.perf_counter() - started) * 1000.0, error=str(exc))
    return Shadow(manifest.version, scores.tolist(), (time.perf_counter() - started) * 1000.0)
