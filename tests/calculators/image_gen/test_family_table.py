"""docs/graph-reference.md's family x task table, cell by cell, against the graphs the tests serve.

"served" is what the loaded node built; every request-field cell is a request of that task parsed with
the node's own rules (its settings, model facts and defaults), accepted or refused with a 400 naming
the field; "guidance_scale" also names the family's guidance kind; "kohya LoRA" is the load check
of the node with the project's sd15 LoRA.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from calculators.image_gen.pipelines import Family, Guidance, Task
from calculators.image_gen.request import EDITS, GENERATIONS, RequestRules, parse_request
from ovms_graph.errors import BadRequest
from ovms_graph.packets import HttpPayload, MultipartView, UploadedFile
from ovms_graph.testing import CalculatorRunner
from tests.calculators.image_gen.conftest import Servers
from tests.calculators.image_gen.helpers import REPO, TINY, node_text, png_bytes, registry

DOC = (REPO / "docs" / "graph-reference.md").read_text(encoding="utf-8")
HEADER = ("| family | task | served | n > 1 | prompt_2 | prompt_3 | negative_prompt | max_sequence_length | "
          "guidance_scale | kohya LoRA |")
#: The served graph (tests/calculators/image_gen/conftest.py) and tiny model of each family.
GRAPHS = {"SD": "sd15", "SDXL": "sdxl", "SD3": "sd3", "FLUX": "flux", "LCM": "lcm"}
COLUMNS = ("family", "task", "served", "n > 1", "prompt_2", "prompt_3", "negative_prompt", "max_sequence_length",
           "guidance_scale", "kohya LoRA")


def table() -> list[dict[str, str]]:
    start = DOC.index(HEADER)
    lines = DOC[start:].splitlines()[2:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(COLUMNS), line
        rows.append(dict(zip(COLUMNS, cells, strict=True)))
    return rows


ROWS = table()


def test_the_table_covers_every_family_and_task() -> None:
    assert {(r["family"], r["task"]) for r in ROWS} == {(f, t.value) for f in GRAPHS for t in Task}
    assert {f.value for f in Family} - {"unknown"} == set(GRAPHS)


def request(rules: RequestRules, task: Task, fields: dict[str, Any]) -> BadRequest | None:
    """Parse a request of ``task`` with ``fields``; the BadRequest it raises, or None when accepted."""
    body = {"prompt": "a cat", **fields}
    if task is Task.TEXT2IMAGE:
        payload = HttpPayload(uri="/v3/images/generations", method="POST", headers={}, body=b"",
                              route=GENERATIONS, model="m", parsed_json=body)
    else:
        body = {"num_inference_steps": 4, "strength": 1.0, **body}  # steps left whatever the model's default strength
        files = {"image": (UploadedFile("image", "i.png", "image/png", png_bytes(64, 64)),)}
        if task is Task.INPAINTING:
            files["mask"] = (UploadedFile("mask", "m.png", "image/png", png_bytes(64, 64, (255, 255, 255))),)
        form = MultipartView(fields={k: (str(v),) for k, v in body.items()}, files=files)
        payload = HttpPayload(uri="/v3/images/edits", method="POST", headers={}, body=b"", route=EDITS, model="m",
                              multipart=form)
    try:
        parse_request(payload, rules)
    except BadRequest as exc:
        return exc
    return None


def accepted(rules: RequestRules, task: Task, fields: dict[str, Any], param: str) -> bool:
    error = request(rules, task, fields)
    if error is None:
        return True
    assert error.param == param, error.message
    return False


@pytest.mark.parametrize("row", ROWS, ids=[f'{r["family"]}-{r["task"]}' for r in ROWS])
def test_cell(servers: Servers, row: dict[str, str], tmp_path: Path) -> None:
    graph = GRAPHS[row["family"]]
    res = servers[graph].resources(graph)
    task = Task(row["task"])
    assert res.info.family is Family(row["family"])
    rules = RequestRules(res.settings, res.info, res.defaults, res.tasks, res.refused)
    yes = {"yes": True, "no": False}

    assert (task in res.tasks) is yes[row["served"]]
    assert accepted(rules, task, {"n": 2}, "n") is yes[row["n > 1"]]
    for name in ("prompt_2", "prompt_3", "negative_prompt"):
        assert accepted(rules, task, {name: "a dog"}, name) is yes[row[name]], name

    length = row["max_sequence_length"]
    if length == "no":
        assert not accepted(rules, task, {"max_sequence_length": 77}, "max_sequence_length")
    else:
        only = int(re.fullmatch(r"(\d+) only", length).group(1))  # type: ignore[union-attr]
        assert accepted(rules, task, {"max_sequence_length": only}, "max_sequence_length")
        assert not accepted(rules, task, {"max_sequence_length": only - 1}, "max_sequence_length")

    guidance = row["guidance_scale"]
    kind = Guidance.EMBEDDED if guidance == "embedding" else Guidance.CLASSIFIER_FREE
    assert res.info.guidance is kind
    assert accepted(rules, task, {"guidance_scale": 5.0}, "guidance_scale")
    assert accepted(rules, task, {"guidance_scale": 1.0}, "guidance_scale") is (guidance != "CFG, stays on")

    lora = TINY / "loras" / "lora_a.safetensors"
    options = (f'models_path: "{TINY / graph}"', f'lora_adapters {{ alias: "a" path: "{lora}" }}')
    node = CalculatorRunner(node_text(*options), registry=registry(), graph_file=tmp_path / "graph.pbtxt")
    assert (node.problems() == []) is yes[row["kohya LoRA"]]
