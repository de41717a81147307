"""Whether a version may become the champion: evidence that it is better, or ``--force``.

`check(version)` looks for like-for-like evidence, in this order:

1. **Live** (the judge when it speaks): the verdict ``make compare-models`` recorded on the
   version in the registry (tags ``shadow.*``, written by `record_live_verdict`) when it
   was the challenger shadow-scored against *the current champion*: paired scores on the
   same labelled live transactions, with bootstrap intervals (`kestrel_training.shadow_eval`).
   ``challenger better`` allows the promotion, ``challenger not better`` refuses it;
   ``not enough labelled data`` says nothing, so the next evidence is looked at.
2. **Test set**: the registry's recorded test-week metrics (``test.*``) of both runs, but
   only when both were evaluated on the same test set (same dataset fingerprint
   ``dataset.sha256`` and the same split parameters): the rule of scheduled retraining
   (`kestrel_training.retrain.decide`: strictly higher test AP). The registry keeps the
   figures, not the scores, so there is no interval here.
3. Neither: refused, since nothing compares the two on the same data (e.g. trained on
   other simulator seeds, whose test weeks differ). Shadow-score it and run
   ``make compare-models``, or force it.

No champion yet, or the version is the champion already: allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kestrel_training import registry, tracking
from kestrel_training.datasets import utc_now_iso
from kestrel_training.shadow_eval import BETTER, NOT_BETTER, VERDICTS, Comparison

TAG = "shadow."  # the registry tags of a recorded live comparison
LIVE, TEST_SET, NONE = "live", "test set", "none"


@dataclass(frozen=True)
class Check:
    """Whether `version` may replace `champion`, on what evidence, and why."""

    version: str
    champion: str | None
    allowed: bool
    evidence: str
    reason: str


def _champion(client: Any) -> str | None:
    aliases = client.get_registered_model(tracking.MODEL_NAME).aliases or {}
    found = aliases.get(registry.CHAMPION)
    return None if found is None else str(found)


def _same_test_set(champion_run: Any, challenger_run: Any) -> bool:
    """Both runs evaluated on the same rows: same dataset fingerprint and split."""
    a, b = champion_run.data.params, challenger_run.data.params
    keys = ["dataset.sha256", *sorted(k for k in {*a, *b} if k.startswith("split."))]
    return "dataset.sha256" in a and all(a.get(k) == b.get(k) for k in keys)


def _test_metrics(run: Any) -> dict[str, float]:
    prefix = "test."
    return {k[len(prefix) :]: float(v) for k, v in run.data.metrics.items() if k.startswith(prefix)}


def check(version: str | int, store: tracking.Tracking) -> Check:
    """The evidence for promoting `version` over the current champion (see the module doc)."""
    from kestrel_training.retrain import decide  # retrain imports registry: import late

    client = tracking.client(store)
    candidate = client.get_model_version(tracking.MODEL_NAME, str(version))
    name, champion = str(candidate.version), _champion(client)
    if champion is None:
        return Check(name, None, True, NONE, "there is no champion yet")
    if champion == name:
        return Check(name, champion, True, NONE, f"version {name} is the champion already")
    tags = candidate.tags or {}
    verdict = tags.get(f"{TAG}verdict")
    if tags.get(f"{TAG}champion") == champion and verdict in (BETTER, NOT_BETTER):
        when = tags.get(f"{TAG}compared_at", "?")
        reason = f"{VERDICTS[verdict]} against v{champion} ({when}): {tags.get(f'{TAG}reason')}"
        return Check(name, champion, verdict == BETTER, LIVE, reason)
    holder = client.get_model_version(tracking.MODEL_NAME, champion)
    champion_run, candidate_run = client.get_run(holder.run_id), client.get_run(candidate.run_id)
    if _same_test_set(champion_run, candidate_run):
        decision = decide(_test_metrics(candidate_run), _test_metrics(champion_run))
        old = decision.champion_ap
        shown = "none" if old is None or not math.isfinite(old) else f"{old:.4f}"
        reason = (
            f"test-set AP {decision.challenger_ap:.4f} vs v{champion}'s {shown} on the same "
            f"test set: {decision.reason}"
        )
        return Check(name, champion, decision.promote, TEST_SET, reason)
    return Check(
        name, champion, False, NONE,
        f"no like-for-like comparison with v{champion}: no live comparison against it "
        "recorded, and their test sets differ (other data or split). Shadow-score it "
        "(python -m kestrel_training.registry shadow) and run make compare-models",
    )  # fmt: skip


def promote_checked(
    version: str | int, store: tracking.Tracking, force: bool = False
) -> tuple[bool, Check]:
    """Move the champion alias to `version` if `check` allows it (or `force`); True if moved."""
    verdict = check(version, store)
    if not verdict.allowed and not force:
        return False, verdict
    registry.promote(verdict.version, store)
    return True, verdict


def record_live_verdict(store: tracking.Tracking, comparison: Comparison) -> str | None:
    """Tag the challenger's registry version with the comparison; None if it is not there."""
    client = tracking.client(store)
    version = comparison.challenger.version
    try:
        client.get_model_version(tracking.MODEL_NAME, version)
    except Exception:  # noqa: BLE001 - not a registry version (e.g. a hand-made model)
        return None
    d = comparison.ap_difference
    tags = {
        "champion": comparison.champion.version,
        "verdict": comparison.verdict,
        "reason": comparison.reason,
        "compared_at": utc_now_iso(),
        "window": f"{comparison.first_day}..{comparison.last_day}",
        "rows": str(comparison.rows),
        "frauds": str(comparison.frauds),
        "ap_difference": f"{d.value:+.4f} [{d.low:+.4f}, {d.high:+.4f}]",
    }
    for key, value in tags.items():
        client.set_model_version_tag(tracking.MODEL_NAME, version, f"{TAG}{key}", value)
    return version
