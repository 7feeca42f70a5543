"""The Textual terminal UI: login, ask, library, system and audit screens over the services."""
