"""Write the text samples qprune ships: calibration text (from python-docs-train, which the embedded
model was trained on) and held-out text (from python-docs-valid, which it never saw).

    python scripts/make_text_samples.py ../shared/corpus

Each sample is 64 passages of about 4 KB taken at evenly spaced places in the source and cut at line
boundaries, so it covers the whole of the documentation rather than its first chapter. Deterministic.
"""

from __future__ import annotations

import sys
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "src" / "qprune" / "assets" / "text"
PASSAGES, PASSAGE_CHARS = 64, 4096


def sample(text: str) -> str:
    lines = text.splitlines(keepends=True)
    starts = [round(k * len(lines) / PASSAGES) for k in range(PASSAGES)]
    passages = []
    for start in starts:
        passage, size = [], 0
        for line in lines[start:]:
            if size >= PASSAGE_CHARS:
                break
            passage.append(line)
            size += len(line)
        passages.append("".join(passage).strip("\n"))
    return "\n\n".join(passages) + "\n"


def main(corpus: Path) -> None:
    ASSETS.mkdir(parents=True, exist_ok=True)
    for source, target in (("python-docs-train.txt", "pydocs-calibration.txt"), ("python-docs-valid.txt", "pydocs-heldout.txt")):
        text = sample((corpus / source).read_text(encoding="utf-8"))
        (ASSETS / target).write_text(text, encoding="utf-8")
        print(f"{target}: {len(text):,} characters from {source}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "corpus"))
