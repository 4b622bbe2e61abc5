"""Posters for review: `orchestrator posters FILE --out DIR`, their QR codes and their Chinese text."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
import zxingcpp
from click.testing import CliRunner
from PIL import Image

from orchestrator import poster
from orchestrator.cli import cli
from orchestrator.validate import check

EXAMPLES = Path(__file__).resolve().parents[2] / "playbooks"
SPRING = EXAMPLES / "spring-reactivation.yaml"
PUBLIC = "https://live.example.cn"


def decode(png: bytes) -> list[str]:
    return [r.text for r in zxingcpp.read_barcodes(Image.open(io.BytesIO(png))) if r.format == zxingcpp.BarcodeFormat.QRCode]


def spring_copy(tmp_path: Path) -> Path:
    shutil.copytree(EXAMPLES / "spring-reactivation", tmp_path / "spring-reactivation")
    target = tmp_path / "spring-reactivation.yaml"
    target.write_text(SPRING.read_text(encoding="utf-8"), encoding="utf-8")
    return target


def test_the_spring_posters_carry_each_guides_link_in_a_readable_qr(tmp_path: Path) -> None:
    out = tmp_path / "posters"
    result = CliRunner().invoke(cli, ["posters", str(SPRING), "--out", str(out)], env={"ORCH_PUBLIC_URL": PUBLIC})
    assert result.exit_code == 0, result.output
    loaded, _diags = check(SPRING)
    assert loaded is not None
    variants = [v.id for v in loaded.playbook.path.poster.variants]
    expected = {f"{g.id}-{v}.png": f"{PUBLIC}/s/draft-{g.channel_code}-{v}" for g in loaded.guides for v in variants}
    assert len(expected) == len(loaded.guides) * 2 >= 8
    assert {p.name for p in out.glob("*.png")} == set(expected)
    for name, link in expected.items():
        png = (out / name).read_bytes()
        assert Image.open(io.BytesIO(png)).size == (1080, 1920)  # Moments-sized
        assert decode(png) == [link], name
    index = (out / "index.html").read_text(encoding="utf-8")
    assert all(f'src="{name}"' in index for name in expected)
    assert f"{len(expected)} posters" in result.output


def test_the_chinese_title_is_drawn_with_real_glyphs_not_boxes() -> None:
    loaded, _diags = check(SPRING)
    assert loaded is not None
    title = loaded.playbook.path.poster.layout.title
    assert title is not None and poster.missing_glyphs(title) == []
    distinct = set(title)
    shapes = {poster._shape(str(poster.FONT), ch) for ch in distinct}
    assert len(shapes) == len(distinct)  # every character its own shape: no two are the missing-glyph box
    assert poster.missing_glyphs("龘𪚥") == ["龘", "𪚥"]  # outside GB 2312: reported, not silently boxed

    spec = next(s for _g, _v, s in poster.specs(loaded, None, {k: "https://x/s/1" for k in _keys(loaded)}))
    other = poster.render(poster.PosterSpec(**{**_fields(spec), "title": "口口口口口口口口"}))
    assert poster.render(spec) != other  # the title is really printed


def _keys(loaded: object) -> list[tuple[str, str]]:
    return [(g.id, v.id) for g in loaded.guides for v in loaded.playbook.path.poster.variants]  # type: ignore[attr-defined]


def _fields(spec: poster.PosterSpec) -> dict[str, object]:
    return {f: getattr(spec, f) for f in spec.__dataclass_fields__}


def test_a_guide_name_the_font_cannot_draw_is_warned_about(tmp_path: Path) -> None:
    target = spring_copy(tmp_path)
    guides = target.parent / "spring-reactivation" / "guides.csv"
    guides.write_text(guides.read_text(encoding="utf-8-sig").replace("张雨桐", "张𪚥桐"), encoding="utf-8")
    result = CliRunner().invoke(cli, ["posters", str(target), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "𪚥" in result.output and "guide g01" in result.output and "ORCH_POSTER_FONT" in result.output


def test_a_background_that_is_not_a_picture_is_a_clear_error(tmp_path: Path) -> None:
    target = spring_copy(tmp_path)
    (target.parent / "bg.jpg").write_text("not a picture", encoding="utf-8")
    target.write_text(target.read_text(encoding="utf-8").replace('background: "#2F5D50"', "background: bg.jpg"), encoding="utf-8")
    result = CliRunner().invoke(cli, ["posters", str(target), "--out", str(tmp_path / "out")])
    assert result.exit_code != 0
    assert "bg.jpg is not a readable image" in str(result.exception or "") + result.output
    assert not list((tmp_path / "out").glob("*.png"))


def test_a_photo_background_is_cropped_to_the_poster(tmp_path: Path) -> None:
    target = spring_copy(tmp_path)
    Image.new("RGB", (400, 300), (200, 30, 30)).save(target.parent / "bg.png")
    target.write_text(target.read_text(encoding="utf-8").replace('background: "#2F5D50"', "background: bg.png"), encoding="utf-8")
    result = CliRunner().invoke(cli, ["posters", str(target), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    img = Image.open(tmp_path / "out" / "g01-A.png").convert("RGB")
    assert img.size == (1080, 1920)
    r, g, b = img.getpixel((5, 900))  # type: ignore[misc]
    assert r > 100 and g < 40  # the photo's red, shaded


def test_unknown_incentives_on_the_poster_are_refused_at_their_line(tmp_path: Path) -> None:
    target = spring_copy(tmp_path)
    text = target.read_text(encoding="utf-8").replace('      text_colour: "#FFFFFF"\n', '      text_colour: "#FFFFFF"\n      incentives: [laoke, nosuch]\n')
    target.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(cli, ["posters", str(target), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    line = text[: text.index("nosuch")].count("\n") + 1
    assert f"spring-reactivation.yaml:{line}:" in result.output and "nosuch" in result.output


@pytest.mark.parametrize("text", ["老客回店价95折，整点再抽真丝枕套", "付定金抽免单：三款主推尾款全免！", "满3000再减300（限会员）。"])
def test_wrapped_lines_never_start_with_closing_punctuation(text: str) -> None:
    face = poster._font(str(poster.FONT), 56)
    for width in range(120, 900, 37):
        lines = poster.wrap(text, face, width)
        assert "".join(lines) == text
        assert all(line and line[0] not in poster.NO_BREAK_BEFORE for line in lines[1:])
