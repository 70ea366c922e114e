#!/usr/bin/env bash
# Image to image: POST /v3/images/edits with the image as multipart/form-data; writes
# OUT_DIR/edit-<i>.png.
#
#   PROMPT="a green circle" IMAGE=photo.png STRENGTH=0.7 ./edit.sh out
#
# Settings: see _common.sh.
source "$(dirname "$0")/_common.sh"

form_fields
call images/edits edit -F "image=@$IMAGE" "${FORM[@]}"
