"""A red-black tree of integer keys with the exact rebalancing of lib/rbtree.c.

ksmd's stable tree is an rbtree ordered by page content (memcmp, which for ksmfs' content
tokens is the numeric order of the tokens). A search walks from the root and acts on every
node it passes (stale nodes are removed, chains pruned or collapsed), so *which* nodes a
search passes depends on the tree's shape, and the shape depends on the exact sequence of
inserts and erases and on how lib/rbtree.c rebalances. This module copies __rb_insert(),
__rb_erase_augmented() and ____rb_erase_color() case by case (without the augmentation).
"""

from __future__ import annotations

RED = 0
BLACK = 1


class RBTree:
    """Keys only; parent/left/right/color live in dicts keyed by the key."""

    def __init__(self) -> None:
        self.root: int | None = None
        self.parent: dict[int, int | None] = {}
        self.left: dict[int, int | None] = {}
        self.right: dict[int, int | None] = {}
        self.color: dict[int, int] = {}
        self.version = 0  # bumped by every insert and erase (the shape may change)

    def __len__(self) -> int:
        return len(self.color)

    def __contains__(self, key: int) -> bool:
        return key in self.color

    # -- helpers (rb_set_parent_color, __rb_change_child, __rb_rotate_set_parents) ---------
    def _change_child(self, old: int, new: int | None, parent: int | None) -> None:
        if parent is not None:
            if self.left[parent] == old:
                self.left[parent] = new
            else:
                self.right[parent] = new
        else:
            self.root = new

    def _rotate_set_parents(self, old: int, new: int, color: int) -> None:
        parent = self.parent[old]
        self.parent[new] = parent
        self.color[new] = self.color[old]
        self.parent[old] = new
        self.color[old] = color
        self._change_child(old, new, parent)

    # -- insert ------------------------------------------------------------------------
    def insert(self, key: int) -> None:
        """rb_link_node() at the BST position of ``key``, then rb_insert_color()."""
        if key in self.color:
            raise KeyError(f"key {key} already in the tree")
        self.version += 1
        parent = None
        cur = self.root
        go_left = False
        while cur is not None:
            parent = cur
            go_left = key < cur
            cur = self.left[cur] if go_left else self.right[cur]
        self.parent[key] = parent
        self.left[key] = None
        self.right[key] = None
        self.color[key] = RED
        if parent is None:
            self.root = key
        elif go_left:
            self.left[parent] = key
        else:
            self.right[parent] = key
        self._insert_color(key)

    def _insert_color(self, node: int) -> None:
        parent = self.parent[node]
        while True:
            if parent is None:
                self.parent[node] = None
                self.color[node] = BLACK
                break
            if self.color[parent] == BLACK:
                break
            gparent = self.parent[parent]
            assert gparent is not None
            tmp = self.right[gparent]
            if parent != tmp:  # parent == gparent->rb_left
                if tmp is not None and self.color[tmp] == RED:
                    # Case 1 - color flips
                    self.parent[tmp], self.color[tmp] = gparent, BLACK
                    self.parent[parent], self.color[parent] = gparent, BLACK
                    node = gparent
                    parent = self.parent[node]
                    self.color[node] = RED
                    continue
                tmp = self.right[parent]
                if node == tmp:
                    # Case 2 - left rotate at parent
                    tmp = self.left[node]
                    self.right[parent] = tmp
                    self.left[node] = parent
                    if tmp is not None:
                        self.parent[tmp], self.color[tmp] = parent, BLACK
                    self.parent[parent], self.color[parent] = node, RED
                    parent = node
                    tmp = self.right[node]
                # Case 3 - right rotate at gparent
                self.left[gparent] = tmp
                self.right[parent] = gparent
                if tmp is not None:
                    self.parent[tmp], self.color[tmp] = gparent, BLACK
                self._rotate_set_parents(gparent, parent, RED)
                break
            tmp = self.left[gparent]
            if tmp is not None and self.color[tmp] == RED:
                self.parent[tmp], self.color[tmp] = gparent, BLACK
                self.parent[parent], self.color[parent] = gparent, BLACK
                node = gparent
                parent = self.parent[node]
                self.color[node] = RED
                continue
            tmp = self.left[parent]
            if node == tmp:
                tmp = self.right[node]
                self.left[parent] = tmp
                self.right[node] = parent
                if tmp is not None:
                    self.parent[tmp], self.color[tmp] = parent, BLACK
                self.parent[parent], self.color[parent] = node, RED
                parent = node
                tmp = self.left[node]
            self.right[gparent] = tmp
            self.left[parent] = gparent
            if tmp is not None:
                self.parent[tmp], self.color[tmp] = gparent, BLACK
            self._rotate_set_parents(gparent, parent, RED)
            break

    # -- erase -------------------------------------------------------------------------
    def erase(self, node: int) -> None:
        """rb_erase(): __rb_erase_augmented() then ____rb_erase_color()."""
        self.version += 1
        child = self.right[node]
        tmp = self.left[node]
        if tmp is None:
            parent = self.parent[node]
            pcolor = self.color[node]
            self._change_child(node, child, parent)
            if child is not None:
                self.parent[child], self.color[child] = parent, pcolor
                rebalance = None
            else:
                rebalance = parent if pcolor == BLACK else None
        elif child is None:
            parent = self.parent[node]
            self.parent[tmp], self.color[tmp] = parent, self.color[node]
            self._change_child(node, tmp, parent)
            rebalance = None
        else:
            successor = child
            tmp = self.left[child]
            if tmp is None:
                parent = successor
                child2 = self.right[successor]
            else:
                while True:
                    parent = successor
                    successor = tmp
                    tmp = self.left[tmp]
                    if tmp is None:
                        break
                child2 = self.right[successor]
                self.left[parent] = child2
                self.right[successor] = child
                self.parent[child] = successor
            tmp = self.left[node]
            self.left[successor] = tmp
            self.parent[tmp] = successor  # type: ignore[index]
            nparent = self.parent[node]
            ncolor = self.color[node]
            self._change_child(node, successor, nparent)
            if child2 is not None:
                self.parent[child2], self.color[child2] = parent, BLACK
                rebalance = None
            else:
                rebalance = parent if self.color[successor] == BLACK else None
            self.parent[successor], self.color[successor] = nparent, ncolor
        for d in (self.parent, self.left, self.right, self.color):
            del d[node]
        if rebalance is not None:
            self._erase_color(rebalance)

    def _erase_color(self, parent: int) -> None:
        node: int | None = None
        while True:
            sibling = self.right[parent]
            if node != sibling:  # node == parent->rb_left
                assert sibling is not None
                if self.color[sibling] == RED:
                    # Case 1 - left rotate at parent
                    tmp1 = self.left[sibling]
                    self.right[parent] = tmp1
                    self.left[sibling] = parent
                    self.parent[tmp1], self.color[tmp1] = parent, BLACK  # type: ignore[index]
                    self._rotate_set_parents(parent, sibling, RED)
                    sibling = tmp1
                    assert sibling is not None
                tmp1 = self.right[sibling]
                if tmp1 is None or self.color[tmp1] == BLACK:
                    tmp2 = self.left[sibling]
                    if tmp2 is None or self.color[tmp2] == BLACK:
                        # Case 2 - sibling color flip
                        self.parent[sibling], self.color[sibling] = parent, RED
                        if self.color[parent] == RED:
                            self.color[parent] = BLACK
                        else:
                            node = parent
                            p = self.parent[node]
                            if p is not None:
                                parent = p
                                continue
                        break
                    # Case 3 - right rotate at sibling
                    tmp1 = self.right[tmp2]
                    self.left[sibling] = tmp1
                    self.right[tmp2] = sibling
                    self.right[parent] = tmp2
                    if tmp1 is not None:
                        self.parent[tmp1], self.color[tmp1] = sibling, BLACK
                    tmp1 = sibling
                    sibling = tmp2
                # Case 4 - left rotate at parent + color flips
                tmp2 = self.left[sibling]
                self.right[parent] = tmp2
                self.left[sibling] = parent
                self.parent[tmp1], self.color[tmp1] = sibling, BLACK
                if tmp2 is not None:
                    self.parent[tmp2] = parent
                self._rotate_set_parents(parent, sibling, BLACK)
                break
            sibling = self.left[parent]
            assert sibling is not None
            if self.color[sibling] == RED:
                tmp1 = self.right[sibling]
                self.left[parent] = tmp1
                self.right[sibling] = parent
                self.parent[tmp1], self.color[tmp1] = parent, BLACK  # type: ignore[index]
                self._rotate_set_parents(parent, sibling, RED)
                sibling = tmp1
                assert sibling is not None
            tmp1 = self.left[sibling]
            if tmp1 is None or self.color[tmp1] == BLACK:
                tmp2 = self.right[sibling]
                if tmp2 is None or self.color[tmp2] == BLACK:
                    self.parent[sibling], self.color[sibling] = parent, RED
                    if self.color[parent] == RED:
                        self.color[parent] = BLACK
                    else:
                        node = parent
                        p = self.parent[node]
                        if p is not None:
                            parent = p
                            continue
                    break
                tmp1 = self.left[tmp2]
                self.right[sibling] = tmp1
                self.left[tmp2] = sibling
                self.left[parent] = tmp2
                if tmp1 is not None:
                    self.parent[tmp1], self.color[tmp1] = sibling, BLACK
                tmp1 = sibling
                sibling = tmp2
            tmp2 = self.right[sibling]
            self.left[parent] = tmp2
            self.right[sibling] = parent
            self.parent[tmp1], self.color[tmp1] = sibling, BLACK
            if tmp2 is not None:
                self.parent[tmp2] = parent
            self._rotate_set_parents(parent, sibling, BLACK)
            break

    # -- queries -----------------------------------------------------------------------
    def path(self, key: int) -> list[int]:
        """The nodes a search for ``key`` visits, root first (ending at ``key`` if present)."""
        out = []
        cur = self.root
        while cur is not None:
            out.append(cur)
            if key == cur:
                break
            cur = self.left[cur] if key < cur else self.right[cur]
        return out

    def interval(self, key: int) -> tuple[int, int]:
        """The open interval of search keys whose walk passes ``key``'s node."""
        lo, hi = -1, 1 << 64
        cur = self.root
        while cur is not None and cur != key:
            if key < cur:
                hi = cur
                cur = self.left[cur]
            else:
                lo = cur
                cur = self.right[cur]
        return lo, hi

    def check(self) -> int:
        """Verify the red-black properties; returns the black height."""

        def walk(n: int | None, lo: int, hi: int) -> int:
            if n is None:
                return 1
            assert lo < n < hi
            if self.color[n] == RED:
                for c in (self.left[n], self.right[n]):
                    assert c is None or self.color[c] == BLACK, "red node with a red child"
            for c in (self.left[n], self.right[n]):
                if c is not None:
                    assert self.parent[c] == n, "bad parent link"
            a = walk(self.left[n], lo, n)
            b = walk(self.right[n], n, hi)
            assert a == b, "unequal black heights"
            return a + (self.color[n] == BLACK)

        if self.root is not None:
            assert self.parent[self.root] is None and self.color[self.root] == BLACK
        return walk(self.root, -1, 1 << 64)
