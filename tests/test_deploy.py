"""deploy/: what can be checked without a Docker engine or a cluster.

The Dockerfile and compose file are parsed and checked against the CLI they run; every core
Kubernetes manifest is validated against the Kubernetes schemas by kubernetes-validate (strict, so
unknown or misspelt fields fail); the ServiceMonitor custom resource is checked by hand.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from conftest import running_server
from dockerfile_parse import DockerfileParser

from stn_serve.cli import build_parser
from stn_serve.client.healthcheck import check

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.37"


def serve_ports() -> tuple[int, int]:
    """The gRPC and metrics ports `stn-serve serve` uses by default."""
    args = build_parser().parse_args(["serve"])
    return args.port, args.metrics_port


# Dockerfile ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    return DockerfileParser(str(DEPLOY / "Dockerfile"))


def stages(parser: DockerfileParser) -> dict[str, list[dict]]:
    """Instructions per build stage, keyed by the stage's `AS` name."""
    result: dict[str, list[dict]] = {}
    current = None
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            current = instruction["value"].split()[-1]
            result[current] = [instruction]
        elif current is not None:
            result[current].append(instruction)
    return result


def values(stage: list[dict], name: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == name]


def exec_form(value: str) -> list[str]:
    assert value.lstrip().startswith("["), f"use the exec (JSON) form, got {value!r}"
    return json.loads(value)


def test_base_images_are_cuda13_cudnn9_runtime_and_slim_python(dockerfile):
    parents = [image for image in dockerfile.parent_images if not image.startswith("base-")]
    gpu = [image for image in parents if image.startswith("nvidia/cuda:")]
    cpu = [image for image in parents if image.startswith("python:")]
    assert len(gpu) == 1 and re.fullmatch(
        r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu24\.04", gpu[0]
    )
    assert len(cpu) == 1 and re.fullmatch(r"python:3\.1[0-9]-slim(-\w+)?", cpu[0])
    built_on = {
        line.split()[0]
        for line in (i["value"] for i in dockerfile.structure if i["instruction"] == "FROM")
    }
    assert "base-${VARIANT}" in built_on, (
        "build and runtime stages must follow the VARIANT argument"
    )


def test_variant_argument_names_both_bases(dockerfile):
    stage_names = set(stages(dockerfile))
    default = next(i["value"] for i in dockerfile.structure if i["instruction"] == "ARG")
    assert default == "VARIANT=gpu"
    assert {"base-gpu", "base-cpu", "build", "runtime"} <= stage_names


def test_build_stage_installs_the_base_package_without_torch(dockerfile):
    install = " ".join(values(stages(dockerfile)["build"], "RUN"))
    assert re.search(r"pip install .*-c constraints\.txt \.(\s|$)", install), install
    assert not re.search(r"pip install[^&]*(torch|\.\[)", install), "no extras, no torch"
    copied = " ".join(values(stages(dockerfile)["build"], "COPY"))
    for needed in ("pyproject.toml", "constraints.txt", "README.md", "stn_serve"):
        assert needed in copied


def test_runtime_stage_copies_the_venv_and_runs_as_non_root(dockerfile):
    runtime = stages(dockerfile)["runtime"]
    assert any(v.startswith("--from=build ") for v in values(runtime, "COPY"))
    assert all("pip install" not in v for v in values(runtime, "RUN"))
    users = values(runtime, "USER")
    assert users, "the runtime stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"runtime user must not be root, got {user}"


def test_exposed_ports_are_the_cli_defaults(dockerfile):
    exposed = {
        int(port.split("/")[0])
        for v in values(stages(dockerfile)["runtime"], "EXPOSE")
        for port in v.split()
    }
    assert exposed == set(serve_ports())


def test_entrypoint_and_cmd_are_a_real_serve_command_line(dockerfile):
    runtime = stages(dockerfile)["runtime"]
    entrypoint = exec_form(values(runtime, "ENTRYPOINT")[-1])
    cmd = exec_form(values(runtime, "CMD")[-1])
    assert entrypoint == ["stn-serve"]
    args = build_parser().parse_args(cmd)
    assert args.command == "serve"
    assert str(args.repository) == "/models"
    grpc_port, metrics_port = serve_ports()
    assert (args.host, args.port, args.metrics_port) == ("0.0.0.0", grpc_port, metrics_port)
    assert args.metrics_host == "0.0.0.0"  # both bind every interface on purpose
    assert '"/models"' in values(runtime, "VOLUME")[-1]


def test_healthcheck_calls_the_health_module(dockerfile):
    healthcheck = values(stages(dockerfile)["runtime"], "HEALTHCHECK")[-1]
    options, _, command = healthcheck.partition("CMD")
    argv = exec_form(command)
    assert argv[:3] == ["python", "-m", "stn_serve.client.healthcheck"]
    grpc_port, _ = serve_ports()
    assert argv[3:] == ["--address", f"localhost:{grpc_port}"]
    assert "--start-period=" in options and "--timeout=" in options
    # The module exists, parses those flags and says "not serving" when nothing listens.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stn_serve.client.healthcheck",
            "--address",
            "127.0.0.1:1",
            "--timeout",
            "2",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "UNAVAILABLE" in result.stdout


def test_dockerignore_keeps_what_the_build_copies():
    patterns = [
        line
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert patterns[0] == "*"
    kept = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert {"pyproject.toml", "constraints.txt", "README.md", "stn_serve"} <= kept


# compose.yaml -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_mounts_the_model_repository_read_only(compose):
    assert set(compose["services"]) == {"server", "server-cpu"}
    for name, service in compose["services"].items():
        mounts = [v for v in service["volumes"] if v["target"] == "/models"]
        assert len(mounts) == 1 and mounts[0]["read_only"] is True, name
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
        published = {int(p.split(":")[-1]) for p in service["ports"]}
        assert published == set(serve_ports()), name
        build = service["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        assert build["target"] == "runtime"


def test_compose_reserves_a_gpu_only_in_the_gpu_profile(compose):
    gpu, cpu = compose["services"]["server"], compose["services"]["server-cpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["args"]["VARIANT"] == "gpu"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert cpu["profiles"] == ["cpu"] and cpu["build"]["args"]["VARIANT"] == "cpu"
    assert "deploy" not in cpu
    args = build_parser().parse_args(cpu["command"])
    assert (args.command, args.device, str(args.repository)) == ("serve", "cpu", "/models")
    assert (args.host, args.port, args.metrics_port) == ("0.0.0.0", *serve_ports())
    assert args.metrics_host == "0.0.0.0"


# Kubernetes ---------------------------------------------------------------------------------------


def manifests() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def by_kind(kind: str) -> list[dict]:
    return [doc for _, doc in manifests() if doc["kind"] == kind]


# kubernetes-validate has no schema for custom resources; test_servicemonitor_fields checks it.
CUSTOM_RESOURCES = {("monitoring.coreos.com/v1", "ServiceMonitor")}
CORE = [(n, d) for n, d in manifests() if (d["apiVersion"], d["kind"]) not in CUSTOM_RESOURCES]


def test_every_manifest_is_core_or_a_known_custom_resource():
    kinds = {(d["apiVersion"], d["kind"]) for _, d in manifests()}
    assert CUSTOM_RESOURCES <= kinds
    assert {"Deployment", "Service", "HorizontalPodAutoscaler"} <= {d["kind"] for _, d in CORE}


@pytest.mark.parametrize(
    "name,doc", CORE, ids=[f"{name}:{doc['kind']}/{doc['metadata']['name']}" for name, doc in CORE]
)
def test_manifest_validates_against_the_kubernetes_schema(name, doc):
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_validator_rejects_a_misspelt_field():
    deployment = copy.deepcopy(by_kind("Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {
        "grpc": {"port": 8001}
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


# Applied on its own: `kubectl apply -k` sets up the long-running server, not a batch job.
BATCH_JOB = "batch-job.yaml"


def test_kustomization_lists_every_manifest_but_the_batch_job():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", BATCH_JOB}


def container() -> dict:
    return by_kind("Deployment")[0]["spec"]["template"]["spec"]["containers"][0]


def test_deployment_runs_the_serve_command_on_the_default_ports():
    server = container()
    args = build_parser().parse_args(server["args"])
    assert args.command == "serve"
    grpc_port, metrics_port = serve_ports()
    assert (args.host, args.port, args.metrics_port) == ("0.0.0.0", grpc_port, metrics_port)
    assert args.metrics_host == "0.0.0.0"  # both bind every interface on purpose
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == {"grpc": grpc_port, "metrics": metrics_port}
    mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    assert mounts[str(args.repository)]["readOnly"] is True


def test_termination_grace_covers_the_drain():
    pod = by_kind("Deployment")[0]["spec"]["template"]["spec"]
    args = build_parser().parse_args(container()["args"])
    assert "lifecycle" not in container()  # the server's drain delay does what a preStop would
    assert pod["terminationGracePeriodSeconds"] > args.drain_delay_s + args.grace_s


def test_drain_delay_outlasts_the_readiness_probe():
    """A draining pod reads NOT_SERVING; it must still accept requests until the readiness probe
    has had time to take it out of the endpoints."""
    args = build_parser().parse_args(container()["args"])
    readiness = container()["readinessProbe"]
    noticed_s = readiness["periodSeconds"] * readiness["failureThreshold"]
    assert args.drain_delay_s > noticed_s + readiness["timeoutSeconds"]


def test_deployment_probes_use_native_grpc_health():
    server = container()
    grpc_port, _ = serve_ports()
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert server[probe]["grpc"]["port"] == grpc_port, probe
        assert "service" in server[probe]["grpc"], probe
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "model load needs minutes"


def test_probed_health_services_are_serving_on_a_real_server(model_repository):
    services = {
        container()[probe]["grpc"]["service"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    with running_server(model_repository) as (server, port):
        assert {
            service: check(f"127.0.0.1:{port}", service) for service in services
        } == dict.fromkeys(services, "SERVING")
        server.stop(grace=None)
        # A stopped server must fail the probe, or it would never be taken out of rotation.
        assert check(f"127.0.0.1:{port}", "", timeout=1) != "SERVING"


def test_deployment_security_context():
    pod = by_kind("Deployment")[0]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    security = container()["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]


def test_deployment_requests_a_gpu_and_mounts_models_from_a_claim():
    resources = container()["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert "cpu" in resources["requests"], "the CPU autoscaler measures against the request"
    pod = by_kind("Deployment")[0]["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "models")
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert claim in {doc["metadata"]["name"] for doc in by_kind("PersistentVolumeClaim")}


def test_services_select_the_pods_and_one_is_headless():
    labels = by_kind("Deployment")[0]["spec"]["template"]["metadata"]["labels"]
    services = by_kind("Service")
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items(), service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in {p["name"] for p in container()["ports"]}
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    normal = [s for s in services if s["spec"].get("clusterIP") != "None"]
    assert len(headless) == 1 and len(normal) == 1


def test_hpa_scales_the_deployment_on_cpu():
    (hpa,) = by_kind("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (
        "Deployment",
        by_kind("Deployment")[0]["metadata"]["name"],
    )
    resources = [m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    assert resources == ["cpu"]
    assert "queue" in (K8S / "hpa.yaml").read_text(), "document the queue-time metric"


def test_queue_time_metric_in_the_autoscaling_docs_is_one_the_server_exports():
    from stn_serve.server.metrics import Metrics

    readme = (DEPLOY / "README.md").read_text()
    (series,) = set(re.findall(r"seriesQuery: '(\w+)_bucket", readme))
    histograms = {m.name for m in Metrics().registry.collect() if m.type == "histogram"}
    assert series in histograms and "queue" in series, (series, histograms)
    (adapted,) = set(re.findall(r"as: (\w+)", readme))
    assert f"name: {adapted}" in (K8S / "hpa.yaml").read_text()


def test_servicemonitor_fields():
    (monitor,) = by_kind("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["name"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    endpoints = monitor["spec"]["endpoints"]
    assert endpoints and all("port" in e for e in endpoints)
    scraped = [
        s
        for s in by_kind("Service")
        if selector.items() <= s["metadata"]["labels"].items()
        and any(p["name"] == e["port"] for p in s["spec"]["ports"] for e in endpoints)
    ]
    assert scraped, "the ServiceMonitor must select a Service with the named metrics port"


def test_readme_commands_name_real_files():
    readme = (DEPLOY / "README.md").read_text()
    paths = set(re.findall(r"\bdeploy/[\w./-]*\w", readme))
    assert paths, "deploy/README.md names no file under deploy/"
    for path in paths:
        assert (ROOT / path).exists(), path
    for command in re.findall(r"^stn-serve (.+)$", readme, re.MULTILINE):
        build_parser().parse_args(shlex.split(command))


# The batch Job ----------------------------------------------------------------------------------


def batch_job() -> dict:
    (job,) = by_kind("Job")
    return job


def test_batch_job_is_indexed_and_each_pod_runs_its_own_shard():
    from stn_serve.batch import Shard

    spec = batch_job()["spec"]
    assert spec["completionMode"] == "Indexed" and spec["parallelism"] == spec["completions"]
    (batch,) = spec["template"]["spec"]["containers"]
    outs = set()
    for index in range(spec["completions"]):
        # What the kubelet makes of $(JOB_COMPLETION_INDEX), which Kubernetes sets in the pod.
        argv = [a.replace("$(JOB_COMPLETION_INDEX)", str(index)) for a in batch["args"]]
        args = build_parser().parse_args(argv)
        assert args.command == "batch" and args.shard == Shard(index, spec["completions"])
        assert args.server and args.server.startswith("dns:///stn-serve-headless:")
        outs.add(str(args.out))
    assert len(outs) == spec["completions"], "each shard writes a folder of its own"


def test_batch_job_retries_a_shard_alone_and_never_runs_two_pods_of_one():
    spec = batch_job()["spec"]
    assert spec["backoffLimitPerIndex"] >= 1
    assert spec["podReplacementPolicy"] == "Failed"
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


def test_batch_job_reads_images_and_models_read_only_from_claims_it_can_find():
    pod = batch_job()["spec"]["template"]["spec"]
    (batch,) = pod["containers"]
    args = build_parser().parse_args(
        [a.replace("$(JOB_COMPLETION_INDEX)", "0") for a in batch["args"]]
    )
    mounts = {m["mountPath"]: m for m in batch["volumeMounts"]}
    assert mounts[args.input]["readOnly"] is True and mounts["/models"]["readOnly"] is True
    assert not mounts["/results"].get("readOnly") and str(args.out).startswith("/results/")
    claims = {doc["metadata"]["name"] for doc in by_kind("PersistentVolumeClaim")}
    used = {
        volume["persistentVolumeClaim"]["claimName"]
        for volume in pod["volumes"]
        if "persistentVolumeClaim" in volume
    }
    assert used <= claims
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert batch["securityContext"]["readOnlyRootFilesystem"] is True
