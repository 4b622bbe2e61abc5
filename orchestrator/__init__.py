"""Live-stream commerce event orchestrator: playbooks in, a timeline and (later) a running event out."""

from orchestrator.diagnostics import Diagnostic, Severity
from orchestrator.errors import ConfigError, OrchestratorError, PlaybookError, UnknownStep
from orchestrator.load import LoadedPlaybook, check_playbook, load_playbook
from orchestrator.plan import Plan, Stage, Step, plan
from orchestrator.playbook import Playbook
from orchestrator.settings import Settings
from orchestrator.validate import check, validate

__all__ = [
    "ConfigError",
    "Diagnostic",
    "LoadedPlaybook",
    "OrchestratorError",
    "Plan",
    "Playbook",
    "PlaybookError",
    "Settings",
    "Severity",
    "Stage",
    "Step",
    "UnknownStep",
    "check",
    "check_playbook",
    "load_playbook",
    "plan",
    "validate",
]
