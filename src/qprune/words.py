"""How qprune writes sizes and layer lists for people: `human_bytes(1_234_567)` is "1.23 MB",
`format_layers((3, 5))` is "3, 5" (and "none" when empty). Decimal units, as the hub shows sizes."""

from __future__ import annotations


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def format_layers(layers: tuple[int, ...]) -> str:
    return ", ".join(map(str, layers)) or "none"
