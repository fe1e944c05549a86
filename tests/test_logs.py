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


def test_gpu_node_chatter_is_kept_out_and_real_errors_are_not(monkeypatch, capfd):
    """The lines a single-GPU run printed that are not errors of the run (Ray Train's autoscaling-coordinator
    request, stopping the preemption watcher, the c10d barrier warning) stay out of a quiet console; an error of
    the same loggers, and a warning of another library, still show."""
    import logging
    import os
    import warnings

    from rayssl import logs

    monkeypatch.delenv(logs.VERBOSE_ENV, raising=False)
    monkeypatch.delenv("TORCH_CPP_LOG_LEVEL", raising=False)
    handler_records = []

    class Keep(logging.Handler):
        def emit(self, record):
            handler_records.append(record.getMessage())

    keep = Keep()
    watched = [logging.getLogger(name) for name, _ in logs.NOT_RUN_ERRORS]
    for logger in watched:
        logger.addHandler(keep)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        logs.quiet_process()
        try:
            coordinator = logging.getLogger(logs.NOT_RUN_ERRORS[0][0])
            try:
                raise TimeoutError("GetTimeoutError")
            except TimeoutError:
                coordinator.warning("Failed to send resource request for TrainController.", exc_info=True)
            logging.getLogger(logs.NOT_RUN_ERRORS[1][0]).warning("Failed to kill PreemptionWatcher actor.")
            warnings.warn("barrier(): using the device under current context. You can specify `device_id` in "
                          "`init_process_group` to mute this warning.", UserWarning)
            coordinator.error("the coordinator is gone for good")
            warnings.warn("some other library's real warning", UserWarning)
        finally:
            for logger in watched:
                logger.removeHandler(keep)
    assert handler_records == ["the coordinator is gone for good"]
    shown = [str(w.message) for w in caught]
    assert "some other library's real warning" in shown and not any(m.startswith("barrier()") for m in shown)
    assert os.environ["TORCH_CPP_LOG_LEVEL"] == "ERROR"  # for torch's C++ (c10d) warnings in this process
