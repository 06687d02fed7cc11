"""OpenAI's Responses API at the ingress: a request served as the chat it amounts to, and the answer in the shapes
OpenAI's clients read (a response object; typed events with sequence numbers). Events from a plain list."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from services.ingress.responses import (
    ResponseItemList,
    ResponseObject,
    ResponseShell,
    ResponsesRequest,
    as_of,
    duplicate_id,
    input_items_page,
    stream_response,
    whole_response,
)
from services.ingress.serving import ApiError, IndexedEvent
from shared.contracts import (
    CompletionFinished,
    FunctionCall,
    GenerationFailed,
    TokenLogprob,
    TokensGenerated,
    ToolCall,
    ToolCallPiece,
    TopLogprob,
    Usage,
)

USAGE = Usage(prompt_tokens=9, completion_tokens=3, total_tokens=12, cached_prompt_tokens=4)


def final(text: str = "Paris.", finish_reason: str = "stop") -> CompletionFinished:
    return CompletionFinished(
        request_id="r",
        sequence=2,
        model="m",
        text=text,
        finish_reason=finish_reason,
        usage=USAGE,  # type: ignore[arg-type]
    )


def delta(sequence: int, text: str, offset: int) -> TokensGenerated:
    return TokensGenerated(request_id="r", sequence=sequence, text=text, token_count=1, text_offset=offset)


async def indexed(*events: object) -> AsyncIterator[IndexedEvent]:
    for event in events:
        yield 0, event  # type: ignore[misc]


async def conforming_whole(shell: ResponseShell, events: AsyncIterator[IndexedEvent]) -> dict:
    """The whole response, checked against the schema the OpenAPI spec publishes for it."""
    done = await whole_response(shell, events)
    ResponseObject.model_validate(done)
    return done


def request(**fields: object) -> ResponsesRequest:
    return ResponsesRequest.model_validate({"model": "m", "input": "Capital of France?"} | fields)


def test_a_request_is_the_chat_it_amounts_to() -> None:
    chat = request(
        instructions="Answer in one word.",
        input=[
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Paris."}]},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "And of "}, {"type": "input_text", "text": "Italy?"}],
            },
        ],
        max_output_tokens=16,
        temperature=0,
        truncation="auto",
        reasoning={"effort": "low"},
        text={"format": {"type": "json_schema", "name": "city", "schema": {"type": "object"}, "strict": True}},
        stream=True,
    ).as_chat()
    assert [(m.role, m.text()) for m in chat.messages] == [
        ("system", "Answer in one word."),
        ("user", "Capital of France?"),
        ("assistant", "Paris."),
        ("user", "And of Italy?"),
    ]
    assert chat.max_tokens == 16 and chat.temperature == 0 and chat.stream and chat.reasoning_effort == "low"
    assert chat.truncate_prompt_tokens == -1 and chat.include_reasoning  # thinking is a reasoning item
    assert chat.response_format is not None and chat.response_format.json_schema is not None
    assert chat.response_format.json_schema.schema_ == {"type": "object"} and chat.response_format.json_schema.strict
    plain = request().as_chat()
    assert [(m.role, m.text()) for m in plain.messages] == [("user", "Capital of France?")]
    assert plain.max_tokens is None and plain.truncate_prompt_tokens is None and plain.response_format is None


def test_what_is_not_served_is_refused_by_name_and_a_bad_value_names_this_apis_field() -> None:
    with pytest.raises(ValidationError):  # only function tools
        request(tools=[{"type": "web_search"}])
    assert request(include=["reasoning.encrypted_content"]).unsupported()[0] == "include"  # type: ignore[index]
    assert request(reasoning={"summary": "auto"}).unsupported()[0] == "reasoning.summary"  # type: ignore[index]
    assert request(tools=[], include=[], background=False, store=True).unsupported() is None
    assert request(background=True).unsupported() is None
    assert request(background=True, stream=True).unsupported() is None  # streamed, and taken up again
    assert request(prompt={"id": "pmpt_1"}).unsupported()[0] == "prompt"  # type: ignore[index]
    assert request(conversation="conv_1").unsupported() is None  # served (the handlers read it)
    assert (
        request(conversation={"id": "conv_1"}).conversation_id()
        == "conv_1"
        == request(conversation="conv_1").conversation_id()
    )
    assert request(max_tool_calls=3).unsupported()[0] == "max_tool_calls"  # type: ignore[index]
    assert request(include=["message.output_text.logprobs"], max_tool_calls=1).unsupported() is None
    with pytest.raises(ApiError) as err:
        request(text={"format": {"type": "json_schema", "name": "bad name!", "schema": {}}}).as_chat()
    assert err.value.status == 400 and err.value.param == "text.format.name"


async def test_a_whole_response_carries_the_message_usage_and_status() -> None:
    shell = ResponseShell("resp_abc", request(max_output_tokens=3, metadata={"k": "v"}))
    done = await conforming_whole(shell, indexed(final()))
    assert done["id"] == "resp_abc" and done["object"] == "response" and done["status"] == "completed"
    (message,) = done["output"]
    assert message["type"] == "message" and message["role"] == "assistant" and message["status"] == "completed"
    assert message["content"] == [{"type": "output_text", "text": "Paris.", "annotations": [], "logprobs": []}]
    assert done["usage"] == {
        "input_tokens": 9,
        "input_tokens_details": {"cached_tokens": 4},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 12,
    }
    assert done["metadata"] == {"k": "v"} and done["store"] is False and done["max_output_tokens"] == 3
    cut = await conforming_whole(shell, indexed(final("Par", "length")))
    assert cut["status"] == "incomplete" and cut["incomplete_details"] == {"reason": "max_output_tokens"}
    with pytest.raises(ApiError) as err:
        failed = GenerationFailed(request_id="r", sequence=0, code="invalid_request", message="bad", param="max_tokens")
        await conforming_whole(shell, indexed(failed))
    assert err.value.status == 400 and err.value.param == "max_output_tokens"


def events_of(lines: list[str]) -> list[dict]:
    out = []
    for line in lines:
        kind, data = line.removesuffix("\n\n").split("\n")
        payload = json.loads(data.removeprefix("data: "))
        assert kind == f"event: {payload['type']}"
        if "response" in payload:  # the spec's schema of a response holds for the events' too
            ResponseObject.model_validate(payload["response"])
        out.append(payload)
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    return out


async def test_a_stream_is_openais_event_sequence_and_its_deltas_join_to_the_text() -> None:
    shell = ResponseShell("resp_abc", request(stream=True))
    lines = [line async for line in stream_response(shell, indexed(delta(0, "Par", 0), delta(1, "is.", 3), final()))]
    events = events_of(lines)
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == "Paris."
    assert {e["item_id"] for e in events if "item_id" in e} == {"msg_abc"}
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "Paris."
    assert events[-1]["response"]["usage"]["output_tokens"] == 3


async def test_a_failure_midway_is_an_error_event_then_response_failed() -> None:
    shell = ResponseShell("resp_abc", request(stream=True))
    failed = GenerationFailed(request_id="r", sequence=1, code="content_blocked", message="blocked: violence")
    events = events_of([line async for line in stream_response(shell, indexed(delta(0, "Par", 0), failed))])
    assert [e["type"] for e in events][-2:] == ["error", "response.failed"]
    assert events[-2]["code"] == "content_policy_violation"
    assert (
        events[-1]["response"]["status"] == "failed"
        and events[-1]["response"]["error"]["code"] == "content_policy_violation"
    )
    cut = [line async for line in stream_response(shell, indexed(delta(0, "Par", 0), final("Par", "length")))]
    last = events_of(cut)[-1]
    assert (
        last["type"] == "response.incomplete"
        and last["response"]["incomplete_details"]["reason"] == "max_output_tokens"
    )


WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}


def test_function_calls_and_their_outputs_are_the_chats_tool_turns() -> None:
    chat = request(
        input=[
            {"role": "user", "content": "Weather in Oslo and Rome?"},
            {"type": "message", "role": "assistant", "content": "Checking."},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
            {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": '{"city": "Rome"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "4 C"},
            {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "19 C"}]},
        ],
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
    ).as_chat()
    roles = [(m.role, m.text(), [c.id for c in m.tool_calls or []], m.tool_call_id) for m in chat.messages]
    assert roles == [
        ("user", "Weather in Oslo and Rome?", [], None),
        ("assistant", "Checking.", ["call_1", "call_2"], None),  # the calls join the turn that wrote them
        ("tool", "4 C", [], "call_1"),
        ("tool", "19 C", [], "call_2"),
    ]
    assert chat.tools is not None and chat.tools[0].function.name == "get_weather"
    assert chat.tool_choice is not None and chat.tool_choice.function.name == "get_weather"  # type: ignore[union-attr]
    assert chat.parallel_tool_calls is False
    lone = request(input=[{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]).as_chat()
    assert [(m.role, m.content) for m in lone.messages] == [("assistant", None)]


CALLS = [
    ToolCall(id="call_a", function=FunctionCall(name="get_weather", arguments='{"city": "Oslo"}')),
    ToolCall(id="call_b", function=FunctionCall(name="get_weather", arguments='{"city": "Rome"}')),
]


async def test_calls_are_output_items_whole_and_streamed_piece_by_piece() -> None:
    called = final("").model_copy(update={"tool_calls": CALLS, "finish_reason": "tool_calls"})
    shell = ResponseShell("resp_abc", request(tools=[WEATHER]))
    done = await conforming_whole(shell, indexed(called))
    assert done["status"] == "completed" and [item["type"] for item in done["output"]] == ["function_call"] * 2
    assert [(i["call_id"], i["name"], i["arguments"]) for i in done["output"]] == [
        ("call_a", "get_weather", '{"city": "Oslo"}'),
        ("call_b", "get_weather", '{"city": "Rome"}'),
    ]
    # the first call streamed in two pieces, the second's rest only in the final
    pieces = [
        TokensGenerated(
            request_id="r",
            sequence=0,
            text="",
            token_count=3,
            text_offset=0,
            tool_calls=[
                ToolCallPiece(index=0, id="call_a", name="get_weather", arguments='{"city": ', arguments_offset=0)
            ],
        ),
        TokensGenerated(
            request_id="r",
            sequence=1,
            text="",
            token_count=3,
            text_offset=0,
            tool_calls=[
                ToolCallPiece(index=0, id="call_a", name="get_weather", arguments='"Oslo"}', arguments_offset=9),
                ToolCallPiece(index=1, id="call_b", name="get_weather", arguments='{"ci', arguments_offset=0),
            ],
        ),
    ]
    events = events_of([line async for line in stream_response(shell, indexed(*pieces, called))])
    kinds = [e["type"] for e in events]
    assert "response.output_text.delta" not in kinds and kinds[-1] == "response.completed"
    for at, call in enumerate(CALLS):
        mine = [e for e in events if e.get("output_index") == at]
        assert mine[0]["type"] == "response.output_item.added" and mine[0]["item"]["call_id"] == call.id
        deltas = "".join(e["delta"] for e in mine if e["type"] == "response.function_call_arguments.delta")
        assert deltas == call.function.arguments  # the pieces, then the rest from the final
        assert [e["type"] for e in mine[-2:]] == ["response.function_call_arguments.done", "response.output_item.done"]
        assert mine[-1]["item"]["arguments"] == call.function.arguments and mine[-1]["item"]["status"] == "completed"
    assert events[-1]["response"]["output"] == done["output"]


def test_reasoning_items_join_the_assistant_turn_after_them_and_vllms_options_reach_the_chat() -> None:
    thought = {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "Check Oslo."}]}
    chat = request(
        input=[
            {"role": "user", "content": "Weather in Oslo?"},
            thought,
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "4 C"},
            thought | {"content": [{"type": "reasoning_text", "text": "Cut short."}]},
            {"role": "user", "content": "Well?"},
        ],
        tools=[WEATHER],
        top_k=5,
        seed=3,
        chat_template_kwargs={"enable_thinking": True},
        include_reasoning=False,
        colour="blue",
    )
    turns = [(m.role, m.content, m.reasoning) for m in chat.as_chat().messages]
    assert turns == [
        ("user", "Weather in Oslo?", None),
        ("assistant", None, "Check Oslo."),  # the call's turn
        ("tool", "4 C", None),
        ("assistant", "", "Cut short."),  # thinking that came to no answer: a turn of its own, before the user's
        ("user", "Well?", None),
    ]
    as_chat = chat.as_chat()
    assert as_chat.top_k == 5 and as_chat.seed == 3 and not as_chat.include_reasoning
    assert as_chat.chat_template_kwargs is not None and as_chat.chat_template_kwargs.enable_thinking
    assert chat.ignored() == ["colour"]  # vLLM's options are passed on, not ignored
    encrypted = thought | {"content": None, "encrypted_content": "gAAAA"}
    assert request(input=[encrypted, {"role": "user", "content": "Hi"}]).unsupported()[0] == "input"  # type: ignore[index]


async def test_thinking_is_a_reasoning_item_before_the_message_whole_and_streamed() -> None:
    reasoned = final("Four.").model_copy(update={"reasoning": "Two and two."})
    shell = ResponseShell("resp_abc", request())
    done = await conforming_whole(shell, indexed(reasoned))
    assert [item["type"] for item in done["output"]] == ["reasoning", "message"]
    assert done["output"][0]["content"] == [{"type": "reasoning_text", "text": "Two and two."}]
    thinking = [
        TokensGenerated(
            request_id="r", sequence=0, text="", token_count=2, text_offset=0, reasoning="Two and", reasoning_offset=0
        ),
        TokensGenerated(
            request_id="r",
            sequence=1,
            text="Four.",
            token_count=3,
            text_offset=0,
            reasoning=" two.",
            reasoning_offset=7,
        ),
    ]
    events = events_of([line async for line in stream_response(shell, indexed(*thinking, reasoned))])
    thoughts = [e for e in events if e.get("output_index") == 0]
    assert thoughts[0]["type"] == "response.output_item.added" and thoughts[0]["item"]["type"] == "reasoning"
    deltas = "".join(e["delta"] for e in thoughts if e["type"] == "response.reasoning_text.delta")
    assert deltas == "Two and two." and thoughts[-1]["item"]["content"][0]["text"] == "Two and two."
    assert [e["type"] for e in thoughts[-3:]] == [
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == "Four."
    assert events[-1]["response"]["output"] == done["output"]


async def test_logprobs_asked_by_include_come_with_the_text_whole_and_streamed() -> None:
    asked = request(include=["message.output_text.logprobs"], top_logprobs=2)
    chat = asked.as_chat()
    assert chat.logprobs and chat.top_logprobs == 2
    assert request(max_tool_calls=1, tools=[WEATHER]).as_chat().parallel_tool_calls is False
    assert request(max_tool_calls=0, tools=[WEATHER], tool_choice="required").as_chat().tool_choice == "none"
    entries = [
        TokenLogprob(token="Par", logprob=-0.5, top_logprobs=[TopLogprob(token="Par", logprob=-0.5)]),
        TokenLogprob(token="is.", logprob=-0.25, top_logprobs=[TopLogprob(token="is.", logprob=-0.25)]),
    ]
    scored = final().model_copy(update={"logprobs": entries})
    shell = ResponseShell("resp_abc", asked)
    done = await conforming_whole(shell, indexed(scored))
    logprobs = done["output"][0]["content"][0]["logprobs"]
    assert [(e["token"], e["logprob"], e["bytes"]) for e in logprobs] == [
        ("Par", -0.5, [80, 97, 114]),
        ("is.", -0.25, [105, 115, 46]),
    ]
    assert logprobs[0]["top_logprobs"] == [{"token": "Par", "logprob": -0.5, "bytes": [80, 97, 114]}]
    streamed = [
        delta(0, "Par", 0).model_copy(update={"logprobs": entries[:1], "token_offset": 0}),
        delta(1, "is.", 3).model_copy(update={"logprobs": entries[1:], "token_offset": 1}),
    ]
    events = events_of([line async for line in stream_response(shell, indexed(*streamed, scored))])
    per_delta = [e["logprobs"] for e in events if e["type"] == "response.output_text.delta"]
    assert [[e["token"] for e in lps] for lps in per_delta] == [["Par"], ["is."]]
    (text_done,) = [e for e in events if e["type"] == "response.output_text.done"]
    assert text_done["logprobs"] == logprobs and events[-1]["response"]["output"] == done["output"]


async def test_a_continued_conversation_is_the_stored_one_then_the_input_and_what_is_kept_is_both() -> None:
    stored = [
        {"type": "message", "role": "user", "content": "Capital of France?"},
        {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
         "content": [{"type": "output_text", "text": "Paris.", "annotations": [], "logprobs": []}]},
    ]  # fmt: skip
    asked = request(input="And of Italy?", previous_response_id="resp_1", instructions="Be brief.", top_k=3)
    (kept_input,) = asked.input_items()
    assert kept_input == {
        "id": kept_input["id"],
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "And of Italy?"}],
        "status": "completed",
    }
    assert kept_input["id"].startswith("msg_") and kept_input["id"] != asked.input_items()[0]["id"]
    continued = asked.with_input([*stored, kept_input])
    assert continued.previous_response_id is None and continued.instructions == "Be brief."
    chat = continued.as_chat()
    assert [(m.role, m.text()) for m in chat.messages] == [
        ("system", "Be brief."),
        ("user", "Capital of France?"),
        ("assistant", "Paris."),
        ("user", "And of Italy?"),
    ]
    assert chat.top_k == 3  # vLLM's options go along
    kept: list[dict] = []

    async def keep(response: dict) -> dict:
        kept.append(response)
        return response

    shell = ResponseShell("resp_2", asked, stored=True)
    done = await conforming_whole(shell, indexed(final("Rome.")))
    assert done["store"] is True and done["previous_response_id"] == "resp_1"
    streamed = [line async for line in stream_response(shell, indexed(delta(0, "Rome.", 0), final("Rome.")), keep)]
    assert len(kept) == 1 and events_of(streamed)[-1]["response"] == kept[0]  # stored before its last event
    assert ResponseShell("resp_3", request()).response("in_progress")["store"] is False


def test_references_are_replaced_by_the_stored_items_and_every_kept_item_has_an_id() -> None:
    call = {"id": "fc_call_1", "type": "function_call", "status": "completed", "call_id": "call_1", "name": "capital",
            "arguments": '{"country": "France"}'}  # fmt: skip
    asked = request(
        input=[
            {"role": "user", "content": "Capital of France?"},
            {"type": "item_reference", "id": "fc_call_1"},
            {"type": "function_call_output", "call_id": "call_1", "output": "Paris"},
            {"id": "msg_mine", "role": "assistant", "content": [{"type": "output_text", "text": "Paris."}]},
        ]
    )
    assert asked.references() == ["fc_call_1"]
    items = asked.input_items({"fc_call_1": call})
    assert items[1] == call  # as stored
    assert [item["id"][:4] for item in items] == ["msg_", "fc_c", "fco_", "msg_"] and items[3]["id"] == "msg_mine"
    assert items[3]["content"] == [{"type": "output_text", "text": "Paris.", "annotations": []}]
    chat = asked.with_input(items).as_chat()  # kept items read back as the same turns
    assert [(m.role, m.text()) for m in chat.messages] == [
        ("user", "Capital of France?"),
        ("assistant", ""),
        ("tool", "Paris"),
        ("assistant", "Paris."),
    ]
    assert chat.messages[1].tool_calls[0].function.name == "capital"  # type: ignore[index]
    assert duplicate_id(items) is None and duplicate_id([*items, call]) == "fc_call_1"
    assert request().references() == []


def test_input_items_are_listed_latest_first_page_by_page() -> None:
    conversation = [
        {"type": "message", "role": "user", "content": "Capital of France?"},  # stored before items had ids
        {"id": "msg_a", "type": "message", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "Paris.", "annotations": []}]},
        {"id": "msg_b", "type": "message", "role": "user", "status": "completed",
         "content": [{"type": "input_text", "text": "And of Italy?"}]},
        {"id": "msg_out", "type": "message", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "Rome.", "annotations": []}]},  # the response's output
    ]  # fmt: skip
    first = input_items_page("resp_x", conversation, 1, None, 2, "desc")
    ResponseItemList.model_validate(first)
    assert [item["id"] for item in first["data"]] == ["msg_b", "msg_a"] and first["has_more"] is True
    second = input_items_page("resp_x", conversation, 1, first["last_id"], 2, "desc")
    assert len(second["data"]) == 1 and second["has_more"] is False
    (oldest,) = second["data"]
    assert oldest["content"] == [{"type": "input_text", "text": "Capital of France?"}]
    again = input_items_page("resp_x", conversation, 1, None, 20, "asc")  # the same id on every listing
    assert [item["id"] for item in again["data"]] == [oldest["id"], "msg_a", "msg_b"]
    assert again["first_id"] == oldest["id"] and again["last_id"] == "msg_b"
    with pytest.raises(ApiError) as refused:
        input_items_page("resp_x", conversation, 1, "msg_out", 20, "desc")  # an output item is not an input item
    assert refused.value.param == "after"


def test_a_background_response_still_queued_past_its_finish_by_reads_failed() -> None:
    queued = ResponseShell("resp_1", request(background=True), stored=True).response("queued")
    assert queued["background"] is True and queued["output"] == [] and queued["usage"] is None
    ResponseObject.model_validate(queued)
    finish_by = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    assert as_of(queued, finish_by, finish_by) == queued  # its instance may still store its end
    stopped = as_of(queued, finish_by, finish_by + timedelta(seconds=1))
    assert stopped["status"] == "failed" and stopped["error"]["code"] == "ingress_stopped"
    ResponseObject.model_validate(stopped)
    ended = queued | {"status": "cancelled"}
    assert as_of(ended, finish_by, finish_by + timedelta(days=1)) == ended  # an end stands
    assert as_of(queued, None, finish_by + timedelta(days=1)) == queued
