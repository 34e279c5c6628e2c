"""One resolver for the files shipped inside the package (``audiotag/assets/``).

It goes through ``importlib.resources``, so the same call works from a source checkout, an installed wheel and
the PyInstaller binary (which unpacks package data beside the frozen modules).

- ``mel_filterbank.npy``, ``stft_window.npy``: made by ``scripts/model/make_frontend_assets.py`` (numpy only).
- ``mn04_as.onnx``: made by ``scripts/model/export_model.py`` from the upstream checkpoint; never in git.
"""

from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

DEFAULT_MODEL = "mn04_as.onnx"


def asset_path(name: str) -> Path:
    """Path of a bundled asset; raises FileNotFoundError naming the file and how it is made."""
    path = Path(str(resources.files("audiotag") / "assets" / name))
    if not path.is_file():
        hint = "scripts/model/export_model.py" if name.endswith(".onnx") else "scripts/model/make_frontend_assets.py"
        raise FileNotFoundError(f"missing asset {path} (generate it with {hint})")
    return path


@lru_cache(maxsize=None)
def load_array(name: str) -> np.ndarray:
    """A bundled .npy array, loaded once and made read-only so callers cannot change the shared copy."""
    array = np.load(asset_path(name), allow_pickle=False)
    array.setflags(write=False)
    return array
