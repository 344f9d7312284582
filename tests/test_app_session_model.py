"""The sessions' QAbstractListModel, checked by pytest-qt's qtmodeltester, and the sidebar
over it (search by title, rename in place)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QPushButton

from app.session_list_model import SessionListModel
from app.store import SessionStore
from ui.session_sidebar import SessionSidebar


def make_model(tmp_path, titles=("Alpha", "Beta", "Gamma")):
    store = SessionStore(tmp_path / "s.sqlite3")
    for title in titles:
        store.create_session(title)
    return store, SessionListModel(store)


def test_model_passes_qtmodeltester_through_changes(qtmodeltester, tmp_path):
    store, model = make_model(tmp_path)
    qtmodeltester.check(model)
    assert [model.index(r).data() for r in range(3)] == ["Gamma", "Beta", "Alpha"]
    first = model.index(0)
    assert isinstance(first.data(Qt.ItemDataRole.DecorationRole), QColor)
    assert first.data(SessionListModel.IdRole) == 3
    assert first.flags() & Qt.ItemFlag.ItemIsEditable
    model.add(store.create_session("Delta"))
    assert model.setData(model.index(1), "Gamma renamed")
    assert not model.setData(model.index(1), "  ")
    model.remove(1)  # Alpha
    qtmodeltester.check(model)
    assert [model.index(r).data() for r in range(3)] == ["Delta", "Gamma renamed", "Beta"]
    assert store.get_session(3).title == "Gamma renamed"  # setData renames in the store
    assert b"sessionId" in model.roleNames().values()
    store.close()


def test_sidebar_searches_titles_and_reports_actions(qtbot, tmp_path):
    store, model = make_model(tmp_path, ("Rust questions", "Python tricks", "rusty bikes"))
    sidebar = SessionSidebar(model, SessionListModel.IdRole)
    qtbot.addWidget(sidebar)
    sidebar.search.setText("RUST")
    shown = [sidebar.proxy.index(r, 0).data() for r in range(sidebar.proxy.rowCount())]
    assert shown == ["rusty bikes", "Rust questions"]
    sidebar.select_session(1)
    assert sidebar.current_session_id() == 1
    with qtbot.waitSignal(sidebar.openRequested) as opened:
        sidebar.list.doubleClicked.emit(sidebar.list.currentIndex())
    assert opened.args == [1]
    with qtbot.waitSignal(sidebar.duplicateRequested) as dup:
        sidebar.findChild(QPushButton, "duplicateSessionButton").click()
    assert dup.args == [1]
    with qtbot.waitSignal(sidebar.newRequested):
        sidebar.findChild(QPushButton, "newSessionButton").click()
    sidebar.search.clear()
    assert sidebar.proxy.rowCount() == 3
    store.close()


def test_delete_asks_first_without_a_nested_loop(qtbot, tmp_path):
    from PySide6.QtWidgets import QMessageBox

    store, model = make_model(tmp_path)
    sidebar = SessionSidebar(model, SessionListModel.IdRole)
    qtbot.addWidget(sidebar)
    sidebar.select_session(2)
    deleted = []
    sidebar.deleteRequested.connect(deleted.append)
    sidebar.findChild(QPushButton, "deleteSessionButton").click()  # returns at once
    box = sidebar.findChild(QMessageBox, "confirmDeleteBox")
    assert box is not None and deleted == []
    box.button(QMessageBox.StandardButton.Yes).click()
    assert deleted == [2]
    store.close()
