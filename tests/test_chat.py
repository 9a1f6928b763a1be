"""`steerlab chat`: the ChatSession object, and the terminal program driven for real in tmux."""

import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny import invoke, make_vector, next_token_model

from steerlab.model.generation import generate
from steerlab.serve.chat import UNSTEERED, ChatError, ChatSession, Reply
from steerlab.steering.vectors import SteeringVector, meta_for


def letters():
    """A model that answers every chat prompt "a"; the vector steers the answer to "b"
    (multiplier > 2/3) and back to "a" below that."""
    model = next_token_model({">": "a", "a": "<eos>", "b": "<eos>", "x": "b"})
    eos, b_dim = model.tokenizer.eos_token_id, 2
    with torch.no_grad():  # after "b" the end of text outweighs the vector's pull to "b"
        model.model.lm_head.weight[eos, b_dim] = 20.0
    direction = torch.zeros(model.d_model)
    direction[3] = 1.5  # the dimension that "x" occupies, read out as "b"
    return model, SteeringVector({1: direction}, meta_for(model, "letters"))


def test_replies_side_by_side_and_the_conversation_keeps_the_steered_one():
    model, vector = letters()
    session = ChatSession(model, {"b": vector}, max_new_tokens=5)
    assert session.vector == "b" and session.label() == "b ×1"  # the only vector is chosen
    assert session.send("Hello") == [Reply(UNSTEERED, "a"), Reply("b ×1", "b")]
    assert session.send("Again") == [Reply(UNSTEERED, "a"), Reply("b ×1", "b")]
    assert session.messages == [{"role": "user", "content": "Hello"},
                                {"role": "assistant", "content": "b"},
                                {"role": "user", "content": "Again"},
                                {"role": "assistant", "content": "b"}]
    assert "side by side off" in session.command("/side")
    assert session.send("More") == [Reply("b ×1", "b")]
    session.command("/multiplier -1")
    assert session.send("More") == [Reply("b ×-1", "a")]
    session.command("/multiplier 0")  # no steering at all: one unsteered reply
    session.command("/side")
    assert session.send("More") == [Reply(UNSTEERED, "a")]
    assert "new conversation" in session.command("/reset") and session.messages == []


def test_each_reply_is_the_library_generation_of_the_whole_conversation(tiny):
    vector = make_vector(tiny, layers=(1, 2))
    session = ChatSession(tiny, {"v": vector}, multiplier=2.0, max_new_tokens=8)
    session.send("Hi there")
    replies = session.send("Tell me more")
    prompt = tiny.format_messages(session.messages[:-1])
    assert prompt.count("Hi there") == 1 and prompt.endswith(tiny.format_messages(
        [{"role": "user", "content": "Tell me more"}]).split("Hi there")[-1])
    expected_base = generate(tiny, [prompt], 8, format_prompts=False, progress=False)[0]
    with vector.apply(tiny, 2.0):
        expected = generate(tiny, [prompt], 8, format_prompts=False, progress=False)[0]
    assert replies == [Reply(UNSTEERED, expected_base), Reply("v ×2", expected)]
    assert expected != expected_base


def test_commands_change_the_setting_and_bad_ones_leave_it(tiny):
    a, b = make_vector(tiny, layers=(1,), seed=1), make_vector(tiny, layers=(2,), seed=2)
    session = ChatSession(tiny, {"a": a, "b": b}, max_new_tokens=4)
    assert session.vector is None and session.describe() == "unsteered (no vector chosen)"
    assert session.command("/vector") == ("vectors: a, b; now: unsteered (no vector chosen)")
    assert "b ×1 at the vector's layers" in session.command("/vector b")
    assert "b ×3.5" in session.command("/multiplier 3.5")
    assert "layers [0, 1, 2, 3]" in session.command("/layers all")
    assert "layers [3]" in session.command("/layers 3")
    bad = [("/multiplier lots", "/multiplier needs a number, got 'lots'"),
           ("/vector c", "unknown vector 'c' (loaded: a, b)"),
           ("/layers 9", "layer 9 out of range: the model has 4 layers"),
           ("/layers x", "/layers needs comma-separated integers"),
           ("/norm 0.5", "norm_ratio needs residual norms for layers"),
           ("/norm -1", "/norm needs a positive ratio"),
           ("/side now", "/side takes no argument"),
           ("/jump", "unknown command '/jump'")]
    for line, message in bad:
        with pytest.raises(ChatError, match=message.replace("(", r"\(").replace(")", r"\)")):
            session.command(line)
        assert (session.vector, session.multiplier, session.layers, session.norm_ratio) == (
            "b", 3.5, [3], None)
    assert "the vector's layers" in session.command("/layers default")
    assert session.command("/vector none") == "now: unsteered (no vector chosen)"
    assert [r.label for r in session.send("Hello")] == [UNSTEERED]
    assert "/multiplier X" in session.command("/help")
    with pytest.raises(ChatError, match="empty message"):
        session.send("  ")
    assert session.command("/quit") == "bye" and session.done
    with pytest.raises(ChatError, match="layer 7 out of range"):
        ChatSession(tiny, {"a": a}, layers=[7])


def test_chat_command_has_help():
    result = invoke("chat", "--help")
    assert result.exit_code == 0 and "/help lists the commands" in result.output


def _wait_for(session: str, check, timeout: float = 90.0) -> str:
    """The tmux pane's text (blank lines dropped) once ``check`` holds: a text it shows, or a
    test on the text (fails after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        pane = subprocess.run(["tmux", "capture-pane", "-p", "-J", "-S", "-200", "-t", session],
                              capture_output=True, text=True, check=True).stdout
        pane = "\n".join(line for line in pane.splitlines() if line.strip())
        if check in pane if isinstance(check, str) else check(pane):
            return pane
        if time.monotonic() > deadline:
            raise AssertionError(f"the chat never showed {check!r}; the pane:\n{pane}")
        time.sleep(0.3)


def _answered(pane: str) -> bool:
    """Whether the last reply table is complete and the prompt waits for the next line."""
    lines = pane.splitlines()
    return len(lines) > 1 and lines[-2].startswith("└") and lines[-1].startswith("you>")


def _cells(pane: str) -> list[str]:
    """The cells of the last reply table's row."""
    row = [line for line in pane.splitlines() if line.startswith("│")][-1]
    return [cell.strip() for cell in row.split("│")[1:-1]]


@pytest.mark.terminal
@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (apt-get install tmux)")
def test_terminal_chat_in_tmux(tmp_path):
    """The real program in a real terminal: type messages and commands, read the screen."""
    model, vector = letters()
    model.model.save_pretrained(tmp_path / "model")
    model.tokenizer.save_pretrained(tmp_path / "model")
    vector.save(tmp_path / "b.safetensors")
    root = Path(__file__).parent.parent
    program = [sys.executable, "-c", "from steerlab.cli import app; app()", "chat", "--model",
               str(tmp_path / "model"), "--vector", f"toward-b={tmp_path / 'b.safetensors'}",
               "--max-new-tokens", "5"]
    script = f"cd {shlex.quote(str(root))} && {shlex.join(program)}; echo chat-exited-$?; sleep 60"
    name = f"steerlab-chat-{tmp_path.name}"
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "160", "-y", "50", script],
                   check=True)
    try:
        def send(keys: str) -> None:
            subprocess.run(["tmux", "send-keys", "-t", name, "-l", keys], check=True)
            subprocess.run(["tmux", "send-keys", "-t", name, "Enter"], check=True)

        _wait_for(name, "you>")
        assert "toward-b ×1 at the vector's layers" in _wait_for(name, "/quit leaves")
        send("Hello")
        pane = _wait_for(name, _answered)
        assert "┃ unsteered" in pane and "┃ toward-b ×1 " in pane
        assert _cells(pane) == ["a", "b"]
        send("/multiplier -1")
        _wait_for(name, "now: toward-b ×-1")
        send("/side")
        _wait_for(name, "side by side off")
        send("Hi")
        pane = _wait_for(name, lambda text: "┃ toward-b ×-1" in text and _answered(text))
        assert _cells(pane) == ["a"]
        send("/layers 9")
        _wait_for(name, "error: layer 9 out of range: the model has 4 layers")
        send("/quit")
        assert "chat-exited-0" in _wait_for(name, "chat-exited-")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True, check=False)


def test_the_chat_takes_positions_intervention_and_a_condition(tiny):
    """Every field of a setting: positions and intervention change between turns (an angle
    outside ±180 is refused and leaves the setting), a condition gates the steered reply and
    /condition off drops it; each reply equals the library's setting applied by hand."""
    from dataclasses import replace

    from tiny import fixed_condition

    vector = make_vector(tiny, layers=(2,), seed=1)
    never = fixed_condition(tiny, layer=1, threshold=2.0)  # a cosine is never above 2
    session = ChatSession(tiny, {"v": vector}, multiplier=4.0, condition=never,
                          max_new_tokens=6)
    assert f"if condition {never.id} holds" in session.describe()
    assert "prompt positions" in session.command("/positions prompt")
    assert "angular" in session.command("/intervention angular")
    with pytest.raises(ChatError, match="/positions needs one of all, prompt, generated"):
        session.command("/positions some")
    session.command("/multiplier 30")
    with pytest.raises(ChatError, match=r"within \[-180, 180\]"):
        session.command("/multiplier 200")
    setting = session.setting()
    assert (setting.multiplier, setting.positions, setting.intervention, setting.condition) == (
        30.0, "prompt", "angular", never)
    gated, plain = session.send("Hello")
    assert gated.text == plain.text  # the condition never holds: the steered reply is unsteered
    session.command("/reset")
    session.command("/condition off")
    prompt = tiny.format_messages([{"role": "user", "content": "Hello"}])
    with replace(setting, condition=None).apply(tiny):
        expected = generate(tiny, [prompt], 6, format_prompts=False, progress=False)[0]
    assert session.send("Hello")[-1].text == expected
