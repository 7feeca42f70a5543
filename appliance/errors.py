"""One exception family per boundary.

Every error the appliance raises on purpose derives from :class:`ApplianceError`.
Its ``str()`` is a single line a user can act on: it names what was wrong.
The CLI prints that line and exits non-zero; the TUI shows it as a notice.
"""

from __future__ import annotations


class ApplianceError(Exception):
    """Base of every deliberate error of the appliance."""


# -- configuration ---------------------------------------------------------------------


class ConfigError(ApplianceError):
    """The TOML file or an APPLIANCE_* variable is unknown or has a bad value."""


# -- the data directory -------------------------------------------------------------------


class BusyError(ApplianceError):
    """Another process or thread holds the data directory's writer lock (or a database's write lock)
    longer than the wait allowed; the message names what it is doing."""


# -- air gap ---------------------------------------------------------------------------


class EgressBlockedError(ApplianceError, PermissionError):
    """Something tried to open a network (non-Unix) socket inside the appliance."""


# -- GGUF validation -------------------------------------------------------------------


class GGUFError(ApplianceError):
    """A GGUF file is missing, truncated, corrupted or not what was expected."""


class GGUFTooLargeError(GGUFError):
    """A GGUF file (or a count or string inside it) exceeds a configured limit."""


# -- model store -----------------------------------------------------------------------


class ModelStoreError(ApplianceError):
    """The content-addressed model store refused an operation."""


class UnknownModelError(ModelStoreError):
    """No model of that name is registered."""


class DigestMismatchError(ModelStoreError):
    """Bytes did not hash to the pinned or registered sha256."""


class FetchError(ModelStoreError):
    """Fetching a model from the package registry failed (build station only)."""


# -- runtime engine --------------------------------------------------------------------


class EngineError(ApplianceError):
    """The llama.cpp host could not serve a request."""


class EngineCrashedError(EngineError):
    """The host process died while serving a request; it has been restarted."""


class EngineTimeoutError(EngineError):
    """The host did not answer in time; it has been killed and restarted."""


class EngineSelfTestError(EngineError):
    """The start-up self-test failed: this llama.cpp build cannot serve these models on this CPU."""


class EngineRequestError(EngineError):
    """The request itself was bad (schema, grammar, adapter name, sizes)."""


class ContextOverflowError(EngineRequestError):
    """The prompt does not fit in the model's context window."""


# -- knowledge (ingestion, catalog, index) ---------------------------------------------


class KnowledgeError(ApplianceError):
    """Ingestion, catalog or index refused an operation."""


class ParseError(KnowledgeError):
    """A document could not be parsed; the message names the file and why."""


# -- access ----------------------------------------------------------------------------


class AccessError(ApplianceError):
    """An access decision or an access-policy input was refused."""


class LabelError(AccessError):
    """A label string (LEVEL[:COMPARTMENT,...]) does not parse or names unknown levels."""


# -- agent -----------------------------------------------------------------------------


class AgentError(ApplianceError):
    """A question, session or trace request was refused."""


# -- evaluation ------------------------------------------------------------------------


class EvaluationError(ApplianceError):
    """An evaluation set, run or drift gate was refused; the message names what was wrong."""


# -- specialists -----------------------------------------------------------------------


class ConvertError(ApplianceError):
    """A peft LoRA adapter cannot be converted to a llama.cpp GGUF adapter; the message says why."""


# -- audit -----------------------------------------------------------------------------


class AuditError(ApplianceError):
    """The tamper-evident audit log refused an operation or an input."""


class AuditWriteError(AuditError):
    """An audit entry could not be written, so the action it records is refused."""


class AuditVerifyError(AuditError):
    """Verification of the log failed; the message names what failed and where."""


class CheckpointError(AuditVerifyError):
    """A checkpoint, its signature, a verifier key or its format is bad."""


# -- bundles -----------------------------------------------------------------------------


class BundleError(ApplianceError):
    """An update bundle, its keys or its spec was refused; the message says why."""


class BundleKeyError(BundleError):
    """A signing key is missing, unreadable, or its passphrase is wrong."""


class BundleSignatureError(BundleError):
    """Bundle metadata is not signed by enough of the keys the trusted root names for its role."""


class BundleExpiredError(BundleError):
    """Bundle metadata (or the root offered to trust) has expired."""


class BundleRollbackError(BundleError):
    """The bundle is older than what this appliance already trusts: a lower metadata version or release
    (a replay of an old bundle)."""


class BundleTooLargeError(BundleError):
    """The bundle, one of its files, or one of its payloads is over a configured size or count limit."""


class BundleMismatchError(BundleError):
    """A file does not match the length and hash signed for it, or the bundle is for another appliance class."""


# -- specialists, demo and model conversion (raised by their own modules) -----------------------


class ProfileError(ApplianceError, ValueError):
    """A generator whose profile cannot be made: no usable template, or markers that do not fit."""


class BertConversionError(ModelStoreError):
    """The directory is not a BERT model this converter understands."""


class DemoError(ApplianceError):
    """The demo bundle is invalid, or installing it would touch a real installation."""


class DataError(ApplianceError):
    """Training or evaluation data that cannot be used; the message names the file and line."""


class SpecialistError(ApplianceError):
    """A specialist is unknown, not usable on this base, or was given unusable input."""


class TrainError(ApplianceError):
    """Fine-tuning could not run (bad settings, no usable examples, a diverging loss)."""


# -- sessions ------------------------------------------------------------------------------


class SessionExpiredError(AccessError):
    """There is no live login session (never logged in, ended, idle too long, or the account was disabled):
    log in again."""


class LoginFailedError(AccessError):
    """A login was refused: the user name or passphrase is wrong, or the account is locked or disabled
    (one message for all, so a guesser learns nothing)."""


class NotPermittedError(AccessError):
    """The account's role does not allow the action, or its clearance does not reach the labels asked for."""


# every class above, in the order defined: the engine client rebuilds a host's error by this name
__all__ = [name for name, value in list(globals().items())
           if isinstance(value, type) and issubclass(value, ApplianceError)]
