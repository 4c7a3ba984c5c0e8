"""Model registry, ONNX export and runtime, embedder and the local LLM."""
from __future__ import annotations
