"""The fraud model on onnxruntime, from the model layer and, hot-swapped, from S3.

Files (written by ``kestrel_training.registry``): ``model.onnx`` and ``manifest.json``.
The ONNX model takes one float32 input (``manifest["onnx"]["input"]``, default the first
input) of shape (n, len(feature_names)) and returns the class probabilities in the output
``manifest["onnx"]["output"]`` (default ``probabilities``), converted with
``zipmap=False``: a float tensor (n, 2), fraud in column ``manifest["onnx"]["fraud_column"]``
(default 1). A model converted with ZipMap (a list of {class: probability} dicts) is also
accepted and read through the same column.

S3 layout (``kestrel_training.registry.upload``; the pointer is written last)::

    s3://<MODEL_BUCKET>/models/<version>/model.onnx
    s3://<MODEL_BUCKET>/models/<version>/manifest.json
    s3://<MODEL_BUCKET>/<MODEL_POINTER_KEY>       default models/active.json
        {"model_name": str, "version": str, "model_key": str, "manifest_key": str,
         "feature_set_hash": str, "updated_at": ISO-8601 UTC,
         "challenger": {"version", "model_key", "manifest_key", ...}}   # optional

The optional ``challenger`` entry names the version the stream shadow-scores beside the
active one (`kestrel.adapters.onnx_challenger`); a pointer without it means no challenger.

Hot swap: `S3ModelSource.poll` reads the pointer (one small GetObject). When its
(version, model_key, manifest_key) differ from the last version this source returned, it
downloads the manifest to a temporary folder, refuses it at once if the feature-set hash
or feature names differ from the running definitions (without downloading the model),
else downloads ``model.onnx``, builds a new session and returns the model; the scorer then
swaps it in as one reference. The temporary folder is removed once the session is built
(the session holds the model in memory), so ``/tmp`` does not fill up on Lambda. When
to poll is the scorer's choice (`kestrel.scoring.Scorer`: lazily, at most every
MODEL_REFRESH_S seconds, on scoring calls), which is what works on Lambda, where a
container is frozen between invocations. Once read, the pointer wins over the layer: a
container whose layer holds another version than the pointer switches to the pointer's.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from botocore.exceptions import ClientError

from kestrel.features import FEATURE_NAMES, FEATURE_SET_HASH
from kestrel.scoring import DEFAULT_REFRESH_S, ModelManifest, RejectedModel, Scorer
from kestrel.settings import Settings

logger = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
DEFAULT_POINTER_KEY = "models/active.json"


def session_options(threads: int = 1) -> ort.SessionOptions:
    """onnxruntime options for a scorer: `threads` intra-op threads, one inter-op thread."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


class OnnxModel:
    """One model version on one onnxruntime CPU session (`kestrel.ports.Model`).

    Build it once per version and container; `predict_proba` is safe to call from several
    threads (onnxruntime sessions allow concurrent `run`).

    Args:
        onnx_model: The serialized ONNX model, or a path to ``model.onnx``.
        manifest: The parsed ``manifest.json`` of the same version.
        threads: intra-op threads of the session (1: one scoring call uses one core).

    Raises:
        RejectedModel: The ONNX file cannot be loaded, or has no such input/output.
    """

    def __init__(
        self, onnx_model: bytes | str | Path, manifest: Mapping[str, Any], threads: int = 1
    ) -> None:
        self._manifest = dict(manifest)
        spec = self._manifest.get("onnx") or {}
        source = str(onnx_model) if isinstance(onnx_model, Path) else onnx_model
        try:
            self._session = ort.InferenceSession(
                source, session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several private types
            raise RejectedModel(f"cannot load the ONNX model: {exc}") from None
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name: o for o in self._session.get_outputs()}
        self._input = str(spec.get("input") or next(iter(inputs)))
        self._output = str(spec.get("output") or "probabilities")
        self._column = int(spec.get("fraud_column", 1))
        if self._input not in inputs or self._output not in outputs:
            raise RejectedModel(
                f"ONNX model has inputs {sorted(inputs)} and outputs {sorted(outputs)}; the "
                f"manifest names input {self._input!r} and output {self._output!r}"
            )
        self._zipmap = str(outputs[self._output].type).startswith("seq(map(")
        self._outputs = [self._output]

    @classmethod
    def from_folder(cls, folder: str | Path, threads: int = 1) -> OnnxModel:
        """Load ``model.onnx`` and ``manifest.json`` from `folder` (e.g. the model layer)."""
        root = Path(folder)
        try:
            manifest = json.loads((root / MANIFEST_FILE).read_text())
        except json.JSONDecodeError as exc:
            raise RejectedModel(f"{root / MANIFEST_FILE}: not JSON: {exc}") from None
        return cls(root / MODEL_FILE, manifest, threads)

    @property
    def manifest(self) -> Mapping[str, Any]:
        """The parsed ``manifest.json`` of this version."""
        return self._manifest

    def predict_proba(self, rows: Any) -> npt.NDArray[np.float64]:
        """Probability of class 1 for each row of a float32 (n, features) array."""
        matrix = np.ascontiguousarray(rows, dtype=np.float32)
        out = self._session.run(self._outputs, {self._input: matrix})[0]
        if self._zipmap:
            return np.fromiter((row[self._column] for row in out), np.float64, len(out))
        return np.asarray(out[:, self._column], dtype=np.float64)


class LayerModelSource:
    """The model layer only (`kestrel.ports.ModelSource`): loads once, never changes.

    Args:
        folder: The folder holding ``model.onnx`` and ``manifest.json`` (MODEL_DIR).
        threads: intra-op threads of the session.
    """

    def __init__(self, folder: str | Path, threads: int = 1) -> None:
        self._folder = Path(folder)
        self._threads = threads

    def load(self) -> OnnxModel:
        """The layer's model."""
        return OnnxModel.from_folder(self._folder, self._threads)

    def poll(self) -> None:
        """Nothing else ever becomes active."""
        return None


class S3ModelSource:
    """The model layer at cold start, then the version the S3 pointer names (`ModelSource`).

    Args:
        client: A boto3 S3 client (created once per container; ``AWS_ENDPOINT_URL`` selects
            the local emulator).
        bucket: The model bucket (MODEL_BUCKET).
        folder: The model layer folder (MODEL_DIR), loaded by `load`.
        pointer_key: The active-version pointer (MODEL_POINTER_KEY), layout in the module doc.
        threads: intra-op threads of each session.
        feature_names: The running feature names, to refuse a version before downloading it.
        feature_set_hash: The running feature-set hash, likewise.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        folder: str | Path,
        pointer_key: str = DEFAULT_POINTER_KEY,
        threads: int = 1,
        feature_names: tuple[str, ...] = FEATURE_NAMES,
        feature_set_hash: str = FEATURE_SET_HASH,
    ) -> None:
        if not bucket:
            raise ValueError("MODEL_BUCKET: the S3 model source needs a bucket name")
        self._s3 = client
        self._bucket = bucket
        self._folder = Path(folder)
        self._pointer_key = pointer_key
        self._threads = threads
        self._names = feature_names
        self._hash = feature_set_hash
        self._known: tuple[str, str, str] | None = None
        self._known_version: str | None = None
        self.pointer: dict[str, Any] | None = None  # the last pointer read

    def load(self) -> OnnxModel:
        """The model layer's model (the version the pointer is compared with later)."""
        model = OnnxModel.from_folder(self._folder, self._threads)
        self._known_version = str(model.manifest.get("model_version"))
        return model

    def read_pointer(self) -> dict[str, Any]:
        """Read the pointer (one GetObject) and keep it as `pointer`; RejectedModel if not JSON."""
        body = self._s3.get_object(Bucket=self._bucket, Key=self._pointer_key)["Body"].read()
        try:
            pointer = json.loads(body)
        except ValueError as exc:
            raise RejectedModel(f"malformed model pointer {self._pointer_key}: {exc!r}") from None
        if not isinstance(pointer, dict):
            raise RejectedModel(f"malformed model pointer {self._pointer_key}: not an object")
        self.pointer = pointer
        return pointer

    def poll(self) -> OnnxModel | None:
        """The pointer's version if it changed since the last one returned; else None.

        No pointer yet (before the first export) is the normal state: the layer's model
        keeps serving, and one WARNING per process says so.
        """
        try:
            pointer = self.read_pointer()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchKey":
                raise
            _warn_no_pointer(self._bucket, self._pointer_key)
            return None
        target = pointer_target(pointer, self._pointer_key)
        if target == self._known or (self._known is None and target[0] == self._known_version):
            self._known = target
            return None
        try:
            model = self.fetch(target)
        except RejectedModel:
            self._known = target  # offer a refused version once, not on every poll
            raise
        self._known = target
        return model

    def fetch(self, target: tuple[str, str, str]) -> OnnxModel:
        """Download one version (version, model key, manifest key) and build its session.

        The manifest comes first: a version whose features differ from the running ones is
        refused (`RejectedModel`) without downloading its model.
        """
        version, model_key, manifest_key = target
        with tempfile.TemporaryDirectory(prefix="kestrel-model-") as tmp:
            folder = Path(tmp)
            self._s3.download_file(self._bucket, manifest_key, str(folder / MANIFEST_FILE))
            try:
                raw = json.loads((folder / MANIFEST_FILE).read_text())
            except json.JSONDecodeError as exc:
                raise RejectedModel(f"model {version}: manifest is not JSON: {exc}") from None
            ModelManifest.parse(raw).check_compatible(self._names, self._hash)
            self._s3.download_file(self._bucket, model_key, str(folder / MODEL_FILE))
            model = OnnxModel(folder / MODEL_FILE, raw, self._threads)
        logger.info("downloaded model version %s from s3://%s", version, self._bucket)
        return model


_NO_POINTER_WARNED: set[str] = set()


def _warn_no_pointer(bucket: str, key: str) -> None:
    """One WARNING per process and pointer: no model pointer is the state before an export."""
    where = f"s3://{bucket}/{key}"
    if where in _NO_POINTER_WARNED:
        return
    _NO_POINTER_WARNED.add(where)
    logger.warning(
        "no model pointer at %s yet (normal before the first `make model-layer "
        "MODEL_BUCKET=...`): serving the model layer's version",
        where,
    )


def pointer_target(entry: Mapping[str, Any], where: str) -> tuple[str, str, str]:
    """(version, model key, manifest key) of a pointer entry; RejectedModel if malformed."""
    try:
        return str(entry["version"]), str(entry["model_key"]), str(entry["manifest_key"])
    except (KeyError, TypeError) as exc:
        raise RejectedModel(f"malformed model pointer {where}: {exc!r}") from None


def build_scorer(settings: Settings, s3_client: Any = None, threads: int = 1) -> Scorer:
    """The container's scorer: the layer at MODEL_DIR, hot-swapped from S3 if MODEL_BUCKET.

    Call once per container (cache it) so there is one session per model version.

    Args:
        settings: MODEL_DIR, MODEL_BUCKET, MODEL_POINTER_KEY, MODEL_REFRESH_S and the region
            and endpoint for the S3 client.
        s3_client: An S3 client to reuse; by default one is made from `settings`.
        threads: intra-op threads of each onnxruntime session.
    """
    refresh_s = settings.model_refresh_s if settings.model_bucket else DEFAULT_REFRESH_S
    source: LayerModelSource | S3ModelSource
    if not settings.model_bucket:
        source = LayerModelSource(settings.model_dir, threads)
    else:
        source = _s3_source(settings, s3_client, threads)
    return Scorer(
        source,
        refresh_s=refresh_s,
        review_threshold=settings.review_threshold,
        decline_threshold=settings.decline_threshold,
    )


def _s3_source(settings: Settings, s3_client: Any, threads: int) -> S3ModelSource:
    if s3_client is None:
        import boto3

        s3_client = boto3.client(
            "s3", region_name=settings.region, endpoint_url=settings.aws_endpoint_url
        )
    return S3ModelSource(
        s3_client, settings.model_bucket, settings.model_dir, settings.model_pointer_key, threads
    )
