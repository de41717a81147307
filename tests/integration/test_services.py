"""`python -m kestrel_local up|down|status` and the fixtures API start, report, stop servers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import redis

from kestrel_local.processes import free_port, pid_alive, port_in_use
from kestrel_local.services import redis_healthy, running_services

pytestmark = pytest.mark.integration
OVERRIDDEN = ("AWS_ENDPOINT_URL", "REDIS_URL")


@pytest.fixture
def stack_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for the CLI: a temporary run dir, free ports, nothing external."""
    env = {k: v for k, v in os.environ.items() if k not in OVERRIDDEN and "KESTREL_" not in k}
    env |= {
        "KESTREL_RUN_DIR": str(tmp_path / "run"),
        "KESTREL_EMULATOR_PORT": str(free_port()),
        "KESTREL_REDIS_PORT": str(free_port()),
    }
    yield env
    services("down", env)  # whatever a failed test left behind


def services(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `python -m kestrel_local COMMAND` with `env`."""
    return subprocess.run(
        [sys.executable, "-m", "kestrel_local", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def pids(env: dict[str, str]) -> dict[str, int]:
    """The pids recorded in the run dir's pid files."""
    run_dir = Path(env["KESTREL_RUN_DIR"])
    return {p.stem: int(p.read_text()) for p in run_dir.glob("*.pid")}


def test_services_up_status_down_leaves_nothing_running(stack_env: dict[str, str]) -> None:
    up = services("up", stack_env)
    assert up.returncode == 0, up.stderr
    started = pids(stack_env)
    assert set(started) == {"emulator", "redis"}
    assert (Path(stack_env["KESTREL_RUN_DIR"]) / "redis").is_dir()

    status = services("status", stack_env)
    assert status.returncode == 0, status.stderr
    rows = {line.split()[0]: line.split() for line in status.stdout.splitlines()[1:]}
    assert rows["emulator"][1:3] == ["embedded", str(started["emulator"])]
    assert rows["redis"][1:3] == ["embedded", str(started["redis"])]
    assert rows["emulator"][-1] == rows["redis"][-1] == "yes"

    down = services("down", stack_env)
    assert down.returncode == 0, down.stderr
    assert pids(stack_env) == {}
    assert not any(pid_alive(pid) for pid in started.values())
    assert not port_in_use("127.0.0.1", int(stack_env["KESTREL_EMULATOR_PORT"]))
    assert not port_in_use("127.0.0.1", int(stack_env["KESTREL_REDIS_PORT"]))
    after = services("status", stack_env).stdout.splitlines()[1:]
    assert [line.split()[2:3] + line.split()[-1:] for line in after] == [["-", "no"]] * 2


def test_services_up_twice_is_idempotent(stack_env: dict[str, str]) -> None:
    assert services("up", stack_env).returncode == 0
    first = pids(stack_env)
    again = services("up", stack_env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already running") == 2
    assert pids(stack_env) == first
    assert services("down", stack_env).returncode == 0
    assert not any(pid_alive(pid) for pid in first.values())


@pytest.mark.parametrize(
    ("service", "setting"),
    [("emulator", "KESTREL_EMULATOR_PORT"), ("redis", "KESTREL_REDIS_PORT")],
)
def test_services_up_on_busy_port_names_port_and_setting(
    stack_env: dict[str, str], service: str, setting: str
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        stack_env[setting] = str(port)
        result = services("up", stack_env)
    assert result.returncode == 1
    assert f"port {port}" in result.stderr
    assert setting in result.stderr
    assert service in result.stderr
    assert pids(stack_env) == {}  # ports are checked before anything starts


def test_services_never_show_an_external_redis_password(
    stack_env: dict[str, str], emulator_endpoint: str
) -> None:
    # An external Redis that does not answer: `up` says so, `status` lists it; neither
    # shows the password in its URL.
    stack_env |= {
        "AWS_ENDPOINT_URL": emulator_endpoint,
        "REDIS_URL": f"redis://kestrel:hunter2-Zq9@127.0.0.1:{free_port()}/0",
    }
    up = services("up", stack_env)
    assert up.returncode == 1 and "does not answer" in up.stderr
    assert "redis://kestrel:***@127.0.0.1:" in up.stderr
    status = services("status", stack_env)
    assert status.returncode == 0 and "redis://kestrel:***@127.0.0.1:" in status.stdout
    assert "hunter2-Zq9" not in up.stdout + up.stderr + status.stdout + status.stderr


def test_running_services_serves_and_stops_both(tmp_path: Path) -> None:
    with running_services(tmp_path) as stack:
        assert redis.Redis.from_url(stack.redis_url).ping()
        kinesis = boto3.client(
            "kinesis",
            endpoint_url=stack.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        assert kinesis.list_streams()["StreamNames"] == []
        processes = [stack.emulator.process, stack.redis.process]
    assert all(p.returncode is not None for p in processes)
    assert not redis_healthy(stack.redis_url)
    assert not (tmp_path / "emulator.pid").exists()
    assert not (tmp_path / "redis.pid").exists()


def test_session_fixtures_point_at_live_services(aws_env: dict[str, str]) -> None:
    assert redis.Redis.from_url(aws_env["REDIS_URL"]).ping()
    sqs = boto3.client(
        "sqs",
        endpoint_url=aws_env["AWS_ENDPOINT_URL"],
        region_name=aws_env["AWS_REGION"],
        aws_access_key_id=aws_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=aws_env["AWS_SECRET_ACCESS_KEY"],
    )
    url = sqs.create_queue(QueueName="services-fixture-check")["QueueUrl"]
    assert url in sqs.list_queues(QueueNamePrefix="services-fixture-check")["QueueUrls"]
    sqs.delete_queue(QueueUrl=url)
