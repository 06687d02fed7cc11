"""OpenAI API schemas (the subset the platform serves). Requests are tolerant readers: unknown fields are accepted and
logged as ignored, as vLLM's server does. Known fields take their JSON types only, as OpenAI's API does ("0.5" is not a
temperature): request models are strict (STRICT_INPUT), so that the published spec is what the server accepts."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from shared.contracts import (
    MAX_ALLOWED_TOKEN_IDS,
    MAX_BAD_WORDS,
    MAX_LOGIT_BIAS,
    MAX_STOP_TOKEN_IDS,
    MAX_TOP_LOGPROBS,
    VARIANT_NAME_PATTERN,
    BatchingProfile,
    Priority,
    ReasoningEffort,
    Seed,
)
from shared.registry import ModelRecord

NonEmpty = Annotated[str, Field(min_length=1)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
SystemFingerprint = Annotated[
    str | None,
    Field(
        description="ferry: the model variant that generated the text (fp32, fp16, int8, ...), the backend setting "
        "that changes answers; on a stream, in the chunk with the finish reason and in the usage chunk. Null when "
        "unknown (a response cached before variants were recorded)."
    ),
]


STRICT_INPUT = ConfigDict(strict=True)
MAX_DOCUMENTS = 128
"""Documents one chat may give its template."""
# Each choice is a generation of its own (see serving.choice_requests); OpenAI's API allows up to 128.
MAX_CHOICES = 128


ServiceTier = Literal["auto", "default", "flex", "scale", "priority"]

SERVICE_TIERS: dict[str, tuple[Priority, BatchingProfile]] = {
    "flex": ("best_effort", "cost"),
    "priority": ("interactive", "latency"),
}
"""OpenAI's processing tiers that ask for a kind of service, as ferry's scheduling: flex (cheaper, slower, at times
unavailable) is the batching profile that waits longest for the fullest batches, at the priority that takes leftover
room; priority (faster) is the profile that waits least, at the highest priority (capped at the tenant's ceiling)."""


def _prompt_form(value: Any) -> str | None:
    """Which of a prompt's four forms ``value`` has, read from its first item: it is then validated as that form
    alone, so that an error names the fault in it (a 129th prompt, not "should be an integer")."""
    if isinstance(value, str):
        return "text"
    if not isinstance(value, list):
        return None
    first = value[0] if value else ""
    if isinstance(first, list):
        return "token_id_lists"
    return "token_ids" if isinstance(first, int) and not isinstance(first, bool) else "texts"


PromptIn = Annotated[
    Annotated[NonEmpty, Tag("text")]
    | Annotated[TokenIds, Tag("token_ids")]
    | Annotated[list[NonEmpty], Field(min_length=1, max_length=MAX_CHOICES), Tag("texts")]
    | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_CHOICES), Tag("token_id_lists")],
    Discriminator(
        _prompt_form,
        custom_error_type="prompt_form",
        custom_error_message="Input should be a string, an array of token ids, or an array of either",
    ),
]
"""/v1/completions' prompt: text, token ids, or a list of either (OpenAI's four forms)."""


class TextPart(BaseModel):
    model_config = STRICT_INPUT

    type: Literal["text"]
    text: str

    @field_validator("type", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        # clients send images, audio and files to text models by mistake: say so rather than "should be 'text'"
        if isinstance(value, str) and value != "text":
            raise PydanticCustomError(
                "unsupported_content", "{kind} parts are not served: ferry's models read text only", {"kind": value}
            )
        return value


FUNCTION_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function names


class FunctionCallIn(BaseModel):
    model_config = STRICT_INPUT

    name: str = Field(description="The function called.")
    arguments: str = Field(description="Its arguments as JSON text.")


class ToolCallIn(BaseModel):
    model_config = STRICT_INPUT

    id: str = Field(description="The call's id, as the assistant's response gave it.")
    type: Literal["function"]
    function: FunctionCallIn


class ChatMessageIn(BaseModel):
    # the spec says what the validator checks: content may be null only in an assistant turn that calls tools, a tool
    # turn names the call it answers, and only an assistant turn has reasoning
    model_config = STRICT_INPUT | ConfigDict(
        extra="allow",
        json_schema_extra={
            "allOf": [
                {
                    "if": {"properties": {"role": {"const": "tool"}}, "required": ["role"]},
                    "then": {
                        "required": ["tool_call_id", "content"],
                        "properties": {"content": {"type": ["string", "array"]}},
                    },
                },
                {
                    "if": {"properties": {"role": {"enum": ["system", "developer", "user"]}}, "required": ["role"]},
                    "then": {"required": ["content"], "properties": {"content": {"type": ["string", "array"]}}},
                },
                {
                    "if": {"properties": {"role": {"not": {"const": "assistant"}}}, "required": ["role"]},
                    "then": {"properties": {"reasoning": {"type": "null"}, "reasoning_content": {"type": "null"}}},
                },
            ]
        },
    )

    role: Literal["system", "developer", "user", "assistant", "tool"]
    tool_calls: list[ToolCallIn] | None = Field(
        None, description="An assistant turn's tool calls, as its response gave them."
    )
    tool_call_id: str | None = Field(
        None, validate_default=True, description="A tool turn's: the id of the call whose result it gives."
    )
    name: str | None = None
    reasoning: str | None = Field(
        None, description="vLLM: an assistant turn's thinking, as its response gave it (message.reasoning)."
    )
    reasoning_content: str | None = Field(None, description="vLLM: the former name of reasoning, still taken.")
    refusal: str | None = Field(
        None,
        description="An assistant turn's refusal, as an OpenAI response gave it (message.refusal, with content null): "
        "the model reads it as the turn's text.",
    )
    # after role, tool_calls and refusal, which its validator reads: errors then name the field itself
    content: str | list[TextPart] | None = Field(
        None,
        validate_default=True,
        description="The turn's text; may be null only in an assistant turn that calls tools or refused.",
    )

    @field_validator("tool_calls")
    @classmethod
    def _calls_in_assistant_turns(cls, value: list[ToolCallIn] | None, info: ValidationInfo) -> list[ToolCallIn] | None:
        if value and info.data.get("role") != "assistant":
            raise ValueError("only an assistant turn has tool_calls")
        return value

    @field_validator("reasoning", "reasoning_content", "refusal")
    @classmethod
    def _only_in_assistant_turns(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("role") != "assistant":
            raise ValueError(f"only an assistant turn has {info.field_name}")
        return value

    @field_validator("tool_call_id")
    @classmethod
    def _id_in_tool_turns(cls, value: str | None, info: ValidationInfo) -> str | None:
        if (info.data.get("role") == "tool") != (value is not None):
            raise ValueError("a tool turn, and only a tool turn, has a tool_call_id")
        return value

    @field_validator("content")
    @classmethod
    def _content_unless_calling(
        cls, value: str | list[TextPart] | None, info: ValidationInfo
    ) -> str | list[TextPart] | None:
        answered = info.data.get("tool_calls") or info.data.get("refusal") is not None
        if value is None and not (info.data.get("role") == "assistant" and answered):
            raise PydanticCustomError(
                "missing", "Field required (null only in an assistant turn with tool_calls or a refusal)"
            )
        return value

    def text(self) -> str:
        if self.content is None:
            return self.refusal or ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatTemplateKwargs(BaseModel):
    """vLLM's chat_template_kwargs, limited to the switches of reasoning models: a template's other variables are not
    for clients to set here."""

    model_config = STRICT_INPUT | ConfigDict(extra="forbid")

    enable_thinking: bool | None = Field(
        None, description="Qwen3's and GLM's switch: false, the model answers at once."
    )
    thinking: bool | None = Field(None, description="DeepSeek V3.1's and Granite's name for the same switch.")


class FunctionIn(BaseModel):
    model_config = STRICT_INPUT

    name: str = Field(pattern=FUNCTION_NAME_PATTERN, description="The function's name.")
    description: str | None = Field(None, description="What the function does; shown to the model.")
    parameters: dict[str, Any] | None = Field(
        None,
        description="JSON Schema of the arguments object. Forced calls (tool_choice required or this function) are "
        "generated under it; a schema the engine cannot use gets a 400 with param tools.",
    )
    strict: bool | None = Field(
        None, description="Accepted; forced calls follow the schema either way, and calls the model chooses do not."
    )


class ToolIn(BaseModel):
    model_config = STRICT_INPUT

    type: Literal["function"]
    function: FunctionIn


class NamedFunction(BaseModel):
    model_config = STRICT_INPUT

    name: str = Field(description="One of the request's tools.")


class NamedToolChoice(BaseModel):
    model_config = STRICT_INPUT

    type: Literal["function"]
    function: NamedFunction


class JsonSchemaSpec(BaseModel):
    model_config = STRICT_INPUT | ConfigDict(populate_by_name=True)

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$", description="The format's name.")
    description: str | None = Field(None, description="What the format is for; not shown to the model.")
    schema_: dict[str, Any] = Field(
        alias="schema",
        description="The JSON Schema the output must match, enforced as written. A schema the engine cannot use gets "
        "a 400 with param response_format.",
    )
    strict: bool | None = Field(
        None,
        description="true: no object of the output has a property the schema does not list, unless the schema says "
        "additionalProperties (OpenAI's strict mode). The schema is enforced either way.",
    )


class ResponseFormatIn(BaseModel):
    # the spec says what the validator checks, so that generated clients and fuzzers know it
    model_config = STRICT_INPUT | ConfigDict(
        json_schema_extra={
            "if": {"properties": {"type": {"const": "json_schema"}}, "required": ["type"]},
            "then": {"required": ["json_schema"], "properties": {"json_schema": {"type": "object"}}},
        }
    )

    type: Literal["text", "json_object", "json_schema"] = Field(
        description="text: free text (the default). json_object: any JSON object. json_schema: JSON matching "
        "json_schema.schema."
    )
    json_schema: JsonSchemaSpec | None = Field(None, description="Required with type json_schema, else ignored.")

    @model_validator(mode="after")
    def _schema_with_json_schema(self) -> ResponseFormatIn:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("json_schema is required when type is json_schema")
        return self


class StructuredOutputsIn(BaseModel):
    """vLLM's structured_outputs: exactly one of choice, regex and grammar."""

    model_config = STRICT_INPUT | ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1, "maxProperties": 1})

    choice: Annotated[list[NonEmpty], Field(min_length=1, max_length=256)] | None = Field(
        None, description="The output is exactly one of these strings."
    )
    regex: NonEmpty | None = Field(None, description="The whole output matches this regular expression.")
    grammar: NonEmpty | None = Field(
        None, description="The output is a sentence of this context-free grammar (EBNF/GBNF or Lark, as vLLM takes it)."
    )

    @model_validator(mode="before")
    @classmethod
    def _json_is_response_format_s(cls, data: Any) -> Any:
        if isinstance(data, dict) and {"json", "json_object"} & data.keys():
            raise ValueError('for JSON use response_format (type "json_schema" or "json_object")')
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> StructuredOutputsIn:
        if len(self.model_fields_set) != 1 or all(v is None for v in (self.choice, self.regex, self.grammar)):
            raise ValueError("give exactly one of choice, regex and grammar")
        return self


class StreamOptions(BaseModel):
    model_config = STRICT_INPUT

    include_usage: bool = False
    continuous_usage_stats: bool = Field(
        False,
        description="vLLM: with include_usage, every chunk also carries the usage so far (the prompt's tokens and "
        "those of the choice generated by then).",
    )


class SamplingFields(BaseModel):
    """What chat and plain completions share: sampling, streaming, and the platform's scheduling hints."""

    model_config = STRICT_INPUT | ConfigDict(extra="allow")

    model: str = Field(min_length=1, description="A model id from GET /v1/models.", examples=["tiny-random"])
    stream: bool = False
    stream_options: StreamOptions | None = Field(None, description="Only with stream true, as in OpenAI's API.")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: NonEmpty | Annotated[list[NonEmpty], Field(max_length=4)] | None = Field(
        None, description="Up to 4 non-empty sequences that end generation."
    )
    seed: Seed | None = None
    presence_penalty: float | None = Field(
        None, ge=-2, le=2, description="Penalises tokens already in the output, once each; 0 (the default) is off."
    )
    frequency_penalty: float | None = Field(
        None, ge=-2, le=2, description="Penalises tokens by how often they are in the output; 0 (the default) is off."
    )
    response_format: ResponseFormatIn | None = Field(
        None,
        description="JSON output, enforced token by token by the engine's grammar-guided decoding: an output that ends "
        "with finish_reason stop parses; one cut short by max_tokens (length) may not.",
    )
    logit_bias: (
        Annotated[
            dict[Annotated[str, Field(pattern=r"^[0-9]{1,9}$")], Annotated[float, Field(ge=-100, le=100)]],
            Field(max_length=MAX_LOGIT_BIAS),
        ]
        | None
    ) = Field(
        None,
        description=f"Maps token ids (of the model's tokenizer, as strings) to a bias from -100 to 100 added to their "
        f"logits before sampling: -100 in effect bans a token, 100 in effect forces it. At most {MAX_LOGIT_BIAS} "
        "tokens; an id outside the model's vocabulary gets a 400 naming logit_bias (in a stream, an error event).",
        examples=[{"50256": -100}],
    )
    # vLLM's sampling options beyond OpenAI's, as vLLM's server takes them (extra_body in OpenAI's clients)
    structured_outputs: StructuredOutputsIn | None = Field(
        None,
        description="vLLM: the output is one of a list of strings (choice), matches a regular expression (regex) or "
        "follows a grammar (grammar), enforced token by token by grammar-guided decoding. Not with a JSON "
        "response_format, nor with tools the model may call. One the engine cannot compile gets a 400 naming it.",
    )
    top_k: int | None = Field(
        None, ge=-1, description="vLLM: sample among this many most likely tokens only; 0 or -1 (the default) is off."
    )
    min_p: float | None = Field(
        None,
        ge=0,
        le=1,
        description="vLLM: drop tokens less likely than this fraction of the most likely token's probability; 0 (the "
        "default) is off.",
    )
    repetition_penalty: float | None = Field(
        None,
        gt=0,
        le=2,
        description="vLLM: penalises tokens already in the prompt or the output, as Hugging Face's "
        "repetition_penalty; above 1 discourages repeats, 1 (the default) is off.",
    )
    min_tokens: int | None = Field(
        None,
        ge=0,
        description="vLLM: tokens to generate before the end of the turn may be; at most max_tokens. A JSON "
        "response_format or a forced tool call still ends once its JSON is complete.",
    )
    ignore_eos: bool | None = Field(
        None, description="vLLM: keep generating past the end of turn, up to max_tokens or a stop; false by default."
    )
    stop_token_ids: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=MAX_STOP_TOKEN_IDS)] | None = Field(
        None,
        description="vLLM: token ids (of the model's tokenizer) that end generation, left out of the text; an id "
        "outside the vocabulary gets a 400 naming stop_token_ids.",
    )
    include_stop_str_in_output: bool | None = Field(
        None, description="vLLM: the text keeps the stop string that ended it; false by default."
    )
    bad_words: Annotated[list[NonEmpty], Field(max_length=MAX_BAD_WORDS)] | None = Field(
        None, description=f"vLLM: words the output never holds (at most {MAX_BAD_WORDS})."
    )
    allowed_token_ids: (
        Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=MAX_ALLOWED_TOKEN_IDS)] | None
    ) = Field(
        None,
        description="vLLM: only these token ids (of the model's tokenizer) may be sampled; an id outside the "
        "vocabulary gets a 400 naming allowed_token_ids.",
    )
    return_token_ids: bool | None = Field(
        None,
        description="vLLM: the answer carries token ids: the prompt's as the model read it, chat template included "
        "(prompt_token_ids: a chat's at the top, a completion's in each choice; when streaming, in the first chunk of "
        "each choice) and each choice's generated tokens (token_ids, in each chunk for its tokens when streaming; "
        "joined, they are the choice's, the end-of-sequence token included). A chat with include_reasoning false gets "
        "no generated token ids: they would show the thinking left out.",
    )
    truncate_prompt_tokens: Annotated[int, Field(ge=-1, json_schema_extra={"not": {"const": 0}})] | None = Field(
        None,
        description="vLLM: keep only this many of the prompt's tokens (chat template included), cut from the side "
        "truncation_side names, so that a prompt longer than the model's context is answered instead of refused; -1 "
        "keeps as many as the context holds less one for the answer. Not 0; more than the model's context is a 400. "
        "With echo, the prompt echoed is the one cut. The safety stage screens the whole prompt.",
    )
    truncation_side: Literal["left", "right"] | None = Field(
        None,
        description="vLLM: which end truncate_prompt_tokens cuts: left (the default) keeps the prompt's last tokens, "
        "right its first.",
    )
    skip_special_tokens: bool | None = Field(
        None,
        description="vLLM: false keeps the special tokens the model writes (its tokenizer's, such as <|im_start|>) in "
        "the text; true (the default) leaves them out. A stop or end-of-sequence token is never in the text.",
    )
    spaces_between_special_tokens: bool | None = Field(
        None,
        description="vLLM: with skip_special_tokens false, false writes two special tokens in a row side by side, "
        "without the space some tokenizers decode between them; true (the default) leaves the tokenizer's text.",
    )
    return_tokens_as_token_ids: bool | None = Field(
        None,
        description="vLLM: logprobs name each token (and each alternative) 'token_id:<id>' instead of its text, so "
        "that tokens whose text is not valid UTF-8 alone, or that decode alike, can be told apart. bytes and "
        "text_offset still follow the text.",
    )
    n: int = Field(
        1,
        ge=1,
        le=MAX_CHOICES,
        description=f"How many choices to generate, each sampled independently (at most {MAX_CHOICES}). Usage counts "
        "the prompt once and every choice's tokens; rate limits charge max_tokens for each choice.",
    )
    user: str | None = None
    priority: Priority | None = Field(
        None, description="ferry: priority class (also the x-ferry-priority header); the tenant's default if unset."
    )
    service_tier: ServiceTier | None = Field(
        None,
        description="OpenAI's processing tier, read as ferry's scheduling: flex is the cost batching profile at "
        "best_effort priority, priority the latency profile at interactive priority (or the tenant's highest); auto, "
        "default and scale keep the tenant's defaults. priority and batching_profile, when set, win. The answer does "
        "not name the tier.",
    )
    batching_profile: BatchingProfile | None = Field(
        None,
        description="ferry: batching profile (or the x-ferry-batching-profile header); tenant default if unset.",
    )
    variant: Annotated[str, Field(pattern=VARIANT_NAME_PATTERN)] | None = Field(
        None,
        description="ferry: model variant (fp32, fp16, int8, ...; or the x-ferry-variant header): a cheaper quantized "
        "one or a more exact one. Unset: the tenant's default, else the model's default variant in the registry.",
        examples=["int8"],
    )
    variant_fallback: bool = Field(
        True,
        description="ferry: whether the model's default variant may answer when the one asked for cannot run on the "
        "serving hardware; false gets a 400 variant_unavailable (or an error event when streaming) instead.",
    )

    @field_validator("stream_options")
    @classmethod
    def _stream_options_with_stream(cls, value: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if value is not None and not info.data.get("stream"):  # OpenAI and vLLM refuse it too
            raise ValueError("stream_options is only allowed when stream is true")
        return value

    @field_validator("structured_outputs")
    @classmethod
    def _not_with_json_output(
        cls, value: StructuredOutputsIn | None, info: ValidationInfo
    ) -> StructuredOutputsIn | None:
        form = info.data.get("response_format")
        if value is not None and form is not None and form.type != "text":
            raise ValueError("not with a JSON response_format: give one or the other")
        return value

    @field_validator("truncate_prompt_tokens")
    @classmethod
    def _keeps_a_token(cls, value: int | None) -> int | None:
        if value == 0:
            raise ValueError("truncate_prompt_tokens must be at least 1, or -1 (as many as the context holds)")
        return value

    @field_validator("min_tokens")
    @classmethod
    def _min_tokens_within_max_tokens(cls, value: int | None, info: ValidationInfo) -> int | None:
        _check_min_tokens(value, info.data.get("max_tokens"), "max_tokens")
        return value

    def choice_count(self) -> int:
        """How many completions the request asks for: n (for each prompt of a prompt list)."""
        return self.n


def _check_min_tokens(min_tokens: int | None, max_tokens: int | None, name: str) -> None:
    if min_tokens is not None and max_tokens is not None and min_tokens > max_tokens:
        raise ValueError(f"min_tokens ({min_tokens}) is more than {name} ({max_tokens})")


class ChatCompletionRequest(SamplingFields):
    # the spec says what the validator checks, so that generated clients and fuzzers know it
    model_config = SamplingFields.model_config | ConfigDict(
        json_schema_extra={
            "if": {"properties": {"top_logprobs": {"type": "integer", "minimum": 1}}, "required": ["top_logprobs"]},
            "then": {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}},
        }
    )

    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = Field(
        None,
        description="Return each output token's log-probability, in choices[].logprobs.content (in every chunk when "
        "streaming, for the chunk's tokens). These are the model's own, before temperature, top_p and penalties.",
    )
    top_logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        description="With logprobs true: also the log-probabilities of this many most likely tokens at each position.",
    )

    @field_validator("max_completion_tokens")
    @classmethod
    def _room_for_min_tokens(cls, value: int | None, info: ValidationInfo) -> int | None:
        _check_min_tokens(info.data.get("min_tokens"), value, "max_completion_tokens")
        return value

    @field_validator("continue_final_message")
    @classmethod
    def _one_way_to_end_the_prompt(cls, value: bool, info: ValidationInfo) -> bool:
        # as vLLM's server: an explicit add_generation_prompt true cannot go with continuing the last message
        if value and info.data.get("add_generation_prompt"):
            raise ValueError("not with add_generation_prompt true: the prompt ends either way, not both")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_with_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value and not info.data.get("logprobs"):  # 0 asks for nothing, as before logprobs were served
            raise ValueError("top_logprobs above 0 needs logprobs: true")
        return value

    tools: list[ToolIn] | None = Field(
        None,
        max_length=128,
        description="Functions the model may call. Calls come back in choices[].message.tool_calls (when streaming, "
        "each call opened in one delta, its arguments in pieces after). Not with logprobs, response_format or "
        "structured_outputs.",
    )
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None,
        description="none: answer in text (the tools are not shown to the model). auto (the default with tools): the "
        "model decides. required, or a named function: the model calls (that function), its arguments generated "
        "under the parameters schema.",
    )
    parallel_tool_calls: bool | None = Field(None, description="false: at most one call per answer.")
    reasoning_effort: ReasoningEffort | None = Field(
        None,
        description="For reasoning models: none asks the model to answer without thinking (a template's "
        "enable_thinking false); any other value asks it to think. Given to the template as reasoning_effort too.",
    )
    chat_template_kwargs: ChatTemplateKwargs | None = Field(
        None,
        description="vLLM: variables for the model's chat template; only the thinking switches are taken, and they "
        "win over reasoning_effort.",
    )
    thinking_token_budget: int | None = Field(
        None,
        ge=0,
        description="vLLM: the most tokens a reasoning model may think; once its think block has that many, it must "
        "end the block and answer. Unset: no limit but max_tokens. Ignored by a model that does not reason; refused "
        "(400) for a model whose thinking vLLM's own reasoning parser reads (named in its registry entry).",
    )
    add_generation_prompt: bool | None = Field(
        None,
        description="vLLM: false leaves the opening of the assistant's turn out of the prompt, so the model writes "
        "whatever the chat calls for next. Unset: true, unless continue_final_message.",
    )
    continue_final_message: bool = Field(
        False,
        description="vLLM: the prompt ends inside the last message, left open, and the model continues it (a prefill "
        "of its answer, as in vLLM's server): the answer holds only what the model adds. Not with "
        "add_generation_prompt true. The message is screened like the other turns, an assistant's too.",
    )
    documents: list[dict[str, str]] | None = Field(
        None,
        max_length=MAX_DOCUMENTS,
        description="vLLM: documents for the chat template to show the model (retrieval-augmented generation), each a "
        "map of strings such as title and text. Screened like the turns. A model whose chat template reads none "
        "refuses them (400).",
    )
    echo: bool = Field(
        False,
        description="vLLM: when the last message is an assistant's, the answer's content begins with it (with "
        "continue_final_message, the whole of the message the model finished).",
    )
    include_reasoning: bool = Field(
        True,
        description="vLLM: false leaves a reasoning model's thinking out of the response (message.reasoning and the "
        "stream's reasoning deltas); its tokens still count in usage.",
    )

    # Accepted only at values that ask for nothing ferry lacks; anything else gets a 400 unsupported_parameter
    # (unsupported_option), since ignoring it would hand the client another kind of answer than it asked for.
    # The spec lists only the accepted values (json_schema_extra), so that clients and fuzzers know them; the types
    # stay wide so that other values reach unsupported_option and get its error.
    functions: list[dict[str, Any]] | None = Field(
        None,
        description="Not supported (deprecated): null or empty.",
        json_schema_extra={"maxItems": 0},
    )
    function_call: str | dict[str, Any] | None = Field(
        None,
        description='Not supported (deprecated): null or "none".',
        json_schema_extra={"enum": ["none", None]},
    )
    modalities: list[str] | None = Field(
        None,
        description='Only ["text"] (or null): no audio output.',
        json_schema_extra={"items": {"const": "text"}, "minItems": 1},
    )
    audio: dict[str, Any] | None = Field(
        None, description="Not supported (no audio output): null.", json_schema_extra={"enum": [None]}
    )
    web_search_options: dict[str, Any] | None = Field(
        None, description="Not supported (no web search): null.", json_schema_extra={"enum": [None]}
    )


class CompletionRequest(SamplingFields):
    """OpenAI's legacy /v1/completions: a raw prompt, no chat template."""

    # the spec says what the validator checks: max_tokens 0 only with echo
    model_config = SamplingFields.model_config | ConfigDict(
        json_schema_extra={
            "if": {"properties": {"max_tokens": {"const": 0}}, "required": ["max_tokens"]},
            "then": {"required": ["echo"], "properties": {"echo": {"const": True}}},
        }
    )

    prompt: PromptIn = Field(
        description="The prompt, or a list of prompts, each completed n times: choice i * n + j is prompt i's j-th "
        "(as OpenAI and vLLM number them). Every prompt's choices count toward the limit of "
        f"{MAX_CHOICES}. A prompt may be given as token ids of the model's tokenizer (an array of integers, or a "
        "list of them); the safety stage screens the text they decode to, and an echo returns that text."
    )
    max_tokens: int | None = Field(
        16,
        ge=0,
        description="Most tokens to generate (OpenAI's default is 16). 0, with echo only: the prompt alone comes back, "
        "with its log-probabilities when logprobs is set (scoring a text); the engine still generates one token, "
        "which usage counts, as vLLM's server does.",
    )
    echo: bool = Field(
        False, validate_default=True, description="Put the prompt before the completion in the returned text."
    )
    suffix: None = Field(None, description="Not supported; must be null.")
    logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        description="Return each output token's log-probability and those of this many most likely tokens at each "
        "position, in choices[].logprobs (the model's own, before temperature, top_p and penalties). With echo, the "
        "prompt's tokens come first, each scored given those before it; the first has none (null).",
    )
    best_of: int | None = Field(None, ge=1, le=1, description="Only 1 is supported.")

    @field_validator("prompt")
    @classmethod
    def _choices_within_limit(cls, value: PromptIn, info: ValidationInfo) -> PromptIn:
        prompts, n = len(_prompts(value)), info.data.get("n", 1)  # n is declared before
        if prompts * n > MAX_CHOICES:
            raise PydanticCustomError(
                "too_many_choices",
                "{prompts} prompts of n={n} choices each make {total} choices; at most {most} are served per request",
                {"prompts": prompts, "n": n, "total": prompts * n, "most": MAX_CHOICES},
            )
        return value

    @field_validator("echo")
    @classmethod
    def _nothing_to_generate_only_with_echo(cls, value: bool, info: ValidationInfo) -> bool:
        # on echo: max_tokens comes first (SamplingFields declares it), so it is in info.data
        if info.data.get("max_tokens") == 0 and not value:
            raise ValueError("max_tokens 0 needs echo: true (the prompt alone comes back)")
        return value

    def prompts(self) -> list[str | list[int]]:
        """Each prompt: its text, or its token ids."""
        return _prompts(self.prompt)

    def choice_count(self) -> int:
        """How many completions the request asks for: n for each prompt."""
        return len(self.prompts()) * self.n

    def prompt_only(self) -> bool:
        """Whether only the echoed prompt is asked for (max_tokens 0), not a completion."""
        return self.echo and self.max_tokens == 0

    def echo_texts(self) -> list[str | None]:
        """What an echo puts before each prompt's completions: its text, or None where that is the text the worker
        read, which its replies bring (a prompt given as token ids, or one truncate_prompt_tokens may cut)."""
        return [p if isinstance(p, str) and self.truncate_prompt_tokens is None else None for p in self.prompts()]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def _unset(value: object) -> bool:
    return value is None


GENERATED_TOKEN_IDS = (
    "vLLM, with return_token_ids: the ids of the tokens generated (when streaming, of this chunk's); left out "
    "otherwise."
)
PROMPT_TOKEN_IDS = (
    "vLLM, with return_token_ids: the prompt's token ids as the model read it, chat template included (when "
    "streaming, in the first chunk of each choice); left out otherwise."
)


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(
        description="Prompt tokens the engine took from its prefix cache (the same tenant sent a prompt with the same "
        "beginning before) instead of computing them. On a response cache hit, the figure of the original answer."
    )


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = Field(description="Completion tokens a reasoning model wrote inside its think blocks.")


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = Field(
        None, description="Set for a chat answer of a reasoning model (one whose template writes think blocks)."
    )


class FunctionCallOut(BaseModel):
    name: str
    arguments: str = Field(description="JSON text, as the model wrote it.")


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class ChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = Field(description="The answer's text; null when the model answered with tool calls only.")
    tool_calls: list[ToolCallOut] | None = None
    reasoning: str | None = Field(
        None,
        description="vLLM: a reasoning model's thinking before its answer (its think block), not in content; null "
        "when it wrote none, or with include_reasoning false.",
    )


class TopLogprobOut(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = Field(description="The token's UTF-8 bytes.")


class TokenLogprobOut(TopLogprobOut):
    top_logprobs: list[TopLogprobOut] = Field(description="The most likely tokens at this position, most likely first.")


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobOut] | None
    refusal: list[TokenLogprobOut] | None = None


class Choice(BaseModel):
    index: int = 0
    message: ChoiceMessage
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None
    token_ids: list[int] | None = Field(None, description=GENERATED_TOKEN_IDS, exclude_if=_unset)


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: UsageOut
    system_fingerprint: SystemFingerprint = None
    prompt_token_ids: list[int] | None = Field(None, description=PROMPT_TOKEN_IDS, exclude_if=_unset)


class DeltaFunction(BaseModel):
    name: str | None = Field(None, description="The function called, in the call's first delta.")
    arguments: str = Field(description="The next characters of the arguments' JSON text.")


class DeltaToolCall(BaseModel):
    index: int = Field(description="The call's position among the choice's calls.")  # first, as OpenAI writes it
    id: str | None = Field(None, description="The call's id, in its first delta.")
    type: Literal["function"] | None = Field(None, description="function, in the call's first delta.")
    function: DeltaFunction


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning: str | None = Field(None, description="vLLM: the next piece of a reasoning model's thinking.")
    tool_calls: list[DeltaToolCall] | None = Field(
        None,
        description="Pieces of the choice's tool calls, as OpenAI streams them: a call's first delta has its index, "
        "id, type and name, and each delta the next characters of its arguments; joined, they are the call.",
    )


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None
    token_ids: list[int] | None = Field(None, description=GENERATED_TOKEN_IDS, exclude_if=_unset)


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: UsageOut | None = None
    system_fingerprint: SystemFingerprint = None
    prompt_token_ids: list[int] | None = Field(None, description=PROMPT_TOKEN_IDS, exclude_if=_unset)


class CompletionLogprobs(BaseModel):
    """The legacy completions API's form: one entry per token in each list."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int] = Field(description="Where each token starts in the choice's text.")


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None
    prompt_token_ids: list[int] | None = Field(None, description=PROMPT_TOKEN_IDS, exclude_if=_unset)
    token_ids: list[int] | None = Field(None, description=GENERATED_TOKEN_IDS, exclude_if=_unset)


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageOut | None = None
    system_fingerprint: SystemFingerprint = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="Unix time at which the registry first listed the model.")
    owned_by: str = "ferry"
    max_model_len: int = Field(description="ferry: most tokens of prompt plus completion.")

    @classmethod
    def of(cls, model: ModelRecord) -> ModelCard:
        created = int(model.created_at.timestamp()) if model.created_at is not None else 0
        return cls(id=model.id, created=created, max_model_len=model.max_model_len)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def ignored_fields(request: BaseModel) -> list[str]:
    return sorted((request.model_extra or {}).keys())


VLLM_OPTIONS_NOT_SERVED: dict[str, object] = {
    "use_beam_search": False,
    "length_penalty": 1.0,
    "logits_processors": None,
    "chat_template": None,
    "documents": None,  # a chat's are served (ChatCompletionRequest.documents): this refuses them on completions
    "mm_processor_kwargs": None,
    "kv_transfer_params": None,
    "vllm_xargs": None,
}
"""Options of vLLM's server that ferry does not serve, each at the value that asks for nothing: clients of vLLM's
server send them in extra_body, and any other value would change the answer they get (its text, its tokens, how it
was decoded), so it is refused, not ignored as a field nobody knows would be."""


def unsupported_option(request: ChatCompletionRequest | CompletionRequest) -> tuple[str, str] | None:
    """The first option set to something ferry cannot give, with why, or None. Options that only tune the answer are
    ignored when unknown (``ignored_fields``); these would change what kind of answer the client gets (tool calls,
    another decoding), so pretending to honour them is worse than refusing."""
    for name, neutral in VLLM_OPTIONS_NOT_SERVED.items():
        value = (request.model_extra or {}).get(name, neutral)
        if value != neutral and not (neutral is None and value in ([], {})):
            return name, f"{name} is an option of vLLM's server that ferry does not serve; leave it out."
    if not isinstance(request, ChatCompletionRequest):
        return None
    if request.functions:
        return "functions", "functions is deprecated and not supported: use tools."
    if request.function_call not in (None, "none"):
        return (
            "function_call",
            'function_call is deprecated and not supported (only "none" is accepted): use tool_choice.',
        )
    if request.modalities is not None and set(request.modalities) != {"text"}:
        return "modalities", 'modalities is not supported: only ["text"] is accepted.'
    if request.audio is not None:
        return "audio", "audio is not supported: ferry's models answer in text."
    if request.web_search_options is not None:
        return "web_search_options", "web_search_options is not supported: ferry's models do not search the web."
    return None


def tool_error(request: ChatCompletionRequest) -> tuple[str, str] | None:
    """The parameter that makes a request's tools unusable, with why, or None."""
    names = [t.function.name for t in request.tools or []]
    if len(set(names)) < len(names):
        return "tools", "tools must have different function names."
    choice = request.tool_choice
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        return "tool_choice", f"tool_choice names the function `{choice.function.name}`, which is not among tools."
    if choice == "required" and not names:
        return "tool_choice", "tool_choice required needs tools."
    if names and choice != "none":
        if request.logprobs:
            return "logprobs", "logprobs are not served with tools the model may call."
        if request.response_format is not None and request.response_format.type != "text":
            return "response_format", "response_format is not served with tools the model may call."
        if request.structured_outputs is not None:
            return "structured_outputs", "structured_outputs is not served with tools the model may call."
    return None


# pydantic's error types that say the input is of another kind than a union member takes (that member is not the one
# the client meant), as opposed to a member that takes the input's kind and finds fault with its value
_KIND_MISMATCHES = frozenset(
    {"string_type", "list_type", "dict_type", "model_type", "int_type", "float_type", "bool_type", "none_required"}
)
_SHOULD_BE = "Input should be "


def invalid_input(errors: Sequence[Mapping[str, Any]], body: Any) -> tuple[str | None, str]:
    """The parameter and message of a 400 for a body that failed validation, from pydantic's errors. A value that a
    union field (``str | list[str]``) does not take gets one error per member, each located under the member's tag
    (``stop.constrained-str``): the tags are dropped by walking each location through the body itself, and the error
    reported is the one that went deepest into the body, then one from a member that took the value's kind (``stop``
    with five strings: at most 4 items, not "should be a string"). When every member refused the kind, the message
    names them all."""
    if isinstance(body, Mapping) and not isinstance(body, dict):  # a multipart form's fields (a file upload)
        body = dict(body)
    located = [(_body_path(error, body), error) for error in errors]
    deepest = max(len(path) for path, _ in located)
    candidates = [(path, error) for path, error in located if len(path) == deepest]
    fitting = [(path, error) for path, error in candidates if error.get("type") not in _KIND_MISMATCHES]
    path, error = (fitting or candidates)[0]
    param = ".".join(str(part) for part in path) or None
    if error.get("type") == "missing":
        if param is None:  # the body itself
            return None, "The request body is missing: send a JSON object."
        return param, f"Missing required parameter: '{param}'."
    message = str(error.get("msg", "invalid request"))
    if not fitting:
        kinds = list(dict.fromkeys(str(e.get("msg", "")) for _, e in candidates))
        if len(kinds) > 1 and all(kind.startswith(_SHOULD_BE) for kind in kinds):
            message = _SHOULD_BE + " or ".join(kind.removeprefix(_SHOULD_BE) for kind in kinds)
    return param, f"Invalid value for '{param}': {message}" if param else message


def _body_path(error: Mapping[str, Any], body: Any) -> list[str | int]:
    """The part of an error's location that names keys and indexes of the body (a missing field's name included),
    without pydantic's union-member tags and its "[key]" marker for a map's bad key; or the query or path parameter
    at fault."""
    location = list(error.get("loc", ()))
    if location[:1] in (["query"], ["path"], ["header"]):  # a parameter of the URL: named as it is
        return location[1:2]
    if location[:1] == ["body"]:
        location = location[1:]
    path: list[str | int] = []
    value = body
    for position, part in enumerate(location):
        if isinstance(value, dict) and isinstance(part, str) and part in value:
            value = value[part]
        elif isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
            value = value[part]
        elif error.get("type") == "missing" and position == len(location) - 1:
            pass
        else:
            continue
        path.append(part)
    return path


def error_json(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return ErrorResponse(error=ErrorBody(message=message, type=type_, param=param, code=code)).model_dump()


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(raw: bytes) -> tuple[str, str] | None:
    """(param, message) when a JSON body holds a lone UTF-16 surrogate: an escape such as ``\\ud800`` without its
    pair. Python's JSON reader takes it into a string, but it is no character, and no UTF-8 text (a Kafka record, a
    log line, the model's tokenizer) can hold it: the request failed later as if Kafka were down (503). Only such an
    escape makes one, so a body without any costs one scan of its bytes."""
    if _SURROGATE_ESCAPE.search(raw) is None:
        return None
    try:
        document = json.loads(raw)
    except ValueError:
        return None  # not JSON: refused as such already
    path = _surrogate_path(document)
    if path is None:
        return None  # escapes in pairs make whole characters
    param = ".".join(path) or "body"
    return param, (
        f"Invalid value for '{param}': it holds a lone UTF-16 surrogate (an escape such as \\ud800 without its pair), "
        "which is not a character. Send valid Unicode text."
    )


def _surrogate_path(value: object) -> list[str] | None:
    """The path (keys and list positions) to the first string, or key, that holds a lone surrogate."""
    if isinstance(value, str):
        return [] if _SURROGATE.search(value) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and _SURROGATE.search(key):
            return [key.encode("utf-8", "backslashreplace").decode()]
        if (path := _surrogate_path(item)) is not None:
            return [str(key), *path]
    return None


def _prompts(prompt: PromptIn) -> list[str | list[int]]:
    """Each prompt of a /v1/completions prompt: its text, or its token ids."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt[0], int):
        return [prompt]  # type: ignore[list-item]  # one prompt of token ids
    return list(prompt)  # type: ignore[arg-type]
