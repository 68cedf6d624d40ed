#!/usr/bin/env python3
"""Validates rendered manifests against CRDs' openAPIV3Schema with `jsonschema`.

    crd_validate.py SCHEMAS.json FILE...

SCHEMAS.json maps `GROUP/VERSION/KIND` to the `openAPIV3Schema` of that version, as
taken from the project's CRD YAML (Istio: istio/api
`kubernetes/customresourcedefinitions.gen.yaml`; Envoy Gateway: envoyproxy/gateway
`charts/gateway-helm/charts/crds/crds/generated/*.yaml`). Unknown fields are errors
here (the API server would prune them silently: a misspelt field would do nothing).
Documents of other kinds are skipped. Exit 1 on any error, printed one per line.
"""
import json
import sys

import jsonschema
import yaml


def strict(schema):
    if isinstance(schema, dict):
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        for v in schema.values():
            strict(v)
    elif isinstance(schema, list):
        for v in schema:
            strict(v)
    return schema


def main():
    schemas = json.load(open(sys.argv[1]))
    bad = 0
    for path in sys.argv[2:]:
        for doc in yaml.safe_load_all(open(path)):
            if not doc:
                continue
            key = f"{doc['apiVersion']}/{doc['kind']}"
            if key not in schemas:
                continue
            schema = strict(json.loads(json.dumps(schemas[key])))
            for name, kind in (("metadata", "object"), ("apiVersion", "string"), ("kind", "string")):
                schema["properties"].setdefault(name, {"type": kind})
            for e in jsonschema.Draft7Validator(schema).iter_errors(doc):
                print(f"{path}: {key}: {list(e.absolute_path)}: {e.message}")
                bad += 1
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
