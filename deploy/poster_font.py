"""Make the poster font shipped in orchestrator/fonts/ from Noto Sans CJK SC Bold (SIL OFL 1.1).

The full font is 16 MB per weight; posters need the GB 2312 characters (6,763 hanzi, enough for
names and copy in practice), ASCII, CJK punctuation and full-width forms: about 3 MB. Characters
outside the subset are reported by `orchestrator posters` and can be covered with ORCH_POSTER_FONT
(any OpenType/TrueType file, e.g. the full Noto Sans CJK).

    apt-get install fonts-noto-cjk && pip install fonttools
    python deploy/poster_font.py /usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc
"""
from __future__ import annotations

import sys
from pathlib import Path

from fontTools import subset
from fontTools.ttLib import TTCollection

OUT = Path(__file__).resolve().parent.parent / "orchestrator" / "fonts" / "NotoSansSC-Bold-GB2312.otf"


def characters() -> set[int]:
    chars = set(range(0x20, 0x7F)) | {0xA5, 0xB7, 0xD7}
    for hi in range(0xA1, 0xF8):
        for lo in range(0xA1, 0xFF):
            try:
                chars.add(ord(bytes([hi, lo]).decode("gb2312")))
            except UnicodeDecodeError:
                pass
    return chars | set(range(0x2010, 0x2070)) | set(range(0x3000, 0x3040)) | set(range(0xFF00, 0xFFF0))


def main(ttc: str) -> None:
    fonts = TTCollection(ttc).fonts
    font = next(f for f in fonts if f["name"].getDebugName(1) == "Noto Sans CJK SC")
    options = subset.Options()
    options.layout_features = ["*"]
    options.name_IDs = ["*"]
    options.notdef_outline = True
    options.hinting = False
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=characters())
    subsetter.subset(font)
    font.save(OUT)
    print(f"{OUT.name}: {OUT.stat().st_size:,} bytes")


if __name__ == "__main__":
    main(sys.argv[1])
