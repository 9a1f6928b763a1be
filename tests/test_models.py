import pytest
import torch
from tiny import CONFIGS, tiny_model

from steerlab.model.handle import ModelLoadError, find_decoder_layers, load_model


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_decoder_layers_found_across_architectures(family):
    model = tiny_model(family)
    assert model.n_layers == 4 and model.d_model == 32
    assert type(model.layers[0]).__name__.endswith(("DecoderLayer", "Block", "Layer"))
    # The discovered modules are the ones the forward pass actually runs, in order.
    seen = []
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: seen.append(i))
             for i, layer in enumerate(model.layers)]
    with torch.no_grad():
        model.model(torch.tensor([[1, 2, 3]]))
    for hook in hooks:
        hook.remove()
    assert seen == [0, 1, 2, 3]


def test_no_layer_stack_is_a_clear_error():
    class NotADecoder(torch.nn.Module):
        config = CONFIGS["llama"]()

    with pytest.raises(ValueError, match="no list of 4 decoder layers"):
        find_decoder_layers(NotADecoder())


def test_fingerprint_depends_on_architecture_not_weights():
    assert tiny_model("llama", seed=0).fingerprint == tiny_model("llama", seed=1).fingerprint
    assert tiny_model("llama").fingerprint != tiny_model("mistral").fingerprint


def test_chat_and_plain_prompt_formats():
    chat, plain = tiny_model(chat=True), tiny_model(chat=False)
    assert chat.format_prompt("Hi") == "<|user|>Hi\n<|assistant|>"
    assert chat.format_prompt("Hi", system="Be brief") == (
        "<|system|>Be brief\n<|user|>Hi\n<|assistant|>")
    assert plain.format_prompt("Hi") == "Question: Hi\nAnswer:"


def test_conversations_format_as_chat_turns_or_plain_blocks():
    turns = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"},
             {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}]
    chat, plain = tiny_model(chat=True), tiny_model(chat=False)
    assert chat.format_messages(turns) == (
        "<|system|>S\n<|user|>Q1\n<|assistant|>A1\n<|user|>Q2\n<|assistant|>")
    assert plain.format_messages(turns) == (
        "S\n\nQuestion: Q1\nAnswer: A1\n\nQuestion: Q2\nAnswer:")
    with pytest.raises(ValueError, match="end on a user"):
        plain.format_messages(turns[:3])
    with pytest.raises(ValueError, match="unknown message role"):
        plain.format_messages([{"role": "tool", "content": "x"}, turns[1]])


def test_load_from_local_directory(tmp_path):
    model = tiny_model("gpt2")
    model.model.save_pretrained(tmp_path)
    model.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.n_layers == 4 and loaded.fingerprint == model.fingerprint
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, model.model(ids).logits, atol=1e-4,
                                   rtol=1e-4)


def test_bad_specs_fail_with_clear_messages(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        load_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelLoadError, match="without config.json"):
        load_model(str(tmp_path))
    with pytest.raises(ModelLoadError, match="'someone/not-here'.*hub is not reachable"):
        load_model("someone/not-here")


def test_dequantised_cache_is_keyed_by_format_and_rebuilt_when_it_does_not_load(tmp_path,
                                                                                 monkeypatch):
    """A cache another transformers wrote (5.x tokenizer files under 4.x) or a damaged one is
    rebuilt once, not a crash; the GGUF conversion itself is stood in for by a tiny model."""
    from steerlab.model import handle as models

    monkeypatch.setenv("STEERLAB_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF stand-in")
    written = []

    def dequantise(source, target):
        written.append(target)
        tiny = tiny_model("llama")
        tiny.model.save_pretrained(target)
        tiny.tokenizer.save_pretrained(target)

    monkeypatch.setattr(models, "_dequantise", dequantise)
    first = load_model(str(gguf))
    cached = models.resolve_spec(str(gguf))
    assert cached.name.endswith(models.CACHE_FORMAT) and len(written) == 1
    load_model(str(gguf))
    assert len(written) == 1  # a good cache is reused

    config = cached / "config.json"
    config.write_text(config.read_text()[:40])  # torn, like a file another version cannot read
    with pytest.warns(UserWarning, match="does not load.*rebuilding"):
        again = load_model(str(gguf))
    assert len(written) == 2 and again.fingerprint == first.fingerprint
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(again.model(ids).logits, first.model(ids).logits)
