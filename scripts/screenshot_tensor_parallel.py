"""Render tensor parallelism as a person sees it, to docs/screenshots/: the settings
dialog with a tensor-parallel size of 2 (tp-settings.png: no GPU here, so "CPU: 2
processes over gloo") and the KV panel of a real TP=2 engine mid-run (tp-kv-panel.png:
a small random Llama, 4 query heads over 2 KV heads, one per rank; bytes per token and
capacity "per rank ×2").

    DISPLAY=:97 QT_QPA_PLATFORM=xcb python scripts/screenshot_tensor_parallel.py docs/screenshots
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from screenshot_panels import grab  # noqa: E402  (scripts/ is on the path: run as a script)


def tp2_engine(folder: Path):
    from engine import EngineConfig, LLMEngine, SamplingParams
    from family_parity import random_prompts
    from model_factory import make_random_llama

    path = make_random_llama(folder / "llama", num_heads=4, num_kv_heads=2, head_dim=32,
                             num_layers=2)  # fmt: skip
    engine = LLMEngine(EngineConfig(model=str(path), device="cpu", dtype="float32",
                                    num_kv_blocks=160, block_size=16, tensor_parallel_size=2))  # fmt: skip
    for i, prompt in enumerate(random_prompts(259, [300, 210, 150], seed=1)):
        engine.add_request(f"chat-{i}", prompt, SamplingParams(max_tokens=200, ignore_eos=True))
    for _ in range(12):
        engine.step()
    return engine


def main(folder: Path) -> None:
    from PySide6.QtWidgets import QApplication

    from app.device_info import list_gpus
    from app.settings import AppSettings
    from ui.kv_cache_view import KVCacheView
    from ui.settings_dialog import SettingsDialog

    app = QApplication.instance() or QApplication([])
    folder.mkdir(parents=True, exist_ok=True)
    dialog = SettingsDialog(asdict(AppSettings(tensor_parallel_size=2)), gpus=list_gpus())
    dialog.show()
    grab(dialog, folder / "tp-settings.png")
    dialog.close()
    with tempfile.TemporaryDirectory() as tmp:
        engine = tp2_engine(Path(tmp))
        view = KVCacheView()
        view.resize(760, 420)
        view.setWindowTitle("KV cache: tensor parallel, 2 ranks")
        view.show()
        view.set_snapshot(engine.kv_snapshot())
        view.refresh()
        grab(view, folder / "tp-kv-panel.png")
        engine.release()
    app.quit()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "docs" / "screenshots"))
