"""The recipe DAG: validation, deterministic build order, and chains."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import networkx as nx

from buildsys.errors import GraphError, UnknownRecipe, did_you_mean
from buildsys.recipe import KeyPath, Recipe, key_line, render_key


@dataclass(frozen=True)
class Graph:
    recipes: Mapping[str, Recipe]
    dag: nx.DiGraph  # edges parent -> child

    @property
    def order(self) -> list[str]:
        """Topological order with a lexicographic tie-break: the same every time."""
        return list(nx.lexicographical_topological_sort(self.dag))

    def chain(self, name: str) -> list[str]:
        """The layers of ``name``'s image: its ancestors and itself, in order."""
        self.require(name)
        members = nx.ancestors(self.dag, name) | {name}
        return list(nx.lexicographical_topological_sort(self.dag.subgraph(members)))

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
    dag = nx.DiGraph()
    dag.add_nodes_from(sorted(recipes))
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
            dag.add_edge(p, name)
        if r.is_root and r.base is None:
            raise GraphError(f"{r.path}: a root recipe (no parents) needs a [base]",
                             'add [base] debian = { suite = "bookworm", variant = "minbase" }, or set parents')
        if not r.is_root and r.base is not None:
            raise GraphError(f"{_where(r, ('base',))}: only a root recipe may have a [base]; this one has parents "
                             f"{list(r.parents)}", "remove [base] (the image comes from the parents) or the parents")
    try:
        cycle = nx.find_cycle(dag)
    except nx.NetworkXNoCycle:
        _check_one_root(recipes, dag)
        return Graph(recipes=dict(recipes), dag=dag)
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


def _check_one_root(recipes: Mapping[str, Recipe], dag: nx.DiGraph) -> None:
    """A chain is one image, so it can start from one base only: parents must share their root."""
    for name in nx.lexicographical_topological_sort(dag):
        if len(recipes[name].parents) < 2:
            continue
        roots = sorted(a for a in nx.ancestors(dag, name) if recipes[a].is_root)
        if len(roots) > 1:
            r = recipes[name]
            raise GraphError(f"{_where(r, ('parents',))}: the parents {list(r.parents)} start from different bases "
                             f"({', '.join(roots)}); an image has one base",
                             "give these parents a common root recipe, or build them as separate images")
