"""What the update steps work on, handed in by the application layer.

The steps of :mod:`appliance.updates` (verify, apply, roll back, recover) read and write the
data directory, the model store, the accounts, the audit log and the evaluation store, and
start a throwaway engine for a new generation's models. They take exactly these parts, as an
:class:`UpdateSite`, not the application's whole set of services: the application builds one
(``Services.update_site()``), tests can build one by hand, and nothing here imports upward.

The stores are opened on first use (a start-up recovery check opens none of them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.access.accounts import AccountStore
from appliance.access.labels import LevelScale
from appliance.audit.log import AuditLog
from appliance.config import Settings
from appliance.evaluation.sets import EvalStore
from appliance.knowledge.base import KnowledgeBase
from appliance.locks import WriterLock
from appliance.runtime.client import EngineClient
from appliance.runtime.model_store import ModelStore
from appliance.runtime.protocol import EngineSpec
from appliance.runtime.selftest import SelfTest
from appliance.updates.generations import GenerationInfo

__all__ = ["UpdateSite"]


@dataclass(frozen=True)
class UpdateSite:
    settings: Settings
    scale: LevelScale
    store: ModelStore  # the content-addressed model store
    writer: WriterLock  # the data directory's writer lock
    generation: Callable[[], GenerationInfo]  # the serving generation, read again after every switch
    knowledge: Callable[[], KnowledgeBase]  # the serving knowledge base (for the diff of a dry run)
    embed: Callable[[Sequence[str]], list]  # the serving embedder
    audit: Callable[[], AuditLog]
    accounts: Callable[[], AccountStore]
    eval_store: Callable[[], EvalStore]
    selftest: Callable[[], SelfTest]
    model_identities: Callable[[], dict[str, tuple[str, str]]]  # stored path -> (name, sha256)
    start_engine: Callable[[EngineSpec], EngineClient]  # a started host for these models; the caller closes it

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    @property
    def updates_dir(self) -> Path:
        return self.settings.data_dir / "updates"
