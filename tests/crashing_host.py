"""A host double: the real llama.cpp host, except that its first decode kills it.

``python tests/crashing_host.py FD`` behaves as ``python -m appliance.runtime.host FD``
(the real models load, the real protocol answers) until the first generate, classify or
embed, when the process kills itself with SIGSEGV: what a llama.cpp build with a broken
kernel for this CPU does (a native build on a Xeon with AMX died so in
``ggml_backend_amx_mul_mat``). ``CRASHING_HOST_ON`` narrows it to some operations
(comma-separated, default ``generate,classify,embed``).
"""

from __future__ import annotations

import os
import signal
import sys

from appliance.runtime import engine, host

CRASH_ON = set(filter(None, os.environ.get("CRASHING_HOST_ON", "generate,classify,embed").split(",")))


def _die() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


class CrashingEngine(engine.LlamaEngine):
    def generate(self, req):  # noqa: ANN001, ANN201 - the real signature
        if "generate" in CRASH_ON:
            _die()
        return super().generate(req)

    def classify(self, prompt, labels, adapter=None):  # noqa: ANN001, ANN201
        if "classify" in CRASH_ON:
            _die()
        return super().classify(prompt, labels, adapter)

    def embed(self, texts, normalize=True):  # noqa: ANN001, ANN201
        if "embed" in CRASH_ON:
            _die()
        return super().embed(texts, normalize)


if __name__ == "__main__":
    engine.LlamaEngine = CrashingEngine  # type: ignore[misc] - host.serve imports it from there
    sys.exit(host.main())
