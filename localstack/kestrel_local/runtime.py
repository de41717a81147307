"""The local Lambda service: one worker pool per function and a poller per event source."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from kestrel.settings import LocalSettings
from kestrel_local.aws import AwsClients
from kestrel_local.checkpoints import CheckpointStore
from kestrel_local.esm_kinesis import KinesisMapping
from kestrel_local.esm_sqs import SqsMapping
from kestrel_local.invoker import FunctionPool, function_environment
from kestrel_local.provision import LocalApp

log = logging.getLogger("kestrel_local.runtime")
RUNTIME_READY = "local Lambda runtime polling"  # `run` prints it once warm and polling


class LocalRuntime:
    """Runs every enabled Kinesis and SQS event source of an app until stopped."""

    def __init__(
        self,
        app: LocalApp,
        clients: AwsClients,
        settings: LocalSettings,
        only: list[str] | None = None,
        log_dir: Path | None = None,
    ) -> None:
        """`log_dir`: write each function's output to `<log_dir>/<LogicalId>.log`."""
        self.app, self.clients = app, clients
        self.stopping = threading.Event()
        specs = [app.function(name) for name in only] if only else list(app.functions.values())
        aws_env = clients.credentials_env()
        self.pools = {
            spec.logical_id: FunctionPool(
                spec,
                function_environment(spec, aws_env),
                spec.reserved_concurrency or settings.max_concurrency,
                log_file=log_dir / f"{spec.logical_id}.log" if log_dir else None,
            )
            for spec in specs
        }
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
        db = Path(settings.run_dir) / "checkpoints" / f"{app.stack.stack_name}.db"
        self.checkpoints = CheckpointStore(db)
        self.kinesis = [
            KinesisMapping(
                source,
                spec,
                self.pools[spec.logical_id],
                clients,
                self.checkpoints,
                self.stopping,
                settings.retry_backoff_s,
                settings.poll_interval_s,
                short_read_pause_s=settings.short_read_pause_s,
            )
            for spec in specs
            for source in spec.kinesis
            if source.enabled
        ]
        self.sqs = [
            SqsMapping(source, spec, self.pools[spec.logical_id], clients, self.stopping)
            for spec in specs
            for source in spec.sqs
            if source.enabled
        ]

    @property
    def mappings(self) -> list[KinesisMapping | SqsMapping]:
        """Every event-source mapping this runtime runs."""
        return [*self.kinesis, *self.sqs]

    def describe(self) -> list[str]:
        """One line per event source that will run."""
        lines = [
            f"{m.spec.logical_id}.{m.source.name}: Kinesis {m.source.stream_arn.split('/')[-1]} "
            f"batch={m.source.batch_size} window={m.source.window_s:g}s "
            f"parallel={m.source.parallelization} retries={m.source.max_retries} "
            f"max_age={m.source.max_record_age_s}s bisect={m.source.bisect} "
            f"partial={m.source.report_item_failures} on_failure={m.source.on_failure_arn}"
            + (
                f" consumer={m.source.consumer_arn.split('/consumer/', 1)[1]} (read by polling)"
                if m.source.consumer_arn
                else ""
            )
            for m in self.kinesis
        ]
        lines += [
            f"{m.spec.logical_id}.{m.source.name}: SQS {m.source.queue_arn.split(':')[-1]} "
            f"batch={m.source.batch_size} window={m.source.window_s:g}s "
            f"partial={m.source.report_item_failures} pollers={m.source.max_concurrency}"
            for m in self.sqs
        ]
        return lines

    def warm(self, timeout_s: float = 120.0) -> str:
        """Start, before any record arrives, the environments the streams will keep busy.

        A Kinesis source runs one batch at a time per shard and parallelization slot, so its
        function gets that many environments (capped by its concurrency), all initialising
        at once; the first batches then pay no cold start. What was warmed, in one line.
        """
        started = time.monotonic()
        kinesis = self.clients.client("kinesis")
        wanted: dict[str, int] = {}
        for mapping in self.kinesis:
            shards = kinesis.list_shards(StreamName=mapping.stream_name)["Shards"]
            ranges = [shard["SequenceNumberRange"] for shard in shards]
            open_shards = sum("EndingSequenceNumber" not in r for r in ranges)
            busy = open_shards * mapping.source.parallelization
            wanted[mapping.spec.logical_id] = wanted.get(mapping.spec.logical_id, 0) + busy
        spawned = {name: self.pools[name].spawn(count) for name, count in wanted.items()}
        deadline = started + timeout_s
        warm = {
            name: self.pools[name].add_warm(workers, deadline - time.monotonic())
            for name, workers in spawned.items()
        }
        parts = [f"{name} {warm[name]}/{len(spawned[name])}" for name in spawned]
        took = time.monotonic() - started
        return f"warm environments: {', '.join(parts) or 'none'} in {took:.1f} s"

    def start(self) -> None:
        """Start every poller."""
        for mapping in self.mappings:
            mapping.start()

    def stop(self) -> None:
        """Stop polling, let in-flight batches finish (or leave them for later), flush, clean up."""
        self.stopping.set()
        grace = max((pool.spec.timeout_s for pool in self.pools.values()), default=3.0) + 5.0
        for mapping in self.mappings:
            mapping.join(grace)
        for pool in self.pools.values():
            pool.close()
        self.checkpoints.close()
        for mapping in self.mappings:
            log.info(
                "%s.%s: %s", mapping.spec.logical_id, mapping.source.name, mapping.stats.summary()
            )
