"""The embedded AWS emulator: moto's server on loopback, with Kestrel's pinned Kinesis patches."""

from kestrel_local.emulator.patches import (
    PINNED_MOTO_VERSION,
    UnsupportedMotoVersionError,
    apply_patches,
    patches_applied,
)

__all__ = [
    "PINNED_MOTO_VERSION",
    "UnsupportedMotoVersionError",
    "apply_patches",
    "patches_applied",
]
