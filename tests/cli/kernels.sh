#!/usr/bin/env bash
# kvsim kernels: the listing names every registered kernel and its
# parameters, --json is valid JSON, and bad arguments are usage errors.
set -euo pipefail
: "${KVSIM:?set KVSIM to the kvsim binary}"
fail() { echo "FAIL: $*" >&2; exit 1; }

text=$("$KVSIM" kernels)
for word in dense affine hqq quanto kivi dtype fp8-e4m3 residual exec; do
  grep -q -- "$word" <<<"$text" || fail "text listing lacks '$word'"
done

json=$("$KVSIM" kernels --json)
grep -q '"name": "quanto"' <<<"$json" || fail "--json lacks quanto"
# The full structural check needs python3, which the build does not require.
if command -v python3 >/dev/null; then
python3 - "$json" <<'PY' || fail "--json output is not the expected JSON"
import json, sys
items = json.loads(sys.argv[1])
names = [i["name"] for i in items]
assert len(names) == len(set(names)), names
for need in ("dense", "affine", "hqq", "quanto", "kivi"):
    assert need in names, need
for i in items:
    assert i["role"] in ("codec", "preset", "policy"), i
    assert i["description"], i
    for p in i["params"]:
        assert p["name"] and p["description"] and "default" in p, p
PY
fi

set +e
"$KVSIM" kernels --bogus 2>/dev/null; rc=$?
set -e
[ "$rc" -eq 2 ] || fail "unknown option exited $rc, expected 2"
"$KVSIM" kernels --help | grep -q "usage: kvsim kernels" || fail "--help"
echo "kernels.sh: ok"
