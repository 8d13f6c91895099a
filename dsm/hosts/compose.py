"""Reading a ``docker-compose.yml`` into what the namespace-host runner needs, and nothing else.

It follows the Compose specification for the keys that decide what runs and in which order:
``command`` and ``entrypoint`` (a list, or a string split like a shell would), ``environment``
(a map or a list of ``KEY=VALUE``; a bare ``KEY`` takes the value from the caller's environment),
``depends_on`` (a list, or a map with ``condition: service_started | service_healthy |
service_completed_successfully``), the replica count (``scale``, else ``deploy.replicas``, else 1;
``--scale`` overrides it), ``healthcheck`` (``CMD`` / ``CMD-SHELL`` / ``NONE``, ``interval``,
``timeout``, ``retries``, ``start_period``, ``start_interval``, ``disable``) and
``stop_grace_period`` / ``stop_signal``. Values are interpolated first, as compose does, from the
caller's environment: ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
``${VAR:?error}``, ``${VAR?error}``, and ``$$`` for a literal ``$``.

Bind-mount ``volumes`` (``SOURCE:TARGET[:ro]`` with a path as SOURCE, or the long syntax with
``type: bind``) are read too: a namespace host shares this machine's file system, so the runner
gives the command the SOURCE directory itself, by rewriting every environment value and argument
that names TARGET (or a path under it) to the same path under SOURCE (relative SOURCEs are taken
from the compose file's directory, as compose does). Named volumes are ignored.

Other keys about the container itself (``build``, ``image``, ``cap_add``, ``devices``, ``init``,
``security_opt``, ``ports``, ...) are accepted and ignored: on a namespace host the command runs
as the caller (root) on this machine's kernel.
"""

from __future__ import annotations

import re
import shlex
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from dsm.errors import ConfigError
from dsm.extras import require

#: compose's defaults (seconds)
DEFAULT_HEALTH_INTERVAL_S = 30.0
DEFAULT_HEALTH_TIMEOUT_S = 30.0
DEFAULT_HEALTH_RETRIES = 3
DEFAULT_STOP_GRACE_S = 10.0

CONDITIONS = ("service_started", "service_healthy", "service_completed_successfully")

_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\})"
)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class Healthcheck:
    #: the command run in the service's host (``CMD-SHELL`` becomes ``sh -c``)
    test: list[str]
    interval_s: float = DEFAULT_HEALTH_INTERVAL_S
    timeout_s: float = DEFAULT_HEALTH_TIMEOUT_S
    retries: int = DEFAULT_HEALTH_RETRIES
    start_period_s: float = 0.0
    start_interval_s: float | None = None


@dataclass(frozen=True)
class Bind:
    """A bind-mount volume: the host directory ``source`` seen at ``target`` in the service."""

    source: Path
    target: str
    read_only: bool = False

    def host_path(self, value: str) -> str:
        """``value`` with the target replaced by the source, if it names the target or a path
        under it; else ``value`` unchanged."""
        if value == self.target:
            return str(self.source)
        if value.startswith(self.target.rstrip("/") + "/"):
            return str(self.source / value[len(self.target.rstrip("/")) + 1:])
        return value


@dataclass(frozen=True)
class Service:
    name: str
    #: entrypoint + command, as the container would run it
    argv: list[str]
    environment: dict[str, str]
    #: service name -> condition
    depends_on: dict[str, str] = field(default_factory=dict)
    replicas: int = 1
    healthcheck: Healthcheck | None = None
    stop_grace_s: float = DEFAULT_STOP_GRACE_S
    stop_signal: int = signal.SIGTERM
    binds: tuple[Bind, ...] = ()

    def host_path(self, value: str) -> str:
        """``value`` as this machine sees it: a path in a bind volume's target becomes the
        path in its source."""
        for bind in self.binds:
            changed = bind.host_path(value)
            if changed != value:
                return changed
        return value


@dataclass(frozen=True)
class Project:
    path: Path
    services: dict[str, Service]

    def start_order(self) -> list[str]:
        """Service names so that every service comes after those it depends on."""
        order: list[str] = []
        state: dict[str, str] = {}

        def visit(name: str, chain: list[str]) -> None:
            if state.get(name) == "done":
                return
            if state.get(name) == "visiting":
                raise ConfigError(f"depends_on makes a cycle: {' -> '.join(chain + [name])}")
            state[name] = "visiting"
            for dep in self.services[name].depends_on:
                visit(dep, chain + [name])
            state[name] = "done"
            order.append(name)

        for name in self.services:
            visit(name, [])
        return order


# --- interpolation --------------------------------------------------------------------------------
def interpolate(text: str, env: Mapping[str, str], where: str = "value") -> str:
    """``text`` with its variables replaced from ``env``, as compose does."""

    def replace(m: re.Match) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("plain") or m.group("braced")
        op, arg = m.group("op"), m.group("arg") or ""
        value = env.get(name)
        unset_or_empty = value is None or (op is not None and op.startswith(":") and value == "")
        if op in ("-", ":-"):
            return arg if unset_or_empty else value
        if op in ("?", ":?"):
            if unset_or_empty:
                raise ConfigError(f"{where}: ${{{name}}} is required: {arg or 'not set'}")
            return value
        if op in ("+", ":+"):
            return "" if unset_or_empty else arg
        return value if value is not None else ""

    if "$" not in text:
        return text
    # an unterminated ${ is an error in compose too
    if re.search(r"(?<!\$)\$\{[^}]*$", text):
        raise ConfigError(f"{where}: unterminated ${{ in {text!r}")
    return _VAR.sub(replace, text)


def _interpolate_tree(node: Any, env: Mapping[str, str], where: str) -> Any:
    if isinstance(node, str):
        return interpolate(node, env, where)
    if isinstance(node, list):
        return [_interpolate_tree(v, env, f"{where}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, dict):
        return {k: _interpolate_tree(v, env, f"{where}.{k}") for k, v in node.items()}
    return node


# --- values ---------------------------------------------------------------------------------------
def parse_duration(value: Any, where: str) -> float:
    """Compose durations: ``1m30s``, ``200ms``, ``10s``; a bare number is seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ConfigError(f"{where}: {value!r} is not a duration (e.g. 1m30s, 200ms)")
    return total


def _argv(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return [str(v) for v in value]
    raise ConfigError(f"{where} must be a string or a list of strings, got {value!r}")


def _environment(value: Any, env: Mapping[str, str], where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    if value is None:
        return out
    if isinstance(value, dict):
        for key, v in value.items():
            if v is None:  # `KEY:` with no value: from the caller's environment, if set
                if key in env:
                    out[key] = env[key]
            else:
                out[key] = str(v).lower() if isinstance(v, bool) else str(v)
        return out
    if isinstance(value, list):
        for item in value:
            key, sep, v = str(item).partition("=")
            if sep:
                out[key] = v
            elif key in env:
                out[key] = env[key]
        return out
    raise ConfigError(f"{where} must be a map or a list of KEY=VALUE, got {value!r}")


def _depends_on(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, list):
        return {str(name): "service_started" for name in value}
    if isinstance(value, dict):
        out = {}
        for name, spec in value.items():
            condition = (spec or {}).get("condition", "service_started")
            if condition not in CONDITIONS:
                raise ConfigError(f"{where}.{name}.condition {condition!r} is not one of "
                                  f"{', '.join(CONDITIONS)}")
            out[str(name)] = condition
        return out
    raise ConfigError(f"{where} must be a list or a map, got {value!r}")


def _count(value: Any, where: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a whole number, got {value!r}") from None
    if n < 0:
        raise ConfigError(f"{where} must be >= 0, got {n}")
    return n


def _healthcheck(value: Any, where: str) -> Healthcheck | None:
    if not value:
        return None
    if str(value.get("disable", "false")).lower() == "true":
        return None
    test = value.get("test")
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    if not isinstance(test, list) or not test:
        raise ConfigError(f"{where}.test must be a string or a non-empty list, got {test!r}")
    kind, rest = str(test[0]), [str(t) for t in test[1:]]
    if kind == "NONE":
        return None
    if kind == "CMD":
        argv = rest
    elif kind == "CMD-SHELL":
        argv = ["sh", "-c", " ".join(rest)]
    else:
        raise ConfigError(f"{where}.test must start with CMD, CMD-SHELL or NONE, got {kind!r}")
    interval = parse_duration(value.get("interval", DEFAULT_HEALTH_INTERVAL_S), f"{where}.interval")
    start_interval = value.get("start_interval")
    return Healthcheck(
        test=argv,
        interval_s=interval,
        timeout_s=parse_duration(value.get("timeout", DEFAULT_HEALTH_TIMEOUT_S), f"{where}.timeout"),
        retries=_count(value.get("retries", DEFAULT_HEALTH_RETRIES), f"{where}.retries"),
        start_period_s=parse_duration(value.get("start_period", 0), f"{where}.start_period"),
        start_interval_s=(None if start_interval is None
                          else parse_duration(start_interval, f"{where}.start_interval")),
    )


def _binds(value: Any, where: str, base: Path) -> tuple[Bind, ...]:
    """The bind mounts of a ``volumes`` list (named volumes and tmpfs are skipped)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{where} must be a list, got {value!r}")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            source, sep, rest = item.partition(":")
            if not sep:
                continue  # an anonymous volume
            target, _, mode = rest.partition(":")
            if not source.startswith(("/", ".", "~")):
                continue  # a named volume
            read_only = "ro" in mode.split(",")
        elif isinstance(item, dict):
            if item.get("type") != "bind":
                continue
            source, target = str(item.get("source", "")), str(item.get("target", ""))
            read_only = bool(item.get("read_only", False))
        else:
            raise ConfigError(f"{where}[{i}] must be a string or a map, got {item!r}")
        if not source or not target.startswith("/"):
            raise ConfigError(f"{where}[{i}]: a bind volume needs a source and an absolute "
                              f"target, got {item!r}")
        path = Path(source).expanduser()
        out.append(Bind(path if path.is_absolute() else (base / path).resolve(), target,
                        read_only))
    return tuple(out)


def _signal(value: Any, where: str) -> int:
    if value is None:
        return signal.SIGTERM
    name = str(value).upper()
    try:
        return int(signal.Signals[name if name.startswith("SIG") else "SIG" + name])
    except KeyError:
        raise ConfigError(f"{where}: unknown signal {value!r}") from None


# --- the file -------------------------------------------------------------------------------------
def load(path: str | Path, env: Mapping[str, str],
         scale: Mapping[str, int] | None = None) -> Project:
    """Read, interpolate and check the compose file; ``scale`` overrides replica counts."""
    path = Path(path)
    yaml = require("yaml", "reading a compose file")
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return parse(raw, env, scale, path)


def parse(raw: Any, env: Mapping[str, str], scale: Mapping[str, int] | None = None,
          path: Path = Path("docker-compose.yml")) -> Project:
    if not isinstance(raw, dict) or not isinstance(raw.get("services"), dict):
        raise ConfigError(f"{path}: a compose file needs a 'services' map")
    tree = _interpolate_tree(raw["services"], env, "services")
    services: dict[str, Service] = {}
    for name, spec in tree.items():
        where = f"services.{name}"
        spec = spec or {}
        if not isinstance(spec, dict):
            raise ConfigError(f"{where} must be a map")
        argv = _argv(spec.get("entrypoint"), f"{where}.entrypoint") + \
            _argv(spec.get("command"), f"{where}.command")
        if not argv:
            raise ConfigError(f"{where}: no command or entrypoint: nothing to run on a "
                              "namespace host (the image's own are not read)")
        if "scale" in spec:
            replicas = _count(spec["scale"], f"{where}.scale")
        else:
            replicas = _count((spec.get("deploy") or {}).get("replicas", 1),
                              f"{where}.deploy.replicas")
        services[name] = Service(
            name=name,
            argv=argv,
            environment=_environment(spec.get("environment"), env, f"{where}.environment"),
            depends_on=_depends_on(spec.get("depends_on"), f"{where}.depends_on"),
            replicas=replicas,
            healthcheck=_healthcheck(spec.get("healthcheck"), f"{where}.healthcheck"),
            stop_grace_s=parse_duration(spec.get("stop_grace_period", DEFAULT_STOP_GRACE_S),
                                        f"{where}.stop_grace_period"),
            stop_signal=_signal(spec.get("stop_signal"), f"{where}.stop_signal"),
            binds=_binds(spec.get("volumes"), f"{where}.volumes", path.resolve().parent),
        )
    for name, svc in services.items():
        for dep in svc.depends_on:
            if dep not in services:
                raise ConfigError(f"services.{name}.depends_on names {dep!r}, which is not a "
                                  f"service (services: {', '.join(services)})")
    for name, n in (scale or {}).items():
        if name not in services:
            raise ConfigError(f"--scale {name}={n}: no service {name!r} "
                              f"(services: {', '.join(services)})")
        old = services[name]
        services[name] = Service(**{**old.__dict__, "replicas": _count(n, f"--scale {name}")})
    project = Project(path, services)
    project.start_order()  # refuse cycles now
    return project
