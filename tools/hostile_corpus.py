"""Write events/kinesis-hostile.json: a Kinesis event of hostile records, each one poison.

    python tools/hostile_corpus.py            # (re)write the event file
    python tools/hostile_corpus.py --check    # exit 1 when the committed file is out of date

Every record names its case in its partition key and must be parked in the poison queue
with the reason `CASES` gives (`tests/integration/test_hostile_corpus.py` runs the file
through TransactionsFunction; `make invoke FUNCTION=TransactionsFunction
EVENT=events/kinesis-hostile.json` replays it). The cases: huge integers, deep nesting,
NaN and Infinity spelled every way, ids with braces, colons, newlines and unicode, a record
at the stream's 1 MiB limit, truncated Avro, Avro of an unregistered schema version, and the
two-record sample event of the Powertools for AWS Lambda (Python) test suite
(tests/events/kinesisStreamEvent.json, plain text payloads). The output is deterministic.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import NAMESPACE_URL, uuid5

from kestrel.codec import encode, schema_definition

REPO = Path(__file__).resolve().parent.parent
EVENT_FILE = REPO / "events" / "kinesis-hostile.json"
STREAM_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/kestrel-transactions"
ROLE_ARN = "arn:aws:iam::123456789012:role/kestrel-TransactionsFunctionRole"
SHARD = "shardId-000000000000"
ARRIVAL = 1_795_857_400.0  # 2026-11-28T09:16:40Z
KINESIS_LIMIT = 1024 * 1024  # data plus partition key
# A version id no registry holds: registries give each version a random UUID (v4).
UNREGISTERED = uuid5(NAMESPACE_URL, "https://kestrel.invalid/hostile-corpus/unregistered")
BASE: dict[str, Any] = {
    "transaction_id": "T-HOSTILE",
    "customer_id": "C-HOSTILE",
    "terminal_id": "TERM-HOSTILE",
    "amount": 12.5,
    "event_time": "2026-11-28T09:15:00.000Z",
}


@dataclass(frozen=True, slots=True)
class Case:
    """One hostile record: its name (partition key), bytes, reason and the field named.

    `field` is what the dead letter's detail starts with: a field name, or ``data`` for the
    record as a whole (the API names ``body`` then). `event_data` is the event's ``data``
    as is, for records that are not even base64.
    """

    name: str
    data: bytes
    reason: str
    field: str
    event_data: str | None = None


def _json(**raw: str) -> bytes:
    """BASE as JSON text with some fields replaced by raw JSON text (any spelling)."""
    fields = {name: json.dumps(value) for name, value in BASE.items()} | raw
    return ("{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in fields.items()) + "}").encode()


def _frame(compress: bool = False) -> bytes:
    record = {**BASE, "event_time": 1_795_857_300_000, "channel": "web", "device_id": "D-1"}
    return encode(record, schema_definition("transaction.v2"), UNREGISTERED, compress)


def _number_cases() -> list[Case]:
    cases = [
        Case("amount-400-digit-integer", _json(amount="9" * 400), "invalid_field", "amount"),
        Case("amount-400-digit-negative", _json(amount="-" + "9" * 400), "invalid_field", "amount"),
        Case("amount-4400-digit-integer", _json(amount="1" + "0" * 4400), "invalid_json", "data"),
        Case("event-time-400-digits", _json(event_time="9" * 400), "invalid_field", "event_time"),
        Case("amount-1e400", _json(amount="1e400"), "invalid_field", "amount"),
        Case("amount-minus-1e400", _json(amount="-1e400"), "invalid_field", "amount"),
        Case("event-time-1e400", _json(event_time="1e400"), "invalid_field", "event_time"),
    ]
    literals = ["NaN", "-NaN", "Infinity", "-Infinity", "+Infinity", "nan", "NAN", "inf", "-inf"]
    literals += ["Inf", "INF", "infinity", "+inf", "1e", ".5", "0x10"]
    cases += [
        Case(f"amount-literal-{text}", _json(amount=text), "invalid_json", "data")
        for text in literals
    ]
    cases.append(Case("event-time-literal-NaN", _json(event_time="NaN"), "invalid_json", "data"))
    strings = ["NaN", "Infinity", "-Infinity", "inf", "1e400", "12.5"]
    cases += [
        Case(f"amount-string-{t}", _json(amount=json.dumps(t)), "invalid_field", "amount")
        for t in strings
    ]
    return cases


def _nesting_cases() -> list[Case]:
    deep = 100_000
    return [
        Case("amount-nested-100000", _json(amount="[" * deep + "]" * deep), "invalid_json", "data"),
        Case("array-nested-100000", b"[" * deep + b"]" * deep, "invalid_json", "data"),
        Case(
            "object-nested-100000",
            b'{"a":' * deep + b"1" + b"}" * deep,
            "invalid_json",
            "data",
        ),
        Case("unclosed-array-100000", b"[" * deep, "invalid_json", "data"),
    ]


def _id_cases() -> list[Case]:
    customer_ids = {
        "braces": "{C-1}",
        "closing-brace": "C-1}",
        "opening-brace": "{C-1",
        "hash-tag-key": "{c:C-1}:log",
        "leading-colon": ":C-1",
        "trailing-newline": "C-1\n",
        "inner-newline": "C\n-1",
        "leading-newline": "\nC-1",
        "crlf": "C-1\r\n",
        "nul": "C-1\x00",
        "trailing-space": "C-1 ",
        "latin-letter": "\u00c7-1",
        "arabic-digit": "C-\u0661",
        "fullwidth": "\uff23-1",
        "zero-width-space": "C-\u200b1",
        "rtl-override": "C-1\u202e",
        "emoji": "C-\U0001f4b3",
        "lone-surrogate": "\ud800",
        "empty": "",
        "129-characters": "C" * 129,
    }
    field = "customer_id"
    cases = [
        Case(f"customer-id-{name}", _json(customer_id=json.dumps(v)), "invalid_field", field)
        for name, v in customer_ids.items()
    ]
    cases += [
        Case("terminal-id-braces", _json(terminal_id='"{TERM}"'), "invalid_field", "terminal_id"),
        Case(
            "transaction-id-colon-newline",
            _json(transaction_id=json.dumps("T:1\n")),
            "invalid_field",
            "transaction_id",
        ),
        Case("channel-lone-surrogate", _json(channel='"\\udc80"'), "invalid_field", "channel"),
        Case("channel-newline", _json(channel='"web\\n"'), "invalid_field", "channel"),
    ]
    return cases


def _avro_cases() -> list[Case]:
    plain, packed = _frame(), _frame(compress=True)
    garbage, bomb = bytes(range(40)), zlib.compress(b"\0" * (9 << 20))
    return [
        Case("avro-unregistered-version", plain, "unknown_schema", "data"),
        Case("avro-unregistered-version-zlib", packed, "unknown_schema", "data"),
        Case("avro-truncated-body-unregistered", plain[:-5], "unknown_schema", "data"),
        Case("avro-truncated-header", plain[:10], "undecodable", "data"),
        Case("avro-header-byte-only", plain[:1], "undecodable", "data"),
        Case("avro-truncated-zlib", packed[:-5], "undecodable", "data"),
        Case("avro-zlib-trailing-bytes", packed + b"trailing", "undecodable", "data"),
        Case("avro-not-zlib", packed[:18] + garbage, "undecodable", "data"),
        Case("avro-unknown-compression", plain[:1] + b"\x07" + plain[2:], "undecodable", "data"),
        Case("avro-zlib-bomb", packed[:18] + bomb, "undecodable", "data"),
    ]


def _other_cases() -> list[Case]:
    text = json.dumps(BASE)
    return [
        Case("not-base64", b"", "undecodable", "data", event_data="not base64 at all!"),
        Case("empty-record", b"", "invalid_json", "data"),
        Case("utf16-json", text.encode("utf-16"), "undecodable", "data"),
        Case("utf8-bom-json", b"\xef\xbb\xbf" + text.encode(), "invalid_json", "data"),
        Case("invalid-utf8", b'{"transaction_id": "\xc3\x28"}', "undecodable", "data"),
        Case("json-array", b"[]", "invalid_json", "data"),
        Case("json-null", b"null", "invalid_json", "data"),
        Case("json-empty-object", b"{}", "missing_field", "transaction_id"),
        Case(
            "duplicate-key-negative-amount",
            _json(amount="12.5").replace(b"}", b',"amount":-1}'),
            "invalid_field",
            "amount",
        ),
    ]


def _at_limit() -> Case:
    """A record whose data and partition key are exactly the stream's 1 MiB record limit."""
    name = "at-stream-limit-1mib"
    size = KINESIS_LIMIT - len(name.encode())
    empty = _json(device_id='""')
    data = empty.replace(b'"device_id":""', b'"device_id":"' + b"A" * (size - len(empty)) + b'"')
    assert len(data) == size
    return Case(name, data, "invalid_field", "device_id")


CASES: tuple[Case, ...] = (
    *_number_cases(),
    *_nesting_cases(),
    *_id_cases(),
    *_avro_cases(),
    *_other_cases(),
    _at_limit(),
)

# Powertools for AWS Lambda (Python), tests/events/kinesisStreamEvent.json: its two records.
POWERTOOLS_RECORDS: tuple[dict[str, Any], ...] = tuple(
    {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": "1",
            "sequenceNumber": sequence,
            "data": base64.b64encode(text).decode("ascii"),
            "approximateArrivalTimestamp": arrival,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"shardId-000000000006:{sequence}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": "arn:aws:iam::123456789012:role/lambda-role",
        "awsRegion": "us-east-2",
        "eventSourceARN": "arn:aws:kinesis:us-east-2:123456789012:stream/lambda-stream",
    }
    for sequence, text, arrival in (
        (
            "49590338271490256608559692538361571095921575989136588898",
            b"Hello, this is a test.",
            1545084650.987,
        ),
        (
            "49590338271490256608559692540925702759324208523137515618",
            b"This is only a test.",
            1545084711.166,
        ),
    )
)


def sequence_number(index: int) -> str:
    """The sequence number of the corpus's `index`-th own record (56 digits, increasing)."""
    return f"49657734271840271094355780390734429143347318398423{index:06d}"


def expected() -> dict[str, tuple[str, str]]:
    """(reason, field named) of every record of the event, by sequence number."""
    found = {sequence_number(i): (case.reason, case.field) for i, case in enumerate(CASES)}
    for record in POWERTOOLS_RECORDS:
        found[record["kinesis"]["sequenceNumber"]] = ("invalid_json", "data")
    return found


def kinesis_event() -> dict[str, Any]:
    """The hostile corpus as one Kinesis event, the shape Lambda passes to a handler."""
    records = list(POWERTOOLS_RECORDS)
    for index, case in enumerate(CASES):
        sequence = sequence_number(index)
        data = case.event_data
        records.append(
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": case.name,
                    "sequenceNumber": sequence,
                    "data": base64.b64encode(case.data).decode("ascii") if data is None else data,
                    "approximateArrivalTimestamp": ARRIVAL + index / 1000,
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": f"{SHARD}:{sequence}",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": ROLE_ARN,
                "awsRegion": "us-east-1",
                "eventSourceARN": STREAM_ARN,
            }
        )
    return {"Records": records}


def render() -> str:
    """The event file's text."""
    return json.dumps(kinesis_event(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the event file, or with --check say whether it is current."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = EVENT_FILE.is_file() and EVENT_FILE.read_text() == text
        print(f"{EVENT_FILE.name}: {'up to date' if current else 'stale: rerun without --check'}")
        return 0 if current else 1
    EVENT_FILE.write_text(text)
    print(f"wrote {EVENT_FILE} ({len(CASES) + len(POWERTOOLS_RECORDS)} records, {len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
