"""The inode table: one immutable tree per mount, built from the catalog before mounting.

Invariants:
- Built once by ``NamespaceBuilder`` and never mutated afterwards, so the trio thread reads it without
  locks and inode numbers are stable for the life of the mount (they are list indices).
- Every path in it is a normalised relative path (no ``..``, no empty or ``.`` components): callers hand
  in paths that ``vfs.catalog.annotations.normalise_video_path`` accepted or that the Hub listed.
- A name is either a file or a directory; a later conflicting entry is refused (``PathConflict``) and the
  first one wins, so one dirty record can never hide a whole directory.
- ``size`` is exact before any byte is fetched: it comes from the listing or the shard index.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from vfs.refs import FileRef, Ref, UpstreamDirRef

ROOT_INO = 1


class PathConflict(ValueError):
    """A path collides with an existing entry of the other kind (file vs directory)."""


@dataclass(slots=True)
class Node:
    """One entry. ``ref`` says where a file's bytes come from (see ``vfs.sources``); for a directory it is
    None, or an ``UpstreamDirRef`` naming the real directory whose owner and mode it shows."""

    ino: int
    parent: int
    name: str
    size: int
    ref: Ref | None
    children: dict[str, int] | None
    _sorted: list[str] | None = None

    @property
    def is_dir(self) -> bool:
        return self.children is not None


class NamespaceView(Protocol):
    """What ``FsCore`` and the adapter need of a tree: this in-memory ``Namespace``, or the lazily loaded
    ``vfs.tree.snapshot.SnapshotNamespace`` a mount of the full dataset serves from."""

    file_count: int
    total_bytes: int

    def __len__(self) -> int: ...

    def get(self, ino: int) -> Node | None: ...

    def child(self, parent: Node, name: str) -> Node | None: ...

    def entries(self, node: Node, start: int) -> Iterator[tuple[str, Node, int]]: ...

    def ref_of(self, node: Node) -> Ref | None: ...

    def path_of(self, node: Node) -> str: ...


class Namespace:
    """Read-only view of the tree built by ``NamespaceBuilder``."""

    def __init__(self, nodes: list[Node | None]) -> None:
        self._nodes = nodes
        files = [n for n in nodes if n is not None and not n.is_dir]
        self.file_count = len(files)
        self.total_bytes = sum(n.size for n in files)

    def __len__(self) -> int:
        return len(self._nodes) - 1

    def nodes(self) -> Iterator[Node]:
        """Every node in inode order (what a mount snapshot persists)."""
        return (n for n in self._nodes if n is not None)

    def get(self, ino: int) -> Node | None:
        if 0 < ino < len(self._nodes):
            return self._nodes[ino]
        return None

    def child(self, parent: Node, name: str) -> Node | None:
        if parent.children is None:
            return None
        ino = parent.children.get(name)
        return None if ino is None else self._nodes[ino]

    def resolve(self, path: str) -> Node | None:
        """The node at a relative path ('' is the root), or None."""
        node = self._nodes[ROOT_INO]
        for part in (p for p in path.split("/") if p):
            if node is None:
                return None
            node = self.child(node, part)
        return node

    def sorted_names(self, node: Node) -> list[str]:
        """Children in a stable order, so readdir offsets stay valid across calls."""
        if node.children is None:
            return []
        if node._sorted is None:
            node._sorted = sorted(node.children)
        return node._sorted

    def entries(self, node: Node, start: int) -> Iterator[tuple[str, Node, int]]:
        """Children from offset ``start`` in sorted order, each with the offset of the next one."""
        names = self.sorted_names(node)
        for pos in range(start, len(names)):
            child = self.child(node, names[pos])
            assert child is not None
            yield names[pos], child, pos + 1

    def ref_of(self, node: Node) -> Ref | None:
        return node.ref

    def path_of(self, node: Node) -> str:
        parts: list[str] = []
        while node.ino != ROOT_INO:
            parts.append(node.name)
            parent = self._nodes[node.parent]
            assert parent is not None
            node = parent
        return "/".join(reversed(parts))

    def walk_files(self, top: Node | None = None) -> Iterator[tuple[str, Node]]:
        """Every file below ``top`` (default: the root) with its path, depth first."""
        start = top if top is not None else self._nodes[ROOT_INO]
        assert start is not None
        prefix = self.path_of(start)
        stack = [(prefix, start)]
        while stack:
            path, node = stack.pop()
            for name in self.sorted_names(node):
                child = self.child(node, name)
                assert child is not None
                child_path = f"{path}/{name}" if path else name
                if child.is_dir:
                    stack.append((child_path, child))
                else:
                    yield child_path, child


class NamespaceBuilder:
    """Accumulates files and directories, then freezes them into a ``Namespace``."""

    def __init__(self) -> None:
        root = Node(ino=ROOT_INO, parent=ROOT_INO, name="", size=0, ref=None, children={})
        self._nodes: list[Node | None] = [None, root]

    def _dir(self, parts: list[str]) -> Node:
        node = self._nodes[ROOT_INO]
        assert node is not None
        for part in parts:
            assert node.children is not None
            ino = node.children.get(part)
            if ino is None:
                child = Node(ino=len(self._nodes), parent=node.ino, name=part, size=0, ref=None, children={})
                self._nodes.append(child)
                node.children[part] = child.ino
                node = child
                continue
            existing = self._nodes[ino]
            assert existing is not None
            if not existing.is_dir:
                raise PathConflict(f"{part!r} is a file, not a directory")
            node = existing
        return node

    def add_dir(self, path: str) -> Node:
        return self._dir([p for p in path.split("/") if p])

    def add_file(self, path: str, size: int, ref: FileRef, *, replace: bool = False) -> Node:
        """Add a file; an existing file at the path is kept unless ``replace``. Raises PathConflict."""
        parts = [p for p in path.split("/") if p]
        if not parts:
            raise PathConflict("empty path")
        parent = self._dir(parts[:-1])
        assert parent.children is not None
        name = parts[-1]
        ino = parent.children.get(name)
        if ino is not None:
            existing = self._nodes[ino]
            assert existing is not None
            if existing.is_dir:
                raise PathConflict(f"{path!r} is a directory")
            if replace:
                existing.size, existing.ref = size, ref
            return existing
        node = Node(ino=len(self._nodes), parent=parent.ino, name=name, size=size, ref=ref, children=None)
        self._nodes.append(node)
        parent.children[name] = node.ino
        return node

    def has(self, path: str) -> bool:
        node = self._nodes[ROOT_INO]
        for part in (p for p in path.split("/") if p):
            assert node is not None
            if node.children is None or part not in node.children:
                return False
            node = self._nodes[node.children[part]]
        return True

    def fold_dirs(self, fold: Callable[[list[Ref | None]], UpstreamDirRef | None]) -> None:
        """Set each directory's ref to ``fold`` of its children's refs, deepest directories first (a
        child directory's ref is folded before its parent's)."""
        # Children are appended after their parent, so reverse inode order visits every child first.
        for node in reversed(self._nodes):
            if node is not None and node.children is not None:
                refs = [self._nodes[ino].ref for ino in node.children.values()]  # type: ignore[union-attr]
                node.ref = fold(refs)

    def build(self) -> Namespace:
        ns = Namespace(self._nodes)
        self._nodes = []
        return ns
