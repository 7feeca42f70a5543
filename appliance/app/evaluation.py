"""Evaluation on behalf of an account: sets in and out, runs, and reading them back.

A run is audited once (set, digest, figures), not per item; reading sets and runs needs
``evaluation.read``, changing them ``evaluation.manage``.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path

from appliance.access.accounts import Account
from appliance.app.acting import acting
from appliance.errors import EvaluationError
from appliance.evaluation.compare import ARCHITECTURES, compare, headline, merge_generators
from appliance.evaluation.sets import EvalSet, items_from_feedback, load_items
from appliance.services import Services

__all__ = ["import_set", "set_from_feedback", "export_set", "delete_set", "run_set", "list_sets", "get_set", "runs",
           "get_run"]


def import_set(services: Services, account: Account, name: str, path: Path, *, description: str = "",
               replace: bool = False, origin: str | None = None) -> EvalSet:
    act = acting(services, account, "evaluation.manage")
    by = act.account
    items = load_items(path, services.eval_store().limits)
    act.record("evaluation.set.import", set=name, file=path.name, items=len(items),
                            replace=replace)
    return services.eval_store().save(name, items, by=by.name, origin=origin or f"file {path.name}",
                                      description=description, replace=replace)


def set_from_feedback(services: Services, account: Account, name: str, *, replace: bool = False,
                      description: str = "") -> tuple[EvalSet, list[str]]:
    """A set of the questions analysts marked right or wrong (with the answer or source they gave)."""
    act = acting(services, account, "evaluation.manage")
    by = act.account
    items, skipped = items_from_feedback(services.agent_store().feedback(), services.eval_store().limits)
    if not items:
        why = f" ({len(skipped)} left out: {skipped[0]})" if skipped else ""
        raise EvaluationError(f"no usable feedback yet: analysts mark answers right or wrong in Ask (ctrl+f){why}")
    act.record("evaluation.set.feedback", set=name, items=len(items), skipped=len(skipped))
    made = services.eval_store().save(name, items, by=by.name, origin="analysts' feedback",
                                      description=description, replace=replace)
    return made, skipped


def export_set(services: Services, account: Account, name: str, out: Path) -> int:
    act = acting(services, account, "evaluation.manage")
    s = services.eval_store().get(name)
    act.record("evaluation.set.export", set=name, digest=s.digest, file=out.name)
    return services.eval_store().export(name, out)


def delete_set(services: Services, account: Account, name: str) -> None:
    act = acting(services, account, "evaluation.manage")
    s = services.eval_store().get(name)
    act.record("evaluation.set.delete", set=name, digest=s.digest)
    services.eval_store().delete(name)


def run_set(services: Services, account: Account, name: str, *, architectures: Sequence[str] = ARCHITECTURES,
            limit: int | None = None, trigger: str = "manual", served: bool = False,
            progress: Callable[[int, int], None] | None = None, items: EvalSet | None = None,
            generators: Sequence[str] = ()) -> dict:
    """Every applicable architecture on the set, as the account (retrieval sees what it may read).
    ``items``: these items of the set instead of the stored ones (the drift gate's copy from before an
    apply that may bring a new version of the set)."""
    act = acting(services, account, "evaluation.manage")
    by = act.account
    unknown = sorted(set(architectures) - set(ARCHITECTURES))
    if unknown:
        raise EvaluationError(f"unknown architecture {unknown[0]!r} (choose from {', '.join(ARCHITECTURES)})")
    if limit is not None and limit < 1:
        raise EvaluationError("--limit must be at least 1")
    evalset = items if items is not None else services.eval_store().get(name)
    generation = services.generation()
    act.record("evaluation.run", set=name, digest=evalset.digest, trigger=trigger,
                            architectures=list(architectures), generation=generation.generation,
                            generators=list(generators))
    if generators:  # the same set with each generator in turn, side by side
        if len(set(generators)) != len(generators):
            raise EvaluationError("a generator is named twice")
        for name in generators:
            record = services.store.get(name)
            if record.kind != "generator":
                raise EvaluationError(f"{name} is not a generator (kind {record.kind})")
        parts = []
        for name in generators:
            with services.with_generator(name):
                parts.append((name, compare(evalset, services.evaluation_systems(), by.principal(),
                                            architectures=architectures, limit=limit, served=served,
                                            progress=progress)))
        report = merge_generators(parts)
    else:
        report = compare(evalset, services.evaluation_systems(), by.principal(), architectures=architectures,
                         limit=limit, served=served, progress=progress)
    run_id = secrets.token_hex(8)
    report.update(run_id=run_id, generation=generation.generation, release=generation.release, trigger=trigger,
                  served=served, limit=limit,
                  by=by.name, at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    services.eval_store().add_run(run_id, name, evalset.digest, by=by.name, generation=str(generation.generation),
                                  trigger=trigger, seconds=report["seconds"], report=report, at=report["at"])
    act.record("evaluation.result", set=name, run=run_id,
                            recommendations={k: v["recommendation"]["architecture"]
                                             for k, v in report["by_kind"].items()},
                            figures={k: round(v, 4) for k, v in headline(report).items()})
    return report


def list_sets(services: Services, account: Account) -> list[dict]:
    """The stored sets: items by kind, where they came from, the last run."""
    acting(services, account, "evaluation.read")
    return services.eval_store().list()


def get_set(services: Services, account: Account, name: str) -> EvalSet:
    acting(services, account, "evaluation.read")
    return services.eval_store().get(name)


def runs(services: Services, account: Account, set_name: str | None = None, *, limit: int = 50) -> list[dict]:
    """Past runs (newest first), of one set if named."""
    acting(services, account, "evaluation.read")
    return services.eval_store().runs(set_name, limit=limit)


def get_run(services: Services, account: Account, run_id: str) -> dict:
    acting(services, account, "evaluation.read")
    return services.eval_store().run(run_id)
