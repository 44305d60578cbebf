"""Streaming annotation parsing, path validation and repo-path classification (vfs.catalog.annotations)."""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfs.catalog.annotations import (
    AnnotationError,
    BadPath,
    VideoRecord,
    annotation_kind,
    iter_video_records,
    malformed_hint,
    normalise_video_path,
    video_directory,
    write_filtered,
)
from vfs.errors import VfsError

REPO_ROOT = Path(__file__).resolve().parents[2]


class Trickle(io.BytesIO):
    """A file that hands out at most a few bytes per read, so every escape gets cut by a chunk boundary."""

    def __init__(self, data: bytes, *, seed: int = 0, max_chunk: int = 7, seekable: bool = True) -> None:
        super().__init__(data)
        self._rng = random.Random(seed)
        self._max_chunk = max_chunk
        self._seekable = seekable
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0 or size > self._max_chunk:
            size = self._rng.randint(1, self._max_chunk)
        data = super().read(size)
        self.bytes_read += len(data)
        return data

    def seekable(self) -> bool:
        return self._seekable

    def seek(self, offset: int, whence: int = 0) -> int:
        if not self._seekable:
            raise io.UnsupportedOperation("seek")
        return super().seek(offset, whence)


def parse(data: bytes, **kwargs: object) -> list[VideoRecord]:
    fileobj = Trickle(data, **kwargs) if kwargs else io.BytesIO(data)  # type: ignore[arg-type]
    return list(iter_video_records(fileobj, file_label="test.json"))


def record(video: object, **extra: object) -> dict[str, object]:
    return {
        "id": "RW587",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat happens? café 🎬"},
            {"from": "gpt", "value": 'A "door" opens.\nThen \\ nothing.'},
        ],
        "data_source": "0_30_s_academic_v0_1",
        "video": video,
        **extra,
    }


# --- normalise_video_path ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("academic_source/Charades/RW587.mp4", "academic_source/Charades/RW587.mp4"),
        ("a//b", "a/b"),
        ("./a", "a"),
        ("a/./b/", "a/b"),
        (".//a///./b", "a/b"),
        ("...", "..."),  # a name, not a parent reference
        ("a/..b/c..", "a/..b/c.."),
        ("shareVideoGPTV/frames/all_frames/v_-0Ps8Qs2ESA", "shareVideoGPTV/frames/all_frames/v_-0Ps8Qs2ESA"),
        ("ünïcode/Café.mp4", "ünïcode/Café.mp4"),
        ("a/" + "x" * 255, "a/" + "x" * 255),
        ("é" * 127 + ".", "é" * 127 + "."),  # 255 bytes exactly
    ],
)
def test_normalise_accepts_and_collapses(raw: str, expected: str) -> None:
    assert normalise_video_path(raw) == expected
    assert normalise_video_path(expected) == expected


def test_normalise_keeps_unicode_forms_apart() -> None:
    nfc, nfd = "caf\u00e9.mp4", "cafe\u0301.mp4"
    assert normalise_video_path(nfc) == nfc
    assert normalise_video_path(nfd) == nfd
    assert normalise_video_path(nfc) != normalise_video_path(nfd)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("../../etc/passwd", "'..' component"),
        ("a/../b", "'..' component"),
        ("a/..", "'..' component"),
        ("..", "'..' component"),
        ("/etc/passwd", "absolute path"),
        ("//server/share", "absolute path"),
        ("a\x00b.mp4", "NUL byte"),
        ("a/\udc80.mp4", "not valid UTF-8"),
        ("a/\ud83d.mp4", "not valid UTF-8"),
        ("academic_source\\Charades\\X.mp4", "backslash"),
        ("..\\..\\windows", "backslash"),
        ("C:\\x.mp4", "backslash"),
        ("a/b\nFORGED LOG LINE", "control character"),
        ("a\x1b[31m.mp4", "control character"),
        ("a\x9b.mp4", "control character"),
        ("", "empty path"),
        (".", "empty path"),
        ("./", "empty path"),
        ("a/" + "x" * 256, "component over 255 bytes"),
        ("é" * 128, "component over 255 bytes"),  # 128 characters, 256 bytes
        ("/".join(["x" * 200] * 21), "path over 4096 bytes"),
        (None, "not a string"),
        (42, "not a string"),
        (b"a.mp4", "not a string"),
        (["a.mp4"], "not a string"),
        ({"path": "a.mp4"}, "not a string"),
    ],
)
def test_normalise_rejects_hostile_values(raw: object, reason: str) -> None:
    with pytest.raises(BadPath) as caught:
        normalise_video_path(raw)
    assert caught.value.reason == reason
    assert isinstance(caught.value, ValueError)


PATHISH = st.lists(
    st.sampled_from(["a", "é", "/", ".", "..", "\\", "\x00", "\n", "\udc80", "🎬", " ", "x" * 130]),
    max_size=40,
).map("".join)


@settings(max_examples=600, deadline=None)
@given(raw=st.one_of(PATHISH, st.text(max_size=300)))
def test_normalised_paths_never_escape_a_root(raw: str) -> None:
    try:
        path = normalise_video_path(raw)
    except BadPath as bad:
        assert bad.reason
        return
    root = "/srv/mount/root"
    resolved = os.path.normpath(os.path.join(root, path))
    assert resolved.startswith(root + "/")
    assert resolved == os.path.join(root, path)  # nothing left for normpath to collapse
    parts = path.split("/")
    assert all(part not in ("", ".", "..") for part in parts)
    assert all(len(part.encode("utf-8")) <= 255 for part in parts)
    assert len(path.encode("utf-8")) <= 4096
    assert "\x00" not in path and "\\" not in path
    assert normalise_video_path(path) == path


# --- malformed_hint ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "liwei_youtube_videos/videos/youtube_video_2024/ytb_a-B_c9dE_fG.mp4",
        "academic_source/Charades/RW587.mp4",
        "academic_source/activitynet/v1-3/train_val/v_-abc_DEF123.mp4",
        "academic_source/NextQA/1025/4829364117.mp4",
        "academic_source/youcook2/101/abcDEF_1234/split_3.mp4",
        "academic_source/ego4d/0a1b2c3d-0000-4000-8000-123456789abc.mp4",
        "NextQA/NExTVideo/1025/4829364117.mp4",
        "ActivityNet-QA/activitynet/train/v_abcDEF-1234.mp4",
        "perception_test/videos/video_0042.mp4",
        "perception_test/videos/video_0042.MP4",
        "shareVideoGPTV/frames/all_frames/v_-0Ps8Qs2ESA",
        "some_future_family/clip",  # unknown family: benefit of the doubt
    ],
)
def test_malformed_hint_is_none_for_plausible_paths(path: str) -> None:
    assert malformed_hint(path) is None


@pytest.mark.parametrize(
    ("path", "needles"),
    [
        ("liwei_youtube_videos/videos/ytb_a-B_c9dE_fG", ["youtube_video_2024/ level", "no video extension"]),
        ("liwei_youtube_videos/videos/ytb_a-B_c9dE_fG.mp4", ["youtube_video_2024/ level"]),
        ("liwei_youtube_videos/videos/youtube_video_2024/ytb_a-B_c9dE_fG", ["no video extension"]),
        ("liwei_youtube_videos/videos/youtube_video_2024/x/ytb_q.mp4", ["live directly in"]),
        ("ytb_a-B_c9dE_fG.mp4", ["live directly in"]),
        ("academic_source/Charades/RW587", ["no video extension"]),
        ("NextQA/NExTVideo/1025/4829364117", ["no video extension"]),
    ],
)
def test_malformed_hint_explains_dirty_records(path: str, needles: list[str]) -> None:
    hint = malformed_hint(path)
    assert hint is not None and hint.startswith("malformed record: ")
    for needle in needles:
        assert needle in hint
    assert repr(path) in hint


# --- repo path classification ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("repo_path", "kind"),
    [
        ("0_30_s_academic_v0_1/0_30_s_academic_v0_1_cap_processed.json", "caption"),
        ("0_30_s_academic_v0_1/0_30_s_academic_oe_v0_1_qa_processed.json", "open_ended"),
        ("0_30_s_academic_v0_1/0_30_s_academic_mc_v0_1_qa_processed.json", "multi_choice"),
        ("2_3_m_youtube_v0_1/2_3_m_youtube_mc_v0_1_qa_processed.json", "multi_choice"),
        ("1_2_m_activitynetqa/1_2_m_activitynetqa_oe_qa_processed.json", "open_ended"),
        ("30_60_s_nextqa/30_60_s_nextqa_mc_qa_processed.json", "multi_choice"),
        ("30_60_s_perceptiontest/30_60_s_perceptiontest_mc_qa_processed.json", "multi_choice"),
        ("llava_hound/sharegptvideo_qa_255k_processed.json", "open_ended"),
        ("0_30_s_nextqa/0_30_s_nextqa_extra_processed.json", "other"),
        ("README.md", None),
        (".gitattributes", None),
        ("0_30_s_academic_v0_1/0_30_s_academic_v0_1_videos_1.tar.gz", None),
        ("0_30_s_youtube_v0_1/0_30_s_youtube_v0_1_cap_processed.parquet", None),
        ("0_30_s_youtube_v0_1/train-00000-of-00001.parquet", None),
        ("gpt4o_caption_prompt/caption_prompt_processed.json", None),
        ("gpt4o_qa_prompt/qa_prompt.json", None),
        ("0_30_s_academic_v0_1/nested/0_30_s_academic_v0_1_cap_processed.json", None),
        ("0_30_s_academic_v0_1_cap_processed.json", None),
        ("0_30_s_academic_v0_1/_processed.json", None),
        ("0_30_s_academic_v0_1/x_processed.json.lock", None),
    ],
)
def test_annotation_kind(repo_path: str, kind: str | None) -> None:
    assert annotation_kind(repo_path) == kind


@pytest.mark.parametrize(
    ("repo_path", "directory"),
    [
        ("0_30_s_academic_v0_1/0_30_s_academic_v0_1_videos_3.tar.gz", "0_30_s_academic_v0_1"),
        ("2_3_m_youtube_v0_1/2_3_m_youtube_mc_v0_1_qa_processed.json", "2_3_m_youtube_v0_1"),
        ("30_60_s_activitynetqa", "30_60_s_activitynetqa"),
        ("llava_hound/sharegptvideo_qa_255k_processed.json", None),
        ("gpt4o_caption_prompt/x.json", None),
        ("README.md", None),
        ("academic_source/Charades/RW587.mp4", None),
    ],
)
def test_video_directory(repo_path: str, directory: str | None) -> None:
    assert video_directory(repo_path) == directory


# --- iter_video_records ------------------------------------------------------------------------------


def test_records_carry_paths_problems_and_positions() -> None:
    items = [
        record("academic_source/Charades/RW587.mp4"),
        record(".//academic_source/Charades/RW587.mp4", id=17),
        record("../../etc/passwd"),
        record("/etc/passwd", data_source=["x"]),
        record("a\x00b.mp4"),
        record("academic_source/Charades/" + "A" * 300 + ".mp4"),
        record(["academic_source/Charades/RW587.mp4"]),
        record(None),
        record("liwei_youtube_videos/videos/ytb_abc-DEF_123"),
        {"id": "no-video", "conversations": []},
        ["not", "an", "object"],
        "just a string",
        None,
        record("shareVideoGPTV/frames/all_frames/v_x"),
    ]
    got = parse(json.dumps(items, ensure_ascii=False).encode("utf-8"))
    assert [r.index for r in got] == list(range(len(items)))
    summary = [(r.path, r.problem) for r in got]
    assert summary[0] == ("academic_source/Charades/RW587.mp4", None)
    assert summary[1] == ("academic_source/Charades/RW587.mp4", None)
    assert got[1].record_id == "17" and got[1].raw_video == ".//academic_source/Charades/RW587.mp4"
    assert summary[2] == (None, "'..' component")
    assert summary[3] == (None, "absolute path") and got[3].data_source is None
    assert summary[4] == (None, "NUL byte") and got[4].raw_video == "a\x00b.mp4"
    assert summary[5] == (None, "component over 255 bytes")
    assert summary[6] == (None, "not a string") and got[6].raw_video == ["academic_source/Charades/RW587.mp4"]
    assert summary[7] == (None, "not a string")
    assert got[8].path == "liwei_youtube_videos/videos/ytb_abc-DEF_123"
    assert got[8].problem is not None and got[8].problem.startswith("malformed record:")
    assert not got[8].rejected and got[2].rejected
    assert summary[9] == (None, "missing video field") and got[9].record_id == "no-video"
    assert summary[10] == (None, "not an object (list)")
    assert summary[11] == (None, "not an object (str)")
    assert summary[12] == (None, "not an object (null)")
    assert summary[13] == ("shareVideoGPTV/frames/all_frames/v_x", None)
    assert got[0].record_id == "RW587" and got[0].data_source == "0_30_s_academic_v0_1"


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "empty file"),
        (b" \n\t ", "empty file"),
        (b'{"video": "a.mp4"}', "top level is a JSON object"),
        (b'"a.mp4"', "not a JSON array"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n", "Git LFS pointer"),
        (b"\x1f\x8b\x08\x00", "not a JSON array"),
        (b'[{"video": "a.mp4"}', "truncated"),
        (b'[{"video": "a.mp4"},', "truncated"),
        (b'[{"video": "a.m', "truncated"),
        (b'[{"video": "a.mp4"}] trailing', "malformed"),
        (b'[{"video": "a.mp4"}][]', "malformed"),
        (b'[{"video": "a.mp4",}]', "malformed"),
        (b'[{"video": "a.mp4"} {"video": "b.mp4"}]', "malformed"),
        (b'[{"video": "a\xff\xfe.mp4"}]', "malformed"),
        (b'[{"video": "a\x00b"}]', "malformed"),  # a raw control byte in a string is not JSON
        (b"[NaN]", "malformed"),
        (b"[1e999]", "malformed"),
    ],
)
def test_malformed_files_raise_annotation_error(data: bytes, needle: str) -> None:
    with pytest.raises(AnnotationError) as caught:
        parse(data)
    assert needle in str(caught.value)
    assert str(caught.value).startswith("test.json: ")
    assert isinstance(caught.value, VfsError) and caught.value.errno == 5


def test_error_names_the_position() -> None:
    good = json.dumps([record(f"academic_source/Charades/A{i:04d}.mp4") for i in range(2000)]).encode()
    bad = good[:-1] + b"}"  # the last byte breaks, far past the first chunk
    with pytest.raises(AnnotationError) as caught:
        parse(bad)
    assert caught.value.records_before == 2000
    assert caught.value.byte_offset is not None and 0 < caught.value.byte_offset <= len(bad)
    assert f"near byte {caught.value.byte_offset}" in str(caught.value)


def test_every_truncation_is_an_error_never_a_short_success() -> None:
    items = [
        record("academic_source/Charades/RW587.mp4"),
        record("a/\udc80.mp4"),  # exercises the exact-parser fallback too
        {"video": "x.mp4", "n": [1, 2.5, -3e10, True, None, {"k": "\\u0041"}]},
    ]
    doc = json.dumps(items).encode("ascii")
    for cut in range(len(doc)):
        with pytest.raises(AnnotationError):
            parse(doc[:cut])
    assert len(parse(doc)) == 3


def test_bom_and_whitespace_are_accepted() -> None:
    doc = b"\xef\xbb\xbf \n\t" + json.dumps([record("a.mp4")]).encode() + b"\n\n"
    assert [r.path for r in parse(doc)] == ["a.mp4"]
    assert [r.path for r in parse(doc, max_chunk=1)] == ["a.mp4"]
    assert parse(b"[]") == [] and parse(b" [ ] ") == []


def test_surrogate_pairs_stay_on_the_fast_path(caplog: pytest.LogCaptureFixture) -> None:
    # json.dumps writes emoji as surrogate pair escapes; they are common and must not cost the slow parser.
    doc = json.dumps([record("clips/🎬_\U0001f600.mp4") for _ in range(50)]).encode("ascii")
    assert b"\\ud83c\\udfac" in doc
    for max_chunk in (1, 2, 3, 5, 11, 64):
        got = parse(doc, max_chunk=max_chunk, seed=max_chunk)
        assert {r.path for r in got} == {"clips/🎬_\U0001f600.mp4"}
    assert "exact" not in caplog.text


@pytest.mark.parametrize("max_chunk", [1, 2, 3, 6, 7, 13, 4096])
def test_lone_surrogates_are_exact_not_replaced(max_chunk: int, caplog: pytest.LogCaptureFixture) -> None:
    # The C parser turns a lone "\ud83d" into "?" (a plausible wrong path) and aborts on "\udc80".
    items = [
        record("academic_source/Charades/RW587.mp4"),
        record("academic_source/Charades/\ud83d.mp4"),
        record("academic_source/Charades/\udc80.mp4"),
        record("academic_source/Charades/\ud83d\\ud83d.mp4"),  # lone high then an escaped backslash
        record("tail/\U0001f600.mp4"),
    ]
    doc = json.dumps(items).encode("ascii")
    with caplog.at_level(logging.INFO, logger="vfs"):
        got = parse(doc, max_chunk=max_chunk, seed=max_chunk)
    assert [r.index for r in got] == [0, 1, 2, 3, 4]
    assert [r.raw_video for r in got] == [item["video"] for item in items]
    assert [r.problem for r in got[1:4]] == ["not valid UTF-8"] * 3
    assert got[0].path == "academic_source/Charades/RW587.mp4" and got[4].path == "tail/\U0001f600.mp4"
    assert "exact (slower) parser" in caplog.text


def test_escaped_backslash_before_u_is_not_a_surrogate(caplog: pytest.LogCaptureFixture) -> None:
    # '\\udc80' in JSON text is a literal backslash then "udc80": no surrogate, no fallback.
    doc = b'[{"video": "a\\\\udc80.mp4"}, {"video": "b\\\\\\\\udc80"}]'
    for max_chunk in (1, 2, 5, 100):
        got = parse(doc, max_chunk=max_chunk)
        assert [r.raw_video for r in got] == ["a\\udc80.mp4", "b\\\\udc80"]
        assert [r.problem for r in got] == ["backslash", "backslash"]
    assert "exact" not in caplog.text


def test_lone_surrogate_in_a_pipe_is_a_clear_error() -> None:
    doc = json.dumps([record("a.mp4"), record("b/\udc80.mp4")]).encode("ascii")
    got: list[VideoRecord] = []
    with pytest.raises(AnnotationError) as caught:
        got.extend(iter_video_records(Trickle(doc, seekable=False), file_label="pipe.json"))
    assert "seekable" in str(caught.value) and "surrogate" in str(caught.value)
    assert [r.path for r in got] == ["a.mp4"]


def test_huge_integers_are_exact() -> None:
    big = 123456789012345678901234567890
    doc = json.dumps([{"video": "a.mp4", "n": 1}, {"video": "b.mp4", "n": big}]).encode()
    out = io.BytesIO()
    assert write_filtered(io.BytesIO(doc), out, lambda r: True) == (2, 0)
    assert json.loads(out.getvalue())[1]["n"] == big
    assert [r.path for r in parse(doc)] == ["a.mp4", "b.mp4"]


def test_parsing_streams_instead_of_loading_the_file() -> None:
    one = json.dumps(record("academic_source/Charades/RW587.mp4")).encode() + b","

    class Endless(io.RawIOBase):
        """A JSON array that never ends: a parser that loads the file first would never return."""

        def __init__(self) -> None:
            self.bytes_read = 0
            self._pending = b"["

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            size = 65536 if size is None or size < 0 else size
            while len(self._pending) < size:
                self._pending += one * 64
            data, self._pending = self._pending[:size], self._pending[size:]
            self.bytes_read += len(data)
            return data

    source = Endless()
    records = iter_video_records(source, file_label="endless.json")  # type: ignore[arg-type]
    first = list(itertools.islice(records, 5000))
    records.close()  # type: ignore[attr-defined]
    assert len(first) == 5000 and all(r.path == "academic_source/Charades/RW587.mp4" for r in first)
    assert source.bytes_read < 5000 * len(one) + 2 * 1024 * 1024


# --- write_filtered ----------------------------------------------------------------------------------


def test_write_filtered_keeps_only_what_is_asked() -> None:
    items = [
        record(f"academic_source/Charades/A{i:04d}.mp4", extra_text=f"résumé {i} 🎬") for i in range(300)
    ]
    items.insert(10, "not an object")  # type: ignore[arg-type]
    items.append(record("x/\udc80.mp4"))
    src = io.BytesIO(json.dumps(items).encode("ascii"))
    dst = io.BytesIO()
    kept, dropped = write_filtered(src, dst, lambda r: r["video"].endswith(("0.mp4", "5.mp4", "\udc80.mp4")))
    out = dst.getvalue()
    parsed = json.loads(out)
    expected = [
        it
        for it in items
        if isinstance(it, dict) and str(it["video"]).endswith(("0.mp4", "5.mp4", "\udc80.mp4"))
    ]
    assert parsed == expected
    assert (kept, dropped) == (len(expected), len(items) - len(expected))
    assert "résumé 0 🎬".encode() in out  # ensure_ascii=False: non-ASCII written as UTF-8
    assert b"\\udc80" in out  # a lone surrogate has no UTF-8 form: escaped, still exact
    out.decode("utf-8")
    assert [r.path for r in parse(out)][:2] == [
        "academic_source/Charades/A0000.mp4",
        "academic_source/Charades/A0005.mp4",
    ]


def test_write_filtered_empty_results_are_valid_json() -> None:
    for src in (b"[]", json.dumps([record("a.mp4")]).encode()):
        dst = io.BytesIO()
        kept, _dropped = write_filtered(io.BytesIO(src), dst, lambda r: False)
        assert kept == 0 and json.loads(dst.getvalue()) == []


def test_write_filtered_refuses_malformed_input() -> None:
    with pytest.raises(AnnotationError) as caught:
        write_filtered(
            io.BytesIO(b'[{"video": "a.mp4"}, {"vid'), io.BytesIO(), lambda r: True, file_label="x.json"
        )
    assert str(caught.value).startswith("x.json: truncated")


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    # st.text drops surrogates even from an explicit alphabet; a joined list keeps them.
    st.lists(
        st.one_of(st.characters(), st.sampled_from(["\ud83d", "\ude00", "\udc80", "\\", '"', "u", "d8"])),
        max_size=12,
    ).map("".join),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(JSON_VALUES, max_size=6),
    max_chunk=st.integers(min_value=1, max_value=40),
    indent=st.sampled_from([None, 1]),
    seed=st.integers(0, 1000),
)
def test_streaming_matches_json_loads(
    items: list[object], max_chunk: int, indent: int | None, seed: int
) -> None:
    # Whatever the content and however the chunks fall, the records are exactly what json.loads sees.
    doc = json.dumps(items, indent=indent).encode("ascii")
    dst = io.BytesIO()
    kept, dropped = write_filtered(Trickle(doc, seed=seed, max_chunk=max_chunk), dst, lambda r: True)
    expected_objects = [it for it in json.loads(doc) if isinstance(it, dict)]
    assert json.loads(dst.getvalue()) == expected_objects
    assert (kept, dropped) == (len(expected_objects), len(items) - len(expected_objects))
    got = list(iter_video_records(Trickle(doc, seed=seed, max_chunk=max_chunk), file_label="h.json"))
    assert len(got) == len(items)


# --- throughput and memory on a large file ----------------------------------------------------------

MEASURE = textwrap.dedent(
    """
    import json, sys, time
    from vfs.catalog.annotations import iter_video_records, write_filtered
    path = sys.argv[1]
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        n = bad = 0
        for r in iter_video_records(f, file_label=path):
            n += 1
            bad += r.path is None
    parse_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with open(path, "rb") as f, open(path + ".out", "wb") as out:
        kept, dropped = write_filtered(f, out, lambda r: not r["video"].endswith("7.mp4"))
    filter_s = time.perf_counter() - t0
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent (a large pytest process)
    # across exec, while VmHWM belongs to this process's own memory map.
    hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    print(json.dumps({"records": n, "bad": bad, "parse_s": parse_s, "filter_s": filter_s, "kept": kept,
                      "dropped": dropped, "max_rss_kib": hwm}))
    """
)


@pytest.mark.slow
def test_throughput_and_peak_memory_on_100_mb(tmp_path: Path) -> None:
    rng = random.Random(7)
    path = tmp_path / "big_processed.json"
    count = 0
    with path.open("wb") as f:
        f.write(b"[\n")
        while f.tell() < 100 * 1024 * 1024:
            item = record(f"academic_source/Charades/{rng.randrange(10**5):05d}.mp4")
            item["conversations"][1]["value"] = "A person walks in. 🎬 " * rng.randint(1, 60)  # type: ignore[index]
            f.write((b"" if count == 0 else b",\n") + json.dumps(item, indent=4).encode("ascii"))
            count += 1
        f.write(b"\n]\n")
    size_mb = path.stat().st_size / 1e6
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, cwd=REPO_ROOT, check=True
    )
    result = json.loads(proc.stdout)
    parse_mb_s = size_mb / result["parse_s"]
    filter_mb_s = size_mb / result["filter_s"]
    peak_mb = result["max_rss_kib"] / 1024
    print(
        f"\n{size_mb:.0f} MB, {count} records: parse {parse_mb_s:.0f} MB/s, "
        f"write_filtered {filter_mb_s:.0f} MB/s, peak RSS {peak_mb:.0f} MiB"
    )
    assert result["records"] == count and result["bad"] == 0
    assert result["kept"] + result["dropped"] == count and 0 < result["dropped"] < count
    assert peak_mb < 200, "streaming must keep memory bounded, far below the file size"
    assert parse_mb_s > 40, "the C backend must carry the load (the pure-Python one does ~14 MB/s)"
