"""Parity through the real path: producer, emulator, local runtime, Redis, S3 event log."""

from __future__ import annotations

from pathlib import Path

from kestrel_training.parity import run

from kestrel.settings import LocalSettings


def test_parity_online_features_equal_offline_on_replayed_events(
    emulator_endpoint: str, redis_url: str, tmp_path: Path
) -> None:
    settings = LocalSettings.from_env(
        {
            "AWS_ENDPOINT_URL": emulator_endpoint,
            "REDIS_URL": redis_url,
            "KESTREL_RUN_DIR": str(tmp_path),
        }
    )
    report = run(6000, seed=11, settings=settings, log=lambda _: None, customers=300, terminals=600)
    assert report.events == 6000
    assert report.compared == 6000
    assert report.labels > 0
    assert report.mismatches == 0, report.examples
