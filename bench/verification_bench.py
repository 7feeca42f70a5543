"""The answer verifier on the wrong-claim set: wrong sentences rejected, right ones kept.

Today's rule (lexical and semantic support, ``appliance.agent.grounding.Grounder`` at the
agent's threshold) is the baseline every new verifier is reported beside. The targets
(issue 17) are >= 0.9 of wrong sentences rejected and >= 0.9 of right ones kept.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from appliance.agent.grounding import Grounder
from appliance.config import AgentSettings
from appliance.evaluation.verification import grounder_verifier, load_verification_set, score_verifier
from appliance.runtime.client import EngineClient
from appliance.runtime.protocol import EngineSpec
from bench.runtime_bench import THREADS, _store


def run(quick: bool = False, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    items = load_verification_set()
    emb = _store().get("all-minilm-l6-v2")
    with EngineClient(EngineSpec(embedder_path=str(emb.path), threads=THREADS)) as engine:
        grounder = Grounder(lambda texts: engine.embed(list(texts)), threshold=AgentSettings().support_threshold)
        with console.status(f"today's rule over {len(items)} sentences…"):
            today = score_verifier(items, grounder_verifier(grounder))
    rows = [
        {"name": f"wrong sentences rejected, today's rule ({today['wrong']} wrong)",
         "appliance": f"{today['wrong_rejected']:.3f}", "baseline": "-", "ratio": None, "target": ">= 0.9",
         "met": today["wrong_rejected"] >= 0.9},
        {"name": f"right sentences kept, today's rule ({today['right']} right)",
         "appliance": f"{today['right_kept']:.3f}", "baseline": "-", "ratio": None, "target": ">= 0.9",
         "met": today["right_kept"] >= 0.9},
        {"name": "precision of rejections, today's rule", "appliance": f"{today['rejection_precision'] or 0:.3f}",
         "baseline": "-", "ratio": None, "target": "(reported)", "met": True},
    ]
    for kind, k in today["per_kind"].items():
        rows.append({"name": f"  {kind}: accepted / n", "appliance": f"{k['accepted']}/{k['n']}", "baseline": "-",
                     "ratio": None, "target": "(reported)", "met": True})
    return {"today": today, "rows": rows}
