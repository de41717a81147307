"""`chalice package` builds functions/api into a SAM template offline, with every route of the API.

It packages the ``prod`` stage, the one for AWS: every data route requires the API key at
API Gateway (``api_key_required``), exactly as in template.yaml, and the app leaves the
check to it (KESTREL_API_AUTH=gateway). The ``dev`` stage, which ``chalice local`` runs,
keeps the app's own check.

The app is packaged from a copy (chalice caches build output under `.chalice/deployments`,
which must not land in the working tree). The subprocess runs with sockets disabled by a
`sitecustomize` module, so any attempt to reach the network (pip, a credentials lookup on
the instance metadata service, DNS) fails the test instead of passing slowly or by luck.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from kestrel_local.template import load_template

REPO = Path(__file__).resolve().parents[2]
API_DIR = REPO / "functions" / "api"
TEMPLATE = load_template(REPO / "template.yaml")
STAGE = "prod"
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}

# Imported by every Python process of the subprocess tree (PYTHONPATH): refuses and records
# any IPv4/IPv6 connection and any name lookup.
_NO_NETWORK = """
import errno, os, socket

_LOG = os.environ["KESTREL_NETWORK_LOG"]
with open(os.environ["KESTREL_NETWORK_ARMED"], "a") as _armed:
    _armed.write(f"{os.getpid()}\\n")


def _refuse(what):
    with open(_LOG, "a") as log:
        log.write(f"{os.getpid()} {what!r}\\n")
    raise OSError(errno.ENETUNREACH, f"network disabled by the test: {what!r}")


_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex


def _guarded_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _refuse(address)
    return _connect(self, address)


def _guarded_connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _refuse(address)
    return _connect_ex(self, address)


def _guarded_getaddrinfo(host, *args, **kwargs):
    _refuse(("getaddrinfo", host))


socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex
socket.getaddrinfo = _guarded_getaddrinfo
"""


def chalice_package(api_dir: Path, work: Path) -> tuple[Path, list[str]]:
    """Run `chalice package` on a copy of `api_dir` with no network; (output dir, attempts)."""
    project = work / "api"
    shutil.copytree(api_dir, project, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.rmtree(project / ".chalice" / "deployments", ignore_errors=True)
    guard = work / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(_NO_NETWORK)
    network_log, armed = work / "network.log", work / "armed.log"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "PIP_", "PYTHON"))
    }
    env.update(
        PYTHONPATH=str(guard),
        KESTREL_NETWORK_LOG=str(network_log),
        KESTREL_NETWORK_ARMED=str(armed),
        # Region and credentials from the environment: botocore looks nothing up elsewhere.
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=str(work / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(work / "no-aws-credentials"),
    )
    out = work / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from chalice.cli import main; sys.exit(main())",
            "--project-dir",
            str(project),
            "package",
            "--stage",
            STAGE,
            str(out),
        ],
        env=env,
        cwd=work,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert armed.is_file(), "the no-network guard was not loaded in the chalice process"
    assert done.returncode == 0, f"chalice package failed:\n{done.stdout}\n{done.stderr}"
    attempts = network_log.read_text().splitlines() if network_log.exists() else []
    return out, attempts


def template_api_routes() -> Counter[tuple[str, str]]:
    """(METHOD, path) of every Api event of ApiFunction in template.yaml."""
    events = TEMPLATE["Resources"]["ApiFunction"]["Properties"]["Events"]
    return Counter(
        (str(e["Properties"]["Method"]).upper(), str(e["Properties"]["Path"]))
        for e in events.values()
        if e["Type"] == "Api"
    )


def template_key_rule() -> dict[tuple[str, str], bool]:
    """(METHOD, path) -> does template.yaml's API Gateway demand the key on that route?"""
    events = TEMPLATE["Resources"]["ApiFunction"]["Properties"]["Events"]
    default = TEMPLATE["Resources"]["ScoringApi"]["Properties"]["Auth"]["ApiKeyRequired"]
    rule = {}
    for event in events.values():
        props = event["Properties"]
        own = (props.get("Auth") or {}).get("ApiKeyRequired")
        rule[(str(props["Method"]).upper(), str(props["Path"]))] = bool(
            default if own is None else own
        )
    return rule


def packaged_routes(sam: dict[str, Any]) -> Counter[tuple[str, str]]:
    """(METHOD, path) of every operation in the packaged REST API (CORS preflights left out)."""
    apis = [r for r in sam["Resources"].values() if r["Type"] == "AWS::Serverless::Api"]
    assert len(apis) == 1, "chalice package should declare one REST API"
    paths: dict[str, dict[str, Any]] = apis[0]["Properties"]["DefinitionBody"]["paths"]
    return Counter(
        (method.upper(), path)
        for path, operations in paths.items()
        for method in operations
        if method in HTTP_METHODS and method != "options"
    )


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """`chalice package` output of the real functions/api, and any network attempts it made."""
    if not (API_DIR / "app.py").is_file():
        pytest.fail(f"{API_DIR / 'app.py'} is missing: nothing to package", pytrace=False)
    return chalice_package(API_DIR, tmp_path_factory.mktemp("chalice"))


def test_chalice_package_runs_without_network(packaged: tuple[Path, list[str]]) -> None:
    out, attempts = packaged
    assert attempts == [], f"chalice package tried to reach the network: {attempts}"
    assert (out / "sam.json").is_file()
    assert (out / "deployment.zip").is_file()


def test_chalice_package_declares_every_template_route(
    packaged: tuple[Path, list[str]],
) -> None:
    sam = json.loads((packaged[0] / "sam.json").read_text())
    expected = template_api_routes()
    assert expected, "template.yaml declares no Api event on ApiFunction"
    assert packaged_routes(sam) == expected


def test_chalice_package_function_matches_template_function(
    packaged: tuple[Path, list[str]],
) -> None:
    sam = json.loads((packaged[0] / "sam.json").read_text())
    functions = [
        r["Properties"]
        for r in sam["Resources"].values()
        if r["Type"] == "AWS::Serverless::Function"
    ]
    assert len(functions) == 1
    packaged_fn = functions[0]
    template_fn = TEMPLATE["Resources"]["ApiFunction"]["Properties"]
    function_globals = TEMPLATE["Globals"]["Function"]
    assert packaged_fn["Handler"] == template_fn["Handler"] == "app.app"
    # chalice names the Python that runs it (no setting); template.yaml deploys python3.12,
    # the first runtime on Amazon Linux 2023, whose glibc the onnxruntime wheels need.
    here = f"python{sys.version_info.major}.{sys.version_info.minor}"
    assert packaged_fn["Runtime"] == here
    assert function_globals["Runtime"] == "python3.12"
    assert packaged_fn["Timeout"] == template_fn["Timeout"]
    assert packaged_fn["MemorySize"] == template_fn.get(
        "MemorySize", function_globals["MemorySize"]
    )
    variables = (packaged_fn.get("Environment") or {}).get("Variables") or {}
    assert "KESTREL_API_KEY" not in variables
    template_variables = {
        **function_globals["Environment"]["Variables"],
        **template_fn["Environment"]["Variables"],
    }
    assert set(variables) <= set(template_variables)
    # API Gateway checks the key, as in template.yaml; the app does not hold one.
    assert variables["KESTREL_API_AUTH"] == template_variables["KESTREL_API_AUTH"] == "gateway"


def test_chalice_package_requires_the_api_key_on_every_data_route(
    packaged: tuple[Path, list[str]],
) -> None:
    sam = json.loads((packaged[0] / "sam.json").read_text())
    (api,) = [r for r in sam["Resources"].values() if r["Type"] == "AWS::Serverless::Api"]
    body = api["Properties"]["DefinitionBody"]
    assert body["securityDefinitions"]["api_key"] == {
        "type": "apiKey",
        "name": "x-api-key",
        "in": "header",
    }
    packaged_rule = {
        (method.upper(), path): op.get("security") == [{"api_key": []}]
        for path, operations in body["paths"].items()
        for method, op in operations.items()
        if method in HTTP_METHODS and method != "options"
    }
    assert packaged_rule == template_key_rule()
    keyed = {route for route, needs_key in packaged_rule.items() if needs_key}
    assert {path for _, path in keyed} >= {"/v1/score", "/v1/telemetry", "/metrics"}
    assert all(path.startswith("/v1/") or path == "/metrics" for _, path in keyed)


def test_chalice_package_gateway_mode_is_only_in_the_stage_for_aws() -> None:
    # `chalice local` runs the dev stage by default: there the app must check the key itself.
    config = json.loads((API_DIR / ".chalice" / "config.json").read_text())
    assert "KESTREL_API_AUTH" not in config.get("environment_variables", {})
    assert "KESTREL_API_AUTH" not in config["stages"]["dev"].get("environment_variables", {})
    assert config["stages"][STAGE]["environment_variables"]["KESTREL_API_AUTH"] == "gateway"
    assert (API_DIR / ".chalice" / config["stages"][STAGE]["iam_policy_file"]).is_file()


def test_chalice_package_bundles_app_without_third_party_deps(
    packaged: tuple[Path, list[str]],
) -> None:
    with zipfile.ZipFile(packaged[0] / "deployment.zip") as bundle:
        names = bundle.namelist()
    assert "app.py" in names
    assert not any(name.startswith(".chalice/") for name in names)
    # Dependencies come from the layers: no redis, pybreaker or prometheus_client in the zip.
    top_level = {name.split("/", 1)[0] for name in names}
    assert not top_level & {"redis", "pybreaker", "prometheus_client", "onnxruntime", "kestrel"}
