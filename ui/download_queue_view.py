"""The model manager's Downloads tab: one row per queued repo with per-file and total
progress, speed (0 in a stall, never a frozen number), ETA, and the buttons its state allows:
Pause / Resume / Cancel while it runs, Retry after a failure, Load once it is done.
`show_progress(repo_id, p)` takes any object with Progress's fields (file, file_done, file_size,
done, total, speed_bps, eta_s, state, message)."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFrame, QGridLayout, QHBoxLayout, QLabel, QProgressBar, QPushButton, QScrollArea,
    QVBoxLayout, QWidget,
)  # fmt: skip

from ui.model_types import error_colour, human_bytes

STEPS = 1000  # progress bars count in permille: byte counts overflow Qt's int
RUNNING = ("queued", "downloading", "retrying", "verifying")
STATE_LABELS = {"queued": "Queued", "downloading": "Downloading", "retrying": "Retrying",
                "verifying": "Verifying", "done": "Done", "failed": "Failed",
                "paused": "Paused", "cancelled": "Cancelled"}  # fmt: skip
# state -> the buttons shown (by action name)
BUTTONS = {"queued": ("pause", "cancel"), "downloading": ("pause", "cancel"),
           "retrying": ("pause", "cancel"), "verifying": ("cancel",),
           "paused": ("resume", "cancel"), "cancelled": ("resume", "remove"),
           "failed": ("retry", "remove"), "done": ("load", "remove")}  # fmt: skip
ACTION_LABELS = {"pause": "Pause", "resume": "Resume", "cancel": "Cancel", "retry": "Retry",
                 "load": "Load", "remove": "Remove"}  # fmt: skip


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return "ETA —"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"ETA {seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"ETA {seconds // 60}:{seconds % 60:02d}"


def permille(done: int, total: int) -> int:
    return STEPS if total <= 0 and done > 0 else min(STEPS, done * STEPS // max(total, 1))


class DownloadRow(QFrame):
    actionRequested = Signal(str, str)  # repo id, action

    def __init__(self, repo_id: str, title: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.repo_id = repo_id
        self.state = "queued"
        self.setObjectName("downloadRow")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.title = self._label(title, "downloadTitle", bold=True)
        self.state_label = self._label("Queued", "downloadState")
        self.file_label = self._label("", "downloadFile")
        self.file_bar = self._bar("fileProgress")
        self.total_bar = self._bar("totalProgress")
        self.speed = self._label("", "downloadSpeed")
        self.error = self._label("", "downloadError")
        self.error.setStyleSheet(f"color: {error_colour(self)};")
        self.error.setWordWrap(True)
        self.error.hide()
        self.buttons = {name: self._button(name) for name in ACTION_LABELS}
        self._layout()
        self.set_state("queued")

    def _label(self, text: str, name: str, bold: bool = False) -> QLabel:
        label = QLabel(text, self)
        label.setObjectName(name)
        if bold:
            font = label.font()
            font.setBold(True)
            label.setFont(font)
        return label

    def _bar(self, name: str) -> QProgressBar:
        bar = QProgressBar(self)
        bar.setObjectName(name)
        bar.setRange(0, STEPS)
        bar.setValue(0)
        return bar

    def _button(self, action: str) -> QPushButton:
        button = QPushButton(ACTION_LABELS[action], self)
        button.setObjectName(f"download{ACTION_LABELS[action]}")
        button.clicked.connect(lambda: self.actionRequested.emit(self.repo_id, action))
        return button

    def _layout(self) -> None:
        grid = QGridLayout()
        grid.addWidget(self.title, 0, 0)
        grid.addWidget(self.state_label, 0, 1, Qt.AlignmentFlag.AlignRight)
        grid.addWidget(self.file_label, 1, 0)
        grid.addWidget(self.file_bar, 1, 1)
        grid.addWidget(QLabel("Total", self), 2, 0)
        grid.addWidget(self.total_bar, 2, 1)
        grid.setColumnStretch(0, 2)
        grid.setColumnStretch(1, 3)
        buttons = QHBoxLayout()
        buttons.addWidget(self.speed, 1)
        for button in self.buttons.values():
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addLayout(grid)
        layout.addWidget(self.error)
        layout.addLayout(buttons)

    def set_state(self, state: str, message: str = "") -> None:
        self.state = state
        self.state_label.setText(STATE_LABELS.get(state, state))
        shown = BUTTONS.get(state, ("remove",))
        for action, button in self.buttons.items():
            button.setVisible(action in shown)
        failed = state == "failed" or (state == "retrying" and bool(message))
        self.error.setText(message if failed else "")
        self.error.setVisible(failed and bool(message))
        if state not in RUNNING:
            self.speed.setText("" if state != "done" else "Verified and ready to load.")

    def update_progress(self, p: Any) -> None:
        self.file_label.setText(f"{p.file}  {human_bytes(p.file_done)} / "
                                f"{human_bytes(p.file_size)}" if p.file else "")  # fmt: skip
        self.file_bar.setValue(permille(p.file_done, p.file_size))
        self.file_label.setVisible(bool(p.file))
        self.file_bar.setVisible(bool(p.file))
        self.total_bar.setValue(STEPS if p.state == "done" else permille(p.done, p.total))
        self.total_bar.setToolTip(f"{human_bytes(p.done)} of {human_bytes(p.total)}")
        self.set_state(p.state, p.message)
        if p.state in RUNNING:
            self.speed.setText(f"{human_bytes(p.speed_bps)}/s · {eta_text(p.eta_s)} · "
                               f"{human_bytes(p.done)} of {human_bytes(p.total)}")  # fmt: skip

    def show_saved(self, state: str, done: int, total: int, error: str) -> None:
        """A job restored from the queue file: its bytes so far, its state and error."""
        self.total_bar.setValue(STEPS if state == "done" else permille(done, total))
        self.total_bar.setToolTip(f"{human_bytes(done)} of {human_bytes(total)}")
        self.set_state(state, error)


class DownloadQueueView(QScrollArea):
    actionRequested = Signal(str, str)  # repo id, "pause" | "resume" | "cancel" | ...

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("downloadQueue")
        self.setWidgetResizable(True)
        self.rows: dict[str, DownloadRow] = {}
        inner = QWidget(self)
        self.column = QVBoxLayout(inner)
        self.empty = QLabel("No downloads yet: choose a model in Search the Hub.", inner)
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.column.addWidget(self.empty)
        self.column.addStretch(1)
        self.setWidget(inner)

    def row(self, repo_id: str, title: str | None = None) -> DownloadRow:
        """repo_id's row, made (at the top) if new."""
        if repo_id not in self.rows:
            row = DownloadRow(repo_id, title or repo_id, self.widget())
            row.actionRequested.connect(self.actionRequested)
            self.column.insertWidget(0, row)
            self.rows[repo_id] = row
            self.empty.hide()
        elif title:
            self.rows[repo_id].title.setText(title)
        return self.rows[repo_id]

    def show_progress(self, repo_id: str, progress: Any) -> None:
        self.row(repo_id).update_progress(progress)

    def remove(self, repo_id: str) -> None:
        row = self.rows.pop(repo_id, None)
        if row is not None:
            row.setParent(None)
            row.deleteLater()
        self.empty.setVisible(not self.rows)
