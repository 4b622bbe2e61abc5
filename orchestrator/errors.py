"""The orchestrator's exceptions.

    OrchestratorError
     ├── PlaybookError        a playbook cannot be loaded; carries its diagnostics
     ├── ConfigError          a setting has a value we cannot use
     ├── UnknownStep          `render` was asked for a step or member the playbook does not have
     ├── CopyFailed           message copy cannot be rendered for a member
     ├── UnknownEvent         no scheduled event has that id
     ├── EventConflict        the request contradicts the event's state (scheduled with other content, cancelled, closed)
     └── PosterError          a poster cannot be made (unreadable background image or font)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.diagnostics import Diagnostic


class OrchestratorError(Exception):
    """Base of every error the engine raises on purpose."""


class PlaybookError(OrchestratorError):
    """A playbook has errors; `diagnostics` lists each at file:line:col."""

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        self.diagnostics = list(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics))


class ConfigError(OrchestratorError):
    """A setting from the environment or `.env` is unusable."""


class UnknownStep(OrchestratorError):
    """A step id or member id that the playbook does not contain."""


class CopyFailed(OrchestratorError):
    """Copy that compiles but fails for one member (strict undefined, a sandbox refusal, ...)."""


class UnknownEvent(OrchestratorError):
    """No event with that id is in the store."""


class EventConflict(OrchestratorError):
    """Scheduling, rescheduling or cancelling cannot be done in the event's present state."""


class PosterError(OrchestratorError):
    """A poster cannot be made: an unreadable background image or font."""
