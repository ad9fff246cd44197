"""Backbone + FPN, the shared head, and the detector."""
from date.modeling.build import build_detector
from date.modeling.detector import DATEDetector
from date.modeling.head import DATEHead

__all__ = ["DATEDetector", "DATEHead", "build_detector"]
