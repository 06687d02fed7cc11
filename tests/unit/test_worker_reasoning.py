"""How a reasoning model's think block is told apart from its answer, streamed or whole."""

from __future__ import annotations

import json
from functools import partial
from types import SimpleNamespace

import pytest
import xgrammar

from services.worker.engine import JSON_WHITESPACE_LIMIT, Engine, InvalidRequest
from services.worker.reasoning import (
    GEMMA4_THINK,
    GRANITE_THINK,
    HUNYUAN_THINK,
    MISTRAL_THINK,
    SEED_THINK,
    THINK,
    ReasoningReader,
    ThinkMarkers,
    think_markers,
    think_then,
    thinking_room,
)
from shared.contracts import ResponseFormat, SamplingParams, StructuredOutputs
from tests.unit.char_tokenizer import char_tokenizer

QWEN3_PROMPT = "<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n"
R1_0528_PROMPT = "<｜User｜>Why?<｜Assistant｜><think>\n"  # the template opens the block itself
NOT_THINKING_PROMPT = QWEN3_PROMPT + "<think>\n\n</think>\n\n"  # Qwen3 with enable_thinking false
# Magistral's and Ministral 3's (Mistral's reasoning models): the model opens its block itself
MAGISTRAL_PROMPT = "<s>[SYSTEM_PROMPT]Think in [THINK]...[/THINK] first.[/SYSTEM_PROMPT][INST]Why?[/INST]"


def streamed(reader: ReasoningReader, chunks: list[str]) -> tuple[str, str]:
    reasoning = answer = ""
    for chunk in chunks:
        more_reasoning, more_answer = reader.feed(chunk)
        reasoning, answer = reasoning + more_reasoning, answer + more_answer
    rest_reasoning, rest_answer = reader.finish()
    return reasoning + rest_reasoning, answer + rest_answer


# a Hermes model's markers when it may call: its call's opening ends its thoughts too
HERMES_CALLING = THINK._replace(answer_starts=("<tool_call>",))
CASES = [
    # (prompt, output, reasoning, answer)
    (QWEN3_PROMPT, "<think>\nBlue scatters.\n</think>\n\nRayleigh.", "\nBlue scatters.\n", "Rayleigh."),
    (QWEN3_PROMPT, "<think>a < b</think>Yes", "a < b", "Yes"),
    (QWEN3_PROMPT, "\n<think>late</think>", None, "\n<think>late</think>"),  # a block opens only at the start
    (QWEN3_PROMPT, "An answer with <think> in it.", None, "An answer with <think> in it."),
    (QWEN3_PROMPT, "<thin", None, "<thin"),  # cut short inside the tag: text after all
    (QWEN3_PROMPT, "<think>Cut short by max_tokens </thi", "Cut short by max_tokens </thi", ""),
    (QWEN3_PROMPT, "<think>x</think>\n\n", "x", ""),
    (R1_0528_PROMPT, "Okay, the user asks why.\n</think>\n\nBecause.", "Okay, the user asks why.\n", "Because."),
    (R1_0528_PROMPT, "</think>Empty thoughts", None, "Empty thoughts"),
    (NOT_THINKING_PROMPT, "Because.", None, "Because."),
    (QWEN3_PROMPT, "   ", None, "   "),
    # a call straight from the thoughts ends them, as vLLM's qwen3 parser reads it
    (
        QWEN3_PROMPT,
        '<think>Call f.\n<tool_call>\n{"name": "f"}\n</tool_call>',
        "Call f.\n",
        '<tool_call>\n{"name": "f"}\n</tool_call>',
    ),
]
GEMMA4_PROMPT = "<bos><|turn>system\n<|think|>\n<turn|>\n<|turn>user\nWhy?<turn|>\n<|turn>model\n"
GEMMA4_CASES = [
    (GEMMA4_PROMPT, "<|channel>thought\nBlue scatters.\n<channel|>Rayleigh.", "Blue scatters.\n", "Rayleigh."),
    (GEMMA4_PROMPT, "<|channel>thought\n<channel|>Rayleigh.", None, "Rayleigh."),  # thinking off: an empty channel
    (GEMMA4_PROMPT, "<|channel>thought\nx<channel|><|tool_call>call:f{}<tool_call|>", "x",
     "<|tool_call>call:f{}<tool_call|>"),
    (GEMMA4_PROMPT, "<|channel>thou", None, "<|channel>thou"),
    (GEMMA4_PROMPT, "<|channel>thought\nCut short <chan", "Cut short <chan", ""),
    (GEMMA4_PROMPT + "<|channel>thought\n", "Inside.<channel|>Out.", "Inside.", "Out."),  # the prompt opened it
    # a call straight from its thoughts ends them, as vLLM's parser reads it
    (GEMMA4_PROMPT, "<|channel>thought\nCall f.<|tool_call>call:f{}<tool_call|>", "Call f.",
     "<|tool_call>call:f{}<tool_call|>"),
]  # fmt: skip
SEED_PROMPT = "<seed:bos>user\nWhy?<seed:eos><seed:bos>assistant\n"
SEED_CASES = [
    (SEED_PROMPT, "<seed:think>Blue scatters.</seed:think>Rayleigh.", "Blue scatters.", "Rayleigh."),
    (SEED_PROMPT, "<seed:think>Look it up.<seed:tool_call><function=f></function></seed:tool_call>", "Look it up.",
     "<seed:tool_call><function=f></function></seed:tool_call>"),  # a call straight from its thoughts
    (SEED_PROMPT, "<think>not its markers</think>", None, "<think>not its markers</think>"),
]  # fmt: skip
GRANITE_PROMPT = "<|start_of_role|>user<|end_of_role|>Why?<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>"
GRANITE_CASES = [
    (GRANITE_PROMPT, "Here is my thought process:\nBlue scatters.\n\nHere is my response:\nRayleigh.",
     "\nBlue scatters.\n\n", "Rayleigh."),
    (GRANITE_PROMPT, "Here is why: blue scatters.", None, "Here is why: blue scatters."),  # thinking off
    (GRANITE_PROMPT, "Here is my thought process:\nCut short. Here is my", "\nCut short. Here is my", ""),
]  # fmt: skip
HUNYUAN_PROMPT = "<|startoftext|>Why?<|extra_0|>"
HUNYUAN_CASES = [
    (HUNYUAN_PROMPT, "<think>\nBlue scatters.\n</think>\n<answer>\nRayleigh.\n</answer>", "\nBlue scatters.\n",
     "Rayleigh."),
    (HUNYUAN_PROMPT + "<think>\n\n</think>\n", "<answer>\nRayleigh.\n</answer>", None, "Rayleigh."),  # thinking off
    (HUNYUAN_PROMPT, "<think>\nx\n</think>\nRayleigh.", "\nx\n", "Rayleigh."),  # no wrap
    (HUNYUAN_PROMPT, "<answer>\nA line.\n\nAnother.\n</answer>\nleft out", None, "A line.\n\nAnother."),
    (HUNYUAN_PROMPT, "<think>\nx\n</think>\n<answer>\nCut short <", "\nx\n", "Cut short <"),
    (HUNYUAN_PROMPT, "<a href='x'>link</a>", None, "<a href='x'>link</a>"),  # no wrap, though it begins alike
    (HUNYUAN_PROMPT, "<answer>\n</answer>", None, ""),
    (HUNYUAN_PROMPT, '<think>\nx\n</think>\n<answer>\n<tool_calls>[{"name": "f"}]</tool_calls>\n</answer>', "\nx\n",
     '<tool_calls>[{"name": "f"}]</tool_calls>'),  # its calls, for the call reader
]  # fmt: skip
MISTRAL_CASES = [
    (MAGISTRAL_PROMPT, "[THINK]Blue scatters.[/THINK]Rayleigh.", "Blue scatters.", "Rayleigh."),
    (MAGISTRAL_PROMPT, "[THINK]x[/THINK][TOOL_CALLS]f[ARGS]{}", "x", "[TOOL_CALLS]f[ARGS]{}"),  # for the call reader
    (MAGISTRAL_PROMPT, "An answer with [THINK] in it.", None, "An answer with [THINK] in it."),
    (MAGISTRAL_PROMPT, "<think>not its markers</think>", None, "<think>not its markers</think>"),
    (MAGISTRAL_PROMPT, "[THI", None, "[THI"),
    (MAGISTRAL_PROMPT, "[THINK]Cut short [/THI", "Cut short [/THI", ""),
]


@pytest.mark.parametrize(
    ("markers", "prompt", "output", "reasoning", "answer"),
    [(HERMES_CALLING, *case) for case in CASES]
    + [(MISTRAL_THINK, *case) for case in MISTRAL_CASES]
    + [(GEMMA4_THINK._replace(answer_starts=("<|tool_call>",)), *case) for case in GEMMA4_CASES]
    + [(SEED_THINK._replace(answer_starts=("<seed:tool_call>",)), *case) for case in SEED_CASES]
    + [(GRANITE_THINK, *case) for case in GRANITE_CASES]
    + [(HUNYUAN_THINK, *case) for case in HUNYUAN_CASES],
)
def test_reasoning_is_read_whole_and_streamed_alike_however_the_output_is_split(
    markers: ThinkMarkers, prompt: str, output: str, reasoning: str | None, answer: str
) -> None:
    whole_reasoning, whole_answer, spans = ReasoningReader.split_whole(output, prompt, False, markers)
    assert (whole_reasoning, whole_answer) == (reasoning, answer)
    # where the tokens to count as reasoning lie
    assert ("".join(output[a:b] for a, b in spans) or None) == reasoning
    for size in (1, 2, 3, 7, len(output)):
        chunks = [output[i : i + size] for i in range(0, len(output), size)]
        assert streamed(ReasoningReader.for_prompt(prompt, False, markers), chunks) == (reasoning or "", answer)


def test_a_partial_tag_waits_and_nothing_else_does() -> None:
    reader = ReasoningReader.for_prompt(QWEN3_PROMPT, False, THINK)
    assert reader.feed("<thi") == ("", "")
    assert reader.feed("nk>Let me see") == ("Let me see", "")
    assert reader.feed(", two</") == (", two", "")
    assert reader.feed("think>") == ("", "")
    assert reader.feed("\n\n") == ("", "")  # the space between the block and the answer is dropped
    assert reader.feed("Four.") == ("", "Four.")
    assert reader.state == "answer"
    # an answer never waits: white space at the start is answer at once (a model that writes only white space
    # streams it), as is anything that cannot begin the tag
    assert ReasoningReader.for_prompt(QWEN3_PROMPT, False, THINK).feed("\n") == ("", "\n")
    assert ReasoningReader.for_prompt(QWEN3_PROMPT, False, THINK).feed("<b>") == ("", "<b>")


def test_under_a_grammar_from_the_first_token_the_output_begins_outside_the_block() -> None:
    # a grammar that could not be composed with thinking holds from the first token, so what it allows is the
    # answer (a JSON object, say), even after an opening prompt
    assert ReasoningReader.split_whole('{"a": 1}', R1_0528_PROMPT, True, THINK)[:2] == (None, '{"a": 1}')
    # a grammar that lets the model write a block first is still read as one
    assert ReasoningReader.split_whole("<think>hm</think>{}", QWEN3_PROMPT, True, THINK)[:2] == ("hm", "{}")


def test_only_the_end_of_the_prompt_opens_or_closes_a_block() -> None:
    assert thinking_room(R1_0528_PROMPT, THINK) == "inside"
    assert thinking_room(NOT_THINKING_PROMPT, THINK) == "closed"
    assert thinking_room(QWEN3_PROMPT, THINK) == "may_open"
    mentioned = "<|im_start|>user\nWhat does <think> mean?<|im_end|>\n<|im_start|>assistant\n"
    assert thinking_room(mentioned, THINK) == "may_open"
    assert thinking_room(MAGISTRAL_PROMPT, MISTRAL_THINK) == "may_open"  # its system prompt names both markers
    assert thinking_room(MAGISTRAL_PROMPT + "[THINK]", MISTRAL_THINK) == "inside"
    assert thinking_room(R1_0528_PROMPT, MISTRAL_THINK) == "may_open"  # another model's markers mean nothing
    assert thinking_room(GEMMA4_PROMPT + "<|channel>thought\n", GEMMA4_THINK) == "inside"


def accepts(grammar: dict | str, text: str) -> bool:
    spec = grammar if isinstance(grammar, str) else json.dumps(grammar)
    return xgrammar.testing._is_grammar_accept_string(xgrammar.Grammar.from_structural_tag(spec), text)


JSON_ANSWER = {"type": "json_schema", "json_schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}


def test_under_a_grammar_the_model_may_think_first_and_the_grammar_holds_for_the_answer() -> None:
    may_open = think_then(JSON_ANSWER, "may_open", None, THINK)
    assert may_open is not None
    assert accepts(may_open, '<think>\nThe user wants a.\n</think>\n\n{"a": 1}')
    assert accepts(may_open, '{"a": 1}')  # or not think at all
    assert not accepts(may_open, 'Sure! {"a": 1}')  # what is not in a block is the answer
    assert not accepts(may_open, '<think>x</think>\n\n{"a": "one"}')
    assert not accepts(may_open, "<think>x</think>" + "\n" * 5 + '{"a": 1}')  # a gap to waste tokens in: no
    inside = think_then({"type": "regex", "pattern": "[A-Z][a-z]+\\."}, "inside", None, THINK)
    assert inside is not None
    assert accepts(inside, "Two and two.\n</think>\n\nFour.")
    assert not accepts(inside, "Four.")  # the prompt opened the block: it ends before the answer


@pytest.mark.parametrize("markers", [THINK, MISTRAL_THINK, GEMMA4_THINK, SEED_THINK, GRANITE_THINK])
def test_a_budget_alone_holds_a_block_the_model_opens_and_leaves_an_answer_free(markers: ThinkMarkers) -> None:
    """Where the prompt leaves the model free to open a block (Qwen3's templates with thinking on), a budget with no
    grammar for the answer: a block the output opens must close, at most BUDGET tokens in; an output that begins
    otherwise is free, a mention of the marker later in it included."""
    budgeted = think_then(None, "may_open", 4, markers)
    assert budgeted is not None
    start, end = markers.start, markers.end
    assert accepts(budgeted, f"{start}Hm.{end}\n\nAnything at all, {start} included.")
    assert accepts(budgeted, f"Paris. {start}is a marker") and accepts(budgeted, "")
    assert not accepts(budgeted, f"{start}thinking that never ends")  # before, the free branch took it
    # token by token (a token a character here): once the block holds four, only its end may follow
    tokenizer = char_tokenizer()
    info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
    matcher = xgrammar.GrammarMatcher(xgrammar.GrammarCompiler(info).compile_structural_tag(json.dumps(budgeted)))
    for token in tokenizer.encode(start + "abcd", add_special_tokens=False):
        assert matcher.accept_token(token)
    mask = xgrammar.allocate_token_bitmask(1, info.vocab_size)
    matcher.fill_next_token_bitmask(mask)
    allowed = [t for t in range(info.vocab_size) if (int(mask[0][t // 32]) >> (t % 32)) & 1]
    assert [tokenizer.decode([t]) for t in allowed] == [end[0]]


def test_a_budget_alone_leaves_the_answer_free_and_a_closed_block_or_nothing_asked_means_no_grammar() -> None:
    budgeted = think_then(None, "inside", 16, THINK)
    assert budgeted is not None and accepts(budgeted, "hm</think>Anything at all, <think> included.")
    assert think_then(JSON_ANSWER, "closed", 16, THINK) is None  # thinking was switched off: the grammar holds at once
    # any budget the API takes makes a grammar xgrammar takes (it counts in 32 bits)
    huge = think_then(None, "inside", 10**30, THINK)
    assert huge is not None and accepts(huge, "hm</think>Yes.")
    assert think_then(None, "may_open", None, THINK) is None


def test_the_engine_composes_each_form_of_grammar_it_takes_and_leaves_alone_what_it_cannot() -> None:
    def composed(**form: object) -> str | None:
        sampling = SamplingParams(max_tokens=8, **form)  # type: ignore[arg-type]
        return Engine.thinking_grammar(sampling, partial(think_then, room="may_open", budget=None, markers=THINK))

    choice = composed(structured_outputs=StructuredOutputs(choice=["yes", "no"]))
    assert choice is not None and accepts(choice, "<think>hm</think>no") and not accepts(choice, "maybe")
    lark = composed(structured_outputs=StructuredOutputs(grammar='start: "a" DIGITS\nDIGITS: /[0-9]+/'))
    assert lark is not None and accepts(lark, "<think>hm</think>\na12") and not accepts(lark, "b")
    ebnf = composed(structured_outputs=StructuredOutputs(grammar='root ::= "a" [0-9]+'))
    assert ebnf is not None and accepts(ebnf, "a1")
    json_object = composed(response_format=ResponseFormat(type="json_object"))
    assert json_object is not None and accepts(json_object, '<think>x</think>{"b": [1]}')
    assert not accepts(json_object, "[]")
    # its JSON's white space is bounded, as without thinking (engine.JSON_WHITESPACE_LIMIT)
    assert accepts(json_object, '<think>x</think>{\n  "b": 1\n}')
    assert not accepts(json_object, "<think>x</think>{" + "\n" * (JSON_WHITESPACE_LIMIT + 1) + '"b": 1}')
    strict = composed(
        response_format=ResponseFormat(
            type="json_schema", json_schema={"type": "object", "properties": {"a": {"type": "integer"}}}, strict=True
        )
    )
    assert strict is not None and accepts(strict, '{"a": 1}') and not accepts(strict, '{"a": 1, "b": 2}')
    # a schema xgrammar cannot enforce goes to llguidance as it is, and a form that does not parse gets vLLM's own
    # error naming the client's field: neither is composed
    unique = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}
    assert composed(response_format=ResponseFormat(type="json_schema", json_schema=unique)) is None
    assert composed(structured_outputs=StructuredOutputs(regex="(unclosed")) is None
    assert composed(structured_outputs=StructuredOutputs(grammar="root ::= ")) is None


# the assistant turn of Mistral's reasoning templates (Magistral, Ministral 3), as mistral_common writes them
MISTRAL_ASSISTANT_TURN = """{%- for message in messages %}
{%- if message['role'] == 'user' %}{{- '[INST]' + message['content'] + '[/INST]' }}
{%- elif message['role'] == 'assistant' %}
    {%- if message['content'] is string and message['content'] != '' %}{{- message['content'] }}
    {%- elif message['content'] | length > 0 %}
        {%- for block in message['content'] %}
            {%- if block['type'] == 'text' %}{{- block['text'] }}
            {%- elif block['type'] == 'thinking' %}{{- '[THINK]' + block['thinking'] + '[/THINK]' }}
            {%- else %}{{- raise_exception('Only text and thinking chunks are supported.') }}
            {%- endif %}
        {%- endfor %}
    {%- endif %}
    {{- '</s>' }}
{%- endif %}
{%- endfor %}"""


def test_a_model_reasons_when_its_template_writes_or_strips_think_blocks() -> None:
    qwen3_like = "{% set content = message.content.split('</think>')[-1] %}"
    assert think_markers(qwen3_like) == THINK
    assert think_markers(MISTRAL_ASSISTANT_TURN) == MISTRAL_THINK
    gemma4_strips = "{%- for part in text.split('<channel|>') -%}{%- if '<|channel>' in part -%}"
    assert think_markers(gemma4_strips) == GEMMA4_THINK
    seed_oss = "{%- set content = '<seed:think>' + message.reasoning_content + '</seed:think>' + content %}"
    assert think_markers(seed_oss) == SEED_THINK
    # Granite 3.2's system turn, when thinking is on
    granite = (
        "Write your thoughts after 'Here is my thought process:' and write your response after 'Here is my response:'"
    )
    assert think_markers('{%- set system_message = "' + granite + '" %}') == GRANITE_THINK
    # Hunyuan A13B's (as vLLM's example template for it writes its turns and thinking switch)
    hunyuan = "{% set content = '<|startoftext|>' + content + '<|extra_0|>' %}{{- '<think>\\n\\n</think>\\n' }}"
    assert think_markers(hunyuan) == HUNYUAN_THINK
    assert think_markers("{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] }}") is None
    assert think_markers(None) is None


def test_under_a_grammar_mistral_and_gemma_models_think_in_their_own_markers() -> None:
    grammar = think_then(JSON_ANSWER, "may_open", 16, MISTRAL_THINK)
    assert grammar is not None
    assert accepts(grammar, '[THINK]The user wants a.[/THINK]{"a": 1}')
    assert accepts(grammar, '{"a": 1}')
    assert not accepts(grammar, '<think>x</think>{"a": 1}')
    gemma4 = think_then(JSON_ANSWER, "may_open", None, GEMMA4_THINK)
    assert gemma4 is not None and accepts(gemma4, '<|channel>thought\nHm.\n<channel|>{"a": 1}')
    granite = think_then(JSON_ANSWER, "may_open", None, GRANITE_THINK)
    assert granite is not None
    assert accepts(granite, 'Here is my thought process:\nHm.\n\nHere is my response:\n{"a": 1}')
    assert not accepts(granite, 'Here is my thought process:\nHm.\n\n{"a": 1}')
    hunyuan = think_then(JSON_ANSWER, "may_open", None, HUNYUAN_THINK)
    assert hunyuan is not None
    assert accepts(hunyuan, '<think>\nHm.\n</think>\n<answer>\n{"a": 1}\n</answer>')
    assert accepts(hunyuan, '<think>\nHm.\n</think>\n{"a": 1}')
    assert not accepts(hunyuan, "<think>\nHm.\n</think>\n<answer>\nNo JSON.\n</answer>")


def engine_of(tokenizer):  # type: ignore[no-untyped-def]
    """An engine with only ``tokenizer``, of a model vLLM gives no tokenizer of its own (one with a chat template)."""
    engine = Engine.__new__(Engine)
    engine._tokenizer = tokenizer
    engine._llm = SimpleNamespace(model_config=SimpleNamespace(tokenizer_mode="auto"))
    return engine


def word_tokenizer(tokens: tuple[str, ...], special: bool, chat_template: str):  # type: ignore[no-untyped-def]
    """A tokenizer made here, whose think markers' ``tokens`` are added tokens, special or not."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"[UNK]": 0, "Two": 1, "and": 2, "two": 3, "Four.": 4}
    backend = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    tokenizer.add_tokens([AddedToken(token, special=special) for token in tokens])
    tokenizer.chat_template = chat_template
    return tokenizer


def test_an_earlier_turns_reasoning_reaches_a_mistral_template_as_a_thinking_chunk() -> None:
    from shared.contracts import ChatMessage

    engine = engine_of(word_tokenizer(MISTRAL_THINK[:2], True, MISTRAL_ASSISTANT_TURN + "{# tools #}"))
    chat = [
        ChatMessage(role="user", content="Two and two?"),
        ChatMessage(role="assistant", content="Four.", reasoning="Two and two"),
        ChatMessage(role="user", content="Sure?"),
    ]
    prompt = engine.render_prompt(chat)
    assert prompt == "[INST]Two and two?[/INST][THINK]Two and two[/THINK]Four.</s>[INST]Sure?[/INST]"
    # a turn that only thought (before a call, say) is one chunk
    chat[1] = ChatMessage(role="assistant", content="", reasoning="Hm")
    assert "[/INST][THINK]Hm[/THINK]</s>" in engine.render_prompt(chat)


@pytest.mark.parametrize("kind", ["byte_level", "metaspace"])
def test_a_blocks_tokens_are_counted_as_generated_whatever_the_steps_held(kind: str) -> None:
    """Engine.tokens_within decodes only the step where an edge falls; it must count what decoding every prefix of the
    whole output counts. Tokenizers trained here: a byte-level one (GPT-2's, SmolLM2's kind) splits characters of
    several bytes across tokens; a metaspace one (SentencePiece's, Llama 2's kind) drops the space a text's first token
    begins with, so a step decoded alone reads shorter than in context."""
    import random

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    if kind == "byte_level":
        bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
        alphabet = []
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=alphabet, show_progress=False)
    bpe.train_from_iterator(["The capital of France is Paris. Ça coûte 5 €; 東京は首都です。"] * 50, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe)
    engine = engine_of(tokenizer)

    def fitting(ids: list[int], chars: int) -> int:  # the longest prefix of tokens whose text fits in ``chars``
        return max(m for m in range(len(ids) + 1) if len(tokenizer.decode(ids[:m])) <= chars)

    rng = random.Random(7)
    for _ in range(300):
        ids = [rng.randrange(tokenizer.vocab_size) for _ in range(rng.randrange(3, 40))]
        steps, at, text = [], 0, ""
        while at < len(ids):  # the texts an incremental detokenizer gives, a few tokens a step
            size = rng.randrange(1, 5)
            whole = tokenizer.decode(ids[: at + size])
            steps.append((whole[len(text) :], ids[at : at + size]))
            at, text = at + size, whole
        # edges at a token's end, or one character either side: where a miscount would show
        edges = sorted(
            min(max(len(tokenizer.decode(ids[: rng.randrange(len(ids) + 1)])) + rng.choice((-1, 0, 1)), 0), len(text))
            for _ in range(2)
        )
        start, end = edges
        expected = fitting(ids, end) - (fitting(ids, start) if start else 0)
        assert engine.tokens_within(steps, (start, end), keep_special_tokens=False) == expected, (ids, start, end)


@pytest.mark.parametrize("special", [True, False])
@pytest.mark.parametrize(
    ("markers", "tokens"),
    [(THINK, THINK[:2]), (MISTRAL_THINK, MISTRAL_THINK[:2]), (GEMMA4_THINK, ("<|channel>", "<channel|>"))],
)
def test_a_model_whose_think_markers_are_special_tokens_keeps_them_in_its_text(
    special: bool, markers: ThinkMarkers, tokens: tuple[str, str]
) -> None:
    # a template that strips think blocks: it reasons
    tokenizer = word_tokenizer(tokens, special, f"{{{{ messages[0]['content'].split('{markers.end}')[-1] }}}}")
    engine = engine_of(tokenizer)
    assert engine.think_markers == markers and engine.thinks_in_special_tokens == special
    # why: text decoded without special tokens loses the markers, and the block could no longer be told apart
    ids = tokenizer.encode(f"{tokens[0]} Two and two {tokens[1]} Four.", add_special_tokens=False)
    assert (tokens[0] in tokenizer.decode(ids, skip_special_tokens=True)) != special


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_the_prompt_ends_with_a_new_turn_with_none_or_inside_the_last_message_as_asked() -> None:
    from shared.contracts import ChatMessage

    engine = engine_of(word_tokenizer((), False, CHATML))
    engine.config = SimpleNamespace(model_id="m")
    chat = [ChatMessage(role="user", content="Two and two?"), ChatMessage(role="assistant", content="Four, and")]
    history = "<|im_start|>user\nTwo and two?<|im_end|>\n<|im_start|>assistant\nFour, and"
    assert engine.render_prompt(chat) == history + "<|im_end|>\n<|im_start|>assistant\n"
    assert engine.render_prompt(chat, add_generation_prompt=False) == history + "<|im_end|>\n"
    # left open: the model continues the answer it was given; continuing wins over a new turn
    assert engine.render_prompt(chat, continue_final_message=True) == history
    assert engine.render_prompt(chat, add_generation_prompt=False, continue_final_message=True) == history
    # a last message the template does not write as sent cannot be continued: the client hears why
    engine._tokenizer.chat_template = CHATML.replace("{{ m.content }}", "{{ m.content | upper }}")
    with pytest.raises(InvalidRequest, match="chat format"):
        engine.render_prompt(chat, continue_final_message=True)
