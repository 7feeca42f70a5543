"""Specialists on behalf of an account: run one on texts, or pick one to evaluate; ``specialists.use``."""

from __future__ import annotations

import hashlib

from appliance.access.accounts import Account
from appliance.app.acting import acting
from appliance.errors import SpecialistError
from appliance.services import Services
from appliance.specialists.serve import AdapterSpecialist

__all__ = ["run_specialist", "specialist_for"]


def specialist_for(services: Services, account: Account, name: str, task: str) -> AdapterSpecialist:
    """The installed ``task`` specialist ``name`` (SpecialistError naming the known ones if there is none)."""
    acting(services, account, "specialists.use")
    found = services.specialists()
    spec = found.get(name)
    if spec is None or spec.task != task:
        known = ", ".join(f"{n} ({s.task})" for n, s in found.items()) or "none installed"
        raise SpecialistError(f"no {task} specialist {name!r} on this appliance (known: {known})")
    return spec


def run_specialist(services: Services, account: Account, name: str, task: str, texts: list[str]) -> list:
    """Classify or extract ``texts`` with the specialist ``name``; audited (digests of the texts, the outputs)."""
    act = acting(services, account, "specialists.use")
    available = services.specialists()
    spec = available.get(name)
    if spec is None:
        known = ", ".join(f"{n} ({s.task})" for n, s in available.items()) or "none installed"
        raise SpecialistError(f"no specialist {name!r} on this appliance (known: {known})")
    if spec.task != task:
        raise SpecialistError(f"{name} is a {spec.task} specialist: use `appliance {spec.task}`")
    limit = services.settings.specialists.max_texts
    if len(texts) > limit:
        raise SpecialistError(f"{len(texts)} texts, over the [specialists] max_texts limit of {limit}")
    results = [spec.classify(t) if task == "classify" else spec.extract(t) for t in texts]
    summary = ([r.label for r in results] if task == "classify"
               else [[(s.kind, s.start, s.end) for s in r.spans] for r in results])
    act.record(f"specialist.{task}", adapter=name, texts=len(texts),
               text_sha256=[hashlib.sha256(t.encode()).hexdigest()[:16] for t in texts[:100]],
               results=summary[:100])
    return results
