"""Revive's worker SDK: protect mutating actions and park runs when a credential is rejected."""

from .client import AsyncRevive, Revive, SingleFlightCredential
from .errors import (
    ActionAmbiguous,
    ActionFailed,
    ActionInProgress,
    CredentialRejected,
    LeaseFenced,
    ProviderError,
    RefreshRequired,
    RetryLater,
    ReviveError,
    ReviveUnavailable,
    RunAbandoned,
    RunParked,
)
from .flows import ActionContext, Committed, Reconciliation

__all__ = [
    "ActionAmbiguous",
    "ActionContext",
    "ActionInProgress",
    "ActionFailed",
    "AsyncRevive",
    "Committed",
    "CredentialRejected",
    "LeaseFenced",
    "ProviderError",
    "Reconciliation",
    "RefreshRequired",
    "RetryLater",
    "Revive",
    "ReviveError",
    "ReviveUnavailable",
    "RunAbandoned",
    "RunParked",
    "SingleFlightCredential",
]
