"""The user's settings, kept with QSettings in the data dir (settings.ini)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSettings

from app.paths import settings_path

THEMES = ("system", "light", "dark")
CPU_WEIGHT_DTYPES = ("auto", "float32", "bfloat16")  # EngineConfig.cpu_weight_dtype (no torch here)


@dataclass(slots=True)
class AppSettings:
    model: str = ""  # "" = the bundled SmolLM2-135M-Instruct
    kv_cache_bytes: int = 1 << 30  # the KV cache budget on CPU
    gpu_memory_fraction: float = 0.9  # the share of GPU memory the engine may use, on CUDA
    block_size: int = 16
    max_num_seqs: int = 64
    tensor_parallel_size: int = 1  # ranks (GPUs, or CPU processes over gloo) to shard over
    cpu_weight_dtype: str = "auto"  # how the CPU's packed linears keep their weights
    theme: str = "system"
    server_port: int = 8000
    server_api_key: str = ""

    def engine_config_fields(self, model_override: str | None = None) -> dict[str, Any]:
        """EngineConfig keyword arguments (built into an EngineConfig in the loader thread,
        so the UI thread never imports torch)."""
        return {
            "model": model_override or self.model or None,
            "kv_cache_bytes": self.kv_cache_bytes,
            "gpu_memory_fraction": self.gpu_memory_fraction,
            "block_size": self.block_size,
            "max_num_seqs": self.max_num_seqs,
            "tensor_parallel_size": max(1, self.tensor_parallel_size),
            "cpu_weight_dtype": self.cpu_weight_dtype,
        }


def open_qsettings(data_dir: Path) -> QSettings:
    return QSettings(str(settings_path(data_dir)), QSettings.Format.IniFormat)


def load_settings(qsettings: QSettings) -> AppSettings:
    """Read every field, falling back to the default where a value is missing or bad."""
    defaults = AppSettings()
    values = {}
    for f in fields(AppSettings):
        default = getattr(defaults, f.name)
        raw = qsettings.value(f.name, default)
        try:
            values[f.name] = type(default)(raw)
        except (TypeError, ValueError):
            values[f.name] = default
    if values["theme"] not in THEMES:
        values["theme"] = defaults.theme
    if values["cpu_weight_dtype"] not in CPU_WEIGHT_DTYPES:
        values["cpu_weight_dtype"] = defaults.cpu_weight_dtype
    return AppSettings(**values)


def save_settings(qsettings: QSettings, settings: AppSettings) -> None:
    for name, value in asdict(settings).items():
        qsettings.setValue(name, value)
    qsettings.sync()
