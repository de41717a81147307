"""The purchase-propensity model on onnxruntime: its own layer and its own S3 pointer.

The files are the fraud model's (``model.onnx`` + ``manifest.json``, layout in
`kestrel.adapters.onnx_model`), written by ``kestrel_training.propensity_registry``:

    layer   layers/propensity-model/propensity/   -> /opt/propensity/ on Lambda
            (PROPENSITY_MODEL_DIR; a subfolder, so it never shadows the fraud layer's
            /opt/model.onnx in a function that has both)
    S3      s3://<MODEL_BUCKET>/models/propensity/<version>/{model.onnx,manifest.json}
            s3://<MODEL_BUCKET>/<PROPENSITY_POINTER_KEY>  default models/propensity/active.json

The generic pieces serve it unchanged: `OnnxModel`, `LayerModelSource`, `S3ModelSource`
and `kestrel.scoring.Scorer`, given the clickstream's feature names and feature-set hash,
so a manifest trained on other features is refused exactly as the fraud scorer refuses one.
"""

from __future__ import annotations

from typing import Any

from kestrel.adapters.onnx_model import LayerModelSource, S3ModelSource
from kestrel.click_features import CLICK_FEATURE_NAMES, CLICK_FEATURE_SET_HASH
from kestrel.scoring import DEFAULT_REFRESH_S, Scorer
from kestrel.settings import Settings


def build_propensity_scorer(settings: Settings, s3_client: Any = None, threads: int = 1) -> Scorer:
    """The container's propensity scorer: the layer, then the S3 pointer if MODEL_BUCKET.

    Call once per container (cache it). Without a usable model the scorer logs why once
    and `Scorer.score_batch` raises `kestrel.scoring.NoModelError`.

    Args:
        settings: PROPENSITY_MODEL_DIR, PROPENSITY_POINTER_KEY, MODEL_BUCKET,
            MODEL_REFRESH_S, and the region and endpoint for the S3 client.
        s3_client: An S3 client to reuse; by default one is made from `settings`.
        threads: intra-op threads of each onnxruntime session.
    """
    source: LayerModelSource | S3ModelSource
    if not settings.model_bucket:
        source = LayerModelSource(settings.propensity_model_dir, threads)
        refresh_s = DEFAULT_REFRESH_S
    else:
        if s3_client is None:
            import boto3

            s3_client = boto3.client(
                "s3", region_name=settings.region, endpoint_url=settings.aws_endpoint_url
            )
        source = S3ModelSource(
            s3_client,
            settings.model_bucket,
            settings.propensity_model_dir,
            settings.propensity_pointer_key,
            threads,
            feature_names=CLICK_FEATURE_NAMES,
            feature_set_hash=CLICK_FEATURE_SET_HASH,
        )
        refresh_s = settings.model_refresh_s
    return Scorer(
        source,
        refresh_s=refresh_s,
        feature_names=CLICK_FEATURE_NAMES,
        feature_set_hash=CLICK_FEATURE_SET_HASH,
    )
