"""The application layer: every use case done on behalf of an account.

Each use case takes the services and the logged-in :class:`~appliance.access.accounts.Account`,
and goes through :func:`~appliance.app.acting.acting` once: the account as stored now (a
revoke or a disabled account takes effect at once), authorized for the action by the one
table in :mod:`appliance.access.authz`, and every audit entry written as that account. An
action whose audit entry cannot be written does not happen. The CLI and the TUI call these
and never decide access or write audit entries themselves.

Modules: :mod:`~appliance.app.documents` (ingest, delete, search, show, list, index check),
:mod:`~appliance.app.audit` (export, check, view), :mod:`~appliance.app.answers` (feedback,
request metrics, trace export), :mod:`~appliance.app.specialists`,
:mod:`~appliance.app.evaluation` (sets and runs), :mod:`~appliance.app.updates` (signed bundles),
and the two that run without a login: :mod:`~appliance.app.doctor` and :mod:`~appliance.app.demo`.
"""
