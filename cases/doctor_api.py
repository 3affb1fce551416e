"""Revive's doctor on the operator API: parse, call one service, return.

Mounted by ``revive_site.api`` on the operator API, so it is served at
``GET /api/v2/admin/operator/doctor`` behind the operator key (*system
operate*) and recorded by the operations audit like every operator route.
"""

from __future__ import annotations

from ninja import Router

from cases.schemas import ErrorOut

from .doctor import revive_doctor
from .doctor_schemas import ReviveDoctorOut

router = Router(tags=["operator: doctor"])


@router.get("/doctor", response={200: ReviveDoctorOut, 401: ErrorOut, 403: ErrorOut},
            summary="Read the health of Revive's parts (changes nothing)")
def doctor(request):
    return revive_doctor()
