"""The command-line arguments the deploy commands share (cfn_deploy and localstack_deploy)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence


def deploy_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every deploy command takes: template, stack, bucket, region, overrides."""
    parser.add_argument(
        "--template", default="build/template.json", help="built template (from `make build`)"
    )
    parser.add_argument("--stack-name", default="kestrel")
    parser.add_argument("--bucket", help="artifact bucket (default: <stack-name>-artifacts)")
    parser.add_argument("--region", default=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    parser.add_argument("--parameter-overrides", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--skip-type",
        action="append",
        default=[],
        metavar="TYPE",
        help="leave out resources of this type (and what refers to them); repeatable",
    )
    parser.add_argument("--timeout", type=float, default=600.0)


def parse_deploy_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace:
    """Parse `argv`; overrides become a dict (a pair without `=` is a usage error), bucket set."""
    args = parser.parse_args(argv)
    overrides: dict[str, str] = {}
    for pair in args.parameter_overrides:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            parser.error(f"--parameter-overrides: {pair!r} is not KEY=VALUE")
        overrides[key] = value
    args.parameter_overrides = overrides
    args.bucket = args.bucket or f"{args.stack_name}-artifacts"
    return args
