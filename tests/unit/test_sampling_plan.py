"""The `sample` stage's plan: every method and floor of a style gets the same prompts and seeds (the
evaluation pairs sample i of two methods), floors come `floor_per_style` times, and other_style
retrieves from a fixed other collection."""

import pytest

from rdm.artifacts.samples import FLOORS, METHODS, NULL, OTHER_STYLE, POSTFIX, POSTFIX_TEXT, RETRIEVAL
from rdm.sampling.batch import Request, other_style, plan

PROMPTS = ["a red star", "a blue moon"]
STYLES = ["neon", "mosaic"]


def by_column(requests: list[Request]) -> dict[tuple[str | None, str], list[Request]]:
    columns: dict[tuple[str | None, str], list[Request]] = {}
    for r in requests:
        columns.setdefault((r.style, r.method), []).append(r)
    return columns


def test_every_method_and_floor_has_the_same_prompts_and_seeds_in_the_same_order() -> None:
    requests = plan(PROMPTS, STYLES, METHODS, 5, seed=10, floor_per_style=3)
    columns = by_column(requests)
    assert set(columns) == {(s, m) for s in STYLES for m in (*METHODS, *FLOORS)}
    expected = [("a red star", 10), ("a blue moon", 11), ("a red star", 12), ("a blue moon", 13)]
    expected.append(("a red star", 14))
    for (_, method), rows in columns.items():
        pairs = [(r.prompt, r.seed) for r in rows]
        assert pairs == (expected[:3] if method in FLOORS else expected), method
    assert len(requests) == len(STYLES) * (3 * 5 + 2 * 3)
    assert requests[0] == Request("a red star", "neon", RETRIEVAL, 10)


def test_methods_come_in_the_order_asked_and_floors_after() -> None:
    requests = plan(PROMPTS, ["neon"], [POSTFIX_TEXT, RETRIEVAL], 2, seed=0, floor_per_style=1)
    assert [r.method for r in requests] == [POSTFIX_TEXT, POSTFIX_TEXT, RETRIEVAL, RETRIEVAL, NULL]
    # one style and no other to retrieve from: no other_style (but the null floor)


def test_other_style_retrieves_from_the_next_style_in_sorted_order() -> None:
    known = ["watercolor", "neon", "mosaic", "hatching"]
    requests = plan(PROMPTS, ["neon", "watercolor"], [RETRIEVAL], 2, seed=0, floor_per_style=2, known=known)
    collections = {r.style: r.collection for r in requests if r.method == OTHER_STYLE}
    assert collections == {"neon": "style-watercolor", "watercolor": "style-hatching"}  # wraps around
    assert all(r.collection is None for r in requests if r.method != OTHER_STYLE)
    assert [other_style(s, known) for s in sorted(known)] == ["mosaic", "neon", "watercolor", "hatching"]
    again = plan(PROMPTS, ["neon", "watercolor"], [RETRIEVAL], 2, seed=0, floor_per_style=2, known=known)
    assert again == requests


def test_no_floors_when_floor_per_style_is_zero() -> None:
    requests = plan(PROMPTS, STYLES, [RETRIEVAL, POSTFIX], 2, seed=0, floor_per_style=0)
    assert {r.method for r in requests} == {RETRIEVAL, POSTFIX} and len(requests) == 2 * 2 * 2


def test_unknown_methods_and_floors_as_methods_are_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['prompt-only'\]"):
        plan(["a"], ["neon"], ["prompt-only"], 1, 0)
    with pytest.raises(ValueError, match="floors come with floor_per_style"):
        plan(["a"], ["neon"], [NULL], 1, 0)
