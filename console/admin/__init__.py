"""The operator console in the Django admin: the recovery cases and the ledger behind them (models of ``cases``,
whose app label the admin URLs keep: ``admin:cases_recoverycase_changelist``), connections, namespaces, API keys.

Each module registers its models when Django's admin autodiscovery imports this package.
"""

from . import cases, connections, keys, runs  # noqa: F401  (registers the ModelAdmins)
