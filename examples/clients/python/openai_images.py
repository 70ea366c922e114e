"""Calling ovms-graph with the official ``openai`` Python SDK: generate, edit, inpaint and stream.

    python openai_images.py generate|edit|inpaint|stream [OUT_DIR]

The server speaks OpenAI's images API under /v3, so ``base_url`` is the only change an OpenAI client
needs. Fields that OpenAI does not define (num_inference_steps, rng_seed, guidance_scale, strength)
go in ``extra_body``. Settings come from the environment, as in the curl examples (see
../curl/_common.sh): BASE_URL (default http://127.0.0.1:8000), API_KEY, MODEL, PROMPT, SIZE, STEPS,
N, SEED, GUIDANCE, IMAGE, MASK, STRENGTH, PARTIAL_IMAGES, OUT_DIR (default ./out; the second
argument overrides it). PNGs are written to OUT_DIR and their paths printed. On an error, the
server's message is printed and the exit status is 1.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

import openai

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def client() -> openai.OpenAI:
    base_url = os.environ.get("BASE_URL", "http://127.0.0.1:8000").rstrip("/") + "/v3"
    # The SDK insists on a key; the server ignores it unless started with --api_key_file.
    return openai.OpenAI(base_url=base_url, api_key=os.environ.get("API_KEY") or "unused", max_retries=0,
                         timeout=600)


def common() -> dict[str, Any]:
    """Keyword arguments for images.generate / images.edit from the environment."""
    kwargs: dict[str, Any] = {"prompt": os.environ.get("PROMPT", "a red circle on a white background")}
    if os.environ.get("MODEL"):
        kwargs["model"] = os.environ["MODEL"]
    if os.environ.get("SIZE"):
        kwargs["size"] = os.environ["SIZE"]  # any WIDTHxHEIGHT the graph allows, not only OpenAI's sizes
    if os.environ.get("N"):
        kwargs["n"] = int(os.environ["N"])
    extra: dict[str, Any] = {}
    if os.environ.get("STEPS"):
        extra["num_inference_steps"] = int(os.environ["STEPS"])
    if os.environ.get("SEED"):
        extra["rng_seed"] = int(os.environ["SEED"])
    if os.environ.get("GUIDANCE"):
        extra["guidance_scale"] = float(os.environ["GUIDANCE"])
    if extra:
        kwargs["extra_body"] = extra
    return kwargs


def save(b64: str | None, path: Path) -> None:
    assert b64 is not None, "the server always answers with b64_json"
    path.write_bytes(base64.b64decode(b64))
    print(path)


def generate(out: Path) -> None:
    """Text to image."""
    result = client().images.generate(**common())
    for i, image in enumerate(result.data or []):
        save(image.b64_json, out / f"generate-{i}.png")


def edit(out: Path, *, mask: bool = False) -> None:
    """Image to image; with ``mask`` inpainting (white pixels are repainted, black ones kept)."""
    kwargs = common()
    if os.environ.get("STRENGTH"):
        kwargs["extra_body"] = {**kwargs.get("extra_body", {}), "strength": float(os.environ["STRENGTH"])}
    image = Path(os.environ.get("IMAGE", ASSETS / "image.png"))
    mask_file = Path(os.environ.get("MASK", ASSETS / "mask.png"))
    with image.open("rb") as image_data, mask_file.open("rb") as mask_data:
        if mask:
            kwargs["mask"] = mask_data
        result = client().images.edit(image=image_data, **kwargs)
    name = "inpaint" if mask else "edit"
    for i, item in enumerate(result.data or []):
        save(item.b64_json, out / f"{name}-{i}.png")


def stream(out: Path) -> None:
    """Streaming: partial images while the model denoises, then the result."""
    events = client().images.generate(**common(), stream=True,
                                      partial_images=int(os.environ.get("PARTIAL_IMAGES", "2")))
    completed = False
    for event in events:
        if event.type == "image_generation.partial_image":
            save(event.b64_json, out / f"stream-partial-{event.partial_image_index}.png")
        elif event.type == "image_generation.completed":
            save(event.b64_json, out / "stream.png")
            completed = True
    if not completed:
        sys.exit("the stream ended without an image_generation.completed event")


def main(argv: list[str]) -> None:
    examples = {"generate": generate, "edit": edit, "inpaint": lambda out: edit(out, mask=True), "stream": stream}
    if len(argv) not in (1, 2) or argv[0] not in examples:
        sys.exit(f"usage: {Path(__file__).name} {'|'.join(examples)} [OUT_DIR]")
    out = Path(argv[1] if len(argv) == 2 else os.environ.get("OUT_DIR", "out"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        examples[argv[0]](out)
    except openai.APIStatusError as error:  # the server answered with an error status
        sys.exit(f"HTTP {error.status_code}: {json.dumps(error.body)}")
    except openai.APIError as error:  # e.g. an "error" event after a stream began
        sys.exit(f"error: {error.message}")


if __name__ == "__main__":
    main(sys.argv[1:])
