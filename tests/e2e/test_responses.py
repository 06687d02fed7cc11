"""OpenAI's Responses API through the whole platform, with the official client: whole and streamed (its own stream
helper checks the event sequence), the same answer as the chat it amounts to, and what is not served refused by
name."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections.abc import AsyncIterator

import httpx
import pytest
from openai import AsyncOpenAI, BadRequestError, NotFoundError, OpenAI
from openai.types.responses import Response, ResponseStreamEvent

from services.ingress.adapters import ConversationStore, ResponseStore
from shared.db import connect_pool
from tests.e2e.platform import DEFAULT_MODEL, TINY_MODEL, Platform, start_extra_ingress, stop_service
from tests.e2e.test_flow_control import (
    LONG_RESPONSE,
    PROMPT_ESTIMATE_AT_MOST,
    cancellation_of,
    cancellations,
    replies_of,
)
from tests.e2e.test_reasoning import ANSWER, BUDGET, THINK_THEN_ANSWER

QUESTION = "What is the capital of France?"


def client(platform: Platform) -> OpenAI:
    return OpenAI(base_url=f"{platform.base_url}/v1", api_key=platform.api_key, max_retries=0, timeout=120)


def test_a_response_answers_as_the_chat_it_amounts_to(platform: Platform) -> None:
    openai = client(platform)
    response = openai.responses.create(model=DEFAULT_MODEL, input=QUESTION, max_output_tokens=24, temperature=0)
    assert response.id.startswith("resp_") and response.status in ("completed", "incomplete")
    assert "Paris" in response.output_text
    chat = openai.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": QUESTION}], max_tokens=24, temperature=0
    )
    assert response.output_text == chat.choices[0].message.content
    assert response.usage is not None and chat.usage is not None
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.usage.output_tokens == chat.usage.completion_tokens
    instructed = openai.responses.create(
        model=TINY_MODEL, instructions="Answer briefly.", input=QUESTION, max_output_tokens=8, temperature=0
    )
    system = openai.chat.completions.create(
        model=TINY_MODEL,
        messages=[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": QUESTION}],
        max_tokens=8,
        temperature=0,
    )
    assert instructed.output_text == system.choices[0].message.content  # the instructions are the system turn
    short = openai.responses.create(model=TINY_MODEL, input=QUESTION, max_output_tokens=2, temperature=0)
    assert short.status == "incomplete" and short.incomplete_details is not None
    assert short.incomplete_details.reason == "max_output_tokens" and short.usage and short.usage.output_tokens == 2


async def test_a_streamed_response_is_the_event_sequence_openais_client_reads(platform: Platform) -> None:
    aclient = AsyncOpenAI(base_url=f"{platform.base_url}/v1", api_key=platform.api_key, max_retries=0, timeout=120)
    asked = {"model": DEFAULT_MODEL, "input": QUESTION, "max_output_tokens": 24, "temperature": 0}
    whole = await aclient.responses.create(**asked)  # type: ignore[call-overload]
    async with aclient.responses.stream(**asked) as stream:  # type: ignore[call-overload]
        kinds, deltas = [], []
        async for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        streamed = await stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete") and len(deltas) > 1
    assert "".join(deltas) == streamed.output_text == whole.output_text


def test_logprobs_asked_by_include_are_the_chats_logprobs(platform: Platform) -> None:
    openai = client(platform)
    response = openai.responses.create(
        model=TINY_MODEL,
        input=QUESTION,
        max_output_tokens=6,
        temperature=0,
        include=["message.output_text.logprobs"],
        top_logprobs=2,
    )
    part = response.output[0].content[0]  # type: ignore[union-attr]
    chat = openai.chat.completions.create(
        model=TINY_MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    expected = chat.choices[0].logprobs.content  # type: ignore[union-attr]
    assert expected is not None and part.logprobs is not None and len(part.logprobs) == len(expected)
    assert [e.token for e in part.logprobs] == [e.token for e in expected]
    assert all(len(e.top_logprobs) == 2 for e in part.logprobs)


def test_what_is_not_served_is_a_400_naming_it_and_a_conversation_is_read_turn_by_turn(platform: Platform) -> None:
    openai = client(platform)
    for option, param in (
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"include": ["reasoning.encrypted_content"]}, "include"),
    ):
        with pytest.raises(BadRequestError) as err:
            openai.responses.create(model=TINY_MODEL, input=QUESTION, **option)  # type: ignore[arg-type]
        assert err.value.body["param"] == param and err.value.body["code"] == "unsupported_parameter"  # type: ignore[index]
    with pytest.raises(BadRequestError) as err:  # the chat's check, naming this API's field
        openai.responses.create(
            model=TINY_MODEL,
            input=QUESTION,
            include=["message.output_text.logprobs"],
            tools=[{"type": "function", "name": "f", "parameters": None, "strict": False}],
        )
    assert err.value.body["param"] == "include"  # type: ignore[index]
    conversation = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Paris."}]},
        {"role": "user", "content": [{"type": "input_text", "text": "And of Italy?"}]},
    ]
    answer = openai.responses.create(model=DEFAULT_MODEL, input=conversation, max_output_tokens=24, temperature=0)
    assert "Rome" in answer.output_text
    unknown = httpx.post(
        f"{platform.base_url}/v1/responses",
        json={"model": TINY_MODEL, "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
        headers=platform.auth,
    )
    assert unknown.status_code == 400 and unknown.json()["error"]["param"].startswith("input")


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


async def test_an_agent_loop_calls_a_function_and_answers_from_its_output(platform: Platform) -> None:
    """The loop OpenAI's Agents SDK runs with store false: the model calls a function (named here, so that the
    small model must), the caller runs it and sends the conversation back with the call and its output."""
    aclient = AsyncOpenAI(base_url=f"{platform.base_url}/v1", api_key=platform.api_key, max_retries=0, timeout=120)
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    asked = {"model": DEFAULT_MODEL, "tools": [WEATHER], "max_output_tokens": 60, "temperature": 0}
    named = {"type": "function", "name": "get_weather"}
    called = await aclient.responses.create(input=question, tool_choice=named, **asked)  # type: ignore[call-overload]
    calls = [item for item in called.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and called.status == "completed"
    assert set(json.loads(calls[0].arguments)) == {"city"}
    async with aclient.responses.stream(input=question, tool_choice=named, **asked) as stream:  # type: ignore[call-overload]
        deltas = [e.delta async for e in stream if e.type == "response.function_call_arguments.delta"]
        streamed = await stream.get_final_response()
    streamed_calls = [item for item in streamed.output if item.type == "function_call"]
    assert "".join(deltas) == streamed_calls[0].arguments == calls[0].arguments
    follow_up = [
        *question,
        calls[0].model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 24 C."},
    ]
    answer = await aclient.responses.create(input=follow_up, tool_choice="none", **asked)  # type: ignore[call-overload]
    assert answer.output_text and all(item.type == "message" for item in answer.output)


async def test_a_reasoning_models_thinking_is_a_reasoning_item_before_its_answer(platform: Platform) -> None:
    """The tiny model as a reasoning model (tests/e2e/test_reasoning.py: its template's think blocks, a thinking
    budget and a grammar for the answer, in vLLM's options that clients send on this route too)."""
    aclient = AsyncOpenAI(base_url=f"{platform.base_url}/v1", api_key=platform.api_key, max_retries=0, timeout=120)
    asked = {"model": TINY_MODEL, "input": "What is two plus two?", "max_output_tokens": 60, "temperature": 0}
    whole = await aclient.responses.create(**asked, extra_body=THINK_THEN_ANSWER)  # type: ignore[call-overload]
    assert [item.type for item in whole.output] == ["reasoning", "message"]
    thought = whole.output[0].content[0].text  # type: ignore[union-attr,index]
    assert thought and "think>" not in thought and re.fullmatch(ANSWER, whole.output_text)
    assert whole.usage is not None and 0 < whole.usage.output_tokens_details.reasoning_tokens <= BUDGET + 1
    async with aclient.responses.stream(**asked, extra_body=THINK_THEN_ANSWER) as stream:  # type: ignore[call-overload]
        deltas = [e.delta async for e in stream if e.type == "response.reasoning_text.delta"]
        streamed = await stream.get_final_response()
    assert "".join(deltas) == thought == streamed.output[0].content[0].text  # type: ignore[union-attr,index]
    hidden = await aclient.responses.create(**asked, extra_body=THINK_THEN_ANSWER | {"include_reasoning": False})  # type: ignore[call-overload]
    assert [item.type for item in hidden.output] == ["message"] and hidden.output_text == whole.output_text


def test_a_stored_response_is_continued_read_and_deleted_only_by_its_tenant_and_only_with_retention(
    platform: Platform,
) -> None:
    """OpenAI's conversation state: previous_response_id continues a stored response. Stored only for a tenant that
    keeps text; another tenant cannot read it; turning retention off makes it unreadable at once."""
    keeper = OpenAI(
        base_url=f"{platform.base_url}/v1",
        api_key=platform.new_tenant("keeps-responses", "--retention-days", "7"),
        max_retries=0,
        timeout=120,
    )
    first = keeper.responses.create(model=DEFAULT_MODEL, input=QUESTION, max_output_tokens=24, temperature=0)
    assert first.store is True and "Paris" in first.output_text
    assert keeper.responses.retrieve(first.id).output_text == first.output_text
    follow_up = "And what is the capital of Italy?"
    second = keeper.responses.create(
        model=DEFAULT_MODEL, input=follow_up, previous_response_id=first.id, max_output_tokens=24, temperature=0
    )
    assert second.previous_response_id == first.id
    whole = sent_whole(keeper, first.output_text, follow_up)  # the same conversation: the same answer
    assert whole.store is False and second.output_text == whole.output_text
    assert second.usage is not None and whole.usage is not None
    assert second.usage.input_tokens == whole.usage.input_tokens
    with pytest.raises(NotFoundError):
        keeper.responses.retrieve(whole.id)  # store false: not kept

    # what led to the second: the first's input and output, then its own input; latest first, page by page
    listed = list(keeper.responses.input_items.list(second.id, limit=1))
    assert [(item.type, item.role) for item in listed] == [  # type: ignore[union-attr]
        ("message", "user"),
        ("message", "assistant"),
        ("message", "user"),
    ]
    assert [item.content[0].text for item in listed] == [  # type: ignore[union-attr]
        follow_up,
        first.output_text,
        QUESTION,
    ]
    assert listed[1].id == first.output[0].id
    # the same conversation named by its stored items' ids (item_reference), as Codex sends it
    by_reference = keeper.responses.create(
        model=DEFAULT_MODEL,
        input=[
            {"type": "item_reference", "id": listed[2].id},
            {"type": "item_reference", "id": listed[1].id},
            {"role": "user", "content": follow_up},
        ],
        max_output_tokens=24,
        temperature=0,
    )
    assert by_reference.output_text == whole.output_text
    assert by_reference.usage is not None and by_reference.usage.input_tokens == whole.usage.input_tokens
    for refused, code in [
        (
            {"previous_response_id": first.id, "input": [{"type": "item_reference", "id": listed[1].id}]},
            "duplicate_item",
        ),
        ({"input": [{"type": "item_reference", "id": "msg_nowhere"}]}, "item_not_found"),
    ]:
        with pytest.raises(BadRequestError) as err:
            keeper.responses.create(model=DEFAULT_MODEL, max_output_tokens=2, **refused)  # type: ignore[call-overload]
        assert (err.value.body["code"], err.value.body["param"]) == (code, "input")  # type: ignore[index]

    default = client(platform)  # the session's tenant keeps no text
    with pytest.raises(NotFoundError):
        default.responses.retrieve(first.id)  # another tenant's
    with pytest.raises(BadRequestError) as err:
        default.responses.create(model=TINY_MODEL, input="hi", previous_response_id=first.id)
    assert err.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert "keeps no text" in err.value.body["message"] and "whole conversation" in err.value.body["message"]  # type: ignore[index]
    with pytest.raises(BadRequestError) as err:  # nowhere to keep it until it is read
        default.responses.create(model=TINY_MODEL, input="hi", background=True)
    assert err.value.body["param"] == "background" and "read later" in err.value.body["message"]  # type: ignore[index]
    with pytest.raises(BadRequestError) as err:  # another tenant's item, to a tenant that stores nothing
        default.responses.create(model=TINY_MODEL, input=[{"type": "item_reference", "id": listed[1].id}])
    assert err.value.body["param"] == "input"  # type: ignore[index]
    with pytest.raises(NotFoundError):
        default.responses.input_items.list(second.id)
    assert default.responses.create(model=TINY_MODEL, input="hi", max_output_tokens=2).store is False

    deleted = keeper.responses.delete(second.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(NotFoundError):
        keeper.responses.retrieve(second.id)
    platform.admin("tenants", "update", "keeps-responses", "--retention-days", "0")
    with pytest.raises(NotFoundError):  # at once: the store reads the tenant's retention as it stands
        keeper.responses.retrieve(first.id)
    # and the ingress's sweep (every 5 minutes) deletes it: the same call, made here
    assert asyncio.run(swept_and_left(platform, "keeps-responses")) == 0


def sent_whole(openai: OpenAI, answer: str, follow_up: str) -> Response:
    """QUESTION, its ``answer`` and the ``follow_up`` sent as one conversation, not stored."""
    return openai.responses.create(
        model=DEFAULT_MODEL,
        input=[
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": follow_up},
        ],
        max_output_tokens=24,
        temperature=0,
        store=False,
    )


async def swept_and_left(platform: Platform, tenant_id: str) -> int:
    """Sweeps the stored responses (as the ingress does every few minutes); how many the tenant has left."""
    pool = await connect_pool(platform.common.postgres_dsn)
    try:
        before = await pool.fetchval("SELECT count(*) FROM stored_responses WHERE tenant_id = $1", tenant_id)
        assert before >= 1, "the ingress swept them first; nothing left to test"
        await ResponseStore(pool).sweep()
        left: int = await pool.fetchval("SELECT count(*) FROM stored_responses WHERE tenant_id = $1", tenant_id)
    finally:
        await pool.close()
    return left


async def finished(client: AsyncOpenAI, response_id: str, within_s: float = 120) -> Response:
    """Polls a background response until it ends, as a client of background mode does."""
    async with asyncio.timeout(within_s):
        while (response := await client.responses.retrieve(response_id)).status in ("queued", "in_progress"):
            await asyncio.sleep(0.2)
    return response


async def test_a_background_response_is_polled_to_its_end_and_a_cancel_stops_its_work(platform: Platform) -> None:
    """Background mode: answered at once with the response queued; polling reads its end. A cancel ends it at once
    and stops the generation under way, and the end its instance then hears does not undo it."""
    keeper = AsyncOpenAI(
        base_url=f"{platform.base_url}/v1",
        api_key=platform.new_tenant("background", "--retention-days", "1"),
        max_retries=0,
        timeout=120,
    )
    queued = await keeper.responses.create(
        model=DEFAULT_MODEL, input=QUESTION, background=True, max_output_tokens=24, temperature=0
    )
    assert (queued.status, queued.background, queued.output) == ("queued", True, [])
    done = await finished(keeper, queued.id)
    assert done.status == "completed" and "Paris" in done.output_text and done.background is True
    assert done.usage is not None and done.usage.output_tokens > 0
    led_to = (await keeper.responses.input_items.list(done.id)).data
    assert [item.content[0].text for item in led_to] == [QUESTION]  # type: ignore[union-attr]

    asked = {name: value for name, value in LONG_RESPONSE.items() if name != "ignore_eos"}
    flowing = await keeper.responses.create(**asked, background=True, stream=True, extra_body={"ignore_eos": True})  # type: ignore[call-overload]
    long_id, _, _ = await first_deltas(flowing, 1)  # its tokens are flowing
    await flowing.close()  # (the work goes on: a background response's does)
    with pytest.raises(BadRequestError) as err:  # it has no answer to continue yet
        await keeper.responses.create(model=TINY_MODEL, input="Go on.", previous_response_id=long_id)
    assert err.value.body["code"] == "previous_response_unfinished"  # type: ignore[index]
    cancelled = await keeper.responses.cancel(long_id)
    assert cancelled.status == "cancelled"
    assert (await cancellation_of(platform, long_id)).reason == "requested"
    events = await replies_of(platform, long_id)  # the worker aborted it long before its 1500 tokens
    assert events[-1].event == "generation_failed" and events[-1].code == "cancelled", events[-1]
    assert sum(e.token_count for e in events if e.event == "tokens_generated") < 1500 / 4
    await asyncio.sleep(1)  # the instance has heard that end by now, and stored nothing over the cancel
    assert (await keeper.responses.retrieve(long_id)).status == "cancelled"
    assert (await keeper.responses.cancel(long_id)).status == "cancelled"  # again: no change

    with pytest.raises(BadRequestError) as err:
        await keeper.responses.cancel(done.id)  # it had ended
    assert err.value.body["param"] == "response_id"  # type: ignore[index]
    # greedy: a sampled token may be U+0000, which PostgreSQL cannot store
    stored = await keeper.responses.create(model=TINY_MODEL, input="hi", max_output_tokens=2, temperature=0)
    with pytest.raises(BadRequestError):
        await keeper.responses.cancel(stored.id)  # not a background response
    # the quota counts each answer's usage, and what the cancelled one generated until its cancel with its prompt's
    # estimate (its instance heard every token before the cancel's end)
    assert done.usage is not None and stored.usage is not None
    answered = done.usage.total_tokens + stored.usage.total_tokens
    counted = await platform.tokens_counted("background")
    generated = sum(e.token_count for e in events if e.event == "tokens_generated")
    assert 0 < generated < counted - answered <= generated + PROMPT_ESTIMATE_AT_MOST, (answered, counted, generated)
    for refused, param in [
        ({"store": False}, "store"),
    ]:
        with pytest.raises(BadRequestError) as err:
            await keeper.responses.create(model=TINY_MODEL, input="hi", background=True, **refused)  # type: ignore[call-overload]
        assert err.value.body["param"] == param  # type: ignore[index]
    with pytest.raises(BadRequestError) as err:  # a tenant that keeps no text cannot read it back
        client(platform).responses.create(model=TINY_MODEL, input="hi", background=True)
    assert err.value.body["param"] == "background"  # type: ignore[index]


async def first_deltas(stream: AsyncIterator[ResponseStreamEvent], count: int) -> tuple[str, list[str], int]:
    """Reads a streamed response up to its ``count``-th text delta: the response's id, those deltas, and the last
    one's sequence number (where a client taking the stream up again starts after)."""
    deltas: list[str] = []
    async for event in stream:
        if event.type == "response.created":
            response_id = event.response.id
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
            if len(deltas) == count:
                return response_id, deltas, event.sequence_number
    raise AssertionError(f"the stream ended after {len(deltas)} deltas")


async def test_a_streamed_background_response_is_taken_up_again_after_its_stream_is_cut(platform: Platform) -> None:
    """OpenAI's background streaming: the client's stream is cut (it leaves); the work goes on, and GET with
    stream=true and starting_after gives the events after the last one it read, from any instance, to the end."""
    keeper = AsyncOpenAI(
        base_url=f"{platform.base_url}/v1",
        api_key=platform.new_tenant("background-streams", "--retention-days", "1"),
        max_retries=0,
        timeout=120,
    )
    stream = await keeper.responses.create(
        model=DEFAULT_MODEL, input=QUESTION, background=True, stream=True, max_output_tokens=24, temperature=0
    )
    response_id, first_part, last_read = await first_deltas(stream, 1)
    await stream.close()  # the connection is cut here
    resumed = await keeper.responses.retrieve(response_id, stream=True, starting_after=last_read)
    rest = [event async for event in resumed]
    assert rest[0].sequence_number == last_read + 1 and rest[-1].type == "response.completed"
    text = "".join(first_part + [e.delta for e in rest if e.type == "response.output_text.delta"])
    assert text == rest[-1].response.output_text and "Paris" in text
    assert (await keeper.responses.retrieve(response_id)).output_text == text
    whole = [event async for event in await keeper.responses.retrieve(response_id, stream=True)]  # from the start
    assert [e.sequence_number for e in whole] == list(range(len(whole))) and whole[0].type == "response.created"

    polled = await keeper.responses.create(model=TINY_MODEL, input="hi", background=True, max_output_tokens=2)
    with pytest.raises(BadRequestError) as err:  # it was not streamed: no events kept
        await keeper.responses.retrieve(polled.id, stream=True)
    assert err.value.body["param"] == "stream"  # type: ignore[index]


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
async def test_a_background_response_outlives_the_ingress_finishing_it(platform: Platform, stop: str) -> None:
    """The instance finishing a streamed background response stops (a deploy: SIGTERM) or dies (SIGKILL) while its
    work runs. The work goes on, not cancelled; another instance takes the response over and stores its whole answer,
    a client taking the stream up again there gets every delta it had not read, and the tenant's quota is settled
    with the tokens it used (the instance that asked charged an estimate)."""
    tenant = f"background-handover-{stop.lower()}"
    api_key = platform.new_tenant(tenant, "--retention-days", "1")
    extra = start_extra_ingress(platform, f"background-{stop.lower()}")
    try:
        via_extra = AsyncOpenAI(base_url=f"http://127.0.0.1:{extra.port}/v1", api_key=api_key, max_retries=0)
        stream = await via_extra.responses.create(
            model=DEFAULT_MODEL,
            input="Count from one to one hundred in words.",
            max_output_tokens=200,
            temperature=0,  # the same benign text each time (a sampled story once tripped the output screening)
            background=True,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        response_id, first_part, last_read = await first_deltas(stream, 3)  # its tokens are flowing
        assert extra.process is not None
        extra.process.send_signal(getattr(signal, stop))
        extra.process.wait(timeout=60)
        await stream.close()
    finally:
        stop_service(extra)
    via_session = AsyncOpenAI(base_url=f"{platform.base_url}/v1", api_key=api_key, max_retries=0, timeout=120)
    resumed = await via_session.responses.retrieve(response_id, stream=True, starting_after=last_read)
    rest = [event async for event in resumed]
    done = await finished(via_session, response_id)
    assert done.status == "incomplete" and done.usage is not None and done.usage.output_tokens == 200, done
    assert len(done.output_text) > 200
    assert [e.sequence_number for e in rest] == list(range(last_read + 1, last_read + 1 + len(rest)))
    assert rest[-1].type == "response.incomplete" and rest[-1].response.output_text == done.output_text
    deltas = [e.delta for e in rest if e.type == "response.output_text.delta"]
    assert "".join(first_part + deltas) == done.output_text  # the deltas since the instance stopped too
    assert response_id not in {c.request_id for c in await cancellations(platform)}  # its work was never stopped
    counted = await platform.tokens_counted(tenant, until=done.usage.total_tokens)  # settled after the end is stored
    assert counted == done.usage.input_tokens + 200, (counted, done.usage)


async def test_every_background_response_of_a_killed_instance_is_finished_by_one_reading_of_its_replies(
    platform: Platform,
) -> None:
    """An instance dies with many background responses under way (some already answered, others generating): the
    instance that takes them over reads their reply topic once for all of them and stores each one's whole answer."""
    api_key = platform.new_tenant("background-many", "--retention-days", "1")
    extra = start_extra_ingress(platform, "background-many")
    try:
        via_extra = AsyncOpenAI(base_url=f"http://127.0.0.1:{extra.port}/v1", api_key=api_key, max_retries=0)
        asked = await asyncio.gather(
            *(
                via_extra.responses.create(
                    model=TINY_MODEL,
                    input=f"Story number {n}.",
                    max_output_tokens=16 + n,  # each its own length, to tell their answers apart
                    temperature=0,  # the same text each time (some of the tiny model's hold U+0000, not storable)
                    background=True,
                    extra_body={"ignore_eos": True},
                )
                for n in range(24)
            )
        )
        assert extra.process is not None
        extra.process.send_signal(signal.SIGKILL)
        extra.process.wait(timeout=60)
    finally:
        stop_service(extra)
    via_session = AsyncOpenAI(base_url=f"{platform.base_url}/v1", api_key=api_key, max_retries=0, timeout=60)
    done = await asyncio.gather(*(finished(via_session, response.id) for response in asked))
    outcomes = [(r.status, r.usage.output_tokens if r.usage else None, r.error) for r in done]
    assert outcomes == [("incomplete", 16 + n, None) for n in range(24)]


def test_a_conversation_keeps_its_items_and_a_response_in_it_reads_and_extends_it(platform: Platform) -> None:
    """OpenAI's Conversations API, as the Agents SDK's conversation sessions use it: a response named into a
    conversation reads its items first and adds its input and output to it; items are listed, added, read and
    deleted; only the tenant's own, and only while its retention covers them."""
    keeper = OpenAI(
        base_url=f"{platform.base_url}/v1",
        api_key=platform.new_tenant("keeps-conversations", "--retention-days", "7"),
        max_retries=0,
        timeout=120,
    )
    conversation = keeper.conversations.create(metadata={"topic": "capitals"})
    assert conversation.id.startswith("conv_") and conversation.metadata == {"topic": "capitals"}
    first = keeper.responses.create(
        model=DEFAULT_MODEL, input=QUESTION, conversation=conversation.id, max_output_tokens=24, temperature=0
    )
    assert "Paris" in first.output_text and first.conversation is not None
    assert first.conversation.id == conversation.id
    follow_up = "And what is the capital of Italy?"
    second = keeper.responses.create(
        model=DEFAULT_MODEL,
        input=follow_up,
        conversation={"id": conversation.id},
        max_output_tokens=24,
        temperature=0,
    )
    whole = sent_whole(keeper, first.output_text, follow_up)  # the same turns: the same answer
    assert second.output_text == whole.output_text
    assert second.usage is not None and whole.usage is not None
    assert second.usage.input_tokens == whole.usage.input_tokens
    items = list(keeper.conversations.items.list(conversation.id, order="asc", limit=3))  # pages of 3
    assert [(item.type, item.role) for item in items] == [  # type: ignore[union-attr]
        ("message", "user"),
        ("message", "assistant"),
        ("message", "user"),
        ("message", "assistant"),
    ]
    assert [item.content[0].text for item in items] == [  # type: ignore[union-attr]
        QUESTION,
        first.output_text,
        follow_up,
        second.output_text,
    ]
    assert items[1].id == first.output[0].id

    added = keeper.conversations.items.create(
        conversation.id, items=[{"type": "message", "role": "user", "content": "Thank you."}]
    )
    (thanks,) = added.data
    named = keeper.responses.create(  # an item of the conversation alone, named by its id
        model=TINY_MODEL, input=[{"type": "item_reference", "id": thanks.id}], max_output_tokens=2, store=False
    )
    assert named.usage is not None and named.usage.input_tokens > 0
    assert keeper.conversations.items.retrieve(thanks.id, conversation_id=conversation.id).id == thanks.id  # type: ignore[union-attr]
    assert keeper.conversations.items.delete(thanks.id, conversation_id=conversation.id).id == conversation.id  # type: ignore[union-attr]
    assert len(keeper.conversations.items.list(conversation.id).data) == 4
    with pytest.raises(NotFoundError):
        keeper.conversations.items.retrieve(thanks.id, conversation_id=conversation.id)  # type: ignore[union-attr]
    assert keeper.conversations.update(conversation.id, metadata={"topic": "Europe"}).metadata == {"topic": "Europe"}
    assert keeper.conversations.retrieve(conversation.id).metadata == {"topic": "Europe"}

    for refused, param in [
        ({"conversation": conversation.id, "previous_response_id": first.id}, "previous_response_id"),
        ({"conversation": conversation.id, "store": False}, "store"),
    ]:
        with pytest.raises(BadRequestError) as err:
            keeper.responses.create(model=TINY_MODEL, input="hi", max_output_tokens=2, **refused)  # type: ignore[call-overload]
        assert err.value.body["param"] == param  # type: ignore[index]
    with pytest.raises(NotFoundError):
        keeper.responses.create(model=TINY_MODEL, input="hi", conversation="conv_nowhere")
    with pytest.raises(BadRequestError):  # a conversation keeps items, not references
        keeper.conversations.items.create(conversation.id, items=[{"type": "item_reference", "id": items[0].id}])
    with pytest.raises(BadRequestError) as err:  # an id it holds already
        keeper.conversations.items.create(
            conversation.id, items=[{"id": items[0].id, "type": "message", "role": "user", "content": "again"}]
        )
    assert err.value.body["code"] == "duplicate_item"  # type: ignore[index]
    # PostgreSQL's jsonb cannot hold U+0000: a clear 400 for items, and an answer not stored for a response
    with pytest.raises(BadRequestError) as err:
        keeper.conversations.items.create(conversation.id, items=[{"role": "user", "content": "a\u0000b"}])
    assert err.value.body["param"] == "items"  # type: ignore[index]
    unstorable = keeper.responses.create(
        model=TINY_MODEL, input="a\u0000b", max_output_tokens=2, extra_body={"ignore_eos": True}
    )
    assert unstorable.store is False and unstorable.status == "incomplete"  # answered (cut at 2 tokens), not kept

    default = client(platform)  # the session's tenant keeps no text
    with pytest.raises(NotFoundError):
        default.conversations.retrieve(conversation.id)  # another tenant's
    with pytest.raises(BadRequestError) as err:
        default.conversations.create()
    assert err.value.body["param"] == "conversation"  # type: ignore[index]

    platform.admin("tenants", "update", "keeps-conversations", "--retention-days", "0")
    with pytest.raises(NotFoundError):  # at once: the store reads the tenant's retention as it stands
        keeper.conversations.items.list(conversation.id)
    assert asyncio.run(conversations_swept_and_left(platform, "keeps-conversations")) == 0
    platform.admin("tenants", "update", "keeps-conversations", "--retention-days", "7")
    with pytest.raises(NotFoundError):  # the sweep deleted it
        keeper.conversations.retrieve(conversation.id)


async def conversations_swept_and_left(platform: Platform, tenant_id: str) -> int:
    """Sweeps conversations (as the ingress does every few minutes); how many the tenant has left."""
    pool = await connect_pool(platform.common.postgres_dsn)
    try:
        count = "SELECT count(*) FROM conversations WHERE tenant_id = $1"
        assert await pool.fetchval(count, tenant_id) >= 1, "the ingress swept them first; nothing left to test"
        await ConversationStore(pool).sweep()
        left: int = await pool.fetchval(count, tenant_id)
    finally:
        await pool.close()
    return left
