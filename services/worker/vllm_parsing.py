"""vLLM's own output parsers, for the models whose formats ferry's readers do not know (see tool_calls and reasoning).

A model's registry entry may name vLLM's parser of its calls and of its thinking, by the names vLLM's server takes as
``--tool-call-parser`` and ``--reasoning-parser`` (xlam, step3, ernie45, longcat, deepseek_r1, ...). Its chats are
then read by those parsers, composed as vLLM's server composes them (``ParserManager.get_parser``), instead of by
ferry's readers: the thinking, the text and the calls, as they stream (``VllmReading.feed``) and whole
(``VllmReading.whole``). Differences from vLLM's server:

- a call's id is ferry's (``tool_calls.call_id``: the same when a request is generated again after its worker died),
  not the parser's random one;
- forced calls (tool_choice required or a named function) are read by ferry's reader after the thinking, as it reads
  the JSON its grammar makes the model write (vLLM's server reads the JSON of its own grammar, which differs);
- a model with a reasoning parser but none for calls has its calls read by ferry's reader, in the format its template
  teaches; and a model whose entry names either parser has its thinking read only by a reasoning parser, as in vLLM;
- a thinking budget is refused (ferry's own readers compose it with the grammar; vLLM's takes it on GPUs only).

The engine of a model with a reasoning parser is given it too, so that a grammar (response_format, structured_outputs,
a forced call) holds once the thinking ends, as in vLLM's server (see Engine.start).

The parser's names are checked against the model's tokenizer when the model loads, as vLLM's server checks them when
it starts (a reasoning parser whose markers the tokenizer lacks is refused)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from services.worker.reasoning import template_switches
from services.worker.tool_calls import call_id, tool_mode
from shared.contracts import CompletionRequested, FinishReason, FunctionCall, ToolCall, ToolCallPiece

if TYPE_CHECKING:
    from vllm.entrypoints.generate.base.protocol import DeltaMessage
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.parser.abstract_parser import Parser

logger = logging.getLogger(__name__)


class UnknownParser(ValueError):
    """A parser name vLLM does not have, or one that does not fit the model's tokenizer."""


@dataclass(frozen=True)
class VllmParsers:
    """The parsers a model's registry entry names, checked against its tokenizer: one reading per request."""

    tool_call_parser: str | None
    reasoning_parser: str | None
    parser_class: type[Parser]
    tokenizer: Any

    @classmethod
    def for_model(cls, tool_call_parser: str | None, reasoning_parser: str | None, tokenizer: Any) -> VllmParsers:
        """Raises UnknownParser with vLLM's reason when a name is not one of its parsers or does not fit the
        tokenizer."""
        from vllm.parser.parser_manager import ParserManager

        try:
            parser_class = ParserManager.get_parser(
                tool_parser_name=tool_call_parser,
                reasoning_parser_name=reasoning_parser,
                enable_auto_tools=True,
                tokenizer=tokenizer,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UnknownParser(f"vLLM's parsers refuse it: {exc}") from exc
        assert parser_class is not None  # a name was given
        return cls(tool_call_parser, reasoning_parser, parser_class, tokenizer)

    def reads(self, request: CompletionRequested) -> bool:
        """Whether these parsers read the request's output: a chat (a raw prompt's output is text) whose thinking
        the reasoning parser reads, or whose calls the tool-call parser reads (see ``reads_calls``)."""
        return request.is_chat() and (self.reasoning_parser is not None or self.reads_calls(request))

    def reads_calls(self, request: CompletionRequested) -> bool:
        """Whether the tool-call parser reads the request's calls: the model may choose to call (tool_choice auto).
        Forced calls are ferry's reader's."""
        return self.tool_call_parser is not None and tool_mode(request) == "auto"

    def reading(
        self,
        request: CompletionRequested,
        prompt_token_ids: Sequence[int],
        step_texts: Sequence[str],
        step_tokens: Sequence[Sequence[int]],
    ) -> VllmReading:
        """A reader of one request's output. ``step_texts`` and ``step_tokens``: the output so far, step by step, as
        the engine gives it (kept growing by the caller); the reader takes each delta's tokens from them."""
        chat = chat_request(request, with_tools=self.reads_calls(request))
        return VllmReading(
            parsers=self,
            request=request,
            chat=chat,
            parser=self.parser_for(chat),
            prompt_token_ids=list(prompt_token_ids),
            step_texts=step_texts,
            step_tokens=step_tokens,
        )

    def parser_for(self, chat: ChatCompletionRequest) -> Parser:
        """A parser for one reading (vLLM's parsers keep state), built as vLLM's server builds it."""
        kwargs = {"chat_template_kwargs": chat.chat_template_kwargs} if chat.chat_template_kwargs else {}
        return self.parser_class(self.tokenizer, chat.tools, **kwargs)


def chat_request(request: CompletionRequested, with_tools: bool) -> ChatCompletionRequest:
    """The request as vLLM's server would have taken it, for its parsers: they read its tools, its tool_choice and the
    template's switches (some parsers read whether thinking is on from them). ``with_tools``: the tools and
    tool_choice auto, for the tool-call parser to read calls; without, it gives the text as it comes."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    switches = template_switches(request.enable_thinking, request.reasoning_effort)
    messages = [
        {"role": m.role, "content": m.content}
        | ({"tool_calls": [c.model_dump(mode="json") for c in m.tool_calls]} if m.tool_calls else {})
        | ({"tool_call_id": m.tool_call_id} if m.tool_call_id is not None else {})
        for m in request.messages or []
    ]
    tools = [
        {"type": "function", "function": tool.model_dump(mode="json", exclude_none=True)} for tool in request.tools
    ]
    return ChatCompletionRequest.model_validate(
        {
            "model": request.model,
            "messages": messages,
            "include_reasoning": True,  # the ingress leaves the thinking out where the client asked so
            **({"tools": tools, "tool_choice": "auto"} if with_tools else {}),
            **({"chat_template_kwargs": switches} if switches else {}),
        }
    )


@dataclass
class VllmReading:
    """One request's output read by vLLM's parsers: ``feed`` each delta as it streams, ``finish`` at its end; or
    ``whole`` at once. Gives the thinking, the text for the client and the calls' pieces (where ``reads_calls``), in
    ferry's types."""

    parsers: VllmParsers
    request: CompletionRequested
    chat: ChatCompletionRequest
    parser: Parser
    prompt_token_ids: list[int]
    step_texts: Sequence[str]
    step_tokens: Sequence[Sequence[int]]
    _steps_taken: int = 0  # steps given to the parser
    _text_taken: int = 0  # characters of the steps taken
    _text_fed: int = 0  # characters of the deltas fed
    _names: dict[int, str] = field(default_factory=dict)  # each call's name, by its index
    _sent: dict[int, int] = field(default_factory=dict)  # characters of each call's arguments given out
    _failed: bool = False  # the parser raised: what follows is text

    @property
    def rid(self) -> str:
        return self.request.request_id

    @property
    def reads_calls(self) -> bool:
        """Whether the calls are read here; else the text given is for ferry's reader of calls (see VllmParsers)."""
        return self.parsers.reads_calls(self.request)

    @property
    def keeps_special_tokens(self) -> bool:
        """Whether the engine must keep special tokens in the text: the parser asks for them (most tool-call parsers
        do, as their markers are special tokens)."""
        return not self.parser.adjust_request(self.chat.model_copy(deep=True)).skip_special_tokens

    def feed(self, text: str) -> tuple[str, str, list[ToolCallPiece]]:
        """The next delta's thinking, text for the client and calls' pieces. The parser reads the delta's engine
        steps one at a time, as vLLM's server gives them to it: several of its parsers stream calls only when the
        text comes a token or a few at a time, and a delta gathers many (see generation.DeltaBuffer)."""
        self._text_fed += len(text)
        return self._steps(finished=False)

    def finish(self) -> tuple[str, str, list[ToolCallPiece]]:
        """What is left at the end: the steps not fed yet (a last one without text), and what the parser held
        back until then (a call's arguments it read but had not given out)."""
        return self._steps(finished=True)

    def _steps(self, finished: bool) -> tuple[str, str, list[ToolCallPiece]]:
        """Feeds the parser the steps whose text has been fed (all that are left, at the end; a delta is always
        whole steps, so a special token's text never comes apart from its id)."""
        reasoning, text, pieces = "", "", []
        due = []
        while self._steps_taken < len(self.step_texts) and (
            finished or self._text_taken + len(self.step_texts[self._steps_taken]) <= self._text_fed
        ):
            due.append((self.step_texts[self._steps_taken], list(self.step_tokens[self._steps_taken])))
            self._text_taken += len(due[-1][0])
            self._steps_taken += 1
        if finished and not due:
            due.append(("", []))  # the parser's end comes with the last step, as in vLLM's server, or alone
        for at, (step_text, step_ids) in enumerate(due):
            if not self._failed:
                last = finished and at == len(due) - 1
                try:
                    message = self.parser.parse_delta(
                        step_text, step_ids, self.chat, self.prompt_token_ids, finished=last
                    )
                except Exception:  # a fault of the parser's must not fail the request: the rest streams as text
                    logger.exception("request %s: vLLM's parser failed; the rest streams as text", self.rid)
                    self._failed = True
                else:
                    step_reasoning, step_text, step_pieces = self._read(message)
                    reasoning, text, pieces = reasoning + step_reasoning, text + step_text, pieces + step_pieces
                    continue
            text += step_text
        return reasoning, text, pieces

    def _read(self, message: DeltaMessage | None) -> tuple[str, str, list[ToolCallPiece]]:
        if message is None:
            return "", "", []
        pieces = []
        for call in message.tool_calls or []:
            function = call.function
            if function is not None and function.name and call.index not in self._names:
                self._names[call.index] = function.name
            name = self._names.get(call.index)
            if name is None:  # arguments before the call's name: nothing to call yet (the final event brings them)
                logger.warning("request %s: call %d came without a name", self.rid, call.index)
                continue
            arguments = (function.arguments if function else None) or ""
            offset = self._sent.get(call.index, 0)
            pieces.append(
                ToolCallPiece(
                    index=call.index,
                    id=call_id(self.rid, call.index),
                    name=name,
                    arguments=arguments,
                    arguments_offset=offset,
                )
            )
            self._sent[call.index] = offset + len(arguments)
        return message.reasoning or "", message.content or "", pieces

    def whole(
        self, output: str, token_ids: Sequence[int], finish_reason: FinishReason
    ) -> tuple[str | None, str, list[ToolCall] | None, FinishReason]:
        """The whole output's thinking (None: none), text, calls (None: none) and the finish reason to report
        (tool_calls when the model ended by calling), as vLLM's server reads a response that does not stream."""
        parser = self.parsers.parser_for(self.chat)
        parser.set_prompt_token_ids(self.prompt_token_ids)
        try:
            reasoning, content, calls = parser.parse(
                output, self.chat, enable_auto_tools=True, model_output_token_ids=list(token_ids)
            )
        except Exception:  # a fault of the parser's must not fail the request: its output is then all text
            logger.exception("request %s: vLLM's parser failed on the whole output; it is given as text", self.rid)
            return None, output, None, finish_reason
        tool_calls = [
            ToolCall(id=call_id(self.rid, i), function=FunctionCall(name=c.name, arguments=c.arguments))
            for i, c in enumerate(calls or [])
        ]
        if tool_calls and finish_reason == "stop":
            finish_reason = "tool_calls"
        return reasoning, content or "", tool_calls or None, finish_reason

    def reasoning_tokens(self, output: str, reasoning: str | None, count: Callable[[tuple[int, int]], int]) -> int:
        """How many of the output's tokens are thinking: those of the thinking's span in the output, counted by
        ``count`` (see Engine.tokens_within); where the parser gave thinking that is not a span of the output, as
        the parser counts them. (vLLM's parsers count only the tokens after a start marker the model wrote, so none
        where the template opened the block.)"""
        if not reasoning:
            return 0
        at = output.find(reasoning)
        if at < 0:
            return self.parser.count_reasoning_tokens([t for step in self.step_tokens for t in step])
        return count((at, at + len(reasoning)))
