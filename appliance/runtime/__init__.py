"""The model runtime: validated GGUF models served by an isolated llama.cpp host."""

from appliance.runtime.client import EngineClient, RequestLimits
from appliance.runtime.gguf_check import GGUFInfo, GGUFLimits, validate_gguf
from appliance.runtime.model_store import ModelRecord, ModelStore
from appliance.runtime.protocol import EngineSpec, GenerateRequest, GenerateResult

__all__ = [
    "EngineClient",
    "EngineSpec",
    "GGUFInfo",
    "GGUFLimits",
    "GenerateRequest",
    "GenerateResult",
    "ModelRecord",
    "ModelStore",
    "RequestLimits",
    "validate_gguf",
]
