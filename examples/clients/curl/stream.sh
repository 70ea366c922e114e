#!/usr/bin/env bash
# Streaming: POST /v3/images/generations with "stream": true and read Server-Sent Events as they
# come. Writes each partial image to OUT_DIR/stream-partial-<index>.png and the result to
# OUT_DIR/stream.png.
#
#   PARTIAL_IMAGES=2 STEPS=20 ./stream.sh out
#
# Settings: see _common.sh; PARTIAL_IMAGES (0..3, default 2).
source "$(dirname "$0")/_common.sh"

rm -f "$OUT_DIR"/stream.png "$OUT_DIR"/stream-partial-*.png
body=$(json_body '"stream": true' "\"partial_images\": ${PARTIAL_IMAGES:-2}")

post images/generations -N -H "Content-Type: application/json" -d "$body" | while IFS= read -r line || [ -n "$line" ]; do
  case $line in
    "data: "*"\"type\":\"image_generation.partial_image\""*)
      index=$(grep -o '"partial_image_index":[0-9]*' <<< "$line" | cut -d: -f2)
      b64_values b64_json <<< "$line" | base64 -d > "$OUT_DIR/stream-partial-$index.png"
      echo "$OUT_DIR/stream-partial-$index.png"
      ;;
    "data: "*"\"type\":\"image_generation.completed\""*)
      b64_values b64_json <<< "$line" | base64 -d > "$OUT_DIR/stream.png"
      echo "$OUT_DIR/stream.png"
      ;;
    "event: "* | "") ;;
    *) # an error: a JSON body before the stream began, or an "error" event during it
      printf '%s\n' "${line#data: }" >&2
      exit 1
      ;;
  esac
done

if [ ! -s "$OUT_DIR/stream.png" ]; then
  echo "the stream ended without an image_generation.completed event" >&2
  exit 1
fi
