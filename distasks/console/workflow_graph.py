"""A workflow's graph laid out for its console page: each node's depth (the longest path
from a root, its column), and up to a bound the drawing itself as SVG geometry; past the
bound, the counts by state of each depth instead. Pure: no I/O, no markup (the template
writes the SVG; colours come from CSS classes, as charts.py's bars do)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Most nodes drawn: past this the page shows counts per depth and a node table instead
# (a drawing of thousands of boxes says nothing and weighs megabytes).
MAX_DRAWN_NODES = 300
# Most edges drawn (a dense graph of few nodes can still have tens of thousands).
MAX_DRAWN_EDGES = 3_000
# A node's box and the gaps around it, in the drawing's own units.
BOX_W = 150
BOX_H = 28
COLUMN_GAP = 60
ROW_GAP = 12
MARGIN = 10
# Characters of a key written in its box (the whole key is in its title).
LABEL_CHARS = 20


@dataclass(frozen=True, slots=True)
class GraphNode:
    """What the layout needs of a node: its key, state, task and its parents' keys."""

    key: str
    status: str
    task_id: str
    parents: tuple[str, ...] = ()
    #: the workflow's on_failure task: no edge, drawn in a column of its own at the end
    on_failure: bool = False


@dataclass(frozen=True, slots=True)
class Box:
    x: int
    y: int
    key: str
    label: str
    status: str
    task_id: str
    depth: int
    on_failure: bool


@dataclass(frozen=True, slots=True)
class Drawing:
    width: int
    height: int
    boxes: list[Box]
    #: SVG path data, one per edge, from the parent's right side to the child's left
    edges: list[str]
    box_w: int
    box_h: int


def depths(nodes: Sequence[GraphNode]) -> dict[str, int]:
    """Each node's depth: 0 for a root, else one more than its deepest parent (the
    longest path from a root). Iterative (Kahn's order), so a 10,000-node chain needs no
    recursion; the on_failure node goes one past the deepest. Parents not among `nodes`
    are ignored; a cycle (which submission refuses) leaves its nodes at the depth reached."""
    known = {n.key for n in nodes}
    children: dict[str, list[str]] = {n.key: [] for n in nodes}
    waiting: dict[str, int] = {}
    for n in nodes:
        parents = [p for p in n.parents if p in known]
        waiting[n.key] = len(parents)
        for p in parents:
            children[p].append(n.key)
    depth = dict.fromkeys(children, 0)
    ready = [k for k, w in waiting.items() if w == 0]
    while ready:
        key = ready.pop()
        for child in children[key]:
            depth[child] = max(depth[child], depth[key] + 1)
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    last = max((depth[n.key] for n in nodes if not n.on_failure), default=-1)
    for n in nodes:
        if n.on_failure:
            depth[n.key] = last + 1
    return depth


def counts_by_depth(nodes: Sequence[GraphNode], depth: Mapping[str, int],
                    ) -> list[tuple[int, int, dict[str, int]]]:
    """(depth, nodes, {status: count}) for each depth, shallowest first."""
    by: dict[int, dict[str, int]] = {}
    for n in nodes:
        slot = by.setdefault(depth[n.key], {})
        slot[n.status] = slot.get(n.status, 0) + 1
    return [(d, sum(c.values()), dict(sorted(c.items()))) for d, c in sorted(by.items())]


def ordered(nodes: Sequence[GraphNode], depth: Mapping[str, int]) -> list[GraphNode]:
    """The nodes by depth, then key: the order of the drawing's columns and the table."""
    return sorted(nodes, key=lambda n: (depth[n.key], n.key))


def draw(nodes: Sequence[GraphNode], depth: Mapping[str, int], *,
         max_nodes: int = MAX_DRAWN_NODES, max_edges: int = MAX_DRAWN_EDGES,
         ) -> Drawing | None:
    """The drawing of the graph, one column per depth, or None past `max_nodes` nodes
    or `max_edges` edges."""
    if len(nodes) > max_nodes or sum(len(n.parents) for n in nodes) > max_edges:
        return None
    rows: dict[int, int] = {}
    row_of: dict[str, int] = {}
    boxes: dict[str, Box] = {}
    by_column: dict[int, list[GraphNode]] = {}
    for n in nodes:
        by_column.setdefault(depth[n.key], []).append(n)
    placed: list[GraphNode] = []
    for d in sorted(by_column):
        # Within a column, nodes go in the order of their parents' mean row (then key):
        # a child sits near its parents, and fewer edges cross.
        def mean_parent_row(n: GraphNode) -> float:
            seen = [row_of[p] for p in n.parents if p in row_of]
            return sum(seen) / len(seen) if seen else 0.0

        for i, n in enumerate(sorted(by_column[d], key=lambda n: (mean_parent_row(n), n.key))):
            row_of[n.key] = i
            placed.append(n)
    for n in placed:
        d = depth[n.key]
        row = rows.get(d, 0)
        rows[d] = row + 1
        label = n.key if len(n.key) <= LABEL_CHARS else n.key[:LABEL_CHARS - 1] + "…"
        boxes[n.key] = Box(x=MARGIN + d * (BOX_W + COLUMN_GAP),
                           y=MARGIN + row * (BOX_H + ROW_GAP), key=n.key, label=label,
                           status=n.status, task_id=n.task_id, depth=d,
                           on_failure=n.on_failure)
    edges = []
    for n in nodes:
        child = boxes[n.key]
        for p in n.parents:
            parent = boxes.get(p)
            if parent is None:
                continue
            x1, y1 = parent.x + BOX_W, parent.y + BOX_H // 2
            x2, y2 = child.x, child.y + BOX_H // 2
            bend = (x2 - x1) / 2
            edges.append(f"M{x1},{y1} C{x1 + bend:.0f},{y1} {x2 - bend:.0f},{y2} {x2},{y2}")
    columns = max(rows, default=-1) + 1
    height = max(rows.values(), default=0)
    return Drawing(width=2 * MARGIN + max(columns * (BOX_W + COLUMN_GAP) - COLUMN_GAP, 0),
                   height=2 * MARGIN + max(height * (BOX_H + ROW_GAP) - ROW_GAP, 0),
                   boxes=list(boxes.values()), edges=edges, box_w=BOX_W, box_h=BOX_H)
