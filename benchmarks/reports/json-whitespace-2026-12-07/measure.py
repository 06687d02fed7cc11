"""Does a JSON schema answer close? SmolLM2 in process (the worker's engine adapter), temperature 0, max_tokens 300,
eight questions, two schemas, each answer under:
- json: the schema given to vLLM as it is (``StructuredOutputsParams(json=...)``), white space unbounded, as ferry did
  before (the worker's conversion turned off here);
- capN: xgrammar's grammar of the schema with at most N white-space characters between two tokens, given to vLLM as
  a grammar, as ferry does now with N = 20 (services/worker/engine.py, json_grammar).

Run from the repository root (vLLM's log lines begin with "("):
``PYTHONPATH=. python benchmarks/reports/json-whitespace-2026-12-07/measure.py json,cap20,cap8 | grep -v "^("``
"""

import asyncio
import json
import sys
import uuid
from pathlib import Path

import xgrammar

from services.worker import engine as engine_module
from services.worker.engine import Engine, EngineConfig
from shared.contracts import ChatMessage, ResponseFormat, SamplingParams, StructuredOutputs

FLAT = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
NESTED = {
    "type": "object",
    "properties": {
        "person": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "address": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "street": {"type": "string"}},
                    "required": ["city", "street"],
                },
            },
            "required": ["name", "address"],
        },
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["person", "tags"],
}
QUESTIONS = [
    "Give a person",
    "Describe a person named Ann who is 30 as JSON",
    "Make up a person.",
    "Who are you? Answer in JSON.",
    "Write JSON for a customer record",
    "Invent a character for a novel",
    "Tell me about a famous scientist",
    "A person from Paris",
]


def sampling(mode: str, schema: dict) -> SamplingParams:
    if mode == "json":
        engine_module.json_grammar = lambda schema_json: None  # type: ignore[assignment]  # vLLM gets the schema
        return SamplingParams(
            max_tokens=300,
            temperature=0,
            response_format=ResponseFormat(type="json_schema", json_schema=schema, strict=True),
        )
    grammar = xgrammar.Grammar.from_json_schema(json.dumps(schema), max_whitespace_cnt=int(mode.removeprefix("cap")))
    return SamplingParams(max_tokens=300, temperature=0, structured_outputs=StructuredOutputs(grammar=str(grammar)))


async def main(modes: list[str]) -> None:
    path = Path.home() / ".cache/ferry/models/smollm2-135m-instruct"
    engine = await Engine.start(EngineConfig("smollm2-135m-instruct", path, 2048, 0.25, 8))
    try:
        for name, schema in (("two fields", FLAT), ("nested, with an array", NESTED)):
            for mode in modes:
                closed, tokens, lines = 0, 0, []
                for question in QUESTIONS:
                    prompt = engine.render_prompt([ChatMessage(role="user", content=question)])
                    text, finish, count = "", None, 0
                    async for step in engine.generate(uuid.uuid4().hex, prompt, sampling(mode, schema)):
                        text, count, finish = text + step.text, count + step.new_tokens, step.finish_reason or finish
                    try:
                        json.loads(text)
                        parses = True
                    except ValueError:
                        parses = False
                    closed += parses
                    tokens += count
                    ends = f"{text[:50]!r} ... {text[-50:]!r}"
                    lines.append(f"    {finish:6} {count:4} tokens, parses: {parses!s:5} {ends}")
                print(f"{name}, {mode}: {closed}/{len(QUESTIONS)} parse, {tokens} tokens in all")
                print("\n".join(lines))
    finally:
        await engine.shutdown()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1].split(",")))
