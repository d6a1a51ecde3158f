"""Ctrl-C reaches kvplan's commands even when it arrives inside a garbage-collection callback."""

from __future__ import annotations

import gc

import pytest

from kvplan.cli import deliver_dropped_interrupts


def test_interrupt_in_gc_callback_delivered() -> None:
    # JAX registers a gc callback. A KeyboardInterrupt raised there is printed as
    # "Exception ignored" and dropped, so Ctrl-C during compilation used to be lost.
    raised: list[bool] = []

    def interrupting_callback(phase: str, info: dict) -> None:
        if phase == "start" and not raised:
            raised.append(True)
            raise KeyboardInterrupt

    gc.callbacks.append(interrupting_callback)
    try:
        with pytest.raises(KeyboardInterrupt):
            with deliver_dropped_interrupts():
                gc.collect()
                # The interrupt arrives from another thread once the callback has returned.
                for _ in range(10_000_000):
                    pass
    finally:
        gc.callbacks.remove(interrupting_callback)

    assert raised == [True]
