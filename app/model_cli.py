"""`pagedesk download`, `pagedesk models`, `pagedesk rm`: the model manager, headless.

    pagedesk download HuggingFaceTB/SmolLM2-360M-Instruct        # tqdm progress on stderr
    pagedesk download bartowski/Qwen2.5-0.5B-Instruct-GGUF --gguf Qwen2.5-0.5B-Instruct-Q4_K_M.gguf
    pagedesk models                                              # what is here, and runnable?
    pagedesk rm HuggingFaceTB/SmolLM2-360M-Instruct [--yes]

Downloads go to the standard Hugging Face cache ($HF_HUB_CACHE), resume where an earlier
run stopped (Ctrl-C, a crash, a lost connection) and use huggingface_hub's stored token
(`huggingface-cli login` or HF_TOKEN) for gated and private repos. Imports no Qt.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading

COMMANDS = ("download", "models", "rm")


def add_model_commands(sub: argparse._SubParsersAction) -> None:
    """Add the download / models / rm subcommands to `pagedesk`'s subparsers."""
    download = sub.add_parser("download", help="download a model from the Hugging Face Hub")
    download.add_argument("repo_id", help="e.g. HuggingFaceTB/SmolLM2-135M-Instruct")
    download.add_argument("--revision", default="main", help="branch, tag or commit (main)")
    download.add_argument("--gguf", metavar="FILE", default=None,
                          help="fetch this one .gguf of the repo (default: safetensors, or the "
                          "Q4_K_M-like GGUF of a GGUF-only repo)")
    sub.add_parser("models", help="list local models and whether pagedesk can run them")
    rm = sub.add_parser("rm", help="delete a downloaded model from the Hugging Face cache")
    rm.add_argument("repo_id")
    rm.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")


def run_model_command(args: argparse.Namespace) -> int:
    """Run one of COMMANDS; returns the exit status."""
    for name in ("httpx", "httpx2", "filelock"):  # one line per request would bury the bar
        logging.getLogger(name).setLevel(logging.WARNING)
    return {"download": run_download, "models": run_models, "rm": run_rm}[args.command](args)


def run_download(args: argparse.Namespace) -> int:
    from app.hub import Downloader, HubError, plan_download
    from app.hub.errors import format_bytes

    try:
        plan = plan_download(args.repo_id, args.revision, gguf_file=args.gguf)
        _err(f"{plan.repo_id} @ {plan.commit[:12]}: {len(plan.files)} files, "
             f"{format_bytes(plan.total_bytes)}")
        with _ProgressBar(plan.total_bytes, plan.repo_id) as bar:
            snapshot = Downloader(plan).run(on_progress=bar.update, stop=threading.Event())
    except HubError as exc:
        _err(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        _err("cancelled: the bytes so far are kept; run the same command again to resume.")
        return 130
    print(snapshot)
    return 0


def run_models(args: argparse.Namespace) -> int:
    from app.hub.cache_layout import hub_cache_dir
    from app.hub.errors import format_bytes
    from app.hub.local_models import list_local_models

    models = list_local_models(cache_dir=hub_cache_dir())
    rows = [("MODEL", "SIZE", "ARCHITECTURE", "CONTEXT", "RUNS AS")]
    for m in models:
        support = (m.runs_as or "yes") if m.supported else f"no: {m.why_not}"
        rows.append((m.repo_id or m.name, format_bytes(m.size_on_disk), m.architecture or "?",
                     str(m.context_length or "?"), support))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4])
    if len(models) <= 1:
        _err(f"No downloaded models in {hub_cache_dir()}: try `pagedesk download ORG/NAME`.")
    return 0


def run_rm(args: argparse.Namespace) -> int:
    from app.hub.cache_layout import hub_cache_dir, remove_leftovers
    from app.hub.errors import format_bytes
    from app.hub.local_models import delete_model

    cache = hub_cache_dir()
    if not args.yes and not _confirm(f"Delete {args.repo_id} from {cache}? [y/N] "):
        _err("nothing deleted.")
        return 1
    freed = None
    if cache.is_dir():  # the scanner raises on a cache that was never created
        try:
            freed = delete_model(args.repo_id, cache_dir=cache)
        except KeyError:
            pass
    leftovers = remove_leftovers(args.repo_id, cache)  # partial bytes of unfinished downloads
    if freed is None and not leftovers:
        _err(f"error: {args.repo_id} is not in the Hugging Face cache ({cache}).")
        return 1
    print(f"deleted {args.repo_id}: {format_bytes((freed or 0) + leftovers)} freed")
    return 0


def _confirm(question: str) -> bool:
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:  # no terminal to answer from: do not delete
        return False


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class _ProgressBar:
    """A tqdm bar over the plan's bytes, fed by Downloader progress records."""

    def __init__(self, total: int, repo_id: str) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total, desc=repo_id, unit="B", unit_scale=True,
                         unit_divisor=1024, file=sys.stderr, dynamic_ncols=True)
        self._file = None

    def update(self, progress) -> None:
        if progress.file != self._file:
            self._file = progress.file
            self._bar.set_postfix_str(progress.file, refresh=False)
        if progress.state == "retrying":
            self._bar.write(f"retrying: {progress.message}", file=sys.stderr)
        self._bar.update(progress.done - self._bar.n)

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        self._bar.close()
