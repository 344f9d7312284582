"""Hugging Face Hub downloads for pagedesk, Qt-free (the CLI and the window both use it).

    plan = plan_download("org/name")                 # which files, sizes, hashes
    snapshot = Downloader(plan).run(on_progress=print, stop=threading.Event())
    downloaded_snapshot("org/name")                  # complete + verified, else None

Files land in the standard Hugging Face cache, resumable across processes; every failure
is a HubError with a `kind` and one plain sentence (see app.hub.errors).
"""

from app.hub.cache_layout import downloaded_snapshot, hub_cache_dir
from app.hub.downloader import Downloader, Progress
from app.hub.errors import HubError
from app.hub.plan import DownloadPlan, RemoteFile, plan_download

__all__ = ["DownloadPlan", "Downloader", "HubError", "Progress", "RemoteFile",
           "downloaded_snapshot", "hub_cache_dir", "plan_download"]
