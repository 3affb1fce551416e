"""The one interface Revive drives every durable runtime through.

An adapter never decides anything about a case: ``cases.resume`` decides which
runs may continue and with which generations, and calls the adapter of each
run's runtime to deliver that decision. Adapters make delivery idempotent on the
runtime side (a second delivery of the same resume changes nothing) and say
precisely how a delivery failed, because the caller retries only transient
failures.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cases.namespaces import unqualify

if TYPE_CHECKING:
    from cases.models import RecoveryCase, Run

# ``payload["revive"]`` of every resume value Revive delivers, and of the value that tells a parked run its case was
# abandoned: the names the SDK helpers check, from the SDK itself.
from revive_sdk.names import ABANDON_KIND, RESUME_KIND  # noqa: F401


class RuntimeDeliveryError(Exception):
    """Base of what an adapter raises when it could not deliver a resume."""

    transient = True

    def __init__(self, message: str, *, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.detail = detail or {}


class RuntimeUnavailable(RuntimeDeliveryError):
    """The runtime could not be reached or did not answer in time; retry with backoff."""


class RunNotWaiting(RuntimeDeliveryError):
    """The run has not reached its wait yet (or is busy elsewhere); retry shortly, the resume must not be lost."""


class RunGone(RuntimeDeliveryError):
    """The runtime no longer has the run in a resumable form (finished, terminated, unknown): retrying cannot help."""

    transient = False


class AbandonNotSupported(RuntimeDeliveryError):
    """This runtime (or this run's form of it) cannot be told that its case was abandoned: the run stays parked."""

    transient = False


class RuntimeMisconfigured(RuntimeDeliveryError):
    """Revive cannot address the run (no registered graph, missing runtime reference): an operator must fix it."""

    transient = False


@dataclasses.dataclass(frozen=True)
class ResumeRequest:
    """What one resume delivers to one run: which cases released it and the generations it may now use.

    ``payload()`` is the value the run's wait returns (LangGraph ``Command(resume=...)``, the Temporal
    ``revive_reauthorized`` signal argument, the value a Restate promise resolves with).
    """

    run_id: str
    case_ids: tuple[str, ...]
    generations: dict[str, int]
    """connection id -> the generation the run may use now."""
    rejected: dict[str, int]
    """connection id -> the generation that was rejected (Restate keys its promises by it)."""
    attempt: int = 0
    """Which delivery of this resume this is (0 the first; retries and the watchdog's re-drives count up)."""
    redrive: int = 0
    """How many times the watchdog re-drove this run (0: the first delivery). A re-drive follows a stall: an
    adapter continues the run from its latest checkpoint if it is no longer waiting."""
    executing: Callable[[], None] | None = dataclasses.field(default=None, compare=False, repr=False)
    """An adapter that executes the run itself (``RuntimeAdapter.hosts``) calls this right before it does, once it
    knows the run will run here: from then until the delivery returns, the rest of the run is Revive's to finish
    (``Run.hosted_at``, watched by ``cases.pipeline``)."""

    def payload(self) -> dict[str, Any]:
        """In the worker's own ids: run and connection ids without their namespace qualification."""
        return {
            "revive": RESUME_KIND,
            "run_id": unqualify(self.run_id),
            "cases": list(self.case_ids),
            "generations": {unqualify(conn): gen for conn, gen in self.generations.items()},
            "rejected": {unqualify(conn): gen for conn, gen in self.rejected.items()},
        }

    @property
    def delivery_key(self) -> str:
        """One key per generation and re-drive, whatever the attempt: what a runtime that records its deliveries (the
        LangGraph Agent Server's run metadata) looks for, so that a retry never resumes the run twice."""
        parts = ",".join(
            f"{conn}:g{self.rejected[conn]}-g{self.generations.get(conn)}" for conn in sorted(self.rejected)
        )
        return f"revive-resume:{self.run_id}:{parts}:r{self.redrive}"

    @property
    def idempotency_key(self) -> str:
        """One key per generation and attempt: a duplicate of this delivery is deduplicated by the runtime, while a
        later attempt (or a resume for a newer generation) is a new delivery and is not answered from a stored one."""
        return f"{self.delivery_key}:a{self.attempt}"


@dataclasses.dataclass(frozen=True)
class AbandonRequest:
    """What tells one parked run that the case it waits on was abandoned (or rejected): its wait ends, never resumed.

    ``payload()`` is the value the run's wait gets instead of a resume (the Temporal ``revive_abandoned`` signal's
    argument, LangGraph's ``Command(resume=...)`` value); the SDK helpers raise ``RunAbandoned`` from it.
    """

    run_id: str
    case_id: str
    reason: str
    rejected: dict[str, int]
    """connection id -> the rejected generation the run waits on."""

    def payload(self) -> dict[str, Any]:
        return {
            "revive": ABANDON_KIND,
            "run_id": unqualify(self.run_id),
            "cases": [self.case_id],
            "reason": self.reason,
            "rejected": {unqualify(conn): gen for conn, gen in self.rejected.items()},
        }

    @property
    def idempotency_key(self) -> str:
        return f"revive-abandon:{self.run_id}:{self.case_id}"


@dataclasses.dataclass(frozen=True)
class ResumeResult:
    """A delivered resume. ``already`` when the run had already moved past its wait (nothing was sent)."""

    already: bool = False
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RunStatus:
    """The runtime's own view of a run, for operators and for ``status``."""

    state: str
    """``waiting`` (parked at its wait), ``running``, ``completed``, ``failed`` or ``unknown``."""
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)


class RuntimeAdapter(abc.ABC):
    """``park``, ``resume`` and ``status`` for one runtime; one instance per process."""

    runtime: str

    @abc.abstractmethod
    def park(self, run: Run, case: RecoveryCase) -> dict[str, Any]:
        """Observe that ``run`` is held at its durable wait for ``case``; return where (the runtime's reference).

        The pause itself is made by the SDK helper inside the run (``interrupt``, wait-for-signal, durable
        promise); Revive never needs a live worker to keep a run parked. Raises ``RunNotWaiting`` while the
        run has not reached its wait.
        """

    @abc.abstractmethod
    def resume(self, case: RecoveryCase, new_generation: int, *, run: Run, request: ResumeRequest) -> ResumeResult:
        """Deliver the resume to ``run``, released by ``case`` (whose connection is now at ``new_generation``).

        Idempotent: delivering the same ``request`` again resumes the run at most once.
        """

    def hosts(self, run: Run) -> bool:
        """Whether the resume delivery itself executes ``run`` (LangGraph run in Revive's worker), rather than waking
        a run its runtime executes (a Temporal signal, a Restate promise). A delivery of a hosted run that died is
        continued from the run's latest checkpoint even after the run went past its parked action
        (``resume.run_resume_deliver``): nobody else would run the rest."""
        return False

    def can_abandon(self, run: Run) -> bool:
        """Whether ``abandon`` can reach ``run`` (checked before Revive stops treating the run as parked)."""
        return False

    def abandon(self, *, run: Run, request: AbandonRequest) -> ResumeResult:
        """Tell ``run``, parked on ``request.case_id``, that its case was abandoned, so that it ends instead of
        waiting forever. Idempotent, like ``resume``. ``ResumeResult.already``: the run was past its wait."""
        raise AbandonNotSupported(f"the {self.runtime} adapter cannot tell a run that its case was abandoned")

    @abc.abstractmethod
    def status(self, run: Run) -> RunStatus:
        """The run's state in its runtime."""

    def close(self) -> None:  # noqa: B027  (a hook: an adapter holding nothing has nothing to release)
        """Release process-wide resources (connections, event loops)."""
