"""Prompt sets for the bench, generated locally and deterministically per seed; lengths are in words, not tokens."""

from __future__ import annotations

import random
from dataclasses import dataclass

from benchmarks.bench.load import TraceEntry

COMMON_WORDS: tuple[str, ...] = tuple(
    """
    the be to of and a in that have it for not on with he as you do at this but his by from they we say her she or
    an will my one all would there their what so up out if about who get which go me when make can like time no just
    him know take people into year your good some could them see other than then now look only come its over think
    also back after use two how our work first well way even new want because any these give day most us is was are
    were been has had did said made went got came took saw knew thought told found gave asked felt left called tried
    man woman child world life hand part place case week company system program question government number night point
    home water room mother area money story fact month lot right study book eye job word business issue side kind head
    house service friend father power hour game line end member law car city community name president team minute idea
    kid body information school face others level office door health person art war history party result change morning
    reason research girl guy moment air teacher force education foot boy age policy everything process music market
    sense nation plan college interest death experience effect class control care field development role effort rate
    heart drug show leader light voice wife police mind price report decision son view relationship town road arm
    difference value building action model season society tax director position player record paper space ground form
    event official matter center couple site project activity star table need court oil situation cost industry figure
    street image phone data picture practice piece land product doctor wall patient worker news test movie north love
    support technology step baby computer type attention film tree source organization hair window evidence population
    small large long little old big high different great important young early few public bad same able late hard
    major better economic strong possible whole free military true federal international full special easy clear recent
    certain personal open red difficult available likely short single medical current wrong private past foreign fine
    common poor natural significant similar hot dead central happy serious ready simple physical general green
    quickly slowly always often never sometimes together already still almost really today tomorrow yesterday perhaps
    """.split()
)

SYSTEM_PROMPTS = (
    "You are a helpful assistant. Answer clearly and concisely.",
    "You are a patient tutor who explains ideas step by step.",
    "You are a careful technical writer. Prefer short paragraphs and concrete examples.",
    "You are a friendly support agent for a software company.",
)
TOPICS = (
    "photosynthesis",
    "the French Revolution",
    "compound interest",
    "black holes",
    "sourdough baking",
    "the water cycle",
    "binary search",
    "plate tectonics",
    "the immune system",
    "supply and demand",
    "HTTP caching",
    "the Roman Empire",
    "electric cars",
    "vaccines",
    "jazz improvisation",
    "climate change",
)
QUESTIONS = (
    "Can you explain {topic} in simple terms?",
    "What is the most common misconception about {topic}?",
    "How would you teach {topic} to a twelve-year-old?",
    "Why does {topic} matter in everyday life?",
    "What are three key facts about {topic}?",
    "How has our understanding of {topic} changed over time?",
    "Could you give a concrete example of {topic}?",
    "What should I read next to learn more about {topic}?",
)
FOLLOW_UPS = (
    "Thanks. Can you go into more detail on the second point?",
    "That helps. How does this compare with {topic}?",
    "Could you summarise that in one sentence?",
    "Interesting. What would an expert add to that?",
    "Can you give me an analogy for that?",
    "What is a good exercise to check that I understood?",
)
ANSWERS = (
    "Sure. In short, {topic} is best understood by looking at its causes and its effects. {filler}",
    "Good question. Many people think of {topic} as simple, but there is more to it. {filler}",
    "Here is one way to see it: start from what you already know and connect it to {topic}. {filler}",
    "The key idea behind {topic} is that small changes add up over time. {filler}",
)


@dataclass(frozen=True)
class BenchRequest:
    """One chat request to send: the messages and the most tokens to generate."""

    messages: list[dict[str, str]]
    max_tokens: int


def synthetic(
    n: int, input_words: tuple[int, int], output_tokens: tuple[int, int], seed: int = 0
) -> list[BenchRequest]:
    """`n` single-message requests of random common words; lengths drawn uniformly from the inclusive ranges."""
    _check_range("input_words", input_words)
    _check_range("output_tokens", output_tokens)
    rng = random.Random(seed)
    return [
        BenchRequest(
            messages=[{"role": "user", "content": _random_words(rng, rng.randint(*input_words))}],
            max_tokens=rng.randint(*output_tokens),
        )
        for _ in range(n)
    ]


def conversations(n: int, seed: int = 0, output_tokens: tuple[int, int] = (32, 128)) -> list[BenchRequest]:
    """`n` chat-like requests: a system prompt, 1-4 prior user/assistant exchanges, then a user turn."""
    _check_range("output_tokens", output_tokens)
    rng = random.Random(seed)
    return [BenchRequest(messages=_conversation(rng), max_tokens=rng.randint(*output_tokens)) for _ in range(n)]


def from_trace(entries: list[TraceEntry], seed: int = 0) -> list[BenchRequest]:
    """One request per trace entry: a prompt of `prompt_tokens` random words, at most `output_tokens` tokens out."""
    rng = random.Random(seed)
    return [
        BenchRequest(
            messages=[{"role": "user", "content": _random_words(rng, entry.prompt_tokens)}],
            max_tokens=entry.output_tokens,
        )
        for entry in entries
    ]


def _conversation(rng: random.Random) -> list[dict[str, str]]:
    topic = rng.choice(TOPICS)
    messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}]
    question = rng.choice(QUESTIONS).format(topic=topic)
    for _ in range(rng.randint(1, 4)):
        filler = _random_words(rng, rng.randint(20, 60)).capitalize() + "."
        answer = rng.choice(ANSWERS).format(topic=topic, filler=filler)
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        question = rng.choice(FOLLOW_UPS).format(topic=rng.choice(TOPICS))
    messages.append({"role": "user", "content": question})
    return messages


def _random_words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choices(COMMON_WORDS, k=count))


def _check_range(name: str, bounds: tuple[int, int]) -> None:
    low, high = bounds
    if not 1 <= low <= high:
        raise ValueError(f"{name} must be a range (low, high) with 1 <= low <= high, got {bounds}")
