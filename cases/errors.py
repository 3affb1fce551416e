from revive_site.errors import DomainError, NotFound


class RunNotFound(NotFound):
    code = "RUN_NOT_FOUND"
    default_message = "No run with this id is registered."


class ConnectionNotFound(NotFound):
    code = "CONNECTION_NOT_FOUND"
    default_message = "No connection with this id exists."


class ActionNotFound(NotFound):
    code = "ACTION_NOT_FOUND"
    default_message = "This run has no action with this key; call begin first."


class CaseNotFound(NotFound):
    code = "CASE_NOT_FOUND"
    default_message = "No recovery case with this id exists."


class RunConflict(DomainError):
    code = "RUN_CONFLICT"
    status = 409
    default_message = "A run with this id is already registered with a different runtime or workflow."


class RunAbandoned(DomainError):
    """The run was told its recovery case was abandoned: it ends, and Revive lets it take no further action."""

    code = "RUN_ABANDONED"
    status = 409
    default_message = "This run's recovery case was abandoned; the run must end."


class ConnectionConflict(DomainError):
    code = "CONNECTION_CONFLICT"
    status = 409
    default_message = "A connection with this id already exists."


class LeaseFenced(DomainError):
    code = "LEASE_FENCED"
    status = 409
    default_message = "This credential generation has been superseded; reacquire the lease."


class GenerationUnknown(DomainError):
    code = "GENERATION_UNKNOWN"
    status = 409
    default_message = "This credential generation has not been issued for the connection."


class ActionParamsMismatch(DomainError):
    code = "ACTION_PARAMS_MISMATCH"
    status = 409
    default_message = "This action key was begun with different parameters."


class ActionInProgress(DomainError):
    code = "ACTION_IN_PROGRESS"
    status = 409
    default_message = (
        "This action is executing under another claim; it cannot be claimed until it completes or is marked ambiguous."
    )


class ActionStateConflict(DomainError):
    code = "ACTION_TRANSITION_NOT_ALLOWED"
    status = 409
    default_message = "The action is not in a state that allows this."


class ActionConnectionMismatch(DomainError):
    code = "ACTION_CONNECTION_MISMATCH"
    status = 409
    default_message = "This action key was begun on a different connection."


class CaseTransitionNotAllowed(DomainError):
    code = "CASE_TRANSITION_NOT_ALLOWED"
    status = 409
    default_message = "The case is not in a state that allows this."


class RefreshClaimNotHeld(DomainError):
    code = "REFRESH_CLAIM_NOT_HELD"
    status = 409
    default_message = (
        "This refresh claim round is not held by this holder (it expired and was taken over, or never was)."
    )


class CaseAlreadyDecided(CaseTransitionNotAllowed):
    """Another operator's decision landed first; ``data`` says who decided what and when."""

    code = "CASE_ALREADY_DECIDED"
    status = 409
    default_message = "Another operator already decided this case."


class ActionAlreadyReconciled(DomainError):
    """An operator's by-hand reconciliation lost to another's (or a reconciler's); ``data`` says whose and when."""

    code = "ACTION_ALREADY_RECONCILED"
    status = 409
    default_message = "This action was already reconciled by someone else."


class FourEyesRefused(DomainError):
    """``REVIVE_FOUR_EYES``: this operator took part in the case and may not approve its resume."""

    code = "CASE_FOUR_EYES"
    status = 403
    default_message = "Another operator must approve this resume."


class ConnectionInvalid(DomainError):
    code = "CONNECTION_INVALID"
    status = 422
    default_message = "The connection's provider and broker references do not fit together."
