"""The recipe DAG: build order, chains, closure, and the faults that make it no DAG."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildsys.core.errors import EXIT_USAGE, GraphError, UnknownRecipe
from buildsys.ecosystems.debian_root import DebianBase
from buildsys.model.graph import Graph, build_graph
from buildsys.model.recipe import Recipe, load_recipes

STACK_ORDER = ["base", "python", "jupyter", "r-base", "rstudio", "user"]


@pytest.fixture
def stack(fixture_project) -> Graph:
    return build_graph(load_recipes(fixture_project("valid-stack")))


def graph_of(parents: dict[str, list[str]]) -> Graph:
    """A graph of in-memory recipes (no files): roots are those with no parents."""
    return build_graph({
        name: Recipe(name=name, path=Path(f"recipes/{name}.toml"), parents=tuple(ps),
                     base=None if ps else DebianBase("bookworm"))
        for name, ps in parents.items()
    })


def test_build_order_is_topological_with_lexicographic_tie_break(stack):
    # python < r-base, so the python branch (python, jupyter) comes before r-base; user needs both branches.
    assert stack.order == STACK_ORDER
    assert stack.roots() == ["base"]


def test_build_order_does_not_depend_on_the_order_recipes_are_given(fixture_project):
    recipes = load_recipes(fixture_project("valid-stack"))
    backwards = build_graph(dict(reversed(list(recipes.items()))))
    assert backwards.order == STACK_ORDER
    assert backwards.chain("user") == build_graph(recipes).chain("user")


def test_tie_break_among_siblings_is_by_name():
    g = graph_of({"base": [], "zeta": ["base"], "alpha": ["base"], "mid": ["base"], "alpha-2": ["alpha"]})
    assert g.order == ["base", "alpha", "alpha-2", "mid", "zeta"]
    assert g.chain("alpha-2") == ["base", "alpha", "alpha-2"]


def test_several_roots():
    g = graph_of({"r": [], "d": [], "r-pkgs": ["r"], "d-pkgs": ["d"]})
    assert g.order == ["d", "d-pkgs", "r", "r-pkgs"]
    assert g.roots() == ["d", "r"]
    assert g.chain("r-pkgs") == ["r", "r-pkgs"]


@pytest.mark.parametrize(
    ("name", "chain"),
    [
        ("base", ["base"]),
        ("python", ["base", "python"]),
        ("jupyter", ["base", "python", "jupyter"]),
        ("rstudio", ["base", "r-base", "rstudio"]),
        # two parents: both branches composed into one linear chain, in build order
        ("user", ["base", "python", "jupyter", "r-base", "rstudio", "user"]),
    ],
)
def test_chains(stack, name, chain):
    assert stack.chain(name) == chain


def test_diamond_chain_is_base_left_right_top(fixture_project):
    g = build_graph(load_recipes(fixture_project("diamond")))
    assert g.recipes["top"].parents == ("right", "left")  # the file lists right first...
    assert g.chain("top") == ["base", "left", "right", "top"]  # ...the chain is still in name order
    assert g.order == ["base", "left", "right", "top"]
    assert g.chain("left") == ["base", "left"]


def test_closure_is_the_recipes_and_their_ancestors_in_build_order(stack):
    assert stack.closure(["jupyter"]) == ["base", "python", "jupyter"]
    assert stack.closure(["rstudio", "jupyter"]) == ["base", "python", "jupyter", "r-base", "rstudio"]
    assert stack.closure(["user"]) == STACK_ORDER
    assert stack.closure(["base", "base"]) == ["base"]
    assert stack.closure([]) == STACK_ORDER  # none named: all


def test_select_keeps_build_order(stack):
    assert stack.select(["user", "base", "jupyter"]) == ["base", "jupyter", "user"]
    assert stack.select([]) == STACK_ORDER


def test_unknown_recipe_suggests_a_close_name(stack):
    for call in (stack.require, stack.chain, lambda n: stack.closure([n]), lambda n: stack.select([n])):
        with pytest.raises(UnknownRecipe) as info:
            call("jupytr")
        assert info.value.exit_code == EXIT_USAGE
        assert str(info.value) == (
            "no recipe named 'jupytr' (did you mean 'jupyter'?)\n"
            "  recipes here: base, jupyter, python, r-base, rstudio, user"
        )


def test_require_returns_the_recipe(stack):
    assert stack.require("rstudio") is stack.recipes["rstudio"]


# --- faults: one fixture project each --------------------------------------------------------------------------


def graph_error(project: Path) -> GraphError:
    with pytest.raises(GraphError) as info:
        build_graph(load_recipes(project))
    assert info.value.exit_code == EXIT_USAGE
    return info.value


def test_cycle_names_its_path(fixture_project):
    project = fixture_project("cycle")
    e = graph_error(project)
    # a lists b in its parents, b lists c, c lists a: read the way the files read.
    assert e.message == "the recipes' parents form a cycle: a -> b -> c -> a (each lists the next one in its parents)"
    recipes = project / "recipes"
    assert e.hint == (
        f"remove one of these parent links: {recipes}/a.toml:2: parents[0] = 'b', "
        f"{recipes}/b.toml:1: parents[0] = 'c', {recipes}/c.toml:2: parents[1] = 'a'"
    )


def test_cycle_message_is_the_same_whichever_way_recipes_come():
    a = graph_of_cycle({"x": [], "m": ["k"], "k": ["z"], "z": ["x", "m"]})
    b = graph_of_cycle({"z": ["x", "m"], "k": ["z"], "m": ["k"], "x": []})
    assert a == b == "the recipes' parents form a cycle: k -> z -> m -> k (each lists the next one in its parents)"


def graph_of_cycle(parents: dict[str, list[str]]) -> str:
    with pytest.raises(GraphError) as info:
        graph_of(parents)
    return info.value.message


def test_missing_parent_suggests_the_close_name(fixture_project):
    project = fixture_project("missing-parent")
    e = graph_error(project)
    assert str(e) == (
        f"{project}/recipes/lab.toml:3: parents[0]: no recipe named 'jupytr' (did you mean 'jupyter'?)\n"
        "  create recipes/jupytr.toml or fix the name; recipes here: base, jupyter, lab"
    )


def test_self_parent(fixture_project):
    project = fixture_project("self-parent")
    e = graph_error(project)
    assert e.message == f"{project}/recipes/python.toml:1: parents[1]: recipe 'python' names itself as a parent"


def test_root_without_base(fixture_project):
    project = fixture_project("root-without-base")
    e = graph_error(project)
    assert e.message == f"{project}/recipes/base.toml: a root recipe (no parents) needs a [base]"
    assert e.hint and 'debian = { suite = "bookworm", variant = "minbase" }' in e.hint


def test_non_root_with_base(fixture_project):
    project = fixture_project("non-root-with-base")
    e = graph_error(project)
    assert e.message.startswith(f"{project}/recipes/python.toml:6: base: only a root recipe may have a [base]")
    assert "['base']" in e.message
    assert e.hint and e.hint.startswith("remove [base]")


def test_parents_from_two_roots_make_no_single_image(fixture_project):
    project = fixture_project("two-roots")
    e = graph_error(project)
    assert e.message == (
        f"{project}/recipes/mixed.toml:2: parents: the parents ['debian', 'ubuntu'] start from different bases "
        "(debian, ubuntu); an image has one base"
    )


def test_parents_sharing_a_root_are_fine():
    g = graph_of({"base": [], "a": ["base"], "b": ["base"], "ab": ["a", "b"], "ab2": ["ab"]})
    assert g.chain("ab2") == ["base", "a", "b", "ab", "ab2"]
