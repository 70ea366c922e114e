"""deploy/ manifests against the real API schemas, offline.

Kubernetes objects are validated with ``kubernetes-validate`` (strict: unknown fields are errors) for
the oldest and the newest Kubernetes version the installed package ships; docs/deployment.md names
the same two. KServe's objects are not in those schemas: they are checked against
``kserve-crd-subset.schema.json``, the fields KServe's CRDs define, whose Kubernetes parts (Container,
Volume, ObjectMeta, ...) refer to the same bundled Kubernetes schemas.
"""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from kubernetes_validate import utils as kv_utils
from packaging.version import Version
from referencing import Registry, Resource

from tests.docs.conftest import DOCS as DOCS_DIR
from tests.docs.conftest import REPO
from tests.docs.test_deploy import DOCS

KSERVE_KINDS = {"ServingRuntime", "ClusterServingRuntime", "InferenceService"}
KSERVE_SCHEMA = Path(__file__).with_name("kserve-crd-subset.schema.json")
K8S_DEFINITIONS = "https://kubernetes.io/api/_definitions.json"


def minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


VERSIONS = sorted({minor(v) for v in kv_utils.all_versions()}, key=Version)
CHECKED = [VERSIONS[0], VERSIONS[-1]]  # the oldest and the newest the package ships
KUBERNETES = [(path, doc) for path, doc in DOCS if doc["kind"] not in KSERVE_KINDS]
KSERVE = [(path, doc) for path, doc in DOCS if doc["kind"] in KSERVE_KINDS]


def where(item: tuple[Path, dict[str, Any]]) -> str:
    path, doc = item
    return f"{path.relative_to(REPO)}:{doc['kind']}/{doc['metadata']['name']}"


def kubernetes_problems(doc: dict[str, Any], version: str) -> list[str]:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(map(str, e.path))}: {e.message}"]
    return []


@cache
def kserve_validator(version: str) -> jsonschema.Draft202012Validator:
    """The KServe subset schema, its Kubernetes references resolved in ``version``'s strict schemas."""
    (folder,) = {v for v in kv_utils.all_versions() if minor(v) == version}
    definitions = kv_utils.schema_contents(f"kubernetes-json-schema/v{folder}-local-strict/_definitions.json", version)
    schema = json.loads(KSERVE_SCHEMA.read_text(encoding="utf-8"))
    registry: Registry = Registry().with_resources([
        (K8S_DEFINITIONS, Resource.from_contents(definitions)),
        (schema["$id"], Resource.from_contents(schema)),
    ])
    return jsonschema.Draft202012Validator({"$ref": schema["$id"]}, registry=registry)


def kserve_problems(doc: dict[str, Any], version: str) -> list[str]:
    validator = kserve_validator(version)
    schema = {"$ref": f"{validator.schema['$ref']}#/$defs/{doc['kind']}"}
    return [f"{'.'.join(map(str, e.path))}: {e.message}"
            for e in validator.evolve(schema=schema).iter_errors(doc)]


# ----- the manifests -----
def test_the_package_ships_several_versions() -> None:
    assert len(VERSIONS) >= 2 and CHECKED[0] != CHECKED[1], VERSIONS


@pytest.mark.parametrize("version", CHECKED)
@pytest.mark.parametrize("item", KUBERNETES, ids=where)
def test_kubernetes_objects_match_the_api_schema(item: tuple[Path, dict[str, Any]], version: str) -> None:
    assert kubernetes_problems(item[1], version) == []


@pytest.mark.parametrize("version", CHECKED)
@pytest.mark.parametrize("item", KSERVE, ids=where)
def test_kserve_objects_match_the_crd_fields(item: tuple[Path, dict[str, Any]], version: str) -> None:
    assert kserve_problems(item[1], version) == []


def test_every_object_is_checked() -> None:
    assert {doc["kind"] for _, doc in KSERVE} == {"ServingRuntime", "InferenceService"}
    assert len(KUBERNETES) + len(KSERVE) == len(DOCS)


# ----- the checks can fail -----
def mutated(kind: str, change: Any) -> dict[str, Any]:
    (doc,) = [copy.deepcopy(d) for _, d in DOCS if d["kind"] == kind]
    change(doc)
    return doc


@pytest.mark.parametrize("version", CHECKED)
@pytest.mark.parametrize(("kind", "change", "found"), [
    ("Deployment", lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriod=90),
     "'terminationGracePeriod' was unexpected"),
    ("Deployment", lambda d: d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"].update(periodSeconds="5"),
     "'5' is not of type 'integer'"),
    ("Service", lambda d: d["spec"]["ports"][0].pop("port"), "'port' is a required property"),
])
def test_a_broken_kubernetes_object_is_caught(kind: str, change: Any, found: str, version: str) -> None:
    problems = kubernetes_problems(mutated(kind, change), version)
    assert problems and found in problems[0]


@pytest.mark.parametrize("version", CHECKED)
@pytest.mark.parametrize(("kind", "change", "found"), [
    ("ServingRuntime", lambda d: d["spec"].update(supportedModelFormat=d["spec"].pop("supportedModelFormats")),
     "'supportedModelFormat' was unexpected"),
    ("ServingRuntime", lambda d: d["spec"]["containers"][0]["lifecycle"].update(preStopp={}),
     "'preStopp' was unexpected"),
    ("ServingRuntime", lambda d: d["spec"]["supportedModelFormats"][0].update(autoSelect="true"),
     "'true' is not of type 'boolean'"),
    ("InferenceService", lambda d: d["spec"]["predictor"].update(terminationGracePeriodSecond=90),
     "'terminationGracePeriodSecond' was unexpected"),
    ("InferenceService", lambda d: d["spec"]["predictor"]["model"].pop("modelFormat"),
     "'modelFormat' is a required property"),
    ("InferenceService", lambda d: d.update(apiVersion="serving.kserve.io/v1alpha1"),
     "'serving.kserve.io/v1beta1' was expected"),
])
def test_a_broken_kserve_object_is_caught(kind: str, change: Any, found: str, version: str) -> None:
    problems = kserve_problems(mutated(kind, change), version)
    assert any(found in p for p in problems), problems


# ----- the docs -----
def test_deployment_doc_names_the_versions_checked() -> None:
    text = (DOCS_DIR / "deployment.md").read_text(encoding="utf-8")
    named = re.search(r"Kubernetes\s+API\s+schemas?\s+of\s+Kubernetes\s+(\d+\.\d+)\s+and\s+(\d+\.\d+)", text)
    assert named, "docs/deployment.md must name the Kubernetes versions deploy/ is validated against"
    assert list(named.groups()) == CHECKED
    package = re.search(r"kubernetes-validate\s+(\d+(?:\.\d+)+)", text)
    assert package and package.group(1) == kv_utils.__version__
