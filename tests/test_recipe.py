"""Recipes: parsing the contract's keys into frozen objects, and every way a recipe can be wrong."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from buildsys.core.errors import EXIT_USAGE, RecipeError
from buildsys.ecosystems.apt_sections import AptRecipe
from buildsys.ecosystems.cran import CranRecipe
from buildsys.ecosystems.debian_root import DEFAULT_MIRROR, DebianBase
from buildsys.ecosystems.files import FileSpec, FilesRecipe
from buildsys.ecosystems.pip_resolve import PipRecipe
from buildsys.ecosystems.registry_image import ImageBase
from buildsys.model.recipe import (
    ImageConfig,
    _line_of,
    canonical_json,
    load_recipes,
    parse_recipe,
)


def recipe_file(project: Path, name: str) -> Path:
    return project / "recipes" / f"{name}.toml"


def write_recipe(tmp_path: Path, text: str, name: str = "base") -> Path:
    path = tmp_path / "recipes" / f"{name}.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- the valid stack -------------------------------------------------------------------------------------------


def test_valid_stack_loads_every_recipe_by_name(fixture_project):
    recipes = load_recipes(fixture_project("valid-stack"))
    assert sorted(recipes) == ["base", "jupyter", "python", "r-base", "rstudio", "user"]
    assert all(r.name == name for name, r in recipes.items())
    assert recipes["user"].parents == ("rstudio", "jupyter")  # as written, not sorted


def test_debian_root_gets_the_defaults(fixture_project):
    base = load_recipes(fixture_project("valid-stack"))["base"]
    assert base.is_root
    assert base.description == "Debian bookworm, bootstrapped from pinned .debs"
    assert base.base == DebianBase(suite="bookworm", variant="minbase")
    assert isinstance(base.base, DebianBase)
    assert base.base.mirror == DEFAULT_MIRROR == "http://deb.debian.org/debian"
    assert base.base.architecture == "amd64"
    assert base.base.components == ("main",)
    assert base.section(AptRecipe).packages == ("ca-certificates", "locales")
    assert base.image == ImageConfig()
    assert base.section(FilesRecipe).files == () and base.run == () and base.tests == ()


def test_every_debian_option_as_a_table(fixture_project):
    base = load_recipes(fixture_project("debian-options"))["base"]
    assert base.base == DebianBase(
        suite="bookworm",
        variant="buildd",
        mirror="http://snapshot.debian.org/archive/debian/20250601T000000Z",  # trailing slash dropped
        architecture="arm64",
        components=("main", "contrib"),
    )


def test_image_root(fixture_project):
    base = load_recipes(fixture_project("diamond"))["base"]
    assert base.base == ImageBase("docker.io/library/debian:bookworm")


def test_jupyter_parses_every_section(fixture_project):
    path = recipe_file(fixture_project("valid-stack"), "jupyter")
    r = parse_recipe(path)
    assert r.name == "jupyter"
    assert r.path == path
    assert not r.is_root and r.base is None
    assert r.parents == ("python",)
    assert r.run == ("jupyter lab --generate-config",)
    assert r.section(AptRecipe).packages == ("git", "tini")
    assert r.section(PipRecipe) == PipRecipe(packages=("jupyterlab>=4,<5", "tensorboard"), index_url=None)
    assert r.image == ImageConfig(
        env=(("JUPYTER_PORT", "8888"),),
        user="1000:1000",
        workdir="/home/user",
        expose=(8888,),
        cmd=("jupyter", "lab", "--ip=0.0.0.0"),
        entrypoint=None,
        labels=(),
    )
    assert r.tests == ("python3 -c 'import jupyterlab'",)


def test_pip_cran_and_files(fixture_project):
    recipes = load_recipes(fixture_project("valid-stack"))
    assert recipes["python"].section(PipRecipe).index_url == "https://pypi.org/simple"
    assert recipes["python"].section(AptRecipe).packages == ("python3", "python3-pip", "python3-venv")
    assert recipes["r-base"].section(CranRecipe) == CranRecipe(
        packages=("jsonlite", "data.table"), repo="https://packagemanager.posit.co/cran/2025-06-02")
    assert recipes["rstudio"].section(FilesRecipe).files == (
        FileSpec(
            url="https://download2.rstudio.org/server/jammy/amd64/rstudio-server-2024.12.1-563-amd64.deb",
            name="rstudio-server.deb",
        ),
        # No name: it is the last part of the URL's path, without the query.
        FileSpec(
            url="https://example.org/downloads/rstudio.conf?raw=1",
            name="rstudio.conf",
            sha256="9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        ),
    )
    assert recipes["user"].tests == ("Rscript -e 'library(ggplot2)'", "python3 -c 'import pandas'")


def test_recipes_are_frozen(fixture_project):
    r = load_recipes(fixture_project("valid-stack"))["jupyter"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.parents = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.image.user = "root"  # type: ignore[misc]
    assert hash(r) == hash(parse_recipe(r.path))
    assert r == parse_recipe(r.path)


# --- recipe_hash ------------------------------------------------------------------------------------------------


def test_recipe_hash_is_a_known_digest_of_the_canonical_content(tmp_path):
    r = parse_recipe(write_recipe(tmp_path, 'parents = ["base"]\n\n[apt]\npackages = ["git"]\n', name="x"))
    assert canonical_json(r.data) == b'{"apt":{"packages":["git"]},"parents":["base"]}'
    # sha256 of the bytes above, computed with sha256sum: freezes the serialization.
    assert r.recipe_hash == "sha256:48236d624979529fcf4f8ca4198e321e52cf7e61e9011378c7ac3d6ed687e912"


JUPYTER_REFORMATTED = """\
# The same content as valid-stack's jupyter.toml: other key order, comments,
# spacing, quotes, a multi-line array and [image.env] as a table.
run = [ 'jupyter lab --generate-config' ]
parents = [
    "python",   # the only parent
]
description = "JupyterLab and TensorBoard"

[test]
commands = ["python3 -c 'import jupyterlab'"]

[image]
cmd = ["jupyter", "lab", "--ip=0.0.0.0"]
expose = [ 8888 ]
labels = {}
user = '1000:1000'
workdir = "/home/user"

[image.env]
JUPYTER_PORT = "8888"

[pip]
packages = ["jupyterlab>=4,<5", "tensorboard"]

[apt]
packages = ["git", "tini"]
"""


def test_recipe_hash_ignores_formatting_and_comments(fixture_project, tmp_path):
    original = parse_recipe(recipe_file(fixture_project("valid-stack"), "jupyter"))
    reformatted = parse_recipe(write_recipe(tmp_path, JUPYTER_REFORMATTED, name="jupyter"))
    assert reformatted == dataclasses.replace(original, path=reformatted.path)
    assert reformatted.recipe_hash == original.recipe_hash


def test_recipe_hash_changes_with_the_content(fixture_project, tmp_path):
    original = parse_recipe(recipe_file(fixture_project("valid-stack"), "jupyter"))
    changed = parse_recipe(write_recipe(tmp_path, JUPYTER_REFORMATTED.replace('"tini"', '"tini", "curl"'), "jupyter"))
    assert changed.recipe_hash != original.recipe_hash
    reordered = parse_recipe(write_recipe(tmp_path, JUPYTER_REFORMATTED.replace('"git", "tini"', '"tini", "git"')))
    assert reordered.recipe_hash != original.recipe_hash  # package order is content: it is the install order


# --- malformed recipes: one fixture project per failure mode ----------------------------------------------------

# (fixture, recipe, key path, line, words the message must hold)
MALFORMED = [
    ("typo-key", "base", "parent", 2, ["unknown key (did you mean 'parents'?)", "allowed here: apt, base, cran"]),
    ("typo-nested-key", "base", "image.enviroment", 6, ["unknown key (did you mean 'env'?)", "allowed here: cmd,"]),
    ("misplaced-key", "base", "apt.run", 7, ["did you mean the top-level 'run'?", "above the first [table]"]),
    ("bad-types", "base", "parents", 2, ["must be an array of strings, not a string"]),
    ("bad-expose", "base", "image.expose[0]", 5, ["must be an integer, not a string"]),
    ("two-bases", "base", "base", 3, ["must hold exactly one of 'debian' or 'image'"]),
    ("unknown-variant", "base", "base.debian.variant", 2, ["unknown variant 'minbse' (did you mean 'minbase'?)"]),
    ("bad-file", "base", "files[1].sha256", 10, ["must be 64 lowercase hex digits"]),
    ("bad-apt-name", "base", "apt.packages[2]", 8, ["'python3=3.11.2-1' is not a Debian package name", "pinned"]),
]


@pytest.mark.parametrize(("case", "name", "key", "line", "words"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_recipe_names_file_key_and_line(fixture_project, case, name, key, line, words):
    path = recipe_file(fixture_project(case), name)
    with pytest.raises(RecipeError) as info:
        load_recipes(fixture_project(case))
    e = info.value
    assert (e.path, e.key, e.line) == (path, key, line)
    assert e.exit_code == EXIT_USAGE
    assert str(e).startswith(f"{path}:{line}: {key}: ")
    for w in words:
        assert w in str(e)


# (fixture, line, words): TOML that does not parse at all
BAD_TOML = [
    ("bad-toml", 3, ["invalid TOML: unexpected end of line (column 6)", "https://toml.io"]),
    ("bad-toml-duplicate", 6, ['invalid TOML: Key "packages" already exists']),
    ("bad-toml-eof", 5, ["invalid TOML: the file ends inside a value: a bracket, brace or quote is not closed"]),
]


@pytest.mark.parametrize(("case", "line", "words"), BAD_TOML, ids=[b[0] for b in BAD_TOML])
def test_toml_syntax_error_names_file_and_line(fixture_project, case, line, words):
    path = recipe_file(fixture_project(case), "base")
    with pytest.raises(RecipeError) as info:
        parse_recipe(path)
    assert (info.value.path, info.value.line, info.value.key) == (path, line, None)
    assert str(info.value).startswith(f"{path}:{line}: invalid TOML: ")
    for w in words:
        assert w in str(info.value)
    assert info.value.__cause__ is not None  # the tomlkit error is chained, for -v


def test_bad_recipe_file_name(fixture_project):
    with pytest.raises(RecipeError, match=r"recipe name 'Base' must match .*\n  rename the file"):
        load_recipes(fixture_project("bad-name"))


def test_project_without_recipes_folder(fixture_project):
    with pytest.raises(RecipeError, match="no recipes folder here") as info:
        load_recipes(fixture_project("no-recipes"))
    assert info.value.path == fixture_project("no-recipes") / "recipes"


def test_recipes_folder_without_recipes(fixture_project):
    with pytest.raises(RecipeError, match=r"holds no \*\.toml recipes"):
        load_recipes(fixture_project("empty-recipes"))


def test_not_utf8(tmp_path):
    path = write_recipe(tmp_path, "")
    path.write_bytes(b'description = "caf\xe9"\n')
    with pytest.raises(RecipeError, match="not UTF-8 text"):
        parse_recipe(path)


def test_unreadable_recipe(tmp_path):
    (tmp_path / "recipes" / "base.toml").mkdir(parents=True)
    with pytest.raises(RecipeError, match=r"base\.toml: cannot be read"):
        load_recipes(tmp_path)


# --- each field's own checks, one small recipe each ---------------------------------------------------------------

DEBIAN = '[base]\ndebian = { suite = "bookworm" }\n'

# (recipe text, key path, line, words the message must hold)
FIELD_ERRORS = [
    ('packages = ["git"]\n' + DEBIAN, "packages", 1,
     ["unknown key (it belongs in [apt], [pip], [[pip.layers]] or [cran])"]),
    (DEBIAN + "[image]\nENV = {}\n", "image.ENV", 4, ["did you mean 'env'?"]),
    (DEBIAN + "[image]\nports = [80]\n", "image.ports", 4, ["did you mean 'expose'?"]),
    ("ports = [80]\n" + DEBIAN, "ports", 1, ["did you mean 'expose' in [image]?"]),
    ('url = "https://example.org/a.deb"\n' + DEBIAN, "url", 1,
     ["unknown key (it belongs in [[apt.sources]], [apt.sources.key] or [[files]])"]),
    (DEBIAN + "[image]\nexpose = [80, 70000]\n", "image.expose[1]", 4, ["70000 is not a port number"]),
    (DEBIAN + "[image]\nexpose = [true]\n", "image.expose[0]", 4, ["must be an integer, not a boolean"]),
    (DEBIAN + "[image]\nenv = { JUPYTER_PORT = 8888 }\n", "image.env.JUPYTER_PORT", 4, ["must be a string, not an"]),
    (DEBIAN + '[image]\nenv = { "MY VAR" = "x" }\n', 'image.env."MY VAR"', 4, ["not an environment variable name"]),
    (DEBIAN + '[image]\nworkdir = "home/user"\n', "image.workdir", 4, ["'home/user' must be an absolute path"]),
    (DEBIAN + '[image]\ncmd = "jupyter lab"\n', "image.cmd", 4, ["must be an array of strings, not a string"]),
    ("image = 3\n" + DEBIAN, "image", 1, ["must be a table, not an integer"]),
    (DEBIAN + "image = 3\n", "base.image", 3, ["must be a string, not an integer"]),  # TOML puts it in [base]
    ('parents = ["base", "base"]\n', "parents[1]", 1, ["lists 'base' twice"]),
    ('parents = ["Base"]\n', "parents[0]", 1, ["'Base' is not a recipe name"]),
    ("[base.debian]\nvariant = 'minbase'\n", "base.debian.suite", 1, ["is required", 'suite = "bookworm"']),
    ('[base]\nimage = ""\n', "base.image", 2, ["'' is not an image reference"]),
    ("[base]\n", "base", 1, ["must hold exactly one of"]),
    ('[base]\ndebian = { suite = "bookworm", mirror = "deb.debian.org" }\n', "base.debian.mirror", 2,
     ["'deb.debian.org' is not an http(s) or file URL"]),
    (DEBIAN + '[files]\nurl = "https://example.org/a.deb"\n', "files", 3, ["must be an array of tables ([[files]])"]),
    (DEBIAN + '[[files]]\nname = "a.deb"\n', "files[0].url", 3, ["is required"]),
    (DEBIAN + '[[files]]\nurl = "example.org/a.deb"\n', "files[0].url", 4, ["not an http(s) or file URL"]),
    (DEBIAN + '[[files]]\nurl = "https://example.org/"\n', "files[0].name", 3, ["'' is not a usable file name"]),
    (DEBIAN + '[[files]]\nurl = "https://a.org/x.deb"\n[[files]]\nurl = "https://b.org/x.deb"\n',
     "files[1].url", 6, ["a second file named 'x.deb'", "distinct name"]),
    (DEBIAN + '[[files]]\nurl = "https://a.org/x.deb"\nsize = 3\n', "files[0].size", 5,
     ["allowed here: local, name, sha256"]),
    (DEBIAN + '[cran]\npackages = ["ggplot2>=3.5"]\n', "cran.packages[0]", 4, ["'ggplot2>=3.5' is not an R package"]),
    (DEBIAN + '[cran]\nrepo = "cran.r-project.org"\n', "cran.repo", 4, ["not an http(s) or file URL"]),
    (DEBIAN + '[pip]\nindex_url = "https://pypi.org/simple"\n', "pip.index_url", 4, ["did you mean 'index-url'?"]),
    (DEBIAN + "[test]\ncommands = [\n  'true',\n  1,\n]\n", "test.commands[1]", 6, ["must be a string, not an"]),
    ('run = "make"\n' + DEBIAN, "run", 1, ["must be an array of strings, not a string"]),
    (DEBIAN + '[image.labels]\n"org.example.team" = "ml"\n"io.buildsys.owner" = "h:1"\n',
     'image.labels."io.buildsys.owner"', 5, ["'io.buildsys.' is reserved for buildsys", "your own namespace"]),
    (DEBIAN + '[image]\nlabels = { "IO.Buildsys.up" = "jupyter" }\n', 'image.labels."IO.Buildsys.up"', 4,
     ["reserved"]),
    (DEBIAN + '[image.labels]\n"org.opencontainers.image.version" = "1"\n'
              '"org.opencontainers.image.revision" = "abc"\n',
     'image.labels."org.opencontainers.image.revision"', 5, ["set by buildsys from the git commit", "remove it"]),
    (DEBIAN + '[image.labels]\n"org.opencontainers.image.created" = "2020-01-01T00:00:00Z"\n',
     'image.labels."org.opencontainers.image.created"', 4, ["the lock's source-date-epoch"]),
]


@pytest.mark.parametrize(("text", "key", "line", "words"), FIELD_ERRORS, ids=[f[1] for f in FIELD_ERRORS])
def test_field_checks(tmp_path, text, key, line, words):
    path = write_recipe(tmp_path, text)
    with pytest.raises(RecipeError) as info:
        parse_recipe(path)
    assert (info.value.key, info.value.line) == (key, line), str(info.value)
    for w in words:
        assert w in str(info.value)


def test_file_urls_and_snapshot_repos_are_accepted(tmp_path):
    r = parse_recipe(write_recipe(tmp_path, DEBIAN + '[[files]]\nurl = "file:///srv/tool.deb"\nlocal = true\n'
                                  '[cran]\nrepo = "http://127.0.0.1:8123/"\n'))
    assert r.section(FilesRecipe).files == (FileSpec(url="file:///srv/tool.deb", name="tool.deb", local=True),)
    assert r.section(CranRecipe).repo == "http://127.0.0.1:8123/"


@pytest.mark.parametrize("url, why", [
    ("file:///etc/shadow", "file: URL"),
    ("file:///proc/self/environ", "file: URL"),
    ("http://127.0.0.1:8000/secret", "loopback"),
    ("http://localhost/x", "this machine"),
    ("http://[::1]/x", "loopback"),
    ("http://[::ffff:127.0.0.1]/x", "loopback"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://0.0.0.0:80/x", "unspecified"),
])
def test_files_reading_this_machine_need_local_true(tmp_path, url, why):
    path = write_recipe(tmp_path, DEBIAN + f'[[files]]\nurl = "{url}"\nname = "x"\n')
    with pytest.raises(RecipeError) as info:
        parse_recipe(path)
    assert info.value.key == "files[0].url" and info.value.exit_code == 2
    assert why in str(info.value) and "local = true" in str(info.value)
    ok = parse_recipe(write_recipe(tmp_path, DEBIAN + f'[[files]]\nurl = "{url}"\nname = "x"\nlocal = true\n'))
    assert ok.section(FilesRecipe).files[0].local


@pytest.mark.parametrize("step", ["apt-get update", "apt update && apt install -y jq", "apt-get -q update"])
def test_apt_get_update_in_a_step_is_refused(tmp_path, step):
    path = write_recipe(tmp_path, f'run = ["true", "{step}"]\n' + DEBIAN)
    with pytest.raises(RecipeError) as info:
        parse_recipe(path)
    assert info.value.key == "run[1]" and "no network" in str(info.value) and "[apt]" in str(info.value)


# --- where a key is: the line number in each error ----------------------------------------------------------------

LAYOUT = """\
# comment with [brackets] = "not a key"
description = \"\"\"multi-line,
parents = ["not", "this"]
\"\"\"
parents = [
  "a", # comment
  'b',
]
base.debian = { suite = "bookworm", variant = "minbse" }
"dotted.name" = 1

[image]
env = { A = "1" }
user = "u"
[image.labels]
"org.example" = "y"

[[files]]
url = "u1"

[[files]]
name = "n"  # url = "not this one"
url = "u2"

[ test ]
commands = [ ["nested"], "x" ]
"""


@pytest.mark.parametrize(
    ("key", "line"),
    [
        ("description", 2),
        ("parents", 5),  # the key, not the words in the string above it
        ("parents[1]", 7),  # an element of a multi-line array
        ("base", 9),
        ("base.debian.variant", 9),  # inside an inline table
        (("dotted.name",), 10),
        ("image", 12),
        ("image.env.A", 13),
        ("image.user", 14),
        ("image.labels", 15),
        (("image", "labels", "org.example"), 16),
        ("image.workdir", 12),  # absent: its table
        ("files", 18),
        ("files[0].url", 19),
        ("files[1].url", 23),  # the second [[files]], not the first, nor the comment
        ("files[1].sha256", 21),  # absent: its [[files]] entry
        ("test.commands[1]", 26),
        ("nothere", None),
    ],
)
def test_line_of(key, line):
    assert _line_of(LAYOUT, key) == line


def test_the_buildsys_label_namespace_is_reserved(tmp_path):
    """A container inherits its image's labels: a recipe's io.buildsys.* label would make every container of
    the image look like one buildsys made (and may remove)."""
    path = write_recipe(tmp_path, DEBIAN + '[image]\nlabels = { "io.buildsys.owner" = "host:1" }\n')
    with pytest.raises(RecipeError) as info:
        parse_recipe(path)
    assert info.value.exit_code == EXIT_USAGE
    assert str(path) in str(info.value) and 'image.labels."io.buildsys.owner"' in str(info.value)
    ok = parse_recipe(write_recipe(tmp_path, DEBIAN + '[image]\nlabels = { "io.buildsys-fan.x" = "1" }\n'))
    assert ok.image.labels == (("io.buildsys-fan.x", "1"),)


def test_the_registry_of_parts_makes_its_schema_once_until_another_registers() -> None:
    from buildsys.model.sections import Sections

    made: list[tuple[type, ...]] = []

    def derive(kinds: tuple[type, ...]) -> int:
        made.append(kinds)
        return len(kinds)

    sections: Sections[type, int] = Sections("test part", "testing", derive)
    with pytest.raises(RuntimeError, match="no test part is registered: import buildsys.ecosystems before testing"):
        sections.derived()
    sections.register(int, str)
    assert sections.derived() == sections.derived() == 2 and made == [(int, str)]
    sections.register(str, bytes)
    assert sections.kinds() == (int, str, bytes) and sections.derived() == 3 and len(made) == 2
