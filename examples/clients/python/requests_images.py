"""Calling ovms-graph with plain HTTP through ``requests``: generate, edit, inpaint and stream.

    python requests_images.py generate|edit|inpaint|stream [OUT_DIR]

Each function below is a complete example and can be copied on its own. Settings come from the
environment, as in the curl examples (see ../curl/_common.sh): BASE_URL (default
http://127.0.0.1:8000), API_KEY, MODEL, PROMPT, SIZE, STEPS, N, SEED, GUIDANCE, IMAGE, MASK,
STRENGTH, PARTIAL_IMAGES, OUT_DIR (default ./out; the second argument overrides it). PNGs are
written to OUT_DIR and their paths printed. On an error, the server's message is printed and the
exit status is 1.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

import requests

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BASE_URL = os.environ.get("BASE_URL", "http://127.0.0.1:8000").rstrip("/")
TIMEOUT = 600  # seconds; a large image on a CPU can take minutes


def headers() -> dict[str, str]:
    """The API key header when API_KEY is set (ovms-graph serve --api_key_file)."""
    key = os.environ.get("API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def settings() -> dict[str, Any]:
    """The request fields set in the environment; unset ones take the graph's defaults."""
    fields: dict[str, Any] = {"prompt": os.environ.get("PROMPT", "a red circle on a white background")}
    for env, name, kind in (("MODEL", "model", str), ("SIZE", "size", str), ("STEPS", "num_inference_steps", int),
                            ("N", "n", int), ("SEED", "rng_seed", int), ("GUIDANCE", "guidance_scale", float)):
        if os.environ.get(env):
            fields[name] = kind(os.environ[env])
    return fields


def save(b64: str, path: Path) -> None:
    path.write_bytes(base64.b64decode(b64))
    print(path)


def checked(response: requests.Response) -> dict[str, Any]:
    """The JSON of a successful response; exits with the server's message otherwise."""
    if response.status_code != 200:
        sys.exit(f"HTTP {response.status_code}: {response.text}")
    body: dict[str, Any] = response.json()
    return body


def generate(out: Path) -> None:
    """Text to image: JSON to /v3/images/generations; one PNG per image."""
    response = requests.post(f"{BASE_URL}/v3/images/generations", json=settings(), headers=headers(),
                             timeout=TIMEOUT)
    for i, item in enumerate(checked(response)["data"]):
        save(item["b64_json"], out / f"generate-{i}.png")


def edit(out: Path, *, mask: bool = False) -> None:
    """Image to image (inpainting with ``mask``): multipart/form-data to /v3/images/edits."""
    fields = {name: str(value) for name, value in settings().items()}
    if os.environ.get("STRENGTH"):
        fields["strength"] = os.environ["STRENGTH"]
    image = Path(os.environ.get("IMAGE", ASSETS / "image.png"))
    files = {"image": (image.name, image.read_bytes(), "image/png")}
    if mask:  # white pixels are repainted, black ones kept
        mask_file = Path(os.environ.get("MASK", ASSETS / "mask.png"))
        files["mask"] = (mask_file.name, mask_file.read_bytes(), "image/png")
    response = requests.post(f"{BASE_URL}/v3/images/edits", data=fields, files=files, headers=headers(),
                             timeout=TIMEOUT)
    name = "inpaint" if mask else "edit"
    for i, item in enumerate(checked(response)["data"]):
        save(item["b64_json"], out / f"{name}-{i}.png")


def stream(out: Path) -> None:
    """Streaming: ``"stream": true`` answers with Server-Sent Events, partial images first."""
    body = {**settings(), "stream": True, "partial_images": int(os.environ.get("PARTIAL_IMAGES", "2"))}
    with requests.post(f"{BASE_URL}/v3/images/generations", json=body, headers=headers(), timeout=TIMEOUT,
                       stream=True) as response:
        if response.status_code != 200:
            sys.exit(f"HTTP {response.status_code}: {response.text}")
        completed = False
        for line in response.iter_lines(decode_unicode=True):
            if not line.startswith("data: "):
                continue  # "event: ..." lines repeat the type; blank lines end events
            event = json.loads(line.removeprefix("data: "))
            if event.get("type") == "image_generation.partial_image":
                save(event["b64_json"], out / f"stream-partial-{event['partial_image_index']}.png")
            elif event.get("type") == "image_generation.completed":
                save(event["b64_json"], out / "stream.png")
                completed = True
            else:  # an "error" event: the generation failed after the stream began
                sys.exit(f"stream error: {json.dumps(event)}")
    if not completed:
        sys.exit("the stream ended without an image_generation.completed event")


def main(argv: list[str]) -> None:
    examples = {"generate": generate, "edit": edit, "inpaint": lambda out: edit(out, mask=True), "stream": stream}
    if len(argv) not in (1, 2) or argv[0] not in examples:
        sys.exit(f"usage: {Path(__file__).name} {'|'.join(examples)} [OUT_DIR]")
    out = Path(argv[1] if len(argv) == 2 else os.environ.get("OUT_DIR", "out"))
    out.mkdir(parents=True, exist_ok=True)
    examples[argv[0]](out)


if __name__ == "__main__":
    main(sys.argv[1:])
