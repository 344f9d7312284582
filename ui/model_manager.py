"""The model manager window (`modelManager`): local models, Hub search with the chosen
model's files and fit, and the download queue, in three tabs, under a Hugging Face login bar;
a message line on top says what happened (every Hub error in one sentence). Non-modal:
opened with show(), it reports through its parts' signals, which the app's controller
connects."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialog, QLabel, QSplitter, QTabWidget, QVBoxLayout, QWidget

from ui.download_queue_view import DownloadQueueView
from ui.hub_login import HubLoginBar
from ui.local_models_view import LocalModelsView
from ui.model_files_view import ModelFilesView
from ui.model_search_view import ModelSearchView

LOCAL_TAB, SEARCH_TAB, DOWNLOADS_TAB = range(3)


class ModelManager(QDialog):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("modelManager")
        self.setWindowTitle("Models — pagedesk")
        self.setModal(False)
        self.resize(1080, 700)
        self.message = QLabel("", self)
        self.message.setObjectName("managerMessage")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message.hide()
        self.memory = QLabel("", self)
        self.memory.setObjectName("managerMemory")
        self.local = LocalModelsView(self)
        self.search = ModelSearchView(self)
        self.files = ModelFilesView(self)
        self.downloads = DownloadQueueView(self)
        self.hub_login = HubLoginBar(self)
        self.tabs = QTabWidget(self)
        self.tabs.setObjectName("managerTabs")
        self.tabs.addTab(self.local, "Local models")
        self.tabs.addTab(self._search_tab(), "Search the Hub")
        self.tabs.addTab(self.downloads, "Downloads")
        layout = QVBoxLayout(self)
        layout.addWidget(self.hub_login)
        layout.addWidget(self.message)
        layout.addWidget(self.tabs, 1)
        layout.addWidget(self.memory)

    def _search_tab(self) -> QWidget:
        split = QSplitter(Qt.Orientation.Vertical, self)
        split.setObjectName("searchSplitter")
        split.addWidget(self.search)
        split.addWidget(self.files)
        split.setChildrenCollapsible(False)
        split.setSizes([400, 300])
        return split

    def show_error(self, sentence: str) -> None:
        self._say(sentence, "#c62828", "#fdecea")

    def show_info(self, sentence: str) -> None:
        self._say(sentence, "#1b5e20", "#e8f5e9")

    def _say(self, sentence: str, colour: str, background: str) -> None:
        self.message.setText(sentence)
        self.message.setStyleSheet(f"color: {colour}; background: {background}; "
                                   "border-radius: 4px; padding: 6px;")  # fmt: skip
        self.message.show()

    def clear_message(self) -> None:
        self.message.hide()
        self.message.setText("")

    def set_memory(self, sentence: str) -> None:
        """What the fit estimates are measured against ("23.0 GiB free on the CPU (RAM)")."""
        self.memory.setText(sentence)
