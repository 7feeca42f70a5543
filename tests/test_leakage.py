"""Property: nothing a user may not read reaches them, anywhere.

Random documents under random labels, random users with random clearances, random
questions. Every document carries a unique marker; for each question, no marker of a
document the user may not read may appear in the prompts sent to the model, the answer,
its citations, the trace shown to that user, their session memory, an error message,
or that user's filtered audit export. The knowledge base, Chroma, the stores and the
audit log are real; the model is a fake at the engine seam that repeats what it is
shown (the worst case for a leak). The same enforcement over the real model is tested
in test_agent.py and test_cli_agent.py.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.access.labels import Labels, LevelScale, Principal
from appliance.agent.loop import Agent
from appliance.agent.store import AgentStore
from appliance.audit.export import ExportFilter, export_log
from appliance.audit.log import AuditLog
from appliance.audit.verify import verify_export
from appliance.config import KnowledgeSettings
from appliance.errors import ApplianceError
from appliance.knowledge.base import KnowledgeBase
from appliance.knowledge.retrieval import Retriever
from appliance.runtime.protocol import GenerateRequest, GenerateResult
from tests.helpers import hashed_embed

SCALE = LevelScale()
WORDS = ["kiosk", "badge", "canteen", "cipher", "reactor", "convoy", "archive", "server", "harbour", "signal",
         "ledger", "runway", "vault", "antenna", "bridge", "depot"]
COMPS = ["CRYPTO", "NUCLEAR", "HUMINT"]


class EchoEngine:
    """Repeats the first passage it is shown: any leak into a prompt becomes a leak into the answer."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def generate(self, req: GenerateRequest, on_token=None) -> GenerateResult:
        prompt = (req.system or "") + "\n" + (req.prompt or "")
        self.prompts.append(prompt)
        body = prompt.split("\u00ab", 1)[1].split("\u00bb", 1)[0] if "\u00ab" in prompt else "Nothing"
        text = body.split(".")[0].strip() + ". [1]"
        if on_token:
            on_token(text)
        return GenerateResult(text, "stop", len(prompt) // 4, len(text) // 4, 0.0, None, 0.0, 0.0, None)

    def embed(self, texts, **_kw) -> list[list[float]]:
        return hashed_embed(list(texts))


labels_st = st.builds(lambda level, comps: Labels(level, frozenset(comps)), st.sampled_from(SCALE.levels),
                      st.sets(st.sampled_from(COMPS), max_size=2))
doc_st = st.tuples(st.lists(st.sampled_from(WORDS), min_size=3, max_size=8), labels_st)
user_st = st.tuples(st.sampled_from(SCALE.levels), st.sets(st.sampled_from(COMPS), max_size=3))
question_st = st.lists(st.sampled_from(WORDS), min_size=1, max_size=4).map(lambda ws: " ".join(ws) + "?")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=st.lists(doc_st, min_size=2, max_size=7), users=st.lists(user_st, min_size=1, max_size=3),
       questions=st.lists(question_st, min_size=1, max_size=3))
def test_no_unreadable_chunk_reaches_a_user_anywhere(docs, users, questions) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        engine = EchoEngine()
        kb = KnowledgeBase(root / "kb", hashed_embed, scale=SCALE, settings=KnowledgeSettings())
        markers: dict[str, Labels] = {}
        for i, (words, labels) in enumerate(docs):
            marker = f"zq{i}marker"
            markers[marker] = labels
            path = root / f"doc{i}.txt"
            path.write_text(f"The {' '.join(words)} {marker} is recorded. Also {words[0]} {words[-1]} {marker}.\n")
            kb.ingest_files([path], labels)
        log = AuditLog(root / "audit", durable=False)
        store = AgentStore(root / "agent.db")
        agent = Agent(Retriever(kb, kb.settings), engine, store, SCALE, auditor=log,  # type: ignore[arg-type]
                      audit_answers="text")
        for u, (level, comps) in enumerate(users):
            me = Principal(f"user{u}", level, frozenset(comps))
            hidden = [m for m, lab in markers.items() if not me.can_read(lab, SCALE)]
            session = store.new_session(me.name)
            for q in questions:
                engine.prompts.clear()
                seen: list[str] = []
                try:
                    a = agent.ask(q, me, session_id=session, on_token=seen.append)
                    seen += [json.dumps(a.as_dict()), json.dumps(store.trace(a.trace_id, user=me.name))]
                except ApplianceError as exc:
                    seen.append(str(exc))
                seen += engine.prompts
                seen += [json.dumps(t.__dict__) for t in store.turns(session, me.name)]
                blob = "\n".join(seen)
                leaked = [m for m in hidden if m in blob]
                assert not leaked, f"{me} saw {leaked} ({q!r})"
            out = root / f"export-{u}"
            export_log(log, out, by="officer", filt=ExportFilter(user=me.name))
            assert verify_export(out).filtered
            exported = b"".join(f.read_bytes() for f in out.iterdir()).decode()
            assert not [m for m in hidden if m in exported]
            assert not any(f'"user{v}"' in exported for v in range(len(users)) if v != u)
        log.close()
