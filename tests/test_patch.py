"""kexport._patch.scoped_patch: the scoped replacement every peer-library workaround uses."""

from __future__ import annotations

import threading
import types

import pytest

from kexport._patch import scoped_patch

pytestmark = pytest.mark.fast


def _owner():
    return types.SimpleNamespace(f=lambda x: x + 1)


def test_replacement_sees_the_original_and_is_undone_on_exit():
    owner = _owner()
    shipped = owner.f
    with scoped_patch(owner, "f", lambda original: lambda x: original(x) * 10):
        assert owner.f(1) == 20
    assert owner.f is shipped


def test_nested_and_concurrent_users_share_one_replacement_until_the_last_leaves():
    owner = _owner()
    shipped = owner.f
    made = []

    def make(original):
        made.append(original)
        return lambda x: -x

    inside, release = threading.Event(), threading.Event()

    def other_export():
        with scoped_patch(owner, "f", make):
            inside.set()
            release.wait(10)

    worker = threading.Thread(target=other_export)
    worker.start()
    assert inside.wait(10)
    with scoped_patch(owner, "f", make):
        assert owner.f(3) == -3
    assert owner.f(3) == -3  # the other user is still inside
    release.set()
    worker.join(10)
    assert owner.f is shipped and made == [shipped]


def test_original_is_restored_when_the_body_raises():
    owner = _owner()
    shipped = owner.f
    with pytest.raises(RuntimeError, match="boom"), \
            scoped_patch(owner, "f", lambda original: None):
        raise RuntimeError("boom")
    assert owner.f is shipped


def test_missing_attribute_is_left_alone():
    owner = types.SimpleNamespace()
    with scoped_patch(owner, "f", lambda original: lambda x: x):
        assert not hasattr(owner, "f")
    assert not hasattr(owner, "f")


def test_interleaved_threads_restore_the_originals_whatever_order_they_leave_in():
    """Threads enter two patches (one ``with``, as the tf2onnx workarounds are) in
    turns the test forces, and leave in an order that is not the reverse of the
    order they entered in: inside, each sees both replacements; after the last
    leaves, both originals are back (no replacement left installed, none lost)."""
    owner = types.SimpleNamespace(f=lambda: "f", g=lambda: "g")
    shipped_f, shipped_g = owner.f, owner.g
    count = 6
    entered = [threading.Event() for _ in range(count)]
    leave = [threading.Event() for _ in range(count)]
    seen: dict[int, list[tuple[str, str]]] = {i: [] for i in range(count)}

    def export(i: int) -> None:
        with scoped_patch(owner, "f", lambda shipped: lambda: "F(" + shipped() + ")"), \
                scoped_patch(owner, "g", lambda shipped: lambda: "G(" + shipped() + ")"):
            seen[i].append((owner.f(), owner.g()))
            entered[i].set()
            assert leave[i].wait(10)
            seen[i].append((owner.f(), owner.g()))

    threads = [threading.Thread(target=export, args=(i,)) for i in range(count)]
    for i, thread in enumerate(threads):  # enter one after the other: 0, 1, ..., 5
        thread.start()
        assert entered[i].wait(10)
    for i in (0, 3, 5, 1, 4, 2):  # leave: the first in first, the last in not last
        leave[i].set()
        threads[i].join(10)
        assert not threads[i].is_alive()
        if i != 2:  # others are still inside: the replacements stay
            assert (owner.f(), owner.g()) == ("F(f)", "G(g)")
    assert owner.f is shipped_f and owner.g is shipped_g
    assert all(s == [("F(f)", "G(g)")] * 2 for s in seen.values())


def test_many_threads_at_random_leave_the_original_installed():
    import random

    owner = _owner()
    shipped = owner.f
    rng = random.Random(0)
    delays = [rng.random() / 200 for _ in range(64)]
    wrong: list[int] = []

    def export(delay: float) -> None:
        import time

        time.sleep(delay)
        with scoped_patch(owner, "f", lambda original: lambda x: original(x) * 10):
            time.sleep(delay)
            if owner.f(1) != 20:
                wrong.append(owner.f(1))

    threads = [threading.Thread(target=export, args=(d,)) for d in delays]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert wrong == [] and owner.f is shipped


def test_a_value_someone_else_installed_meanwhile_is_left_alone():
    owner = _owner()
    theirs = lambda x: "theirs"  # noqa: E731
    with scoped_patch(owner, "f", lambda original: lambda x: -x):
        owner.f = theirs
    assert owner.f is theirs
