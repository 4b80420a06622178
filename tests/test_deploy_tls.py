"""deploy/k8s-tls/: the Kubernetes manifests with TLS on, in their two probe variants.

Each overlay is rendered here as kustomize renders it (the base's resources, the `tls` component's
JSON patches, then the overlay's), validated against the Kubernetes schemas, and its commands
checked against the flags that read them; the exec probe's command is run against a TLS server.
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import threading
from pathlib import Path

import jsonpatch
import kubernetes_validate
import pytest
import yaml
from certificates import issue, make_ca
from conftest import running_server

from stn_serve.cli import build_parser
from stn_serve.client.healthcheck import build_parser as healthcheck_parser

ROOT = Path(__file__).resolve().parent.parent
OVERLAYS = ROOT / "deploy" / "k8s-tls"
VARIANTS = ("exec-probes", "health-port")
KUBERNETES_VERSION = "1.37"
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
CUSTOM_RESOURCE_API = "monitoring.coreos.com/v1"
# The kustomization fields these overlays use; anything else would need a real kustomize.
KNOWN_FIELDS = {"apiVersion", "kind", "resources", "components", "patches"}


def _load(folder: Path) -> dict:
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert set(kustomization) <= KNOWN_FIELDS, set(kustomization) - KNOWN_FIELDS
    return kustomization


def _patch(documents: list[dict], folder: Path, kustomization: dict) -> list[dict]:
    for entry in kustomization.get("patches", []):
        target = entry["target"]
        operations = yaml.safe_load((folder / entry["path"]).read_text())
        matched = [
            d
            for d in documents
            if (d["kind"], d["metadata"]["name"]) == (target["kind"], target["name"])
            and d["apiVersion"] == f"{target['group']}/{target['version']}"
        ]
        assert len(matched) == 1, f"{entry['path']}: the target must match one resource"
        documents[documents.index(matched[0])] = jsonpatch.apply_patch(matched[0], operations)
    return documents


def render(folder: Path) -> list[dict]:
    """The documents `kubectl kustomize folder` prints, for the fields in KNOWN_FIELDS."""
    kustomization = _load(folder)
    documents = []
    for resource in kustomization.get("resources", []):
        path = (folder / resource).resolve()
        if path.is_dir():
            documents += render(path)
        else:
            documents += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for component in kustomization.get("components", []):
        component_folder = (folder / component).resolve()
        assert _load(component_folder)["kind"] == "Component"
        documents = _patch(documents, component_folder, _load(component_folder))
    return _patch(documents, folder, kustomization)


def deployment(documents: list[dict]) -> dict:
    (found,) = [d for d in documents if d["kind"] == "Deployment"]
    return found


def server_container(documents: list[dict]) -> dict:
    return deployment(documents)["spec"]["template"]["spec"]["containers"][0]


@pytest.fixture(scope="module")
def base() -> list[dict]:
    return render(ROOT / "deploy" / "k8s")


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request) -> tuple[str, list[dict]]:
    return request.param, render(OVERLAYS / request.param)


def tls_mount(documents: list[dict]) -> tuple[str, dict]:
    """(mount path, volume) of the certificate Secret."""
    pod = deployment(documents)["spec"]["template"]["spec"]
    mount = next(m for m in server_container(documents)["volumeMounts"] if m["name"] == "tls")
    volume = next(v for v in pod["volumes"] if v["name"] == "tls")
    assert mount["readOnly"] is True
    return mount["mountPath"], volume


def added_args(variant_docs: list[dict], base_docs: list[dict]) -> argparse.Namespace:
    """The whole serve command line of an overlay, parsed by `stn-serve`'s own parser (overlays
    only append flags to the base's command)."""
    base_args = server_container(base_docs)["args"]
    args = server_container(variant_docs)["args"]
    assert args[: len(base_args)] == base_args, "overlays only append to the serve command"
    return build_parser().parse_args(args)


def test_every_variant_renders_valid_manifests_and_changes_only_the_deployment(variant, base):
    _, documents = variant
    for document in documents:
        if document["apiVersion"] != CUSTOM_RESOURCE_API:  # test_deploy.py checks those by hand
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    assert [d for d in documents if d["kind"] != "Deployment"] == [
        d for d in base if d["kind"] != "Deployment"
    ]


def test_the_server_serves_tls_from_the_mounted_secret(variant, base):
    _, documents = variant
    mount_path, volume = tls_mount(documents)
    args = added_args(documents, base)
    assert args.tls_cert.startswith(mount_path + "/") and args.tls_key.startswith(mount_path + "/")
    assert volume["secret"]["secretName"] == "stn-serve-tls"
    # The pod's fsGroup may read the files; nobody else.
    assert volume["secret"]["defaultMode"] == 0o440
    assert deployment(documents)["spec"]["template"]["spec"]["securityContext"]["fsGroup"]


def test_exec_probes_run_the_health_check_over_tls(base):
    documents = render(OVERLAYS / "exec-probes")
    container = server_container(documents)
    mount_path, _ = tls_mount(documents)
    grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
    for probe in PROBES:
        command = container[probe]["exec"]["command"]
        assert command[:3] == ["python", "-m", "stn_serve.client.healthcheck"], probe
        args = healthcheck_parser().parse_args(command[3:])
        assert args.address == f"localhost:{grpc_port}"
        assert args.tls_ca.startswith(mount_path + "/") and args.tls_server_name
        base_probe = server_container(base)[probe]
        assert {
            k: v for k, v in container[probe].items() if k not in ("exec", "timeoutSeconds")
        } == {k: v for k, v in base_probe.items() if k not in ("grpc", "timeoutSeconds")}, (
            "same periods and thresholds as the native probes"
        )
        # The check's own deadline ends before the kubelet gives up on the process.
        assert args.timeout < container[probe]["timeoutSeconds"]


def test_the_exec_probe_command_passes_against_a_tls_server_and_fails_while_it_drains(
    tmp_path, model_repository
):
    container = server_container(render(OVERLAYS / "exec-probes"))
    command = container["readinessProbe"]["exec"]["command"]
    args = healthcheck_parser().parse_args(command[3:])
    ca = make_ca(tmp_path, "ca")
    server_cert = issue(ca, tmp_path, "tls", server_names=(args.tls_server_name,))
    tls = {"tls_cert": str(server_cert.cert), "tls_key": str(server_cert.key)}
    with running_server(model_repository, **tls, drain_delay_s=5) as (server, port):
        # The probe as the pod runs it, with the Secret's files from this test and its port.
        argv = [sys.executable, *command[1:]]
        argv[argv.index(args.tls_ca)] = str(ca.cert)
        argv[argv.index(args.address)] = f"localhost:{port}"
        passed = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert passed.returncode == 0, passed.stdout + passed.stderr
        draining = threading.Thread(target=server.drain)
        draining.start()
        try:
            probe = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
            assert probe.returncode == 1 and "NOT_SERVING" in probe.stdout
        finally:
            draining.join(60)


def test_native_probes_use_the_plaintext_health_port_on_the_pod_ip(base):
    documents = render(OVERLAYS / "health-port")
    container = server_container(documents)
    args = added_args(documents, base)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert args.health_port == ports["health"] and ports["health"] not in (
        ports["grpc"],
        ports["metrics"],
    )
    assert args.health_host == "$(POD_IP)"
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"POD_IP": "status.podIP"}
    for probe in PROBES:
        expected = copy.deepcopy(server_container(base)[probe])
        expected["grpc"]["port"] = args.health_port
        assert container[probe] == expected, probe
