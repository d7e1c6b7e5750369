"""kexport._patch.scoped_patch: the scoped replacement every peer-library workaround uses."""

from __future__ import annotations

import threading
import types

import pytest

from kexport._patch import scoped_patch


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
