"""The learner's toolbar: pause / resume, one step at a time, slow motion, the small-cache
preset, reset the prefix cache, ready-made experiments and the guided tour.

It only says what the learner wants (signals); the app drives the engine."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QLabel, QMenu, QSlider, QToolBar, QToolButton, QWidget

# (key, menu text, what it shows): the app runs the experiment named by key
EXPERIMENTS = (
    ("shared_system_prompt", "Two chats with the same system prompt",
     "prefix caching: the second chat's prompt blocks are the first one's, ref count 2"),
    ("n_samples", "n = 4 samples of one prompt",
     "four sequences share the prompt's blocks; each decodes into blocks of its own"),
    ("fill_small_cache", "Fill the small cache",
     "64 blocks, four long replies: blocks run out, the newest request is preempted"),
)  # fmt: skip

MAX_DELAY_MS = 1000


class LearnerToolbar(QToolBar):
    pauseToggled = Signal(bool)  # True: paused
    stepRequested = Signal()
    stepDelayChanged = Signal(float)  # seconds after each step
    smallCacheToggled = Signal(bool)
    resetPrefixCacheRequested = Signal()
    experimentRequested = Signal(str)  # a key of EXPERIMENTS
    tourRequested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Learn", parent)
        self.setObjectName("learnerToolbar")
        self.pause_button = self._button("pauseButton", "Pause", checkable=True,
                                         tip="Stop the engine between steps; requests wait")  # fmt: skip
        self.pause_button.toggled.connect(self._pause_toggled)
        self.step_button = self._button("stepButton", "Step",
                                        tip="Run exactly one scheduler step, then stop again")  # fmt: skip
        self.step_button.clicked.connect(self.stepRequested)
        self.step_button.setEnabled(False)
        self.delay_label = QLabel(self)
        self.delay_label.setObjectName("slowMotionLabel")
        self.delay_slider = self._delay_slider()
        self.small_cache_button = self._button(
            "smallCacheButton", "Small cache", checkable=True,
            tip="Restart the engine on 64 blocks of 16 tokens (the chats carry on): "
                "sharing, eviction and preemption happen where you can see them")  # fmt: skip
        self.small_cache_button.toggled.connect(self.smallCacheToggled)
        self.reset_button = self._button("resetPrefixCacheButton", "Reset prefix cache",
                                         tip="Forget every cached-free block (BlockRemoved, "
                                             "AllBlocksCleared)")  # fmt: skip
        self.reset_button.clicked.connect(self.resetPrefixCacheRequested)
        self.experiments_button = self._experiments_button()
        self.tour_button = self._button("tourButton", "Tour", tip="What the panels show")
        self.tour_button.clicked.connect(self.tourRequested)
        for w in (self.pause_button, self.step_button, self.delay_label, self.delay_slider,
                  self.small_cache_button, self.reset_button, self.experiments_button,
                  self.tour_button):  # fmt: skip
            self.addWidget(w)
        self._show_delay(0)

    def _button(self, name: str, text: str, checkable: bool = False, tip: str = "") -> QToolButton:
        button = QToolButton(self)
        button.setObjectName(name)
        button.setText(text)
        button.setCheckable(checkable)
        button.setToolTip(tip)
        return button

    def _delay_slider(self) -> QSlider:
        slider = QSlider(Qt.Orientation.Horizontal, self)
        slider.setObjectName("slowMotionSlider")
        slider.setRange(0, MAX_DELAY_MS)
        slider.setSingleStep(50)
        slider.setPageStep(200)
        slider.setFixedWidth(120)
        slider.setToolTip("Slow motion: a pause after every engine step")
        slider.valueChanged.connect(self._show_delay)
        slider.valueChanged.connect(lambda ms: self.stepDelayChanged.emit(ms / 1000))
        return slider

    def _experiments_button(self) -> QToolButton:
        button = self._button("experimentsButton", "Experiments ▾",
                              tip="Ready-made runs that show one idea each")  # fmt: skip
        button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(button)
        for key, text, shows in EXPERIMENTS:
            action = menu.addAction(text, lambda k=key: self.experimentRequested.emit(k))
            action.setObjectName(f"experiment_{key}")
            action.setToolTip(shows)
        menu.setToolTipsVisible(True)
        button.setMenu(menu)
        return button

    def _show_delay(self, ms: int) -> None:
        self.delay_label.setText(" Slow motion: off " if ms == 0 else f" Slow motion: {ms} ms ")

    def _pause_toggled(self, paused: bool) -> None:
        self.pause_button.setText("Resume" if paused else "Pause")
        self.step_button.setEnabled(paused)
        self.pauseToggled.emit(paused)

    # ---------------------------------------------------------------- told by the app
    def set_paused(self, paused: bool) -> None:
        """Show the state without asking for it again (no signal)."""
        self.pause_button.blockSignals(True)
        self.pause_button.setChecked(paused)
        self.pause_button.blockSignals(False)
        self.pause_button.setText("Resume" if paused else "Pause")
        self.step_button.setEnabled(paused)

    def set_small_cache(self, on: bool) -> None:
        self.small_cache_button.blockSignals(True)
        self.small_cache_button.setChecked(on)
        self.small_cache_button.blockSignals(False)

    def set_engine_ready(self, ready: bool) -> None:
        for w in (self.pause_button, self.small_cache_button, self.reset_button,
                  self.experiments_button):  # fmt: skip
            w.setEnabled(ready)
        self.step_button.setEnabled(ready and self.pause_button.isChecked())
