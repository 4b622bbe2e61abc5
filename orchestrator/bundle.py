"""A playbook frozen with every file it references, so a scheduled event cannot change under it.

The bundle is a zip of the playbook and its referenced files (paths relative to the playbook);
its hash is SHA-256 over the sorted (path, bytes) pairs, so the same files give the same hash
wherever they are. A worker thaws the bundle into a private directory and loads it with the
same loader `validate` uses.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from orchestrator.errors import OrchestratorError
from orchestrator.load import LoadedPlaybook, load_playbook


@dataclass(frozen=True)
class Bundle:
    entry: str
    files: dict[str, bytes]

    @property
    def hash(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.files):
            data = self.files[name]
            h.update(name.encode() + b"\0" + len(data).to_bytes(8, "big") + data)
        return h.hexdigest()

    def to_bytes(self) -> bytes:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for name in sorted(self.files):
                info = zipfile.ZipInfo(name, date_time=(2000, 1, 1, 0, 0, 0))  # same files -> same bytes
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, self.files[name])
        return out.getvalue()

    @classmethod
    def from_bytes(cls, entry: str, data: bytes) -> Bundle:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return cls(entry, {name: z.read(name) for name in z.namelist()})


def referenced_files(loaded: LoadedPlaybook) -> list[str]:
    """Every file the playbook names, relative to it."""
    pb = loaded.playbook
    names = [s.file for s in pb.audience.segments if s.file]
    if pb.audience.exclusions.file:
        names.append(pb.audience.exclusions.file)
    names.append(pb.path.poster.guides)
    if not pb.path.poster.layout.background.startswith("#"):
        names.append(pb.path.poster.layout.background)
    names += [c.image for c in pb.path.join.codes]
    if pb.path.join.welcome_file:
        names.append(pb.path.join.welcome_file)
    for msg in ([pb.path.preview] if pb.path.preview else []) + list(pb.path.reminders):
        if msg.copy_file:
            names.append(msg.copy_file)
        if msg.email and msg.email.html_file:
            names.append(msg.email.html_file)
    return sorted(set(names))


def freeze(path: str | Path, loaded: LoadedPlaybook) -> Bundle:
    """The playbook at `path` (already loaded as `loaded`) and its files, as they are now."""
    path = Path(path)
    files = {path.name: path.read_bytes()}
    for rel in referenced_files(loaded):
        pure = PurePosixPath(rel.replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts:
            raise OrchestratorError(f"{rel}: a scheduled playbook may only reference files in its own folder")
        files[str(pure)] = (path.parent / rel).read_bytes()
    return Bundle(path.name, files)


_THAWED: dict[str, LoadedPlaybook] = {}
_LOCK = threading.Lock()  # jobs due together thaw one copy, not one each


def thaw(digest: str, entry: str, data: Callable[[], bytes], *, members: bool = True) -> LoadedPlaybook:
    """The frozen playbook with hash `digest`, loaded; `data()` fetches the bundle only when this
    process has not loaded it yet (a frozen playbook never changes, so it is kept).

    A worker thaws without the members (`members=False`): it reads them from the store.
    """
    with _LOCK:
        return _thaw_locked(digest, entry, data, members)


def _thaw_locked(digest: str, entry: str, data: Callable[[], bytes], members: bool) -> LoadedPlaybook:
    key = f"{digest}:{'members' if members else 'plan'}"
    loaded = _THAWED.get(key)
    if loaded is None:
        bundle = Bundle.from_bytes(entry, data())
        if bundle.hash != digest:
            raise OrchestratorError(f"the stored playbook does not match its hash {digest[:12]}: the store was altered")
        root = Path(tempfile.mkdtemp(prefix="orch-event-"))
        for name, content in bundle.files.items():
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        loaded = load_playbook(root / entry, members=members)
        if len(_THAWED) >= 16:
            _THAWED.pop(next(iter(_THAWED)))
        _THAWED[key] = loaded
    return loaded
