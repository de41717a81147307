"""Periodic retraining: the promotion rule, one round, the loop's stop, the schedule resources."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from kestrel_training import registry, retrain, tracking
from kestrel_training.retrain import Challenger, Champion, Steps, decide

from kestrel.features import FEATURE_SET_HASH
from kestrel_local.template import load_template

ROOT = Path(__file__).resolve().parent.parent.parent


def ap(value: float) -> dict[str, float]:
    return {"auc_roc": 0.9, "average_precision": value, "card_precision_100": 0.3}


# --- decide --------------------------------------------------------------------------------


def test_decide_promotes_when_there_is_no_champion() -> None:
    decision = decide(ap(0.5), None, 0.0)
    assert decision.promote
    assert decision.champion_ap is None
    assert "no champion" in decision.reason


def test_decide_promotes_a_better_challenger() -> None:
    decision = decide(ap(0.72), ap(0.70), 0.0)
    assert decision.promote
    assert (decision.challenger_ap, decision.champion_ap) == (0.72, 0.70)


@pytest.mark.parametrize("challenger", [0.70, 0.69, 0.0])
def test_decide_keeps_the_champion_when_equal_or_worse(challenger: float) -> None:
    assert not decide(ap(challenger), ap(0.70), 0.0).promote


def test_decide_keeps_the_champion_when_the_gain_is_under_the_threshold() -> None:
    assert not decide(ap(0.705), ap(0.70), 0.01).promote
    assert decide(ap(0.715), ap(0.70), 0.01).promote


def test_decide_promotes_a_gain_exactly_at_the_threshold() -> None:
    assert 0.3 - 0.2 < 0.1  # floating point: the rule must still count it as reached
    assert decide(ap(0.3), ap(0.2), 0.1).promote


def test_decide_never_promotes_a_challenger_without_a_finite_ap() -> None:
    assert not decide(ap(math.nan), None, 0.0).promote
    assert not decide({}, ap(0.1), 0.0).promote


def test_decide_replaces_a_champion_without_an_ap() -> None:
    assert decide(ap(0.1), {"auc_roc": 0.8}, 0.0).promote


# --- one round -----------------------------------------------------------------------------


class FakeRegistry:
    """Train, champion, promote and export steps that record what a round did."""

    def __init__(self, challenger: float, champion: float | None, hash_: str = FEATURE_SET_HASH):
        self.challenger, self.champion_ap, self.hash = challenger, champion, hash_
        self.champion_version: str | None = None if champion is None else "1"
        self.trained = 0
        self.promoted: list[str] = []
        self.exported: list[str | None] = []

    def train(self) -> Challenger:
        self.trained += 1
        return Challenger(str(1 + self.trained), ap(self.challenger))

    def champion(self) -> Champion | None:
        if self.champion_version is None or self.champion_ap is None:
            return None
        return Champion(self.champion_version, ap(self.champion_ap), self.hash)

    def promote(self, version: str) -> str:
        self.promoted.append(version)
        return version

    def export(self) -> str:
        self.exported.append(self.champion_version if not self.promoted else self.promoted[-1])
        return f"v{self.exported[-1]} to layer"

    def steps(self) -> Steps:
        return Steps(self.train, self.champion, self.promote, self.export)


def test_round_promotes_a_better_challenger_and_exports_it() -> None:
    fake, lines = FakeRegistry(0.72, 0.70), list[str]()
    decision = retrain.run_once(fake.steps(), 0.0, lines.append)
    assert decision.promote
    assert (fake.promoted, fake.exported) == (["2"], ["2"])
    assert len(lines) == 1
    assert "challenger v2 AP 0.7200 vs champion v1 AP 0.7000" in lines[0]
    assert "promoted v2" in lines[0]


def test_round_keeps_a_better_champion_and_exports_the_champion() -> None:
    fake, lines = FakeRegistry(0.65, 0.70), list[str]()
    assert not retrain.run_once(fake.steps(), 0.0, lines.append).promote
    assert (fake.promoted, fake.exported) == ([], ["1"])
    assert "kept champion v1" in lines[0]


def test_round_treats_a_champion_on_other_features_as_absent() -> None:
    fake, lines = FakeRegistry(0.50, 0.90, hash_="other-hash"), list[str]()
    assert retrain.run_once(fake.steps(), 0.0, lines.append).promote
    assert fake.promoted == ["2"]
    assert "treated as absent" in lines[0]


def test_round_without_champion_or_usable_challenger_exports_nothing() -> None:
    fake, lines = FakeRegistry(math.nan, None), list[str]()
    assert not retrain.run_once(fake.steps(), 0.0, lines.append).promote
    assert (fake.promoted, fake.exported) == ([], [])


# --- the loop ------------------------------------------------------------------------------


def test_every_loop_repeats_rounds_until_the_stop_event_is_set() -> None:
    fake, stop, lines = FakeRegistry(0.72, 0.70), threading.Event(), list[str]()

    def round_() -> None:
        retrain.run_once(fake.steps(), 0.0, lines.append)
        if fake.trained == 2:
            stop.set()  # as a signal during the second round would

    assert retrain.run_every(round_, 0.01, stop, lines.append) == 2
    assert fake.promoted == ["2", "3"]


def test_every_loop_wakes_from_a_long_sleep_on_the_stop_event() -> None:
    stop, lines, calls = threading.Event(), list[str](), list[int]()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    assert retrain.run_every(lambda: calls.append(1), 3600, stop, lines.append) == 1
    assert time.monotonic() - started < 5
    assert "stopped after 1 round(s)" in lines[-1]


def test_every_loop_survives_a_failed_round() -> None:
    stop, lines, calls = threading.Event(), list[str](), list[int]()

    def round_() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("training broke")
        stop.set()

    assert retrain.run_every(round_, 0.01, stop, lines.append) == 2
    assert any("round 1 failed" in line and "training broke" in line for line in lines)


@pytest.fixture
def stop_handlers() -> Iterator[tuple[threading.Event, list[str]]]:
    stop, lines = threading.Event(), list[str]()
    before = signal.getsignal(signal.SIGTERM)
    restore = retrain.install_stop_handlers(stop, lines.append)
    try:
        yield stop, lines
    finally:
        restore()
        assert signal.getsignal(signal.SIGTERM) is before


def test_every_loop_stops_on_sigterm(stop_handlers: tuple[threading.Event, list[str]]) -> None:
    stop, lines = stop_handlers
    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None)
    fake = FakeRegistry(0.72, 0.70)

    def round_() -> None:
        retrain.run_once(fake.steps(), 0.0, lines.append)
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM)).start()

    started = time.monotonic()
    assert retrain.run_every(round_, 3600, stop, lines.append) == 1
    assert time.monotonic() - started < 5
    assert stop.is_set()
    assert any(line.startswith("SIGTERM") for line in lines)
    # A second signal now gets the default behaviour (it would end the process).
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_main_requires_exactly_one_of_once_and_every() -> None:
    for argv in (
        [],
        ["--once", "--every", "5"],
        ["--every", "0"],
        ["--once", "--min-improvement", "-1"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            retrain.main(argv)
        assert exit_info.value.code == 2


# --- the registry steps on a real (temporary) MLflow store ---------------------------------


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tracking.Tracking:
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # restored after the test
    return tracking.configure(tmp_path / "mlruns")


def _register(store: tracking.Tracking, average_precision: float) -> str:
    summary: dict[str, Any] = {"feature_set_hash": FEATURE_SET_HASH}
    run_id = tracking.log_run(
        store, "fake", {"seed": 0}, {"test.average_precision": average_precision},
        b"not-onnx", summary, {}, (), {"feature_set_hash": FEATURE_SET_HASH},
    )  # fmt: skip
    return tracking.register(store, run_id)


def test_registry_steps_read_the_champions_test_metrics(
    store: tracking.Tracking, tmp_path: Path
) -> None:
    def no_training() -> Challenger:
        raise AssertionError("not called")

    steps = retrain.registry_steps(store, no_training, tmp_path / "layer", None)
    assert steps.champion() is None  # no registered model yet
    first = _register(store, 0.61)
    assert steps.champion() is None  # a challenger, no champion
    registry.promote(first, store)
    second = _register(store, 0.64)
    champion = steps.champion()
    assert champion is not None
    assert (champion.version, champion.feature_set_hash) == (first, FEATURE_SET_HASH)
    assert champion.metrics == {"average_precision": pytest.approx(0.61)}
    steps.promote(second)
    moved = steps.champion()
    assert moved is not None and moved.version == second


# --- the template's schedule ---------------------------------------------------------------

TEMPLATE = load_template(ROOT / "template.yaml")
RESOURCES: Mapping[str, Any] = TEMPLATE["Resources"]


def test_template_schedule_starts_the_retrain_project_weekly() -> None:
    assert TEMPLATE["Parameters"]["RetrainSchedule"]["Default"] == "rate(7 days)"
    rule = RESOURCES["RetrainScheduleRule"]
    assert rule["Type"] == "AWS::Events::Rule"
    assert rule["Properties"]["ScheduleExpression"] == {"Ref": "RetrainSchedule"}
    (target,) = rule["Properties"]["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["RetrainProject", "Arn"]}
    assert target["RoleArn"] == {"Fn::GetAtt": ["RetrainScheduleRole", "Arn"]}
    project = RESOURCES["RetrainProject"]["Properties"]
    assert "kestrel_training.retrain --once" in project["Source"]["BuildSpec"]
    assert "make setup" in project["Source"]["BuildSpec"]


def _statements(role: str) -> list[dict[str, Any]]:
    policies = RESOURCES[role]["Properties"]["Policies"]
    return [s for p in policies for s in p["PolicyDocument"]["Statement"]]


@pytest.mark.parametrize("role", ["RetrainRole", "RetrainScheduleRole"])
def test_template_retrain_roles_name_every_action(role: str) -> None:
    for statement in _statements(role):
        assert statement["Effect"] == "Allow"
        for action in statement["Action"]:
            assert "*" not in action, f"{role}: {action}"
        assert statement["Resource"] != "*"


def test_template_schedule_role_may_only_start_the_retrain_project() -> None:
    (statement,) = _statements("RetrainScheduleRole")
    assert statement["Action"] == ["codebuild:StartBuild"]
    assert statement["Resource"] == {"Fn::GetAtt": ["RetrainProject", "Arn"]}
