import ray.data

from rayssl.data.context import RESERVATION_ENV, dataset_context


def test_datasets_keep_rayssl_settings_and_the_global_context_is_restored(ray_session, monkeypatch):
    monkeypatch.delenv(RESERVATION_ENV, raising=False)
    ctx = ray.data.DataContext.get_current()
    before = ctx.op_resource_reservation_enabled
    with dataset_context():
        ds = ray.data.range(4)
    derived = ds.map(lambda r: r)  # built after the block: inherits the dataset's context
    for d in (ds, derived):
        assert d.context.op_resource_reservation_enabled is False
    assert ctx.op_resource_reservation_enabled == before
    assert sorted(r["id"] for r in derived.take_all()) == [0, 1, 2, 3]


def test_reservation_env_variable_keeps_rays_choice(ray_session, monkeypatch):
    monkeypatch.setenv(RESERVATION_ENV, "1")
    ctx = ray.data.DataContext.get_current()
    with dataset_context():
        ds = ray.data.range(2)
    assert ds.context.op_resource_reservation_enabled == ctx.op_resource_reservation_enabled
