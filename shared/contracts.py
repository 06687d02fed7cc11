"""Messages that cross Kafka. One pydantic model per message; events are named in the past tense.

Evolution is additive: new fields get defaults, readers ignore fields they do not know (``extra="ignore"``), and
``schema_version`` only changes when a reader must behave differently. The JSON form of these models is the public
contract for internal systems that produce requests or read replies directly (see README, "Kafka API").
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, model_validator

SCHEMA_VERSION = 1
VARIANT_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"  # how variant names look (fp32, int8, ...), for edge validation


Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1, description="A 64-bit signed integer.")]
"""A sampling seed: torch's generators take 64 bits, and a seed beyond them failed in the engine."""


def _without_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("holds the character U+0000, which the platform's stores (PostgreSQL) cannot keep")
    return text


StoredKey = Annotated[str, AfterValidator(_without_nul)]
"""Text the services may store or look up in PostgreSQL, whose text refuses U+0000: such a request would fail there
again at each redelivery, holding back the requests behind it, so it is refused (dead-lettered) where it is read."""
RequestId = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_without_nul)]
"""A request's id: 1 to 200 characters, without U+0000."""

TopicName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=249,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="A name Kafka takes for a topic: at most 249 letters, digits, dots, underscores and hyphens.",
    ),
]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Message(BaseModel):
    """Base of every Kafka message: tolerant reader, immutable once built."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: int = Field(
        SCHEMA_VERSION, description="Version of this message's schema; additive changes keep it."
    )


class FunctionCall(BaseModel):
    """The function a tool call invokes, as in OpenAI's chat API."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str = Field(description="The function's name, one of the request's tools.")
    arguments: str = Field(
        description="The arguments as JSON text, as the model wrote them. It matches the function's parameters "
        "schema when the call was forced (tool_choice required or a named function) and generation was not cut "
        "short; a call the model chose (auto) is valid JSON, but its schema is not enforced."
    )


class ToolCall(BaseModel):
    """A call of one of the request's tools, made by the model (OpenAI's ``tool_calls`` entry)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(description="The call's id; a later ``tool`` message answers it with this ``tool_call_id``.")
    type: Literal["function"] = Field("function", description="Always function.")
    function: FunctionCall = Field(description="The function called and its arguments.")


class ToolCallPiece(BaseModel):
    """A tool call as it streams: which call, and the next part of its arguments. A call's pieces, in order, add up to
    its entry in ``CompletionFinished.tool_calls``, which stays the whole answer."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    index: int = Field(ge=0, description="The call's position in the completion's tool_calls.")
    id: str = Field(description="The call's id, as in CompletionFinished.tool_calls.")
    name: str = Field(description="The function called.")
    arguments: str = Field(
        description="The next characters of the call's arguments (JSON text); empty in the piece that opens a call "
        "whose arguments have not begun."
    )
    arguments_offset: int = Field(
        ge=0,
        description="Characters of this call's arguments before this piece. A request redelivered after a worker "
        "died streams its calls again from the start; readers drop the part they already have.",
    )


class ChatMessage(BaseModel):
    """One turn of a conversation, as in OpenAI's chat API (text content, tool calls and their results)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    role: Literal["system", "user", "assistant", "tool"] = Field(
        description="Who wrote this turn; tool: the result of an assistant's tool call."
    )
    content: str = Field("", description="The text of the turn; empty for an assistant turn made of tool calls only.")
    tool_calls: list[ToolCall] = Field(
        default_factory=list, description="The tool calls of an assistant turn, in order."
    )
    tool_call_id: str | None = Field(None, description="For a tool turn: the id of the call it answers.")
    reasoning: str | None = Field(
        None,
        description="For an assistant turn of a reasoning model: its thinking, as its response gave it. Given to the "
        "chat template as reasoning and reasoning_content; Qwen3's keeps it for turns after the last user turn (the "
        "steps of one answer that calls tools) and drops it before.",
    )


class FunctionTool(BaseModel):
    """A function the model may call (OpenAI's ``tools`` entry of type function)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str = Field(description="The function's name.")
    description: str | None = Field(None, description="What the function does, shown to the model.")
    parameters: dict[str, Any] | None = Field(
        None, description="JSON Schema of the arguments object; None: the function takes any object."
    )


ToolChoice = Literal["none", "auto", "required"]
"""Whether the model may call tools: none (it answers in text), auto (it decides), required (at least one call)."""


class ResponseFormat(BaseModel):
    """Constrains the completion to JSON (OpenAI's response_format): the engine masks every token that would break the
    format, so a completion that ends with finish reason ``stop`` parses (one cut short by ``length`` may not)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    type: Literal["json_object", "json_schema"] = Field(
        description="json_object: any JSON object. json_schema: JSON that matches ``json_schema``."
    )
    json_schema: dict[str, Any] | None = Field(
        None,
        description="The JSON Schema the completion must match, as written (type json_schema only). A schema the "
        "engine cannot use gets a GenerationFailed with code invalid_request and param response_format.",
    )
    strict: bool = Field(
        False,
        description="OpenAI's strict mode: no object of the output has a property the schema does not list, unless "
        "the schema allows more (additionalProperties). False leaves it to the engine's grammar backend: xgrammar "
        "adds none, llguidance (for schema features xgrammar lacks) follows JSON Schema and may.",
    )

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type json_schema and not allowed with json_object")
        return self


class StructuredOutputs(BaseModel):
    """A form the output must take, beyond JSON (for which see ResponseFormat), as vLLM's ``structured_outputs``
    takes it: exactly one of ``choice``, ``regex`` and ``grammar``. Enforced token by token by the engine's
    grammar-guided decoding."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    choice: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None, min_length=1, description="The output is exactly one of these strings."
    )
    regex: str | None = Field(None, min_length=1, description="The whole output matches this regular expression.")
    grammar: str | None = Field(
        None,
        min_length=1,
        description="The output is a sentence of this context-free grammar, in the EBNF (GBNF) or Lark form vLLM "
        "takes.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> StructuredOutputs:
        if sum(v is not None for v in (self.choice, self.regex, self.grammar)) != 1:
            raise ValueError("exactly one of choice, regex and grammar must be given")
        return self


MAX_TOP_LOGPROBS = 20  # vLLM's default max_logprobs, and OpenAI's top_logprobs limit
MAX_LOGIT_BIAS = 1024  # tokens one request may bias: keeps a request's record small
MAX_STOP_TOKEN_IDS = 64
MAX_BAD_WORDS = 64
MAX_ALLOWED_TOKEN_IDS = 4096  # a request's record stays small; a choice among classes needs a handful
TokenId = Annotated[int, Field(ge=0, description="A token id of the model's tokenizer.")]
LogitBias = Annotated[float, Field(ge=-100.0, le=100.0, description="Added to the token's logit before sampling.")]


class TopLogprob(BaseModel):
    """One of the most likely tokens at a position of the completion."""

    model_config = ConfigDict(frozen=True)

    token: str = Field(description="The token's text, as the tokenizer decodes it alone.")
    logprob: float = Field(description="Its log-probability at this position (the model's, before sampling changes).")
    token_id: int | None = Field(
        None, description="The token's id in the model's vocabulary; None from a worker that predates it."
    )


class TokenLogprob(TopLogprob):
    """A generated token's log-probability, with the most likely tokens at its position when asked for."""

    top_logprobs: list[TopLogprob] = Field(
        default_factory=list, description="The most likely tokens at this position, most likely first."
    )


class PromptLogprobs(BaseModel):
    """The prompt's tokens as the model scores them, each given the tokens before it (OpenAI's echo with logprobs)."""

    model_config = ConfigDict(frozen=True)

    first_token: str = Field(
        description="The prompt's first token, which has no log-probability: no token comes before it."
    )
    first_token_id: int | None = Field(
        None, description="The first token's id in the model's vocabulary; None from a worker that predates it."
    )
    tokens: list[TokenLogprob] = Field(
        description="Every later prompt token, in order, with the most likely tokens at its position when asked for."
    )


class SamplingParams(BaseModel):
    """How to sample the completion; the OpenAI parameters the platform accepts."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    max_tokens: int = Field(256, ge=1, description="Most tokens to generate.")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling probability mass.")
    stop: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="Non-empty strings that end generation when produced."
    )
    seed: Seed | None = Field(None, description="Random seed for reproducible sampling.")
    presence_penalty: float = Field(
        0.0,
        ge=-2.0,
        le=2.0,
        description="Lowers (positive) or raises (negative) the odds of every token already in the output, once "
        "(OpenAI's presence_penalty); 0 is off.",
    )
    frequency_penalty: float = Field(
        0.0,
        ge=-2.0,
        le=2.0,
        description="Lowers (positive) or raises (negative) the odds of a token in proportion to how often it is "
        "already in the output (OpenAI's frequency_penalty); 0 is off.",
    )
    response_format: ResponseFormat | None = Field(
        None, description="JSON the completion must be (OpenAI's response_format); None: free text."
    )
    logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        description="Return each generated token's log-probability and, at each position, those of this many most "
        "likely tokens (0: the generated token's only); None returns none.",
    )
    prompt_logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        description="Return the prompt's tokens with their log-probabilities (PromptLogprobs) and, at each position, "
        "those of this many most likely tokens; None returns none. The prompt is then computed in full, without the "
        "prefix cache.",
    )
    logit_bias: dict[TokenId, LogitBias] = Field(
        default_factory=dict,
        max_length=MAX_LOGIT_BIAS,
        description="Bias added to these tokens' logits before sampling (OpenAI's logit_bias), by token id of the "
        "model's tokenizer: -100 in effect bans a token, 100 in effect forces it. An id outside the model's vocabulary "
        "fails the request (GenerationFailed, param logit_bias). Empty: none.",
    )
    structured_outputs: StructuredOutputs | None = Field(
        None,
        description="A choice, regular expression or grammar the completion must follow (vLLM's structured_outputs); "
        "not with response_format. None: free text.",
    )
    # vLLM's own sampling options beyond OpenAI's, which clients of vLLM's server send (extra_body)
    top_k: int = Field(0, ge=0, description="Sample among this many most likely tokens only (vLLM's top_k); 0 is off.")
    min_p: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Drop tokens less likely than this fraction of the most likely token's probability (vLLM's "
        "min_p); 0 is off.",
    )
    repetition_penalty: float = Field(
        1.0,
        gt=0.0,
        le=2.0,
        description="Divides the logits of tokens already in the prompt or the output (when positive; multiplies "
        "them when negative), as vLLM's and Hugging Face's repetition_penalty; above 1 discourages repeats, 1 is off.",
    )
    min_tokens: int = Field(
        0,
        ge=0,
        description="Tokens to generate before the end of the turn may be sampled (vLLM's min_tokens); at most "
        "max_tokens. A grammar (response_format, a forced tool call) still ends the output once its JSON is complete.",
    )

    ignore_eos: bool = Field(
        False,
        description="Keep generating past the model's end of turn, up to max_tokens or a stop (vLLM's ignore_eos, "
        "which benchmarks use to fix output lengths).",
    )
    stop_token_ids: list[TokenId] = Field(
        default_factory=list,
        max_length=MAX_STOP_TOKEN_IDS,
        description="Token ids of the model's tokenizer that end generation, as stop strings do, left out of the text "
        "(vLLM's stop_token_ids). An id outside the vocabulary fails the request (param stop_token_ids).",
    )
    include_stop_str_in_output: bool = Field(
        False, description="The text keeps the stop string that ended it (vLLM's include_stop_str_in_output)."
    )
    skip_special_tokens: bool = Field(
        True,
        description="Special tokens the model writes (its tokenizer's, such as <|im_start|>) are left out of the text "
        "(vLLM's skip_special_tokens); false keeps them. A stop or end-of-sequence token is never in the text.",
    )
    spaces_between_special_tokens: bool = Field(
        True,
        description="With skip_special_tokens false: whether the text may have a space between two special tokens in "
        "a row, as the tokenizer decodes them (vLLM's spaces_between_special_tokens); false writes them side by side.",
    )
    bad_words: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        max_length=MAX_BAD_WORDS,
        description="Words the output never holds (vLLM's bad_words): where the tokens so far begin one, the token "
        "that would complete it is not sampled.",
    )
    allowed_token_ids: list[TokenId] | None = Field(
        None,
        min_length=1,
        max_length=MAX_ALLOWED_TOKEN_IDS,
        description="Only these token ids of the model's tokenizer may be sampled (vLLM's allowed_token_ids). None: "
        "any. An id outside the vocabulary fails the request (param allowed_token_ids).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> SamplingParams:
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) is more than max_tokens ({self.max_tokens})")
        if self.response_format is not None and self.structured_outputs is not None:
            raise ValueError("response_format and structured_outputs cannot both be given")
        return self


Priority = Literal["interactive", "batch", "best_effort"]
"""Priority classes, highest first: interactive (a person waits), batch (a job waits), best_effort (leftover room)."""

BatchingProfile = Literal["latency", "throughput", "cost"]
"""How long the batcher may hold a request to form bigger batches: latency < throughput < cost."""


ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]
"""OpenAI's reasoning_effort values, with DeepSeek V4's max, as vLLM takes them."""

PromptScreening = Literal["before", "beside"]
"""When a request's prompt is screened: before generation starts, or beside it with the output held until cleared."""


class CompletionRequested(Message):
    """A client asked for a completion. Produced to ``<prefix>requests.<model>`` keyed by ``request_id``.

    Exactly one of ``messages`` (chat), ``prompt`` (plain completion) and ``prompt_token_ids`` (a plain completion's
    prompt as token ids) is set."""

    request_id: RequestId = Field(description="Unique id; every reply carries it back.")
    model: str = Field(min_length=1, description="Registry id of the model to run; must match the topic's model.")
    messages: list[ChatMessage] = Field(
        default_factory=list, description="The conversation to complete (chat); empty when ``prompt`` is set."
    )
    prompt: str | None = Field(
        None,
        min_length=1,
        description="Raw prompt text to continue, without a chat template (OpenAI's /v1/completions).",
    )
    prompt_token_ids: list[Annotated[int, Field(ge=0)]] | None = Field(
        None,
        min_length=1,
        description="A raw prompt as token ids of the model's tokenizer, instead of ``prompt`` (OpenAI's "
        "/v1/completions takes a prompt as an array of integers). The safety stage screens the text they decode to; "
        "replies then carry that text as ``prompt_text``.",
    )
    sampling: SamplingParams = Field(default_factory=SamplingParams, description="Sampling parameters.")
    stream: bool = Field(True, description="Send TokensGenerated deltas before the final CompletionFinished.")
    reply_topic: TopicName = Field(
        description="Topic the worker publishes this request's replies to. The requester creates it (unless the "
        "brokers create topics on first use); a request whose reply topic cannot be written is dead-lettered with "
        "the reason instead of answered."
    )
    tenant_id: StoredKey | None = Field(None, description="Tenant that owns the request, when known.")
    requested_at: datetime = Field(default_factory=utc_now, description="When the request was made (UTC).")
    deadline_at: datetime | None = Field(None, description="After this instant (UTC) the result is no longer wanted.")
    trace_context: dict[str, str] = Field(
        default_factory=dict,
        description="W3C trace context (traceparent, tracestate) of the request; in the body so it survives batching.",
    )
    priority: Priority = Field("interactive", description="Priority class; higher classes are dispatched first.")
    profile: BatchingProfile | None = Field(
        None, description="Batching profile; unset means the tenant's or model's default."
    )
    variant: str | None = Field(
        None, description="Model variant wanted (e.g. bf16, int8, int4); unset means the model's default variant."
    )
    variant_fallback: bool = Field(
        True, description="Whether another variant may serve the request when the wanted one cannot run here."
    )
    retain_text: bool = Field(
        False,
        description="The tenant opted in to storing prompt and completion text; without it no service stores or "
        "logs the text (caches, review queues and logs keep ids and scores only).",
    )
    cache_salt: str | None = Field(
        None,
        description="Salt of the engine's prefix cache: requests with different salts never share cached prefixes, "
        "so one tenant cannot time another's prompts. The ingress sets it per tenant.",
    )
    retention_days: int | None = Field(
        None,
        ge=0,
        description="Days the tenant lets stored text be kept (the ingress sets it from the tenant); a service that "
        "keeps text (the review queue) erases it after this many days. None: that service's own default.",
    )

    prompt_screening: PromptScreening = Field(
        "before",
        description="before: the safety stage forwards the request to generation once its prompt is screened (the "
        "default; any producer). beside: the producer sent the request to the model's screened topic as well, so it "
        "is generated while the prompt is screened; the safety stage then answers on the reply topic (PromptCleared, "
        "or a content_blocked GenerationFailed) and the producer must release no output before PromptCleared. The "
        "ingress sets it when FERRY_INGRESS_PROMPT_SCREENING is beside.",
    )
    tools: list[FunctionTool] = Field(
        default_factory=list, description="Functions the model may call (chat only); empty: none."
    )
    tool_choice: ToolChoice = Field(
        "auto",
        description="With tools: none (the model answers in text), auto (it decides whether to call), required (it "
        "calls at least one; the calls are generated under the tools' schemas). Ignored without tools.",
    )
    tool_choice_function: str | None = Field(
        None,
        description="The one function the model must call (OpenAI's named tool_choice), with tool_choice required; "
        "its arguments are then generated under its parameters schema.",
    )
    parallel_tool_calls: bool = Field(True, description="Whether the model may make several calls in one answer.")
    screening_policy: str | None = Field(
        None,
        description="Digest of the tenant's prompt-screening policy as the producer last read it (the ingress: it is "
        "part of the response cache's key). A safety stage holding another digest reads the policy again before "
        "judging, so an answer is never cached under a policy it was not screened with. None: the stage's own.",
    )
    enable_thinking: bool | None = Field(
        None,
        description="Chat only: whether a reasoning model thinks before it answers, given to its chat template as "
        "enable_thinking (Qwen3, GLM) and as thinking (DeepSeek V3.1, Granite). None: the template's default.",
    )
    reasoning_effort: ReasoningEffort | None = Field(
        None, description="Chat only: given to the chat template as reasoning_effort (gpt-oss's reads it)."
    )
    thinking_token_budget: int | None = Field(
        None,
        ge=0,
        description="Chat only: the most tokens a reasoning model may think (vLLM's thinking_token_budget); once its "
        "think block has that many, only the block's end may follow. None: no limit but max_tokens. Ignored by a "
        "model that does not reason.",
    )
    add_generation_prompt: bool = Field(
        True,
        description="Chat only: the prompt ends with the opening of the assistant's turn, as the chat template writes "
        "it (vLLM's add_generation_prompt). False leaves it out: the model writes whatever the chat calls for next.",
    )
    documents: list[dict[str, str]] | None = Field(
        None,
        description="Chat only: documents the chat template reads (vLLM's documents, for retrieval-augmented "
        "generation), each a map of strings such as title and text. Screened like the turns. A model whose template "
        "reads none refuses them.",
    )
    continue_final_message: bool = Field(
        False,
        description="Chat only: the prompt ends inside the chat's last message, left open, and the model continues it "
        "(a prefill of its answer; vLLM's continue_final_message): the answer holds only what the model adds. The "
        "message is then screened like the other turns, even an assistant's. add_generation_prompt does not apply.",
    )
    truncate_prompt_tokens: int | None = Field(
        None,
        ge=-1,
        description="Keep only this many of the prompt's tokens, chat template included, cut from the side "
        "truncation_side names, so that a prompt longer than the model's context is served instead of refused "
        "(vLLM's truncate_prompt_tokens); -1: as many as the context holds less one for the answer. Not 0. More than "
        "the context fails the request (param truncate_prompt_tokens). None: no cut.",
    )
    truncation_side: Literal["left", "right"] = Field(
        "left",
        description="Which end truncate_prompt_tokens cuts: left keeps the prompt's last tokens (those the model "
        "answers after), right its first (vLLM's truncation_side).",
    )
    return_token_ids: bool = Field(
        False,
        description="Replies carry token ids (vLLM's return_token_ids): the prompt's, as the engine read it (chat "
        "template included), on the first TokensGenerated and on CompletionFinished; each event's generated tokens "
        "(TokensGenerated.token_ids), and all of them in CompletionFinished.token_ids.",
    )
    choice_of: RequestId | None = Field(
        None,
        description="For one of the n choices of a request with n > 1, each a request of its own (the ingress gives "
        "them the ids <id>-<i>): that request's id <id>, which its choices share; with a list of prompts "
        "(/v1/completions), <id>-p<k> for the choices of its k-th prompt. A prompt the choices share is put "
        "before reviewers once, as one item. None: a request of its own.",
    )

    def is_chat(self) -> bool:
        """Whether the request is a chat (messages, rendered with the model's template), not a raw prompt."""
        return bool(self.messages)

    def prompt_chars(self) -> int:
        """Characters of prompt the model reads, before its chat template: the prompt, or the turns with their tool
        calls, the documents, and the tools' signatures (0 for a prompt of token ids). For token estimates where no
        tokenizer runs."""
        if self.prompt is not None:
            return len(self.prompt)
        turns = sum(
            len(m.content) + len(m.reasoning or "") + sum(len(c.function.arguments) for c in m.tool_calls)
            for m in self.messages
        )
        documents = sum(len(value) for document in self.documents or [] for value in document.values())
        return turns + documents + sum(len(t.model_dump_json()) for t in self.tools)

    def prompt_tokens_estimate(self, chars_per_token: float = 4.0, template_tokens_per_message: int = 4) -> int:
        """The prompt's tokens where no tokenizer runs: counted when given as token ids; else its characters at
        ``chars_per_token`` a token, plus ``template_tokens_per_message`` of chat template per message (the role
        markers the usual templates add)."""
        if self.prompt_token_ids is not None:
            return len(self.prompt_token_ids)
        return math.ceil(self.prompt_chars() / chars_per_token) + template_tokens_per_message * len(self.messages)

    def token_weight(self, chars_per_token: float = 4.0, context: int | None = None) -> int:
        """Tokens the request may take, where no tokenizer runs (batch budgets, demand): its prompt's estimate and the
        most tokens it may generate; at most ``context`` (its model's max_model_len) when known, since the worker cuts
        max_tokens to what the context leaves, whatever a producer asked for."""
        tokens = self.prompt_tokens_estimate(chars_per_token) + self.sampling.max_tokens
        return tokens if context is None else min(tokens, context)

    @model_validator(mode="after")
    def _messages_or_prompt(self) -> CompletionRequested:
        if sum((bool(self.messages), self.prompt is not None, self.prompt_token_ids is not None)) != 1:
            raise ValueError("exactly one of messages (chat), prompt and prompt_token_ids (completion) must be given")
        if self.tools and not self.is_chat():
            raise ValueError("tools are for chat (messages) only")
        if self.documents and not self.is_chat():
            raise ValueError("documents are for chat (messages) only")
        if self.continue_final_message and not self.is_chat():
            raise ValueError("continue_final_message is for chat (messages) only")
        if self.truncate_prompt_tokens == 0:
            raise ValueError("truncate_prompt_tokens must be at least 1, or -1 (as many as the context holds)")
        if self.tool_choice_function is not None and (
            self.tool_choice != "required" or self.tool_choice_function not in {t.name for t in self.tools}
        ):
            raise ValueError("tool_choice_function must name one of tools, with tool_choice required")
        sampling = self.sampling
        if (
            self.tools
            and self.tool_choice != "none"
            and (sampling.logprobs is not None or sampling.response_format or sampling.structured_outputs)
        ):
            raise ValueError(
                "logprobs, response_format and structured_outputs are not served with tools the model may call"
            )
        return self


class RequestCancelled(Message):
    """Nobody wants this request's result any more; produced to ``<prefix>cancellations`` keyed by ``request_id``.

    Every worker and batcher reads every cancellation (no consumer group) and drops or aborts the request if it holds
    it; the requester gets a GenerationFailed with code ``cancelled`` or ``deadline_exceeded`` if it still listens."""

    request_id: str = Field(min_length=1, description="The request to stop.")
    model: str = Field(description="Registry id of the request's model.")
    reason: Literal["client_disconnected", "deadline_exceeded", "requested"] = Field(
        description="Why: the client went away, its deadline passed, or someone asked."
    )
    reply_topic: TopicName | None = Field(None, description="The request's reply topic, to tell the requester.")
    cancelled_at: datetime = Field(default_factory=utc_now, description="When the cancellation was decided (UTC).")


class LoadedModel(BaseModel):
    """One model a worker holds, as reported in its status."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model: str = Field(description="Registry id of the model.")
    variant: str = Field(description="Which variant is loaded (e.g. bf16, int8).")
    state: Literal["loading", "ready", "sleeping"] = Field(
        description="loading: not serving yet; ready: serving; sleeping: kept warm, not serving until woken."
    )
    memory_bytes: int = Field(
        0,
        ge=0,
        description="Memory the worker's budget counts for the model: its estimate (weights plus KV cache) until it is"
        " loaded, then the larger of that and measured_memory_bytes.",
    )
    measured_memory_bytes: int | None = Field(
        None,
        ge=0,
        description="What the model's engine took when it started: the unique memory of the engine process vLLM started"
        " plus the worker's own growth meanwhile (null while loading, or when not measured: on a GPU). Other models'"
        " activity during the load blurs it.",
    )
    last_used_at: datetime | None = Field(None, description="When a request last used it (UTC).")
    requests_found_loaded: int = Field(
        0, ge=0, description="Requests since the worker started that found this model ready (model cache hits)."
    )
    requests_waited_for_load: int = Field(
        0, ge=0, description="Requests since the worker started that waited for this model to load or wake (misses)."
    )


class ModelRequestCounts(BaseModel):
    """Model cache hits and misses of one model variant on one worker, kept after the model is evicted."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model: str = Field(description="Registry id of the model.")
    variant: str = Field(description="The variant the requests asked for (or the worker's default).")
    requests_found_loaded: int = Field(0, ge=0, description="Requests since the worker started that found it ready.")
    requests_waited_for_load: int = Field(
        0, ge=0, description="Requests since the worker started that waited for it to load or wake."
    )


class WorkerStatusReported(Message):
    """A worker's heartbeat with its capacity; produced every few seconds to ``<prefix>worker-status`` keyed by
    ``worker_id``. The batcher dispatches at once while workers have room; the scaler reads loaded models."""

    worker_id: str = Field(description="Unique id of the worker process.")
    models: list[LoadedModel] = Field(default_factory=list, description="Models the worker holds.")
    running: int = Field(ge=0, description="Requests generating now.")
    waiting: int = Field(ge=0, description="Requests taken from Kafka but not generating yet.")
    max_running: int = Field(ge=1, description="Requests the worker can generate at once (the engine's max_num_seqs).")
    kv_cache_free: float = Field(ge=0.0, le=1.0, description="Fraction of the KV cache that is free.")
    free_tokens: int = Field(
        ge=0, description="Tokens (prompt plus max new tokens) the worker can take on now without queueing."
    )
    draining: bool = Field(False, description="The worker is shutting down and takes no new work.")
    interval_seconds: float = Field(
        gt=0, description="Seconds until the next report; two missed reports mean the worker is gone."
    )
    model_requests: list[ModelRequestCounts] = Field(
        default_factory=list,
        description="Cumulative model cache counts of every model variant this worker was asked for since it started, "
        "evicted ones included (the counts in ``models`` leave with an evicted model). Empty from older workers.",
    )
    reported_at: datetime = Field(default_factory=utc_now, description="When the report was made (UTC).")


class QueueDepthReported(Message):
    """How much work waits for a model in the batcher; produced to ``<prefix>queue-status`` keyed by ``model``.
    The ingress refuses new work early (admission control) when the expected wait passes a request's deadline."""

    model: str = Field(description="Registry id of the model.")
    batcher_id: str = Field(description="The batcher instance reporting; depths of several instances add up.")
    waiting: int = Field(ge=0, description="Requests held by this batcher for the model.")
    waiting_tokens: int = Field(ge=0, description="Prompt plus max new tokens of the waiting requests.")
    waiting_by_priority: dict[str, int] = Field(
        default_factory=dict, description="Waiting requests per priority class."
    )
    expected_wait_seconds: float = Field(ge=0.0, description="Estimated wait of a request arriving now.")
    interval_seconds: float = Field(gt=0, description="Seconds until the next report.")
    reported_at: datetime = Field(default_factory=utc_now, description="When the report was made (UTC).")


class ModelPreloadRequested(Message):
    """Load (or wake) a model ahead of demand; produced to ``<prefix>worker-control`` by the scaler or an operator."""

    model: str = Field(description="Registry id of the model to load.")
    variant: str | None = Field(None, description="Variant to load; unset means the model's default.")
    worker_id: str | None = Field(None, description="Only this worker acts; unset means any worker that may host it.")
    reason: str = Field("", description="Why, for the audit trail (e.g. 'forecast 1400 req/h at 09:00').")
    requested_at: datetime = Field(default_factory=utc_now, description="When it was asked (UTC).")


class ModelEvictionRequested(Message):
    """Unload a model to free memory; produced to ``<prefix>worker-control`` by the scaler or an operator."""

    model: str = Field(description="Registry id of the model to unload.")
    worker_id: str | None = Field(None, description="Only this worker acts; unset means every worker holding it.")
    reason: str = Field("", description="Why, for the audit trail.")
    requested_at: datetime = Field(default_factory=utc_now, description="When it was asked (UTC).")


WorkerControl = ModelPreloadRequested | ModelEvictionRequested


class BatchFormed(Message):
    """The batcher grouped requests for one model; produced to ``<prefix>batches.<model>``."""

    batch_id: str = Field(description="Unique id of this batch.")
    model: str = Field(description="Registry id of the model every request in the batch uses.")
    requests: list[CompletionRequested] = Field(min_length=1, description="The requests, in dispatch order.")
    formed_at: datetime = Field(default_factory=utc_now, description="When the batch was closed (UTC).")


class Usage(BaseModel):
    """Token counts of one completion, as OpenAI reports them."""

    model_config = ConfigDict(frozen=True)

    prompt_tokens: int = Field(ge=0, description="Tokens in the prompt after the chat template.")
    completion_tokens: int = Field(ge=0, description="Tokens generated.")
    total_tokens: int = Field(ge=0, description="prompt_tokens + completion_tokens.")
    cached_prompt_tokens: int | None = Field(
        None,
        ge=0,
        description="Prompt tokens the engine took from its prefix cache (computed before, for a prompt with the same "
        "beginning and the same cache_salt) instead of computing them; None when not reported.",
    )
    reasoning_tokens: int | None = Field(
        None,
        ge=0,
        description="Of completion_tokens, those of the model's think block (its reasoning, markers left out), as its "
        "tokenizer splits that text; None when the model does not reason, or for a raw prompt (nothing is read as "
        "reasoning there).",
    )


class TokensGenerated(Message):
    """New text for a streaming request; ``sequence`` orders the events of one request from 0."""

    event: Literal["tokens_generated"] = "tokens_generated"
    request_id: str = Field(description="The request this text belongs to.")
    sequence: int = Field(ge=0, description="Position of this event among the request's reply events.")
    text: str = Field(description="The new text since the previous event.")
    token_count: int = Field(
        ge=0, description="How many tokens this event holds (its text's and its tool calls' pieces')."
    )
    text_offset: int | None = Field(
        None,
        ge=0,
        description="Characters of the completion that come before this text. A request redelivered after a worker "
        "died is generated again from the start (with the same seed); readers drop the part they already have.",
    )
    logprobs: list[TokenLogprob] | None = Field(
        None, description="One per token of this event, in order, when the request asked for logprobs."
    )
    token_offset: int | None = Field(
        None,
        ge=0,
        description="Tokens of the completion that come before this event's, set with logprobs or token_ids: what "
        "text_offset is to the text, this is to the logprobs and token ids.",
    )
    token_ids: list[int] | None = Field(
        None,
        description="The ids of this event's tokens (token_count of them: its text's, its reasoning's and its tool "
        "calls' pieces'), in order, when the request asked for them (return_token_ids).",
    )
    prompt_token_ids: list[int] | None = Field(
        None,
        description="The prompt's token ids as the engine read it (chat template included), on a request's first "
        "TokensGenerated (sequence 0) when it asked for token ids (return_token_ids).",
    )
    prompt_logprobs: PromptLogprobs | None = Field(
        None,
        description="The prompt's tokens and log-probabilities, on a request's first TokensGenerated (sequence 0) "
        "when it asked for prompt_logprobs.",
    )
    tool_calls: list[ToolCallPiece] = Field(
        default_factory=list,
        description="Pieces of tool calls the model is writing, when the request has tools it may call: their text "
        "is not in ``text``. Empty otherwise.",
    )
    reasoning: str = Field(
        "",
        description="New reasoning since the previous event: a reasoning model's thinking (the text of its think "
        "block, markers left out), which is not in ``text``. Empty otherwise.",
    )
    reasoning_offset: int | None = Field(
        None,
        ge=0,
        description="Characters of the reasoning that come before this event's: what text_offset is to the text. Set "
        "when the output is read for reasoning (a chat request to a reasoning model).",
    )
    prompt_text: str | None = Field(
        None,
        description="The prompt's text, on a request's first TokensGenerated (sequence 0) when its prompt was given "
        "as token ids (prompt_token_ids): what an echo puts before the completion.",
    )
    prompt_token_count: int | None = Field(
        None,
        ge=0,
        description="How many tokens the prompt has as the engine read it (chat template included), on a request's "
        "first TokensGenerated (sequence 0): a stream's usage so far, before the final event brings the usage. None "
        "from workers that predate it.",
    )


FinishReason = Literal["stop", "length", "abort", "tool_calls"]


class CompletionFinished(Message):
    """The request completed; always the last reply event of a successful request."""

    event: Literal["completion_finished"] = "completion_finished"
    request_id: str = Field(description="The request that finished.")
    sequence: int = Field(ge=0, description="Position of this event among the request's reply events.")
    model: str = Field(description="Registry id of the model that generated the text.")
    text: str = Field(description="The whole generated text.")
    finish_reason: FinishReason = Field(description="Why generation ended, as in OpenAI's API.")
    usage: Usage = Field(description="Token counts.")
    created_at: datetime = Field(default_factory=utc_now, description="When generation finished (UTC).")
    variant: str | None = Field(
        None,
        description="The model variant that generated the text (e.g. fp32, int8); on a cache replay, the one that "
        "generated the cached answer (unset for entries stored before variants were recorded).",
    )
    logprobs: list[TokenLogprob] | None = Field(
        None, description="One per generated token, in order, when the request asked for logprobs."
    )
    prompt_logprobs: PromptLogprobs | None = Field(
        None, description="The prompt's tokens and log-probabilities, when the request asked for prompt_logprobs."
    )
    tool_calls: list[ToolCall] | None = Field(
        None,
        description="The tool calls the model made, in order; None when it made none. ``text`` then holds only the "
        "text outside the calls (often empty), and TokensGenerated deltas never carry a call's text.",
    )
    reasoning: str | None = Field(
        None,
        description="A reasoning model's thinking (the text of its think block, markers left out); None when it wrote "
        "none. ``text`` then holds only the answer after it.",
    )
    prompt_text: str | None = Field(
        None, description="The prompt's text, when it was given as token ids (prompt_token_ids); None otherwise."
    )
    token_ids: list[int] | None = Field(
        None,
        description="Every generated token's id, in order (usage.completion_tokens of them, the end-of-sequence token "
        "included), when the request asked for them (return_token_ids).",
    )
    prompt_token_ids: list[int] | None = Field(
        None,
        description="The prompt's token ids as the engine read it (chat template included), when the request asked "
        "for token ids (return_token_ids).",
    )


class GenerationFailed(Message):
    """The request could not be completed; always the last reply event of a failed request."""

    event: Literal["generation_failed"] = "generation_failed"
    request_id: str = Field(description="The request that failed.")
    sequence: int = Field(ge=0, description="Position of this event among the request's reply events.")
    code: str = Field(description="Machine-readable reason, e.g. invalid_request, model_unavailable, engine_error.")
    message: str = Field(description="Human-readable explanation.")
    param: str | None = Field(
        None, description="The request parameter the failure is about, when it is about one (e.g. response_format)."
    )
    retryable: bool = Field(False, description="Whether sending the same request again may succeed.")


class PromptCleared(Message):
    """The safety stage let a prompt screened beside generation through (``prompt_screening="beside"``): its output may
    now reach the client. Sent once, to the request's reply topic; a refused prompt gets a GenerationFailed with code
    ``content_blocked`` instead, and a held one gets either when a reviewer decides."""

    event: Literal["prompt_cleared"] = "prompt_cleared"
    request_id: str = Field(description="The request whose prompt was cleared.")
    by: Literal["screening", "review"] = Field(
        description="screening: the classifiers and the tenant's policy allowed it (perhaps flagged for a later "
        "look); review: it was held and a reviewer, or the tenant's policy at the review deadline, released it."
    )


MODERATION_MAX_INPUTS = 128
MODERATION_MAX_CHARACTERS = 32_000


class ModerationRequested(Message):
    """Texts to screen and judge, nothing to generate (OpenAI's /v1/moderations). Produced to
    ``<prefix>moderations`` keyed by ``request_id``; the safety stage answers ModerationCompleted (or a
    GenerationFailed) on the reply topic. Nothing is filed for review and no text is stored."""

    event: Literal["moderation_requested"] = "moderation_requested"
    request_id: RequestId = Field(description="Unique id; the answer carries it back.")
    inputs: list[str] = Field(
        min_length=1,
        max_length=MODERATION_MAX_INPUTS,
        description="The texts to judge, each on its own; the answer has one result per text, in this order.",
    )
    reply_topic: TopicName = Field(description="Topic the safety stage answers on (the requester creates it).")
    tenant_id: StoredKey | None = Field(
        None, description="Tenant whose prompt policy judges the texts; None: the default policy."
    )
    screening_policy: str | None = Field(
        None, description="Digest of the tenant's policy as the producer last read it, as on CompletionRequested."
    )
    deadline_at: datetime | None = Field(None, description="After this instant (UTC) the answer is no longer wanted.")
    trace_context: dict[str, str] = Field(
        default_factory=dict, description="W3C trace context (traceparent, tracestate) of the request."
    )

    @model_validator(mode="after")
    def _bounded(self) -> ModerationRequested:
        characters = sum(len(text) for text in self.inputs)
        if characters > MODERATION_MAX_CHARACTERS:
            raise ValueError(
                f"the inputs hold {characters} characters, more than the {MODERATION_MAX_CHARACTERS} screened at once"
            )
        return self


class ModerationResult(BaseModel):
    """The judgement of one text, under the tenant's prompt policy."""

    model_config = ConfigDict(frozen=True)

    flagged: bool = Field(description="Whether the policy would do anything but allow this text as a prompt.")
    action: Literal["allow", "release", "hold", "block"] = Field(
        description="What the policy would do with it as a prompt: allow, release then review, hold for review, "
        "or block."
    )
    categories: list[str] = Field(description="Every category whose score crossed one of the policy's thresholds.")
    scores: dict[str, float] = Field(
        description="Score in [0, 1] per category screened (the highest any classifier gave)."
    )


class ModerationCompleted(Message):
    """The safety stage's answer to a ModerationRequested: the last event of that request."""

    event: Literal["moderation_completed"] = "moderation_completed"
    request_id: str = Field(description="The request answered.")
    sequence: int = Field(0, ge=0, description="Position of this event among the request's reply events (the only).")
    results: list[ModerationResult] = Field(description="One result per input text, in the request's order.")


ReplyEvent = TokensGenerated | CompletionFinished | GenerationFailed | PromptCleared | ModerationCompleted
"""Any event on a request's reply topic; ``event`` tells which. Workers publish the first three; PromptCleared comes
from the safety stage, only for requests whose producer asked for it, and ModerationCompleted answers a
ModerationRequested."""
FINAL_EVENTS = (CompletionFinished, GenerationFailed, ModerationCompleted)
"""The events that end a request's replies."""
reply_event_adapter: TypeAdapter[ReplyEvent] = TypeAdapter(Annotated[ReplyEvent, Field(discriminator="event")])


class ContentFlagged(Message):
    """Screening flagged a prompt or an output for human review; produced to ``<prefix>safety.flagged`` keyed by
    ``request_id`` by the safety stage (prompts) and by workers (outputs). Text travels only when the tenant opted in
    (``retain_text``); otherwise reviewers see the redacted snippet."""

    request_id: StoredKey = Field(description="The request whose content was flagged.")
    tenant_id: StoredKey | None = Field(None, description="Tenant that owns the request, when known.")
    model: str = Field(description="Registry id of the request's model.")
    stage: Literal["prompt", "output"] = Field(description="Whether the prompt or the generated output was flagged.")
    action: Literal["hold", "release", "block"] = Field(
        description="hold: not delivered until a reviewer approves; release: delivered, reviewed afterwards; "
        "block: refused already, reviewed to label."
    )
    categories: list[str] = Field(description="Categories whose scores crossed the policy's thresholds.")
    scores: dict[str, float] = Field(description="Score in [0, 1] per category, from the combined classifiers.")
    snippet: str = Field(description="Up to a few hundred characters of the content with PII and secrets masked.")
    text: str | None = Field(None, description="The full content, only when the tenant set retain_text.")
    reply_topic: str = Field(description="The request's reply topic, to tell the requester about a decision.")
    held_request: CompletionRequested | None = Field(
        None, description="A held prompt's request, forwarded on approval (kept only until the decision)."
    )
    held_completion: CompletionFinished | None = Field(
        None, description="A held output's final event, delivered on approval (kept only until the decision)."
    )
    held_delta: TokensGenerated | None = Field(
        None, description="The part of a held output a streaming client has not seen, delivered before the final event."
    )
    flagged_at: datetime = Field(default_factory=utc_now, description="When screening flagged it (UTC).")
    retention_days: int | None = Field(
        None, ge=0, description="The request's retention_days: the review queue erases ``text`` after this many days."
    )
    choice_of: StoredKey | None = Field(
        None,
        description="A flagged prompt's CompletionRequested.choice_of: the review queue keeps one item for the prompt "
        "of all the choices of that request, and a decision on it applies to each of them.",
    )


class MessageDeadLettered(Message):
    """A record could not be processed; it is parked here with the reason instead of blocking or vanishing."""

    source_topic: str = Field(description="Topic the record was read from.")
    partition: int = Field(description="Partition the record was read from.")
    offset: int = Field(description="Offset of the record.")
    key: str | None = Field(None, description="The record's key, decoded as UTF-8 with replacement.")
    payload: str = Field(description="The record's value, decoded as UTF-8 with replacement.")
    reason: str = Field(description="Why the record was rejected.")
    service: str = Field(description="Service that rejected it.")
    dead_lettered_at: datetime = Field(default_factory=utc_now, description="When it was rejected (UTC).")
