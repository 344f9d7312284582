"""Logs go to a rotating file in the data dir (and to stderr)."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

from app.paths import log_path

FORMAT = "%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"


def setup_logging(data_dir: Path, level: int = logging.INFO) -> Path:
    """Send the root logger to <data_dir>/logs/pagedesk.log; return that path."""
    path = log_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    root.setLevel(level)
    if not any(getattr(h, "pagedesk_file", False) for h in root.handlers):
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=2 * 2**20, backupCount=3, encoding="utf-8"
        )
        handler.pagedesk_file = True
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
    if not any(type(h) is logging.StreamHandler for h in root.handlers):
        stream = logging.StreamHandler()
        stream.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(stream)
    return path
