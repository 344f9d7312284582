"""What the learner's panels need to know about the app without importing it: who owns a
request. The app resolves its request ids ("session3-message7") to sessions; a widget only
calls the resolver it was given, so it can be tested with a stand-in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PySide6.QtGui import QColor


@dataclass(frozen=True, slots=True)
class RequestOwner:
    key: object  # what identifies the owner to the app (a session id)
    label: str  # shown in tooltips and filters ("Chat about rust")
    color: QColor  # the owner's pane colour


# parent request id (the id the caller gave the engine) -> its owner, or None if unknown
OwnerResolver = Callable[[str], RequestOwner | None]


def no_owner(_parent_id: str) -> RequestOwner | None:
    return None
