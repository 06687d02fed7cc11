from __future__ import annotations

from datetime import timedelta

from services.batcher.scheduling import (
    CancelledIds,
    ModelScheduler,
    Policy,
    Profile,
    WorkerReport,
)
from shared.contracts import ChatMessage, CompletionRequested, SamplingParams, utc_now

PROFILES = {
    "latency": Profile("latency", 8, 0.050, 2.0),
    "throughput": Profile("throughput", 32, 0.200, 5.0),
    "cost": Profile("cost", 64, 0.500, 8.0),
}


def policy(**extra: object) -> Policy:
    return Policy(profiles=PROFILES, **extra)  # type: ignore[arg-type]


def request(request_id: str, content: str = "x" * 40, max_tokens: int = 10, **extra: object) -> CompletionRequested:
    # 40 characters = 10 prompt tokens + 4 of template + max_tokens
    return CompletionRequested(
        request_id=request_id,
        model="m",
        reply_topic="r",
        messages=[ChatMessage(role="user", content=content)],
        sampling=SamplingParams(max_tokens=max_tokens),
        **extra,
    )


def ids(batch: object) -> list[str]:
    return [h.request_id for h in batch.items]  # type: ignore[attr-defined]


def free_workers(s: ModelScheduler, now: float, slots: int, tokens: int = 10_000, interval: float = 1.0) -> None:
    s.capacity.report(WorkerReport("w1", slots, tokens, 0, False, interval, now))


def test_token_estimate_is_prompt_characters_over_four_plus_template_plus_max_new_tokens() -> None:
    assert policy().tokens_of(request("a", "x" * 41, max_tokens=7)) == 11 + 4 + 7
    assert policy().tokens_of(request("a", max_tokens=10)) == 24


def test_a_request_weighs_no_more_than_its_models_context_whatever_max_tokens_a_producer_asked() -> None:
    # a producer on Kafka may ask a 2048-token model for a million tokens; its worker cuts that to the context
    greedy_asker = request("a", max_tokens=1_000_000)
    assert policy(model_contexts={"m": 2048}).tokens_of(greedy_asker) == 2048
    assert policy(model_contexts={"m": 2048}).tokens_of(request("a", max_tokens=10)) == 24
    assert policy(model_contexts={"other": 2048}).tokens_of(greedy_asker) == 1_000_014  # a model it does not know
    # so it no longer counts as a flood against its tenant's fair share, nor fills a batch's token budget alone
    s = ModelScheduler("m", policy(model_contexts={"m": 2048}, batch_token_budget=4096))
    free_workers(s, 0.0, slots=4)
    s.add(greedy_asker, ("p", 0), now=0.0)
    s.add(request("b", max_tokens=1_000_000), ("p", 1), now=0.0)
    (batch,) = s.release(0.0)
    assert ids(batch) == ["a", "b"]


def test_profile_comes_from_request_then_tenant_then_model_then_default() -> None:
    p = policy(model_profiles={"m": "cost"}, tenant_profiles={"acme": "throughput"})
    assert p.profile_for(request("a", profile="latency", tenant_id="acme")).name == "latency"
    assert p.profile_for(request("a", tenant_id="acme")).name == "throughput"
    assert p.profile_for(request("a", tenant_id="other")).name == "cost"
    assert policy().profile_for(request("a")).name == "latency"


def test_without_worker_reports_requests_leave_at_once_in_profile_sized_batches() -> None:
    s = ModelScheduler("m", policy())
    for i in range(10):
        s.add(request(f"r{i}"), ("p", i), now=0.0)
    batches = s.release(0.0)
    assert [(b.reason, len(b.items)) for b in batches] == [("no_reports", 8), ("no_reports", 2)]


def test_without_worker_reports_a_batch_can_wait_for_max_wait() -> None:
    s = ModelScheduler("m", policy(without_reports="wait"))
    s.add(request("a"), ("p", 0), now=10.0)
    s.add(request("b"), ("p", 1), now=10.02)
    assert s.release(10.049) == []
    assert s.next_due(10.0) == 10.05
    [batch] = s.release(10.05)
    assert (batch.reason, batch.profile, ids(batch)) == ("max_wait", "latency", ["a", "b"])
    assert len(s) == 0


def test_saturated_batch_closes_when_full_at_the_profile_size() -> None:
    s = ModelScheduler("m", policy())
    free_workers(s, 0.0, slots=0)
    for i in range(17):
        s.add(request(f"r{i}"), ("p", i), now=1.0)
    batches = s.release(1.0)
    assert [(b.reason, len(b.items)) for b in batches] == [("full", 8), ("full", 8)]
    assert len(s) == 1
    [last] = s.release(1.05)
    assert (last.reason, ids(last)) == ("max_wait", ["r16"])


def test_profiles_keep_their_own_limits() -> None:
    s = ModelScheduler("m", policy(without_reports="wait"))
    for i in range(9):
        s.add(request(f"t{i}", profile="throughput"), ("p", i), now=0.0)
    s.add(request("l0"), ("p", 9), now=0.0)
    [latency] = s.release(0.05)
    assert ids(latency) == ["l0"]
    assert s.release(0.199) == []
    [throughput] = s.release(0.2)
    assert (throughput.profile, len(throughput.items)) == ("throughput", 9)


def test_free_workers_take_a_request_at_once_up_to_their_free_slots() -> None:
    s = ModelScheduler("m", policy())
    free_workers(s, 0.0, slots=3)
    s.add(request("a"), ("p", 0), now=0.5)
    [batch] = s.release(0.5)
    assert (batch.reason, ids(batch)) == ("capacity", ["a"])
    for i in range(4):
        s.add(request(f"b{i}"), ("p", i + 1), now=0.6)
    # one of the three slots was charged for "a": two left
    [batch] = s.release(0.6)
    assert (batch.reason, ids(batch)) == ("capacity", ["b0", "b1"])
    assert s.release(0.6) == []
    # a newer report than the charges frees room again
    free_workers(s, 0.7, slots=5)
    [batch] = s.release(0.7)
    assert ids(batch) == ["b2", "b3"]


def test_free_tokens_bound_an_immediate_batch() -> None:
    s = ModelScheduler("m", policy())
    free_workers(s, 0.0, slots=10, tokens=50)  # each request is 24 tokens: two fit
    for i in range(3):
        s.add(request(f"r{i}"), ("p", i), now=0.0)
    [batch] = s.release(0.0)
    assert ids(batch) == ["r0", "r1"]
    assert s.release(0.0) == []
    [batch] = s.release(0.05)
    assert (batch.reason, ids(batch)) == ("max_wait", ["r2"])


def test_reports_older_than_two_intervals_are_ignored() -> None:
    s = ModelScheduler("m", policy(without_reports="wait"))
    free_workers(s, 0.0, slots=4, interval=1.0)
    s.add(request("a"), ("p", 0), now=2.5)
    assert s.release(2.5) == []
    assert s.capacity.capacity(2.5).known is False


def test_draining_workers_offer_no_room() -> None:
    s = ModelScheduler("m", policy())
    s.capacity.report(WorkerReport("w1", 4, 1000, 0, True, 1.0, 0.0))
    s.add(request("a"), ("p", 0), now=0.0)
    assert s.release(0.0) == []


def test_batch_respects_the_token_budget_and_a_lone_oversized_request_still_goes() -> None:
    s = ModelScheduler("m", policy(batch_token_budget=60, without_reports="wait"))
    s.add(request("big", max_tokens=100), ("p", 0), now=0.0)
    s.add(request("a"), ("p", 1), now=0.0)
    s.add(request("b"), ("p", 2), now=0.0)
    batches = s.release(0.0)  # 114 + 24 + 24 tokens waiting: over the budget, so "full"
    assert [(b.reason, ids(b)) for b in batches] == [("full", ["big"])]
    [batch] = s.release(0.05)  # 48 tokens left: under the budget, so they wait
    assert (batch.reason, ids(batch)) == ("max_wait", ["a", "b"])


def test_higher_priority_goes_first() -> None:
    s = ModelScheduler("m", policy())
    s.add(request("be", priority="best_effort"), ("p", 0), now=0.0)
    s.add(request("ba", priority="batch"), ("p", 1), now=0.0)
    s.add(request("in", priority="interactive"), ("p", 2), now=0.01)
    free_workers(s, 0.02, slots=1)
    assert [ids(b) for b in s.release(0.02)] == [["in"]]
    free_workers(s, 0.03, slots=1)
    assert [ids(b) for b in s.release(0.03)] == [["ba"]]


def test_aging_lifts_a_waiting_lower_class_above_newer_higher_ones() -> None:
    slow = Profile("slow", 8, 10.0, 20.0)  # long wait limit, so only free slots release requests
    s = ModelScheduler("m", Policy(profiles={"slow": slow}, default_profile="slow", aging_s=1.0))
    s.add(request("old-be", priority="best_effort"), ("p", 0), now=0.0)
    s.add(request("in", priority="interactive"), ("p", 1), now=1.5)
    # at 1.5 s best_effort has risen one class (to batch): interactive still first
    free_workers(s, 1.5, slots=1)
    assert [ids(b) for b in s.release(1.5)] == [["in"]]
    s.add(request("in2", priority="interactive"), ("p", 2), now=2.0)
    # at 2.0 s it has risen two classes (interactive); ties go to the higher original class
    free_workers(s, 2.0, slots=1)
    assert [ids(b) for b in s.release(2.0)] == [["in2"]]
    # at 3.0 s it is a class above interactive: it goes before a newer interactive request
    s.add(request("in3", priority="interactive"), ("p", 3), now=3.0)
    free_workers(s, 3.0, slots=1)
    assert [ids(b) for b in s.release(3.0)] == [["old-be"]]


def test_flooding_tenant_shares_by_tokens_with_a_light_tenant() -> None:
    s = ModelScheduler("m", policy())
    free_workers(s, 0.0, slots=0)
    for i in range(6):
        s.add(request(f"flood{i}", tenant_id="flood"), ("p", i), now=0.0)
    s.add(request("light0", tenant_id="light"), ("p", 6), now=0.001)
    s.add(request("light1", tenant_id="light"), ("p", 7), now=0.002)
    # 8 waiting: "full". Virtual times: flood0 at 0, light0 at 0 -> flood0 (older), light0, flood1, light1, then flood
    [batch] = s.release(0.002)
    assert ids(batch) == ["flood0", "light0", "flood1", "light1", "flood2", "flood3", "flood4", "flood5"]


def test_tenants_are_weighed_by_tokens_not_requests() -> None:
    s = ModelScheduler("m", policy())
    free_workers(s, 0.0, slots=0)
    # big costs 104 tokens, small 24: after big, small runs until it has received as many tokens
    for i in range(3):
        s.add(request(f"big{i}", tenant_id="big", max_tokens=90), ("p", i), now=0.0)
    for i in range(5):
        s.add(request(f"small{i}", tenant_id="small"), ("p", 3 + i), now=0.001)
    [batch] = s.release(0.001)
    assert ids(batch) == ["big0", "small0", "small1", "small2", "small3", "small4", "big1", "big2"]


def test_a_returning_tenant_cannot_bank_credit() -> None:
    s = ModelScheduler("m", policy())
    free_workers(s, 0.0, slots=0)
    for i in range(4):
        s.add(request(f"a{i}", tenant_id="a"), ("p", i), now=0.0)
    [first] = s.release(0.05)
    assert len(first.items) == 4
    # "a" has received 96 tokens; "b" was idle, so it starts at the class clock (a's last start, 72), not 0
    for i in range(4):
        s.add(request(f"b{i}", tenant_id="b"), ("p", 4 + i), now=1.0)
    for i in range(4):
        s.add(request(f"a{4 + i}", tenant_id="a"), ("p", 8 + i), now=1.001)
    [batch] = s.release(1.001)
    assert ids(batch) == ["b0", "b1", "a4", "b2", "a5", "b3", "a6", "a7"]


def test_none_tenant_is_one_tenant() -> None:
    s = ModelScheduler("m", policy())
    free_workers(s, 0.0, slots=0)
    for i in range(3):
        s.add(request(f"n{i}"), ("p", i), now=0.0)
    s.add(request("t0", tenant_id="t"), ("p", 3), now=0.001)
    [batch] = s.release(0.05)
    assert ids(batch) == ["n0", "t0", "n1", "n2"]


def test_expired_requests_come_back_for_an_explicit_error() -> None:
    s = ModelScheduler("m", policy())
    wall = utc_now()
    s.add(request("late", deadline_at=wall + timedelta(seconds=1)), ("p", 0), now=0.0)
    s.add(request("fine", deadline_at=wall + timedelta(seconds=10)), ("p", 1), now=0.0)
    s.add(request("none"), ("p", 2), now=0.0)
    assert s.expire(wall) == []
    [gone] = s.expire(wall + timedelta(seconds=1))
    assert gone.request_id == "late" and gone.ref == ("p", 0)
    assert not s.holds("late") and s.holds("fine")


def test_remove_drops_held_requests_by_ref() -> None:
    s = ModelScheduler("m", policy(without_reports="wait"))
    for i in range(4):
        s.add(request(f"r{i}"), (i % 2, i), now=0.0)
    dropped = s.remove(lambda h: h.ref[0] != 1)  # type: ignore[index]
    assert sorted(h.request_id for h in dropped) == ["r1", "r3"]
    [batch] = s.release(0.05)
    assert ids(batch) == ["r0", "r2"]


def test_queue_depth_counts_per_priority_and_expects_wait_from_service_rate() -> None:
    s = ModelScheduler("m", policy(rate_window_s=10.0))
    free_workers(s, 0.0, slots=0)
    for i in range(16):
        s.add(request(f"r{i}"), ("p", i), now=0.0)
    assert len(s.release(0.0)) == 2  # 16 dispatched in the 10 s window: 1.6 req/s
    s.add(request("i"), ("p", 16), now=0.01)
    s.add(request("b", priority="batch"), ("p", 17), now=0.01)
    s.add(request("e", priority="best_effort"), ("p", 18), now=0.01)
    s.capacity.report(WorkerReport("w1", 0, 0, 5, False, 1.0, 0.01))
    depth = s.depth(0.02)
    assert depth.waiting == 3 and depth.waiting_tokens == 72
    assert depth.waiting_by_priority == {"interactive": 1, "batch": 1, "best_effort": 1}
    assert abs(depth.expected_wait_s - (3 + 5) / 1.6) < 1e-9


def test_cancelled_ids_are_remembered_for_a_while() -> None:
    c = CancelledIds(memory_s=10)
    c.add("a", 0.0)
    c.add("b", 5.0)
    assert "a" in c
    c.add("c", 10.5)
    assert "a" not in c and "b" in c and "c" in c


def test_a_batch_that_could_not_be_handed_on_is_restored_in_place() -> None:
    s = ModelScheduler("m", policy(without_reports="wait"))
    s.add(request("a"), ("p", 0), now=0.0)
    s.add(request("b"), ("p", 1), now=0.01)
    [batch] = s.release(0.05)
    s.restore(batch.items)
    assert s.holds("a") and s.holds("b")
    [again] = s.release(0.05)
    assert (again.reason, ids(again)) == ("max_wait", ["a", "b"])
