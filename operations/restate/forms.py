"""The admin's forms for the three Restate write routes.

Each form validates through the API's own request schema (``schemas.py``), so
the admin accepts exactly what the route accepts; the schema's complaints
become field errors. ``payload`` is the validated schema instance.
"""

from __future__ import annotations

from typing import Any

import pydantic
from django import forms
from ninja import Schema

from .schemas import MAX_URL_LENGTH, CleanupStaleDeploymentsIn, ForceRedeployIn, RecoverStuckWorkflowIn


class RestateOperationForm(forms.Form):
    schema: type[Schema]
    wire_names: dict[str, str]
    """Form field -> request field of the route."""

    reason = forms.CharField(
        required=False,
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 2, "cols": 60}),
        help_text="Optional: the incident or why. Stored in the operations audit with your name.",
    )

    payload: Schema | None = None

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        assert cleaned is not None  # Form.clean answers cleaned_data
        if any(name in self.errors for name in self.wire_names):
            return cleaned
        body = {wire: cleaned.get(field) for field, wire in self.wire_names.items()}
        try:
            self.payload = self.schema.model_validate(body)
        except pydantic.ValidationError as exc:
            fields = {wire: field for field, wire in self.wire_names.items()}
            for error in exc.errors():
                loc = error.get("loc") or ()
                field = fields.get(str(loc[0])) if loc else None
                message = str(error.get("msg", "is not valid")).removeprefix("Value error, ")
                self.add_error(field, message)
        return cleaned

    def arguments(self) -> dict[str, Any]:
        """The request body of the equivalent API call, for the operations audit (also when the input is invalid)."""
        data = self.cleaned_data if hasattr(self, "cleaned_data") else {}
        return {wire: data.get(field, self.data.get(field)) for field, wire in self.wire_names.items()}


def _service_url_field(help_text: str) -> forms.CharField:
    return forms.CharField(
        label="Service URL", max_length=MAX_URL_LENGTH, help_text=help_text, widget=forms.TextInput(attrs={"size": 70})
    )


class ForceRedeployForm(RestateOperationForm):
    schema = ForceRedeployIn
    wire_names = {"service_url": "serviceUrl", "force": "force"}

    service_url = _service_url_field("The live durable workflow service URL to register (scheme, host, port, path).")
    force = forms.BooleanField(
        required=False, initial=True, help_text="Forced registration (the default): overwrite what the engine knows."
    )


class CleanupStaleDeploymentsForm(RestateOperationForm):
    schema = CleanupStaleDeploymentsIn
    wire_names = {"service_url": "serviceUrl", "force_drain": "forceDrain"}

    service_url = _service_url_field("Exactly the serviceUrl of the deployment to keep, as the doctor shows it.")
    force_drain = forms.BooleanField(
        required=False,
        initial=False,
        label="Force drain",
        help_text="Only for stale deployments that point to dead services: delete them even with pending invocations.",
    )


class RecoverStuckWorkflowForm(RestateOperationForm):
    schema = RecoverStuckWorkflowIn
    wire_names = {"service_name": "serviceName", "service_key": "serviceKey"}

    service_name = forms.CharField(max_length=255, help_text="The workflow's service name ([a-zA-Z0-9_-]).")
    service_key = forms.CharField(max_length=255, help_text="The workflow key of the failed invocation.")
