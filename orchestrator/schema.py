"""The playbook's JSON Schema, for editors that complete and check YAML as managers type."""

from __future__ import annotations

from typing import Any

from orchestrator.playbook import Playbook

SCHEMA_ID = "https://live-orchestrator.invalid/schema/playbook-1.json"


def playbook_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a playbook file, by the names authors write."""
    schema = Playbook.model_json_schema(by_alias=True, mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}
