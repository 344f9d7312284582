"""`pagedesk download`, `models` and `rm` in a subprocess, against the fake Hub."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from app.hub.cache_layout import storage_dir
from hub_testing import GATED_TOKEN, TINY, WEIGHTS, fake_hub, hf_home, sha256_of  # noqa: F401
from hub_testing import tiny_gguf_file, tiny_model_dir  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parent.parent


def pagedesk(*args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=REPO_ROOT, input=stdin,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env})


def test_download_models_rm(fake_hub, tiny_model_dir):
    done = pagedesk("download", TINY)
    assert done.returncode == 0, done.stderr
    snapshot = Path(done.stdout.strip())
    assert snapshot.parent == storage_dir(TINY) / "snapshots"
    assert sha256_of(snapshot / WEIGHTS) == sha256_of(tiny_model_dir / WEIGHTS)
    assert "100%" in done.stderr and "1.39M/1.39M" in done.stderr  # tqdm, on stderr
    assert "HTTP Request" not in done.stderr

    listed = pagedesk("models")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith(TINY))
    assert "LlamaForCausalLM" in row or "llama" in row
    assert row.rstrip().endswith("native Llama") and "1024" in row  # the path it runs on

    kept = pagedesk("rm", TINY, stdin="n\n")
    assert kept.returncode == 1 and "nothing deleted" in kept.stderr
    assert (snapshot / WEIGHTS).is_file()
    removed = pagedesk("rm", TINY, "--yes")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.startswith(f"deleted {TINY}: 1.4 MiB freed")
    assert not storage_dir(TINY).exists()
    assert TINY not in pagedesk("models").stdout


def test_download_errors_are_one_line_and_fail(fake_hub):
    missing = pagedesk("download", "org/missing")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1] == (
        "error: org/missing was not found on the Hub: check the repo id "
        "(a private repo also needs a login).")
    gated = pagedesk("download", "org/gated")
    assert gated.returncode == 1 and "huggingface-cli login" in gated.stderr


def test_download_gated_with_token_and_a_gguf_file(fake_hub, tiny_gguf_file):
    gated = pagedesk("download", "org/gated", HF_TOKEN=GATED_TOKEN)
    assert gated.returncode == 0, gated.stderr
    gguf = pagedesk("download", "org/tiny-gguf", "--gguf", tiny_gguf_file.name)
    assert gguf.returncode == 0, gguf.stderr
    assert (Path(gguf.stdout.strip()) / tiny_gguf_file.name).is_file()
    wrong = pagedesk("download", "org/tiny-gguf", "--gguf", "nope.gguf")
    assert wrong.returncode == 1 and "no GGUF file 'nope.gguf'" in wrong.stderr


def test_rm_of_a_model_that_is_not_there(hf_home):
    gone = pagedesk("rm", "org/never", "--yes")
    assert gone.returncode == 1 and "org/never is not in the Hugging Face cache" in gone.stderr
