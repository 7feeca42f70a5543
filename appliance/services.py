"""Build the appliance's services once; the CLI, the TUI and the tests share this factory."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from appliance.access.accounts import Account, AccountStore
from appliance.access.labels import LevelScale
from appliance.agent.loop import Agent
from appliance.agent.store import AgentStore
from appliance.audit.log import AuditLog
from appliance.config import Settings, load_settings
from appliance.engines import active_models, engine_spec
from appliance.evaluation.compare import Systems
from appliance.evaluation.sets import EvalStore
from appliance.knowledge.base import KnowledgeBase
from appliance.knowledge.catalog import unfinished_writes
from appliance.knowledge.rerank import CrossEncoderReranker
from appliance.knowledge.retrieval import Retriever
from appliance.locks import DEFAULT_WAIT_S, WriterLock, writer_lock
from appliance.runtime.client import EngineClient, RequestLimits
from appliance.runtime.model_store import ModelRecord, ModelStore
from appliance.runtime.protocol import Engine, EngineSpec
from appliance.runtime.selftest import SelfTest
from appliance.updates.generations import GenerationInfo, current_path, ensure_layout, read_info
from appliance.updates.site import UpdateSite

__all__ = ["Services", "build_services"]


@dataclass
class Services:
    settings: Settings
    store: ModelStore
    _engine: EngineClient | None = field(default=None, repr=False)
    _engine_parts: tuple[bool, bool] = (False, False)
    _knowledge: KnowledgeBase | None = field(default=None, repr=False)
    _agent: Agent | None = field(default=None, repr=False)
    _audit: AuditLog | None = field(default=None, repr=False)
    _accounts: AccountStore | None = field(default=None, repr=False)
    _agent_store: AgentStore | None = field(default=None, repr=False)
    _eval_store: EvalStore | None = field(default=None, repr=False)
    _eval_traces: AgentStore | None = field(default=None, repr=False)
    # locks around the lazy parts, so two TUI workers asking at once get one engine host and one store per
    # database; taken in this order only (agent, engine, stores), so a login never waits for the models to load
    _agent_lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _engine_lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _opening: threading.RLock = field(default_factory=threading.RLock, repr=False)  # stores and the generation
    _stale: list = field(default_factory=list, repr=False)  # the previous generation's knowledge base, closed later
    _generation: Path | None = field(default=None, repr=False)
    _selftest: SelfTest | None = field(default=None, repr=False)
    _generator: str | None = field(default=None, repr=False)  # with_generator's choice, for an evaluation
    recovered: list[str] = field(default_factory=list)  # what start-up recovery finished or undid
    fixed_engine: Engine | None = None  # an engine given at build (a scripted one in tests): never started or swapped
    host_command: tuple[str, ...] | None = None  # a test seam: a host double (one that crashes on purpose)

    def embed(self, texts: Sequence[str]) -> list:
        """Embed with the serving embedder."""
        return self.engine(generator=False).embed(list(texts), batch=self.settings.knowledge.embed_batch)

    def retriever(self, kb: KnowledgeBase | None = None) -> Retriever:
        """Hybrid retrieval over ``kb`` (the serving knowledge base by default), reranked when a
        reranker serves."""
        return Retriever(kb if kb is not None else self.knowledge(), self.settings.knowledge,
                         reranker=self.reranker())

    def reranker(self) -> CrossEncoderReranker | None:
        """The cross-encoder stage, or None (switched off, or not provisioned)."""
        if not self.settings.knowledge.rerank:
            return None
        serving = self._follow_generation()
        from appliance.errors import UnknownModelError

        try:
            if "reranker" not in active_models(self.settings, self.store, read_info(serving)):
                return None
        except UnknownModelError:  # no models provisioned (an engine given at build serves): no reranker
            return None
        ks = self.settings.knowledge
        return CrossEncoderReranker(lambda query, texts: self.engine(generator=False).rerank(query, texts),
                                    candidates=ks.rerank_candidates, rank_weight=ks.rerank_rank_weight)

    def generation(self) -> GenerationInfo:
        """The serving generation (a bundle apply or rollback in any process switches it)."""
        with self._opening:
            return read_info(self._follow_generation())

    def _follow_generation(self) -> Path:
        """The serving generation's directory. Reopen what belongs to a generation once another one serves;
        the old knowledge base stays open until the next switch (a worker may still be reading it), then is
        closed."""
        with self._opening:
            path = current_path(self.settings.data_dir)
            if path == self._generation:
                return path
            old = read_info(self._generation) if self._generation is not None and self._generation.is_dir() else None
            self._generation = path
            for kb in self._stale:
                kb.close()
            self._stale = [self._knowledge] if self._knowledge is not None else []
            self._knowledge = None
            self._agent = None
            new = read_info(path)
            if self._engine is not None and (old is None or (old.models, old.adapters) != (new.models, new.adapters)):
                self._engine.close()
                self._engine = None
            return path

    def generation_path(self) -> Path:
        """The serving generation's directory."""
        with self._opening:
            return self._follow_generation()

    @property
    def writer(self) -> WriterLock:
        """The data directory's writer lock (:mod:`appliance.locks`)."""
        return writer_lock(self.settings.data_dir)

    @contextmanager
    def writing(self, what: str, wait_s: float = DEFAULT_WAIT_S) -> Iterator[KnowledgeBase]:
        """The serving knowledge base open for writing: the writer lock held (BusyError after ``wait_s``),
        then the generation followed, so no apply or rollback can switch it until the block ends, and what a
        dead writer left recovered."""
        with self.writer.hold(what, wait_s):
            kb = self.knowledge()
            with kb.writing(what, wait_s):
                yield kb

    def audit(self) -> AuditLog:
        """The tamper-evident audit log (``<data dir>/audit``); its key is made on first use."""
        with self._opening:
            if self._audit is None:
                self._audit = AuditLog(self.settings.data_dir / "audit",
                                       checkpoint_every=self.settings.audit.checkpoint_every)
            return self._audit

    def accounts(self) -> AccountStore:
        """Local accounts and login sessions; every change is audited."""
        with self._opening:
            if self._accounts is None:
                self._accounts = AccountStore(self.settings.data_dir / "access.db", self.scale,
                                              self.settings.access, self.audit())
            return self._accounts

    def login_session(self, token: str) -> Account:
        """The account behind a live login session (AccessError if there is none)."""
        return self.accounts().session(token)

    def agent(self) -> Agent:
        """The question-answering agent over the knowledge base and the engine."""
        with self._agent_lock:
            self._follow_generation()
            if self._agent is None:
                kb = self.knowledge()
                by_task: dict = {}
                for spec in self.specialists().values():  # the router's specialists: the first of each task
                    by_task.setdefault(spec.task, spec)
                self._agent = Agent(self.retriever(kb), self.engine(), self.agent_store(),
                                    self.scale, settings=self.settings.agent, auditor=self.audit(),
                                    audit_answers=self.settings.audit.answers, specialists=list(by_task.values()))
            return self._agent

    def specialists(self) -> dict:
        """The installed specialists (adapters with a task) for the serving generator, by name."""
        from appliance.errors import UnknownModelError
        from appliance.specialists.serve import AdapterSpecialist, read_specialist

        info = self.generation()
        try:
            gen = active_models(self.settings, self.store, info, self._generator)["generator"]
        except UnknownModelError:
            return {}  # no base model installed: no specialist can run
        records = {r.name: r for r in self.store.list("adapter") if r.base_sha256 in (None, gen.sha256)}
        for name, sha in info.adapters.items():
            records[name] = self.store.by_sha256(sha)
        out = {}
        for name, record in sorted(records.items()):
            spec = read_specialist(record)
            if spec is not None:
                out[name] = AdapterSpecialist(spec, self.engine, self.settings.specialists.abstain_threshold)
        return out

    def agent_store(self) -> AgentStore:
        """Traces, sessions and feedback: one store (one connection, migrations run once) per process."""
        with self._opening:  # TUI workers ask for it at once: two would both run the migrations
            if self._agent_store is None:
                self._agent_store = AgentStore(self.settings.data_dir / "agent.db")
        return self._agent_store

    def eval_store(self) -> EvalStore:
        """Evaluation sets and their runs (``<data dir>/evaluation.db``)."""
        with self._opening:
            if self._eval_store is None:
                self._eval_store = EvalStore(self.settings.data_dir / "evaluation.db")
        return self._eval_store

    def evaluation_systems(self) -> Systems:
        """What an evaluation compares: the agent without and with the specialists, and the specialists,
        over the serving knowledge; none of them audits each question (the run is audited once), and
        their traces go to ``evaluation-traces.db``, out of the analysts' request metrics."""
        self._follow_generation()
        with self._opening:
            if self._eval_traces is None:
                self._eval_traces = AgentStore(self.settings.data_dir / "evaluation-traces.db")
            traces = self._eval_traces
        retriever = self.retriever()
        by_task: dict = {}
        for spec in self.specialists().values():
            by_task.setdefault(spec.task, spec)

        def agent(specialists: list) -> Agent:
            return Agent(retriever, self.engine(), traces, self.scale, settings=self.settings.agent,
                         specialists=specialists)

        return Systems(agent([]), agent(list(by_task.values())) if by_task else None, by_task)

    @property
    def scale(self) -> LevelScale:
        return LevelScale(self.settings.access.levels)

    def knowledge(self) -> KnowledgeBase:
        """The serving knowledge base (catalog, full-text, Chroma), embedding through the engine; open for
        reading (writes go through :meth:`writing`)."""
        with self._opening:
            serving = self._follow_generation()
            if self._knowledge is None:
                self._knowledge = KnowledgeBase(
                    serving / "knowledge", self.embed,
                    scale=self.scale, settings=self.settings.knowledge, writer=self.writer)
            return self._knowledge

    def selftest(self) -> SelfTest:
        """The start-up self-test; its passes are remembered beside the models (``<models dir>/selftest.json``):
        they depend on the models, the llama.cpp build and the CPU, not on one data directory."""
        with self._opening:
            if self._selftest is None:
                rt = self.settings.runtime
                self._selftest = SelfTest(
                    self.settings.models_dir / "selftest.json", log_path=self.settings.log_dir / "host-selftest.log",
                    start_timeout_s=rt.start_timeout_s, request_timeout_s=min(rt.request_timeout_s, 120.0),
                    env=self._host_env(), host_command=self.host_command)
        return self._selftest

    def model_identities(self) -> dict[str, tuple[str, str]]:
        """Every stored model's and adapter's path -> (name, sha256), so the self-test need not hash them."""
        return {str(r.path): (r.name, r.sha256) for r in self.store.list()}

    def _host_env(self) -> dict[str, str]:
        return dict(os.environ, APPLIANCE_AIRGAP_LOG=str(airgap_log(self.settings)))

    def engine(self, *, generator: bool = True, embedder: bool = True) -> Engine:
        """The llama.cpp host client, started on first use (restarted if it lacks a needed model).

        Before a host serves, the self-test must have passed for this build, CPU and model set
        (:mod:`appliance.runtime.selftest`); if it fails, EngineSelfTestError says why, and no host starts."""
        if self.fixed_engine is not None:
            return self.fixed_engine
        with self._engine_lock:
            return self._engine_locked(generator, embedder)

    def _engine_locked(self, generator: bool, embedder: bool) -> EngineClient:
        serving = self._follow_generation()
        have = self._engine_parts
        if self._engine is not None and (generator and not have[0] or embedder and not have[1]):
            generator, embedder = generator or have[0], embedder or have[1]
            self._engine.close()
            self._engine = None
        if self._engine is None:
            spec = engine_spec(self.settings, self.store, generator=generator, embedder=embedder,
                               info=read_info(serving), generator_name=self._generator)
            self.selftest().ensure(spec, self.model_identities())
            self._engine_parts = (generator, embedder)
            self._engine = self.start_host(spec)
        return self._engine

    def start_host(self, spec: EngineSpec, log_name: str = "host.log") -> EngineClient:
        """A started llama.cpp host for ``spec``, run as the settings say (limits, timeouts, the egress log).
        The caller closes it."""
        lim = self.settings.limits
        client = EngineClient(
            spec,
            limits=RequestLimits(
                max_prompt_chars=lim.max_prompt_chars, max_schema_bytes=lim.max_schema_bytes,
                max_grammar_bytes=lim.max_grammar_bytes, max_embed_texts=lim.max_embed_texts,
                max_embed_chars=lim.max_embed_chars, max_stop_sequences=lim.max_stop_sequences,
            ),
            request_timeout_s=self.settings.runtime.request_timeout_s,
            start_timeout_s=self.settings.runtime.start_timeout_s,
            log_path=self.settings.log_dir / log_name,
            env=self._host_env(),
            host_command=self.host_command,
        )
        client.start()
        return client

    def update_site(self) -> UpdateSite:
        """The parts the update steps work on (:mod:`appliance.updates.site`), from these services."""
        return UpdateSite(
            settings=self.settings, scale=self.scale, store=self.store, writer=self.writer,
            generation=self.generation, knowledge=self.knowledge, embed=self.embed, audit=self.audit,
            accounts=self.accounts, eval_store=self.eval_store, selftest=self.selftest,
            model_identities=self.model_identities,
            start_engine=lambda spec: self.start_host(spec, "host-health.log"))

    @contextmanager
    def with_generator(self, name: str) -> Iterator[ModelRecord]:
        """Serve ``name`` (a generator in the store) instead of the serving one until the block ends:
        for an evaluation that compares generators. The engine restarts (self-test included) on the
        way in and out; the agent and specialists are rebuilt for it."""
        from appliance.errors import ModelStoreError

        record = self.store.get(name)
        if record.kind != "generator":
            raise ModelStoreError(f"{name} is not a generator (kind {record.kind})")
        previous = self._generator
        self._switch(name)
        try:
            yield record
        finally:
            self._switch(previous)

    def _switch(self, generator: str | None) -> None:
        with self._agent_lock, self._engine_lock:
            self._generator = generator
            self._agent = None
            if self._engine is not None:
                self._engine.close()
                self._engine = None

    def close(self) -> None:
        """Stop the engine host and close every store and index this process opened (idempotent)."""
        with self._agent_lock, self._engine_lock, self._opening:
            parts = [self._engine, self.fixed_engine, self._knowledge, *self._stale, self._agent_store,
                     self._eval_store, self._eval_traces, self._accounts, self._audit, self.store]
            self._engine = self._knowledge = self._agent = None
            self._agent_store = self._eval_store = self._eval_traces = self._accounts = self._audit = None
            self._stale = []
            self._generation = None
            for part in parts:
                if part is not None:
                    part.close()


def build_services(settings: Settings | None = None, *, recover: bool = True, engine: Engine | None = None) -> Services:
    """The appliance's services, built once per process (the CLI, the TUI and the tests alike): the egress
    guard installed, the data directory laid out, and what a crashed writer left finished or undone (when
    no other process is writing; ``services.recovered`` says what was done). ``engine``, if given, serves
    instead of the local llama.cpp host (a scripted engine in tests)."""
    settings = settings or load_settings()
    from appliance.airgap import install_egress_guard

    install_egress_guard(airgap_log(settings))
    os.umask(0o077)  # every database, index and key the appliance writes is its own user's alone
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(settings.data_dir, 0o700)
    ensure_layout(settings.data_dir)
    store = ModelStore(
        settings.models_dir,
        max_model_bytes=settings.limits.max_model_bytes,
        max_adapter_bytes=settings.limits.max_adapter_bytes,
    )
    services = Services(settings=settings, store=store, fixed_engine=engine)
    if recover:
        services.recovered = startup_recovery(services)
    return services


def startup_recovery(services: Services) -> list[str]:
    """Under the writer lock, if it is free now: finish or undo an interrupted bundle apply, then the
    knowledge base's unfinished writes. With the lock busy nothing is touched (its holder is alive and
    finishes its own work). Returns what was done, one line each."""
    from appliance.updates.apply import needs_recovery
    from appliance.updates.apply import recover as recover_updates

    with services.writer.attempt("start-up recovery") as free:
        if not free:
            return []
        site = services.update_site()
        done = recover_updates(site) if needs_recovery(site) else []
        if unfinished_writes(services.generation_path() / "knowledge" / "catalog.db"):  # Chroma opened only then
            with services.writing("start-up recovery"):  # recovers on the way in
                pass
            done.append("finished the knowledge base's unfinished writes")
        return done


def airgap_log(settings: Settings) -> Path:
    return settings.log_dir / "airgap.jsonl"
