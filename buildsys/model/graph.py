"""The recipe DAG: validation, deterministic build order, and chains.

The order and chains are computed here directly (a few recipes: Kahn's
algorithm with a heap); networkx is imported only to show the graph or to
name a cycle, since importing it costs more than the rest of a no-op build.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from buildsys.core.errors import GraphError, UnknownRecipe, did_you_mean
from buildsys.model.recipe import KeyPath, Recipe, key_line, render_key

if TYPE_CHECKING:
    import networkx as nx


def _topological(nodes: Iterable[str], parents: Mapping[str, Iterable[str]]) -> list[str]:
    """Topological order with a lexicographic tie-break (as networkx's lexicographical_topological_sort)."""
    members = set(nodes)
    waiting = {n: {p for p in parents.get(n, ()) if p in members} for n in members}
    children: dict[str, list[str]] = {n: [] for n in members}
    for n, ps in waiting.items():
        for p in ps:
            children[p].append(n)
    ready = [n for n, ps in waiting.items() if not ps]
    heapq.heapify(ready)
    out = []
    while ready:
        n = heapq.heappop(ready)
        out.append(n)
        for c in children[n]:
            waiting[c].discard(n)
            if not waiting[c]:
                heapq.heappush(ready, c)
    return out  # shorter than the nodes when there is a cycle


@dataclass(frozen=True)
class Graph:
    recipes: Mapping[str, Recipe]
    parents: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # edges parent -> child, by child

    @property
    def dag(self) -> nx.DiGraph:
        """The graph as networkx has it (edges parent -> child): for showing it."""
        import networkx as nx

        dag = nx.DiGraph()
        dag.add_nodes_from(sorted(self.recipes))
        dag.add_edges_from((p, c) for c in sorted(self.recipes) for p in self.parents.get(c, ()))
        return dag

    @property
    def order(self) -> list[str]:
        """Topological order with a lexicographic tie-break: the same every time."""
        return _topological(self.recipes, self.parents)

    def ancestors(self, name: str) -> set[str]:
        seen: set[str] = set()
        todo = list(self.parents.get(name, ()))
        while todo:
            p = todo.pop()
            if p not in seen:
                seen.add(p)
                todo.extend(self.parents.get(p, ()))
        return seen

    def chain(self, name: str) -> list[str]:
        """The layers of ``name``'s image: its ancestors and itself, in order."""
        self.require(name)
        return _topological(self.ancestors(name) | {name}, self.parents)

    def require(self, name: str) -> Recipe:
        if name not in self.recipes:
            raise UnknownRecipe(name, self.recipes)
        return self.recipes[name]

    def select(self, names: Iterable[str]) -> list[str]:
        """The given recipes (all when none), in build order."""
        wanted = list(names)
        for n in wanted:
            self.require(n)
        return [n for n in self.order if not wanted or n in wanted]

    def closure(self, names: Iterable[str]) -> list[str]:
        """The given recipes and all their ancestors, in build order."""
        members: set[str] = set()
        for n in self.select(names):
            members |= set(self.chain(n))
        return [n for n in self.order if n in members]

    def roots(self) -> list[str]:
        return [n for n in self.order if self.recipes[n].is_root]


def _where(r: Recipe, key: KeyPath) -> str:
    """``path:line: key`` for a fault found in a parsed recipe, as RecipeError writes it."""
    line = key_line(r.path, key)
    return f"{r.path}{f':{line}' if line else ''}: {render_key(key)}"


def build_graph(recipes: Mapping[str, Recipe]) -> Graph:
    """Check the parent relations and return the DAG.

    Each fault is its own error naming the recipe file, key and line: a parent
    that does not exist (with a close name suggested), a recipe that is its own
    parent, a cycle (with its path), a root without ``[base]``, a non-root with one.
    """
    parents: dict[str, tuple[str, ...]] = {}
    for name in sorted(recipes):
        r = recipes[name]
        for i, p in enumerate(r.parents):
            if p == name:
                raise GraphError(f"{_where(r, ('parents', i))}: recipe '{name}' names itself as a parent",
                                 "remove it from parents")
            if p not in recipes:
                raise GraphError(
                    f"{_where(r, ('parents', i))}: no recipe named '{p}'{did_you_mean(p, recipes)}",
                    f"create recipes/{p}.toml or fix the name; recipes here: {', '.join(sorted(recipes))}",
                )
        parents[name] = tuple(dict.fromkeys(r.parents))
        if r.is_root and r.base is None:
            raise GraphError(f"{r.path}: a root recipe (no parents) needs a [base]",
                             'add [base] debian = { suite = "bookworm", variant = "minbase" }, or set parents')
        if not r.is_root and r.base is not None:
            raise GraphError(f"{_where(r, ('base',))}: only a root recipe may have a [base]; this one has parents "
                             f"{list(r.parents)}", "remove [base] (the image comes from the parents) or the parents")
    graph = Graph(recipes=dict(recipes), parents=parents)
    if len(graph.order) == len(recipes):
        _check_one_root(graph)
        return graph
    import networkx as nx

    cycle: Any = nx.find_cycle(graph.dag)
    # Edges run parent -> child; name the cycle the way the files read it (each lists the next in its
    # parents), starting from the smallest name so that the message is the same on every run.
    path = [u for u, _ in cycle][::-1]
    first = path.index(min(path))
    path = path[first:] + path[:first]
    links = ", ".join(f"{_where(recipes[n], ('parents', recipes[n].parents.index(nxt)))} = '{nxt}'"
                      for n, nxt in zip(path, path[1:] + path[:1], strict=True))
    raise GraphError(f"the recipes' parents form a cycle: {' -> '.join([*path, path[0]])} "
                     "(each lists the next one in its parents)",
                     f"remove one of these parent links: {links}")


def _check_one_root(graph: Graph) -> None:
    """A chain is one image, so it can start from one base only: parents must share their root."""
    recipes = graph.recipes
    for name in graph.order:
        if len(recipes[name].parents) < 2:
            continue
        roots = sorted(a for a in graph.ancestors(name) if recipes[a].is_root)
        if len(roots) > 1:
            r = recipes[name]
            raise GraphError(f"{_where(r, ('parents',))}: the parents {list(r.parents)} start from different bases "
                             f"({', '.join(roots)}); an image has one base",
                             "give these parents a common root recipe, or build them as separate images")
