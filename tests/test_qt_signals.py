"""The Qt binding's signals must not leak references: the engine's records reach the window
through a signal many times a second for as long as the app runs.

PySide6 6.12.0 drops a reference to True on every emit(); on Python 3.11, where True is an
ordinary counted object, the process then aborts in bool_dealloc after a few thousand emits
(pyproject.toml excludes that version)."""

from __future__ import annotations

import sys
import threading

from PySide6.QtCore import QObject, Qt, Signal


class _Sender(QObject):
    sent = Signal(object, object)


def test_emit_from_a_worker_thread_keeps_every_reference(qapp):
    sender, received = _Sender(), []
    sender.sent.connect(lambda a, b: received.append(b), Qt.ConnectionType.QueuedConnection)
    before = {name: sys.getrefcount(value) for name, value in
              (("True", True), ("False", False), ("None", None))}  # fmt: skip

    def emit_many() -> None:
        for i in range(500):
            sender.sent.emit([i], None)

    worker = threading.Thread(target=emit_many)
    worker.start()
    worker.join()
    qapp.processEvents()
    assert len(received) == 500 and received[-1] is None
    assert sys.getrefcount(True) >= before["True"] - 5, "emit() leaks references to True"
    assert sys.getrefcount(None) >= before["None"] - 5, "emit() leaks references to None"
