"""What the pipeline refuses in a config before any job (fisherlab.config_guard): NaN and
infinity at every numeric key of the schema (the keys enumerated from the schema itself,
issue 21 point 4), YTE config files (point 8), and report notes made plain text (point 3)."""

from __future__ import annotations

import copy
import math
from html import unescape
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from docutils.core import publish_parts

from fisherlab.config_guard import (
    ConfigError,
    check_finite,
    non_finite,
    plain_text_notes,
    plain_text_rst,
    refuse_yte,
    uses_yte,
    validate_config,
)

from helpers import REPO, SCHEMA, SCHEMA_PATH

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
PLACEHOLDER = "x"  # the name of a made-up entry of a name -> value map (additionalProperties)


# --- the schema, walked -----------------------------------------------------------------


def resolve(node: dict) -> dict:
    """``node`` with its ``$ref`` (into ``$defs``) merged in, recursively."""
    while "$ref" in node:
        target = SCHEMA
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def types(node: dict) -> list[str]:
    t = node.get("type", [])
    return [t] if isinstance(t, str) else list(t)


def branches(node: dict) -> list[dict]:
    """The alternatives a value at ``node`` may take: each oneOf/anyOf branch (merged with
    the node's own keywords), the if/then object form, or the node itself."""
    node = resolve(node)
    alts = node.get("oneOf", []) + node.get("anyOf", [])
    if alts:
        base = {k: v for k, v in node.items() if k not in ("oneOf", "anyOf", "default", "description")}
        return [b for alt in alts for b in branches({**base, **resolve(alt)})]
    if "then" in node and "object" in types(node):
        return [{**resolve(node["then"]), "type": "object"}, *([{"type": "null"}] if "null" in types(node) else [])]
    return [node]


def numeric_positions(node: dict, at: tuple = ()) -> list[tuple]:
    """Every position of the schema where a number or an integer is expected: a tuple of
    steps (key or list index, the schema of the value there), one per oneOf branch."""
    found = []
    for b in branches(node):
        t = types(b)
        if "number" in t or "integer" in t:
            found.append(at)
        if "object" in t or "properties" in b:
            for key, sub in b.get("properties", {}).items():
                found += numeric_positions(sub, (*at, (key, sub)))
            if isinstance(b.get("additionalProperties"), dict):
                sub = b["additionalProperties"]
                found += numeric_positions(sub, (*at, (PLACEHOLDER, sub)))
        if "array" in t and "items" in b:
            found += numeric_positions(b["items"], (*at, (0, b["items"])))
    return found


def example(node: dict):
    """A minimal value valid at ``node``: its default, else the first enum value, else a
    value of its first non-null type within its bounds (required keys filled in)."""
    b = next((b for b in branches(node) if types(b) != ["null"]), branches(node)[0])
    if b.get("default") is not None:
        return copy.deepcopy(b["default"])
    if "enum" in b:
        return b["enum"][0]
    t = next((t for t in types(b) if t != "null"), "object" if "properties" in b else None)
    if t in ("number", "integer"):
        lo = b.get("minimum", b.get("exclusiveMinimum"))
        hi = b.get("maximum", b.get("exclusiveMaximum"))
        if lo is not None and hi is not None:
            value = (lo + hi) / 2
        else:
            value = lo + 1 if lo is not None else (hi - 1 if hi is not None else 1)
        return int(math.ceil(value)) if t == "integer" else float(value)
    if t == "object":
        out = {k: example(b["properties"][k]) for k in b.get("required", [])}
        if b.get("minProperties") and not out and isinstance(b.get("additionalProperties"), dict):
            out[PLACEHOLDER] = example(b["additionalProperties"])
        return out
    if t == "array":
        return [example(b["items"])] * b.get("minItems", 0)
    if t == "string":
        return "a"
    if t == "boolean":
        return False
    raise AssertionError(f"no example for {b}")


def _set(node, key, value) -> None:
    if isinstance(node, list) and key == len(node):
        node.append(value)
    else:
        node[key] = value


def place(config: dict, position: tuple, value) -> str:
    """Put ``value`` at ``position`` of ``config``, creating the containers on the way (a
    minimal valid value of their schema's object or array form); returns the key path as
    the checks name it (``settings.x.lr_grid[0]``)."""
    node, path = config, ""
    for i, (key, sub) in enumerate(position):
        path += f"[{key}]" if isinstance(key, int) else (f".{key}" if path else key)
        if i == len(position) - 1:
            _set(node, key, value)
            break
        want = list if isinstance(position[i + 1][0], int) else dict
        if isinstance(node, dict):
            child = node.get(key)
        else:
            child = node[key] if key < len(node) else None
        if not isinstance(child, want):
            kind = "array" if want is list else "object"
            form = next(b for b in branches(sub) if kind in types(b) or (kind == "object" and "properties" in b))
            child = example(form)
            _set(node, key, child)
        node = child
    return path


def demo_config() -> dict:
    """config.yaml with configs/demo.yaml merged on top, as Snakemake's --configfile does."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())

    def update(a, b):
        for k, v in b.items():
            if isinstance(v, dict) and isinstance(a.get(k), dict):
                update(a[k], v)
            else:
                a[k] = v

    update(cfg, yaml.safe_load((REPO / "configs/demo.yaml").read_text()))
    return cfg




def test_the_schema_walk_finds_every_kind_of_numeric_key():
    """The enumeration is the schema's own: plain keys, $ref'd definitions, arrays of
    numbers, name -> value maps (additionalProperties), each oneOf branch, if/then blocks."""
    names = set(NAMES)
    for expected in [
        "threads",
        "seeds[0]",
        "settings.x.weight_decay",
        "settings.x.momentum",
        "settings.x.epsilon",
        "settings.x.small_lr_factor",
        "settings.x.lr_grid[0]",
        "settings.x.lr_star",
        "settings.x.regularizers.fp.alpha",
        "settings.x.regularizers.fp.v",
        "settings.x.resources.minutes_per_epoch",
        "noisy.fractions[0]",
        "noisy.settings.x.regularizers.fp[0]",
        "noisy.figures.noise",
        "sweeps.settings.x.lr",
        "sweeps.settings.x.lr[0]",
        "sweeps.settings.x.batch_size[0]",
        "sam.rho",
        "sam.rho_grid[0]",
        "interventions.fig14.panels.x.sets.x[0]",
        "interventions.fig16.alphas.low",
        "interventions.fig21.panels.x[0]",
        "data.digits.n_test",
        "hessian.num_probes",
    ]:
        assert expected in names, expected
    assert len(names) > 60


def path_of(position: tuple) -> str:
    path = ""
    for key, _ in position:
        path += f"[{key}]" if isinstance(key, int) else (f".{key}" if path else key)
    return path


POSITIONS = numeric_positions(SCHEMA)
NAMES = [path_of(p) for p in POSITIONS]


def finite_example(config: dict, position: tuple):
    """A finite value valid at ``position`` (its number branch), distinct from its
    neighbours when it is an element of a list (uniqueItems)."""
    number = next(b for b in branches(position[-1][1]) if {"number", "integer"} & set(types(b)))
    value = example(number)
    parent = config
    for key, _ in position[:-1]:
        parent = parent[key]
    if isinstance(parent, list):
        while value in parent[: position[-1][0]] + parent[position[-1][0] + 1:]:
            value += 1
    return value


def _overlaps(a: str, b: str) -> bool:
    return a == b or any(a.startswith(b + sep) or b.startswith(a + sep) for sep in ".[")


@pytest.fixture(scope="module")
def finite_configs() -> dict[str, dict]:
    """Key path -> a config (the demo's, resolved as --configfile does) that holds a finite
    value at that key and validates. Few configs hold all the keys (a key is moved to the
    next config only where it overlaps one already placed: lr and lr[0]), so that the
    schema validation, the slow part, runs a few times, not once per key."""
    out, pending = {}, list(POSITIONS)
    while pending:
        cfg, placed, rest = demo_config(), [], []
        for position in pending:
            path = path_of(position)
            if any(_overlaps(path, p) for p in placed):
                rest.append(position)
                continue
            place(cfg, position, None)
            place(cfg, position, finite_example(cfg, position))
            placed.append(path)
        validate_config(copy.deepcopy(cfg), SCHEMA_PATH)  # otherwise valid
        out.update(dict.fromkeys(placed, cfg))
        pending = rest
    return out


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("position", POSITIONS, ids=NAMES)
def test_every_numeric_key_refuses_nan_and_infinity(position, bad, finite_configs):
    """Generated from the schema: a config that validates with a finite value at the key
    is a ConfigError naming the key once the value there is NaN or +-inf."""
    path = path_of(position)
    cfg = copy.deepcopy(finite_configs[path])
    place(cfg, position, bad)
    with pytest.raises(ConfigError, match=rf"^{re.escape(path)}: -?(nan|inf) is not a finite number$"):
        validate_config(cfg, SCHEMA_PATH)


def test_non_finite_names_every_bad_value_anywhere():
    cfg = {"a": {"b": [1.0, math.nan, {"c": math.inf}]}, "model_kwargs": {"p": -math.inf}, "ok": 1.5, "s": "nan"}
    assert [p for p, _ in non_finite(cfg)] == ["a.b[1]", "a.b[2].c", "model_kwargs.p"]
    with pytest.raises(ConfigError, match=r"a\.b\[1\]: nan is not a finite number; a\.b\[2\]\.c: inf"):
        check_finite(cfg)
    check_finite({"a": [1, 2.5, None, True], "b": "inf"})


# --- YTE -------------------------------------------------------------------------------


def test_uses_yte_reads_without_evaluating(tmp_path):
    marker = tmp_path / "marker"
    yte = tmp_path / "yte.yaml"
    yte.write_text(f'__use_yte__: true\nseeds:\n  - ?open("{marker}", "w").write("x") and 0\n')
    plain = tmp_path / "plain.yaml"
    plain.write_text("seeds: [0]\nnote: __use_yte__ in a value is just text\n")
    as_json = tmp_path / "c.json"
    as_json.write_text('{"__use_yte__": true, "seeds": [0]}')
    assert uses_yte(yte) and uses_yte(as_json) and not uses_yte(plain)
    assert not marker.exists()
    refuse_yte([plain, tmp_path / "missing.yaml"])
    with pytest.raises(ConfigError, match=r"yte\.yaml hold __use_yte__.*refuses YTE"):
        refuse_yte([plain, yte])


# --- report notes ----------------------------------------------------------------------

PAYLOAD_INCLUDE = ".. include:: {path}\n"
PAYLOAD_RAW = ".. raw:: html\n\n   <img src=x onerror=alert(1)>\n"


def render_caption(note: str) -> str:
    """A caption rendered as Snakemake's report does (snakemake/report/__init__.py,
    FileRecord.render): the .rst template through jinja2, then docutils' HTML body."""
    from types import SimpleNamespace

    from jinja2 import Environment

    template = (REPO / "workflow/report/table1.rst").read_text()
    config = {"report_notes": plain_text_notes({"table1": note})}
    smk = SimpleNamespace(config=config)  # the template reads snakemake.config only
    rst = Environment(trim_blocks=True, lstrip_blocks=True).from_string(template).render(snakemake=smk)
    return publish_parts(rst, writer="html")["body"]


def test_report_notes_render_as_plain_text(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET-1234\n")
    html = render_caption(PAYLOAD_INCLUDE.format(path=secret) + "\n" + PAYLOAD_RAW)
    assert "TOPSECRET" not in html
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert f".. include:: {secret}" in html
    # without the escaping, both payloads would go through (the check can fail):
    raw = publish_parts(PAYLOAD_INCLUDE.format(path=secret) + "\n" + PAYLOAD_RAW, writer="html")["body"]
    assert "TOPSECRET" in raw and "<img src=x onerror" in raw


@pytest.mark.parametrize("note", [
    "*emph* **strong** ``code`` :math:`x` |sub| target_ `link <http://e.org>`_ [1]_ a\\b",
    "Title\n=====\n\n- bullet\n1. enumerated\n\n    indented literal::\n\n  >>> 1 + 1\n",
    "Demo (digits, 40 epochs): eta*'s Tr(F) is ~3x; 97.79% vs 96.98% <b>not</b> & so on",
])  # fmt: skip
def test_plain_text_rst_shows_its_text(note):
    html = publish_parts(plain_text_rst(note), writer="html")["body"]
    text = unescape(re.sub(r"<[^>]+>", "", html))
    assert " ".join(text.split()) == " ".join(note.split())
    assert "<b>" not in html and "<em>" not in html and "<a " not in html and "system-message" not in html


def test_plain_text_rst_refuses_a_non_string():
    with pytest.raises(TypeError, match="report note must be a string, got int"):
        plain_text_rst(3)


# --- the pipeline (spawns Snakemake) ---------------------------------------------------


def _snakemake(tmp_path, *overlays):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([SNAKEMAKE, "-n", "--cores", "1", "--configfile", "configs/demo.yaml", *overlays],
                          cwd=REPO, capture_output=True, text=True, env=env)  # fmt: skip


@pytest.mark.slow  # spawns Snakemake
def test_snakemake_dry_run_refuses_a_nan_weight_decay(tmp_path):
    overlay = tmp_path / "nan.yaml"
    overlay.write_text("settings:\n  demo_digits: {weight_decay: .nan}\n")
    proc = _snakemake(tmp_path, str(overlay))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Error validating config file" in out
    assert "settings.demo_digits.weight_decay: nan is not a finite number" in out


@pytest.mark.slow  # spawns Snakemake
def test_snakemake_refuses_a_yte_overlay(tmp_path):
    """The pipeline stops with a clear message. Snakemake's command line evaluates an
    overlay's YTE expressions before the Snakefile runs, so the marker IS written: the
    check can refuse the run, not undo what the expressions did (README, Security)."""
    marker = tmp_path / "marker"
    overlay = tmp_path / "yte.yaml"
    overlay.write_text(f'__use_yte__: true\nseeds:\n  - ?open("{marker}", "w").write("x") and 0\n')
    proc = _snakemake(tmp_path, str(overlay))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "hold __use_yte__" in out and "refuses YTE configs" in out
    assert "Building DAG" not in out and "Job stats" not in out
    assert marker.exists()  # documents Snakemake's behaviour: the expressions ran before any check



@pytest.mark.slow  # spawns Snakemake
def test_a_yte_config_yaml_is_refused_before_it_is_evaluated(tmp_path):
    """The checkout's own config.yaml is checked before `configfile:` loads it: refused, and
    its expression never runs (unlike an overlay's, which Snakemake's command line runs)."""
    from test_pipeline import copy_workflow

    copy_workflow(tmp_path)
    marker = tmp_path / "marker"
    text = (tmp_path / "config.yaml").read_text()
    (tmp_path / "config.yaml").write_text(
        f'__use_yte__: true\nthreads: ?open("{marker}", "w").write("x") and 1\n'
        + "\n".join(line for line in text.splitlines() if not line.startswith("threads:")) + "\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([SNAKEMAKE, "-n", "--cores", "1"], cwd=tmp_path, capture_output=True, text=True, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "config.yaml hold __use_yte__" in out
    assert not marker.exists()
