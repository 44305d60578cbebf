"""Upstream roots (vfs.sources.upstream): every built-in mapping rule, precedence between candidates,
custom prefixes and patterns, upstream-only files, and escapes through symlinks and ``..``.

Real directories and files under tmp_path; no mocks. Serving is checked through the real open path
(``open_upstream``: O_NOFOLLOW, /proc/self/fd re-check, size check, pread in a thread).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import trio

from vfs.config import UpstreamConfig
from vfs.datasets import KNOWN_UPSTREAMS
from vfs.errors import VfsError
from vfs.sources.upstream import UpstreamDir, UpstreamFile, Upstreams, open_checked, open_upstream


def up(
    name: str, root: Path, *, prefix: str | None = None, pattern: str | None = None, prefer: str = "upstream"
):
    return UpstreamConfig(
        name=name, prefix=prefix or KNOWN_UPSTREAMS[name], root=root, pattern=pattern, prefer=prefer
    )


def put(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data or path.name.encode())
    return path


def resolve(configs, wanted, **kw):
    return Upstreams(configs).resolve(wanted, **kw)


def real(path: Path) -> str:
    return os.path.realpath(path)


def test_charades_inner_dir_then_root(tmp_path: Path) -> None:
    root = tmp_path / "charades"
    a = put(root / "Charades_v1_480" / "AB123.mp4", b"from 480")
    b = put(root / "CD456.mp4", b"flat")  # a root that *is* the extracted folder also works
    put(root / "Charades_v1" / "AB123.mp4", b"full resolution: loses to the 480p copy")
    res = resolve(
        [up("charades", root)],
        [
            "academic_source/Charades/AB123.mp4",
            "academic_source/Charades/CD456.mp4",
            "academic_source/Charades/NOPE0.mp4",
        ],
    )
    assert res.files["academic_source/Charades/AB123.mp4"].real_path == real(a)
    assert res.files["academic_source/Charades/AB123.mp4"].size == len(b"from 480")
    assert res.files["academic_source/Charades/CD456.mp4"].real_path == real(b)
    assert "academic_source/Charades/NOPE0.mp4" not in res.files


def test_charades_upstream_only_files_are_listed(tmp_path: Path) -> None:
    root = tmp_path / "charades"
    put(root / "Charades_v1_480" / "AB123.mp4")
    extra = put(root / "Charades_v1_480" / "ZZ999.mp4", b"not in any annotation")
    put(root / "Charades_v1_480" / "notes.txt")
    put(root / "Charades_v1_480" / "sub" / "XX000.mp4")  # deeper than the layout: not a Charades video
    res = resolve([up("charades", root)], ["academic_source/Charades/AB123.mp4"])
    assert set(res.extras) == {"academic_source/Charades/ZZ999.mp4"}
    assert res.extras["academic_source/Charades/ZZ999.mp4"].real_path == real(extra)
    assert resolve([up("charades", root)], ["academic_source/Charades/AB123.mp4"], extras=False).extras == {}


def test_nextqa_both_annotation_forms(tmp_path: Path) -> None:
    root = tmp_path / "nextqa"
    v = put(root / "NExTVideo" / "1234" / "5678901234.mp4")
    res = resolve(
        [up("nextqa", root)],
        ["academic_source/NextQA/1234/5678901234.mp4", "NextQA/NExTVideo/1234/5678901234.mp4"],
    )
    assert res.files["academic_source/NextQA/1234/5678901234.mp4"].real_path == real(v)
    assert res.files["NextQA/NExTVideo/1234/5678901234.mp4"].real_path == real(v)


def test_activitynet_directories_and_extensions(tmp_path: Path) -> None:
    root = tmp_path / "anet"
    train = put(root / "v1-2" / "train" / "v_train.mkv")
    val = put(root / "v1-2" / "val" / "v_val.webm")
    tv = put(root / "v1-3" / "train_val" / "v_both.mp4")
    put(root / "v1-2" / "train" / "v_both.mp4", b"v1-3/train_val is looked at first")
    mkv_over_webm = put(root / "v1-3" / "train_val" / "v_ext.mkv")
    put(root / "v1-3" / "train_val" / "v_ext.webm")
    res = resolve(
        [up("activitynet", root)],
        [
            "academic_source/activitynet/v_train.mp4",
            "academic_source/activitynet/v_val.mp4",
            "academic_source/activitynet/v1-3/train_val/v_both.mp4",
            "academic_source/activitynet/v_both.mp4",
            "academic_source/activitynet/v_ext.mp4",
            "ActivityNet-QA/activitynet/train/v_train.mp4",
            "ActivityNet-QA/activitynet/train/v1-3/train_val/v_val.mp4",
            "academic_source/activitynet/v_none.mp4",
        ],
    )
    got = {p: f.real_path for p, f in res.files.items()}
    assert got == {
        "academic_source/activitynet/v_train.mp4": real(train),
        "academic_source/activitynet/v_val.mp4": real(val),
        "academic_source/activitynet/v1-3/train_val/v_both.mp4": real(tv),
        "academic_source/activitynet/v_both.mp4": real(tv),
        "academic_source/activitynet/v_ext.mp4": real(mkv_over_webm),
        "ActivityNet-QA/activitynet/train/v_train.mp4": real(train),
        "ActivityNet-QA/activitynet/train/v1-3/train_val/v_val.mp4": real(val),
    }


def test_ego4d_clips_before_full_scale(tmp_path: Path) -> None:
    root = tmp_path / "ego4d"
    clip = put(root / "v2" / "clips" / "u1.mp4", b"clip")
    put(root / "v2" / "full_scale" / "u1.mp4", b"the whole video")
    full = put(root / "v2" / "full_scale" / "u2.mp4", b"only full")
    res = resolve([up("ego4d", root)], ["academic_source/ego4d/u1.mp4", "academic_source/ego4d/u2.mp4"])
    assert res.files["academic_source/ego4d/u1.mp4"].real_path == real(clip)
    assert res.files["academic_source/ego4d/u2.mp4"].real_path == real(full)


def test_youcook2_perceptiontest_and_llava_hound(tmp_path: Path) -> None:
    yc = put(tmp_path / "yc" / "101" / "abcdefghijk" / "split_3.mp4")
    pt = put(tmp_path / "pt" / "valid_videos" / "video_0042.mp4")
    frames = tmp_path / "lh" / "shareVideoGPTV" / "frames" / "all_frames" / "v_id1"
    for i in range(3):
        put(frames / f"c01_{i:04d}.jpg", bytes([i]) * (10 + i))
    put(frames / ".hidden")
    (tmp_path / "lh" / "shareVideoGPTV" / "frames" / "all_frames" / "empty").mkdir()
    configs = [
        up("youcook2", tmp_path / "yc"),
        up("perceptiontest", tmp_path / "pt"),
        up("llava_hound", tmp_path / "lh"),
    ]
    res = resolve(
        configs,
        [
            "academic_source/youcook2/101/abcdefghijk/split_3.mp4",
            "perception_test/videos/some/long/dir/video_0042.mp4",
            "shareVideoGPTV/frames/all_frames/v_id1",
            "shareVideoGPTV/frames/all_frames/empty",
        ],
    )
    assert res.files["academic_source/youcook2/101/abcdefghijk/split_3.mp4"].real_path == real(yc)
    assert res.files["perception_test/videos/some/long/dir/video_0042.mp4"].real_path == real(pt)
    d = res.dirs["shareVideoGPTV/frames/all_frames/v_id1"]
    assert isinstance(d, UpstreamDir)
    assert [(n, s) for n, _, s in d.files] == [
        ("c01_0000.jpg", 10),
        ("c01_0001.jpg", 11),
        ("c01_0002.jpg", 12),
    ]
    assert "shareVideoGPTV/frames/all_frames/empty" not in res.dirs  # no frames: not available


def test_custom_prefix_and_pattern(tmp_path: Path) -> None:
    plain = put(tmp_path / "mine" / "a" / "b.mp4")
    put(tmp_path / "mine" / "x" / "y" / "z.mp4")
    pat = put(tmp_path / "pat" / "videos" / "c" / "d.mp4.orig")
    configs = [
        up("mine", tmp_path / "mine", prefix="my_videos"),
        up("pat", tmp_path / "pat", prefix="patterned", pattern="videos/{rest}.orig"),
    ]
    res = resolve(configs, ["my_videos/a/b.mp4", "patterned/c/d.mp4", "patterned/c/none.mp4"])
    assert res.files["my_videos/a/b.mp4"].real_path == real(plain)
    assert res.files["patterned/c/d.mp4"].real_path == real(pat)
    assert "patterned/c/none.mp4" not in res.files
    # A custom root's other files are upstream-only files at prefix/<rest>.
    assert set(res.extras) == {"my_videos/x/y/z.mp4"}


def test_a_known_name_with_a_pattern_uses_only_the_pattern(tmp_path: Path) -> None:
    put(tmp_path / "c" / "Charades_v1_480" / "AB123.mp4")
    mine = put(tmp_path / "c" / "mp4" / "AB123.mp4")
    res = resolve(
        [up("charades", tmp_path / "c", pattern="mp4/{rest}")], ["academic_source/Charades/AB123.mp4"]
    )
    assert res.files["academic_source/Charades/AB123.mp4"].real_path == real(mine)


def test_longest_prefix_wins(tmp_path: Path) -> None:
    general = put(tmp_path / "general" / "Charades" / "AB123.mp4", b"general")
    put(tmp_path / "general" / "Charades" / "CD456.mp4", b"general")
    specific = put(tmp_path / "charades" / "Charades_v1_480" / "AB123.mp4", b"specific")
    ups = Upstreams(
        [
            up("everything", tmp_path / "general", prefix="academic_source"),
            up("charades", tmp_path / "charades"),
        ]
    )
    res = ups.resolve(["academic_source/Charades/AB123.mp4", "academic_source/Charades/CD456.mp4"])
    assert res.files["academic_source/Charades/AB123.mp4"].real_path == real(specific)
    # The Charades entry owns its prefix: the general root does not serve below it, even when it has the file.
    assert "academic_source/Charades/CD456.mp4" not in res.files
    assert general.exists()


@pytest.mark.allow_log(r"outside the root; refused")
def test_symlinks_escaping_the_root_are_refused(tmp_path: Path) -> None:
    outside = put(tmp_path / "outside" / "secret.mp4", b"secret")
    (tmp_path / "outside" / "dir").mkdir()
    put(tmp_path / "outside" / "dir" / "DD000.mp4", b"secret too")
    root = tmp_path / "charades"
    inner = root / "Charades_v1_480"
    inner.mkdir(parents=True)
    (inner / "EE000.mp4").symlink_to(outside)  # file symlink out of the root
    (inner / "FF000.mp4").symlink_to("../../outside/secret.mp4")  # relative, through ..
    ok = put(root / "store" / "GG000.mp4", b"fine")
    (inner / "GG000.mp4").symlink_to("../store/GG000.mp4")  # a symlink that stays inside: served
    (root / "Charades_v1").symlink_to(tmp_path / "outside" / "dir")  # a directory symlink out of the root
    wanted = [f"academic_source/Charades/{n}.mp4" for n in ("EE000", "FF000", "GG000", "DD000")]
    res = resolve([up("charades", root)], wanted)
    assert set(res.files) == {"academic_source/Charades/GG000.mp4"}
    assert res.files["academic_source/Charades/GG000.mp4"].real_path == real(ok)
    assert set(res.escaped) == {wanted[0], wanted[1], wanted[3]}
    assert res.extras == {}  # escaping entries are not upstream-only files either
    for f in res.files.values():
        assert f.real_path.startswith(real(root) + "/")


@pytest.mark.allow_log(r"outside the root; refused")
def test_dotdot_in_a_path_cannot_leave_the_root(tmp_path: Path) -> None:
    put(tmp_path / "outside.mp4", b"secret")
    root = tmp_path / "root"
    put(root / "inside.mp4")
    # Annotation paths are normalised before they get here; this is the defence behind that check.
    passwd = "p/" + os.path.relpath("/etc/passwd", root)  # p/../../../../etc/passwd
    res = resolve([up("mine", root, prefix="p")], ["p/../outside.mp4", passwd, "p/inside.mp4"])
    assert set(res.files) == {"p/inside.mp4"}
    assert set(res.escaped) == {"p/../outside.mp4", passwd}


def test_non_regular_files_are_not_served(tmp_path: Path) -> None:
    root = tmp_path / "c" / "Charades_v1_480"
    root.mkdir(parents=True)
    os.mkfifo(root / "FIFO0.mp4")
    (root / "DIR00.mp4").mkdir()
    res = resolve(
        [up("charades", tmp_path / "c")],
        ["academic_source/Charades/FIFO0.mp4", "academic_source/Charades/DIR00.mp4"],
    )
    assert res.files == {} and res.dirs == {} and res.extras == {}


# ------------------------------------------------------------------------------------------ serving


def _file(tmp_path: Path, data: bytes) -> tuple[Path, UpstreamFile]:
    root = tmp_path / "root"
    f = put(root / "Charades_v1_480" / "AB123.mp4", data)
    res = resolve([up("charades", root)], ["academic_source/Charades/AB123.mp4"])
    return f, res.files["academic_source/Charades/AB123.mp4"]


async def test_served_bytes_and_deleted_while_open(tmp_path: Path) -> None:
    data = bytes(range(256)) * 1000
    f, uf = _file(tmp_path, data)
    handle = await open_upstream(uf.ref(), trio.CapacityLimiter(2))
    try:
        assert await handle.read(1000, 5000) == data[1000:6000]
        f.unlink()  # the fd keeps the bytes (POSIX): a reader that holds the file is not broken
        assert await handle.read(0, len(data) + 10) == data
        assert await handle.read(len(data), 10) == b""
    finally:
        await handle.close()
    with pytest.raises(VfsError) as info:
        await open_upstream(uf.ref(), trio.CapacityLimiter(2))
    assert info.value.errno == errno.ENOENT


def test_open_rechecks_symlinks_size_and_root(tmp_path: Path) -> None:
    f, uf = _file(tmp_path, b"12345")
    fd = open_checked(uf.real_path, uf.root_real, uf.size)
    os.close(fd)
    f.write_bytes(b"123456")  # changed since start-up: st_size would lie
    with pytest.raises(VfsError) as info:
        open_checked(uf.real_path, uf.root_real, uf.size)
    assert info.value.errno == errno.ESTALE
    f.unlink()
    f.symlink_to(put(tmp_path / "outside.mp4", b"12345"))  # a symlink swapped in after start-up
    with pytest.raises(VfsError) as info:
        open_checked(uf.real_path, uf.root_real, uf.size)
    assert info.value.errno == errno.EACCES
    # A directory on the way swapped for a symlink out of the root: the opened file is outside.
    inner = f.parent
    os.rename(inner, tmp_path / "moved")
    put(tmp_path / "elsewhere" / "AB123.mp4", b"12345")
    inner.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(VfsError) as info:
        open_checked(uf.real_path, uf.root_real, uf.size)
    assert info.value.errno == errno.EACCES
