"""Generations store the per-load-balancer files in packs: an edit rewrites one pack."""

from __future__ import annotations

from pathlib import Path

from clbagent.nginx.generations import PACKS, Generations
from clbagent.nginx.upstreams_channel import Member, Upstream, render_data_file, upstreams_of


def _files(n: int, weight: int = 10) -> dict[str, str]:
    files = {"nginx.conf": "events {}\n", "certs/c.crt": "PEM\n"}
    for i in range(n):
        files[f"conf.d/lb-{i}.conf"] = f"# lb-{i}\nserver {{ listen 127.0.0.1:{8000 + i}; }}\n"
        member = Member(f"10.0.0.{i % 250 + 1}:80", weight if i == n // 2 else 10)
        files[f"upstreams/lb-{i}.json"] = render_data_file({f"u_{i}": Upstream((member,))})
    return files


def test_layout_packs_the_per_load_balancer_files_and_keeps_the_rest(tmp_path: Path) -> None:
    files = _files(300)
    layout = Generations(tmp_path).layout(files)
    packs = [p for p in layout if p.startswith(("conf.d/", "upstreams/"))]
    assert len(packs) <= 2 * PACKS and all("/pack-" in p for p in packs)
    assert layout["nginx.conf"] is files["nginx.conf"] and layout["certs/c.crt"] is files["certs/c.crt"]
    conf = "".join(t for p, t in layout.items() if p.startswith("conf.d/"))
    assert all(conf.count(f"# conf.d/lb-{i}.conf\n") == 1 for i in range(300))
    held = upstreams_of({p: t for p, t in layout.items() if p.startswith("upstreams/")})
    assert held == upstreams_of(files)  # the packed data files hold every upstream once


def test_an_edit_rewrites_one_pack_and_links_the_rest(tmp_path: Path) -> None:
    gens = Generations(tmp_path)
    gens.prepare()
    before, after = _files(300), _files(300, weight=20)
    old, new = gens.layout(before), gens.layout(after)
    changed = {p for p in new if new[p] is not old[p] and new[p] != old[p]}
    assert len(changed) == 1 and next(iter(changed)).startswith("upstreams/pack-")
    again = gens.layout(before)
    assert all(again[p] is old[p] for p in old)  # the served layout's packs are kept, not rebuilt
    first = gens.stage(old, None)
    second = gens.stage(gens.layout(after), first.number, changed)
    assert second.written == tuple(sorted(changed))
    assert gens.files(second.number) == new and gens.files(first.number) == old  # the older one is intact
    unchanged = next(p for p in new if p.startswith("conf.d/"))
    assert (first.path / unchanged).stat().st_ino == (second.path / unchanged).stat().st_ino  # a hard link
