#!/usr/bin/env python3
"""Regenerates testdata/conformance/expected/rust-json/*.json from the reference tool's YAML.

The YAML is loaded with PyYAML's BaseLoader so every scalar stays a string (a YAML 1.1 loader
would read `2177_64` as the integer 217764). The Rust conformance test reads the JSON twins,
which keeps a YAML parser out of the project's dependencies.
"""
import json
import pathlib

import yaml

root = pathlib.Path(__file__).resolve().parent.parent / "testdata" / "conformance" / "expected"
out = root / "rust-json"
out.mkdir(exist_ok=True)
for p in sorted((root / "rust").glob("*.yaml")):
    data = yaml.load(p.read_text(), Loader=yaml.BaseLoader) or []
    (out / (p.name[: -len(".yaml")] + ".json")).write_text(json.dumps(data, indent=1) + "\n")
