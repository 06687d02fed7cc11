from __future__ import annotations

import math

from benchmarks.variants import quality, reference_text
from services.worker.engine import TokenScore


def test_perplexity_and_top1_agreement_computed_by_hand() -> None:
    half, quarter = math.log(0.5), math.log(0.25)
    reference = [[TokenScore(5, half, 5), TokenScore(6, half, 7)], [TokenScore(8, half, 8), TokenScore(9, half, 1)]]
    variant = [
        [TokenScore(5, quarter, 5), TokenScore(6, quarter, 6)],
        [TokenScore(8, quarter, 8), TokenScore(9, quarter, 1)],
    ]
    assert quality(reference, reference).perplexity == 2.0
    assert quality(reference, reference).top1_agreement == 1.0
    q = quality(variant, reference)
    assert q.perplexity == 4.0  # every token at probability 1/4
    assert q.top1_agreement == 0.75  # the second position of the first window ranks 6 first, the reference 7
    assert q.scored_tokens == 4


def test_the_reference_text_is_english_prose_of_fixed_order() -> None:
    text = reference_text()
    assert text == reference_text()
    assert len(text) > 100_000 and "Assignment statements" in text
