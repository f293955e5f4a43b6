"""Write the text samples qprune ships, both from python-docs-valid, which the embedded model never
trained on: calibration text from its first half, held-out text from its second half.

    python scripts/make_text_samples.py ../shared/corpus

Calibration text must not be text the model was trained on: the embedded model has partly memorised
python-docs-train (perplexity 27 there against 52 on valid), and a search calibrated on it picks blocks
that fit the memorised text (see the README's quality table). The halves are disjoint, so held-out
figures never see calibration text.

Each sample is 64 passages of about 4 KB taken at evenly spaced places in its half and cut at line
boundaries, so it covers the whole half rather than its first chapter. Deterministic.
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
    lines = (corpus / "python-docs-valid.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    half = len(lines) // 2
    for target, part in (("pydocs-calibration.txt", lines[:half]), ("pydocs-heldout.txt", lines[half:])):
        text = sample("".join(part))
        (ASSETS / target).write_text(text, encoding="utf-8")
        print(f"{target}: {len(text):,} characters from {len(part):,} lines of python-docs-valid.txt")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "corpus"))
