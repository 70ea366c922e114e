#!/usr/bin/env bash
# Text to image: POST /v3/images/generations with a JSON body; writes OUT_DIR/generate-<i>.png.
#
#   BASE_URL=http://localhost:8000 PROMPT="a blue square on a gray background" SIZE=512x512 ./generate.sh out
#
# Settings: see _common.sh.
source "$(dirname "$0")/_common.sh"

call images/generations generate -H "Content-Type: application/json" -d "$(json_body)"
