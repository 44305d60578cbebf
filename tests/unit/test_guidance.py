"""Guidance (vfs.guidance): the dataset registry, the message for each reason, the rate-limited reporter."""

from __future__ import annotations

import logging

import pytest

from vfs.catalog.annotations import malformed_hint
from vfs.datasets import KNOWN_UPSTREAMS, REGISTRY, dataset_for_path
from vfs.guidance import (
    REASON_ESCAPES_ROOT,
    REASON_EXCLUDED,
    REASON_MALFORMED,
    REASON_NO_SOURCE,
    REASON_NOT_IN_ROOT,
    REASON_NOT_INDEXED,
    Miss,
    MissReporter,
    absent_message,
)


def test_registry_covers_every_known_upstream_and_path_family() -> None:
    for name, prefix in KNOWN_UPSTREAMS.items():
        assert REGISTRY[name].prefixes[0] == prefix  # the config's default prefix is the registry's first
        assert REGISTRY[name].where and REGISTRY[name].terms
    cases = {
        "academic_source/Charades/RW587.mp4": "charades",
        "academic_source/activitynet/v1-3/train_val/v_abc.mp4": "activitynet",
        "ActivityNet-QA/activitynet/train/v_abc.mp4": "activitynet",
        "academic_source/NextQA/1234/5678901234.mp4": "nextqa",
        "NextQA/NExTVideo/1234/5678901234.mp4": "nextqa",
        "academic_source/youcook2/101/abcdefghijk/split_3.mp4": "youcook2",
        "academic_source/ego4d/0e2b7c9a-1111-4222-8333-444455556666.mp4": "ego4d",
        "perception_test/videos/video_0042.mp4": "perceptiontest",
        "shareVideoGPTV/frames/all_frames/v_abc": "llava_hound",
        "liwei_youtube_videos/videos/youtube_video_2024/ytb_abcdefghijk.mp4": "youtube",
    }
    for path, name in cases.items():
        dataset = dataset_for_path(path)
        assert dataset is not None and dataset.name == name, path
    assert (
        dataset_for_path("academic_source/Charadesque/x.mp4") is None
    )  # component-wise, not a string prefix
    assert dataset_for_path("somewhere/else.mp4") is None


def test_no_source_names_dataset_where_terms_and_config_lines() -> None:
    ego = absent_message("academic_source/ego4d/u.mp4", REASON_NO_SOURCE, dataset=REGISTRY["ego4d"])
    for text in (
        "Ego4D",
        "ego4d-data.org",
        "Ego4D licence",
        '[[upstream]] name = "ego4d"',
        "v2/clips/<uid>.mp4",
        "re-encoded or trimmed",
    ):
        assert text in ego
    ch = absent_message("academic_source/Charades/AB123.mp4", REASON_NO_SOURCE, dataset=REGISTRY["charades"])
    assert "Charades" in ch and "prior.allenai.org" in ch and "non-commercial" in ch
    lh = absent_message(
        "shareVideoGPTV/frames/all_frames/v_x", REASON_NO_SOURCE, dataset=REGISTRY["llava_hound"]
    )
    assert "ShareGPTVideo/train_video_and_instruction" in lh and "another Hub repo" in lh
    assert '[[upstream]] name = "llava_hound"' in lh
    yt = absent_message(
        "liwei_youtube_videos/videos/youtube_video_2024/ytb_x.mp4",
        REASON_NO_SOURCE,
        dataset=REGISTRY["youtube"],
    )
    assert "[[upstream]]" not in yt and "youtube_v0_1_videos" in yt  # only the shards have them
    yc = absent_message(
        "academic_source/youcook2/1/a/split_1.mp4", REASON_NO_SOURCE, dataset=REGISTRY["youcook2"]
    )
    assert "pre-cut" in yc and "cannot be reproduced" in yc
    assert "\n" not in ego + ch + lh + yt + yc


def test_other_reasons() -> None:
    expected = ["/data/ch/Charades_v1_480/AB123.mp4", "/data/ch/Charades_v1/AB123.mp4", "/data/ch/AB123.mp4"]
    text = absent_message(
        "academic_source/Charades/AB123.mp4",
        REASON_NOT_IN_ROOT,
        dataset=REGISTRY["charades"],
        upstream_name="charades",
        expected=expected,
    )
    assert "expected at /data/ch/Charades_v1_480/AB123.mp4" in text and "/data/ch/AB123.mp4" in text
    escaped = absent_message(
        "academic_source/Charades/AB123.mp4",
        REASON_ESCAPES_ROOT,
        dataset=REGISTRY["charades"],
        upstream_name="charades",
        expected=expected[:1],
    )
    assert "outside the root" in escaped
    excluded = absent_message(
        "academic_source/ego4d/u.mp4",
        REASON_EXCLUDED,
        dataset=REGISTRY["ego4d"],
        shard="0_30_s_academic_v0_1/x_videos_1.tar.gz",
    )
    assert "excluded by configuration" in excluded and "x_videos_1.tar.gz holds it" in excluded
    bad = "liwei_youtube_videos/videos/ytb_abcdefghijk"
    malformed = absent_message(
        bad, REASON_MALFORMED, dataset=REGISTRY["youtube"], malformed=malformed_hint(bad)
    )
    assert malformed.startswith("malformed record") and "youtube_video_2024" in malformed
    shards = [f"d/d_videos_{i}.tar.gz" for i in range(1, 6)]
    unindexed = absent_message(
        "academic_source/Charades/AB123.mp4",
        REASON_NOT_INDEXED,
        dataset=REGISTRY["charades"],
        unindexed_shards=shards,
        config_file="/etc/llava.toml",
    )
    assert "d/d_videos_1.tar.gz" in unindexed and "and 2 more" in unindexed
    assert "`llava-vfs index --config /etc/llava.toml`" in unindexed
    nothing = absent_message(
        "academic_source/Charades/AB123.mp4", REASON_NOT_INDEXED, dataset=REGISTRY["charades"]
    )
    assert "not indexed yet" in nothing and "llava-vfs index" in nothing


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _explain(path: str) -> Miss | None:
    if path.startswith(".Trash"):
        return None
    dataset = dataset_for_path(path)
    return Miss(path, REASON_NO_SOURCE, dataset.name if dataset else None, f"guidance for {path}")


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "vfs.guidance" and r.levelno >= logging.WARNING
    ]


@pytest.mark.allow_log(r"^missing ")
def test_reporter_logs_once_per_path_then_summarises(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    reporter = MissReporter(_explain, interval_s=60, burst=3, clock=clock)
    ego = [f"academic_source/ego4d/u{i}.mp4" for i in range(10)]
    for _ in range(100):  # repeats of one path: one line
        reporter.on_miss(ego[0])
    reporter.on_miss(".Trash-0")  # not about the dataset: no warning
    assert _warnings(caplog) == [f"missing {ego[0]}: guidance for {ego[0]}"]
    for path in ego[1:]:
        reporter.on_miss(path)
    reporter.on_miss("academic_source/Charades/AB123.mp4")  # its own dataset has its own burst
    lines = _warnings(caplog)
    assert len(lines) == 4  # 3 ego4d (the burst) + 1 charades
    assert lines[-1].startswith("missing academic_source/Charades/AB123.mp4: ")
    clock.now += 61
    caplog.clear()
    reporter.on_miss(ego[0])  # past the interval: the summary comes first
    summary = _warnings(caplog)
    assert len(summary) == 1 and summary[0].startswith("missing summary for ego4d over the last 61s")
    assert "109 lookup misses" in summary[0] and "10 new absent paths" in summary[0]
    assert "3 logged individually, 7 not" in summary[0] and "99 repeats" in summary[0]
    caplog.clear()
    clock.now += 61
    assert len(reporter.flush()) == 1  # the one repeat of the new window
    assert reporter.flush() == []  # nothing new, nothing said
    snap = reporter.snapshot()
    assert (
        snap["ego4d"]["lookups"] == 110 and snap["ego4d"]["distinct"] == 10 and snap["ego4d"]["logged"] == 3
    )
    assert snap["charades"]["distinct"] == 1


@pytest.mark.allow_log(r"^missing ", r"could not report")
def test_a_million_misses_stay_a_few_lines(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    reporter = MissReporter(_explain, interval_s=60, burst=20, max_tracked=1000, clock=clock)
    for i in range(100_000):
        reporter.on_miss(f"academic_source/ego4d/{i}.mp4")
        if i % 25_000 == 0:
            clock.now += 61
    assert len(_warnings(caplog)) <= 5 * (20 + 1)
    # A failing explain never escapes into the lookup (it would become EIO for the reader).
    broken = MissReporter(lambda path: 1 / 0, clock=clock)  # type: ignore[arg-type, return-value]
    broken.on_miss("academic_source/ego4d/x.mp4")


async def test_reporter_run_flushes_periodically(caplog: pytest.LogCaptureFixture) -> None:
    import trio

    reporter = MissReporter(_explain, interval_s=0.05, burst=0)
    reporter.on_miss("academic_source/ego4d/a.mp4")
    with trio.move_on_after(0.2):
        await reporter.run()
    assert any(m.startswith("missing summary for ego4d") for m in _warnings(caplog))


test_reporter_run_flushes_periodically = pytest.mark.allow_log(r"^missing summary")(
    test_reporter_run_flushes_periodically
)
