#!/usr/bin/env bash
# Inpainting: POST /v3/images/edits with an image and a mask (white = repaint, black = keep);
# writes OUT_DIR/inpaint-<i>.png.
#
#   PROMPT="a yellow triangle" IMAGE=photo.png MASK=mask.png ./inpaint.sh out
#
# Settings: see _common.sh.
source "$(dirname "$0")/_common.sh"

form_fields
call images/edits inpaint -F "image=@$IMAGE" -F "mask=@$MASK" "${FORM[@]}"
