"""One measurement of whichever llama-cpp-python this process imports (``python -m bench.llama_child``).

The build benchmark runs this in a child process per build: with ``PYTHONPATH`` pointing
at the native baseline it measures that build, without it the appliance's own. It reads
a JSON job on stdin and prints one JSON line: the build's own report of its compiled CPU
features, and the tokens, texts and seconds it measured. Loading models is not timed.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    job = json.load(sys.stdin)
    import llama_cpp

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
