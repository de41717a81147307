"""Unit tests for the clickstream feature declaration and its offline computation."""

from __future__ import annotations

import pandas as pd
from kestrel_training.click_offline import click_offline_features

from kestrel.click_features import (
    CLICK_FEATURE_NAMES,
    NO_PURCHASE_S,
    ClickAggregates,
    SessionAggregates,
    click_feature_vector,
)

T0 = 1_780_272_000_000
SESSION = SessionAggregates(events=3, products=2, categories=1, cart_net=1, start_ms=T0)


def test_click_feature_vector_computes_each_named_value() -> None:
    agg = ClickAggregates(
        views=(2, 5, 9),
        product_views=(1, 3, 6, 8),
        price_cents_30d=8_000,
        purchases_30d=2,
        last_purchase_ms=T0 - 90_000,
        session=SESSION,
    )
    vector = dict(
        zip(
            CLICK_FEATURE_NAMES,
            click_feature_vector("add_to_cart", 20.0, T0 + 42_000, agg),
            strict=True,
        )
    )
    assert vector["PRICE"] == 20.0 and vector["IS_ADD_TO_CART"] == 1.0
    assert vector["IS_PAGE_VIEW"] == vector["IS_PURCHASE"] == 0.0
    assert (vector["USER_VIEWS_5MIN_WINDOW"], vector["USER_VIEWS_24HOUR_WINDOW"]) == (2.0, 9.0)
    assert vector["USER_PRODUCT_VIEWS_24HOUR_WINDOW"] == 6.0
    assert vector["SESSION_DURATION_S"] == 42.0 and vector["SESSION_CART_NET"] == 1.0
    assert vector["USER_CONVERSION_RATE_30DAY_WINDOW"] == 2 / 8
    assert vector["USER_SECONDS_SINCE_LAST_PURCHASE"] == 132.0
    assert vector["PRICE_OVER_USER_30DAY_AVG"] == 20.0 / 10.0


def test_click_feature_vector_cold_user_and_page_view() -> None:
    agg = ClickAggregates((1, 1, 1), (0, 0, 0, 0), 0, 0, None, SESSION)
    vector = dict(
        zip(CLICK_FEATURE_NAMES, click_feature_vector("page_view", None, T0, agg), strict=True)
    )
    assert vector["PRICE"] == 0.0 and vector["PRICE_OVER_USER_30DAY_AVG"] == 0.0
    assert vector["USER_CONVERSION_RATE_30DAY_WINDOW"] == 0.0
    assert vector["USER_SECONDS_SINCE_LAST_PURCHASE"] == NO_PURCHASE_S


def test_click_offline_features_follow_time_and_id_order_and_count_an_id_once() -> None:
    rows = [
        ("E2", "U", "S", "product_view", "P1", "c1", 10.0, T0),
        ("E1", "U", "S", "page_view", None, None, None, T0),
        ("E3", "U", "S", "add_to_cart", "P1", "c1", 10.0, T0 + 1_000),
        ("E4", "U", "S", "purchase", "P1", "c1", 10.0, T0 + 2_000),
        ("E3", "U", "S", "add_to_cart", "P1", "c1", 10.0, T0 + 1_000),  # a duplicate
        ("E5", "U", "S2", "product_view", "P2", "c2", 30.0, T0 + 3_000),
    ]
    columns = ["event_id", "user_id", "session_id", "event_type", "product_id", "category",
               "price", "event_time"]  # fmt: skip
    table = click_offline_features(pd.DataFrame(rows, columns=columns)).set_index("event_id")
    assert list(table.index) == ["E1", "E2", "E3", "E4", "E5"]
    assert table.loc["E1", "USER_VIEWS_5MIN_WINDOW"] == 1  # E1 < E2 at the same millisecond
    assert table.loc["E2", "USER_VIEWS_5MIN_WINDOW"] == 2
    assert table.loc["E4", "SESSION_EVENTS"] == 4 and table.loc["E4", "SESSION_CART_NET"] == 1
    assert table.loc["E4", "USER_SECONDS_SINCE_LAST_PURCHASE"] == NO_PURCHASE_S
    assert table.loc["E5", "USER_SECONDS_SINCE_LAST_PURCHASE"] == 1.0
    assert table.loc["E5", "SESSION_EVENTS"] == 1 and table.loc["E5", "SESSION_DURATION_S"] == 0
    assert table.loc["E5", "USER_CONVERSION_RATE_30DAY_WINDOW"] == 0.5
    assert table.loc["E5", "PRICE_OVER_USER_30DAY_AVG"] == 30.0 / 20.0
