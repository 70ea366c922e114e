"""deploy/: the Dockerfile and every Kubernetes / KServe manifest stay consistent with the product.

Every YAML document loads; every ovms-graph container's command line parses with the real argument
parser; probes and metrics annotations point at routes the server (built from that same command line)
really serves, on the port it really listens on; and the objects refer to each other correctly.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import make_mocked_request

from ovms_graph.cli import build_parser, server_options
from ovms_graph.config import load_config
from ovms_graph.graph import load_spec
from ovms_graph.registry import Registry
from ovms_graph.server import create_app
from ovms_graph.validation import validate_graph
from tests.docs.conftest import REPO

DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
YAML_FILES = sorted(DEPLOY.rglob("*.yaml"))
POD_KINDS = {"Deployment", "Job", "StatefulSet", "DaemonSet"}


# ----- reading -----
def documents() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in YAML_FILES:
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                docs.append((path, doc))
    return docs


DOCS = documents()


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in DOCS if doc["kind"] == kind]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            result.append((instruction.upper(), rest.strip()))
    return result


def exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(v, str) for v in parsed), value
    return parsed


def image_entrypoint() -> list[str]:
    (entrypoint,) = [exec_form(v) for i, v in dockerfile_instructions() if i == "ENTRYPOINT"]
    return entrypoint


@dataclasses.dataclass(frozen=True)
class Container:
    where: str
    spec: dict[str, Any]
    pod: dict[str, Any]  # the pod spec (or ServingRuntime spec) it lives in
    owner: dict[str, Any]

    @property
    def argv(self) -> list[str]:
        command = self.spec.get("command", image_entrypoint())
        return [str(a) for a in [*command, *self.spec.get("args", [])]]

    @property
    def ports(self) -> dict[str | int, int]:
        found: dict[str | int, int] = {}
        for port in self.spec.get("ports", []):
            found[port["containerPort"]] = port["containerPort"]
            if "name" in port:
                found[port["name"]] = port["containerPort"]
        return found


def containers() -> list[Container]:
    found = []
    for path, doc in DOCS:
        if doc["kind"] in POD_KINDS:
            pod = doc["spec"]["template"]["spec"]
        elif doc["kind"] == "ServingRuntime":
            pod = doc["spec"]
        else:
            continue
        for spec in [*pod.get("initContainers", []), *pod["containers"]]:
            found.append(Container(f"{path.relative_to(REPO)}: {doc['kind']}/{doc['metadata']['name']}/{spec['name']}",
                                   spec, pod, doc))
    return found


CONTAINERS = containers()


def parse(argv: list[str]) -> argparse.Namespace:
    assert argv[0] == "ovms-graph", argv
    ns = build_parser().parse_args(argv[1:])
    if ns.command == "serve":
        assert (ns.config_path is None) != (ns.source_model is None), "serve needs exactly one of the two"
    return ns


def serves(path: str, ns: argparse.Namespace, method: str = "GET") -> bool:
    """Whether the server started with ``ns`` answers ``method path`` (the real app and router)."""
    options = dataclasses.replace(server_options(ns), api_key_file=None)
    app = create_app([], options)

    async def resolve() -> bool:
        match = await app.router.resolve(make_mocked_request(method, path, app=app))
        return match.http_exception is None

    return asyncio.run(resolve())


def serving(items: list[Container]) -> list[Container]:
    return [c for c in items if parse(c.argv).command == "serve"]


# ----- every file -----
@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_yaml_documents_are_kubernetes_objects(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    assert docs
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc)
        assert doc["metadata"]["name"]


def test_the_expected_objects_exist() -> None:
    kinds = sorted(doc["kind"] for _, doc in DOCS)
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "ServingRuntime", "InferenceService"):
        assert kind in kinds
    assert len(serving(CONTAINERS)) == 2  # the Deployment's and the ServingRuntime's


@pytest.mark.parametrize("container", CONTAINERS, ids=lambda c: c.where)
def test_container_command_lines_parse(container: Container) -> None:
    parse(container.argv)


# ----- serving containers -----
@pytest.mark.parametrize("container", serving(CONTAINERS), ids=lambda c: c.where)
def test_serving_container_listens_where_its_port_says(container: Container) -> None:
    ns = parse(container.argv)
    assert ns.rest_bind_address == "0.0.0.0"  # probes and Services come from outside the pod
    assert ns.rest_port in container.ports.values()


@pytest.mark.parametrize("container", serving(CONTAINERS), ids=lambda c: c.where)
def test_probes_point_at_real_health_routes(container: Container) -> None:
    ns = parse(container.argv)
    expected = {"readinessProbe": "/v2/health/ready", "livenessProbe": "/v2/health/live"}
    for probe, path in expected.items():
        get = container.spec[probe]["httpGet"]
        assert get["path"] == path
        assert serves(get["path"], ns)
        assert container.ports[get["port"]] == ns.rest_port


@pytest.mark.parametrize("container", serving(CONTAINERS), ids=lambda c: c.where)
def test_metrics_annotations_point_at_a_served_route(container: Container) -> None:
    ns = parse(container.argv)
    if container.owner["kind"] == "ServingRuntime":
        annotations = container.owner["spec"]["annotations"]
        path, port = annotations["prometheus.kserve.io/path"], annotations["prometheus.kserve.io/port"]
    else:
        annotations = container.owner["spec"]["template"]["metadata"]["annotations"]
        path, port = annotations["prometheus.io/path"], annotations["prometheus.io/port"]
    assert serves(path, ns)
    assert int(port) == ns.rest_port


def test_a_route_that_is_not_served_is_caught() -> None:
    # Guards the guard: the router check must be able to fail.
    ns = build_parser().parse_args(["serve", "--config_path", "c.json"])
    assert serves("/v2/health/ready", ns)
    assert not serves("/v2/health/readiness", ns)
    assert not serves("/metrics", ns)  # without --metrics_enable
    assert not serves("/v2/health/ready", ns, method="POST")


@pytest.mark.parametrize("container", [c for c in serving(CONTAINERS) if c.owner["kind"] != "ServingRuntime"],
                         ids=lambda c: c.where)
def test_config_path_is_on_a_mounted_volume(container: Container) -> None:
    ns = parse(container.argv)
    mounts = [m["mountPath"] for m in container.spec.get("volumeMounts", [])]
    assert any(str(ns.config_path).startswith(m.rstrip("/") + "/") for m in mounts)


def test_kserve_runtime_reads_the_storage_initializer_folder() -> None:
    (runtime,) = [c for c in CONTAINERS if c.owner["kind"] == "ServingRuntime"]
    assert str(parse(runtime.argv).config_path).startswith("/mnt/models/")


def grace_periods(container: Container) -> list[int]:
    """The terminationGracePeriodSeconds of every pod that runs ``container``."""
    if container.owner["kind"] == "ServingRuntime":
        return [isvc["spec"]["predictor"]["terminationGracePeriodSeconds"] for isvc in by_kind("InferenceService")
                if isvc["spec"]["predictor"]["model"]["runtime"] == container.owner["metadata"]["name"]]
    return [container.pod["terminationGracePeriodSeconds"]]


@pytest.mark.parametrize("container", serving(CONTAINERS), ids=lambda c: c.where)
def test_pods_outlive_their_drain(container: Container) -> None:
    pre_stop = container.spec["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    ns = parse(container.argv)
    periods = grace_periods(container)
    assert periods
    for grace in periods:
        assert grace > float(pre_stop[1]) + ns.drain_delay + ns.shutdown_timeout


@pytest.mark.parametrize("container", serving(CONTAINERS), ids=lambda c: c.where)
def test_readiness_drops_out_of_rotation_within_the_lame_duck(container: Container) -> None:
    probe = container.spec["readinessProbe"]
    assert probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3) <= parse(container.argv).drain_delay


# ----- objects refer to each other -----
def test_deployment_selector_matches_its_pods() -> None:
    (deployment,) = by_kind("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_service_reaches_the_serving_port() -> None:
    (service,) = by_kind("Service")
    (deployment,) = by_kind("Deployment")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    (container,) = [c for c in serving(CONTAINERS) if c.owner is deployment]
    for port in service["spec"]["ports"]:
        assert container.ports[port["targetPort"]] == parse(container.argv).rest_port


def test_autoscaler_targets_the_deployment_and_cpu_is_requested() -> None:
    (hpa,) = by_kind("HorizontalPodAutoscaler")
    (deployment,) = by_kind("Deployment")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    if any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"]):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            assert container["resources"]["requests"]["cpu"]


def test_volumes_name_existing_claims() -> None:
    claims = {doc["metadata"]["name"] for doc in by_kind("PersistentVolumeClaim")}
    for container in CONTAINERS:
        for volume in container.pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
    for isvc in by_kind("InferenceService"):
        uri = isvc["spec"]["predictor"]["model"]["storageUri"]
        if uri.startswith("pvc://"):
            assert uri.removeprefix("pvc://").split("/")[0] in claims


def test_pull_job_writes_the_config_the_server_reads() -> None:
    pulls = [parse(c.argv) for c in CONTAINERS if parse(c.argv).command == "pull"]
    (deployment,) = [c for c in serving(CONTAINERS) if c.owner["kind"] == "Deployment"]
    assert pulls
    assert {p.config_path for p in pulls} == {parse(deployment.argv).config_path}


def test_inference_service_uses_the_runtime() -> None:
    runtimes = {doc["metadata"]["name"]: doc for doc in by_kind("ServingRuntime")}
    for isvc in by_kind("InferenceService"):
        model = isvc["spec"]["predictor"]["model"]
        runtime = runtimes[model["runtime"]]
        assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}


# ----- the Dockerfile -----
def test_dockerfile_default_command_serves_the_demo() -> None:
    instructions = dockerfile_instructions()
    (cmd,) = [exec_form(v) for i, v in instructions if i == "CMD"]
    ns = parse([*image_entrypoint(), *cmd])
    assert ns.command == "serve"
    assert ns.rest_bind_address == "0.0.0.0"
    exposed = [int(p.split("/")[0]) for i, v in instructions if i == "EXPOSE" for p in v.split()]
    assert exposed == [ns.rest_port]
    (healthcheck,) = [v for i, v in instructions if i == "HEALTHCHECK"]
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/[^'\"\s]*)", healthcheck)
    assert url
    assert int(url.group(1)) == ns.rest_port
    assert url.group(2) == "/v2/health/ready" and serves(url.group(2), ns)
    (workdir,) = [v for i, v in instructions if i == "WORKDIR"]
    assert not ns.config_path.is_absolute(), f"relative to {workdir}, which holds the repository's files"


def test_dockerfile_copies_what_exists_and_the_demo_config_validates() -> None:
    instructions = dockerfile_instructions()
    for instruction, value in instructions:
        if instruction == "COPY":
            *sources, _ = shlex.split(value)
            for source in sources:
                assert (REPO / source).exists(), source
    (cmd,) = [exec_form(v) for i, v in instructions if i == "CMD"]
    ns = parse([*image_entrypoint(), *cmd])
    registry = Registry.from_entry_points()
    copied = [(REPO / source).resolve() for i, v in instructions if i == "COPY" for source in shlex.split(v)[:-1]]

    def in_image(path: Path) -> bool:
        return any(path.resolve().is_relative_to(c) for c in copied)

    for entry in load_config(REPO / ns.config_path):
        assert in_image(entry.graph_path), entry.graph_path
        spec = load_spec(entry.graph_path, registry)
        assert validate_graph(spec, registry, graph_name=entry.name) == []
        for node in spec.nodes:
            for options in node.options:
                paths = [getattr(options, "models_path", "")]
                paths += [a.path for a in getattr(options, "lora_adapters", [])]
                for value in filter(None, paths):
                    assert in_image(entry.graph_path.parent / value), value
