"""Model loading: provider choice, and the label check at load."""

import json

import numpy as np
import onnx
import pytest

from audiotag.assets import DEFAULT_MODEL, asset_path
from audiotag.infer.model import Model, ModelError, choose_providers
from audiotag.options import requested_providers
from conftest import save_as_format_1

GPU_BOX = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_automatic_choice_prefers_accelerators_and_keeps_cpu_last():
    assert choose_providers(GPU_BOX) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers(["CoreMLExecutionProvider", "CPUExecutionProvider"])[0] == "CoreMLExecutionProvider"
    assert choose_providers(["ROCMExecutionProvider", "CPUExecutionProvider"])[0] == "ROCMExecutionProvider"
    assert choose_providers(["DmlExecutionProvider", "CPUExecutionProvider"])[0] == "DmlExecutionProvider"


def test_requested_providers_are_taken_in_order_with_short_names():
    assert choose_providers(GPU_BOX, ["cpu"]) == ["CPUExecutionProvider"]
    assert choose_providers(GPU_BOX, ["cpu", "CUDAExecutionProvider"]) == ["CPUExecutionProvider",
                                                                           "CUDAExecutionProvider"]


def test_unavailable_provider_is_an_error_naming_what_is_available():
    with pytest.raises(ModelError, match="cuda.*CPUExecutionProvider"):
        choose_providers(["CPUExecutionProvider"], ["cuda"])


def test_environment_override(monkeypatch):
    monkeypatch.setenv("AUDIOTAG_PROVIDERS", "cuda, cpu")
    assert requested_providers() == ["cuda", "cpu"]
    assert choose_providers(GPU_BOX, requested_providers()) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert requested_providers("cpu") == ["cpu"]  # the command line wins
    monkeypatch.setenv("AUDIOTAG_PROVIDERS", "")
    assert requested_providers() is None


def test_model_reads_its_labels():
    model = Model(asset_path(DEFAULT_MODEL))
    assert model.info.name == "mn04_as"
    assert len(model.info.labels) == len(model.info.mids) == 527
    assert model.info.labels[137] == "Music" and model.info.mids[137] == "/m/04rlf"
    assert model.providers == ["CPUExecutionProvider"]
    logits, embedding = model.run(np.zeros((2, 128, 100), np.float32))
    assert logits.shape == (2, 527) and embedding.shape[0] == 2


def test_label_count_must_equal_output_width(tmp_path):
    proto = onnx.load(str(asset_path(DEFAULT_MODEL)))
    for prop in proto.metadata_props:
        if prop.key == "labels":
            prop.value = json.dumps(json.loads(prop.value)[:-1])
    path = tmp_path / "short.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ModelError, match="526 labels but the model outputs 527"):
        Model(path)


def test_model_without_metadata_is_refused(tmp_path):
    proto = onnx.load(str(asset_path(DEFAULT_MODEL)))
    del proto.metadata_props[:]
    path = tmp_path / "bare.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ModelError, match="not an audiotag model"):
        Model(path)


def test_model_exported_before_categories_is_refused_with_what_to_do(tmp_path):
    path = tmp_path / "old.onnx"
    save_as_format_1(asset_path(DEFAULT_MODEL), path)
    message = r"old.onnx has no category metadata \(model format 1, this audiotag reads 3\): export it again with"
    with pytest.raises(ModelError, match=message + " scripts/model/export_model.py"):
        Model(path)
