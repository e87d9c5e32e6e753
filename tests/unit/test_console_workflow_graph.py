"""The console's layout of a workflow graph: depths as longest paths, the drawing's
columns and edges, and the bound past which nothing is drawn."""

from __future__ import annotations

from distasks.console.workflow_graph import (
    BOX_H,
    BOX_W,
    GraphNode,
    counts_by_depth,
    depths,
    draw,
    ordered,
)


def node(key: str, *parents: str, status: str = "pending", on_failure: bool = False,
         ) -> GraphNode:
    return GraphNode(key=key, status=status, task_id=f"id-{key}", parents=parents,
                     on_failure=on_failure)


def test_a_chain_goes_one_column_further_per_node() -> None:
    nodes = [node("c", "b"), node("b", "a"), node("a")]
    assert depths(nodes) == {"a": 0, "b": 1, "c": 2}


def test_a_diamond_puts_both_branches_in_one_column() -> None:
    nodes = [node("top"), node("left", "top"), node("right", "top"),
             node("bottom", "left", "right")]
    assert depths(nodes) == {"top": 0, "left": 1, "right": 1, "bottom": 2}


def test_a_node_sits_past_its_deepest_parent_not_its_nearest() -> None:
    # a -> b -> c -> d and a -> d: d's column is 3 (the longest path), not 1.
    nodes = [node("a"), node("b", "a"), node("c", "b"), node("d", "a", "c")]
    assert depths(nodes)["d"] == 3


def test_the_on_failure_task_goes_one_column_past_the_deepest() -> None:
    nodes = [node("a"), node("b", "a"), node("page-me", on_failure=True)]
    assert depths(nodes) == {"a": 0, "b": 1, "page-me": 2}


def test_a_long_chain_needs_no_recursion() -> None:
    nodes = [node("n0")] + [node(f"n{i}", f"n{i - 1}") for i in range(1, 10_000)]
    assert depths(nodes)["n9999"] == 9_999


def test_the_drawing_has_a_box_per_node_in_its_column_and_a_path_per_edge() -> None:
    nodes = [node("top", status="completed"), node("left", "top", status="failed"),
             node("right", "top", status="running"), node("bottom", "left", "right")]
    d = depths(nodes)
    drawing = draw(nodes, d)
    assert drawing is not None
    boxes = {b.key: b for b in drawing.boxes}
    assert boxes["left"].x == boxes["right"].x > boxes["top"].x
    assert boxes["bottom"].x > boxes["left"].x
    assert boxes["left"].y != boxes["right"].y
    assert {b.key: b.status for b in drawing.boxes}["left"] == "failed"
    assert len(drawing.edges) == 4
    assert all(p.startswith("M") for p in drawing.edges)
    right_edge = boxes["bottom"].x + BOX_W
    bottom_edge = max(b.y for b in drawing.boxes) + BOX_H
    assert drawing.width >= right_edge and drawing.height >= bottom_edge


def test_past_the_bound_nothing_is_drawn_and_depths_are_counted() -> None:
    nodes = [node("root", status="completed")] + [
        node(f"part-{i:03}", "root", status="failed" if i % 2 else "completed")
        for i in range(300)]
    d = depths(nodes)
    assert draw(nodes, d, max_nodes=300) is None
    assert draw(nodes, d, max_nodes=301) is not None
    assert draw(nodes, d, max_nodes=301, max_edges=299) is None
    assert counts_by_depth(nodes, d) == [
        (0, 1, {"completed": 1}), (1, 300, {"completed": 150, "failed": 150})]
    assert [n.key for n in ordered(nodes, d)[:2]] == ["root", "part-000"]


def test_a_long_key_is_cut_in_its_box_but_whole_in_its_data() -> None:
    nodes = [node("k" * 60)]
    drawing = draw(nodes, depths(nodes))
    assert drawing is not None
    assert drawing.boxes[0].key == "k" * 60
    assert len(drawing.boxes[0].label) < 60 and drawing.boxes[0].label.endswith("…")


def test_a_child_is_placed_near_its_parent_in_its_column() -> None:
    # Two chains side by side: b's child comes first in column 1 although its key sorts last.
    nodes = [node("a"), node("b"), node("z-under-a", "a"), node("c-under-b", "b")]
    drawing = draw(nodes, depths(nodes))
    assert drawing is not None
    y = {b.key: b.y for b in drawing.boxes}
    assert y["a"] == y["z-under-a"] and y["b"] == y["c-under-b"]
