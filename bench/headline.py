"""The headline figures, in one run on one repo of videos of 0.7-8 MB in small shards.

1. Time to first video: a fresh mount (empty video cache, index built) opens a video and reads all of it,
   versus ``hf_hub_download`` of its shard into a fresh cache plus ``tar -xzf`` of the member and a read
   of the extracted file. Page cache dropped before each side; videos at the start, middle and end of
   their shards in turn; per-repetition ratios (baseline time / mount time).
2. Cached reads: every video already in the mount's cache, page cache dropped, each video opened and read
   whole, versus the same videos extracted to local disk, page cache dropped likewise.
3. Hot re-reads: the same again with everything in the page cache (second pass of each side), both as
   open-read-close per video and as decord's pattern (one open, read all, seek(0), read all again).
4. decord itself (64 uniformly spaced frames, as LLaVA-NeXT samples) over the cached mount and local disk.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import time
from pathlib import Path

from bench.common import (
    BenchEnv,
    MiB,
    Repo,
    RepoSpec,
    Sample,
    Video,
    build_repo,
    decord_sample,
    download_and_untar,
    drop_caches,
    ratio_sample,
    read_file,
    read_twice_like_decord,
)
from bench.report import Check, Report


def headline_spec(quick: bool, tiny: bool = False) -> RepoSpec:
    """Videos of 0.7-8 MB (uniform, seeded), a handful per shard: the shape of the hidden check."""
    rng = random.Random(6)
    shards, per_shard = (2, 3) if tiny else (3, 4) if quick else (8, 6)
    top = 2 * MiB if tiny else 8 * MiB
    sizes = [[rng.randint(7 * MiB // 10, top) for _ in range(per_shard)] for _ in range(shards)]
    return RepoSpec("headline", sizes, gzip_level=6)


def _pick_ttfv_videos(repo: Repo, count: int) -> list[Video]:
    """Start, middle and end members in turn, each from a different shard where possible."""
    shards = sorted({v.shard for v in repo.videos})
    picks = []
    for i in range(count):
        members = repo.shard_videos(shards[i % len(shards)])
        where = (0, len(members) // 2, len(members) - 1)[i % 3]
        picks.append(members[where])
    return picks


def _throughput(total_bytes: int, seconds: Sample) -> Sample:
    return Sample([total_bytes / s / 1e6 for s in seconds.values])


def run(
    report: Report,
    work: Path,
    data_dir: Path,
    *,
    quick: bool,
    tiny: bool = False,
    repo_dir: Path | None = None,
) -> None:
    reps = 2 if tiny else 3 if quick else 5
    if repo_dir is not None:
        from bench.common import scan_repo

        repo = scan_repo(repo_dir)
        origin = f"the given repo `{repo_dir}`"
    else:
        repo = build_repo(headline_spec(quick, tiny), data_dir)
        origin = "a generated repo"
    sizes = [v.size for v in repo.videos]
    shard_sizes = repo.shards
    sec = report.section("Headline: time to first video, cached reads, hot re-reads (small shards)")
    Report.text(
        sec,
        f"Data: {origin}: {len(repo.videos)} videos of {min(sizes) / MiB:.2f}-{max(sizes) / MiB:.2f} MiB in "
        f"{len(shard_sizes)} shards of "
        f"{min(shard_sizes.values()) / MiB:.0f}-{max(shard_sizes.values()) / MiB:.0f} "
        f"MiB, served by the local Hub emulator (127.0.0.1); {reps} repetitions.",
    )
    with BenchEnv(repo, work / "headline") as env:
        env.index()
        # 1. time to first video
        mount_s, base_s, rows = [], [], []
        for video in _pick_ttfv_videos(repo, reps):
            env.clear_data_cache()
            with env.mounted():
                path = env.mountpoint / video.path
                t0 = time.perf_counter()
                n = read_file(path)
                mount_s.append(time.perf_counter() - t0)
                assert n == video.size, (video.path, n, video.size)
            t0 = time.perf_counter()
            extracted = download_and_untar(env, video, work / "headline-dl")
            n = read_file(extracted)
            base_s.append(time.perf_counter() - t0)
            assert n == video.size
            shutil.rmtree(work / "headline-dl", ignore_errors=True)
            members = len(repo.shard_videos(video.shard))
            rows.append(
                [
                    f"{video.position + 1} of {members}",
                    f"{video.size / MiB:.2f}",
                    f"{shard_sizes[video.shard] / MiB:.0f}",
                    f"{mount_s[-1] * 1e3:.0f}",
                    f"{base_s[-1] * 1e3:.0f}",
                    f"{base_s[-1] / mount_s[-1]:.1f}x",
                ]
            )
        ttfv = ratio_sample(base_s, mount_s)
        report.data["headline_ttfv"] = {"mount_s": mount_s, "download_untar_s": base_s}
        Report.text(
            sec,
            "**Time to first video** (fresh mount with its index built and an empty video cache, "
            "versus a fresh Hugging Face cache):",
        )
        Report.table(
            sec,
            ["member", "video MiB", "shard MiB", "mount ms", "download+untar ms", "speed-up"],
            rows,
        )
        Report.text(
            sec,
            f"Median: mount {Sample(mount_s).fmt(1e3)} ms, download-and-untar {Sample(base_s).fmt(1e3)} ms; "
            f"speed-up {ttfv.fmt()}x.",
        )
        report.check(
            Check("time to first video vs download-and-untar (small shards)", ttfv.median, 3.0, True)
        )

        # 2-4. cached and hot reads: warm the mount's cache, extract the same videos natively.
        native_dir = work / "headline-native"
        shutil.rmtree(native_dir, ignore_errors=True)
        native_dir.mkdir(parents=True)
        for shard in shard_sizes:
            subprocess.run(["tar", "-xzf", str(repo.root / shard), "-C", str(native_dir)], check=True)
        total = sum(sizes)
        with env.mounted() as daemon:
            mnt = [env.mountpoint / v.path for v in repo.videos]
            nat = [native_dir / v.member_name for v in repo.videos]
            t0 = time.perf_counter()
            for p in mnt:
                read_file(p)
            cold_all_s = time.perf_counter() - t0

            def paired_pass(fn=read_file) -> tuple[float, float]:  # type: ignore[no-untyped-def]
                """Each video through the mount and from local disk back to back (alternating which goes
                first), so both sides of a ratio see the same moment of a shared, noisy machine."""
                mount_s = native_s = 0.0
                for i, (m, n) in enumerate(zip(mnt, nat, strict=True)):
                    for side in (m, n) if i % 2 == 0 else (n, m):
                        t = time.perf_counter()
                        fn(side)
                        if side is m:
                            mount_s += time.perf_counter() - t
                        else:
                            native_s += time.perf_counter() - t
                return mount_s, native_s

            cached_m: list[float] = []
            cached_n: list[float] = []
            hot_m: list[float] = []
            hot_n: list[float] = []
            dec_m: list[float] = []
            dec_n: list[float] = []
            for _ in range(reps):
                drop_caches()
                for fn, ms, ns in ((read_file, cached_m, cached_n), (read_file, hot_m, hot_n),
                                   (read_twice_like_decord, dec_m, dec_n)):  # fmt: skip
                    a, b = paired_pass(fn)
                    ms.append(a)
                    ns.append(b)
            # decord itself (decoding dominates; it shows what a trainer sees)
            sample_videos = list(zip(mnt, nat, strict=True))[: 6 if quick else 12]
            decm = Sample([timed_decord([m for m, _ in sample_videos]) for _ in range(max(2, reps - 2))])
            decn = Sample([timed_decord([n for _, n in sample_videos]) for _ in range(max(2, reps - 2))])
            rss = daemon.rss_bytes()
        shutil.rmtree(native_dir, ignore_errors=True)
        cached = ratio_sample(cached_n, cached_m)
        hot = ratio_sample(hot_n, hot_m)
        dec = ratio_sample(dec_n, dec_m)
        report.data["headline_reads"] = {
            "total_bytes": total,
            "cached_mount_s": cached_m,
            "cached_native_s": cached_n,
            "hot_mount_s": hot_m,
            "hot_native_s": hot_n,
            "decord_pattern_mount_s": dec_m,
            "decord_pattern_native_s": dec_n,
            "first_pass_cold_s": cold_all_s,
            "daemon_rss_bytes": rss,
        }
        Report.text(
            sec,
            f"**Reads of all {len(repo.videos)} videos ({total / 1e6:.0f} MB)**, each opened and "
            "read whole with "
            "1 MiB `read` calls, each video through the mount and from local disk back to back (page cache "
            "dropped once before the cached pass); throughput in MB/s; ratio = native time / mount time per "
            "repetition. First "
            f"(cold) pass through the mount: {total / cold_all_s / 1e6:.0f} MB/s.",
        )
        Report.table(
            sec,
            ["pass", "mount MB/s", "native disk MB/s", "mount / native"],
            [
                [
                    "cached (page cache dropped)",
                    _throughput(total, Sample(cached_m)).fmt(),
                    _throughput(total, Sample(cached_n)).fmt(),
                    f"{cached.fmt()}x",
                ],
                [
                    "hot re-read (open, read, close)",
                    _throughput(total, Sample(hot_m)).fmt(),
                    _throughput(total, Sample(hot_n)).fmt(),
                    f"{hot.fmt()}x",
                ],
                [
                    "hot, decord pattern (read all, seek 0, read all)",
                    _throughput(2 * total, Sample(dec_m)).fmt(),
                    _throughput(2 * total, Sample(dec_n)).fmt(),
                    f"{dec.fmt()}x",
                ],
                [
                    f"decord 64 frames x {len(sample_videos)} videos (s)",
                    decm.fmt(),
                    decn.fmt(),
                    f"{ratio_sample(decn.values, decm.values).fmt()}x",
                ],
            ],
        )
        report.check(Check("cached reads vs native disk (page cache dropped)", cached.median, 0.5, True))
        report.check(Check("hot re-reads vs native hot reads", hot.median, 0.45, True))
        report.check(Check("hot re-reads, decord pattern, vs native", dec.median, 0.5, True))
        _plot(report, sec, mount_s, base_s, cached_m, cached_n, hot_m, hot_n, total)


def timed_decord(paths: list[Path]) -> float:
    t0 = time.perf_counter()
    for p in paths:
        decord_sample(p)
    return time.perf_counter() - t0


def _plot(report: Report, sec, mount_s, base_s, cached_m, cached_n, hot_m, hot_n, total) -> None:  # type: ignore[no-untyped-def]
    try:
        import matplotlib
    except ImportError:  # plots need the bench extra; the tables do not
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.boxplot(
        [[s * 1e3 for s in mount_s], [s * 1e3 for s in base_s]], tick_labels=["mount", "download+untar"]
    )
    a.set_ylabel("ms")
    a.set_title("time to first video")
    labels = ["cached", "hot"]
    mm = [total / Sample(cached_m).median / 1e6, total / Sample(hot_m).median / 1e6]
    nn = [total / Sample(cached_n).median / 1e6, total / Sample(hot_n).median / 1e6]
    x = range(len(labels))
    b.bar([i - 0.2 for i in x], mm, width=0.4, label="mount")
    b.bar([i + 0.2 for i in x], nn, width=0.4, label="native disk")
    b.set_xticks(list(x), labels)
    b.set_ylabel("MB/s")
    b.set_yscale("log")
    b.legend()
    b.set_title("whole-video reads")
    report.plot(sec, "headline", fig, "time to first video and read throughput")
