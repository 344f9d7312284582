"""The settings dialog (non-modal: it reports through `applied`, never a nested loop)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox, QFormLayout, QLabel, QLineEdit,
    QSpinBox, QVBoxLayout, QWidget,
)  # fmt: skip

BLOCK_SIZES = (8, 16, 32, 64, 128)
THEMES = {"system": "Follow the system", "light": "Light", "dark": "Dark"}
# EngineConfig.cpu_weight_dtype: what the CPU's packed linears keep their weights in.
CPU_WEIGHT_STORAGE = {"auto": "Auto (bfloat16 for bfloat16 and quantized models)",
                      "float32": "float32 (exact)", "bfloat16": "bfloat16 (half the bytes)"}  # fmt: skip
MIB = 2**20


class SettingsDialog(QDialog):
    applied = Signal(dict)  # the same keys as the dict given to the constructor

    def __init__(self, values: dict[str, Any], parent: QWidget | None = None,
                 gpus: Sequence[str] = ()):  # fmt: skip
        """`gpus`: the CUDA devices torch sees (app/device_info.list_gpus), listed beside
        the tensor-parallel size; none: the ranks are CPU processes over gloo."""
        super().__init__(parent)
        self.setObjectName("settingsDialog")
        self.setWindowTitle("pagedesk settings")
        self.model = QLineEdit(values["model"], self)
        self.model.setObjectName("settingsModel")
        self.model.setPlaceholderText("bundled SmolLM2-135M-Instruct (a dir, Hub repo id or .gguf)")
        self.kv_mib = self._spin("settingsKvCache", 16, 1 << 20, values["kv_cache_bytes"] // MIB)
        self.kv_mib.setSuffix(" MiB")
        self.gpu_fraction = QDoubleSpinBox(self)
        self.gpu_fraction.setObjectName("settingsGpuFraction")
        self.gpu_fraction.setRange(0.05, 1.0)
        self.gpu_fraction.setSingleStep(0.05)
        self.gpu_fraction.setValue(values["gpu_memory_fraction"])
        self.block_size = self._combo("settingsBlockSize", {str(b): str(b) for b in BLOCK_SIZES},
                                      str(values["block_size"]))  # fmt: skip
        self.max_seqs = self._spin("settingsMaxSeqs", 1, 1024, values["max_num_seqs"])
        self.gpus = tuple(gpus)
        self.tp_size = self._spin("settingsTensorParallel", 1, max(8, len(self.gpus)),
                                  values.get("tensor_parallel_size", 1))  # fmt: skip
        self.tp_devices = QLabel(self)
        self.tp_devices.setObjectName("settingsTensorParallelDevices")
        self.tp_devices.setWordWrap(True)
        self.tp_size.valueChanged.connect(self._describe_ranks)
        self._describe_ranks(self.tp_size.value())
        self.cpu_weights = self._combo("settingsCpuWeights", CPU_WEIGHT_STORAGE,
                                       values.get("cpu_weight_dtype", "auto"))  # fmt: skip
        self.cpu_weights.setToolTip(
            "bfloat16 weights are read about twice as fast in a CPU decode step; activations "
            "and sums stay float32. float32 keeps every bit of a float32 or float16 model."
        )
        self.theme = self._combo("settingsTheme", THEMES, values["theme"])
        self.port = self._spin("settingsServerPort", 1024, 65535, values["server_port"])
        self.api_key = QLineEdit(values["server_api_key"], self)
        self.api_key.setObjectName("settingsApiKey")
        self.api_key.setEchoMode(QLineEdit.EchoMode.PasswordEchoOnEdit)
        self.api_key.setPlaceholderText("none: any local program may call it")
        self._values = dict(values)
        self._build_layout()

    def _build_layout(self) -> None:
        form = QFormLayout()
        form.addRow("Default model", self.model)
        form.addRow("KV cache (CPU)", self.kv_mib)
        form.addRow("Weight storage (CPU)", self.cpu_weights)
        form.addRow("GPU memory fraction", self.gpu_fraction)
        form.addRow("Block size (tokens)", self.block_size)
        form.addRow("Max concurrent sequences", self.max_seqs)
        form.addRow("Tensor-parallel size", self.tp_size)
        form.addRow("", self.tp_devices)
        form.addRow("Theme", self.theme)
        form.addRow("Server port (127.0.0.1)", self.port)
        form.addRow("Server API key", self.api_key)
        note = QLabel("Model and cache settings apply the next time pagedesk starts.", self)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(note)
        layout.addWidget(buttons)

    def _describe_ranks(self, n: int) -> None:
        """Where N ranks would run: the GPUs listed, or CPU processes over gloo."""
        if not self.gpus:
            text = f"No GPU seen by torch. CPU: {n} process{'es' if n > 1 else ''} over gloo"
            if n > 1:
                text += " (a correctness path, not a speed-up on a few cores)"
        else:
            text = "GPUs: " + "; ".join(self.gpus)
            if n > len(self.gpus):
                text += f". {n} ranks need {n} GPUs: only {len(self.gpus)} here"
        self.tp_devices.setText(text)

    def _spin(self, name: str, low: int, high: int, value: int) -> QSpinBox:
        box = QSpinBox(self)
        box.setObjectName(name)
        box.setRange(low, high)
        box.setValue(value)
        return box

    def _combo(self, name: str, items: dict[str, str], current: str) -> QComboBox:
        box = QComboBox(self)
        box.setObjectName(name)
        for key, text in items.items():
            box.addItem(text, key)
        box.setCurrentIndex(max(0, box.findData(current)))
        return box

    def values(self) -> dict[str, Any]:
        return {
            **self._values,
            "model": self.model.text().strip(),
            "kv_cache_bytes": self.kv_mib.value() * MIB,
            "gpu_memory_fraction": round(self.gpu_fraction.value(), 3),
            "block_size": int(self.block_size.currentData()),
            "max_num_seqs": self.max_seqs.value(),
            "tensor_parallel_size": self.tp_size.value(),
            "cpu_weight_dtype": self.cpu_weights.currentData(),
            "theme": self.theme.currentData(),
            "server_port": self.port.value(),
            "server_api_key": self.api_key.text(),
        }

    def accept(self) -> None:
        self.applied.emit(self.values())
        super().accept()
