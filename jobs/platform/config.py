"""Configuration: conf/base.yaml (every key and its default) < profile < environment < --set.

Types come from base.yaml: an override must have the type of the default it replaces (an int may stand for a
float); `{}` in base.yaml is an open map. Unknown keys and wrong types are errors naming the key and where the
value came from, and so are values outside the ranges and choices of their section's typed settings (settings.py),
built once here. Secrets are never config values: keys ending in `_env` name the environment variable that holds
them, and any other key that looks like a secret is refused.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from megascience.jobs.platform.settings import setting_problems, typed_sections

ENV_PREFIX = "MEGASCIENCE__"  # MEGASCIENCE__LAKE__ROOT=/data/lake sets lake.root
PROFILE_ENV = "MEGASCIENCE_PROFILE"
# Short environment variables for the settings users change most.
ENV_ALIASES = {"MEGASCIENCE_MODEL": "llm.default_model"}
DEFAULT_PROFILE = "local"
_SECRET_KEY = re.compile(r"^(.*_)?(api_?key|secret|token|password|credentials?)$", re.IGNORECASE)


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key and its source."""


@dataclass(frozen=True)
class Config:
    values: dict[str, Any]
    profile: str
    sources: dict[str, str] = field(default_factory=dict)  # dotted key -> where its value was set
    sections: dict[str, Any] = field(default_factory=dict)  # section -> its typed settings (settings.Settings.of)

    def __getitem__(self, section: str) -> Any:
        return self.values[section]

    def get(self, dotted_key: str) -> Any:
        node: Any = self.values
        for part in dotted_key.split("."):
            node = node[part]
        return node

    def flat(self) -> dict[str, Any]:
        """Dotted key -> value, for logging as run parameters (holds no secrets by construction)."""
        return dict(_flatten(self.values))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _flatten(value, dotted + ".")
        else:
            yield dotted, value


def _read_conf_text(name: str) -> str:
    return resources.files("megascience.conf").joinpath(name).read_text(encoding="utf-8")


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, not {type(data).__name__}")
    return data


def _profile_document(profile: str) -> tuple[dict[str, Any], str]:
    path = Path(profile)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return _parse_yaml(path.read_text(encoding="utf-8"), str(path)), str(path)
    source = f"conf/{profile}.yaml"
    try:
        text = _read_conf_text(f"{profile}.yaml")
    except FileNotFoundError:
        raise ConfigError(
            f"profile {profile!r} not found: give a name of a file in conf/ (local, cluster) or a path to a .yaml file"
        ) from None
    return _parse_yaml(text, source), source


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a mapping"}.get(
        type(value), type(value).__name__
    )


def _check_value(key: str, default: Any, value: Any, source: str) -> Any:
    """Return `value` if it may replace `default`, else raise naming key and source."""
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(default, bool) and isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
        value = float(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(
            f"{source}: {key} must be {_type_name(default)} (like the default {default!r}), got {value!r}"
        )
    if isinstance(default, list):
        element_type = default[0] if default else ""
        for i, item in enumerate(value):
            _check_value(f"{key}[{i}]", element_type, item, source)
    return value


def _open_maps(tree: Mapping[str, Any], prefix: str = "") -> set[str]:
    """Dotted keys whose base.yaml default is `{}`: a layer replaces such a map whole, whatever an earlier layer set."""
    found = set()
    for key, value in tree.items():
        if isinstance(value, dict):
            found |= _open_maps(value, f"{prefix}{key}.") if value else {f"{prefix}{key}"}
    return found


def _merge(
    base: dict[str, Any],
    override: Mapping[str, Any],
    source: str,
    sources: dict[str, str],
    open_maps: set[str],
    prefix: str = "",
):
    for key, value in override.items():
        dotted = f"{prefix}{key}"
        if _SECRET_KEY.search(str(key)) and not str(key).endswith("_env"):
            raise ConfigError(
                f"{source}: {dotted} looks like a secret; secrets are read from the environment only "
                f"(set {key}_env to the name of the environment variable that holds it)"
            )
        if key not in base:
            known = ", ".join(sorted(base)) or "(none)"
            raise ConfigError(f"{source}: unknown key {dotted!r} (known keys here: {known})")
        default = base[key]
        if isinstance(default, dict) and default and dotted not in open_maps:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {dotted} is a section; give a mapping, got {value!r}")
            _merge(default, value, source, sources, open_maps, dotted + ".")
        else:
            base[key] = _check_value(dotted, default, value, source)
            sources[dotted] = source


def _nest(dotted_key: str, value: Any) -> dict[str, Any]:
    node: dict[str, Any] = {}
    root = node
    parts = dotted_key.split(".")
    for part in parts[:-1]:
        node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    return root


def _scalar(text: str) -> Any:
    """A command-line or environment value typed as YAML would type it (3 -> int, true -> bool, [a,b] -> list)."""
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def parse_assignment(assignment: str, source: str) -> dict[str, Any]:
    key, sep, value = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{source}: expected key=value, got {assignment!r}")
    return _nest(key.strip(), _scalar(value))


def load_config(
    profile: str | None = None,
    overrides: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Resolve the configuration: base.yaml, then the profile, then MEGASCIENCE__* variables, then --set items."""
    environ = os.environ if environ is None else environ
    profile = profile or environ.get(PROFILE_ENV) or DEFAULT_PROFILE
    values = _parse_yaml(_read_conf_text("base.yaml"), "conf/base.yaml")
    sources: dict[str, str] = {}
    layers: list[tuple[dict[str, Any], str]] = [_profile_document(profile)]
    for name, dotted in ENV_ALIASES.items():
        if environ.get(name):
            layers.append((_nest(dotted, environ[name]), f"environment variable {name}"))
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX):
            dotted = name[len(ENV_PREFIX):].lower().replace("__", ".")
            layers.append((_nest(dotted, _scalar(environ[name])), f"environment variable {name}"))
    for item in overrides:
        source = f"--set {item.partition('=')[0].strip()}"  # never the value: it is echoed in error messages
        layers.append((parse_assignment(item, source), source))
    open_maps = _open_maps(values)
    for document, source in layers:
        _merge(values, copy.deepcopy(document), source, sources, open_maps)
    sections = typed_sections(values)
    problems = setting_problems(sections, sources)  # every section's ranges and choices, before any work
    if problems:
        raise ConfigError("\n".join(problems))
    return Config(values=values, profile=profile, sources=sources, sections=sections)
