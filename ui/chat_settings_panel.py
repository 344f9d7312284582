"""A session's system prompt and sampling settings (temperature, top_p, top_k, max_tokens, seed)."""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QDoubleSpinBox, QFormLayout, QFrame, QPlainTextEdit, QSpinBox, QWidget,
)  # fmt: skip

from ui.chat_types import ChatSettings

SEED_RANDOM = -1
TOP_K_OFF = 0


class ChatSettingsPanel(QFrame):
    settingsChanged = Signal(object)  # ChatSettings

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("chatSettings")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self._settings = ChatSettings()
        self._loading = False
        self.system_prompt = QPlainTextEdit(self)
        self.system_prompt.setObjectName("systemPrompt")
        self.system_prompt.setPlaceholderText("System prompt (empty: the model's default)")
        self.system_prompt.setMaximumHeight(70)
        self.temperature = self._double("temperature", 0.0, 2.0, 0.05, 2)
        self.top_p = self._double("topP", 0.01, 1.0, 0.05, 2)
        self.top_k = self._int("topK", TOP_K_OFF, 100_000, "off")
        self.max_tokens = self._int("maxTokens", 1, 131_072)
        self.seed = self._int("seed", SEED_RANDOM, 2**31 - 1, "random")
        form = QFormLayout(self)
        form.addRow("System prompt", self.system_prompt)
        form.addRow("Temperature", self.temperature)
        form.addRow("top_p", self.top_p)
        form.addRow("top_k", self.top_k)
        form.addRow("Max tokens", self.max_tokens)
        form.addRow("Seed", self.seed)
        self.system_prompt.textChanged.connect(self._emit)
        for box in (self.temperature, self.top_p, self.top_k, self.max_tokens, self.seed):
            box.valueChanged.connect(self._emit)

    def _double(self, name: str, low: float, high: float, step: float,
                decimals: int) -> QDoubleSpinBox:  # fmt: skip
        box = QDoubleSpinBox(self)
        box.setObjectName(name)
        box.setRange(low, high)
        box.setSingleStep(step)
        box.setDecimals(decimals)
        return box

    def _int(self, name: str, low: int, high: int, special: str = "") -> QSpinBox:
        box = QSpinBox(self)
        box.setObjectName(name)
        box.setRange(low, high)
        if special:
            box.setSpecialValueText(special)
        return box

    def set_settings(self, settings: ChatSettings) -> None:
        """Show these settings without emitting settingsChanged."""
        self._loading = True
        try:
            self._settings = settings
            if self.system_prompt.toPlainText() != settings.system_prompt:
                self.system_prompt.setPlainText(settings.system_prompt)
            self.temperature.setValue(settings.temperature)
            self.top_p.setValue(settings.top_p)
            self.top_k.setValue(max(settings.top_k, TOP_K_OFF))
            self.max_tokens.setValue(settings.max_tokens)
            self.seed.setValue(SEED_RANDOM if settings.seed is None else settings.seed)
        finally:
            self._loading = False

    def settings(self) -> ChatSettings:
        top_k = self.top_k.value()
        seed = self.seed.value()
        return replace(
            self._settings,
            system_prompt=self.system_prompt.toPlainText(),
            temperature=round(self.temperature.value(), 4),
            top_p=round(self.top_p.value(), 4),
            top_k=-1 if top_k == TOP_K_OFF else top_k,
            max_tokens=self.max_tokens.value(),
            seed=None if seed == SEED_RANDOM else seed,
        )

    def _emit(self) -> None:
        if not self._loading:
            self._settings = self.settings()
            self.settingsChanged.emit(self._settings)
