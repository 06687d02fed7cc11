"""OpenAI's Responses API through the whole platform, with the official client: whole and streamed (its own stream
helper checks the event sequence), the same answer as the chat it amounts to, and what is not served refused by
name."""

from __future__ import annotations

import httpx
import pytest
from openai import AsyncOpenAI, BadRequestError, OpenAI

from tests.e2e.platform import DEFAULT_MODEL, TINY_MODEL, Platform

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


def test_what_is_not_served_is_a_400_naming_it_and_a_conversation_is_read_turn_by_turn(platform: Platform) -> None:
    openai = client(platform)
    tool = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}
    for option, param in (({"tools": [tool]}, "tools"), ({"previous_response_id": "resp_1"}, "previous_response_id")):
        with pytest.raises(BadRequestError) as err:
            openai.responses.create(model=TINY_MODEL, input=QUESTION, **option)  # type: ignore[arg-type]
        assert err.value.body["param"] == param and err.value.body["code"] == "unsupported_parameter"  # type: ignore[index]
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
