"""One measurement of whichever llama-cpp-python this process imports (``python -m bench.llama_child``).

The build benchmark runs this in a child process per build: with ``PYTHONPATH`` pointing
at the native baseline it measures that build, without it the appliance's own. It reads
a JSON job on stdin and prints one JSON line: the build's own report of its compiled CPU
features, and the tokens, texts and seconds it measured. Loading models is not timed.
With ``backend_dir`` or ``backend_library`` it first loads a CPU backend into a
``GGML_BACKEND_DL`` build.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import time
from typing import Any


def _load_cpu_backend(llama_cpp: Any, directory: str | None, library: str | None) -> None:
    """Load a CPU backend into a ``GGML_BACKEND_DL`` build (the ``dispatch`` variant).

    llama-cpp-python does not expose ``ggml_backend_load*`` (its issue #2069), so they are
    called through ctypes on the ``libggml.so.0`` that ``libllama`` links (the wheel holds
    copies, not symlinks, so ``libggml.so`` would be a second, empty registry).
    ``directory``: llama.cpp's own choice, the best-scoring ``libggml-cpu-*.so`` in it.
    """
    ggml = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml.so.0"))
    if library:
        ggml.ggml_backend_load.restype = ctypes.c_void_p
        ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
        if not ggml.ggml_backend_load(library.encode()):
            raise SystemExit(f"could not load the CPU backend {library}")
    else:
        ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
        ggml.ggml_backend_load_all_from_path(str(directory).encode())


def main() -> None:
    job = json.load(sys.stdin)
    import llama_cpp

    if job.get("backend_dir") or job.get("backend_library"):
        _load_cpu_backend(llama_cpp, job.get("backend_dir"), job.get("backend_library"))
    out: dict = {"llama_cpp": llama_cpp.__file__,
                 "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip()}
    threads = job["threads"]
    if job.get("generator"):
        llm = llama_cpp.Llama(job["generator"], n_ctx=2048, n_batch=512, n_threads=threads, n_threads_batch=threads,
                              flash_attn=True, seed=1234, verbose=False)
        llm.create_chat_completion(messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0.0)
        gen_tokens = gen_s = prompt_tokens = prompt_s = 0.0
        texts = []
        for prompt in job["prompts"]:
            llm.reset()
            llm._ctx.kv_cache_clear()
            messages = [{"role": "user", "content": prompt}]
            # prefill alone: the prompt evaluated once, no token generated after it
            ids = llm.tokenize(prompt.encode(), add_bos=True)
            t0 = time.perf_counter()
            llm.eval(ids)
            prompt_s += time.perf_counter() - t0
            prompt_tokens += len(ids)
            llm.reset()
            llm._ctx.kv_cache_clear()
            t0 = time.perf_counter()
            res = llm.create_chat_completion(messages=messages, max_tokens=job["max_tokens"], temperature=0.0,
                                             top_k=1, seed=1234)
            gen_s += time.perf_counter() - t0
            gen_tokens += res["usage"]["completion_tokens"]
            texts.append(res["choices"][0]["message"]["content"])
        llm.close()
        out.update(gen_tokens=gen_tokens, gen_s=gen_s, prompt_tokens=prompt_tokens, prompt_s=prompt_s, texts=texts)
    if job.get("embedder"):
        emb = llama_cpp.Llama(job["embedder"], embedding=True, n_ctx=512, n_batch=512, n_ubatch=512,
                              n_threads=threads, n_threads_batch=threads, flash_attn=True, verbose=False)
        emb.embed(job["texts"][:16], normalize=True, truncate=True)
        t0 = time.perf_counter()
        emb.embed(job["texts"], normalize=True, truncate=True)
        out.update(embed_texts=len(job["texts"]), embed_s=time.perf_counter() - t0)
        emb.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
