"""Write Debian's package descriptions as a short-text class-folder set for
`data=text_files data.text_split=line`: one line of a package's description per
text, labeled by the package's archive section; ~44k lines in five classes.

Files are written in latin-1 (characters outside it become '?') and the folder names
hold spaces, brackets and '&', the way users' folders do. Needs apt's package lists
with English descriptions (no internet beyond the Debian mirror apt already uses):

    apt-get update -o Acquire::Languages=en
    python scripts/debian_descriptions.py "/tmp/deb desc"
    pretrainer study -c text_mlm data=text_files "data.path='/tmp/deb desc'" \\
        data.text_split=line 'study.fractions=[0.01,0.1]' study.seeds=2

Measured in docs/few-labels.md ("Text: Debian package descriptions").
"""

import subprocess
import sys
from pathlib import Path

# archive section -> class folder; math is folded into science
FOLDERS = {"games": "games [fun]", "science": "science & math", "math": "science & math",
           "sound": "sound", "net": "net work", "graphics": "graphics"}
MIN_CHARS = 16  # shorter lines are mostly package names and "." paragraph marks


def _sections() -> dict:
    """package -> section, from apt-cache's view of the package lists."""
    out = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True,
                         check=True).stdout
    section = {}
    for block in out.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines()
                      if ": " in line and not line.startswith(" "))
        if "Package" in fields and "Section" in fields:
            section[fields["Package"]] = fields["Section"].split("/")[-1]
    return section


def _descriptions():
    """(package, [description lines]) from the English Translation index."""
    lists = sorted(Path("/var/lib/apt/lists").glob("*_debian_dists_*_main_i18n_Translation-en*"))
    if not lists:
        sys.exit("No Translation-en lists: run apt-get update -o Acquire::Languages=en")
    for path in lists:
        raw = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", str(path)],
                             capture_output=True, text=True, check=True).stdout
        for block in raw.split("\n\n"):
            package, lines = None, []
            for line in block.splitlines():
                if line.startswith("Package: "):
                    package = line[len("Package: "):]
                elif line.startswith("Description-en: "):
                    lines.append(line[len("Description-en: "):])
                elif line.startswith(" ") and line.strip() != ".":
                    lines.append(line.strip())
            if package:
                yield package, lines


def main(out: Path) -> None:
    section = _sections()
    seen, texts = set(), {}
    for package, lines in _descriptions():
        folder = FOLDERS.get(section.get(package, ""))
        if folder is None or package in seen:
            continue
        seen.add(package)
        kept = texts.setdefault(folder, {})  # a dict keeps order and drops repeats
        kept.update((t, None) for t in lines if len(t) >= MIN_CHARS)
    for folder, kept in sorted(texts.items()):
        (out / folder).mkdir(parents=True, exist_ok=True)
        (out / folder / "descriptions.txt").write_bytes(
            "\n".join(kept).encode("latin-1", "replace"))
        print(f"{folder}: {len(kept)} lines")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
