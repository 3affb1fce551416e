"""The operator API's routes: parse, call one service, return.

``revive_site.api`` mounts each of :data:`operator_routers` on the operator
API, so these are served under ``/api/v2/admin/operator/`` behind the operator
key (*system operate*) and recorded by the operations audit like every operator
route: the Restate recovery routes under ``restate/`` (:mod:`operations.restate.api`),
and Revive's doctor at ``GET doctor``. (Mounted on the API one by one, not as
children of one router: ninja drops the leading slash of a child router's
prefix, and the schema for an explicit ``path_prefix`` without a trailing slash
would then name ``…/operatorrestate/…``.)

The ``operation_id`` of each route is the one the schema published before the
routes moved out of ``cases``: clients generated from it keep their names.
"""

from __future__ import annotations

from ninja import Router

from revive_site.schemas import ErrorOut

from .doctor import revive_doctor
from .restate.api import router as restate_router
from .schemas import ReviveDoctorOut

router = Router(tags=["operator: doctor"])


@router.get(
    "/doctor",
    response={200: ReviveDoctorOut, 401: ErrorOut, 403: ErrorOut},
    summary="Read the health of Revive's parts (changes nothing)",
    operation_id="cases_doctor_api_doctor",
)
def doctor(request):
    return revive_doctor()


operator_routers: tuple[tuple[str, Router], ...] = (("/restate/", restate_router), ("/", router))
"""(prefix, router) in the order of the schema's paths."""
