"""Training-free activation sparsity for dense GGUF models (`turbosparse calibrate`): per-layer thresholds on the
FFN's gate and activation, chosen on calibration text and stored as turbosparse.* keys in a copy of the file."""

from __future__ import annotations

from turbosparse.calibrate.collect import CollectConfig
from turbosparse.calibrate.pipeline import CalibrateConfig, CalibrationResult, Quality, calibrate, write_calibrated
from turbosparse.calibrate.thresholds import ALLOCATIONS, METHODS, Calibration, Planner

__all__ = [
    "ALLOCATIONS",
    "METHODS",
    "CalibrateConfig",
    "Calibration",
    "CalibrationResult",
    "CollectConfig",
    "Planner",
    "Quality",
    "calibrate",
    "write_calibrated",
]
