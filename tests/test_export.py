"""The model export: the architecture loads upstream's checkpoint, the ONNX file reproduces upstream's logits and
carries the metadata the package reads, and inputs download (or fail in one line) from a local HTTP server."""

import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts" / "model"))
import export_model  # noqa: E402
from efficientat_mn import MobileNetV3, width_from_name  # noqa: E402

from conftest import save_as_format_1  # noqa: E402

SHARED = Path(os.environ.get("AUDIOTAG_SHARED", REPO.parent / "shared"))
CHECKPOINT = SHARED / "upstream" / "mn04_as_mAP_432.pt"
LABELS = SHARED / "upstream" / "class_labels_indices.csv"
ONTOLOGY = SHARED / "upstream" / "ontology.json"
CHECKPOINT_NAME, CHECKPOINT_SHA = export_model.CHECKPOINTS["mn04_as"]
MAIN_CLIPS = ("music", "speech", "typing")

# As in the export script: for this tiny model one thread is faster than torch's OpenMP pool, which also slows
# down 10x+ when other processes compete for the CPU.
torch.set_num_threads(1)


def reference(clip: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(SHARED / "reference" / f"{clip}.npz") as data:
        return data["mel"][None, None], data["logits"]


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "mn04_as.onnx"
    argv = ["--checkpoint", str(CHECKPOINT), "--labels", str(LABELS), "--ontology", str(ONTOLOGY), "--output", str(out),
            "--reference-dir", str(SHARED / "reference")]
    assert export_model.main(argv) == 0
    return out


@pytest.fixture(scope="module")
def session(onnx_path) -> ort.InferenceSession:
    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------------------- architecture, parity


def test_width_from_name():
    assert [width_from_name(n) for n in ("mn01_as", "mn04_as", "mn10_as", "mn40_as")] == [0.1, 0.4, 1.0, 4.0]
    with pytest.raises(ValueError):
        width_from_name("dymn10_as")


def test_architecture_loads_checkpoint_strictly_and_matches_upstream():
    model = MobileNetV3(width_from_name("mn04_as")).eval()
    model.load_state_dict(torch.load(CHECKPOINT, map_location="cpu", weights_only=True), strict=True)
    with torch.inference_mode():
        for clip in MAIN_CLIPS:
            mel, logits = reference(clip)
            np.testing.assert_allclose(model(torch.from_numpy(mel))[0][0].numpy(), logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("clip", MAIN_CLIPS)
def test_onnx_reproduces_reference_logits(session, clip):
    mel, logits = reference(clip)
    got = session.run(["logits"], {"melspec": mel})[0]
    assert got.shape == (1, 527)
    np.testing.assert_allclose(got[0], logits, rtol=0, atol=2e-4)


@pytest.mark.parametrize("batch, frames", [(3, 1000), (1, 37)])
def test_dynamic_batch_and_frames(session, batch, frames):
    mel = np.random.default_rng(batch).uniform(-1.5, 2.0, (batch, 1, 128, frames)).astype(np.float32)
    logits, embedding = session.run(["logits", "embedding"], {"melspec": mel})
    assert logits.shape == (batch, 527) and embedding.shape == (batch, 384)
    # Each row of a batch must equal that clip run alone.
    alone = session.run(["logits"], {"melspec": mel[-1:]})[0]
    np.testing.assert_allclose(logits[-1:], alone, rtol=0, atol=1e-5)


def test_verification_fails_past_tolerance(onnx_path):
    model = export_model.load_model("mn04_as", CHECKPOINT)
    with pytest.raises(export_model.ExportError, match="differ from PyTorch"):
        export_model.verify(model, onnx_path, None, tolerance=0.0, ref_tolerance=1e-3)


# ------------------------------------------------------------------------------------------- the file itself


def test_metadata(onnx_path):
    model = onnx.load(str(onnx_path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert set(meta) == {"model_name", "checkpoint_sha256", "labels", "mids", "frontend", "categories",
                         "ontology", "ontology_sha256", "audiotag_model_format"}
    assert meta["model_name"] == "mn04_as"
    assert meta["checkpoint_sha256"] == CHECKPOINT_SHA
    assert meta["audiotag_model_format"] == "3"
    assert meta["ontology_sha256"] == "9c685f4403eecc3ca9be37fd7285cf212feaaea6ff7229d3e7ca89e0d1f2d15d"
    categories = json.loads(meta["categories"])
    assert [c["name"] for c in categories] == [
        "Human sounds", "Animal", "Music", "Natural sounds", "Sounds of things", "Source-ambiguous sounds",
        "Channel, environment and background"]
    music = next(c for c in categories if c["name"] == "Music")
    assert music["mid"] == "/m/04rlf" and 137 in music["indices"]  # the category is a label of its own subtree
    assert set().union(*(c["indices"] for c in categories)) == set(range(527))
    nodes = {n["name"]: n for n in json.loads(meta["ontology"])}  # every node, with its subtree's labels
    assert len(nodes) == 632 and nodes["Music"]["indices"] == music["indices"]
    assert nodes["Bark"]["indices"] == [75] and nodes["Dog"]["mid"] == "/m/0bt9lr" and 75 in nodes["Dog"]["indices"]
    assert nodes["Human voice"]["mid"] == "/m/09l8g" and len(nodes["Human voice"]["indices"]) == 40  # not a label
    assert nodes["Yawn"]["indices"] == []  # a node with no label of the model under it
    labels, mids = json.loads(meta["labels"]), json.loads(meta["mids"])
    assert len(labels) == len(mids) == 527
    assert labels[:2] == ["Speech", "Male speech, man speaking"]  # the CSV quotes commas
    assert mids[0] == "/m/09x0r"
    frontend = json.loads(meta["frontend"])
    assert frontend["sample_rate"] == 32000 and frontend["n_mels"] == 128 and frontend["fmax"] == 15000.0


def test_graph_is_self_contained_with_named_dynamic_io(onnx_path):
    model = onnx.load(str(onnx_path), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert model.graph.input[0].name == "melspec" and dims == ["batch", 1, 128, "frames"]
    assert [o.name for o in model.graph.output] == ["logits", "embedding"]
    assert not export_model.TRAINING_OPS & {n.op_type for n in model.graph.node}


# ------------------------------------------------------------------------------------------- downloads


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/served; yields (directory, base URL)."""
    root = tmp_path / "served"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_port}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "audiotag"


def test_download_verifies_and_caches(server, cache):
    root, url = server
    shutil.copy(CHECKPOINT, root / CHECKPOINT_NAME)
    shutil.copy(LABELS, root / "labels.csv")

    got = export_model.resolve("checkpoint", None, None, CHECKPOINT_NAME, url + CHECKPOINT_NAME, CHECKPOINT_SHA)
    assert got == cache / CHECKPOINT_NAME and export_model.sha256_of(got) == CHECKPOINT_SHA
    labels = export_model.resolve("labels", None, None, export_model.LABELS_FILE, url + "labels.csv", None)
    assert len(export_model.load_labels(labels)[0]) == 527
    assert sorted(p.name for p in cache.iterdir()) == sorted([CHECKPOINT_NAME, export_model.LABELS_FILE])

    # A second run uses the cache: the server no longer has the file.
    (root / CHECKPOINT_NAME).unlink()
    assert export_model.resolve("checkpoint", None, None, CHECKPOINT_NAME, url + CHECKPOINT_NAME, CHECKPOINT_SHA) == got


def test_download_rejects_wrong_sha256(server, cache):
    root, url = server
    (root / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    with pytest.raises(export_model.ExportError, match="sha256"):
        export_model.resolve("checkpoint", None, None, CHECKPOINT_NAME, url + CHECKPOINT_NAME, CHECKPOINT_SHA)
    assert not cache.exists() or not any(cache.iterdir())  # neither the file nor a .part left behind


def free_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/{CHECKPOINT_NAME}"


@pytest.mark.parametrize("failure", ["404", "unreachable"])
def test_cli_download_failure_is_one_line(server, tmp_path, failure):
    url = server[1] + "missing.pt" if failure == "404" else free_port_url()
    env = {k: v for k, v in os.environ.items() if k != "AUDIOTAG_ASSETS_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "model" / "export_model.py"), "--checkpoint-url", url,
         "--labels", str(LABELS), "--output", str(tmp_path / "out.onnx")],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert errors == [result.stderr.splitlines()[-1]]
    assert errors[0].startswith(f"export_model: error: cannot download {url}")
    assert ("404" if failure == "404" else "refused") in errors[0]
    assert not (tmp_path / "out.onnx").exists()


def test_assets_dir_from_the_environment(tmp_path):
    """$AUDIOTAG_ASSETS_DIR is where the inputs come from when no path is given: nothing is downloaded (the
    download URL is a closed port) and the model carries that checkpoint's sha256."""
    env = {**os.environ, "AUDIOTAG_ASSETS_DIR": str(CHECKPOINT.parent), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    refs = tmp_path / "refs"  # one reference clip keeps the verification short
    refs.mkdir()
    shutil.copy(SHARED / "reference" / "music.npz", refs)
    out = tmp_path / "out.onnx"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "model" / "export_model.py"), "--checkpoint-url", free_port_url(),
         "--labels-url", free_port_url(), "--ontology-url", free_port_url(), "--output", str(out),
         "--reference-dir", str(refs)],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    meta = {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}
    assert meta["checkpoint_sha256"] == CHECKPOINT_SHA and not (tmp_path / "cache" / "audiotag").exists()

    env["AUDIOTAG_ASSETS_DIR"] = str(tmp_path)  # a directory without the files: one clear line, no download
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "model" / "export_model.py"), "--output", str(out)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].endswith(f"not found in the assets dir {tmp_path}")


def test_another_width_exports_with_the_same_script(tmp_path):
    """mn10_as (width 1.0): a checkpoint of that shape (random weights here; the real one is not in ../shared)
    loads strictly and exports with the same script, its embedding 960 wide."""
    torch.manual_seed(0)
    checkpoint = tmp_path / export_model.CHECKPOINTS["mn10_as"][0]
    torch.save(MobileNetV3(width_from_name("mn10_as")).state_dict(), checkpoint)
    refs = tmp_path / "refs"
    refs.mkdir()
    shutil.copy(SHARED / "reference" / "music.npz", refs)
    out = tmp_path / "mn10_as.onnx"
    argv = ["--model", "mn10_as", "--checkpoint", str(checkpoint), "--labels", str(LABELS), "--ontology", str(ONTOLOGY),
            "--output", str(out), "--reference-dir", str(refs)]
    assert export_model.main(argv) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits, embedding = session.run(None, {"melspec": reference("music")[0]})
    assert logits.shape == (1, 527) and embedding.shape == (1, 960)
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["model_name"] == "mn10_as" and len(json.loads(meta["labels"])) == 527


def test_if_stale_skips_a_current_model_and_redoes_an_old_one(onnx_path, tmp_path):
    """setup.sh's --if-stale: a model of this format is left alone (no input is even looked for); one of an older
    format (no categories) is exported again."""
    assert export_model.main(["--if-stale", "--output", str(onnx_path), "--assets-dir", str(tmp_path)]) == 0
    stale = tmp_path / "stale.onnx"
    save_as_format_1(onnx_path, stale)
    refs = tmp_path / "refs"
    refs.mkdir()
    shutil.copy(SHARED / "reference" / "music.npz", refs)
    argv = ["--if-stale", "--output", str(stale), "--checkpoint", str(CHECKPOINT), "--labels", str(LABELS),
            "--ontology", str(ONTOLOGY), "--reference-dir", str(refs)]
    assert export_model.main(argv) == 0
    assert export_model.model_format(stale) == export_model.MODEL_FORMAT


def test_a_file_that_is_not_the_ontology_is_one_clear_error(tmp_path):
    bad = tmp_path / "ontology.json"
    bad.write_text('[{"id": "/m/x", "name": "x", "child_ids": []}]')
    with pytest.raises(export_model.ExportError, match="expected 7 top-level classes, found 1"):
        export_model.load_ontology(bad, ["/m/x"])
