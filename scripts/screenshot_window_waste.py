"""Render the KV cache panel on a sliding-window model, to docs/panel-kv-window.png.

A tiny random-weight Gemma 2 shape (layers alternate a 32-token window and full attention,
built with transformers' own config class by the tests' model maker), three requests with
prompts of 150-300 tokens, the panel showing the engine's snapshot: the *window waste* row
counts the blocks the windowed layers keep but no query reads again.

    DISPLAY=:97 QT_QPA_PLATFORM=xcb python scripts/screenshot_window_waste.py docs
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from screenshot_panels import grab  # noqa: E402  (scripts/ is on the path: run as a script)


def windowed_engine(folder: Path):
    from engine import EngineConfig, LLMEngine, SamplingParams
    from family_parity import random_prompts, save_random_model

    path = save_random_model(
        folder / "gemma2-window", "gemma2", hidden_size=64, intermediate_size=128,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        max_position_embeddings=1024, sliding_window=32, query_pre_attn_scalar=16,
    )  # fmt: skip
    engine = LLMEngine(EngineConfig(model=str(path), device="cpu", dtype="float32",
                                    num_kv_blocks=160, block_size=16))  # fmt: skip
    for i, prompt in enumerate(random_prompts(259, [300, 210, 150], seed=1)):
        engine.add_request(f"chat-{i}", prompt, SamplingParams(max_tokens=200, ignore_eos=True))
    for _ in range(12):
        engine.step()
    return engine


def main(folder: Path) -> None:
    from PySide6.QtWidgets import QApplication

    from ui.kv_cache_view import KVCacheView

    app = QApplication.instance() or QApplication([])
    with tempfile.TemporaryDirectory() as tmp:
        engine = windowed_engine(Path(tmp))
        view = KVCacheView()
        view.resize(760, 420)
        view.setWindowTitle("KV cache: a sliding-window model")
        view.show()
        view.set_snapshot(engine.kv_snapshot())
        view.refresh()
        grab(view, folder / "panel-kv-window.png")
    app.quit()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "docs"))
