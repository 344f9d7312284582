"""Shared test set-up: headless Qt, a private cache dir, quiet tokenizers."""

from __future__ import annotations

import os

# Qt aborts the whole process without a display unless a platform is named.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
