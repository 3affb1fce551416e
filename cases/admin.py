"""The admin of ``cases``: the operator console (``console.admin``) registers the recovery cases and the ledger;
this module registers only the doctor-and-recovery panel of the Restate operator routes."""

from .restate import admin as restate_admin  # noqa: F401  (registers the doctor-and-recovery panel)
