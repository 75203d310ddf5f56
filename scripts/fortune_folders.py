"""Write Debian's fortunes (apt-get install fortunes) as text class folders for
`data=text_files`: OUT/<category>/<category>.txt, one folder per category file with at
least MIN_TEXTS fortunes (39 categories, ~15k short texts). The files are copied as
they are (fortunes separated by lines holding only '%'; some are not UTF-8).

    python scripts/fortune_folders.py /tmp/fortall
    pretrainer pipeline -c text_mlm data=text_files data.path=/tmp/fortall \\
        "data.text_split='^%$'" data.labeled_fraction=0.1
"""

import re
import shutil
import sys
from pathlib import Path

BASE = Path("/usr/share/games/fortunes")
MIN_TEXTS = 50


def main(out: Path) -> None:
    if not BASE.is_dir():
        sys.exit(f"{BASE} not found: apt-get install fortunes")
    kept = 0
    for path in sorted(BASE.iterdir()):
        if path.suffix or path.is_symlink() or not path.is_file():  # .dat / .u8 indexes
            continue
        raw = path.read_bytes().decode("latin-1")  # only to count: the copy is byte-exact
        if len(re.findall(r"^%$", raw, flags=re.MULTILINE)) < MIN_TEXTS:
            continue
        (out / path.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out / path.name / f"{path.name}.txt")
        kept += 1
    print(f"{kept} categories -> {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
