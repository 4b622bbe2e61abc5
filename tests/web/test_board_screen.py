"""A board viewer is sent the whole snapshot once, then only what changed; applying the patches gives the newest snapshot."""

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from web.board import Screen


def snap(**parts: Any) -> str:
    return json.dumps(parts, ensure_ascii=False, separators=(",", ":"))


def apply(state: dict[str, Any], text: str) -> dict[str, Any]:
    message = json.loads(text)
    if "patch" not in message:
        return message
    out = {**state, **message["patch"]}
    for key in message.get("gone", []):
        out.pop(key)
    return out


def test_a_viewer_with_the_previous_version_gets_only_the_changed_parts() -> None:
    screen = Screen()
    screen.take(snap(title="双十二", funnel=[{"step": "scanned", "count": 1}], comments=[]))
    assert json.loads(screen.message_for(0) or "") == {"title": "双十二", "funnel": [{"step": "scanned", "count": 1}], "comments": []}
    screen.take(snap(title="双十二", funnel=[{"step": "scanned", "count": 2}], comments=[]))
    assert json.loads(screen.message_for(1) or "") == {"patch": {"funnel": [{"step": "scanned", "count": 2}]}}
    assert screen.message_for(2) is None, "a viewer that has the newest gets nothing"


def test_a_part_that_disappears_is_named_gone() -> None:
    screen = Screen()
    screen.take(snap(a=1, next_draw={"at": "20:00"}))
    screen.take(snap(a=1))
    assert json.loads(screen.message_for(1) or "") == {"patch": {}, "gone": ["next_draw"]}


def test_a_viewer_too_far_behind_gets_the_whole_snapshot() -> None:
    screen = Screen()
    for n in range(Screen.KEEP + 3):
        screen.take(snap(n=n, title="t"))
    assert json.loads(screen.message_for(1) or "") == {"n": Screen.KEEP + 2, "title": "t"}
    assert json.loads(screen.message_for(screen.version - 1) or "") == {"patch": {"n": Screen.KEEP + 2}}


values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5), lambda inner: st.lists(inner, max_size=3), max_leaves=6)
snapshots = st.dictionaries(st.sampled_from(["title", "funnel", "comments", "draws", "now", "next_draw"]), values, max_size=6)


@settings(max_examples=200, deadline=None)  # the first example pays for imports
@given(st.lists(snapshots, min_size=1, max_size=12), st.data())
def test_patches_bring_any_viewer_to_the_newest_snapshot(history: list[dict[str, Any]], data: st.DataObject) -> None:
    screen = Screen()
    state: dict[str, Any] = {}
    has = 0
    for snapshot in history:
        screen.take(snap(**snapshot))
        if data.draw(st.booleans()):  # this viewer takes some snapshots and skips others
            text = screen.message_for(has)
            if text is not None:
                state = apply(state, text)
            has = screen.version
    text = screen.message_for(has)
    if text is not None:
        state = apply(state, text)
    assert state == history[-1]
