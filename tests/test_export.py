"""llama.cpp control-vector GGUF: export, re-import, and the format llama.cpp's loader expects."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter

from steerlab.steering.vectors import SteeringVector, meta_for


def vector_at(model, layers=(1, 3), seed=0):
    generator = torch.Generator().manual_seed(seed)
    directions = {layer: torch.randn(model.d_model, generator=generator) for layer in layers}
    meta = meta_for(model, "caa", hyperparams={"token": "last"}, data_hash="abc", n_examples=7,
                    residual_norms={layer: 2.0 + layer for layer in layers})
    return SteeringVector(directions, meta)


def test_round_trip_restores_directions_and_meta(tiny, tmp_path):
    vector = vector_at(tiny)
    back = SteeringVector.from_gguf(vector.to_gguf(tmp_path / "v.gguf"))
    assert back.layers == vector.layers
    for layer in vector.layers:
        assert torch.equal(back.directions[layer], vector.directions[layer])
    assert back.meta == vector.meta and back.id == vector.id
    assert back.meta.residual_norms == {1: 3.0, 3: 5.0}


def test_file_is_what_llama_cpp_reads(tiny, tmp_path):
    vector = vector_at(tiny)
    reader = GGUFReader(vector.to_gguf(tmp_path / "v.gguf"))
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert fields["general.architecture"] == "controlvector"
    assert fields["controlvector.model_hint"] == "tiny-llama"
    assert fields["controlvector.layer_count"] == 2
    # int32, as llama.cpp's cvector-generator writes it
    assert reader.fields["controlvector.layer_count"].types[0].name == "INT32"
    # Every tensor is direction.N (N ≥ 1: steerlab layer L is llama.cpp's block L), 1-D float32.
    assert [t.name for t in reader.tensors] == ["direction.1", "direction.3"]
    for tensor, layer in zip(reader.tensors, (1, 3)):
        assert tensor.tensor_type == GGMLQuantizationType.F32
        assert list(tensor.shape) == [tiny.d_model] and tensor.data.dtype == np.float32
        np.testing.assert_array_equal(tensor.data, vector.directions[layer].numpy())


def test_export_bakes_in_multiplier_norm_ratio_and_layers(tiny, tmp_path):
    vector = vector_at(tiny, layers=(2,))
    vector.meta.residual_norms.update({1: 3.0, 3: 5.0})
    path = vector.to_gguf(tmp_path / "v.gguf", multiplier=-4.0, layers=[1, 3], norm_ratio=0.5)
    back = SteeringVector.from_gguf(path)
    expected = vector.additions(-4.0, [1, 3], 0.5)
    assert back.layers == [1, 3]
    for layer in (1, 3):
        torch.testing.assert_close(back.directions[layer], expected[layer], rtol=0, atol=0)
    export = back.meta.extra["gguf_export"]
    assert export == {"source_id": vector.id, "multiplier": -4.0, "layers": [1, 3],
                      "norm_ratio": 0.5}
    assert back.meta.model_copy(update={"extra": {}}) == vector.meta


def test_layer_zero_cannot_be_exported(tiny, tmp_path):
    vector = vector_at(tiny, layers=(0, 2))
    with pytest.raises(ValueError, match="layer 0 cannot be exported.*direction.0"):
        vector.to_gguf(tmp_path / "v.gguf")
    assert not (tmp_path / "v.gguf").exists()
    vector.to_gguf(tmp_path / "v.gguf", layers=[2])  # its other layers export fine


ONES = np.ones(4, np.float32)


def write(path, arch, tensors, hint="llama"):
    writer = GGUFWriter(path, arch)
    if hint:
        writer.add_string("controlvector.model_hint", hint)
    for name, data in tensors:
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_control_vectors_from_elsewhere_import_with_minimal_meta(tmp_path):
    tensors = [("direction.2", np.full(4, 0.5, np.float32)), ("direction.5", ONES)]
    path = write(tmp_path / "other.gguf", "controlvector", tensors)
    vector = SteeringVector.from_gguf(path)
    assert vector.layers == [2, 5] and vector.d_model == 4
    assert torch.equal(vector.directions[2], torch.full((4,), 0.5))
    assert vector.meta.method == "gguf" and vector.meta.model_name == "llama"
    assert vector.meta.extra == {"source": "other.gguf", "model_hint": "llama"}


@pytest.mark.parametrize("arch, tensors, message", [
    ("llama", [("direction.1", ONES)], "general.architecture is 'llama'"),
    ("controlvector", [("direction.0", ONES)], "'direction.0' is not direction.N"),
    ("controlvector", [("bias.1", ONES)], "'bias.1' is not direction.N"),
    ("controlvector", [("direction.1", ONES.astype(np.float16))], "'direction.1' must be float32"),
    ("controlvector", [("direction.1", ONES.reshape(2, 2))], "must be float32 with one dim"),
    ("controlvector", [("direction.1", ONES), ("direction.2", ONES[:3])], "differ in length"),
    ("controlvector", [], "no direction tensors"),
])
def test_import_errors_name_the_file_and_tensor(tmp_path, arch, tensors, message):
    path = write(tmp_path / "bad.gguf", arch, tensors)
    with pytest.raises(ValueError, match=message) as error:
        SteeringVector.from_gguf(path)
    assert "bad.gguf" in str(error.value)


def test_import_rejects_missing_and_non_gguf_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        SteeringVector.from_gguf(tmp_path / "missing.gguf")
    (tmp_path / "text.gguf").write_text("hello, not a gguf file at all")
    with pytest.raises(ValueError, match="text.gguf: not a GGUF file"):
        SteeringVector.from_gguf(tmp_path / "text.gguf")
