"""What each kind of verified payload does to a new generation, and the checks before it.

Every payload is checked before anything changes (:func:`check_payloads`): models and
adapters are validated as GGUF files (structure, limits, kind; an embedder must be an
embedding architecture), an adapter's base-model digest must be the digest of the
generator that will serve it, and a policy must parse and name valid accounts. Only then
are models registered (content-addressed, additive: the old generation's models stay),
knowledge ingested into the new generation, and the index re-embedded if the embedder
changes.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from appliance.access.labels import parse_labels
from appliance.access.policy_file import Policy, check_policy, load_policy
from appliance.engines import active_models, spec_for
from appliance.errors import (
    ApplianceError,
    BundleError,
    EngineSelfTestError,
    GGUFError,
    ModelStoreError,
    UnknownModelError,
)
from appliance.knowledge.base import KnowledgeBase
from appliance.knowledge.parsers import parse_file
from appliance.runtime.gguf_check import GGUFLimits, validate_gguf
from appliance.runtime.model_store import ENCODER_ARCHITECTURES, MODEL_KINDS, encoder_misfit, generator_misfit
from appliance.updates.check import Plan, PlannedTarget, named_copy
from appliance.updates.generations import GenerationInfo
from appliance.updates.site import UpdateSite

__all__ = ["Checked", "check_payloads", "selftest_models", "register_models", "apply_knowledge",
           "MAX_POLICY_BYTES"]

MAX_POLICY_BYTES = 1 << 20
EMBEDDERS = ENCODER_ARCHITECTURES


@dataclass
class Checked:
    """The plan's payloads, validated: what the new generation will serve."""

    models: dict[str, PlannedTarget] = field(default_factory=dict)  # kind -> target
    adapters: dict[str, PlannedTarget] = field(default_factory=dict)  # adapter name -> target
    policy: tuple[PlannedTarget, Policy] | None = None
    evaluation: dict[str, PlannedTarget] = field(default_factory=dict)  # evaluation set name -> target
    generator_sha256: str | None = None  # the base the adapters are for

    @property
    def embedder_changes(self) -> bool:
        return "embedder" in self.models


def check_payloads(site: UpdateSite, plan: Plan) -> Checked:
    """Validate every non-knowledge payload of a verified plan; BundleError names the first bad one."""
    limits = site.settings.limits
    out = Checked()
    for t in plan.targets:
        if t.role == "models":
            kind = t.custom.get("kind")
            if kind not in MODEL_KINDS or kind in out.models:
                raise BundleError(f"{t.path}: kind must be one of {', '.join(MODEL_KINDS)}, one of each per bundle")
            try:
                info = validate_gguf(t.verified_file, limits=GGUFLimits(max_file_bytes=limits.max_model_bytes),
                                     expect="model")
            except GGUFError as exc:
                raise BundleError(f"{t.path}: refused, not a valid GGUF model: {_bare(exc, t)}") from exc
            if kind == "generator" and info.architecture in EMBEDDERS:
                raise BundleError(f"{t.path}: architecture {info.architecture!r} cannot serve as the {kind}")
            try:
                encoder_misfit(Path(t.path), info, kind)
                generator_misfit(Path(t.path), info, kind)
            except ModelStoreError as exc:
                raise BundleError(f"refused: {exc}") from exc
            out.models[kind] = t
        elif t.role == "adapters":
            try:
                validate_gguf(t.verified_file, limits=GGUFLimits(max_file_bytes=limits.max_adapter_bytes),
                              expect="adapter")
            except GGUFError as exc:
                raise BundleError(f"{t.path}: refused, not a valid GGUF LoRA adapter: {_bare(exc, t)}") from exc
            out.adapters[str(t.custom.get("name") or Path(t.path).parent.name)] = t
        elif t.role == "policy" and t.path.startswith("policy/evaluation/"):
            assert plan.work is not None  # verify_bundle gives every plan its verified work directory
            out.evaluation[_evaluation_set(t, plan.work)] = t
        elif t.role == "policy":
            out.policy = (t, _policy(site, t))
    if "generator" in out.models:
        out.generator_sha256 = out.models["generator"].sha256
    elif out.adapters:
        try:
            out.generator_sha256 = active_models(site.settings, site.store, site.generation())[
                "generator"].sha256
        except UnknownModelError as exc:
            raise BundleError(f"the bundle brings adapters but no generator is installed: {exc}") from exc
    for name, t in out.adapters.items():
        base = t.custom.get("base_sha256")
        if base != out.generator_sha256:
            raise BundleError(f"{t.path}: adapter {name!r} is for the base model {str(base)[:16]}…, but the "
                              f"generator that would serve it is {str(out.generator_sha256)[:16]}…")
    return out


def _bare(exc: Exception, t: PlannedTarget) -> str:
    """The validator's message without the appliance's internal path of the payload."""
    return str(exc).replace(f"{t.verified_file}: ", "").replace(str(t.verified_file), t.path)


def _evaluation_set(t: PlannedTarget, work: Path) -> str:
    """The name of a bundled evaluation set whose items all check (EvaluationError names the bad line)."""
    from appliance.errors import EvaluationError
    from appliance.evaluation.sets import NAME, load_items

    name = str(t.custom.get("name") or "")
    if not NAME.match(name):
        raise BundleError(f"{t.path}: an evaluation set needs a name of a-z 0-9 . _ -")
    try:
        load_items(named_copy(t, work))
    except EvaluationError as exc:
        raise BundleError(f"{t.path}: the evaluation set is refused: {_bare(exc, t)}") from exc
    return name


def _policy(site: UpdateSite, t: PlannedTarget) -> Policy:
    if t.length > MAX_POLICY_BYTES:
        raise BundleError(f"{t.path}: the policy is over {MAX_POLICY_BYTES} bytes")
    try:
        doc = tomllib.loads(t.verified_file.read_text(encoding="utf-8"))
        policy = load_policy(doc, site.scale, t.path)
        check_policy(site.accounts(), policy)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{t.path}: the policy is not valid TOML: {exc}") from exc
    except ApplianceError as exc:
        raise BundleError(f"{t.path}: {exc}") from exc
    return policy


def selftest_models(site: UpdateSite, checked: Checked, serving: GenerationInfo) -> None:
    """Run the start-up self-test on what the new generation would serve, from the verified files,
    before any of them enters the model store: a model this build cannot run here is refused and
    leaves the store and the serving generation as they were."""
    if not checked.models and not checked.adapters:
        return
    s, store = site.settings, site.store
    known = site.model_identities()
    paths: dict[str, str | None] = {}
    template: str | None = None  # a stored generator's family template (a bundle's must bring its own)
    reranker = s.runtime.reranker if s.knowledge.rerank else ""
    verifier = s.runtime.verifier if s.agent.entailment else ""
    for kind, configured in (("generator", s.runtime.generator), ("embedder", s.runtime.embedder),
                             ("reranker", reranker), ("verifier", verifier)):
        if kind in checked.models:
            t = checked.models[kind]
            paths[kind] = str(t.verified_file)
            known[str(t.verified_file)] = (str(t.custom.get("name") or Path(t.path).parent.name), t.sha256)
            continue
        chosen = serving.models.get(kind)
        try:
            rec = store.by_sha256(chosen["sha256"]) if chosen else store.get(configured)
        except UnknownModelError:
            paths[kind] = None
            continue
        paths[kind] = str(rec.path)
        if kind == "generator":
            template = rec.metadata.get("chat_template")
    adapters: dict[str, str] = {}
    if paths["generator"] is not None:
        base = checked.generator_sha256 or known.get(paths["generator"], ("", ""))[1]
        adapters = {a.name: str(a.path) for a in store.list("adapter") if a.base_sha256 in (None, base)}
        if "generator" not in checked.models:
            adapters.update({n: str(store.by_sha256(sha).path) for n, sha in serving.adapters.items()})
        for name, t in checked.adapters.items():
            adapters[name] = str(t.verified_file)
            known[str(t.verified_file)] = (name, t.sha256)
    try:
        site.selftest().ensure(spec_for(s, paths["generator"], paths["embedder"], adapters,
                                            reranker_path=paths["reranker"], verifier_path=paths["verifier"],
                                            generator_template=template),
                                   known)
    except EngineSelfTestError as exc:
        raise BundleError(f"the bundle's models fail the start-up self-test on this machine: {exc}") from exc


def register_models(site: UpdateSite, checked: Checked, info: GenerationInfo) -> None:
    """Add the bundle's models and adapters to the store (by digest) and name them in ``info``."""
    store = site.store
    for kind, t in checked.models.items():
        name = str(t.custom.get("name") or Path(t.path).parent.name)
        _register(store, t, name, kind, None)
        info.models[kind] = {"name": name, "sha256": t.sha256}
    for name, t in checked.adapters.items():
        _register(store, t, name, "adapter", checked.generator_sha256)
        info.adapters[name] = t.sha256


def _register(store, t: PlannedTarget, name: str, kind: str, base: str | None) -> None:  # noqa: ANN001
    try:
        store.by_sha256(t.sha256)
        return  # the same bytes are already registered
    except UnknownModelError:
        pass
    if store.has(name):
        name = f"{name}-{t.sha256[:12]}"  # never re-point a name an older generation may serve
    try:
        store.add_file(t.verified_file, name=name, kind=kind, source=f"bundle:{t.path}", base_sha256=base,
                       verified_sha256=t.sha256)
    except (ModelStoreError, GGUFError) as exc:
        raise BundleError(f"{t.path}: {exc}") from exc


def apply_knowledge(site: UpdateSite, plan: Plan, kb: KnowledgeBase, by: str,
                    progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
    """Ingest the plan's knowledge into the new generation's ``kb`` and remove what it revokes.

    A document the pipeline refuses fails the whole apply: a bundle is applied completely or not at all.
    """
    targets = [t for t in plan.targets if t.role == "knowledge" and t.path not in plan.unchanged_targets]
    counts = {"added": 0, "replaced": 0, "unchanged": sum(len(plan.docs.get(p, [])) for p in plan.unchanged_targets),
              "revoked": 0}
    for i, t in enumerate(targets):
        assert plan.work is not None  # verify_bundle gives every plan its verified work directory
        try:
            labels = parse_labels(str(t.custom.get("labels", "")), site.scale)
            docs = plan.parsed.get(t.path) or parse_file(named_copy(t, plan.work), kb.parse_limits)
        except ApplianceError as exc:
            raise BundleError(f"{t.path}: {exc}") from exc
        report = kb.ingest_documents(docs, labels, by=by, source=Path(t.path).name,
                                     collection=str(t.custom.get("collection") or "") or None)
        failed = [o for o in report.outcomes if o.status == "failed"]
        if failed:
            raise BundleError(f"{t.path}: {failed[0].source}: {failed[0].reason}")
        for key in ("added", "replaced", "unchanged"):
            counts[key] += report.count(key)
        if progress:
            progress(i + 1, len(targets))
    for doc_id in plan.revoke:
        counts["revoked"] += int(kb.delete(doc_id))
    return counts
