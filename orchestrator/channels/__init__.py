"""Delivery channels: one small interface, one module per transport.

A playbook names *channels* (sms, email, wecom_customer, ...); a *transport* delivers them.
Until a channel's own transport exists, `ORCH_ROUTES` can route it through the signed webhook
(the brand's own system sends it) or the console (rehearsals).
"""

from orchestrator.channels.base import Outcome, Outgoing, Transport

__all__ = ["Outcome", "Outgoing", "Transport"]
