"""The compose path as far as it can be checked without a Docker engine: docker-compose.yml against
the Compose specification's JSON schema (vendored in tests/compose_spec/ with its licence), the
settings a node container needs, the Dockerfile and its entrypoint, and how the namespace-host
runner reads compose files."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from dsm.errors import ConfigError
from dsm.hosts.compose import interpolate, load, parse, parse_duration
from dsm.workloads import WORKLOADS
from dsm.programs import CONSOLE_SCRIPTS, entrypoint, on_this_python

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_DIR = Path(__file__).with_name("compose_spec")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads((SCHEMA_DIR / "compose-spec.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


# --- the file against the specification -----------------------------------------------------------
def test_schema_is_vendored_with_its_licence():
    assert "Apache License" in (SCHEMA_DIR / "LICENSE").read_text()
    assert "170098b" in (SCHEMA_DIR / "README.md").read_text()


def test_compose_file_is_valid_against_the_compose_schema(compose, validator):
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(compose)]
    assert errors == []


def test_schema_rejects_what_compose_would_reject(compose, validator):
    # the validator is not vacuous: a misspelt key or a wrong type is an error
    bad = json.loads(json.dumps(compose))
    bad["services"]["node"]["cap_ad"] = ["SYS_PTRACE"]
    assert list(validator.iter_errors(bad))
    bad = json.loads(json.dumps(compose))
    bad["services"]["node"]["devices"] = "/dev/userfaultfd"
    assert list(validator.iter_errors(bad))


def test_interpolated_file_is_valid_and_consistent(validator):
    # what compose sees with no variables set: the defaults
    project = load(COMPOSE_FILE, {})
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    assert not list(validator.iter_errors(raw))
    node = project.services["node"]
    assert node.replicas == int(node.environment["DSM_NODES"]) == 4
    order = project.start_order()
    assert order[0] == "directory" and sorted(order[1:]) == ["manager", "node"]
    # one shard by default: the directory alone, no manager replica
    assert project.services["manager"].replicas == 0
    assert project.services["directory"].environment["DSM_SHARDS"] == "1"
    sharded = load(COMPOSE_FILE, {"DSM_SHARDS": "3", "DSM_MANAGERS": "2"})
    assert sharded.services["manager"].replicas == 2
    for name in ("directory", "manager"):
        assert sharded.services[name].environment["DSM_SHARDS"] == "3"


# --- the settings a cluster needs -----------------------------------------------------------------
def test_directory_service(compose):
    directory = compose["services"]["directory"]
    # shard 0 of DSM_SHARDS: the whole directory with one shard, else the coordinator
    assert directory["command"] == ["dsm", "directory", "--listen", "tcp://0.0.0.0:7400",
                                    "--shard", "0"]
    assert directory["environment"]["DSM_DOCTOR"] == "skip"  # it needs no userfaultfd
    assert directory["environment"]["DSM_SHARDS"] == "${DSM_SHARDS:-1}"
    test = " ".join(directory["healthcheck"]["test"])
    assert "7400" in test


def test_manager_service_adds_the_shards_of_a_distributed_manager(compose):
    manager = compose["services"]["manager"]
    argv = manager["command"]
    assert argv[:2] == ["dsm", "directory"]
    assert argv[argv.index("--shard") + 1] == "auto"  # replicas take any free shard
    assert argv[argv.index("--coordinator") + 1] == "tcp://directory:7400"
    assert manager["environment"]["DSM_SHARDS"] == compose["services"]["directory"][
        "environment"]["DSM_SHARDS"]
    assert manager["environment"]["DSM_DOCTOR"] == "skip"
    assert manager["depends_on"]["directory"]["condition"] == "service_healthy"
    assert manager["deploy"]["replicas"] == "${DSM_MANAGERS:-0}"
    # nodes need only the directory: it welcomes them once every shard has joined
    assert list(compose["services"]["node"]["depends_on"]) == ["directory"]


def test_node_service_can_use_userfaultfd(compose):
    node = compose["services"]["node"]
    assert "SYS_PTRACE" in node["cap_add"]  # Fork events, kernel-side faults
    # Docker's default seccomp profile refuses userfaultfd(2): the device, or a profile
    has_device = "/dev/userfaultfd:/dev/userfaultfd" in node.get("devices", [])
    has_profile = any(o.startswith("seccomp=") for o in node.get("security_opt", []))
    assert has_device or has_profile
    assert has_device


def test_node_service_finds_the_directory_and_its_workload(compose):
    node = compose["services"]["node"]
    env = node["environment"]
    assert env["DSM_DIRECTORY"] == "tcp://directory:7400"
    assert node["depends_on"]["directory"]["condition"] == "service_healthy"
    assert node["command"] == ["dsm-node"]
    workload = re.fullmatch(r"\$\{DSM_WORKLOAD:-(\w+)\}", env["DSM_WORKLOAD"]).group(1)
    assert workload in WORKLOADS and (ROOT / "dsm" / "workloads" / f"{workload}.py").exists()
    assert re.fullmatch(r"\$\{DSM_NODES:-\d+\}", env["DSM_NODES"])
    assert node["deploy"]["replicas"] == env["DSM_NODES"]
    # docker stop: SIGTERM, and time to hand the pages back
    assert parse_duration(node["stop_grace_period"], "") >= 10


def test_every_service_gets_the_keys_read_only_when_dsm_keys_names_them(tmp_path, validator):
    # DSM_KEYS set: mounted read-only in every service, which is told where (the runner gives a
    # namespace host the host directory itself)
    keyed = load(COMPOSE_FILE, {"DSM_KEYS": str(tmp_path)})
    for name, svc in keyed.services.items():
        (bind,) = svc.binds
        assert bind.read_only and bind.source == tmp_path, name
        # the entrypoint turns DSM_KEYS into the mount (no ${VAR:+...} in docker-compose 1.29)
        assert svc.environment["DSM_KEYS"] == str(tmp_path), name
        assert svc.environment["DSM_KEYS_MOUNT"] == bind.target, name
        assert svc.host_path(svc.environment["DSM_KEYS_MOUNT"]) == str(tmp_path)
    # unset: the cluster runs open (an empty DSM_KEYS is no keys), as everywhere else
    for name, svc in load(COMPOSE_FILE, {}).services.items():
        assert svc.environment["DSM_KEYS"] == "", name
    assert ":+" not in COMPOSE_FILE.read_text()  # docker-compose 1.29 cannot read it
    assert "dsm keygen keys" in COMPOSE_FILE.read_text()


def test_bind_volumes_are_read_for_namespace_hosts(tmp_path):
    raw = {"services": {"s": {"command": "true", "volumes": [
        "./k:/run/k:ro", "named:/data", "/abs:/mnt",
        {"type": "bind", "source": "/x", "target": "/y", "read_only": True},
        {"type": "volume", "source": "v", "target": "/v"}]}}}
    (svc,) = parse(raw, {}, path=tmp_path / "compose.yml").services.values()
    assert [(str(b.source), b.target, b.read_only) for b in svc.binds] == [
        (str(tmp_path / "k"), "/run/k", True), ("/abs", "/mnt", False), ("/x", "/y", True)]
    assert svc.host_path("/run/k/node.key") == str(tmp_path / "k" / "node.key")
    assert svc.host_path("/run/kk") == "/run/kk"  # not a path under /run/k
    with pytest.raises(ConfigError, match="absolute target"):
        parse({"services": {"s": {"command": "true", "volumes": ["./k:rel"]}}}, {})


def test_every_service_starts_with_the_doctor_entrypoint(compose):
    for name, svc in compose["services"].items():
        assert svc["entrypoint"] == ["dsm-entrypoint"], name
    dockerfile = (ROOT / "Dockerfile").read_text()
    # the base is a build argument (the official image by default, a Debian one in CI)
    assert re.search(r"^ARG BASE=python:3\.11-slim$", dockerfile, re.M)
    assert re.search(r"^FROM \$\{BASE\}$", dockerfile, re.M)
    # installed into a virtual environment, which comes first on PATH
    # with the metrics extra: the Kubernetes nodes serve --metrics (DSM_METRICS_PORT)
    assert re.search(r'^RUN python3 -m venv /opt/dsm && /opt/dsm/bin/pip install "/src\[metrics\]"',
                     dockerfile, re.M)
    assert "PATH=/opt/dsm/bin:$PATH" in dockerfile
    assert re.search(r'^ENTRYPOINT \["dsm-entrypoint"\]', dockerfile, re.M)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["dsm-entrypoint"] == "dsm.programs.entrypoint:main"
    assert scripts["dsm-node"] == "dsm.programs.node:main"
    # the image holds what the commands name: the package, and nothing of the checkout's nodes/
    for path in ("pyproject.toml", "README.md", "dsm"):
        assert re.search(rf"^COPY (.* )?{re.escape(path)}\b", dockerfile, re.M), path
    assert not re.search(r"^COPY .*\bnodes\b", dockerfile, re.M)


def test_console_scripts_run_as_modules_on_this_python():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {name: target.split(":")[0] for name, target in scripts.items()} == {
        name: (module if module != "dsm" else "dsm.cli") for name, module in CONSOLE_SCRIPTS.items()}
    assert on_this_python(["dsm-node", "--x"]) == [sys.executable, "-m", "dsm.programs.node", "--x"]
    assert on_this_python(["python3", "-c", "1"]) == [sys.executable, "-c", "1"]
    assert on_this_python(["true"]) == ["true"]


def test_compose_file_runs_under_docker_compose_1_29_too(compose):
    # Debian's docker-compose 1.29 rejects these two keys of Compose v2
    assert "name" not in compose
    for svc in compose["services"].values():
        assert "start_interval" not in svc.get("healthcheck", {})


def test_readme_explains_the_container_settings():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Running a cluster", 1)[1].split("\n## ", 1)[0]
    for needed in ("cap_add: [SYS_PTRACE]", "/dev/userfaultfd", "seccomp", "dsm doctor",
                   "docker compose up", "dsm demo", "dsm hosts up"):
        assert needed in section, needed


# --- the entrypoint -------------------------------------------------------------------------------
class Exec(Exception):
    pass


@pytest.fixture
def no_exec(monkeypatch):
    def fake_execvp(path, argv):
        raise Exec(argv)

    monkeypatch.setattr(entrypoint.os, "execvp", fake_execvp)


def _doctor(monkeypatch, returncode: int, text: str):
    ran = []

    def fake_run(cmd, **kw):
        ran.append(cmd)
        return subprocess.CompletedProcess(cmd, returncode, stdout=text)

    monkeypatch.setattr(entrypoint.subprocess, "run", fake_run)
    return ran


def test_entrypoint_refuses_a_host_the_doctor_fails(monkeypatch, no_exec, capsys):
    monkeypatch.delenv("DSM_DOCTOR", raising=False)
    ran = _doctor(monkeypatch, 1, "uffd open  FAIL  EPERM\nverdict: FAIL - this host cannot\n")
    assert entrypoint.main(["dsm-node"]) == 1
    assert ran and ran[0][-1] == "doctor"
    out = capsys.readouterr()
    assert "verdict: FAIL" in out.out and "cannot run a node" in out.err


def test_entrypoint_runs_the_command_after_the_doctor(monkeypatch, no_exec, capsys):
    monkeypatch.delenv("DSM_DOCTOR", raising=False)
    _doctor(monkeypatch, 0, "check result\n...\nverdict: OK - this host can run a dsm node\n")
    with pytest.raises(Exec) as exc:
        entrypoint.main(["dsm-node"])
    # a console script of the package runs on the interpreter the entrypoint runs on (the
    # image's, or this install's)
    assert exc.value.args[0] == [sys.executable, "-m", "dsm.programs.node"]
    assert capsys.readouterr().out.strip() == "verdict: OK - this host can run a dsm node"


def test_entrypoint_points_dsm_keys_at_the_mount(monkeypatch, no_exec):
    _doctor(monkeypatch, 0, "verdict: OK\n")
    monkeypatch.setenv("DSM_KEYS_MOUNT", "/run/dsm/keys")
    monkeypatch.setenv("DSM_KEYS", "./keys")  # the host's path, as compose passes it
    with pytest.raises(Exec):
        entrypoint.main(["true"])
    assert entrypoint.os.environ["DSM_KEYS"] == "/run/dsm/keys"
    monkeypatch.setenv("DSM_KEYS", "")  # open: stays open
    with pytest.raises(Exec):
        entrypoint.main(["true"])
    assert entrypoint.os.environ["DSM_KEYS"] == ""


def test_entrypoint_modes(monkeypatch, no_exec):
    ran = _doctor(monkeypatch, 1, "verdict: FAIL\n")
    monkeypatch.setenv("DSM_DOCTOR", "warn")
    with pytest.raises(Exec):
        entrypoint.main(["true"])
    monkeypatch.setenv("DSM_DOCTOR", "skip")
    with pytest.raises(Exec):
        entrypoint.main(["true"])
    assert len(ran) == 1  # skip did not run it
    monkeypatch.setenv("DSM_DOCTOR", "maybe")
    assert entrypoint.main(["true"]) == 2


def test_entrypoint_execs_for_real():
    done = subprocess.run(
        [sys.executable, "-m", "dsm.programs.entrypoint", sys.executable, "-c", "print('ran')"],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin",
                                                         "DSM_DOCTOR": "warn"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "ran"
    assert "verdict:" in done.stdout


# --- how the runner reads compose files -----------------------------------------------------------
@pytest.mark.parametrize("text, env, want", [
    ("plain", {}, "plain"),
    ("$A-${A}", {"A": "x"}, "x-x"),
    ("${A:-d}", {}, "d"),
    ("${A:-d}", {"A": ""}, "d"),
    ("${A-d}", {"A": ""}, ""),
    ("${A:+set}", {"A": "1"}, "set"),
    ("${A:+set}", {}, ""),
    ("$$A costs $$5", {"A": "x"}, "$A costs $5"),
    ("${MISSING}", {}, ""),
])
def test_interpolation(text, env, want):
    assert interpolate(text, env) == want


def test_interpolation_errors():
    with pytest.raises(ConfigError, match="NEEDED.*say why"):
        interpolate("${NEEDED:?say why}", {})
    with pytest.raises(ConfigError, match="unterminated"):
        interpolate("${OOPS", {})


@pytest.mark.parametrize("text, seconds", [("1m30s", 90), ("200ms", 0.2), ("10s", 10), (3, 3),
                                           ("1h", 3600), ("1.5s", 1.5)])
def test_durations(text, seconds):
    assert parse_duration(text, "x") == pytest.approx(seconds)


def test_duration_errors():
    with pytest.raises(ConfigError, match="not a duration"):
        parse_duration("10 seconds", "healthcheck.interval")


def test_parse_services():
    raw = {"services": {
        "db": {"entrypoint": "run-db --fast", "healthcheck": {"test": "true", "interval": "1s"}},
        "web": {"command": ["serve", 8080], "environment": ["A=1", "B", "C"],
                "depends_on": ["db"], "scale": "${N:-2}"},
        "job": {"command": "work", "depends_on": {"web": {"condition": "service_started"},
                                                   "db": {"condition": "service_healthy"}},
                "deploy": {"replicas": 3}, "stop_signal": "SIGINT",
                "stop_grace_period": "1m"},
    }}
    project = parse(raw, {"B": "from-env"}, scale={"job": 5})
    db, web, job = (project.services[n] for n in ("db", "web", "job"))
    assert db.argv == ["run-db", "--fast"]
    assert db.healthcheck.test == ["sh", "-c", "true"] and db.healthcheck.interval_s == 1
    assert web.argv == ["serve", "8080"] and web.replicas == 2
    assert web.environment == {"A": "1", "B": "from-env"}  # C: not set anywhere, left out
    assert job.replicas == 5 and job.stop_signal == signal.SIGINT and job.stop_grace_s == 60
    assert job.depends_on == {"web": "service_started", "db": "service_healthy"}
    assert project.start_order() == ["db", "web", "job"]


@pytest.mark.parametrize("raw, message", [
    ({"services": {"a": {"command": "x", "depends_on": ["b"]},
                   "b": {"command": "y", "depends_on": ["a"]}}}, "cycle"),
    ({"services": {"a": {"command": "x", "depends_on": ["nope"]}}}, "not a service"),
    ({"services": {"a": {"image": "busybox"}}}, "no command"),
    ({"services": {"a": {"command": "x", "deploy": {"replicas": "many"}}}}, "whole number"),
    ({"services": {"a": {"command": "x", "depends_on": {"b": {"condition": "ready"}}},
                   "b": {"command": "y"}}}, "condition"),
    ({"version": "3"}, "services"),
])
def test_parse_errors(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse(raw, {})


def test_scale_of_an_unknown_service():
    with pytest.raises(ConfigError, match="no service 'nodes'"):
        load(COMPOSE_FILE, {}, scale={"nodes": 3})
