"""api/pages.py: which items a page keeps within its byte budget, and the page's JSON."""

from __future__ import annotations

import json

from quart import Quart

from distasks.api import pages

BUDGET = 64 * 1024


def item(size: int) -> dict[str, str]:
    return {"blob": "x" * size}


async def test_a_page_keeps_the_items_whose_json_fits_and_stops_before_the_next():
    items = [item(20_000)] * 5
    kept = await pages.fit(items, BUDGET)
    assert len(kept) == 3
    assert sum(len(k) + 1 for k in kept) <= BUDGET - pages.ENVELOPE_BYTES


async def test_an_item_larger_than_the_budget_goes_alone_and_ends_the_page():
    kept = await pages.fit([item(BUDGET * 2), item(10)], BUDGET)
    assert [json.loads(k) for k in kept] == [item(BUDGET * 2)]


async def test_items_after_the_cut_are_not_encoded():
    encoded = []

    def items():
        for i in range(100):
            encoded.append(i)
            yield item(30_000)

    assert len(await pages.fit(items(), BUDGET)) == 2
    assert len(encoded) == 3


async def test_small_items_all_fit_and_none_is_dropped():
    assert len(await pages.fit([item(10)] * 500, BUDGET)) == 500
    assert await pages.fit([], BUDGET) == []


def test_jsonify_splices_encoded_items_into_the_document_keys_in_order():
    app = Quart("test")
    pages.install(app, heavy_reads=1)
    kept = pages.Encoded([json.dumps({"id": "a"}), json.dumps({"id": "b", "x": "\u00e9"})])
    text = app.json.dumps({"queue": "q", "count": 2, "tasks": kept, "next_cursor": None})
    assert list(json.loads(text)) == ["queue", "count", "tasks", "next_cursor"]
    assert json.loads(text)["tasks"] == [{"id": "a"}, {"id": "b", "x": "\u00e9"}]
    assert json.loads(app.json.dumps({"b": 1, "a": [2]})) == {"b": 1, "a": [2]}
