#!/usr/bin/env bash
# goosebit (the DDI server for tests/peers and `ferry demo`) in its own venv, so its pinned
# web stack (FastAPI, Tortoise ORM, pydantic) never mixes with ferry's packages.
# Idempotent: does nothing when the pinned version is already there.
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=0.2.12
VENV=.cache/goosebit-venv
if [ -x "$VENV/bin/uvicorn" ] && [ -x "$VENV/bin/aerich" ] \
   && "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('goosebit') != '$VERSION')" 2>/dev/null; then
  exit 0
fi
PY=${PYTHON:-python3}
mkdir -p .cache
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install -q "goosebit==$VERSION"
echo "setup: goosebit $VERSION in $VENV"
