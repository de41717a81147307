"""localstack/compose.yml and its ready hook: pinned, loopback-only, wired to the deploy."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
COMPOSE = ROOT / "localstack" / "compose.yml"
HOOK = ROOT / "localstack" / "init" / "ready.d" / "10-kestrel.sh"


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def _make_variable(name: str) -> str:
    match = re.search(rf"^{name} \?= (.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, f"{name} is not in the Makefile"
    return match.group(1)


def test_compose_pins_the_last_community_localstack_and_redis() -> None:
    services = _compose()["services"]
    # 4.14.0 is the last LocalStack Community image that starts without an auth token.
    assert services["localstack"]["image"] == "${LOCALSTACK_IMAGE:-localstack/localstack:4.14.0}"
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+", services["redis"]["image"])


def test_compose_publishes_ports_on_loopback_only() -> None:
    for name, service in _compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_compose_takes_the_auth_token_from_the_environment_only() -> None:
    env = _compose()["services"]["localstack"]["environment"]
    assert env["LOCALSTACK_AUTH_TOKEN"] == "${LOCALSTACK_AUTH_TOKEN:-}"


def test_lambda_containers_join_the_network_where_the_deploy_finds_redis() -> None:
    compose = _compose()
    network = compose["networks"]["default"]["name"]
    assert compose["services"]["localstack"]["environment"]["LAMBDA_DOCKER_NETWORK"] == network
    # make deploy-localstack's RedisUrl names compose's redis service, reachable on that network.
    redis_url = re.search(r"RedisUrl=(\S+)", _make_variable("LOCALSTACK_PARAMS"))
    assert redis_url and redis_url.group(1) == "redis://redis:6379/0"
    assert "redis" in compose["services"]
    assert _make_variable("LOCALSTACK_ENDPOINT").endswith(":4566")


def test_ready_hook_is_mounted_executable_and_valid_bash() -> None:
    volumes = _compose()["services"]["localstack"]["volumes"]
    assert "./init/ready.d:/etc/localstack/init/ready.d:ro" in volumes
    assert os.access(HOOK, os.X_OK)
    subprocess.run(["bash", "-n", str(HOOK)], check=True)
    # It creates the bucket cfn_deploy uploads to by default (<stack>-artifacts).
    assert '"${stack}-artifacts"' in HOOK.read_text()
