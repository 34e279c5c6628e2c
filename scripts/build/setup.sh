#!/usr/bin/env bash
# Set up a checkout: .venv with audiotag and its dev tools, the second decoder (scripts/build/build_ffmpeg.sh and
# build_avblocks.sh), the frontend arrays, the exported model.
# Idempotent: a second run only checks. The model is exported from the upstream checkpoint found in
# $AUDIOTAG_ASSETS_DIR (a directory holding mn04_as_mAP_432.pt, class_labels_indices.csv
# and ontology.json; default ../shared/upstream when that exists), else downloaded.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${AUDIOTAG_ASSETS_DIR:-}" ] && [ -d ../shared/upstream ]; then
    export AUDIOTAG_ASSETS_DIR=../shared/upstream  # the project's shared folder beside the checkout: no download
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev,export,ray,parquet]"
# The second decoder: PyAV against a slim LGPL FFmpeg, built by our script (cached in build/ffmpeg/), never
# PyPI's av wheel (GPL codecs, 10x the size). Reinstalled when the build changes.
wheel=$(scripts/build/build_ffmpeg.sh .venv/bin/python)
if [ "$(cat .venv/.audiotag-av-wheel 2>/dev/null)" != "$wheel" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall "$wheel"
    echo "$wheel" >.venv/.audiotag-av-wheel
fi
# Whole blocks per call without Python's lock (audiotag/decode/_avblocks.c), against the same FFmpeg libraries.
scripts/build/build_avblocks.sh "$(dirname "$(dirname "$wheel")")/prefix"
.venv/bin/python scripts/model/make_frontend_assets.py
# Exported again when missing or of an older model format (e.g. one without the ontology's categories).
.venv/bin/python scripts/model/export_model.py --if-stale
