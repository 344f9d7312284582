"""The model manager's controller: runs every Hub call, scan and download in a worker thread
and hands the results to the window's widgets through queued signals (the UI thread never
waits on the network or the disk); keeps the download queue in a JSON file; turns Load into
`EngineService.switch_model`."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QSettings, Qt, Signal

from app import model_manager_search as search
from app.hub.cache_layout import downloaded_snapshot, hub_cache_dir
from app.hub.downloader import Downloader
from app.hub import net
from app.hub.errors import HubError, offline
from app.hub.local_models import delete_model, list_local_models, model_config
from app.hub.plan import plan_download
from app.hub.queue_store import DownloadQueue, Job
from engine import fit_estimate
from engine.checkpoint_precision import matrix_precision
from ui.model_manager import ModelManager
from ui.model_types import human_bytes

log = logging.getLogger(__name__)
EXTRA_PATHS_KEY = "models/extra_paths"


class ModelManagerController(QObject):
    # (callback, value) from a worker thread, delivered in the UI thread
    _returned = Signal(object, object)
    _progressed = Signal(str, object)  # repo id, Progress (from a download's thread)

    def __init__(self, window: ModelManager, service: Any = None, *, queue_path: str | Path,
                 cache_dir: str | Path | None = None, token: str | bool | None = None,
                 qsettings: QSettings | None = None, memory: tuple[int, str] | None = None,
                 load_fn: Callable[[str | None], Any] | None = None,
                 search_fn: Callable[..., list] = search.hub_search,
                 parent: QObject | None = None):  # fmt: skip
        super().__init__(parent or window)
        self.setObjectName("modelManagerController")
        self.window, self.service, self.qsettings = window, service, qsettings
        self.cache_dir, self.token, self.search_fn = cache_dir, token, search_fn
        # AppController.load_model also saves the choice; else the service's switch_model
        self.load_fn = load_fn or getattr(service, "switch_model", None)
        self.queue = DownloadQueue(queue_path)
        self.memory = memory  # (free bytes, device name): measured once, unless given
        self.listed: dict[str, Any] = {}  # the last search's rows, by repo id
        self._search_serial = self._choose_serial = self._local_serial = 0
        self._stops: dict[str, threading.Event] = {}  # running downloads
        self._intent: dict[str, str] = {}  # what a stop means: "paused" or "cancelled"
        self.closed = False
        self._returned.connect(self._deliver, Qt.ConnectionType.QueuedConnection)
        self._progressed.connect(self._on_progress, Qt.ConnectionType.QueuedConnection)
        self._connect()
        self._restore_queue()
        self.refresh_local()
        self.check_login()

    def _connect(self) -> None:
        w = self.window
        w.local.loadRequested.connect(self.load)
        w.local.addRequested.connect(self.add_path)
        w.local.removeRequested.connect(self.remove_path)
        w.local.deleteRequested.connect(self.delete)
        w.local.refreshRequested.connect(self.refresh_local)
        w.search.searchRequested.connect(self.search)
        w.search.modelChosen.connect(self.choose)
        w.files.ggufChosen.connect(self.choose)
        w.files.downloadRequested.connect(self.download)
        w.downloads.actionRequested.connect(self.act)
        w.hub_login.loginRequested.connect(self.login)
        w.hub_login.logoutRequested.connect(self.logout)
        for name, slot in (("switchFailed", w.show_error), ("loaded", self._model_loaded)):
            signal = getattr(self.service, name, None)
            if signal is not None:
                signal.connect(slot)

    # ---------------------------------------------------------------- threads
    def _in_thread(self, work: Callable[[], Any], done: Callable[[Any], None],
                   failed: Callable[[BaseException], None] | None = None) -> None:  # fmt: skip
        def body() -> None:
            try:
                value, callback = work(), done
            except Exception as exc:  # every failure is shown, never swallowed
                log.debug("model manager work failed", exc_info=True)
                value, callback = exc, failed or self._show_failure
            self._returned.emit(callback, value)

        threading.Thread(target=body, name="model-manager", daemon=True).start()

    def _deliver(self, callback: Callable[[Any], None], value: Any) -> None:
        if not self.closed:
            callback(value)

    def _show_failure(self, exc: BaseException) -> None:
        self.window.show_error(sentence(exc))

    def _memory(self) -> tuple[int, str]:
        """Free GPU memory or RAM, measured once in a worker (the estimate's yardstick)."""
        if self.memory is None:
            self.memory = fit_estimate.free_memory("auto")
        return self.memory

    # ---------------------------------------------------------------- local models
    def extra_paths(self) -> list[str]:
        if self.qsettings is None:
            return list(getattr(self, "_extra", []))
        value = self.qsettings.value(EXTRA_PATHS_KEY) or []
        # QSettings gives a one-item list back as a plain string
        return [value] if isinstance(value, str) else [str(p) for p in value]

    def _set_extra_paths(self, paths: list[str]) -> None:
        if self.qsettings is None:
            self._extra = paths
        else:
            self.qsettings.setValue(EXTRA_PATHS_KEY, paths)

    def refresh_local(self) -> None:
        cache, extra = hub_cache_dir(self.cache_dir), self.extra_paths()
        self._local_serial += 1
        serial = self._local_serial

        # the storage the engine is set to (Settings -> Weight storage), "auto" without one
        storage = getattr(self.service, "config_fields", {}).get("cpu_weight_dtype", "auto")

        def work():
            memory = self._memory()
            models = list_local_models(cache, extra)
            return serial, models, memory, [local_fit(m, *memory, storage) for m in models]

        self._in_thread(work, self._show_local)

    def _show_local(self, value) -> None:
        serial, models, (free, device), fits = value
        if serial != self._local_serial:  # an older scan finishing late must not win
            return
        self.window.local.set_models(models, fits)
        self.window.set_memory(f"{fit_estimate.format_bytes(free)} free on the {device} "
                               "(what fit estimates are measured against).")  # fmt: skip

    def add_path(self, path: str) -> None:
        paths = self.extra_paths()
        if path and path not in paths:
            self._set_extra_paths([*paths, path])
        self.refresh_local()

    def remove_path(self, path: str) -> None:
        # A GGUF found inside an added folder is removed by removing its folder.
        keep = [p for p in self.extra_paths() if p != path and p != str(Path(path).parent)]
        self._set_extra_paths(keep)
        self.refresh_local()

    def delete(self, repo_id: str) -> None:
        def done(freed: int) -> None:
            self.window.show_info(f"Deleted {repo_id}: {human_bytes(freed)} freed.")
            self.refresh_local()

        self._in_thread(lambda: delete_model(repo_id, hub_cache_dir(self.cache_dir)), done)

    def load(self, target: str) -> None:
        """Load a model into the running engine; "" is the bundled default."""
        if self.load_fn is None:
            self.window.show_error("This window has no engine to load the model into.")
            return
        self.window.show_info(f"Loading {target or 'the bundled model'}… the current model "
                              "keeps serving until the new one is ready.")  # fmt: skip
        self.load_fn(target or None)

    def _model_loaded(self, info: Any) -> None:
        if self.window.isVisible():
            self.window.show_info(f"{info.model_name} is loaded and serving.")

    # ---------------------------------------------------------------- search and choose
    def search(self, text: str, sort: str, fmt: str) -> None:
        self._search_serial += 1
        serial = self._search_serial

        def work():
            infos = self.search_fn(text, sort, fmt, token=self.token)
            return search.search_rows(infos, self._memory())

        def done(rows) -> None:
            if serial == self._search_serial:  # an older search answering late is dropped
                self.listed = {row.repo_id: row for row in rows}
                self.window.search.set_results(rows)

        def failed(exc: BaseException) -> None:
            self.window.search.set_failed(sentence(exc))
            self.window.show_error(sentence(exc))

        self._in_thread(work, done, failed)

    def choose(self, repo_id: str, gguf_file: str | None = None) -> None:
        self._choose_serial += 1
        serial = self._choose_serial
        self.window.files.set_loading(repo_id)

        def work():
            plan = plan_download(repo_id, gguf_file=gguf_file or None, token=self.token)
            config = search.fetch_config(plan, self.token)
            return search.chosen_model(plan, config, self._memory(), self.listed.get(repo_id))

        def done(chosen) -> None:
            if serial == self._choose_serial:
                self.window.files.set_chosen(chosen)

        def failed(exc: BaseException) -> None:
            if serial == self._choose_serial:
                self.window.files.set_failed(repo_id, sentence(exc))
                self.window.show_error(sentence(exc))

        self._in_thread(work, done, failed)

    # ---------------------------------------------------------------- downloads
    def _restore_queue(self) -> None:
        """The queue as the last run left it; jobs still "queued" start again."""
        for job in self.queue.jobs():
            row = self.window.downloads.row(job.repo_id, job_title(job))
            row.show_saved(job.state, job.done, job.total, job.error)
            if job.state == "queued":
                self._start(job)

    def download(self, repo_id: str, gguf_file: str = "") -> None:
        if repo_id in self._stops:
            self.window.show_info(f"{repo_id} is already downloading.")
            return
        job = self.queue.add(repo_id, gguf_file=gguf_file or None)
        self._start(job)
        self.window.tabs.setCurrentWidget(self.window.downloads)

    def _start(self, job: Job) -> None:
        stop = threading.Event()
        self._stops[job.repo_id], self._intent[job.repo_id] = stop, "cancelled"
        row = self.window.downloads.row(job.repo_id, job_title(job))
        row.set_state("queued")
        self.queue.update(job.repo_id, state="queued", error="")

        def work() -> Path:
            plan = plan_download(job.repo_id, job.revision, job.gguf_file, self.token)
            downloader = Downloader(plan, hub_cache_dir(self.cache_dir), self.token)
            return downloader.run(lambda p: self._progressed.emit(job.repo_id, p), stop)

        self._in_thread(work, lambda path: self._finished(job.repo_id, path),
                        lambda exc: self._failed(job.repo_id, exc))  # fmt: skip

    def _on_progress(self, repo_id: str, progress: Any) -> None:
        if progress.state == "cancelled" and self._intent.get(repo_id) == "paused":
            progress = dataclasses.replace(progress, state="paused", message="")
        self.window.downloads.show_progress(repo_id, progress)
        job = self.queue.get(repo_id)
        if job is not None and job.state != progress.state:  # write the file on changes only
            self.queue.update(repo_id, state=progress.state, done=progress.done,
                              total=progress.total)  # fmt: skip

    def _finished(self, repo_id: str, _snapshot: Path) -> None:
        self._stops.pop(repo_id, None)
        job = self.queue.get(repo_id)
        if job is not None:
            self.queue.update(repo_id, state="done", done=job.total, error="")
        self.window.downloads.row(repo_id).set_state("done")
        self.window.show_info(f"{repo_id} is downloaded and verified: Load it here or from "
                              "Local models.")  # fmt: skip
        self.refresh_local()

    def _failed(self, repo_id: str, exc: BaseException) -> None:
        self._stops.pop(repo_id, None)
        if isinstance(exc, HubError) and exc.kind == "cancelled":
            state = self._intent.get(repo_id, "cancelled")
            self.queue.update(repo_id, state=state, error="")
            self.window.downloads.row(repo_id).set_state(state)
            return
        text = sentence(exc)
        if self.queue.get(repo_id) is not None:
            self.queue.update(repo_id, state="failed", error=text)
        self.window.downloads.row(repo_id).set_state("failed", text)
        self.window.show_error(text)

    def act(self, repo_id: str, action: str) -> None:
        """A Downloads row's button: pause, resume, cancel, retry, load or remove."""
        job = self.queue.get(repo_id)
        if job is None:
            return
        if action in ("pause", "cancel", "remove") and repo_id in self._stops:
            self._intent[repo_id] = "paused" if action == "pause" else "cancelled"
            self._stops[repo_id].set()  # the worker stops within a chunk; partial bytes stay
        elif action == "cancel":  # a paused job: nothing runs, only its state changes
            self.queue.update(repo_id, state="cancelled")
            self.window.downloads.row(repo_id).set_state("cancelled")
        if action in ("resume", "retry"):
            self._start(job)
        elif action == "load":
            self._load_download(job)
        elif action == "remove":
            self.queue.remove(repo_id)
            self.window.downloads.remove(repo_id)

    def _load_download(self, job: Job) -> None:
        snapshot = downloaded_snapshot(job.repo_id, job.revision, hub_cache_dir(self.cache_dir))
        if snapshot is None:
            self.window.show_error(f"{job.repo_id} is no longer complete in the cache: "
                                   "download it again.")  # fmt: skip
            return
        if job.gguf_file:
            self.load(str(snapshot / job.gguf_file))  # the repo may hold other GGUF files
        else:  # by its id, so the status bar names it (the engine finds it in the cache)
            self.load(job.repo_id if job.revision == "main" else str(snapshot))

    # ---------------------------------------------------------------- Hugging Face login
    # The token lives only in huggingface_hub's own store (HF_HOME/token, stored_tokens), never
    # in QSettings or a log line. Downloads pass token=None, which huggingface_hub resolves to
    # the stored token at each call, so a login takes effect for the next request.
    def check_login(self) -> None:
        """Show who the stored token belongs to (whoami in a worker; offline: not checked)."""
        from huggingface_hub import get_token

        bar = self.window.hub_login
        if get_token() is None:
            bar.set_user(None)
            return
        if net.offline_mode():  # offline mode means no network call, not even whoami
            bar.set_stored("not checked: offline")
            return
        bar.set_busy("Checking the stored Hugging Face token…")

        def failed(exc: BaseException) -> None:
            error = login_error(exc)
            bar.set_stored("not checked: offline" if error.kind == "offline"
                           else "the Hub did not accept it: log in again")  # fmt: skip

        self._in_thread(lambda: whoami_name(None), bar.set_user, failed)

    def login(self, token: str) -> None:
        def work() -> str:
            net.refuse_if_offline()
            name = whoami_name(token)  # a bad token fails here, before anything is stored
            store_token(token, name)
            return name

        def done(name: str) -> None:
            self.window.hub_login.set_user(name)
            self.window.show_info(f"Logged in to Hugging Face as {name}: gated and private "
                                  "models you have access to can now be downloaded.")  # fmt: skip

        def failed(exc: BaseException) -> None:
            self.window.show_error(str(login_error(exc)))
            self.check_login()  # back to what is really stored

        self._in_thread(work, done, failed)

    def logout(self) -> None:
        from huggingface_hub import logout

        def done(_value: Any) -> None:
            self.window.hub_login.set_user(None)
            self.window.show_info("Logged out of Hugging Face: the stored token is removed.")

        def failed(exc: BaseException) -> None:
            # huggingface_hub raises OSError when HF_TOKEN still logs the process in
            self.window.show_error(f"The stored token is removed, but {exc}".replace("\n", " "))
            self.check_login()

        self.window.hub_login.set_busy("Logging out…")
        self._in_thread(logout, done, failed)  # it also runs git to unset a credential

    def shutdown(self) -> None:
        """Stop running downloads (their bytes stay; the queue resumes them as paused).
        The app calls it when its main window closes (not on aboutToQuit, which qasync
        emits each time a run_until_complete ends)."""
        for repo_id, stop in list(self._stops.items()):
            self._intent[repo_id] = "paused"
            stop.set()
        self.closed = True


def local_fit(model: Any, free: int, device: str, cpu_weight_dtype: str = "auto") -> Any | None:
    """The fit estimate of a downloaded model, before it is loaded (None without a config):
    weights as the engine will hold them on this device, the default context. On the CPU
    a native model's linears are packed in the storage `cpu_weight_dtype` asks for ("auto"
    reads the files: bfloat16 for bfloat16 and quantized checkpoints); a generic
    (transformers) one keeps every weight in float32."""
    config = model_config(model)
    if not config or not model.supported:
        return None
    dtype = fit_estimate.engine_dtype_bytes(device)
    if device.startswith("CPU") and model.runs_as.startswith("native"):
        precision = matrix_precision(Path(model.path))
        stored = fit_estimate.cpu_stored_bytes(precision, cpu_weight_dtype)
        weights = fit_estimate.cpu_weights_bytes(config, stored)
    else:
        weights = fit_estimate.weights_bytes(config, dtype_bytes=dtype)
    return fit_estimate.estimate_fit(weights, config, fit_estimate.default_context(config),
                                     free, device, dtype_bytes=dtype)  # fmt: skip


def whoami_name(token: str | None) -> str:
    """The account name for `token` (None: the stored one), asked of the Hub in use now."""
    from huggingface_hub import HfApi

    try:  # HfApi() alone would take the endpoint fixed at import, not $HF_ENDPOINT now
        return str(HfApi(endpoint=net.endpoint()).whoami(token=token)["name"])
    except Exception as exc:
        raise login_error(exc) from exc


def store_token(token: str, name: str) -> None:
    """Save a token already verified by whoami_name in huggingface_hub's store, as active.

    The public huggingface_hub.login(token=..., add_to_git_credential=False) re-validates
    through the module-level HfApi, whose endpoint was fixed at import; so it is used when that
    is the Hub in use now (the usual case). With another $HF_ENDPOINT (a mirror, the tests'
    fake Hub) it would ask the wrong Hub, so then the two private helpers login() itself calls
    after validating write the same files (huggingface_hub 1.x and 2.x have both)."""
    from huggingface_hub import hf_api, login

    if getattr(getattr(hf_api, "api", None), "endpoint", "").rstrip("/") == net.endpoint():
        login(token=token, add_to_git_credential=False)
        return
    from huggingface_hub._login import _save_token, _set_active_token

    token_name = f"pagedesk-{name}"  # login() names it by the token's displayName
    _save_token(token=token, token_name=token_name)
    _set_active_token(token_name=token_name, add_to_git_credential=False)


def login_error(exc: BaseException) -> HubError:
    """One sentence for a failed whoami / login (never the token itself)."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HubError):
        return exc
    response = getattr(exc, "response", None)
    if isinstance(exc, HfHubHTTPError) and response is not None:
        if response.status_code == 401:
            return HubError("unauthorized", "Hugging Face did not accept that token: copy a "
                            "valid one from huggingface.co/settings/tokens and try again.")
        return HubError("http", f"The Hub answered HTTP {response.status_code} while "
                        "checking the token: try again later.")
    if isinstance(exc, net.TRANSPORT_ERRORS):
        return offline(net.endpoint(), net.reason(exc))
    if isinstance(exc, ValueError):  # login() refuses organisation tokens this way
        return HubError("unauthorized", f"{exc}".rstrip(".") + ".")
    return HubError("http", f"Could not check the token: {type(exc).__name__}: {exc}")


def job_title(job: Job) -> str:
    return f"{job.repo_id} · {job.gguf_file}" if job.gguf_file else job.repo_id


def sentence(exc: BaseException) -> str:
    """One sentence for a person: a HubError's own, else the exception's type and text."""
    if isinstance(exc, HubError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
