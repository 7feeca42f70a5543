"""Apply a verified bundle into a new generation, switch to it atomically; roll back; recover.

Order of :func:`apply_bundle` (each step named for the fault-injection tests):

1. ``verified``   stage and verify (:func:`verify_bundle`); check every payload
2. ``models``     the start-up self-test on the new models (from the verified files, in a
                  throwaway host); then register them and the adapters (content-addressed,
                  additive); an engine with the new models starts loading in the background
3. ``copied``     a new generation: a copy of the serving knowledge (catalog and index)
4. ``knowledge``  ingest, replace and revoke documents in the new generation (re-embed all
                  of it if the embedder changes)
5. ``healthy``    health check: the models load, the index answers a probe query
6. ``metadata``   the verified TUF metadata written beside the old (not yet trusted)
7. ``sealed``     the generation flushed to disk and renamed into place
8. ``switched``   ``current`` points at it: the commit point
9. ``state``      the high-water mark (release, trusted metadata, last trusted time)
10. ``policy``    the signed access policy applied to the accounts
11. ``audited``   the apply entry in the audit log; old generations pruned

A crash before step 8 leaves the old generation serving and the old metadata trusted
(leftovers are removed on the next start); after it, :func:`recover` finishes steps 9-11
from the new generation's own description. Nothing is trusted before every check passed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from appliance.access.accounts import Account
from appliance.access.policy_file import apply_policy, load_policy
from appliance.engines import engine_spec
from appliance.errors import ApplianceError, BundleError
from appliance.knowledge.base import KnowledgeBase
from appliance.runtime.client import EngineClient
from appliance.runtime.protocol import GenerateRequest
from appliance.updates import generations as gens
from appliance.updates.check import Plan, Progress, applied_state, blob_cache, verify_bundle
from appliance.updates.generations import GenerationInfo
from appliance.updates.payloads import Checked, apply_knowledge, register_models, selftest_models
from appliance.updates.site import UpdateSite

__all__ = ["ApplyResult", "apply_bundle", "rollback", "history", "recover", "recover_at_start", "needs_recovery",
           "FAULT_ENV"]

FAULT_ENV = "APPLIANCE_FAULT_AT"  # tests: SIGKILL this process at the named step
PROBE = "health check probe"


@dataclass
class ApplyResult:
    bundle: str
    release: int
    generation: int | None  # None: nothing to do (the same bundle again)
    noop: bool = False
    changes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    removed_generations: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def _fault(step: str) -> None:
    if os.environ.get(FAULT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def _exclusive(site: UpdateSite, what: str) -> Iterator[None]:
    """The data directory's writer lock (:mod:`appliance.locks`): no ingest, delete, repair, other apply or
    rollback runs from the copy of the serving knowledge to the switch, so nothing written is lost or revived."""
    with site.writer.hold(what):
        yield


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _write_state(site: UpdateSite, state: dict) -> None:
    f = site.updates_dir / "state.json"
    tmp = f.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(state, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, f)


# -- apply ----------------------------------------------------------------------------


def apply_bundle(site: UpdateSite, account: Account, media: Path, progress: Progress | None = None,
                 now: dt.datetime | None = None) -> ApplyResult:
    """Verify and apply the bundle on ``media``; completely or not at all. BundleError says why not."""
    by = account  # authorized by the caller (appliance.app.updates)
    step = progress or (lambda phase, done, total: None)
    started = time.perf_counter()
    with _exclusive(site, f"bundle apply by {by.name}"):
        recover(site)
        plan = verify_bundle(site, account, media, site.settings.updates.appliance_class, step, now=now)
        try:
            if plan.already_applied:
                site.audit().record("bundle.noop", by.name, bundle=plan.bundle, release=plan.release)
                return ApplyResult(plan.bundle, plan.release, None, noop=True,
                                   seconds=time.perf_counter() - started)
            checked = plan.checked
            _fault("verified")
            result = _apply(site, by, plan, checked, step)
        except Exception as exc:  # every failed apply is audited; the serving generation is untouched
            site.audit().record("bundle.refused", by.name, media=str(media), bundle=plan.bundle,
                                    release=plan.release, reason=str(exc)[:500])
            if isinstance(exc, BundleError) or not isinstance(exc, ApplianceError):
                raise
            raise BundleError(f"refused: {exc}") from exc
        finally:
            if plan.work is not None:
                shutil.rmtree(plan.work, ignore_errors=True)
    result.seconds = time.perf_counter() - started
    return result


def _apply(site: UpdateSite, by: Account, plan: Plan, checked: Checked, step: Progress) -> ApplyResult:
    data = site.data_dir
    serving = site.generation()
    number, building = gens.new_building(data)
    new_engine: _NewEngine | None = None
    kb: KnowledgeBase | None = None
    try:
        info = GenerationInfo(number, kind="apply", bundle=plan.bundle, release=plan.release, applied_at=_now(),
                              by=by.name, parent=serving.generation, models=dict(serving.models),
                              adapters=dict(serving.adapters), policy_sha256=serving.policy_sha256,
                              targets_sha256=plan.targets_sha256, metadata=f"meta-{number:06d}")
        if checked.models or checked.adapters:
            step("self-test of the new models", 0, 1)
            selftest_models(site, checked, serving)
        register_models(site, checked, info)
        _fault("models")
        if (info.models, info.adapters) != (serving.models, serving.adapters):
            new_engine = _NewEngine(site, info)  # loads while the knowledge is built
        step("copying the serving generation", 0, 1)
        gens.copy_knowledge(gens.current_path(data) / "knowledge", building / "knowledge",
                            vectors=not checked.embedder_changes)
        if (gens.current_path(data) / "policy.toml").is_file() and checked.policy is None:
            shutil.copyfile(gens.current_path(data) / "policy.toml", building / "policy.toml")
        _fault("copied")
        embed = site.embed
        if info.models.get("embedder") != serving.models.get("embedder"):
            batch = site.settings.knowledge.embed_batch
            loading = new_engine
            assert loading is not None  # a new embedder is a change of models: the new engine is loading

            def embed(texts: Sequence[str]) -> list[list[float]]:
                return loading.client().embed(list(texts), batch=batch)

        kb = KnowledgeBase(building / "knowledge", embed, scale=site.scale, settings=site.settings.knowledge,
                           writer=site.writer)  # held by this apply
        kb.recover()  # the copy's journal: the serving knowledge's retiring vectors, deleted from the copy now
        if checked.embedder_changes:  # a new embedder: every chunk is embedded again, into a new index
            step("re-embedding the index", 0, 1)
            kb.check(repair=True)
        info.changes = apply_knowledge(site, plan, kb, by.name,
                                       lambda done, total: step("ingesting knowledge", done, total))
        _fault("knowledge")
        step("health check", 0, 1)
        _health_check(kb, info, new_engine)
        kb.close()
        kb = None
        if new_engine is not None:
            new_engine.close()
            new_engine = None
        _fault("healthy")
        if checked.policy is not None:
            shutil.copyfile(checked.policy[0].verified_file, building / "policy.toml")
            info.policy_sha256 = checked.policy[0].sha256
        _keep_payloads(site, plan, building)
        assert plan.work is not None  # verify_bundle keeps the verified metadata and payloads there
        meta = site.updates_dir / f"meta-{number:06d}"  # info.metadata
        shutil.rmtree(meta, ignore_errors=True)
        shutil.copytree(plan.work / "metadata", meta)
        gens.fsync_tree(meta)
        _fault("metadata")
        gens.seal(data, building, info)
    except BaseException:
        if new_engine is not None:
            new_engine.close()
        if kb is not None:
            kb.close()
        shutil.rmtree(building, ignore_errors=True)
        shutil.rmtree(site.updates_dir / f"meta-{number:06d}", ignore_errors=True)
        raise
    _fault("sealed")
    step("switching", 0, 1)
    gens.switch_to(data, number)
    _fault("switched")
    removed = _finish(site, info, by.name)
    return ApplyResult(plan.bundle, plan.release, number, changes=info.changes, removed_generations=removed)


def _keep_payloads(site: UpdateSite, plan: Plan, building: Path) -> None:
    """Record what the generation serves, and keep knowledge and policy payloads for delta bundles."""
    cache = blob_cache(site)
    cache.mkdir(parents=True, exist_ok=True)
    for t in plan.targets:
        if t.role in ("knowledge", "policy") and not (cache / t.sha256).is_file():
            tmp = cache / f".{t.sha256}.tmp"
            tmp.unlink(missing_ok=True)
            try:
                os.link(t.verified_file, tmp)
            except OSError:
                shutil.copyfile(t.verified_file, tmp)
            os.replace(tmp, cache / t.sha256)
    gens.write_targets(building, [{"path": t.path, "role": t.role, "sha256": t.sha256, "length": t.length,
                                   "custom": t.custom, "docs": plan.docs.get(t.path, [])} for t in plan.targets])


def _prune_blobs(site: UpdateSite) -> None:
    """Drop cached payloads no kept generation serves."""
    data = site.data_dir
    wanted = {a["sha256"] for g in gens.list_generations(data)
              for a in gens.read_targets(gens.generation_dir(data, g.generation))}
    cache = blob_cache(site)
    for f in cache.iterdir() if cache.is_dir() else []:
        if f.name not in wanted:
            f.unlink(missing_ok=True)


def _finish(site: UpdateSite, info: GenerationInfo, by: str, recovered: bool = False) -> list[int]:
    """Steps 9-11 for the serving generation ``info`` (after a switch, or on recovery)."""
    state = applied_state(site)
    old_meta = state.get("metadata")
    state.update(release=info.release, bundle=info.bundle, metadata=info.metadata, targets_sha256=info.targets_sha256,
                 generation=info.generation, last_trusted_time=max(state.get("last_trusted_time") or "", _now()))
    _write_state(site, state)
    _fault("state")
    _apply_policy(site, info, by)
    (site.updates_dir / "held.json").unlink(missing_ok=True)  # a newer generation serves: nothing held
    _fault("policy")
    site.audit().record("bundle.apply", by, bundle=info.bundle, release=info.release, generation=info.generation,
                            changes=info.changes, models=info.models, adapters=sorted(info.adapters),
                            policy=info.policy_sha256, **({"recovered": True} if recovered else {}))
    _fault("audited")
    try:
        _install_evaluation_sets(site, info, by)
    except Exception as exc:  # noqa: BLE001 - the generation serves; the sets can be imported by hand
        site.audit().record("evaluation.set.bundle.failed", by, bundle=info.bundle, release=info.release,
                                reason=str(exc)[:500])
    if old_meta and old_meta != info.metadata:
        shutil.rmtree(site.updates_dir / old_meta, ignore_errors=True)
    removed = gens.prune(site.data_dir, site.settings.updates.keep_generations)
    _prune_blobs(site)
    return removed


def _install_evaluation_sets(site: UpdateSite, info: GenerationInfo, by: str) -> None:
    """The bundle's evaluation sets into the evaluation store (a set already there unchanged is left)."""
    import tempfile

    from appliance.evaluation.sets import load_items, set_digest

    store = site.eval_store()
    have = {s["name"]: s["digest"] for s in store.list()}
    for t in gens.read_targets(gens.current_path(site.data_dir)):
        if t.get("role") != "policy" or not str(t.get("path", "")).startswith("policy/evaluation/"):
            continue
        name = str(t["custom"]["name"])
        with tempfile.TemporaryDirectory(dir=site.updates_dir) as tmp:
            named = Path(tmp) / Path(t["path"]).name  # the readers go by the file's extension
            try:
                os.link(blob_cache(site) / t["sha256"], named)
            except OSError:
                shutil.copyfile(blob_cache(site) / t["sha256"], named)
            items = load_items(named)
        if have.get(name) == set_digest(items):
            continue
        store.save(name, items, by=by, origin=f"bundle {info.bundle} release {info.release}",
                   description=str(t["custom"].get("description") or ""), replace=True)
        site.audit().record("evaluation.set.bundle", by, set=name, items=len(items), bundle=info.bundle,
                                release=info.release)


def _apply_policy(site: UpdateSite, info: GenerationInfo, by: str) -> None:
    state = applied_state(site)
    if not info.policy_sha256 or state.get("policy_sha256") == info.policy_sha256:
        return
    import tomllib

    text = (gens.generation_dir(site.data_dir, info.generation) / "policy.toml").read_text("utf-8")
    policy = load_policy(tomllib.loads(text), site.scale, "policy.toml")
    store = site.accounts()
    applier = store.get(by) if by in {a.name for a in store.list()} else None
    apply_policy(store, policy, by=applier, signed=f"bundle:{info.bundle}#{info.release}")
    state["policy_sha256"] = info.policy_sha256
    _write_state(site, state)


class _NewEngine:
    """The new generation's engine (new models or adapters), started in the background: it
    loads while the knowledge is built, embeds for a new embedder, and is health-checked."""

    def __init__(self, site: UpdateSite, info: GenerationInfo) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="new-engine")
        self._future = self._pool.submit(_engine, site, info, generator=True)

    def client(self) -> EngineClient:
        try:
            return self._future.result()
        except ApplianceError as exc:
            raise BundleError(f"health check: the new models do not load: {exc}") from exc

    def close(self) -> None:
        try:
            client = self._future.result()
        except Exception:  # noqa: BLE001 - it never started: nothing to close
            return
        finally:
            self._pool.shutdown()
        client.close()


def _engine(site: UpdateSite, info: GenerationInfo, *, generator: bool) -> EngineClient:
    return site.start_engine(engine_spec(site.settings, site.store, generator=generator, info=info))


def _health_check(kb: KnowledgeBase, info: GenerationInfo, new_engine: _NewEngine | None) -> None:
    """The new generation must work before it serves: new models load and answer (the base
    and each adapter), and the index finds a document by its own text."""
    try:
        if new_engine is not None:
            client = new_engine.client()
            if len(client.embed([PROBE])[0]) == 0:
                raise BundleError("health check: the embedder returned an empty vector")
            for adapter in [None, *sorted(info.adapters)]:
                client.generate(GenerateRequest(prompt="OK", max_tokens=1, adapter=adapter))
        docs = kb.catalog.documents()
        if not docs:
            return
        doc = docs[0]
        chunks = kb.catalog.chunks_of(doc.doc_id)
        probe = chunks[0].text[:500] if chunks else doc.title
        partition = doc.labels.partition
        vec = kb.embed([probe])[0]
        dense = kb.vectors.nearest(partition, vec, 5) if partition in kb.vectors.names() else []
        keyword = kb.catalog.bm25(partition, probe, 5)
        ids = {c.chunk_id for c in chunks}
        if not ids & ({h[0] for h in keyword} | {h[0] for h in dense}):
            raise BundleError(f"health check: the new index does not find {doc.doc_id!r} by its own text")
        problems = kb.check()
        if problems:
            raise BundleError(f"health check: the new index is inconsistent: {'; '.join(problems)}")
    except BundleError:
        raise
    except ApplianceError as exc:
        raise BundleError(f"health check failed: {exc}") from exc


# -- rollback, history, recovery --------------------------------------------------------


def rollback(site: UpdateSite, account: Account, to: int | None = None) -> GenerationInfo:
    """Serve an earlier kept generation (default: the serving one's parent). Trusted metadata stays."""
    by = account  # authorized by the caller (appliance.app.updates)
    data = site.data_dir
    with _exclusive(site, f"rollback by {by.name}"):
        recover(site)
        serving = site.generation()
        kept = {g.generation: g for g in gens.list_generations(data)}
        target = to if to is not None else serving.parent
        if target is None or target not in kept:
            raise BundleError(f"no generation {target} to roll back to (kept: {', '.join(map(str, sorted(kept)))})")
        if target == serving.generation:
            raise BundleError(f"generation {target} is already serving")
        info = kept[target]
        gens.switch_to(data, target)
        (site.updates_dir / "held.json").unlink(missing_ok=True)  # a generation the drift gate held: decided
        _apply_policy(site, info, by.name)
        site.audit().record("bundle.rollback", by.name, from_generation=serving.generation,
                                to_generation=target, bundle=info.bundle, release=info.release)
        return info


def history(site: UpdateSite, account: Account) -> tuple[int, list[GenerationInfo], dict]:
    """The kept generations (oldest first), which one serves, and the high-water state."""
    recover_at_start(site)  # account: authorized by the caller (appliance.app.updates)
    return site.generation().generation, gens.list_generations(site.data_dir), applied_state(site)


def _uncommitted(site: UpdateSite) -> list[GenerationInfo]:
    """Sealed generations an apply died before switching to (never served; rolled-back ones were)."""
    committed = applied_state(site).get("generation", 0)
    serving = site.generation().generation
    return [g for g in gens.list_generations(site.data_dir)
            if g.kind == "apply" and g.generation > committed and g.generation != serving]


def needs_recovery(site: UpdateSite) -> bool:
    """A cheap look: did an apply die halfway (an unfinished generation, or a switch not finished)?"""
    data = site.data_dir
    info = site.generation()
    state = applied_state(site)
    metas = {d.name for d in site.updates_dir.glob("meta-*")} - {state.get("metadata")}
    return bool(any((data / "generations").glob(".building-*")) or metas or _uncommitted(site)
                or (info.kind == "apply" and info.release > state.get("release", 0))
                or (info.policy_sha256 and state.get("policy_sha256") != info.policy_sha256
                    and info.release >= state.get("release", 0)))


def recover_at_start(site: UpdateSite) -> list[str]:
    """Run on every start: finish or clean up an interrupted apply (unless one is running now)."""
    if not needs_recovery(site):
        return []
    with site.writer.attempt("start-up recovery") as free:
        return recover(site) if free else []  # else a writer is at work; it finishes its own


def recover(site: UpdateSite) -> list[str]:
    """Finish an apply a crash interrupted after its switch; remove what unfinished ones left."""
    data = site.data_dir
    up = site.updates_dir
    done: list[str] = []
    info = site.generation()
    state = applied_state(site)
    if info.kind == "apply" and info.release > state.get("release", 0):
        _finish(site, info, info.by or "-", recovered=True)
        done.append(f"finished applying {info.bundle} release {info.release} (generation {info.generation})")
    elif info.policy_sha256 and state.get("policy_sha256") != info.policy_sha256 and info.release >= state.get(
            "release", 0):
        _apply_policy(site, info, info.by or "-")
        done.append(f"applied the policy of generation {info.generation}")
    for d in (data / "generations").glob(".building-*"):
        shutil.rmtree(d, ignore_errors=True)
        done.append(f"removed the unfinished {d.name}")
    for g in _uncommitted(site):
        shutil.rmtree(gens.generation_dir(data, g.generation), ignore_errors=True)
        done.append(f"removed generation {g.generation}, sealed but never switched to")
    keep = applied_state(site).get("metadata")
    for d in up.glob("meta-*") if up.is_dir() else []:
        if d.name != keep:
            shutil.rmtree(d, ignore_errors=True)
    stale = time.time() - 600  # a dry run in another process may still be using a young one
    for sub in ("staging", "work"):
        for d in (up / sub).iterdir() if (up / sub).is_dir() else []:
            if d.stat().st_mtime < stale:
                shutil.rmtree(d, ignore_errors=True)
    return done
