import threading

from rayssl.logs import _quiet_cleaner_threads


def test_the_cleaner_threads_traceback_is_kept_out_and_others_are_not():
    seen = []
    hook = _quiet_cleaner_threads(lambda args: seen.append(args.thread.name))

    def boom():
        raise ConnectionError("Found multiple active Ray instances")

    old = threading.excepthook
    threading.excepthook = hook
    try:
        for name in ("PlacementGroupCleanerMonitor", "some-worker-thread"):
            t = threading.Thread(target=boom, name=name)
            t.start()
            t.join()
    finally:
        threading.excepthook = old
    assert seen == ["some-worker-thread"]
