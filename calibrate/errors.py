"""The one error class of the `calibrate` package."""

from __future__ import annotations

from onnxship.core.errors import OnnxshipError


class CalibrateError(OnnxshipError):
    """Errors of calibrate/: calibration data, quantization configs and recipes, accuracy budget.

    exit_code 2 (default) for bad input; 1 when a check ran and failed (no recipe met the
    accuracy budget).
    """
