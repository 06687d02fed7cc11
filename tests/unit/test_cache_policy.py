"""The response cache's rules: what is cacheable, the key, TTL by class, what is stored, and the replayed events."""

from __future__ import annotations

from datetime import timedelta

from services.cache.config import DEFAULT_TTL_S, CacheSettings
from services.cache.policy import (
    CachedCompletion,
    RequestCacheOptions,
    TenantCachePolicy,
    decide,
    replay,
    scope_of,
    storable,
)
from services.ingress.serving import merged, stream_sse
from shared.contracts import (
    ChatMessage,
    CompletionFinished,
    CompletionRequested,
    SamplingParams,
    TokensGenerated,
    Usage,
    utc_now,
)

USAGE = Usage(prompt_tokens=7, completion_tokens=2, total_tokens=9)
TTL = DEFAULT_TTL_S
NO_OPTIONS = RequestCacheOptions()
DEFAULT = TenantCachePolicy()


def request(**overrides: object) -> CompletionRequested:
    fields: dict[str, object] = {
        "request_id": "r1",
        "model": "m",
        "messages": [ChatMessage(role="user", content="What is the capital of France?")],
        "sampling": SamplingParams(temperature=0, max_tokens=16),
        "reply_topic": "replies",
        "tenant_id": "acme",
        "retain_text": True,
    }
    return CompletionRequested.model_validate(fields | overrides)


def digest(r: CompletionRequested, version: str = "1", policy: TenantCachePolicy = DEFAULT) -> str | None:
    return decide(r, version, NO_OPTIONS, policy, TTL).digest


def test_identical_requests_share_a_key_whatever_their_id_stream_or_deadline() -> None:
    a = request()
    b = request(request_id="r2", stream=False, reply_topic="other", deadline_at=utc_now(), priority="batch")
    assert digest(a) is not None and digest(a) == digest(b)


def test_key_changes_with_model_version_messages_and_output_changing_sampling() -> None:
    base = digest(request())
    assert digest(request(), version="2") != base
    assert digest(request(model="other")) != base
    assert digest(request(messages=[ChatMessage(role="user", content="What is the capital of Spain?")])) != base
    assert digest(request(messages=[ChatMessage(role="system", content="What is the capital of France?")])) != base
    assert digest(request(sampling=SamplingParams(temperature=0, max_tokens=17))) != base
    assert digest(request(sampling=SamplingParams(temperature=0, max_tokens=16, stop=["."]))) != base
    assert digest(request(variant="int8")) != base
    assert digest(request(messages=[], prompt="What is the capital of France?")) != base
    documents = [{"title": "Spain", "text": "Madrid is the capital of Spain."}]
    assert digest(request(documents=documents)) not in (base, digest(request(documents=[{"text": "Madrid."}])))
    as_ids = digest(request(messages=[], prompt_token_ids=[3, 4, 5]))
    assert as_ids is not None and as_ids not in (base, digest(request(messages=[], prompt_token_ids=[3, 4, 6])))


def test_greedy_key_ignores_top_p_seed_and_stop_order() -> None:
    a = request(sampling=SamplingParams(temperature=0, max_tokens=16, top_p=0.5, seed=3, stop=["b", "a"]))
    b = request(sampling=SamplingParams(temperature=0, max_tokens=16, stop=["a", "b", "a"]))
    assert digest(a) == digest(b)
    seeded = request(sampling=SamplingParams(temperature=0.7, max_tokens=16, seed=3))
    assert digest(seeded) != digest(request(sampling=SamplingParams(temperature=0.7, max_tokens=16, seed=4)))


def test_penalties_change_the_key_even_when_greedy() -> None:
    base = digest(request())
    presence = digest(request(sampling=SamplingParams(temperature=0, max_tokens=16, presence_penalty=0.5)))
    frequency = digest(request(sampling=SamplingParams(temperature=0, max_tokens=16, frequency_penalty=0.5)))
    assert len({base, presence, frequency}) == 3


def test_vllm_s_sampling_options_change_the_key_unless_greedy_decoding_ignores_them() -> None:
    def key(**options: object) -> str | None:
        return digest(request(sampling={"temperature": 0.7, "seed": 1, "max_tokens": 16} | options))

    def greedy(**options: object) -> str | None:
        return digest(request(sampling={"temperature": 0, "max_tokens": 16} | options))

    off = key(top_k=0, min_p=0.0, repetition_penalty=1.0, min_tokens=0)
    assert off == key()  # at their defaults: the key stored before they existed
    assert len({off, key(top_k=5), key(min_p=0.1), key(repetition_penalty=1.2), key(min_tokens=4)}) == 5
    assert len({off, key(ignore_eos=True), key(stop_token_ids=[3]), key(stop_token_ids=[4])}) == 4
    assert key(stop_token_ids=[3, 4]) == key(stop_token_ids=[4, 3])
    assert key(ignore_eos=False, stop_token_ids=[]) == off
    assert greedy(top_k=5) == greedy(min_p=0.1) == greedy()
    assert len({greedy(), greedy(repetition_penalty=1.2), greedy(min_tokens=4)}) == 3


def test_vllms_stop_string_bad_words_and_allowed_tokens_change_the_key_even_when_greedy() -> None:
    greedy = SamplingParams(temperature=0, max_tokens=16)
    base = digest(request(sampling=greedy))
    changed = {
        digest(request(sampling=greedy.model_copy(update={"include_stop_str_in_output": True}))),
        digest(request(sampling=greedy.model_copy(update={"bad_words": ["Paris"]}))),
        digest(request(sampling=greedy.model_copy(update={"allowed_token_ids": [1, 2]}))),
        digest(request(sampling=greedy.model_copy(update={"skip_special_tokens": False}))),
    }
    assert len(changed) == 4 and base not in changed
    assert digest(request(sampling=greedy.model_copy(update={"skip_special_tokens": True}))) == base  # the default
    reordered = greedy.model_copy(update={"allowed_token_ids": [2, 1, 2]})
    assert digest(request(sampling=reordered)) == digest(
        request(sampling=greedy.model_copy(update={"allowed_token_ids": [1, 2]}))
    )


def test_a_structured_output_changes_the_key() -> None:
    def formed(form: dict) -> str | None:
        return digest(request(sampling={"temperature": 0, "max_tokens": 16, "structured_outputs": form}))

    keys = {digest(request()), formed({"choice": ["a", "b"]}), formed({"choice": ["a", "c"]}), formed({"regex": "a"})}
    assert len(keys) == 4
    assert formed({"choice": ["b", "a"]}) == formed({"choice": ["a", "b"]})  # in any order, the same outputs


def test_a_reasoning_model_s_switches_and_earlier_thinking_change_the_key() -> None:
    """Each reaches the model's template, so each is another prompt: an answer given without thinking must not
    answer the same question asked with it."""
    base = digest(request())
    switched = {
        digest(request(enable_thinking=True)),
        digest(request(enable_thinking=False)),
        digest(request(reasoning_effort="low")),
        digest(request(reasoning_effort="high")),
        digest(request(thinking_token_budget=0)),
        digest(request(thinking_token_budget=64)),
        digest(request(add_generation_prompt=False)),  # how the prompt ends changes it too
        digest(request(continue_final_message=True)),
    }
    assert len(switched) == 8 and base not in switched

    def earlier(reasoning: str | None) -> str | None:
        turns = [
            ChatMessage(role="user", content="What is two plus two?"),
            ChatMessage(role="assistant", content="4", reasoning=reasoning),
            ChatMessage(role="user", content="And three plus three?"),
        ]
        return digest(request(messages=turns))

    assert len({earlier(None), earlier("2+2=4"), earlier("two and two make four")}) == 3


def test_a_logit_bias_changes_the_key_whatever_its_order() -> None:
    def biased(bias: dict[int, float]) -> str | None:
        return digest(request(sampling={"temperature": 0, "max_tokens": 16, "logit_bias": bias}))

    assert biased({}) == digest(request())  # no bias: the key stored before logit_bias existed
    assert len({digest(request()), biased({5: -100}), biased({5: 100}), biased({6: -100})}) == 4
    assert biased({5: -100, 6: 2}) == biased({6: 2, 5: -100})


def test_a_response_format_and_its_schema_change_the_key() -> None:
    def formatted(response_format: dict[str, object]) -> str | None:
        return digest(request(sampling={"temperature": 0, "max_tokens": 16, "response_format": response_format}))

    schema = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}}
    same_schema_reordered = {"properties": {"b": {"type": "integer"}, "a": {"type": "string"}}, "type": "object"}
    json_object = formatted({"type": "json_object"})
    with_schema = formatted({"type": "json_schema", "json_schema": schema})
    assert len({digest(request()), json_object, with_schema}) == 3
    assert formatted({"type": "json_schema", "json_schema": same_schema_reordered}) == with_schema
    assert formatted({"type": "json_schema", "json_schema": {"type": "object"}}) != with_schema
    strict = formatted({"type": "json_schema", "json_schema": schema, "strict": True})
    assert strict != with_schema  # strict forbids properties the schema does not list: another answer
    # computed by the code of b6c6fa9, before strict was carried: entries it stored are still found
    assert with_schema == "c3a64b1c3ca6906c050bd882e2b4d69b8fb78fe825c04cf33851fff63d82e6fe"
    assert json_object == "ec4f6dee218d7a22dd5ef502ed28bfde8454a15ca7db4f6ce7e32e72fb23bfce"


def test_keys_without_penalties_are_the_ones_stored_before_penalties_existed() -> None:
    # digests computed by the code of 5cbfb40 (key version 2): entries it stored are still found after the upgrade
    assert digest(request()) == "4258d2c563833215cc7db1191cd17a568c8e2bb3dca4ebb6579bf5c2c8d95312"
    seeded = request(sampling=SamplingParams(temperature=0.7, max_tokens=16, seed=3))
    assert digest(seeded) == "06ba2a49c2e3ec9233e3e276b5b1de9a492927f8cb32d0fc031961daac1137b8"


def test_tenants_never_share_a_key_unless_both_opted_into_the_same_shared_scope() -> None:
    a, b = request(tenant_id="a"), request(tenant_id="b")
    assert digest(a) != digest(b)
    shared = TenantCachePolicy(shared_scope="faq")
    assert digest(a, policy=shared) == digest(b, policy=shared)
    assert digest(a, policy=shared) != digest(a)
    assert scope_of(a, DEFAULT) == "t.a" and scope_of(a, shared) == "s.faq"


def test_a_screening_policy_edit_or_another_tenants_policy_means_another_key() -> None:
    """A hit skips the safety stage: it may only give what the same screening policy let through."""
    strict, lenient = TenantCachePolicy(screening_policy="aa11"), TenantCachePolicy(screening_policy="bb22")
    assert digest(request(), policy=strict) != digest(request(), policy=lenient)
    assert digest(request(), policy=strict) != digest(request())  # the built-in default policy (no row)
    assert digest(request(request_id="r2"), policy=strict) == digest(request(), policy=strict)
    a, b = request(tenant_id="a"), request(tenant_id="b")
    shared_strict = TenantCachePolicy(shared_scope="faq", screening_policy="aa11")
    shared_lenient = TenantCachePolicy(shared_scope="faq", screening_policy="bb22")
    assert digest(a, policy=shared_strict) == digest(b, policy=shared_strict)
    assert digest(a, policy=shared_strict) != digest(b, policy=shared_lenient)


def test_a_tenant_without_retention_gets_no_cache_at_all() -> None:
    decision = decide(request(retain_text=False), "1", NO_OPTIONS, DEFAULT, TTL)
    assert (decision.read, decision.write, decision.digest, decision.bypass) == (False, False, None, "no_retention")
    anonymous = decide(request(tenant_id=None, retain_text=False), "1", NO_OPTIONS, DEFAULT, TTL)
    assert anonymous.bypass == "no_retention"


def test_only_reproducible_requests_are_cached_unless_the_tenant_opts_in() -> None:
    sampled = request(sampling=SamplingParams(temperature=0.8, max_tokens=16))
    assert decide(sampled, "1", NO_OPTIONS, DEFAULT, TTL).bypass == "non_deterministic"
    opted = decide(sampled, "1", NO_OPTIONS, TenantCachePolicy(cache_sampled=True), TTL)
    assert opted.write and opted.content_class == "sampled" and opted.ttl_s == TTL["sampled"]
    seeded = decide(request(sampling=SamplingParams(temperature=0.8, seed=1)), "1", NO_OPTIONS, DEFAULT, TTL)
    assert seeded.content_class == "seeded" and seeded.ttl_s == TTL["seeded"]
    greedy = decide(request(), "1", NO_OPTIONS, DEFAULT, TTL)
    assert greedy.content_class == "greedy" and greedy.ttl_s == 24 * 3600


def test_the_choices_of_a_request_for_several_share_an_answer_only_when_it_is_the_same_answer() -> None:
    def choice_key(r: CompletionRequested, sample: int, policy: TenantCachePolicy = DEFAULT) -> str | None:
        return decide(r, "1", NO_OPTIONS, policy, TTL, sample=sample).digest

    greedy = request()
    assert choice_key(greedy, 0) == choice_key(greedy, 3) == digest(greedy)  # greedy choices are one answer
    seeded = request(sampling=SamplingParams(temperature=0.8, seed=7))
    assert choice_key(seeded, 2) == digest(seeded)  # seeded choices differ by their seeds (see choice_requests)
    sampled = request(sampling=SamplingParams(temperature=0.8))
    opted = TenantCachePolicy(cache_sampled=True)
    keys = [choice_key(sampled, i, opted) for i in range(3)]
    assert keys[0] == digest(sampled, policy=opted)  # the first choice is the answer a request for one would get
    assert len(set(keys)) == 3  # else every choice would be the one cached sample
    chat = request(
        messages=[ChatMessage(role="user", content="a"), ChatMessage(role="user", content="b")],
        sampling=SamplingParams(temperature=0.8),
    )
    assert choice_key(chat, 0, opted) != choice_key(chat, 1, opted)  # also when its class is "conversation"


def test_multi_turn_chats_are_the_conversation_class() -> None:
    turns = [
        ChatMessage(role="user", content="hi"),
        ChatMessage(role="assistant", content="hello"),
        ChatMessage(role="user", content="and?"),
    ]
    decision = decide(request(messages=turns), "1", NO_OPTIONS, DEFAULT, TTL)
    assert decision.content_class == "conversation" and decision.ttl_s == 2 * 3600


def test_cache_control_is_honoured() -> None:
    options = RequestCacheOptions.from_headers
    assert options({"cache-control": "no-store"}) == RequestCacheOptions(no_store=True)
    assert options({"cache-control": "No-Cache"}).no_cache
    assert options({"cache-control": "max-age=0"}).no_cache
    assert options({"cache-control": "public, max-age=60"}).max_age_s == 60
    assert options({}) == RequestCacheOptions()
    assert decide(request(), "1", options({"cache-control": "no-store"}), DEFAULT, TTL).bypass == "no_store"
    refresh = decide(request(), "1", options({"cache-control": "no-cache"}), DEFAULT, TTL)
    assert (refresh.read, refresh.write) == (False, True)
    assert decide(request(), "1", NO_OPTIONS, DEFAULT, TTL, enabled=False).bypass == "disabled"


def test_max_age_rejects_older_entries() -> None:
    entry = CachedCompletion(
        text="x", finish_reason="stop", usage=USAGE, model_version="1", created_at=utc_now() - timedelta(seconds=90)
    )
    assert entry.fresh_enough(RequestCacheOptions(max_age_s=120), utc_now())
    assert not entry.fresh_enough(RequestCacheOptions(max_age_s=60), utc_now())
    assert entry.fresh_enough(NO_OPTIONS, utc_now())


def test_ttl_settings_stay_within_one_to_24_hours() -> None:
    assert CacheSettings(ttl_s={"greedy": 7200}).ttl_s == {**DEFAULT_TTL_S, "greedy": 7200}
    for bad in (59, 25 * 3600):
        try:
            CacheSettings(ttl_s={"greedy": bad})
        except ValueError:
            continue
        raise AssertionError(f"ttl {bad} accepted")


def test_only_complete_generations_are_stored() -> None:
    def finished(reason: str) -> CompletionFinished:
        return CompletionFinished.model_validate(
            {"request_id": "r", "sequence": 0, "model": "m", "text": "t", "finish_reason": reason, "usage": USAGE}
        )

    assert storable(finished("stop")) and storable(finished("length")) and not storable(finished("abort"))


async def test_a_hit_replays_as_the_events_of_a_live_answer() -> None:
    entry = CachedCompletion(text="Paris.", finish_reason="stop", usage=USAGE, model_version="1", variant="fp32")
    streamed = [e async for e in replay(entry, request(request_id="r9", stream=True))]
    assert [type(e) for e in streamed] == [TokensGenerated, CompletionFinished]
    assert all(e.request_id == "r9" for e in streamed) and [e.sequence for e in streamed] == [0, 1]
    final = streamed[-1]
    assert isinstance(final, CompletionFinished) and (final.text, final.usage) == ("Paris.", USAGE)
    assert final.variant == "fp32"  # the variant that generated the cached answer, as a live answer names it
    plain = [e async for e in replay(entry, request(stream=False))]
    assert [type(e) for e in plain] == [CompletionFinished]

    async def live():  # type: ignore[no-untyped-def]
        yield TokensGenerated(request_id="r9", sequence=0, text="Par", token_count=1)
        yield TokensGenerated(request_id="r9", sequence=1, text="is.", token_count=1)
        yield CompletionFinished(
            request_id="r9", sequence=2, model="m", text="Paris.", finish_reason="stop", usage=USAGE, variant="fp32"
        )

    def shapes(lines: list[str]) -> list[object]:
        import json

        out = []
        for line in lines:
            data = line.removeprefix("data: ").strip()
            if data == "[DONE]":
                out.append(data)
                continue
            chunk = json.loads(data)
            out.append([sorted(chunk), [sorted(c) + sorted(c["delta"]) for c in chunk["choices"]]])
        return out

    cached_lines = [
        x async for x in stream_sse("r9", "m", True, merged([replay(entry, request(request_id="r9", stream=True))]))
    ]
    live_lines = [x async for x in stream_sse("r9", "m", True, merged([live()]))]
    # same framing: role chunk, content, finish, usage, [DONE]; the cache sends the text in one content chunk
    assert shapes(cached_lines)[0] == shapes(live_lines)[0]
    assert shapes(cached_lines)[-3:] == shapes(live_lines)[-3:]
    assert len(cached_lines) == 5


def test_a_prompt_cut_otherwise_has_another_key_and_token_ids_bypass_the_cache() -> None:
    keys = {
        digest(request()),
        digest(request(truncate_prompt_tokens=8)),
        digest(request(truncate_prompt_tokens=8, truncation_side="right")),
        digest(request(truncate_prompt_tokens=-1)),
    }
    assert len(keys) == 4
    assert digest(request(return_token_ids=True)) is None  # entries keep no token ids


def test_special_tokens_kept_and_written_side_by_side_change_the_key_only_together() -> None:
    greedy = SamplingParams(temperature=0, max_tokens=16)
    kept = greedy.model_copy(update={"skip_special_tokens": False})
    side_by_side = kept.model_copy(update={"spaces_between_special_tokens": False})
    assert len({digest(request(sampling=s)) for s in (greedy, kept, side_by_side)}) == 3
    skipped_anyway = greedy.model_copy(update={"spaces_between_special_tokens": False})  # no special token is kept
    assert digest(request(sampling=skipped_anyway)) == digest(request(sampling=greedy))
