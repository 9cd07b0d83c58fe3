#!/usr/bin/env bash
# Explain the bundled example pair with curl against a running server (`make demo` or `sane serve`).
# The inference token is read from TorchServe's key_file.json (token authorization is on in
# production). Writes out/curl/response.json and the query heat map out/curl/query_heatmap.png.
#   URL=http://127.0.0.1:8080 KEY_FILE=out/serve/key_file.json clients/curl_example.sh
set -euo pipefail
URL=${URL:-http://127.0.0.1:8080}
KEY_FILE=${KEY_FILE:-out/serve/key_file.json}
OUT=${OUT:-out/curl}
mkdir -p "$OUT"

AUTH=()
if [ -f "$KEY_FILE" ]; then
  TOKEN=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["inference"]["key"])' "$KEY_FILE")
  AUTH=(-H "Authorization: Bearer $TOKEN")
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
