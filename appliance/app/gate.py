"""The drift gate: no bundle silently makes answers worse.

With ``[evaluation] gate_sets`` configured, a bundle apply goes:

1. each gate set has a baseline on the serving generation: its last gate (or baseline)
   run there on the same items; if there is none it is run first;
2. the bundle is applied as ever (verified, staged, switched atomically);
3. each gate set runs again on the new generation, with what the appliance serves for each
   kind of item (the agent, with its specialists; the specialist itself);
4. every quality figure (accuracy, F1, groundedness, ...) is compared with the baseline; a
   drop of more than its threshold fails the gate. Then the previous generation serves
   again at once, and the new one is either left (``gate_action = "rollback"``) or held
   for an officer (``"hold"``: ``appliance bundle accept N`` serves it after all).

Every verdict is audited with the figures that decided it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.text import Text

from appliance.access.accounts import Account
from appliance.app.evaluation import run_set
from appliance.errors import BundleError, EvaluationError
from appliance.evaluation.compare import QUALITY
from appliance.services import Services
from appliance.updates.apply import ApplyResult, apply_bundle, rollback

__all__ = ["GateResult", "apply_with_gate", "figures", "drops", "held", "accept_held", "gate_text"]

Progress = Callable[[str, int, int], None]


@dataclass
class GateResult:
    verdict: str  # passed | rolled back | held | not run
    sets: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)  # {figure, before, after, drop, threshold}
    compared: int = 0  # figures compared
    seconds: float = 0.0
    runs: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def figures(report: dict) -> dict[str, float]:
    """``kind/metric`` -> value, from the one architecture a gate run measures per kind."""
    out: dict[str, float] = {}
    for kind, section in report.get("by_kind", {}).items():
        for m in section.get("architectures", {}).values():
            if "skipped" in m:
                continue
            for metric in QUALITY.get(kind, ()):
                if isinstance(m.get(metric), (int, float)):
                    out[f"{kind}/{metric}"] = float(m[metric])
    return out


def drops(before: dict[str, float], after: dict[str, float], max_drop: float,
          thresholds: dict[str, float]) -> tuple[list[dict], int]:
    """The figures that fell by more than their threshold, and how many were compared. A figure the
    baseline had and the new generation no longer yields (nothing to measure it on) counts as a fall to 0."""
    failed, compared = [], 0
    for key in sorted(before):
        compared += 1
        limit = thresholds.get(key, thresholds.get(key.split("/", 1)[-1], max_drop))
        now = after.get(key)
        drop = before[key] - (now or 0.0)
        if drop > limit + 1e-9:
            failed.append({"figure": key, "before": round(before[key], 4),
                           "after": None if now is None else round(now, 4), "drop": round(drop, 4),
                           "threshold": limit})
    return failed, compared


def _held_file(services: Services) -> Path:
    return services.settings.data_dir / "updates" / "held.json"


def held(services: Services) -> dict | None:
    """The generation the gate holds for an officer's decision, if any (none once it serves or is gone)."""
    from appliance.updates.generations import list_generations

    f = _held_file(services)
    if not f.is_file():
        return None
    try:
        state = json.loads(f.read_text(encoding="utf-8"))
    except ValueError:
        return None
    kept = {g.generation for g in list_generations(services.settings.data_dir)}
    if state.get("generation") not in kept or state.get("generation") == services.generation().generation:
        return None
    return state


def _write_held(services: Services, state: dict | None) -> None:
    f = _held_file(services)
    if state is None:
        f.unlink(missing_ok=True)
        return
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
    os.replace(tmp, f)


def _baseline(services: Services, account: Account, name: str, generation: int, limit: int | None,
              step: Progress) -> dict:
    store = services.eval_store()
    digest = store.get(name).digest
    for run in store.runs(name, limit=200):  # the same items, generation, account (clearance) and limit
        if (run["generation"] == str(generation) and run["set_digest"] == digest and run["report"].get("served")
                and run["report"].get("limit") == limit and run["by"] == account.name):
            return run["report"]
    return run_set(services, account, name, served=True, limit=limit, trigger="gate baseline",
                   progress=lambda done, total: step(f"drift gate: baseline of {name}", done, total))


def apply_with_gate(services: Services, account: Account, media: Path, progress: Progress | None = None,
                    now: dt.datetime | None = None) -> tuple[ApplyResult, GateResult]:
    """Apply the bundle on ``media``; with gate sets configured, measure before and after, and
    return to the previous generation if a figure drops by more than its threshold."""
    step = progress or (lambda phase, done, total: None)
    settings = services.settings.evaluation
    names = list(settings.gate_sets)
    if not names:
        return apply_bundle(services.update_site(), account, media, progress, now=now), GateResult("not run")
    with services.writer.hold(f"bundle apply with the drift gate by {account.name}"):  # to the verdict: an
        return _gated(services, account, media, progress, now, names, step)  # ingest meanwhile is never lost


def _gated(services: Services, account: Account, media: Path, progress: Progress | None, now: dt.datetime | None,
           names: list[str], step: Progress) -> tuple[ApplyResult, GateResult]:
    import time

    settings = services.settings.evaluation
    limit = settings.gate_limit or None
    started = time.perf_counter()
    try:  # the items as they are now: a bundle bringing a new version of a gate set is measured on these
        sets = {name: services.eval_store().get(name) for name in names}
    except EvaluationError as exc:  # a missing gate set stops the apply before anything changes
        raise BundleError(f"drift gate: {exc} ([evaluation] gate_sets)") from exc
    parent = services.generation().generation
    before: dict[str, float] = {}
    for name in names:
        before.update({f"{name}:{k}": v for k, v in figures(_baseline(services, account, name, parent, limit,
                                                                       step)).items()})
    gate_s = time.perf_counter() - started
    result = apply_bundle(services.update_site(), account, media, progress, now=now)
    if result.noop or result.generation is None:
        return result, GateResult("not run", names)
    started = time.perf_counter()
    after: dict[str, float] = {}
    runs: list[str] = []
    broken: list[dict] = []
    for name in names:
        def on_progress(done: int, total: int, name: str = name) -> None:
            step(f"drift gate: {name}", done, total)

        try:
            report = run_set(services, account, name, served=True, limit=limit, items=sets[name],
                             trigger=f"gate {result.generation}", progress=on_progress)
        except Exception as exc:  # noqa: BLE001 - the new generation cannot even be measured: it does not pass
            broken.append({"figure": f"{name}: the gate run failed", "error": str(exc)[:500]})
            continue
        runs.append(report["run_id"])
        after.update({f"{name}:{k}": v for k, v in figures(report).items()})
    failed, compared = drops(before, after, settings.max_drop,
                             {f"{n}:{k}": v for n in names for k, v in settings.thresholds().items()}
                             | settings.thresholds())
    failed = broken + failed
    gate = GateResult("passed", names, failed, compared, gate_s + time.perf_counter() - started, runs)
    by = services.accounts().get(account.name)
    if failed:
        rollback(services.update_site(), account, to=parent)
        for name, before_set in sets.items():  # a new version of a gate set the bundle brought goes with it
            if services.eval_store().get(name).digest != before_set.digest:
                services.eval_store().save(name, list(before_set.items), by=before_set.created_by,
                                           origin=before_set.origin, description=before_set.description,
                                           replace=True)
        gate.verdict = "held" if settings.gate_action == "hold" else "rolled back"
        if gate.verdict == "held":
            _write_held(services, {"generation": result.generation, "parent": parent, "bundle": result.bundle,
                                   "release": result.release, "failed": failed, "runs": runs,
                                   "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})
    services.audit().record("evaluation.gate", by.name, bundle=result.bundle, release=result.release,
                            generation=result.generation, verdict=gate.verdict, sets=names, compared=compared,
                            failed=failed, runs=runs)
    return result, gate


def accept_held(services: Services, account: Account, generation: int) -> dict:
    """An officer's decision on a held generation: serve it after all (audited with what failed)."""
    by = account  # authorized by the caller (appliance.app.updates)
    with services.writer.hold(f"accepting held generation {generation} by {by.name}"):
        return _accept(services, account, by, generation)


def _accept(services: Services, account: Account, by: Account, generation: int) -> dict:
    state = held(services)
    if state is None or state.get("generation") != generation:
        what = f"generation {state['generation']} is" if state else "no generation is"
        raise BundleError(f"generation {generation} is not held by the drift gate ({what} held)")
    services.audit().record("evaluation.gate.accepted", by.name, generation=generation, bundle=state.get("bundle"),
                            failed=state.get("failed"))
    rollback(services.update_site(), account, to=generation)
    _write_held(services, None)
    return state


def gate_text(gate: GateResult) -> Text:
    """The gate's verdict and the figures that decided it, for the CLI and the TUI."""
    out = Text()
    if gate.verdict == "passed":
        out.append(f"Drift gate passed: {gate.compared} figures of {', '.join(gate.sets)} held up "
                   f"({gate.seconds:.0f} s).\n", style="green")
        return out
    out.append(" DRIFT GATE FAILED ", style="bold reverse red")
    action = ("the previous generation serves again, and this one is held: accept it with "
              "`appliance bundle accept`" if gate.verdict == "held" else "the previous generation serves again")
    out.append(f" {action}.\n", style="bold")
    for f in gate.failed:
        if "error" in f:
            out.append(f"  {f['figure']}: {f['error']}\n")
            continue
        after = "not measured" if f["after"] is None else f"{f['after']:.3f}"
        out.append(f"  {f['figure']}: {f['before']:.3f} -> {after} (drop {f['drop']:.3f}, "
                   f"allowed {f['threshold']:.3f})\n")
    return out
