# Shared by the curl examples; sourced, never run. Needs bash, curl >= 7.76, grep, sed and base64.
#
# Environment (every variable is optional):
#   BASE_URL   the server, without /v3 (default http://127.0.0.1:8000)
#   API_KEY    sent as "Authorization: Bearer $API_KEY" when set (ovms-graph serve --api_key_file)
#   MODEL      the "model" field: a graph name or a LoRA alias; omitted when unset, which works when
#              the server serves a single graph
#   PROMPT     default "a red circle on a white background"
#   SIZE       WIDTHxHEIGHT, e.g. 512x512; the graph's default when unset (edits: the image's size)
#   STEPS      num_inference_steps; the graph's default when unset
#   N          images per prompt
#   SEED       rng_seed, for repeatable images
#   GUIDANCE   guidance_scale (the demo model of `make run` draws best at about 3)
#   IMAGE      input image of edit.sh and inpaint.sh (default ../assets/image.png)
#   MASK       mask of inpaint.sh, white = repaint (default ../assets/mask.png)
#   STRENGTH   how much an edit may change the image, 0..1
#   OUT_DIR    where PNGs are written (default ./out); the first argument overrides it

set -euo pipefail

BASE_URL=${BASE_URL:-http://127.0.0.1:8000}
BASE_URL=${BASE_URL%/}
PROMPT=${PROMPT:-a red circle on a white background}
ASSETS=$(cd "$(dirname "${BASH_SOURCE[0]}")/../assets" && pwd)
IMAGE=${IMAGE:-$ASSETS/image.png}
MASK=${MASK:-$ASSETS/mask.png}
OUT_DIR=${1:-${OUT_DIR:-out}}
mkdir -p "$OUT_DIR"

# json_string TEXT: TEXT as a JSON string literal (escapes backslashes, quotes and newlines).
json_string() {
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  printf '"%s"' "$s"
}

# json_body [MEMBER...]: the JSON request body from PROMPT, the optional settings and extra members.
json_body() {
  local body
  body="\"prompt\": $(json_string "$PROMPT")"
  if [ -n "${MODEL:-}" ]; then body+=", \"model\": $(json_string "$MODEL")"; fi
  if [ -n "${SIZE:-}" ]; then body+=", \"size\": $(json_string "$SIZE")"; fi
  if [ -n "${STEPS:-}" ]; then body+=", \"num_inference_steps\": $STEPS"; fi
  if [ -n "${N:-}" ]; then body+=", \"n\": $N"; fi
  if [ -n "${SEED:-}" ]; then body+=", \"rng_seed\": $SEED"; fi
  if [ -n "${GUIDANCE:-}" ]; then body+=", \"guidance_scale\": $GUIDANCE"; fi
  for member in "$@"; do body+=", $member"; done
  printf '{%s}' "$body"
}

# form_fields: sets FORM to the multipart text fields of an edit, as curl arguments.
form_fields() {
  FORM=(--form-string "prompt=$PROMPT")
  if [ -n "${MODEL:-}" ]; then FORM+=(--form-string "model=$MODEL"); fi
  if [ -n "${SIZE:-}" ]; then FORM+=(--form-string "size=$SIZE"); fi
  if [ -n "${STEPS:-}" ]; then FORM+=(--form-string "num_inference_steps=$STEPS"); fi
  if [ -n "${N:-}" ]; then FORM+=(--form-string "n=$N"); fi
  if [ -n "${SEED:-}" ]; then FORM+=(--form-string "rng_seed=$SEED"); fi
  if [ -n "${GUIDANCE:-}" ]; then FORM+=(--form-string "guidance_scale=$GUIDANCE"); fi
  if [ -n "${STRENGTH:-}" ]; then FORM+=(--form-string "strength=$STRENGTH"); fi
}

# post ROUTE CURL_ARGS...: POST to $BASE_URL/v3/ROUTE; the body goes to stdout. On an HTTP error,
# curl prints the server's JSON error and fails.
post() {
  local route=$1
  shift
  if [ -n "${API_KEY:-}" ]; then set -- -H "Authorization: Bearer $API_KEY" "$@"; fi
  curl -sS --fail-with-body "$@" "$BASE_URL/v3/$route"
}

# b64_values FIELD: every "FIELD": "value" string value of the JSON on stdin, one per line.
b64_values() {
  grep -o "\"$1\": *\"[^\"]*\"" | sed 's/.*"\([^"]*\)"$/\1/'
}

# save_images RESPONSE_FILE NAME: writes each image of an images response to OUT_DIR/NAME-<i>.png.
save_images() {
  local i=0 b64
  while IFS= read -r b64; do
    printf '%s' "$b64" | base64 -d > "$OUT_DIR/$2-$i.png"
    echo "$OUT_DIR/$2-$i.png"
    i=$((i + 1))
  done < <(b64_values b64_json < "$1")
  if [ "$i" -eq 0 ]; then
    echo "no image in the response: $(head -c 300 "$1")" >&2
    return 1
  fi
}

# call ROUTE NAME CURL_ARGS...: post, then save the images; prints the server's error and fails
# on an HTTP error.
call() {
  local route=$1 name=$2 response
  shift 2
  response=$(mktemp)
  if ! post "$route" -o "$response" "$@"; then
    cat "$response" >&2
    echo >&2
    rm -f "$response"
    return 1
  fi
  save_images "$response" "$name" || { rm -f "$response"; return 1; }
  rm -f "$response"
}
