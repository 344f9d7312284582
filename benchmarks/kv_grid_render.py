"""How long the KV grid takes to draw a GPU-sized cache: 100,000 blocks, ~2,000 requests.

Each run builds the block arrays from a fresh snapshot and paints the grid into an
800×400 QImage offscreen (the work the panel does per snapshot). Prints the median.

    QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/kv_grid_render.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PySide6.QtGui import QColor, QImage  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from engine import KVSnapshot  # noqa: E402
from ui.kv_grid import KVGrid  # noqa: E402
from ui.panel_types import RequestOwner  # noqa: E402


def random_snapshot(num_blocks: int, num_requests: int, block_size: int = 16,
                    seed: int = 0) -> KVSnapshot:  # fmt: skip
    """~60 % of blocks in use by `num_requests` requests (some sharing a 2-block prefix),
    ~15 % cached free, the rest free."""
    rng = np.random.default_rng(seed)
    states = rng.choice(3, size=num_blocks, p=[0.25, 0.6, 0.15]).astype(np.int8)
    in_use = rng.permutation(np.flatnonzero(states == 1))
    chunks = np.array_split(in_use, num_requests)
    tables = {f"s{i % 40}-r{i}": tuple(c.tolist()) for i, c in enumerate(chunks) if len(c)}
    rids = list(tables)
    for i in range(1, len(rids), 7):  # every 7th request shares its neighbour's prefix
        tables[rids[i]] = tables[rids[i - 1]][:2] + tables[rids[i]]
    ref = np.zeros(num_blocks, np.int32)
    for t in tables.values():
        ref[list(t)] += 1
    filled = np.where(states == 0, 0, block_size).astype(np.int32)
    tokens = {}
    for rid, t in tables.items():
        last_fill = int(rng.integers(1, block_size + 1))
        filled[t[-1]] = last_fill
        tokens[rid] = tuple(range((len(t) - 1) * block_size + last_fill))
    hashes = tuple(None if s == 0 else int(h) for s, h in
                   zip(states.tolist(), rng.integers(0, 2**62, num_blocks).tolist()))  # fmt: skip
    return KVSnapshot(num_blocks, block_size, states, ref, filled, hashes,
                      (None,) * num_blocks, tables, tokens,
                      request_parents={r: r.split("-")[0] for r in tables})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    app = QApplication.instance() or QApplication([])
    colors = {f"s{i}": RequestOwner(f"s{i}", f"Chat {i}", QColor.fromHsv(i * 9 % 360, 160, 200))
              for i in range(40)}  # fmt: skip
    grid = KVGrid()
    grid.owners.set_resolver(colors.get)
    grid.resize(800, 400)
    snaps = [random_snapshot(args.blocks, args.requests, seed=s) for s in range(4)]
    image = QImage(800, 400, QImage.Format.Format_ARGB32_Premultiplied)
    times = []
    for i in range(args.runs + 2):
        start = time.perf_counter()
        grid.set_snapshot(snaps[i % len(snaps)])
        grid.render(image)
        if i >= 2:  # the first runs warm numpy's and Qt's caches
            times.append((time.perf_counter() - start) * 1000)
    print(f"{args.blocks:,} blocks, {args.requests:,} requests, mode {grid.mode}: "
          f"median {statistics.median(times):.1f} ms, min {min(times):.1f} ms "
          f"over {len(times)} runs (800×400)")
    del app


if __name__ == "__main__":
    main()
