"""The `context` object a Python handler receives, with the attributes AWS's runtime gives it."""

from __future__ import annotations

import time
from typing import Any


class LambdaContext:
    """Same attributes and methods as the context of AWS's Python runtime interface client."""

    def __init__(
        self,
        function_name: str,
        invoked_function_arn: str,
        memory_limit_in_mb: int,
        aws_request_id: str,
        deadline_epoch_s: float,
        function_version: str = "$LATEST",
    ) -> None:
        self.function_name = function_name
        self.function_version = function_version
        self.invoked_function_arn = invoked_function_arn
        self.memory_limit_in_mb = str(memory_limit_in_mb)
        self.aws_request_id = aws_request_id
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = time.strftime("%Y/%m/%d/[$LATEST]") + aws_request_id.replace("-", "")
        self.identity: Any = None
        self.client_context: Any = None
        self.tenant_id: str | None = None
        self._deadline_epoch_s = deadline_epoch_s

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the function times out (never negative)."""
        return max(0, int((self._deadline_epoch_s - time.time()) * 1000))

    def __repr__(self) -> str:
        return (
            f"LambdaContext(function_name={self.function_name!r}, "
            f"aws_request_id={self.aws_request_id!r})"
        )
