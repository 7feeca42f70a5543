"""The screens: login, ask, library, system, audit, and the modal dialogs they open."""
