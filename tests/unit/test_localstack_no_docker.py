"""LocalStack without Docker or Glue: fixed schema ids, registration, deploy choices, defaults."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import pytest
from botocore.exceptions import ClientError
from glue_doubles import client_error

from kestrel.adapters.glue_fallback import NO_REGISTRY_WARNING, register_shipped
from kestrel.adapters.glue_lookup import registry_missing
from kestrel.adapters.glue_registry import GlueSchemaApi, GlueSchemaRegistry
from kestrel.adapters.onnx_model import S3ModelSource
from kestrel.codec import SHIPPED_SCHEMAS, AvroEncoder, schema_definition, transaction_decoder
from kestrel.events import PoisonReason, PoisonRecord
from kestrel.shipped_schemas import canonical, shipped_id, shipped_ids, shipped_versions
from kestrel_local.aws import is_loopback_endpoint, local_endpoint_defaults
from kestrel_local.localstack_deploy import (
    CODEBUILD_PROJECT,
    LAMBDA_FUNCTION,
    docker_available,
    skipped_types,
)
from kestrel_local.localstack_host import (
    INSTALL_HINT,
    HostConfig,
    HostError,
    host_env,
    python_candidates,
)

LOCALSTACK_501 = client_error(
    "InternalFailure",
    "The API for service glue is either not included in your current license plan or has "
    "not yet been emulated by LocalStack.",
    501,
)


class NoGlue:
    """Every Glue call answers as LocalStack's free plan does (HTTP 501); counts the calls."""

    def __init__(self, error: ClientError = LOCALSTACK_501) -> None:
        self.calls = 0
        self.error = error

    def __getattr__(self, name: str) -> Any:
        def call(**_: Any) -> Any:
            self.calls += 1
            raise self.error

        return call

    @property
    def api(self) -> GlueSchemaApi:
        return cast(GlueSchemaApi, self)


def test_shipped_ids_are_fixed_distinct_and_from_the_canonical_definition() -> None:
    ids = shipped_ids()
    assert set(ids) == set(SHIPPED_SCHEMAS)
    assert len(set(ids.values())) == len(ids)
    # The same id on every machine: a UUID-5 of the definition, key order and spaces aside.
    assert shipped_id("transaction.v2") == UUID("2cc6fb72-9679-5d4d-9c23-849df6e425a5")
    definition = schema_definition("label.v1")
    reordered = json.dumps(dict(reversed(list(json.loads(definition).items()))), indent=4)
    assert canonical(reordered) == canonical(definition)
    assert all(version_id.version == 5 for version_id in ids.values())
    assert shipped_versions()[ids["label.v1"]] == definition


def test_registry_decodes_fixed_ids_without_any_call() -> None:
    glue = NoGlue()
    registry = GlueSchemaRegistry(glue.api, "kestrel")
    encoder = AvroEncoder(schema_definition("transaction.v2"), shipped_id("transaction.v2"))
    record = {
        "transaction_id": "T1",
        "customer_id": "C1",
        "terminal_id": "M1",
        "amount": 12.5,
        "event_time": 1_795_000_000_000,
    }
    decoded = transaction_decoder(registry)(encoder(record))
    assert (decoded.transaction_id, decoded.amount) == ("T1", 12.5)
    assert glue.calls == 0


def test_registry_check_passes_without_glue_and_fails_on_other_errors() -> None:
    assert GlueSchemaRegistry(NoGlue().api, "kestrel").check() == "NO_REGISTRY"
    denied = NoGlue(client_error("AccessDeniedException", "no", 400))
    with pytest.raises(ClientError):
        GlueSchemaRegistry(denied.api, "kestrel").check()


def test_unknown_id_without_glue_is_poison_not_an_outage() -> None:
    registry = GlueSchemaRegistry(NoGlue().api, "kestrel")
    frame = AvroEncoder(schema_definition("transaction.v2"), UUID(int=7))(
        {"transaction_id": "T", "customer_id": "C", "terminal_id": "M", "amount": 1.0,
         "event_time": 1_795_000_000_000}
    )  # fmt: skip
    with pytest.raises(PoisonRecord) as caught:
        transaction_decoder(registry)(frame)
    assert caught.value.reason is PoisonReason.UNKNOWN_SCHEMA


def test_registry_missing_tells_no_glue_from_a_passing_failure() -> None:
    assert registry_missing(LOCALSTACK_501)
    assert not registry_missing(client_error("InternalServiceException", "oops", 500))
    assert not registry_missing(client_error("ThrottlingException", "Rate exceeded", 400))
    assert not registry_missing(client_error("EntityNotFoundException"))
    assert not registry_missing(ValueError("x"))


def test_register_shipped_without_glue_warns_once_and_hands_out_the_fixed_ids() -> None:
    warned: list[str] = []
    ids = register_shipped(GlueSchemaRegistry(NoGlue().api, "kestrel"), warned.append)
    assert ids == shipped_ids()
    assert warned == [NO_REGISTRY_WARNING]


def test_register_shipped_keeps_other_registry_errors() -> None:
    glue = NoGlue(client_error("AccessDeniedException", "no", 400))
    with pytest.raises(ClientError):
        register_shipped(GlueSchemaRegistry(glue.api, "kestrel"), lambda _: None)


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:4566", True),
        ("http://localhost:5050", True),
        ("https://localhost.localstack.cloud:4566", True),
        ("http://[::1]:4566", True),
        ("http://127.0.0.2:1", True),
        ("https://kinesis.us-east-1.amazonaws.com", False),
        ("http://10.0.0.5:4566", False),
        ("not a url", False),
    ],
)
def test_is_loopback_endpoint(url: str, loopback: bool) -> None:
    assert is_loopback_endpoint(url) is loopback


def test_local_endpoint_defaults_fill_region_and_test_credentials_for_loopback_only() -> None:
    local = {"AWS_ENDPOINT_URL": "http://127.0.0.1:4566"}
    assert local_endpoint_defaults(local) == {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    mine = {**local, "AWS_REGION": "eu-west-1", "AWS_PROFILE": "dev"}
    assert local_endpoint_defaults(mine) == {}
    assert local_endpoint_defaults({"AWS_ENDPOINT_URL": "https://example.com"}) == {}
    assert local_endpoint_defaults({}) == {}


def test_skipped_types_leave_out_functions_only_without_docker() -> None:
    assert LAMBDA_FUNCTION in skipped_types("auto", token=True, docker=False)
    assert skipped_types("auto", token=True, docker=True) == {}
    assert LAMBDA_FUNCTION in skipped_types("none", token=True, docker=True)
    assert LAMBDA_FUNCTION not in skipped_types("docker", token=True, docker=False)
    assert CODEBUILD_PROJECT in skipped_types("docker", token=False, docker=True)


def test_docker_available_is_false_without_a_daemon(tmp_path: Path) -> None:
    assert not docker_available({"DOCKER_HOST": f"unix://{tmp_path}/docker.sock"})


def test_host_config_accepts_only_plain_http_on_127_0_0_1() -> None:
    config = HostConfig.from_env({"LOCALSTACK_ENDPOINT": "http://127.0.0.1:4999"})
    assert config.port == 4999
    for endpoint in ("http://0.0.0.0:4566", "https://127.0.0.1:4566", "http://10.1.1.1:4566"):
        with pytest.raises(HostError):
            HostConfig.from_env({"LOCALSTACK_ENDPOINT": endpoint})


def test_host_env_binds_loopback_and_keeps_state_in_the_run_folder(tmp_path: Path) -> None:
    config = HostConfig("http://127.0.0.1:4999", tmp_path, tmp_path / "venv")
    env = host_env(config, {"NODE_OPTIONS": "--max-old-space-size=512"})
    assert env["GATEWAY_LISTEN"] == "127.0.0.1:4999"
    assert env["GATEWAY_SERVER"] == "hypercorn"
    assert env["OVERRIDE_IN_DOCKER"] == "0"  # else /var/lib/localstack, whatever is set
    assert env["FILESYSTEM_ROOT"] == str(tmp_path / "localstack" / "fs")
    assert env["DISABLE_EVENTS"] == "1"
    assert env["NODE_OPTIONS"].startswith("--max-old-space-size=512 --require ")
    assert Path(env["NODE_OPTIONS"].rsplit(" ", 1)[1]).is_file()


class MissingPointer:
    """An S3 client whose model pointer does not exist yet (before the first export)."""

    def get_object(self, **_: Any) -> Any:
        raise ClientError(cast(Any, {"Error": {"Code": "NoSuchKey", "Message": "no"}}), "GetObject")


def test_missing_model_pointer_is_one_warning_and_no_model(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    source = S3ModelSource(MissingPointer(), f"bucket-{tmp_path.name}", tmp_path)
    with caplog.at_level(logging.WARNING, logger="kestrel.adapters.onnx_model"):
        assert source.poll() is None
        assert source.poll() is None
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "no model pointer" in warnings[0].getMessage()


def test_python_candidates_look_in_localstack_python_then_pyenv(tmp_path: Path) -> None:
    pyenv = tmp_path / "pyenv"
    found = pyenv / "versions" / "3.13.1" / "bin" / "python3.13"
    found.parent.mkdir(parents=True)
    found.touch()
    (pyenv / "versions" / "3.12.1" / "bin").mkdir(parents=True)
    candidates = python_candidates({"LOCALSTACK_PYTHON": "/opt/py/bin/python3.13",
                                    "PYENV_ROOT": str(pyenv)})  # fmt: skip
    assert candidates[0] == "/opt/py/bin/python3.13"
    assert str(found) in candidates
    assert not any("3.12" in c for c in candidates)
    assert "pyenv install 3.13" in INSTALL_HINT and "LOCALSTACK_PYTHON" in INSTALL_HINT
