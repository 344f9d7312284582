"""The chat pane alone (no app, no engine): keys, buttons, edit-and-resend, the settings
panel, the context gauge and the Markdown transcript."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QPlainTextEdit, QPushButton, QTextBrowser

from ui.chat_pane import ChatPane
from ui.chat_types import ChatMessage, ChatSettings, ContextUsage, ReplyStats
from ui.transcript_markdown import close_open_fence, transcript_markdown


def make_pane(qtbot) -> ChatPane:
    pane = ChatPane()
    qtbot.addWidget(pane)
    pane.set_session("A session", "#e15759")
    return pane


def test_pane_carries_the_object_names(qtbot):
    pane = make_pane(qtbot)
    assert pane.objectName() == "chatPane"
    for cls, name in ((QPlainTextEdit, "chatInput"), (QPushButton, "sendButton"),
                      (QPushButton, "stopButton"), (QTextBrowser, "chatTranscript")):  # fmt: skip
        assert pane.findChild(cls, name) is not None, name


def test_enter_sends_and_shift_enter_starts_a_new_line(qtbot):
    pane = make_pane(qtbot)
    qtbot.keyClicks(pane.input, "line one")
    qtbot.keyClick(pane.input, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClicks(pane.input, "line two")
    with qtbot.waitSignal(pane.sendRequested) as sent:
        qtbot.keyClick(pane.input, Qt.Key.Key_Return)
    assert sent.args == ["line one\nline two"]
    assert pane.input.toPlainText() == ""
    with qtbot.assertNotEmitted(pane.sendRequested):
        qtbot.keyClick(pane.input, Qt.Key.Key_Enter)  # empty: nothing to send


def test_streaming_state_drives_the_buttons(qtbot):
    pane = make_pane(qtbot)
    assert pane.send_button.isEnabled() and not pane.stop_button.isEnabled()
    assert not pane.regenerate_button.isEnabled()  # nothing to regenerate yet
    pane.set_messages([ChatMessage("user", "hi"), ChatMessage("assistant", "hello")])
    pane.set_streaming(True)
    assert pane.stop_button.isEnabled() and not pane.send_button.isEnabled()
    with qtbot.assertNotEmitted(pane.sendRequested):
        pane.input.setPlainText("not now")
        qtbot.keyClick(pane.input, Qt.Key.Key_Return)
    with qtbot.waitSignal(pane.stopRequested):
        qtbot.mouseClick(pane.stop_button, Qt.MouseButton.LeftButton)
    pane.set_streaming(False)
    assert pane.regenerate_button.isEnabled() and pane.edit_button.isEnabled()


def test_edit_last_message_then_resend_or_cancel(qtbot):
    pane = make_pane(qtbot)
    pane.set_messages([ChatMessage("user", "first"), ChatMessage("assistant", "a"),
                       ChatMessage("user", "second"), ChatMessage("assistant", "b")])  # fmt: skip
    pane.input.setPlainText("a draft")
    pane.edit_button.click()
    assert pane.editing and pane.input.toPlainText() == "second"
    assert pane.send_button.text() == "Resend" and not pane.edit_note.isHidden()
    qtbot.keyClick(pane.input, Qt.Key.Key_Escape)
    assert not pane.editing and pane.input.toPlainText() == "a draft"
    pane.edit_button.click()
    pane.input.setPlainText("second, edited")
    with qtbot.waitSignal(pane.editedResendRequested) as resent:
        with qtbot.assertNotEmitted(pane.sendRequested):
            pane.send_button.click()
    assert resent.args == ["second, edited"] and not pane.editing


def test_settings_panel_round_trips_and_emits(qtbot):
    pane = make_pane(qtbot)
    settings = ChatSettings("Be brief.", temperature=0.7, top_p=0.8, top_k=40, max_tokens=99,
                            seed=7, extra={"ignore_eos": True})  # fmt: skip
    with qtbot.assertNotEmitted(pane.settingsChanged):
        pane.set_settings(settings)
    panel = pane.settings_panel
    assert panel.settings() == settings
    with qtbot.waitSignal(pane.settingsChanged) as changed:
        panel.top_k.setValue(0)  # "off"
    assert changed.args[0].top_k == -1
    panel.seed.setValue(-1)
    assert panel.settings().seed is None
    assert panel.settings().sampling() == {"ignore_eos": True, "temperature": 0.7, "top_p": 0.8,
                                           "top_k": -1, "max_tokens": 99, "seed": None}  # fmt: skip
    pane.settings_button.click()
    assert not panel.isHidden()


def test_context_gauge_and_overflow_offer(qtbot):
    pane = make_pane(qtbot)
    pane.set_context(ContextUsage(system=100, history=2000, reply=100, limit=8192))
    assert pane.gauge.label.text() == "2,200 / 8,192 tokens"
    assert "system prompt 100" in pane.gauge.label.toolTip()
    pane.set_context(ContextUsage(100, 7400, 300, 8192))
    assert pane.gauge.label.palette().color(pane.gauge.label.foregroundRole()).name() == "#c0392b"
    pane.show_context_warning("Too long. Drop the oldest 2 turns?", can_drop=True)
    assert pane.gauge.warning_visible
    with qtbot.waitSignal(pane.dropOldestRequested):
        pane.gauge.drop_button.click()
    pane.gauge.findChild(QPushButton, "keepTurnsButton").click()
    assert not pane.gauge.warning_visible


def test_transcript_renders_markdown_code_and_reply_numbers(qtbot):
    pane = make_pane(qtbot)
    reply = "Here:\n\n```python\nprint('hi')\n```\n\nand **bold**."
    stats = ReplyStats(12, 0.25, 31.5)
    pane.set_messages([ChatMessage("user", "Show code"),
                       ChatMessage("assistant", reply, stats=stats)])  # fmt: skip
    doc = pane.transcript.document()
    code_blocks = [doc.findBlockByNumber(i) for i in range(doc.blockCount())
                   if "print('hi')" in doc.findBlockByNumber(i).text()]  # fmt: skip
    assert code_blocks and code_blocks[0].blockFormat().nonBreakableLines()  # a code block
    text = pane.transcript.toPlainText()
    assert "**" not in text and "12 tokens · first token 0.25 s · 31.5 tokens/s" in text


def test_a_streaming_reply_is_rendered_at_a_bounded_rate(qtbot):
    pane = make_pane(qtbot)
    pane.set_messages([ChatMessage("user", "go")])
    for i in range(200):
        pane.show_reply("word " * i)
    assert "word" not in pane.transcript.toPlainText()  # coalesced: not rendered 200 times
    qtbot.waitUntil(lambda: "word word" in pane.transcript.toPlainText(), timeout=2000)
    assert "▍" in pane.transcript.toPlainText()


def test_markdown_helpers_close_fences_and_mark_dropped_turns():
    assert close_open_fence("```py\nx") == "```py\nx\n```"
    assert close_open_fence("```py\nx\n```") == "```py\nx\n```"
    md = transcript_markdown([ChatMessage("user", "old", in_context=False),
                              ChatMessage("user", "new"),
                              ChatMessage("assistant", "part", status="stopped")])  # fmt: skip
    assert md.index("old") < md.index("no longer fit") < md.index("new")
    assert "*stopped*" in md
