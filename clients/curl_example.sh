#!/usr/bin/env bash
# Explain the bundled example pair with curl through the gateway (`make demo` or `sane deploy up`),
# with an API key from `sane deploy keys add NAME`. Writes out/curl/response.json and the query heat
# map out/curl/query_heatmap.png.
#   SANE_API_KEY=$(.venv/bin/sane deploy keys add curl --quiet) clients/curl_example.sh
#   (URL=http://127.0.0.1:8080 by default; without a key it also works against a bare `sane serve`)
set -euo pipefail
URL=${URL:-http://127.0.0.1:8080}
OUT=${OUT:-out/curl}
mkdir -p "$OUT"

AUTH=()
if [ -n "${SANE_API_KEY:-}" ]; then
  AUTH=(-H "Authorization: Bearer $SANE_API_KEY")
fi

# 1) multipart form: image files and an optional JSON `options` field.
curl -sS --fail-with-body "${AUTH[@]}" \
  -F query=@examples/query.jpg -F reference=@examples/reference.jpg \
  -F 'options={"method": "rise", "mode": "both", "n_masks": 500, "seed": 0}' \
  "$URL/predictions/saliency" -o "$OUT/response.json"

# 2) the same as a JSON body with base64 images (here to /explanations: same handler, same bytes).
python3 - "$OUT/request.json" <<'PY'
import base64, json, sys
payload = {name: base64.b64encode(open(f"examples/{name}.jpg", "rb").read()).decode() for name in ("query", "reference")}
payload["options"] = {"method": "rise", "mode": "both", "n_masks": 500, "seed": 0}
json.dump(payload, open(sys.argv[1], "w"))
PY
curl -sS --fail-with-body "${AUTH[@]}" -H 'Content-Type: application/json' --data @"$OUT/request.json" \
  "$URL/explanations/saliency" -o "$OUT/response_json_body.json"

# 3) a bad request gets its own 400 naming the field.
curl -sS "${AUTH[@]}" -F query=@examples/query.jpg -F reference=@examples/reference.jpg \
  -F 'options={"n_masks": 1000000}' "$URL/predictions/saliency"; echo

# Decode the heat map (PNG, base64) and print the similarity.
python3 - "$OUT" <<'PY'
import base64, json, sys
out = sys.argv[1]
response = json.load(open(f"{out}/response.json"))
open(f"{out}/query_heatmap.png", "wb").write(base64.b64decode(response["saliency"]["query"]["png"]))
print(f"similarity {response['similarity']:.4f}; wrote {out}/query_heatmap.png")
PY
