"""`make deploy-localstack`: the built template on LocalStack, with or without Docker.

The steps, after `make build`:

1. LocalStack must answer ``/_localstack/health`` at the endpoint (else: how to start it).
2. A stack that a failed create left behind (``ROLLBACK_COMPLETE`` and the like) is deleted
   first, and the command says so; a stack already deployed is left as it is.
3. LocalStack runs Lambda code only in containers it starts through Docker. When no Docker
   daemon answers (`docker_available`), the functions (``AWS::Lambda::Function``) and
   everything that refers to them are left out (`kestrel_local.cfn_deploy.drop_resources`),
   and the command says once that Kestrel's own runtime runs the functions, and how.
   Without a LocalStack token CodeBuild is left out as well (a paid feature).
4. The stack is created (`kestrel_local.cfn_deploy.deploy`), then the schemas registered;
   LocalStack's free plan has no Glue, which is one warning: producers and decoders use the
   shipped schemas' fixed ids (`kestrel.adapters.glue_fallback`).

Command line::

    AWS_ENDPOINT_URL=http://127.0.0.1:4566 python -m kestrel_local.localstack_deploy \
        --template build/template.json --stack-name kestrel [--lambda auto|docker|none]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from urllib.parse import urlparse

from botocore.exceptions import BotoCoreError, ClientError

from kestrel.adapters.glue_fallback import register_shipped
from kestrel.adapters.glue_registry import GlueSchemaRegistry
from kestrel_local.aws import AwsClients, apply_local_endpoint_defaults
from kestrel_local.cfn_deploy import DeployError, deploy
from kestrel_local.deploy_args import deploy_arguments, parse_deploy_args
from kestrel_local.template import TemplateError

LAMBDA_FUNCTION = "AWS::Lambda::Function"
CODEBUILD_PROJECT = "AWS::CodeBuild::Project"
NO_DOCKER_REASON = "LocalStack runs Lambda code only in Docker, and no Docker daemon answers here"
NO_TOKEN_REASON = "CodeBuild comes with LocalStack's paid plans (no LOCALSTACK_AUTH_TOKEN)"
# States a failed create leaves: CreateStack with the same name fails until it is deleted.
FAILED_CREATE_STATES = frozenset(
    {"ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "CREATE_FAILED", "DELETE_FAILED"}
)
DELETE_TIMEOUT_S = 120.0


def docker_available(env: Mapping[str, str] | None = None, timeout_s: float = 2.0) -> bool:
    """True when a Docker daemon answers ``GET /_ping`` on DOCKER_HOST's (or the default) socket.

    A ``tcp://`` DOCKER_HOST is taken at its word (not probed).
    """
    env = os.environ if env is None else env
    docker_host = env.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    parsed = urlparse(docker_host)
    if parsed.scheme != "unix":
        return True
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(parsed.path)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            answer = sock.recv(256)
    except OSError:
        return False
    status_line = answer.split(b"\r\n", 1)[0]
    return status_line.startswith(b"HTTP/1.") and b" 200" in status_line


def localstack_healthy(endpoint: str, timeout_s: float = 5.0) -> bool:
    """True when LocalStack's ``/_localstack/health`` answers with its services."""
    try:
        url = f"{endpoint.rstrip('/')}/_localstack/health"
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(json.loads(response.read()).get("services"))
    except (OSError, ValueError, urllib.error.URLError):
        return False


def skipped_types(lambda_mode: str, token: bool, docker: bool) -> dict[str, str]:
    """Resource types to leave out (type: why) for this LocalStack."""
    skipped: dict[str, str] = {}
    if not token:
        skipped[CODEBUILD_PROJECT] = NO_TOKEN_REASON
    if lambda_mode == "none" or (lambda_mode == "auto" and not docker):
        skipped[LAMBDA_FUNCTION] = NO_DOCKER_REASON
    return skipped


def stack_status(clients: AwsClients, stack_name: str) -> str | None:
    """The stack's status, or None when no stack has this name."""
    try:
        stacks = clients.client("cloudformation").describe_stacks(StackName=stack_name)
    except ClientError as exc:
        if "does not exist" in str(exc):
            return None
        raise
    found = stacks.get("Stacks") or []
    return str(found[0]["StackStatus"]) if found else None


def _failed_resources(clients: AwsClients, stack_name: str) -> list[str]:
    """Logical ids of the stack's resources whose last operation failed."""
    described = clients.client("cloudformation").describe_stack_resources(StackName=stack_name)
    return [
        str(r["LogicalResourceId"])
        for r in described["StackResources"]
        if str(r.get("ResourceStatus", "")).endswith("FAILED")
    ]


def _wait_deleted(clients: AwsClients, stack_name: str, timeout_s: float) -> str | None:
    """Wait while the stack is deleted; None when it is gone, else the status it stopped in.

    LocalStack may roll back first, and reports DELETE_FAILED for resources a failed create
    never made before it finishes the deletion: both are waited through until `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    while (now := stack_status(clients, stack_name)) not in (None, "DELETE_COMPLETE"):
        waiting = now.endswith("_IN_PROGRESS") or now == "DELETE_FAILED"
        if not waiting or time.monotonic() > deadline:
            return now
        time.sleep(0.5)
    return None


def _wait_streams_gone(clients: AwsClients, stack_name: str, timeout_s: float) -> None:
    """Wait until the deleted stack's streams (named ``<stack>-...``) are gone from Kinesis."""
    kinesis = clients.client("kinesis")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        names = kinesis.list_streams().get("StreamNames", [])
        if not any(str(name).startswith(f"{stack_name}-") for name in names):
            return
        time.sleep(0.5)


def clear_failed_stack(
    clients: AwsClients, stack_name: str, timeout_s: float = DELETE_TIMEOUT_S
) -> str | None:
    """Delete the stack when a failed create left it; what was done (None: nothing to do).

    Resources that still cannot be deleted are retained on a second try (CloudFormation's
    RetainResources, for a stack in DELETE_FAILED).
    """
    status = stack_status(clients, stack_name)
    if status not in FAILED_CREATE_STATES:
        return None
    cfn = clients.client("cloudformation")
    retain = _failed_resources(clients, stack_name) if status == "DELETE_FAILED" else []
    cfn.delete_stack(StackName=stack_name, **({"RetainResources": retain} if retain else {}))
    now = _wait_deleted(clients, stack_name, timeout_s)
    if now == "DELETE_FAILED":
        retain = _failed_resources(clients, stack_name)
        cfn.delete_stack(StackName=stack_name, RetainResources=retain)
        now = _wait_deleted(clients, stack_name, timeout_s)
    if now is not None:
        raise DeployError(
            f"stack {stack_name} was {status} and could not be deleted ({now}): delete it "
            f"by hand (aws cloudformation delete-stack --stack-name {stack_name})"
        )
    _wait_streams_gone(clients, stack_name, timeout_s)
    return f"stack {stack_name} was left {status} by a failed create: deleted it first"


def runtime_command(endpoint: str) -> str:
    """The command that runs the stack's functions with Kestrel's runtime on this endpoint."""
    return f"AWS_ENDPOINT_URL={endpoint} make run"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line of `python -m kestrel_local.localstack_deploy` (see the module doc)."""
    parser = argparse.ArgumentParser(prog="python -m kestrel_local.localstack_deploy")
    deploy_arguments(parser)
    parser.add_argument(
        "--lambda",
        dest="lambda_mode",
        choices=["auto", "docker", "none"],
        default=os.environ.get("LOCALSTACK_LAMBDA", "auto"),
        help="auto: deploy the functions only when a Docker daemon answers (LOCALSTACK_LAMBDA)",
    )
    return parse_deploy_args(parser, argv)


def say(line: str) -> None:
    """Progress and notes on stderr."""
    print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace, endpoint: str) -> int:
    """Deploy (module doc, steps 1 to 4); the exit code."""
    if not localstack_healthy(endpoint):
        say(
            f"error: no LocalStack answers at {endpoint}. Start it: `make localstack-up` "
            "(host mode, no Docker), or with Docker "
            "`docker compose -f localstack/compose.yml up -d --wait`"
        )
        return 1
    clients = AwsClients(endpoint, args.region)
    docker = docker_available()
    skipped = skipped_types(args.lambda_mode, bool(os.environ.get("LOCALSTACK_AUTH_TOKEN")), docker)
    skipped.update({kind: "skipped with --skip-type" for kind in args.skip_type})
    if LAMBDA_FUNCTION in skipped:
        say(
            f"note: {NO_DOCKER_REASON}, so the stack leaves out the functions and what refers "
            "to them (listed below). Kestrel's own runtime runs the functions against this "
            f"stack: {runtime_command(endpoint)}"
        )
    cleared = clear_failed_stack(clients, args.stack_name)
    if cleared:
        say(cleared)
    status = stack_status(clients, args.stack_name)
    if status is not None:
        say(f"stack {args.stack_name} is deployed already ({status}): left as it is")
    else:
        say(f"deploying {args.template} as stack {args.stack_name} to {endpoint}")
        deployment = deploy(
            clients,
            args.template,
            args.stack_name,
            args.bucket,
            args.parameter_overrides,
            skipped,
            args.timeout,
        )
        for removed, why in deployment.removed.items():
            print(f"left out {removed}: {why}")
        print(f"stack {args.stack_name}: CREATE_COMPLETE, {len(deployment.resources)} resources")
        print(json.dumps({"StackId": deployment.stack_id, "Outputs": deployment.outputs}, indent=2))
    registry = GlueSchemaRegistry(clients.client("glue"), args.stack_name)
    warned: list[str] = []
    versions = register_shipped(registry, warned.append)
    for line in warned:
        say(f"warning: {line}")
    where = "fixed ids (no registry)" if warned else f"registry {args.stack_name}"
    print(f"schemas: {', '.join(versions)} ({where})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: AWS_ENDPOINT_URL (default http://127.0.0.1:4566) names LocalStack."""
    args = parse_args(argv)
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or "http://127.0.0.1:4566"
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    apply_local_endpoint_defaults()
    try:
        return run(args, endpoint)
    except (DeployError, TemplateError) as exc:
        say(f"deploy failed: {exc}")
        say("rerun `make deploy-localstack`: a stack left by a failed create is deleted first")
        return 1
    except (BotoCoreError, ClientError) as exc:
        say(f"deploy failed: {endpoint}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
