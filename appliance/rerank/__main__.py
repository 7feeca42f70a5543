"""Train the cross-encoders on the build station (torch; a long run, never on the appliance).

    python -m appliance.rerank reranker --out DIR
    python -m appliance.rerank verifier --out DIR

Each writes a delta (``*-delta.safetensors``) and ``provenance.json`` to DIR. Copy both (the
provenance as ``reranker-provenance.json`` or ``verifier-provenance.json``) to
``appliance/rerank/weights/`` and pin the delta's sha256 in
``appliance/runtime/model_sources.py``; ``appliance models fetch`` then merges it into the
pinned MiniLM and converts it. Progress goes out as plain lines (one per 25 steps).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "scifact"
MINILM = REPO / ".test-data" / "models" / "sources" / "all-minilm-l6-v2"


def _progress(t0: float):  # noqa: ANN202
    def show(step: int, total: int, loss: float) -> None:
        if step % 25 == 0 or step == total:
            print(f"step {step}/{total} loss {loss:.4f} {time.time() - t0:.0f}s", flush=True)
    return show


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.rerank")
    parser.add_argument("which", choices=("reranker", "verifier"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--base", type=Path, default=MINILM, help="the MiniLM source directory (safetensors)")
    parser.add_argument("--data", type=Path, default=DATA, help="the SciFact directory")
    args = parser.parse_args(argv)
    t0 = time.time()
    if args.which == "reranker":
        from appliance.rerank.train import TrainConfig, train_reranker
        prov = train_reranker(args.base, args.data / "corpus.jsonl", args.data / "claims_train.jsonl", args.out,
                              TrainConfig(), progress=_progress(t0))
    else:
        from appliance.evaluation.verification import VERIFICATION_SET
        from appliance.rerank.nli import NliConfig, excluded_documents, generate_pairs, split_pairs, train_verifier
        from appliance.rerank.train import PROVENANCE_FILE
        cfg = NliConfig()
        pairs, summary = generate_pairs(args.data / "corpus.jsonl", excluded_documents(VERIFICATION_SET), cfg)
        train, held = split_pairs(pairs)
        print(f"{len(train)} training pairs, {len(held)} for calibration: {summary['kinds']}", flush=True)
        prov = train_verifier(args.base, train, args.out, cfg, summary | {"calibration_pairs": len(held)},
                              held=held, progress=_progress(t0))
        (args.out / PROVENANCE_FILE).write_text(json.dumps(prov, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(prov, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
