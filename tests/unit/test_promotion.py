"""Unit tests for `make promote`'s check: a worse challenger is refused unless forced."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from kestrel_training import promotion, registry, tracking
from kestrel_training.promotion import LIVE, NONE, TEST_SET, check, record_live_verdict
from kestrel_training.shadow_eval import (
    BETTER,
    NOT_BETTER,
    NOT_ENOUGH,
    Comparison,
    Interval,
    ModelFigures,
)

from kestrel.features import FEATURE_SET_HASH

SPLIT = {"split.train_start": "2018-07-25", "split.test_start": "2018-08-08"}


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tracking.Tracking]:
    """One MLflow store for the module (creating one takes seconds)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            patch.setenv(name, os.environ.get(name, ""))  # restored after the module
        yield tracking.configure(tmp_path_factory.mktemp("promotion") / "mlruns")


@pytest.fixture
def store(shared_store: tracking.Tracking) -> tracking.Tracking:
    """The module's store with no champion (each test registers its own versions)."""
    client = tracking.client(shared_store)
    if client.search_registered_models(filter_string=f"name = '{tracking.MODEL_NAME}'"):
        aliases = client.get_registered_model(tracking.MODEL_NAME).aliases or {}
        if registry.CHAMPION in aliases:
            client.delete_registered_model_alias(tracking.MODEL_NAME, registry.CHAMPION)
    return shared_store


def register(store: tracking.Tracking, ap: float, dataset: str = "sim-seed-0") -> str:
    params: dict[str, Any] = {"seed": 0, "dataset.sha256": dataset, **SPLIT}
    run_id = tracking.log_run(
        store, "fake", params, {"test.average_precision": ap, "test.card_precision_100": 0.3},
        b"not-onnx", {"feature_set_hash": FEATURE_SET_HASH}, {}, (),
        {"feature_set_hash": FEATURE_SET_HASH},
    )  # fmt: skip
    return tracking.register(store, run_id)


def champion(store: tracking.Tracking) -> str:
    aliases = tracking.client(store).get_registered_model(tracking.MODEL_NAME).aliases
    return str(aliases[registry.CHAMPION])


def promote_cli(store: tracking.Tracking, *args: str) -> int:
    return registry.main(["--tracking-dir", str(store.directory), "promote", *args])


def live(store: tracking.Tracking, champ: str, chall: str, verdict: str) -> None:
    i = Interval(0.01, -0.01, 0.03)
    comparison = Comparison(
        ModelFigures(champ, i, i), ModelFigures(chall, i, i), i, i, 5000, 80, 900, 10,
        "2018-08-01", "2018-08-10", verdict, f"made up: {verdict}", 1000, 0, 0.95, 50,
    )  # fmt: skip
    assert record_live_verdict(store, comparison) == chall


def test_promote_refuses_a_worse_challenger_unless_forced(
    store: tracking.Tracking, capsys: pytest.CaptureFixture[str]
) -> None:
    first = register(store, 0.70)
    assert promote_cli(store, first) == 0  # no champion yet: nothing to beat
    worse = register(store, 0.65)
    assert promote_cli(store, worse) == 1
    err = capsys.readouterr().err
    assert "refused" in err and "AP -0.0500: not better" in err and "--force" in err
    assert champion(store) == first
    assert promote_cli(store, worse, "--force") == 0
    assert "(forced)" in capsys.readouterr().out
    assert champion(store) == worse


def test_promote_moves_a_better_challenger_on_the_same_test_set(store: tracking.Tracking) -> None:
    first = register(store, 0.70)
    registry.promote(first, store)
    better = register(store, 0.72)
    verdict = check(better, store)
    assert (verdict.allowed, verdict.evidence, verdict.champion) == (True, TEST_SET, first)
    assert promote_cli(store, better) == 0 and champion(store) == better


def test_promote_refuses_when_nothing_compares_the_two(store: tracking.Tracking) -> None:
    first = register(store, 0.60, dataset="sim-seed-0")
    registry.promote(first, store)
    other = register(store, 0.90, dataset="sim-seed-1")  # another test week: not comparable
    verdict = check(other, store)
    assert (verdict.allowed, verdict.evidence) == (False, NONE)
    assert "no like-for-like comparison" in verdict.reason
    assert promote_cli(store, other) == 1 and champion(store) == first


def test_a_live_verdict_against_the_champion_decides_before_the_test_set(
    store: tracking.Tracking,
) -> None:
    first = register(store, 0.70)
    registry.promote(first, store)
    live_better = register(store, 0.68)  # worse on the test week, better live
    live(store, first, live_better, BETTER)
    assert check(live_better, store).evidence == LIVE
    assert check(live_better, store).allowed
    live_worse = register(store, 0.75)  # better on the test week, not better live
    live(store, first, live_worse, NOT_BETTER)
    verdict = check(live_worse, store)
    assert (verdict.allowed, verdict.evidence) == (False, LIVE)
    assert "challenger not better against v" + first in verdict.reason
    assert promote_cli(store, live_worse) == 1
    assert promote_cli(store, live_better) == 0 and champion(store) == live_better
    # Recorded against the former champion: no longer evidence, the test week decides.
    assert check(live_worse, store).evidence == TEST_SET


def test_promote_of_the_champion_or_an_unknown_version(store: tracking.Tracking) -> None:
    first = register(store, 0.70)
    registry.promote(first, store)
    assert check(first, store).allowed
    with pytest.raises(Exception, match=r"(?i)not found|does not exist|RESOURCE_DOES_NOT_EXIST"):
        check("999", store)


def test_live_verdicts_go_only_on_registry_versions(store: tracking.Tracking) -> None:
    register(store, 0.70)
    i = Interval(0.0, 0.0, 0.0)
    comparison = Comparison(
        ModelFigures("1", i, i), ModelFigures("hand-made", i, i), i, i, 1, 0, 1, 1,
        None, None, NOT_ENOUGH, "", 10, 0, 0.95, 50,
    )  # fmt: skip
    assert promotion.record_live_verdict(store, comparison) is None
