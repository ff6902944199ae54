#!/usr/bin/env bash
# Installs LiteLLM's proxy into its own virtual environment (bench/.litellm-venv, gitignored) for
# bench/openai_overhead.py. LiteLLM is never a dependency of Parley: it is only the yardstick.
set -euo pipefail
cd "$(dirname "$0")"
VENV=.litellm-venv
LITELLM_VERSION=${LITELLM_VERSION:-1.108.7}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --upgrade pip
if [ -n "$LITELLM_VERSION" ]; then
  "$VENV/bin/pip" install -q "litellm[proxy]==$LITELLM_VERSION"
else
  "$VENV/bin/pip" install -q "litellm[proxy]"
fi
"$VENV/bin/python" -c 'import importlib.metadata as m; print("litellm", m.version("litellm"))'
"$VENV/bin/litellm" --help >/dev/null && echo "litellm proxy ready: bench/$VENV/bin/litellm"
