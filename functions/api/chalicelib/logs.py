"""JSON logs for the scoring API: the domain's loggers share the API logger's handler."""

from __future__ import annotations

import logging

from aws_lambda_powertools import Logger


def share_handler(logger: Logger, name: str = "kestrel") -> None:
    """Send `name`'s log lines (kestrel.*) through `logger`'s JSON handler, once.

    They then carry the keys set on `logger`, such as the correlation id. Idempotent, so a
    module loaded twice (tests) does not log every line twice.
    """
    target = logging.getLogger(name)
    handler = logger.registered_handler
    if handler not in target.handlers:
        target.addHandler(handler)
    target.propagate = False
