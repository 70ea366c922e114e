#!/usr/bin/env bash
# Rebuilds the tiny test models in models/tiny (tools/build_tiny_models.py) and checks the result:
# the manifest is rewritten, and `git diff --stat models/tiny` shows whether anything changed.
#
#   bash tools/build_fixtures.sh [PYTHON] [-- extra build_tiny_models.py args]
#
# PYTHON defaults to $FIXTURES_PYTHON, then .venv-fixtures/bin/python (torch, diffusers,
# transformers, openvino, openvino-tokenizers: `pip install -e '.[fixtures]'`).
# Builds into a temporary folder first, so a failed build never leaves models/tiny half-written.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${FIXTURES_PYTHON:-$repo/.venv-fixtures/bin/python}"
if [[ $# -gt 0 && "$1" != "--" ]]; then
    python="$1"
    shift
fi
[[ "${1:-}" == "--" ]] && shift

if [[ ! -x "$python" ]]; then
    echo "build_fixtures.sh: no fixtures python at $python (create it: pip install -e '.[fixtures]')" >&2
    exit 1
fi

out="$repo/models/tiny"
tmp="$(mktemp -d "$repo/models/.tiny-build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# A full build starts empty; `-- --only NAME` starts from the current files and keeps the others.
if [[ " $* " == *" --only "* && -d "$out" ]]; then cp -a "$out" "$tmp/tiny"; fi
start=$(date +%s)
"$python" "$repo/tools/build_tiny_models.py" --out "$tmp/tiny" "$@"
rm -rf "$out.old"
if [[ -d "$out" ]]; then mv "$out" "$out.old"; fi
mv "$tmp/tiny" "$out"
rm -rf "$out.old"
echo "build_fixtures.sh: models/tiny rebuilt in $(( $(date +%s) - start )) s"

if git -C "$repo" rev-parse --verify -q HEAD >/dev/null 2>&1 \
        && git -C "$repo" ls-files --error-unmatch models/tiny/MANIFEST.json >/dev/null 2>&1; then
    if git -C "$repo" diff --quiet -- models/tiny; then
        echo "build_fixtures.sh: identical to the committed files"
    else
        echo "build_fixtures.sh: differs from the committed files:"
        git -C "$repo" diff --stat -- models/tiny
    fi
fi
