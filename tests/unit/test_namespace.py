"""The namespace against a reference model: random trees, lookups, paged readdir walks, conflicts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfs.tree.namespace import ROOT_INO, NamespaceBuilder, PathConflict

names = st.text(alphabet="abcdeé_-.0123", min_size=1, max_size=6).filter(lambda s: s not in (".", ".."))
paths = st.lists(names, min_size=1, max_size=4).map("/".join)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(paths, st.integers(0, 10**10)), max_size=40), st.integers(1, 7))
def test_random_tree_matches_model(entries: list[tuple[str, int]], page: int) -> None:
    builder = NamespaceBuilder()
    files: dict[str, int] = {}
    dirs: set[str] = {""}
    for path, size in entries:
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts))]
        conflict = any(p in files for p in prefixes) or path in dirs
        if conflict:
            with pytest.raises(PathConflict):
                builder.add_file(path, size, ref=path)
            continue
        node = builder.add_file(path, size, ref=path)
        files.setdefault(path, size)  # the first one wins
        dirs.update(prefixes)
        assert node.size == files[path]
    ns = builder.build()

    # every file resolves with its size; every directory is a directory
    for path, size in files.items():
        node = ns.resolve(path)
        assert node is not None and not node.is_dir and node.size == size and node.ref == path
        assert ns.path_of(node) == path
    for d in dirs:
        node = ns.resolve(d)
        assert node is not None and node.is_dir

    # a full readdir walk in pages of `page` entries finds exactly the model's files
    found: dict[str, int] = {}
    stack = [("", ns.get(ROOT_INO))]
    while stack:
        prefix, node = stack.pop()
        assert node is not None
        names_seen = []
        start = 0
        while True:
            batch = []
            for name, _child, nxt in (x for x in _readdir(ns, node, start)):
                batch.append(name)
                start = nxt
                if len(batch) == page:
                    break
            if not batch:
                break
            names_seen.extend(batch)
        assert names_seen == sorted(set(names_seen))
        for name in names_seen:
            child = ns.child(node, name)
            assert child is not None
            path = f"{prefix}/{name}" if prefix else name
            if child.is_dir:
                stack.append((path, child))
            else:
                found[path] = child.size
    assert found == files
    assert dict((p, n.size) for p, n in ns.walk_files()) == files
    assert ns.file_count == len(files)


def _readdir(ns, node, start):  # the same iteration FsCore.readdir performs
    names_sorted = ns.sorted_names(node)
    for pos in range(start, len(names_sorted)):
        yield names_sorted[pos], ns.child(node, names_sorted[pos]), pos + 1


def test_file_directory_conflicts_are_refused() -> None:
    b = NamespaceBuilder()
    b.add_file("a/b", 1, ref=1)
    with pytest.raises(PathConflict):
        b.add_file("a/b/c", 1, ref=2)  # a file used as a directory
    with pytest.raises(PathConflict):
        b.add_file("a", 1, ref=3)  # a directory replaced by a file
    kept = b.add_file("a/b", 5, ref=4)
    assert kept.size == 1 and kept.ref == 1  # first wins
    replaced = b.add_file("a/b", 5, ref=4, replace=True)
    assert replaced.size == 5 and replaced.ref == 4
    ns = b.build()
    assert ns.resolve("a/b/c") is None
    assert ns.resolve("nope") is None
    assert ns.get(0) is None and ns.get(10**6) is None
