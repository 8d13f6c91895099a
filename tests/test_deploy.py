"""The deployment files: the seccomp profile (Docker's default with exactly ``userfaultfd`` added),
its compose override, and the Kubernetes manifests of deploy/k8s/, each validated against the
Kubernetes schemas (``kubernetes-validate``, which ships them: no network) and checked for the
settings a dsm cluster needs."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from dsm.workloads import WORKLOADS

ROOT = Path(__file__).resolve().parents[1]
SECCOMP = ROOT / "deploy" / "seccomp"
K8S = ROOT / "deploy" / "k8s"
#: the Kubernetes release whose schemas the manifests must satisfy (strict: no unknown fields);
#: 1.28 is the first that sets the pod-index label the StatefulSet reads
K8S_VERSIONS = ("1.28.0", "1.33.0")
DOCKER_DEFAULT_SHA256 = "ce3585b856aa4a193671fd8280d0d0612a998bd3f10bdb2f8530dfa958c6197f"

pytestmark = pytest.mark.timeout(60)


def _load_make_profile():
    spec = importlib.util.spec_from_file_location("make_profile", SECCOMP / "make-profile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- seccomp ---------------------------------------------------------------------------------------
def test_docker_default_profile_is_the_vendored_original_with_its_licence():
    raw = (SECCOMP / "docker-default.json").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == DOCKER_DEFAULT_SHA256
    assert DOCKER_DEFAULT_SHA256 in (SECCOMP / "README.md").read_text()
    assert "Apache License" in (SECCOMP / "LICENSE").read_text()
    assert "Docker, Inc." in (SECCOMP / "NOTICE").read_text()
    default = json.loads(raw)
    assert default["defaultAction"] == "SCMP_ACT_ERRNO"  # a filter, not a free-for-all
    assert "userfaultfd" not in json.dumps(default)      # which is why a node needs the change


def _names_by_rule(profile: dict) -> list[tuple[str, list[str]]]:
    return [(json.dumps({k: v for k, v in rule.items() if k != "names"}, sort_keys=True),
             sorted(rule.get("names", []))) for rule in profile["syscalls"]]


def test_userfaultfd_profile_is_the_default_with_exactly_that_syscall_added():
    default = json.loads((SECCOMP / "docker-default.json").read_text())
    profile = json.loads((SECCOMP / "userfaultfd.json").read_text())
    # everything but the rules' name lists is identical
    assert {k: v for k, v in profile.items() if k != "syscalls"} == \
        {k: v for k, v in default.items() if k != "syscalls"}
    before, after = _names_by_rule(default), _names_by_rule(profile)
    assert [cond for cond, _ in before] == [cond for cond, _ in after]
    changed = [(b, a) for (_, b), (_, a) in zip(before, after) if b != a]
    assert len(changed) == 1
    (old, new), = changed
    assert sorted(set(new) - set(old)) == ["userfaultfd"] and set(old) <= set(new)
    # ... in the rule that allows unconditionally
    rule = next(r for r in profile["syscalls"] if "userfaultfd" in r["names"])
    assert rule["action"] == "SCMP_ACT_ALLOW"
    assert not rule.get("args") and not rule.get("includes") and not rule.get("excludes")


def test_profile_in_the_repository_is_what_make_profile_writes():
    make = _load_make_profile()
    default = json.loads((SECCOMP / "docker-default.json").read_text())
    assert make.render(make.with_userfaultfd(default)) == (SECCOMP / "userfaultfd.json").read_text()
    # the same layout as Docker's file: a text diff of one line
    old = (SECCOMP / "docker-default.json").read_text().splitlines()
    new = (SECCOMP / "userfaultfd.json").read_text().splitlines()
    assert len(new) == len(old) + 1
    assert [ln for ln in new if ln not in old] == ['\t\t\t\t"userfaultfd",']


class _ComposeLoader(yaml.SafeLoader):
    """YAML as Compose reads it: ``!reset`` (Compose >= 2.24) marks a value to drop."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: _RESET)
_RESET = object()


def _merge(base: dict, override: dict) -> dict:
    """Compose's merge of an override into a file, for the keys the override uses: mappings
    merge, ``!reset`` drops the key, sequences of options are replaced (as Compose does for
    ``security_opt`` given once)."""
    out = dict(base)
    for key, value in override.items():
        if value is _RESET:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def test_seccomp_override_drops_the_device_and_gives_the_profile():
    base = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    override = yaml.load((ROOT / "docker-compose.seccomp.yml").read_text(), _ComposeLoader)
    merged = _merge(base, override)
    node = merged["services"]["node"]
    assert "devices" not in node
    assert node["security_opt"] == ["seccomp=deploy/seccomp/userfaultfd.json"]
    assert (ROOT / node["security_opt"][0].split("=", 1)[1]).is_file()
    assert "SYS_PTRACE" in node["cap_add"]
    schema = json.loads((ROOT / "tests" / "compose_spec" / "compose-spec.json").read_text())
    errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(merged)]
    assert errors == []


def test_doctor_names_the_profile_and_the_override_that_exist():
    from dsm.doctor import SECCOMP_PROFILE
    from dsm.doctor.checks import SECCOMP_OVERRIDE

    assert (ROOT / SECCOMP_PROFILE).is_file() and (ROOT / SECCOMP_OVERRIDE).is_file()


# --- Kubernetes ------------------------------------------------------------------------------------
def _manifests() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _one(kind: str, name: str) -> dict:
    return next(d for _, d in _manifests() if d["kind"] == kind and d["metadata"]["name"] == name)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(version):
    docs = _manifests()
    assert {d["kind"] for _, d in docs} >= {"Deployment", "Service", "StatefulSet", "ConfigMap"}
    for name, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {exc.message} "
                        f"at {'/'.join(map(str, exc.path))}")


def test_validation_is_not_vacuous():
    bad = json.loads(json.dumps(_one("StatefulSet", "dsm-node")))
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilties"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)
    bad = json.loads(json.dumps(_one("Service", "dsm-directory")))
    bad["spec"]["ports"][0]["port"] = "seventy-four hundred"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)


def _selects(service: dict, pod_labels: dict) -> bool:
    return all(pod_labels.get(k) == v for k, v in service["spec"]["selector"].items())


def test_directory_is_a_deployment_behind_a_service_on_7400():
    deployment = _one("Deployment", "dsm-directory")
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["dsm-entrypoint"]
    assert container["args"][:4] == ["dsm", "directory", "--listen", "tcp://0.0.0.0:7400"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DSM_DOCTOR"] == "skip"
    service = _one("Service", "dsm-directory")
    assert _selects(service, pod["metadata"]["labels"])
    assert service["spec"]["ports"][0]["port"] == 7400
    assert container["readinessProbe"]["tcpSocket"]["port"] == "dsm"


def test_nodes_are_a_statefulset_behind_a_headless_service():
    sts = _one("StatefulSet", "dsm-node")
    service = _one("Service", sts["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert _selects(service, sts["spec"]["template"]["metadata"]["labels"])
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["dsm-entrypoint"] and container["args"] == ["dsm-node"]
    env = {e["name"]: e for e in container["env"]}
    assert env["DSM_DIRECTORY"]["value"] == "tcp://dsm-directory:7400"
    assert env["DSM_DOCTOR"]["value"] == "require"
    assert env["DSM_NODE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert "pod-index" in env["DSM_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    # SIGTERM is a clean leave: time to hand the pages back
    assert pod["terminationGracePeriodSeconds"] >= 10


def test_nodes_can_use_userfaultfd_and_say_why():
    sts = _one("StatefulSet", "dsm-node")
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "SYS_PTRACE" in container["securityContext"]["capabilities"]["add"]
    profile = pod["securityContext"]["seccompProfile"]
    assert profile == {"type": "Localhost", "localhostProfile": "dsm/userfaultfd.json"}
    assert not container["securityContext"].get("privileged")
    text = (K8S / "nodes.yaml").read_text()
    for why in ("CAP_SYS_PTRACE", "Fork events", "/dev/userfaultfd", "device cgroup",
                "deploy/seccomp/userfaultfd.json", "/var/lib/kubelet/seccomp/dsm/userfaultfd.json"):
        assert why in text, why


def test_workload_is_chosen_by_environment_as_in_compose():
    sts = _one("StatefulSet", "dsm-node")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    (source,) = container["envFrom"]
    config = _one("ConfigMap", source["configMapRef"]["name"])["data"]
    assert config["DSM_WORKLOAD"] in WORKLOADS
    assert int(config["DSM_NODES"]) == sts["spec"]["replicas"]
    assert "DSM_WORKLOAD_ARGS" in config


def test_keys_come_from_a_secret_each_side_getting_its_part():
    parts = {"dsm-directory": {"directory.key_secret", "node.key"},
             "dsm-node": {"node.key", "node.key_secret", "directory.key"}}
    for kind, name in (("Deployment", "dsm-directory"), ("StatefulSet", "dsm-node")):
        pod = _one(kind, name)["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        (volume,) = [v for v in pod["volumes"] if "secret" in v]
        assert volume["secret"]["secretName"] == "dsm-keys"
        assert {i["key"] for i in volume["secret"]["items"]} == parts[name]
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["readOnly"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["DSM_KEYS"] == mount["mountPath"]
    assert re.search(r"kubectl create secret generic dsm-keys --from-file=keys/",
                     (K8S / "directory.yaml").read_text())
