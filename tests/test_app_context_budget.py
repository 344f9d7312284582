"""Counting a conversation's tokens with the chat template, and planning which of the
oldest turns to drop so that prompt + reply fit the context."""

from __future__ import annotations

from app.context_budget import TokenCounter, plan_fit, turn_starts
from app.settings import AppSettings, load_settings, open_qsettings, save_settings
from model_factory import make_byte_tokenizer



def chat(*turns: str) -> list[dict[str, str]]:
    out = []
    for i, text in enumerate(turns):
        out.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return out


def test_counts_with_the_chat_template():
    counter = TokenCounter(make_byte_tokenizer())
    one = chat("hi")
    # <|im_start|> "user\n" "hi" <|im_end|> "\n" <|im_start|> "assistant\n"
    assert counter.count(one) == 1 + 5 + 2 + 1 + 1 + 1 + 10
    assert counter.count(one, generation_prompt=False) == 10
    assert counter.prompt_ids(one)[0] == 1 and len(counter.prompt_ids(one)) == counter.count(one)
    assert counter.count([]) == 0


def test_plan_fit_drops_the_fewest_oldest_turns():
    counter = TokenCounter(make_byte_tokenizer())
    history = chat("a" * 100, "b" * 100, "c" * 100, "d" * 100, "e" * 10)
    assert turn_starts(history) == [0, 2, 4]
    full = counter.count(history)
    assert plan_fit(counter, [], history, 50, full + 50) == 0
    assert plan_fit(counter, [], history, 50, full + 49) == 1
    assert plan_fit(counter, [], history, 50, full - 200) == 2
    assert plan_fit(counter, [], history, 50, 40) is None  # not even the last turn fits
    system = [{"role": "system", "content": "s" * 30}]
    assert plan_fit(counter, system, history, 50, full + 50) == 1


def test_settings_round_trip_and_bad_values_fall_back(tmp_path):
    qsettings = open_qsettings(tmp_path)
    assert load_settings(qsettings) == AppSettings()
    save_settings(qsettings, AppSettings(model="m", block_size=32, theme="dark",
                                         gpu_memory_fraction=0.5))  # fmt: skip
    again = load_settings(open_qsettings(tmp_path))
    assert (again.model, again.block_size, again.theme, again.gpu_memory_fraction) == (
        "m", 32, "dark", 0.5)  # fmt: skip
    qsettings.setValue("block_size", "lots")
    qsettings.setValue("theme", "purple")
    fallback = load_settings(qsettings)
    assert fallback.block_size == 16 and fallback.theme == "system"
    assert fallback.engine_config_fields("/x")["model"] == "/x"
    assert AppSettings().engine_config_fields()["model"] is None  # the bundled model
