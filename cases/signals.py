"""What ``cases`` tells the apps built on it, without importing them.

``reauth`` imports ``cases``; ``cases`` never imports ``reauth`` (see ``cases.pipeline``). Where a case change
needs the owner's side to act, ``cases`` sends one of these signals and ``reauth`` connects its receiver in
``ReauthConfig.ready``. Each is sent inside the transaction of the change, with the case row locked, so a
receiver's writes commit or roll back with it; receivers must not make network calls (owe them through
``cases.outbox`` instead).
"""

from django.dispatch import Signal

case_opened = Signal()
"""``case`` was opened (``owner_required`` says whether its owner must reconnect). Kwargs: ``case``, ``actor``."""

case_needs_owner = Signal()
"""An open case became one its owner must act on (a more actionable report joined it). Kwargs: ``case``,
``actor``."""

case_abandoned = Signal()
"""``case`` was abandoned or rejected: nothing the owner holds for it may work any more. Kwargs: ``case``,
``reason``, ``actor``."""

owner_link_resend = Signal()
"""An operator asks for a new owner link for ``case``. Kwargs: ``case``, ``actor``. A receiver returns a short
description of what it sent; a domain error it raises reaches the operator."""

case_state_changed = Signal()
"""``case`` moved from ``before`` to ``case.state`` (sent by ``case_transition``, the one place a case changes state).
Kwargs: ``case``, ``before``, ``actor``. Operator notifications (``operations.notifications``) listen to it."""
