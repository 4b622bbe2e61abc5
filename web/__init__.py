"""The web side: Starlette app serving pages, APIs and the host board. Imports `orchestrator`, never the reverse."""
