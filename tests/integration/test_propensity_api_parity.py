"""The propensity API's vector for a click is the stream's and the offline features' (real Redis).

Simulated clicks are replayed in order. Before each is applied by the stream's store
(`RedisClickStore.apply_clicks`, what ClickstreamFunction does), the API's service previews
it (`PropensityService.vector`, writing nothing): the two vectors must be equal, and equal
to the offline point-in-time features of training (`click_offline_features`); the API's
propensity is the model's score of that vector; and a user's features read with no event
(`user_features`) are the USER_ features of the stream's vector of their latest event.
On a standalone redis-server and on a 3-master cluster.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis
from kestrel_training.click_offline import click_offline_features
from kestrel_training.click_simulator import ClickSimulatorConfig, simulate_clicks
from redis.cluster import RedisCluster

from kestrel.adapters.onnx_model import OnnxModel
from kestrel.adapters.onnx_propensity import build_propensity_scorer
from kestrel.adapters.redis_clicks import RedisClickStore
from kestrel.adapters.redis_propensity import RedisPropensities
from kestrel.click_events import click_from_mapping
from kestrel.click_features import CLICK_FEATURE_NAMES, click_feature_vector
from kestrel.propensity_serving import USER_FEATURES, PropensityService
from kestrel.serving import make_breaker
from kestrel.settings import Settings, default_propensity_dir

pytestmark = pytest.mark.integration


@pytest.fixture(params=["standalone", "cluster"])
def client(request: pytest.FixtureRequest) -> Iterator[redis.Redis | RedisCluster]:
    """Database 9 of a standalone redis-server, or a 3-master cluster; emptied before/after."""
    store: redis.Redis | RedisCluster
    if request.param == "cluster":
        store = RedisCluster.from_url(request.getfixturevalue("redis_cluster_url"))
        store.flushall()
        yield store
        store.flushall()
    else:
        url = request.getfixturevalue("redis_url").rsplit("/", 1)[0] + "/9"
        store = redis.Redis.from_url(url)
        store.flushdb()
        yield store
        store.flushdb()
    store.close()


def _rows(events: Any) -> list[dict[str, Any]]:
    return [
        {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
        for row in events.to_dict("records")
    ]


def _close(a: tuple[float, ...], b: Any) -> bool:
    return all(math.isclose(x, y, rel_tol=1e-9, abs_tol=0.0) for x, y in zip(a, b, strict=True))


def test_propensity_api_vector_equals_the_streams_and_the_offline_features(
    client: redis.Redis | RedisCluster,
) -> None:
    events = simulate_clicks(ClickSimulatorConfig(n_users=40, n_days=2, seed=11)).events
    events = events.sort_values(["event_time", "event_id"]).head(1200)
    clicks = [click_from_mapping(row) for row in _rows(events)]
    offline = click_offline_features(events).set_index("event_id")
    store = RedisClickStore(client)
    settings = Settings.from_env({"PROPENSITY_MODEL_DIR": default_propensity_dir()})
    service = PropensityService(
        store, build_propensity_scorer(settings), RedisPropensities(client), make_breaker(3, 30)
    )
    model = OnnxModel.from_folder(default_propensity_dir())
    cold_seen = warm_seen = 0
    for position, event in enumerate(clicks):
        api_vector, cold = service.vector(event)
        (applied,) = store.apply_clicks([event])
        assert not isinstance(applied, Exception)
        stream = click_feature_vector(
            event.event_type.value, event.price, event.event_time_ms, applied.aggregates
        )
        assert api_vector == stream, (position, event)
        assert cold is (not applied.user_known), event
        cold_seen, warm_seen = cold_seen + cold, warm_seen + (not cold)
        want = offline.loc[event.event_id, list(CLICK_FEATURE_NAMES)]
        assert _close(api_vector, want), (position, event)
        if position % 97 == 0:
            result = service.score(event)  # a replay now: preview answers as the stream did
            assert result.degraded == () and result.features == api_vector
            (score,) = model.predict_proba(np.asarray([api_vector], dtype=np.float32))
            assert math.isclose(result.propensity, float(score), abs_tol=1e-6)
    assert cold_seen >= 20 and warm_seen > 600  # one cold start per user seen
    # The preview wrote nothing: a second look at the store gives the same state as the stream.
    latest = events.groupby("user_id").tail(1)
    checked = 0
    for row in latest.itertuples(index=False):
        if row.event_type == "purchase":
            continue  # its own purchase is "before" a read after it, not before the event
        at = int(row.event_time)  # read at the user's latest event
        reader = PropensityService(
            store, None, RedisPropensities(client), make_breaker(3, 30), clock_ms=at.__int__
        )
        found = reader.user_features(row.user_id)
        want = offline.loc[row.event_id]
        assert found.known is True
        assert found.features == pytest.approx({n: float(want[n]) for n in USER_FEATURES})
        checked += 1
    assert checked > 20
