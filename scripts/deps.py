"""Print pretrainer's (and keras-hub's) runtime dependencies, one per line.

    python scripts/deps.py --without-tensorflow

`make install-tpu` installs tensorflow-tpu first, then pretrainer, keras-hub and
tensorflow-text with --no-deps, then this list: every other dependency, without the
distributions that would pull the CPU `tensorflow` wheel over tensorflow-tpu.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
TENSORFLOW = {"tensorflow", "tensorflow-text", "keras-hub", "tensorboard", "tf-keras"}
# keras-hub's own runtime dependencies besides TensorFlow (keras-hub 0.32's metadata)
KERAS_HUB_DEPS = ["absl-py", "numpy", "packaging", "regex", "rich", "kagglehub", "kagglesdk",
                  "sentencepiece", "tokenizers"]


def name_of(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()


def dependencies(without_tensorflow: bool) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = list(project["dependencies"]) + KERAS_HUB_DEPS
    if without_tensorflow:
        deps = [d for d in deps if name_of(d) not in TENSORFLOW]
    seen, out = set(), []
    for d in deps:
        if name_of(d) not in seen:
            seen.add(name_of(d))
            out.append(d)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--without-tensorflow", action="store_true")
    args = ap.parse_args()
    print("\n".join(d.replace(" ", "") for d in dependencies(args.without_tensorflow)))


if __name__ == "__main__":
    main()
