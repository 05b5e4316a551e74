"""Settings from a TOML file, one precedence order, and the reference generated from the options.

Every option of ``tether serve`` is a setting: a flag (``--data-dir``), an
environment variable (``TETHER_DATA_DIR``) and a key of the ``--config`` file
(``data_dir``). Click already resolves flag > environment > default; a value
from the file takes the place of the default only, so the order is
**flag > environment > file > default**.

``python scripts/update_docs.py`` regenerates the reference tables of
docs/operations.md (settings and metrics); a test fails when they drift.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from tether.core.config import MASK, mask_url

SECRETS = {"jwt_secret", "api_key"}  # printed as ****
URLS = {"database_url", "redis_url"}  # printed with their password (userinfo or query) as ****
NOT_SETTINGS = {"config", "reference"}  # options of `tether serve` that are not themselves settings

BEGIN, END = "<!-- generated: settings -->", "<!-- end: settings -->"
METRICS_BEGIN, METRICS_END = "<!-- generated: metrics -->", "<!-- end: metrics -->"


def settings_of(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option) and p.name not in NOT_SETTINGS and p.name]


def read(path: Path, command: click.Command) -> dict[str, Any]:
    """The file's settings, by option name; an unknown key or an unreadable file is refused."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise click.UsageError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise click.UsageError(f"config file {path} is not valid TOML: {exc}") from None
    names = {p.name for p in settings_of(command)}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in names:
            near = difflib.get_close_matches(name, sorted(names), 1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise click.UsageError(f"config file {path}: unknown setting '{key}'{hint}; `tether config --help` lists them")
        out[name] = value
    return out


def resolve(ctx: click.Context, path: Path | None) -> tuple[dict[str, Any], dict[str, str]]:
    """Every setting's value and where it came from (flag, env, file, default)."""
    assert ctx.command is not None
    from_file = read(path, ctx.command) if path is not None else {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for opt in settings_of(ctx.command):
        name = opt.name
        assert name is not None
        source = ctx.get_parameter_source(name)
        if source in (ParameterSource.COMMANDLINE, ParameterSource.PROMPT):
            values[name], sources[name] = ctx.params.get(name), "flag"
        elif source is ParameterSource.ENVIRONMENT:
            values[name], sources[name] = ctx.params.get(name), f"env {opt.envvar}"
        elif name in from_file:
            assert path is not None
            value = from_file[name]
            if _is_path(opt) and isinstance(value, str) and not Path(value).is_absolute():
                value = str(Path(path).resolve().parent / value)  # relative to the file, not to the cwd
            try:
                values[name] = opt.type_cast_value(ctx, value)
            except click.BadParameter as exc:
                raise click.UsageError(f"config file {path}: {name}: {exc.message}") from None
            sources[name] = f"file {path}"
        else:
            values[name], sources[name] = ctx.params.get(name), "default"
    return values, sources


def _is_path(opt: click.Option) -> bool:
    return isinstance(opt.type, click.Path)


def masked(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in SECRETS:
        return MASK
    if name in URLS:
        return mask_url(str(value))
    return value


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


def render(values: dict[str, Any], sources: dict[str, str]) -> str:
    """The effective configuration as a TOML file (usable as ``--config``), each line saying its source."""
    lines = ["# effective configuration (flag > environment > config file > default); secrets masked"]
    width = max(len(n) for n in values) + 3
    for name, value in values.items():
        shown = masked(name, value)
        line = f"# {name} = (unset)" if shown is None else f"{name} = {_toml(shown)}"
        lines.append(f"{line:<{width + 30}} # {sources[name]}")
    return "\n".join(lines)


# -- the generated reference ------------------------------------------------------------------

def _default(opt: click.Option) -> str:
    d = opt.default
    if d is None or type(d).__name__ == "Sentinel":  # click's UNSET: no default
        return "unset"
    if isinstance(d, float):
        return f"`{d:g}`"
    return f"`{d}`"


def _type(opt: click.Option) -> str:
    """The reference's type column, by the option's click type (ranges are integers or
    numbers with their bounds); a type it does not know is an error, not "text"."""
    t = opt.type
    if isinstance(t, click.Choice):
        return " \\| ".join(f"`{c}`" for c in t.choices)
    if isinstance(t, click.types.BoolParamType):
        return "boolean"
    if isinstance(t, click.types.IntParamType):  # IntRange too
        name = "integer"
    elif isinstance(t, click.types.FloatParamType):  # FloatRange too
        name = "number"
    elif isinstance(t, click.Path):
        return "path"
    elif isinstance(t, click.types.StringParamType):
        return "text"
    else:
        raise TypeError(f"--{opt.name}: no reference type for click type {t!r}; add it to configfile._type")
    low, high = getattr(t, "min", None), getattr(t, "max", None)
    if low is not None:
        name += f" {'>' if getattr(t, 'min_open', False) else '≥'} {low:g}"
    if high is not None:
        name += f"{',' if low is not None else ''} {'<' if getattr(t, 'max_open', False) else '≤'} {high:g}"
    return name


def reference(command: click.Command) -> str:
    rows = ["| setting (file key) | flag | environment | type | default | meaning |", "|---|---|---|---|---|---|"]
    for opt in settings_of(command):
        flag = max(opt.opts, key=len)
        meaning = " ".join((opt.help or "").split()).replace("|", "\\|")
        rows.append(f"| `{opt.name}` | `{flag}` | `{opt.envvar}` | {_type(opt)} | {_default(opt)} | {meaning} |")
    return "\n".join(rows)


def metrics_reference() -> str:
    from prometheus_client.metrics import MetricWrapperBase

    from tether.core.metrics import Metrics

    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for metric in vars(Metrics()).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        kind = metric._type  # the family's type and label names, known before any sample exists
        name = f"`{metric._name}_total`" if kind == "counter" else f"`{metric._name}`"
        if kind == "histogram":
            name += " (`_bucket`, `_sum`, `_count`)"
        rows.append(f"| {name} | {kind} | {', '.join(metric._labelnames)} | {metric._documentation} |")
    return "\n".join(rows)


def _splice(text: str, begin: str, end: str, body: str) -> str:
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def generated(doc: str, command: click.Command) -> str:
    """``doc`` with its generated tables replaced by the current ones."""
    doc = _splice(doc, BEGIN, END, reference(command))
    return _splice(doc, METRICS_BEGIN, METRICS_END, metrics_reference())
