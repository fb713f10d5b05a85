"""Generations: each configuration nginx may serve is a complete, immutable directory.

Layout under the nginx root (``<state_dir>/nginx``)::

    current -> generations/g000042      the configuration the master reads (symlink)
    generations/g000041/ g000042/       nginx.conf, conf.d/, upstreams/, certs/ (0700, keys 0600)
    logs/ run/ tmp/                     runtime, shared by every generation

A generation stores the per-load-balancer files in a fixed number of *packs*: the include files
of the load balancers whose name hashes to the same pack are concatenated into one
``conf.d/pack-NN.conf`` (each behind a ``# conf.d/<LoadBalancerId>.conf`` comment), and so are
their upstream data files into ``upstreams/pack-NN.json`` (nginx includes ``conf.d/*.conf`` and
loads ``upstreams/*.json`` either way). An edit then rewrites one pack, whatever the number of
load balancers, and a generation holds a bounded number of files to link.

A new generation hard-links every file that is unchanged from its base generation and writes only
the files that differ, so staging costs grow with the size of the change. Files of a generation are
never modified afterwards: an older generation is always a valid rollback target. The switch is a
``rename`` of a temporary symlink over ``current``, which is atomic.
"""

from __future__ import annotations

import os
import re
import shutil
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .upstreams_channel import DATA_DIR, render_data_file, upstreams_of

RUNTIME_DIRS = ("logs", "run", "tmp")
_GEN = re.compile(r"^g(\d{6,})$")
PACKS = 64  # per packed directory; an edit rewrites 1/PACKS of it
PACKED = {"conf.d": ".conf", DATA_DIR: ".json"}  # directory → suffix of the files packed there
_Members = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Staged:
    """A generation written to disk and what it cost."""

    number: int
    path: Path
    written: tuple[str, ...]  # relative paths written anew (the rest are hard links)


class Generations:
    """The generation directories of one nginx root."""

    def __init__(self, root: Path):
        self.root = root
        self.dir = root / "generations"
        self.current_link = root / "current"
        self._packs: dict[str, list[tuple[_Members, str]]] = {}  # the last two versions of each pack
        self._pack_of: dict[str, str] = {}  # relative path → its pack ('' for a file kept as it is)

    def layout(self, files: Mapping[str, str]) -> dict[str, str]:
        """The files of a configuration (relative path → text) as a generation stores them: the
        per-load-balancer files in packs, everything else as it is. A pack whose members did not
        change is the very same string as before, so that comparing two layouts costs little."""
        out: dict[str, str] = {}
        groups: dict[str, list[tuple[str, str]]] = {}
        if len(self._pack_of) > 4 * len(files) + 1024:  # paths of load balancers long gone
            self._pack_of.clear()
        for rel, text in files.items():
            pack = self._pack_of.get(rel)
            if pack is None:
                pack = self._pack_of[rel] = _pack_name(rel)
            if not pack:
                out[rel] = text
            else:
                groups.setdefault(pack, []).append((rel, text))
        for pack, members in sorted(groups.items()):
            key = tuple(sorted(members))
            versions = self._packs.setdefault(pack, [])
            text = next((t for k, t in versions if k == key), None)
            if text is None:
                text = _pack(pack, key)
                versions.insert(0, (key, text))
                del versions[2:]
            out[pack] = text
        return out

    def prepare(self) -> None:
        """Create the root, the runtime directories and the generations directory (0700)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for name in RUNTIME_DIRS:
            (self.root / name).mkdir(exist_ok=True)
        (self.root / "run").chmod(0o700)  # the upstreams control socket nginx creates there is 0666
        self.dir.mkdir(mode=0o700, exist_ok=True)
        self.dir.chmod(0o700)

    def numbers(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.dir.iterdir() if (m := _GEN.match(p.name)) and p.is_dir())

    def path(self, number: int) -> Path:
        return self.dir / f"g{number:06d}"

    def current(self) -> int | None:
        """The generation ``current`` points at, if any."""
        try:
            target = os.readlink(self.current_link)
        except OSError:
            return None
        m = _GEN.match(Path(target).name)
        return int(m.group(1)) if m and self.path(int(m.group(1))).is_dir() else None

    def files(self, number: int) -> dict[str, str]:
        """Every file of a generation (relative path → text)."""
        base = self.path(number)
        return {
            str(p.relative_to(base)): p.read_text()
            for p in sorted(base.rglob("*"))
            if p.is_file() and not p.is_symlink()
        }

    def stage(self, files: dict[str, str], base: int | None, changed: set[str] | None = None) -> Staged:
        """Write ``files`` (a :meth:`layout`) as a new generation, hard-linking what is unchanged in
        ``base``. With ``changed`` (the paths the caller knows differ from ``base``), the others
        are linked without reading them back."""
        numbers = self.numbers()
        number = (max(numbers) if numbers else 0) + 1
        target = self.path(number)
        tmp = self.dir / f".staging-{number}"
        shutil.rmtree(tmp, ignore_errors=True)
        base_dir = str(self.path(base)) if base is not None else None
        written: list[str] = []
        tmp.mkdir()
        for packed in PACKED:  # present even when empty: nginx includes and Lua lists them at start
            (tmp / packed).mkdir()
        made = {".", *PACKED}
        for rel, text in files.items():
            parent = os.path.dirname(rel) or "."
            if parent not in made:
                (tmp / parent).mkdir(parents=True, exist_ok=True, mode=0o700 if rel.startswith("certs/") else 0o755)
                made.add(parent)
            dest = f"{tmp}/{rel}"
            if base_dir is not None:
                old = f"{base_dir}/{rel}"
                known_same = changed is not None and rel not in changed
                if known_same or _same(old, text.encode()):
                    try:
                        os.link(old, dest)
                        continue
                    except FileNotFoundError:
                        pass
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if rel.startswith("certs/") else 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(text.encode())
            written.append(rel)
        os.rename(tmp, target)
        return Staged(number, target, tuple(written))

    def switch(self, number: int) -> None:
        """Point ``current`` at a generation, atomically."""
        tmp = self.root / ".current.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(os.path.relpath(self.path(number), self.root), tmp)
        os.replace(tmp, self.current_link)

    def discard(self, number: int) -> None:
        shutil.rmtree(self.path(number), ignore_errors=True)

    def prune(self, keep: int, protect: set[int]) -> list[int]:
        """Remove all but the newest ``keep`` generations (never one in ``protect``) and any
        half-written staging directory left by an interrupted agent."""
        for leftover in self.dir.glob(".staging-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        numbers = self.numbers()
        removed = [n for n in numbers[: max(0, len(numbers) - keep)] if n not in protect]
        for n in removed:
            self.discard(n)
        return removed


def _pack_name(rel: str) -> str:
    top, _, name = rel.partition("/")
    suffix = PACKED.get(top)
    if suffix is None or "/" in name or not name.endswith(suffix):
        return ""
    return f"{top}/pack-{zlib.crc32(name[: -len(suffix)].encode()) % PACKS:02d}{suffix}"


def _pack(pack: str, members: _Members) -> str:
    if pack.endswith(".json"):
        return render_data_file(upstreams_of(dict(members)))
    return "".join(f"# {rel}\n{text}" + ("" if text.endswith("\n") else "\n") for rel, text in members)


def _same(path: str, data: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(data) + 1) == data
    except OSError:
        return False
