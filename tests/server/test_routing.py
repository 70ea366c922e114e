"""The model field routes to graphs and aliases; the models listing shows exactly the routable names."""

from __future__ import annotations

import aiohttp
import pytest

from tests.server.conftest import ServeFactory

GRAPHS = {"base": "AliasCalculator", "static": "HiddenBaseCalculator", "plain": "EchoCalculator"}


@pytest.mark.parametrize(("model", "graph_model"), [
    ("base", "base"), ("style-a", "style-a"), ("mix", "mix"), ("only-alias", "only-alias"), ("plain", "plain"),
])
async def test_model_field_routes_to_graphs_and_aliases(serve: ServeFactory, model: str, graph_model: str) -> None:
    s = await serve(GRAPHS)
    r = await s.client.post("/v3/images/generations", json={"model": model, "prompt": "a"})
    assert r.status == 200
    assert (await r.json())["model"] == graph_model
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("model", model)
    r = await s.client.post("/v3/images/edits", data=form)
    assert r.status == 200
    assert (await r.json())["model"] == graph_model


@pytest.mark.parametrize(("model", "status", "message", "code"), [
    ("nope", 404, 'model "nope" does not exist; GET /v3/models lists the models served here', "model_not_found"),
    ("fused", 404, 'model "fused" does not exist; GET /v3/models lists the models served here', "model_not_found"),
    ("BASE", 404, 'model "BASE" does not exist; GET /v3/models lists the models served here', "model_not_found"),
    ("x" * 300, 404, 'model "' + "x" * 200 + '..." does not exist; GET /v3/models lists the models served here',
     "model_not_found"),
    ("static", 400, 'model "static" cannot be used directly: its adapters are compiled in; use "only-alias"',
     "model_not_routable"),
])
async def test_unroutable_models_are_refused(serve: ServeFactory, model: str, status: int, message: str,
                                             code: str) -> None:
    s = await serve(GRAPHS)
    r = await s.client.post("/v3/images/generations", json={"model": model, "prompt": "a"})
    assert r.status == status
    kind = "not_found_error" if status == 404 else "invalid_request_error"
    assert await r.json() == {"error": {"message": message, "type": kind, "param": "model", "code": code}}


@pytest.mark.parametrize("body", [{"prompt": "a"}, {"prompt": "a", "model": None}])
async def test_missing_model_with_several_graphs_is_400(serve: ServeFactory, body: dict[str, object]) -> None:
    s = await serve(GRAPHS)
    r = await s.client.post("/v3/images/generations", json=body)
    assert r.status == 400
    assert await r.json() == {"error": {"message": "model field is missing", "type": "invalid_request_error",
                                        "param": "model", "code": None}}
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("prompt", "a")
    r = await s.client.post("/v3/images/edits", data=form)
    assert r.status == 400
    assert (await r.json())["error"]["message"] == "model field is missing"


@pytest.mark.parametrize(("graph", "routed_as"), [
    ("EchoCalculator", "only"), ("AliasCalculator", "only"), ("HiddenBaseCalculator", "only-alias"),
])
async def test_missing_model_with_one_graph_uses_it(serve: ServeFactory, graph: str, routed_as: str) -> None:
    s = await serve({"only": graph})
    for body in ({"prompt": "a"}, {"prompt": "a", "model": None}):
        r = await s.client.post("/v3/images/generations", json=body)
        assert r.status == 200
        assert (await r.json())["model"] == routed_as


@pytest.mark.parametrize("prefix", ["/v3", "/v1"])
async def test_models_list_shows_exactly_the_routable_names(serve: ServeFactory, prefix: str) -> None:
    s = await serve(GRAPHS)
    r = await s.client.get(f"{prefix}/models")
    assert r.status == 200
    created = s.serving.created
    assert await r.json() == {"object": "list", "data": [
        {"id": name, "object": "model", "created": created, "owned_by": "ovms-graph"}
        for name in ("base", "style-a", "mix", "only-alias", "plain")]}


@pytest.mark.parametrize(("model_id", "status"), [
    ("base", 200), ("style-a", 200), ("mix", 200), ("only-alias", 200), ("plain", 200),
    ("static", 404), ("fused", 404), ("nope", 404),
])
async def test_model_retrieval(serve: ServeFactory, model_id: str, status: int) -> None:
    s = await serve(GRAPHS)
    r = await s.client.get(f"/v3/models/{model_id}")
    assert r.status == status
    if status == 200:
        assert await r.json() == {"id": model_id, "object": "model", "created": s.serving.created,
                                  "owned_by": "ovms-graph"}
    else:
        assert await r.json() == {"error": {
            "message": f'model "{model_id}" does not exist; GET /v3/models lists the models served here',
            "type": "not_found_error", "param": "model", "code": "model_not_found"}}


async def test_model_names_with_slashes_are_served(serve: ServeFactory) -> None:
    s = await serve({"OpenVINO/sd-v1-5": "EchoCalculator", "other": "EchoCalculator"})
    r = await s.client.get("/v3/models/OpenVINO/sd-v1-5")
    assert r.status == 200
    assert (await r.json())["id"] == "OpenVINO/sd-v1-5"
    r = await s.client.get("/v2/models/OpenVINO/sd-v1-5/ready")
    assert r.status == 200
    r = await s.client.post("/v3/images/generations", json={"model": "OpenVINO/sd-v1-5", "prompt": "a"})
    assert (await r.json())["model"] == "OpenVINO/sd-v1-5"
