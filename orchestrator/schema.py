"""The playbook's JSON Schema, for editors that complete and check YAML as managers type."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic.json_schema import GenerateJsonSchema

from orchestrator.playbook import Playbook
from orchestrator.timespec import QuietHours, TimeSpec, format_duration

SCHEMA_ID = "https://live-orchestrator.invalid/schema/playbook-1.json"


class _AsWritten(GenerateJsonSchema):
    """Defaults the way authors write them (`30m`, `21:00-08:00`), not pydantic's ISO forms."""

    def encode_default(self, dft: Any) -> Any:
        if isinstance(dft, timedelta):
            return format_duration(dft)
        if isinstance(dft, (QuietHours, TimeSpec)):
            return str(dft)
        return super().encode_default(dft)


def playbook_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a playbook file, by the names authors write."""
    schema = Playbook.model_json_schema(by_alias=True, mode="validation", schema_generator=_AsWritten)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}
