"""The screens' header: Textual's, minus a race.

Textual's ``Header`` updates its title from watchers of the app's title. When a screen is
logged out of right after it mounted, the watcher can run before (or after) the header's
children exist, and ``query_one(HeaderTitle)`` then raises ``NoMatches`` inside the
event loop. This header skips the update then: there is nothing to show it on.

Textual calls a mount handler of every class in the widget's MRO, so overriding
``Header._on_mount`` alone still ran Textual's (unguarded) one too; this handler stops
that with ``prevent_default`` and runs ``Widget._on_mount`` itself.
"""

from __future__ import annotations

from textual.css.query import NoMatches
from textual.dom import NoScreen
from textual.events import Mount
from textual.widget import Widget
from textual.widgets import Header
from textual.widgets._header import HeaderTitle

__all__ = ["AppHeader"]


class AppHeader(Header):
    def _on_mount(self, event: Mount) -> None:
        event.prevent_default()  # not Header._on_mount as well (its watchers raise NoMatches)
        Widget._on_mount(self, event)

        async def set_title() -> None:
            try:
                self.query_one(HeaderTitle).update(self.format_title())
            except (NoMatches, NoScreen):
                pass

        self.watch(self.app, "title", set_title)
        self.watch(self.app, "sub_title", set_title)
        self.watch(self.screen, "title", set_title)
        self.watch(self.screen, "sub_title", set_title)
